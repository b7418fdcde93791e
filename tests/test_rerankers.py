"""The reranker seam: every registered family of reranker goes through the same contract (a
ranking of its candidates with finite scores, best first; pair scores that do not depend on
how the engine slices them; a fingerprint stable and sensitive to what changes the scores; the
LangChain view agreeing), the bi-encoder rescorer ranks by the cosines it claims, and a
reranker of the user's own is evaluated through the same engine, checked and cached only when
it says what identifies it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document

from ragkit.cache import Cache
from ragkit.cli import main
from ragkit.errors import ConfigError, RagkitError
from ragkit.evaluate import Pipeline, experiment, grid
from ragkit.loaders import HuggingFaceEmbeddingsLoader
from ragkit.registry import RERANKERS
from ragkit.rescore import BiEncoderRescorer
from ragkit.stages import PairScorer, Reranker, StageContext, check_reranked

QUIET = {"latency_queries": 0, "show_progress": False, "n_resamples": 50}


@pytest.fixture()
def models(tiny_cross_encoder_path, tiny_embedder_path) -> dict[str, str]:
    """For every registered family, the model of one reranker of that family."""
    return {"cross-encoder": tiny_cross_encoder_path, "bi-encoder": tiny_embedder_path}


def spec(family: str, model: str) -> str:
    return model if family == "cross-encoder" else f"{family}:{model}"


def build(pipeline: Pipeline) -> Reranker:
    context = StageContext("cpu", False, None, None, None, batch_size=4)
    return pipeline.reranker_family.build(pipeline.reranker_model, pipeline, context)


def candidates(demo, query_id: str, n: int = 8) -> list[tuple[str, str]]:
    return [(d, demo.text(d)) for d in sorted(demo.corpus)[:n]]


def test_every_registered_family_is_under_the_contract(models):
    assert sorted(models) == sorted(RERANKERS)


@pytest.mark.parametrize("family", sorted(RERANKERS))
def test_a_reranker_keeps_the_contract(family, models, demo, cache):
    pipeline = Pipeline(embedder=models["bi-encoder"], reranker=spec(family, models[family]), k=8)
    reranker = build(pipeline)
    assert isinstance(reranker, Reranker) and isinstance(reranker, PairScorer)
    for q in sorted(demo.queries):
        cands = candidates(demo, q)
        ranked = reranker.rerank(demo.queries[q], cands)
        assert check_reranked(family, ranked, [d for d, _ in cands]) == ranked
        assert sorted(d for d, _ in ranked) == sorted(d for d, _ in cands)  # a pair scorer keeps them all
        pairs = [(demo.queries[q], t) for _, t in cands]
        scores = dict(zip((d for d, _ in cands), reranker.score(pairs)))
        assert all(abs(s - scores[d]) <= 1e-6 for d, s in ranked)
        assert reranker.truncated(pairs).dtype == bool and len(reranker.truncated(pairs)) == len(pairs)

    # Scoring the engine's slices of the scoring order gives the scores of one call.
    pairs = [(demo.queries[q], t) for q in sorted(demo.queries) for _, t in candidates(demo, q)]
    order = np.asarray(reranker.scoring_order(pairs))
    assert sorted(order.tolist()) == list(range(len(pairs)))
    whole = np.asarray(reranker.score(pairs))
    sliced = np.empty(len(pairs))
    for start in range(0, len(pairs), 8):
        part = order[start : start + 8]
        sliced[part] = reranker.score([pairs[i] for i in part])
    assert np.allclose(sliced, whole, atol=1e-6, rtol=0)

    # What a scorer computes ahead (prepare, what an index would store) changes no score.
    reranker.prepare([t for _, t in pairs])
    assert np.allclose(np.asarray(reranker.score(pairs)), whole, atol=1e-6, rtol=0)

    # The fingerprint is stable (what changes it: the tests below, family by family).
    assert build(pipeline).fingerprint == reranker.fingerprint

    # The LangChain view returns the top_n candidates as rerank ranks them, each with its score.
    q = sorted(demo.queries)[0]
    cands = candidates(demo, q)
    docs = [Document(page_content=t, metadata={"doc_id": d}) for d, t in cands]
    kept = reranker.as_compressor(3, raw_scores=True).compress_documents(docs, demo.queries[q])
    ranked = reranker.rerank(demo.queries[q], cands)[:3]
    assert [d.metadata["doc_id"] for d in kept] == [d for d, _ in ranked]
    assert all(abs(d.metadata["relevance_score"] - s) <= 1e-6 for d, (_, s) in zip(kept, ranked))


def test_the_cross_encoders_fingerprint_follows_its_model_precision_and_length(
    tiny_cross_encoder_path, spread_cross_encoder_path
):
    prints = {
        build(p).fingerprint
        for p in (Pipeline(reranker=tiny_cross_encoder_path), Pipeline(reranker=spread_cross_encoder_path),
                  Pipeline(reranker=tiny_cross_encoder_path, max_length=64),
                  Pipeline(reranker=tiny_cross_encoder_path, reranker_dtype="bfloat16"))
    }  # fmt: skip
    assert len(prints) == 4


def test_the_bi_encoders_fingerprint_follows_its_model(tiny_embedder_path, tmp_path):
    copy = shutil.copytree(tiny_embedder_path, tmp_path / "another-embedder")
    one = BiEncoderRescorer(tiny_embedder_path, device="cpu")
    assert BiEncoderRescorer(str(copy), device="cpu").fingerprint != one.fingerprint
    assert BiEncoderRescorer(tiny_embedder_path, device="cpu").fingerprint == one.fingerprint


def test_the_bi_encoder_ranks_by_cosine_of_the_query_and_document_embeddings(tiny_embedder_path, demo):
    rescorer = BiEncoderRescorer(tiny_embedder_path, device="cpu")
    emb = HuggingFaceEmbeddingsLoader(tiny_embedder_path, model_kwargs={"device": "cpu"})
    q = sorted(demo.queries)[1]
    cands = candidates(demo, q)
    query = np.asarray(emb.embed_query(demo.queries[q]))
    docs = np.asarray(emb.embed_documents([t for _, t in cands]))
    cosines = docs @ query / (np.linalg.norm(docs, axis=1) * np.linalg.norm(query))
    expected = sorted(zip((d for d, _ in cands), cosines), key=lambda x: -x[1])
    ranked = rescorer.rerank(demo.queries[q], cands)
    assert [d for d, _ in ranked] == [d for d, _ in expected]
    assert np.allclose([s for _, s in ranked], [s for _, s in expected], atol=1e-5)


def test_a_prepared_bi_encoder_serves_a_query_by_embedding_the_query_alone(
    tiny_embedder_path, demo, cache, monkeypatch
):
    import ragkit.rescore

    rescorer = BiEncoderRescorer(tiny_embedder_path, device="cpu")
    q = sorted(demo.queries)[0]
    cands = candidates(demo, q)
    rescorer.prepare([t for _, t in cands])
    embedded: list[int] = []
    real = ragkit.rescore.embed_documents
    monkeypatch.setattr(ragkit.rescore, "embed_documents", lambda emb, texts, **kw: embedded.append(len(texts))
                        or real(emb, texts, **kw))  # fmt: skip
    rescorer.score([(demo.queries[q], t) for _, t in cands])
    assert embedded == []  # every candidate's vector was stored
    rescorer.score([(demo.queries[q], "a text no index holds")])
    assert embedded == [1]
    # The timed path serves queries as a deployment with stored vectors would: each timed
    # query's candidates are prepared (untimed) before its reranker step is timed.
    prepared: list[int] = []
    real_prepare = BiEncoderRescorer.prepare
    monkeypatch.setattr(BiEncoderRescorer, "prepare", lambda self, texts: prepared.append(len(texts))
                        or real_prepare(self, texts))  # fmt: skip
    pipeline = Pipeline(embedder=tiny_embedder_path) >> f"bi-encoder:{tiny_embedder_path}"
    result = experiment(demo, [pipeline], latency_queries=3, show_progress=False, n_resamples=50)
    assert prepared == [pipeline.k] * 3
    assert "rerank" in set(result.latency[result.latency["pipeline"] == pipeline.name]["stage"])


def test_pipelines_name_reranker_families_and_their_own_options(tiny_embedder_path):
    p = Pipeline(embedder=tiny_embedder_path, reranker=f"bi-encoder:{tiny_embedder_path}", k=5,
                 reranker_dtype="bfloat16", max_length=64)  # fmt: skip
    assert p.name == "dense(model) >> bi-encoder:model(k=5, top_n=5)"
    assert (p.reranker_dtype, p.max_length) == ("float32", None)  # a bi-encoder reads neither
    assert p.models() == [(tiny_embedder_path, "embedder"), (tiny_embedder_path, "embedder")]
    assert len(grid([tiny_embedder_path], [f"bi-encoder:{tiny_embedder_path}"], [5],
                    reranker_dtypes=["float32", "bfloat16"])) == 1  # fmt: skip
    with pytest.raises(ConfigError, match="Unknown reranker family 'colbert'.*'cross-encoder:', 'bi-encoder:'"):
        Pipeline(reranker="colbert:some/model")
    with pytest.raises(ConfigError, match="names no model: write bi-encoder:<Hub id or folder>"):
        Pipeline(reranker="bi-encoder:")


def test_a_bi_encoder_reranker_is_evaluated_beside_its_first_stage_and_its_pair_scores_reused(
    demo, tiny_embedder_path, cache, monkeypatch
):
    calls: list[int] = []
    real = BiEncoderRescorer.score

    def spy(self, pairs, **kwargs):
        calls.append(len(pairs))
        return real(self, pairs, **kwargs)

    monkeypatch.setattr(BiEncoderRescorer, "score", spy)
    p = Pipeline(embedder=tiny_embedder_path, reranker=f"bi-encoder:{tiny_embedder_path}", k=5)
    result = experiment(demo, [p], **QUIET)
    assert list(result.table.index) == [p.name, p.own_first_stage().name]
    assert result.table.loc[p.name, "first_stage"] == p.own_first_stage().name
    assert sum(calls) == 5 * len(demo.queries)
    # The same embedder rescoring its own top 5 reorders nothing: the cosines are the index's.
    for q, run in result.runs[p.name].items():
        assert list(run)[:5] == list(result.runs[p.own_first_stage().name][q])[:5]
    calls.clear()
    again = experiment(demo, [p], **{**QUIET, "n_resamples": 60})  # another result; the same pairs
    assert calls == [] and again.runs == result.runs


class Reverse:
    """A reranker of a user's own that ranks each query's candidates in reverse and keeps all
    but the last: the engine knows it only through ragkit.stages.Reranker."""

    def __init__(self, fingerprint, calls, *, invent=False):
        self.fingerprint = fingerprint
        self.calls = calls
        self.invent = invent

    def rerank(self, query, candidates):
        self.calls.append(query)
        kept = list(reversed(candidates))[:-1]
        ranked = [(d, float(-i)) for i, (d, _) in enumerate(kept)]
        return [("not-a-candidate", 1.0), *ranked] if self.invent else ranked

    def as_compressor(self, top_n, *, raw_scores=False):
        raise NotImplementedError


class ReverseSource:
    label = "reverse"

    def __init__(self, fingerprint=None, *, invent=False):
        self.fingerprint = fingerprint
        self.calls: list[str] = []
        self.invent = invent

    def build(self, collection, context):
        return Reverse(self.fingerprint, self.calls, invent=self.invent)


def test_a_users_own_reranker_runs_through_the_engine_and_is_cached_only_with_a_fingerprint(
    demo, tiny_embedder_path, cache
):
    source = ReverseSource()
    p = Pipeline(embedder=tiny_embedder_path, reranker=source, k=4)
    assert p.name == "dense(model) >> reverse(k=4, top_n=4)"
    result = experiment(demo, [p], **{**QUIET, "latency_queries": 2})
    first = result.runs[p.own_first_stage().name]
    for q, run in result.runs[p.name].items():
        top4 = list(first[q])[:4]
        # Its ranking first, then the candidate it dropped, then the first stage's deeper ones.
        assert list(run)[:4] == [*reversed(top4[1:]), top4[0]]
        assert list(run)[4:] == list(first[q])[4:]
    assert set(result.latency[result.latency["pipeline"] == p.name]["stage"]) >= {"rerank", "total"}
    assert len(source.calls) == len(demo.queries) + 2  # the runs, then the two timed queries
    experiment(demo, [p], **QUIET)
    assert len(source.calls) == 2 * len(demo.queries) + 2  # no fingerprint: nothing reused

    named = ReverseSource("reverse-v1")
    q = Pipeline(embedder=tiny_embedder_path, reranker=named, k=4)
    experiment(demo, [q], **QUIET)
    experiment(demo, [q], **{**QUIET, "n_resamples": 60})
    assert len(named.calls) == len(demo.queries)  # its rankings were cached under its fingerprint


def test_a_users_reranker_that_breaks_the_contract_is_stopped_by_name_before_anything_is_written(
    demo, tiny_embedder_path, cache
):
    p = Pipeline(embedder=tiny_embedder_path, reranker=ReverseSource("v1", invent=True), k=4)
    with pytest.raises(RagkitError, match=r"Reranker reverse returned .* not among its candidates .*not-a-candidate"):
        experiment(demo, [p], **QUIET)
    results = Cache().path("results")
    assert not (results.exists() and any(results.iterdir()))
    with pytest.raises(ConfigError, match="ranks whole documents.*passage pipeline"):
        experiment(demo, [Pipeline(embedder=tiny_embedder_path, reranker=ReverseSource(), chunk_size=200)], **QUIET)
    with pytest.raises(ConfigError, match=r"reranker= takes a registered name or a stage of your own"):
        Pipeline(reranker=42)


def test_the_cli_evaluates_a_bi_encoder_reranker(tiny_embedder_path, tmp_path, cache, capsys):
    out = tmp_path / "report"
    reranker = f"bi-encoder:{tiny_embedder_path}"
    code = main(["eval", "--dataset", "demo", "--embedders", tiny_embedder_path, "--rerankers", "none", reranker,
                 "--k", "5", "--latency-queries", "0", "--output", str(out)])  # fmt: skip
    assert code == 0
    assert "bi-encoder:model(k=5, top_n=5)" in capsys.readouterr().out
    assert main(["eval", "--dataset", "demo", "--rerankers", "bi-encoder:/no/such/folder", "--output", str(out)]) == 2


def test_nothing_of_a_users_stage_without_a_fingerprint_is_cached(demo, tiny_embedder_path, cache):
    p = Pipeline(embedder=tiny_embedder_path, reranker=ReverseSource(), k=4)
    assert not p.cacheable and p.fields()["reranker"] == {"stage": "reverse", "fingerprint": None}
    experiment(demo, [p], **QUIET)
    results = Cache().path("results")
    assert not (results.exists() and any(results.iterdir()))  # no result to be reused later
    named = Pipeline(embedder=tiny_embedder_path, reranker=ReverseSource("v1"), k=4)
    assert named.cacheable
    experiment(demo, [named], **QUIET)
    assert any(results.iterdir())


RESCORING = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rescoring" / "results.json"


def test_the_docs_quote_the_committed_bi_encoder_and_cross_encoder_run():
    stored = json.loads(RESCORING.read_text())
    root = RESCORING.parents[3]
    page = " ".join((root / "docs" / "your-pipeline.md").read_text().split())
    readme = " ".join((root / "README.md").read_text().split())
    latency = {(r["pipeline"], r["stage"]): r["p50_ms"] for r in stored["latency"]}
    first = "dense(all-MiniLM-L6-v2)"
    for reranker, p_format in (("bi-encoder:bge-small-en-v1.5", ".3f"), ("ms-marco-MiniLM-L-12-v2", ".2f")):
        name = f"{first} >> {reranker}(k=20, top_n=20)"
        row = stored["table"][name]
        low, high = row["nDCG@10 own ci_low"], row["nDCG@10 own ci_high"]
        quoted = (f"by {row['nDCG@10 own delta']:+.3f} (95% CI {low:+.3f} to {high:+.3f}, p "
                  f"{row['nDCG@10 own p_perm_holm']:{p_format}}")  # fmt: skip
        assert quoted in page, quoted
        assert f"for {latency[(name, 'rerank')]:,.0f} ms per query" in page
        if reranker.startswith("bi-encoder"):  # the README's line about it
            assert quoted.removeprefix("by ") in readme and f"for {latency[(name, 'rerank')]:,.0f} ms" in readme
        assert not row["nDCG@10 own significant"]  # the page says neither is distinguishable
    assert stored["meta"]["n_queries"] == 50 and stored["meta"]["collection"] == "scifact-q50-s0"
