"""Passage pipelines, as RAG systems index documents: a chunked index, a reranker scoring
(query, passage) pairs, documents scored by their best (MaxP) or first (FirstP) passage, and the
cross-encoder's max_length with the share of pairs it truncates."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ragkit import Pipeline, experiment, grid
from ragkit.cli import main
from ragkit.errors import ConfigError
from ragkit.passages import passages, text_splitter
from ragkit.rerank import load_reranker, score_pairs, truncation_mask

KW = {"latency_queries": 0, "show_progress": False, "n_resamples": 100}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_size": 40, "chunk_overlap": 50}, r"chunk_overlap \(50\) must be less than chunk_size \(40\)"),
        ({"chunk_size": 0}, "chunk_size must be a whole number"),
        ({"chunk_size": 100, "chunk_unit": "words"}, "chunk_unit must be one of chars, tokens"),
        ({"chunk_size": 100, "passage_score": "meanp"}, "passage_score must be one of maxp, firstp"),
        ({"retriever": "bm25", "chunk_size": 100}, "Passages .chunk_size. are for dense pipelines"),
        ({"reranker": "x", "max_length": 0}, "max_length must be a whole number of tokens"),
    ],
)
def test_bad_passage_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline(**kwargs)


def test_passage_pipelines_are_named_for_their_passages_and_judged_against_the_same_first_stage():
    p = Pipeline(reranker="cross-encoder/ms-marco-MiniLM-L-12-v2", chunk_size=400, max_length=256)
    assert p.name == (
        "dense(all-MiniLM-L6-v2, 400-char chunks) >> ms-marco-MiniLM-L-12-v2(k=20, top_n=20, max_length=256)"
    )
    assert p.own_first_stage() == Pipeline(chunk_size=400)
    first = Pipeline(chunk_size=128, chunk_overlap=16, chunk_unit="tokens", passage_score="firstp")
    assert first.name == "dense(all-MiniLM-L6-v2, 128-token chunks overlap 16, firstp)"
    # Without passages the passage options mean nothing and cannot make pipelines differ.
    assert Pipeline(chunk_overlap=10, passage_score="firstp") == Pipeline()
    names = [p.name for p in grid(rerankers=[None], chunk_sizes=[None, 300], bm25=True)]
    assert names == ["dense(all-MiniLM-L6-v2)", "dense(all-MiniLM-L6-v2, 300-char chunks)", "bm25"]


@pytest.mark.parametrize("passage_score", ["maxp", "firstp"])
def test_a_document_scores_as_its_best_or_first_passage(
    demo, tiny_embedder_path, spread_cross_encoder_path, cache, passage_score
):
    p = Pipeline(embedder=tiny_embedder_path, reranker=spread_cross_encoder_path, k=5, chunk_size=120,
                 chunk_overlap=20, passage_score=passage_score)  # fmt: skip
    result = experiment(demo, [p], **KW)
    splitter = text_splitter(120, 20)
    model = load_reranker(spread_cross_encoder_path, "cpu")
    first_stage = result.runs[p.own_first_stage().name]
    split_some = False
    for q, run in result.runs[p.name].items():
        candidates = list(first_stage[q])[:5]
        expected = {}
        for d in candidates:
            texts = passages(demo.text(d), splitter, first_only=passage_score == "firstp")
            split_some |= len(passages(demo.text(d), splitter)) > 1
            logits = score_pairs(model, [(demo.queries[q], t) for t in texts], raw=True)
            expected[d] = max(logits)
        reranked = list(run)[:5]
        assert set(reranked) == set(candidates)
        assert reranked == sorted(candidates, key=lambda d: -expected[d])  # distinct logits: one order
    assert split_some  # the test means something only if documents really were split


@pytest.fixture(scope="module")
def passages_benchmark():
    """benchmarks/passages.py as a module (it is a script, not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "passages.py"
    spec = importlib.util.spec_from_file_location("passages_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("chunk_unit, chunk_size, chunk_overlap", [("chars", 120, 20), ("tokens", 24, 4)])
@pytest.mark.parametrize("passage_score", ["maxp", "firstp"])
def test_the_engine_the_index_and_the_passage_benchmark_split_documents_alike(
    demo, tiny_embedder_path, cache, passages_benchmark, monkeypatch, chunk_unit, chunk_size, chunk_overlap,
    passage_score
):  # fmt: skip
    from ragkit.evaluate import _passages_of
    from ragkit.retrievers import build_dense_stage
    from ragkit.stages import StageContext

    p = Pipeline(embedder=tiny_embedder_path, reranker="x", k=len(demo.corpus), chunk_size=chunk_size,
                 chunk_overlap=chunk_overlap, chunk_unit=chunk_unit, passage_score=passage_score)  # fmt: skip
    stage = build_dense_stage(demo, p.own_first_stage(), StageContext("cpu", False, None, None, None))
    stored = stage.dense._collection.get(include=["documents", "metadatas"])
    indexed: dict[str, list[str]] = {d: [] for d in demo.corpus}  # each document's passages, in order
    for meta, text in sorted(zip(stored["metadatas"], stored["documents"]), key=lambda r: r[0]["chunk"]):
        indexed[meta["doc_id"]].append(text)
    if passage_score == "firstp":  # FirstP must have left something out, or the test shows nothing
        assert all(len(t) == 1 for t in indexed.values()) and any(t[0] != demo.text(d) for d, t in indexed.items())
    else:
        assert any(len(t) > 1 for t in indexed.values())

    engine = _passages_of(stage)  # what the reranker scores: the stage's own passages
    assert {d: engine(d) for d in demo.corpus} == {d: stage.passages(d) for d in demo.corpus} == indexed

    # What benchmarks/passages.py counts the cross-encoder's tokens over: every candidate's passages.
    pairs: list[tuple[str, str]] = []
    monkeypatch.setattr(passages_benchmark, "load_reranker", lambda name, device: None)
    monkeypatch.setattr(passages_benchmark, "token_lengths",
                        lambda model, batch, max_length: pairs.extend(batch) or np.zeros(len(batch)))  # fmt: skip
    everything = {q: dict.fromkeys(demo.corpus, 0.0) for q in demo.queries}  # every document a candidate
    passages_benchmark.tokens_read(SimpleNamespace(runs={p.own_first_stage().name: everything}), demo, p)
    assert pairs == [(demo.queries[q], t) for q in demo.queries for d in demo.corpus for t in indexed[d]]


def test_a_passage_index_ranks_documents_not_chunks(demo, tiny_embedder_path, cache):
    result = experiment(demo, [Pipeline(embedder=tiny_embedder_path, chunk_size=100, chunk_overlap=10)], **KW)
    for run in result.runs.values():
        for docs in run.values():
            assert len(docs) == len(demo.corpus) and set(docs) <= set(demo.corpus)


def test_token_chunks_fit_the_embedders_tokens(demo, tiny_embedder_path, cache):
    from ragkit.loaders import HuggingFaceEmbeddingsLoader
    from ragkit.passages import embedder_tokenizer
    from ragkit.retrievers import build_chroma_index

    index = build_chroma_index(demo.documents(), tiny_embedder_path, chunk_size=24, chunk_overlap=4,
                               chunk_unit="tokens", show_progress=False)  # fmt: skip
    tokenizer = embedder_tokenizer(HuggingFaceEmbeddingsLoader(tiny_embedder_path))
    stored = index._collection.get(include=["documents"])["documents"]
    assert len(stored) > len(demo.corpus)
    assert max(len(tokenizer.encode(t, add_special_tokens=False)) for t in stored) <= 24


def test_the_share_of_truncated_pairs_is_measured_and_reported(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache
):
    short = Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=4, max_length=16)
    whole = Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=4)
    result = experiment(demo, [whole, short], **KW)
    model = load_reranker(tiny_cross_encoder_path, "cpu")
    first = result.runs[whole.own_first_stage().name]
    pairs = [(demo.queries[q], demo.text(d)) for q in sorted(demo.queries) for d in list(first[q])[:4]]
    expected = float(truncation_mask(model, pairs, 16).mean())
    assert expected > 0.5  # demo documents are longer than 16 tokens
    assert result.table.loc[short.name, "truncated_pairs"] == pytest.approx(expected)
    assert result.table.loc[whole.name, "truncated_pairs"] == pytest.approx(float(truncation_mask(model, pairs).mean()))
    own = result.own_table("nDCG@10").set_index("pipeline")
    assert own.loc[short.name, "pairs truncated"] == f"{expected:.1%}"
    assert f"{expected:.0%} of its (query, passage) pairs were longer than the 16 tokens" in result.verdict()


def test_a_k_sweep_over_passages_scores_each_pair_once(demo, tiny_embedder_path, tiny_cross_encoder_path, cache,
                                                       scored_pairs):  # fmt: skip
    pipelines = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=k, chunk_size=120,
                          chunk_overlap=20) for k in (3, 6)]  # fmt: skip
    experiment(demo, pipelines, **KW)
    splitter = text_splitter(120, 20)
    first = experiment(demo, [pipelines[0].own_first_stage()], **KW).runs[pipelines[0].own_first_stage().name]
    expected = {(demo.queries[q], t) for q in demo.queries for d in list(first[q])[:6]
                for t in passages(demo.text(d), splitter)}  # fmt: skip
    assert sum(scored_pairs) == len(expected)


def test_the_langchain_engine_refuses_passage_pipelines(demo, tiny_embedder_path):
    with pytest.raises(ConfigError, match="engine='batched'"):
        experiment(demo, [Pipeline(embedder=tiny_embedder_path, chunk_size=100)], engine="langchain", **KW)


def test_cli_evaluates_passages_and_max_lengths(tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path, capsys):
    code = main(["eval", "--dataset", "demo", "--queries", "0", "--embedders", tiny_embedder_path, "--rerankers",
                 "none", tiny_cross_encoder_path, "--k", "5", "--chunk-sizes", "none", "150", "--chunk-overlap", "20",
                 "--max-lengths", "none", "32", "--latency-queries", "2", "--output", str(tmp_path / "r")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "150-char chunks overlap 20) >> " in printed
    assert "max_length=32" in printed and " truncated\n" in printed  # the own-stage table's last column


@pytest.mark.parametrize(
    "args, message",
    [
        (["--chunk-sizes", "40", "--chunk-overlap", "50"], "--chunk-overlap"),
        (["--chunk-sizes", "many"], "--chunk-sizes takes whole numbers"),
        (["--max-lengths", "0"], "--max-lengths takes whole numbers"),
    ],
)
def test_cli_refuses_bad_passage_options_before_any_work(args, message, tmp_path, capsys, cache):
    code = main(["eval", "--dataset", "demo", "--output", str(tmp_path / "new" / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "new").exists() and not cache.exists()


def test_options_at_their_defaults_leave_cache_keys_as_they_were():
    # The keys of pipelines that use none of the later options are those of the first seven
    # fields, so that results, runs and timings cached before the options existed stay valid.
    assert list(Pipeline(reranker="x").identity()) == [
        "retriever", "embedder", "reranker", "k", "top_n", "reranker_dtype", "truncate"
    ]  # fmt: skip
    assert Pipeline(reranker="x", chunk_size=300, max_length=128).identity()["chunk_size"] == 300
    assert Pipeline(reranker="x", max_length=128).identity()["max_length"] == 128


@pytest.mark.parametrize(
    ("results", "begins", "ends", "p_digits"),
    [
        ("passages-cpu.json", "- **What passages did**", "- **On the whole corpora**", 2),
        ("passages_full-cpu.json", "- **On the whole corpora**", "- **More than one device**", 3),
    ],
)
def test_the_levers_doc_states_the_committed_passage_measurements(results, begins, ends, p_digits):
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = json.loads((root / "benchmarks" / "results" / results).read_text())["rows"]
    page = (root / "docs" / "levers.md").read_text()
    section = page[page.index(begins) : page.index(ends)]
    assert results.removesuffix(".json") + ".md" in section  # the bullet links the table it quotes
    for row in rows:
        if "+" not in row["collection"] and ">>" not in row["pipeline"]:  # each first stage's score
            assert f"{row['ndcg@10']:.3f}" in section, row["pipeline"]
    for row in (r for r in rows if "+" in r["collection"]):  # what is said of the pooled queries
        if ">>" in row["pipeline"]:
            assert f"{row['gain']:+.3f}" in section and f"{row['tokens_per_query']:,}" in section
            assert f"{row['truncated_share']:.1%}" in section or row["truncated_share"] == 0
        elif "vs_whole" in row:
            assert f"{row['vs_whole']:+.3f}" in section
            assert f"p {row['vs_whole_p_holm']:.{p_digits}f}" in section


def passage_stage(demo, embedder: str, **options):
    """The dense first stage of a passage pipeline on ``demo``, as the engine builds it."""
    from ragkit.retrievers import build_dense_stage
    from ragkit.stages import StageContext

    pipeline = Pipeline(embedder=embedder, chunk_size=120, chunk_overlap=20, **options)
    return build_dense_stage(demo, pipeline, StageContext("cpu", False, None, None, None))


def brute_force_maxp(index, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Each query's ``k`` best documents by numpy alone: every stored passage vector scored by
    cosine (vectors normalised in float32 as they are stored, scored in float64), a document
    as its best passage, ties in the order the passages are stored."""
    stored = index._collection.get(include=["embeddings"])
    vectors = np.asarray(stored["embeddings"], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    wanted = index.embed_queries(queries)
    wanted /= np.linalg.norm(wanted, axis=1, keepdims=True)
    doc_ids = [record.rpartition("#")[0] for record in stored["ids"]]
    out = []
    for scores in wanted.astype(np.float64) @ vectors.astype(np.float64).T:
        best: dict[str, tuple[float, int]] = {}
        for position, (doc_id, score) in enumerate(zip(doc_ids, scores)):
            if doc_id not in best or score > best[doc_id][0]:
                best[doc_id] = (float(score), position)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))
        out.append([(doc_id, score) for doc_id, (score, _) in ranked[:k]])
    return out


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("passage_score", ["maxp", "firstp"])
def test_a_passage_stage_ranks_documents_as_numpys_brute_force_maxp(
    demo, tiny_embedder_path, cache, passage_score, exact
):
    from test_stages import assert_ranked_alike

    from ragkit.passages import PassageStage

    stage = passage_stage(demo, tiny_embedder_path, passage_score=passage_score)
    assert isinstance(stage, PassageStage)
    assert stage.dense.count > len(demo.corpus) or passage_score == "firstp"  # MaxP has passages to choose from
    queries = [demo.queries[q] for q in sorted(demo.queries)]
    for k in (5, len(demo.corpus)):
        found = stage.search(queries, k, exact=exact)
        expected = brute_force_maxp(stage.dense, queries, k)
        if exact:  # the same scores to the last bits of float64, so the same order, ties included
            assert [[d for d, _ in h] for h in found] == [[d for d, _ in h] for h in expected]
            assert np.allclose([s for h in found for _, s in h], [s for h in expected for _, s in h], atol=1e-12)
        else:  # Chroma's float32 distances: the same ranking up to scores it cannot tell apart
            for one, other in zip(found, expected):
                assert_ranked_alike(one, other)
        # The chunked index's own document search is the same aggregation over the same passages.
        assert stage.dense.search(queries, k, exact=exact) == found


def test_passage_ties_keep_the_order_the_passages_are_stored_in(cache):
    # Twin documents: the same passages, so the same vectors and the same scores. Numbers only
    # (RandomEmbeddings seeds a vector by a text's last word), two per passage.
    from langchain_core.documents import Document
    from test_index_integrity import RandomEmbeddings

    from ragkit.passages import PassageStage
    from ragkit.retrievers import build_chroma_index

    texts = {f"d{i}": " ".join(str(1000 + (i // 2) * 10 + j) for j in range(2 + (i // 2) % 3)) for i in range(30)}
    docs = [Document(text, metadata={"doc_id": d}) for d, text in texts.items()]
    index = build_chroma_index(docs, RandomEmbeddings(), chunk_size=9, chunk_overlap=0, show_progress=False)
    stage = PassageStage(index, text=texts.__getitem__)
    queries = [f"query {i}" for i in range(10_000, 10_010)]
    assert index.count > len(docs)  # documents of several passages
    found = stage.search(queries, 20, exact=True)
    assert all(a[1] == b[1] for h in found for a, b in zip(h[::2], h[1::2]))  # twins side by side, tied
    expected = brute_force_maxp(index, queries, 20)
    assert [[d for d, _ in h] for h in found] == [[d for d, _ in h] for h in expected]
    assert np.allclose([s for h in found for _, s in h], [s for h in expected for _, s in h], atol=1e-12)


@pytest.mark.parametrize(
    "options, splitting",
    [
        ({}, {"splitter": "RecursiveCharacterTextSplitter", "chunk_size": 120, "chunk_overlap": 20}),
        ({"passage_score": "firstp"},
         {"splitter": "RecursiveCharacterTextSplitter", "chunk_size": 120, "chunk_overlap": 20, "first_only": True}),
        ({"chunk_unit": "tokens"},
         {"splitter": "RecursiveCharacterTextSplitter", "chunk_size": 120, "chunk_overlap": 20, "unit": "tokens"}),
    ],
)  # fmt: skip
def test_a_passage_stage_has_its_chunked_index_fingerprint(demo, tiny_embedder_path, cache, options, splitting):
    # The splitting keys are the ones indexes were fingerprinted by before passages were a stage
    # of their own, so that every cached index, run and result stays valid.
    from ragkit.loaders import HuggingFaceEmbeddingsLoader
    from ragkit.passages import text_splitting
    from ragkit.retrievers import _index_fingerprint, _records, build_chroma_index

    stage = passage_stage(demo, tiny_embedder_path, **options)
    unit = options.get("chunk_unit", "chars")
    first = options.get("passage_score") == "firstp"
    index = build_chroma_index(demo.documents(), tiny_embedder_path, chunk_size=120, chunk_overlap=20,
                               chunk_unit=unit, first_passage_only=first, show_progress=False)  # fmt: skip
    assert stage.fingerprint == stage.dense.fingerprint == index.fingerprint
    embeddings = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    split = text_splitting(120, 20, unit, first_only=first, embeddings=embeddings)
    assert index.fingerprint == _index_fingerprint(embeddings, _records(demo.documents(), split), splitting)
    assert stage.search_mode == index.search_mode


def test_a_passage_stage_gives_the_documents_of_its_best_passages_to_langchain(demo, tiny_embedder_path, cache):
    stage = passage_stage(demo, tiny_embedder_path)
    query = demo.queries[sorted(demo.queries)[0]]
    best = stage.search_passages([query], 5)[0]
    docs = stage.as_retriever(k=5).invoke(query)
    assert [d.id for d in docs] == [passage for passage, _ in best]
    assert [d.metadata["doc_id"] for d in docs] == [d for d, _ in stage.search([query], 5)[0]]
    for doc, (passage, score) in zip(docs, best):
        assert doc.page_content == stage.passages(doc.metadata["doc_id"])[doc.metadata["chunk"]]
        assert passage == f"{doc.metadata['doc_id']}#{doc.metadata['chunk']}" and doc.metadata["score"] == score


def test_a_passage_stage_needs_an_index_of_passages(demo, tiny_embedder_path, cache):
    from ragkit.passages import PassageStage
    from ragkit.retrievers import build_chroma_index

    whole = build_chroma_index(demo.documents(), tiny_embedder_path, show_progress=False)
    with pytest.raises(ConfigError, match="PassageStage wraps an index of passages"):
        PassageStage(whole, text=demo.text)


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_a_fusion_over_passages_keeps_the_first_stage_contract(method, tiny_embedder_path, demo, cache, monkeypatch):
    # Its LangChain view fuses the passage stage's documents (each as its best passage), as
    # its run fuses the passage stage's ranking of documents.
    from test_stages import keeps_the_contract

    from ragkit import Fusion

    passages = Pipeline(embedder=tiny_embedder_path, chunk_size=120, chunk_overlap=20)
    keeps_the_contract(Pipeline(retriever=Fusion(passages, Pipeline(retriever="bm25"), method=method)), demo,
                       monkeypatch)  # fmt: skip
