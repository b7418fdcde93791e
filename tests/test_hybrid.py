"""The hybrid first stage: ragkit's fusion is LangChain's EnsembleRetriever's, on made-up
rankings (ties included) and on a real SciFact subset, and a hybrid pipeline goes through the
whole evaluation (own first stage, latency stages, verdict)."""

from __future__ import annotations

import math
import random

import pytest
from langchain_core.documents import Document

from ragkit import HybridRetriever, Pipeline, experiment, grid, load_beir, make_subset
from ragkit.errors import ConfigError
from ragkit.fusion import reciprocal_rank_fusion
from ragkit.retrievers import BM25Retriever, build_chroma_index


def _ensemble(weights):
    from langchain_classic.retrievers import EnsembleRetriever

    stub = BM25Retriever.from_documents([Document("stub retriever", metadata={"doc_id": "x"})])
    return EnsembleRetriever(retrievers=[stub, stub], weights=list(weights), id_key="doc_id")


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.7, 0.3), (1.0, 2.5)])
def test_fusion_is_ensemble_retrievers_weighted_rrf_ties_included(weights):
    rng = random.Random(7)
    ensemble = _ensemble(weights)
    for _ in range(50):
        pool = [f"d{i}" for i in range(30)]
        a, b = rng.sample(pool, rng.randint(0, 20)), rng.sample(pool, rng.randint(0, 20))
        ours = reciprocal_rank_fusion([a, b], weights=weights)
        docs = [[Document("", metadata={"doc_id": d}) for d in ranking] for ranking in (a, b)]
        theirs = [d.metadata["doc_id"] for d in ensemble.weighted_reciprocal_rank(docs)]
        assert [d for d, _ in ours] == theirs
    # Equal weights and mirrored ranks make exact ties: they keep the first ranking's order.
    assert [d for d, _ in reciprocal_rank_fusion([["a", "b"], ["b", "a"]], weights=(0.5, 0.5))] == ["a", "b"]


def test_fused_scores_are_the_rrf_formula():
    fused = dict(reciprocal_rank_fusion([["a", "b"], ["c", "a"]], weights=(0.7, 0.3), c=60))
    assert fused["a"] == pytest.approx(0.7 / 61 + 0.3 / 62)
    assert fused["b"] == pytest.approx(0.7 / 62)
    assert fused["c"] == pytest.approx(0.3 / 61)


@pytest.mark.parametrize("weights", [(0, 1), (-0.5, 1), (math.nan, 1), (1,), (1, 2, 3), (True, 1)])
def test_weights_that_are_not_two_positive_numbers_are_refused(weights):
    with pytest.raises(ConfigError, match="--fusion-weights"):
        Pipeline("hybrid", fusion_weights=weights)


def test_hybrid_names_show_unequal_weights_and_rerank_against_their_own_first_stage():
    assert Pipeline("hybrid").name == "hybrid(all-MiniLM-L6-v2+bm25)"
    weighted = Pipeline("hybrid", reranker="cross-encoder/ms-marco-MiniLM-L-12-v2", fusion_weights=(0.7, 0.3))
    assert weighted.first_stage == "hybrid(all-MiniLM-L6-v2+bm25, weights=0.7:0.3)"
    assert weighted.own_first_stage() == Pipeline("hybrid", fusion_weights=(0.7, 0.3))
    # Outside a hybrid the weights mean nothing, so they cannot make two pipelines differ.
    assert Pipeline("bm25", fusion_weights=(0.9, 0.1)) == Pipeline("bm25")
    names = [p.name for p in grid(rerankers=[None], bm25=True, hybrid=True)]
    assert names == ["dense(all-MiniLM-L6-v2)", "bm25", "hybrid(all-MiniLM-L6-v2+bm25)"]


@pytest.fixture(scope="module")
def real_hybrid(tmp_path_factory):
    """all-MiniLM-L6-v2 and BM25 over a 200-document SciFact subset (embedded in ~20 s)."""
    subset = make_subset(load_beir("scifact"), 12, n_docs=200)
    folder = tmp_path_factory.mktemp("hybrid-index")
    index = build_chroma_index(subset.documents(), persist_directory=folder, show_progress=False)
    return subset, index, BM25Retriever.from_documents(subset.documents())


@pytest.mark.real_models
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.8, 0.2)])
def test_evaluation_path_ranks_as_langchains_ensemble_retriever_on_a_real_subset(real_hybrid, weights):
    subset, index, bm25 = real_hybrid
    hybrid = HybridRetriever(index, bm25, weights=weights)
    queries = [subset.queries[q] for q in sorted(subset.queries)]
    for k in (10, 100):
        ours = hybrid.search(queries, k)
        retriever = hybrid.as_retriever(k=k)
        for query, hits in zip(queries, ours):
            docs = retriever.invoke(query)
            assert [d.metadata["doc_id"] for d in docs] == [d for d, _ in hits]
            assert [d.metadata["fused_rank"] for d in docs] == list(range(1, len(docs) + 1))
            assert all("score" not in d.metadata for d in docs)
    # The top 20 is the top 100's prefix: a k sweep reranks prefixes of one candidate list.
    deep = hybrid.search(queries, 100)
    assert [h[:20] for h in deep] == hybrid.search(queries, 20)


@pytest.mark.real_models
def test_batched_and_langchain_engines_give_the_same_hybrid_runs(real_hybrid, cache):
    subset = real_hybrid[0]
    pipelines = [Pipeline("hybrid", fusion_weights=(0.6, 0.4))]
    kwargs = {"latency_queries": 0, "show_progress": False, "n_resamples": 50}
    batched = experiment(subset, pipelines, engine="batched", **kwargs)
    langchain = experiment(subset, pipelines, engine="langchain", **kwargs)
    name = pipelines[0].name
    for q, run in batched.runs[name].items():
        assert list(run) == list(langchain.runs[name][q])


def test_a_reranked_hybrid_goes_through_the_evaluation(demo, tiny_embedder_path, tiny_cross_encoder_path, cache):
    pipelines = [
        Pipeline(embedder=tiny_embedder_path),
        Pipeline("hybrid", tiny_embedder_path, reranker=tiny_cross_encoder_path, k=10),
    ]
    result = experiment(demo, pipelines, latency_queries=3, show_progress=False, n_resamples=100)
    hybrid = Pipeline("hybrid", tiny_embedder_path).name
    assert hybrid in result.table.index  # added: the reranker is judged against it
    assert result.table.loc[pipelines[1].name, "first_stage"] == hybrid
    stages = set(result.latency[result.latency["pipeline"] == pipelines[1].name]["stage"])
    assert {"embed query", "vector search", "bm25 search", "fusion", "rerank", "total"} <= stages
    verdict = result.verdict()
    assert f"Reranking the top 10 of {hybrid}" in verdict
    assert f"{hybrid} without a reranker scores" in verdict
    # The hybrid's run is the fusion of the dense and BM25 runs of the same documents.
    run = result.runs[hybrid]
    assert all(len(docs) == len(demo.corpus) for docs in run.values())


def test_a_chunked_index_cannot_be_fused(demo, tiny_embedder_path, cache):
    index = build_chroma_index(demo.documents(), tiny_embedder_path, chunk_size=200, show_progress=False)
    with pytest.raises(ConfigError, match="without chunk_size"):
        HybridRetriever(index, BM25Retriever.from_documents(demo.documents()))


def test_cli_hybrid_adds_the_fused_first_stage_and_reranks_it(
    tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path, capsys
):
    from ragkit.cli import main

    code = main(["eval", "--dataset", "demo", "--queries", "0", "--embedders", tiny_embedder_path, "--rerankers",
                 "none", tiny_cross_encoder_path, "--k", "10", "--hybrid", "--fusion-weights", "0.7", "0.3",
                 "--latency-queries", "2", "--output", str(tmp_path / "r")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    hybrid = Pipeline("hybrid", tiny_embedder_path, fusion_weights=(0.7, 0.3)).name
    assert f"Reranking the top 10 of {hybrid}" in printed
    assert f"{hybrid} without a reranker scores" in printed
