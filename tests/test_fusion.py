"""Fusion of any number of first stages: the two fusion functions against independent
computations (ties included), a fused stage ranking as its parts' rankings fused, its LangChain
view agreeing, the hybrid being the two-stage case, the fusion through the whole evaluation,
its identity (fingerprint) and its bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_stages import bm25_run_file, keeps_the_contract

from ragkit import Fusion, Pipeline, experiment
from ragkit.errors import ConfigError, RagkitError
from ragkit.fusion import ConvexRetriever, convex_fusion, reciprocal_rank_fusion


def _convex_by_numpy(rankings, weights):
    """Convex fusion written another way: a documents x rankings matrix of normalised scores."""
    docs = list(dict.fromkeys(d for ranking in rankings for d, _ in ranking))
    matrix = np.zeros((len(docs), len(rankings)))
    for j, ranking in enumerate(rankings):
        scores = np.array([s for _, s in ranking], dtype=float)
        if not len(scores):
            continue
        span = scores.max() - scores.min()
        normalised = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
        for (d, _), value in zip(ranking, normalised):
            matrix[docs.index(d), j] = value
    fused = matrix @ np.array(weights, dtype=float)
    order = sorted(range(len(docs)), key=lambda i: (-round(fused[i], 12), i))  # ties: first appearance
    return [(docs[i], fused[i]) for i in order]


@pytest.mark.parametrize("weights", [(1, 1, 1), (0.7, 0.2, 0.1), (3.0, 1.0, 0.5)])
def test_convex_fusion_is_the_weighted_sum_of_min_max_normalised_scores(weights):
    rng = random.Random(3)
    for _ in range(50):
        pool = [f"d{i}" for i in range(30)]
        rankings = []
        for _ in weights:
            docs = rng.sample(pool, rng.randint(0, 15))
            # Scores on different scales (a cosine, a BM25 score), some repeated (ties).
            scale = rng.choice([1.0, 25.0])
            scores = sorted((round(rng.random(), 1) * scale for _ in docs), reverse=True)
            rankings.append(list(zip(docs, scores)))
        ours = convex_fusion(rankings, weights=weights)
        theirs = _convex_by_numpy(rankings, weights)
        assert dict(ours) == pytest.approx(dict(theirs))
        # The same order, up to documents whose sums agree but for float rounding (summed in
        # another order); equal scores keep the order of first appearance.
        first_seen = {d: i for i, d in enumerate(dict.fromkeys(d for ranking in rankings for d, _ in ranking))}
        for (a, sa), (b, sb) in zip(ours, ours[1:]):
            assert sa >= sb
            if sa == sb:
                assert first_seen[a] < first_seen[b]
        for (a, _), (b, _) in zip(ours, theirs):
            assert a == b or dict(ours)[a] == pytest.approx(dict(ours)[b], abs=1e-12)


def test_rank_fusion_of_three_rankings_is_the_formula_and_ensemble_retrievers_order():
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_core.documents import Document

    from ragkit.retrievers import BM25Retriever

    stub = BM25Retriever.from_documents([Document("stub", metadata={"doc_id": "x"})])
    weights = (0.5, 0.3, 0.2)
    ensemble = EnsembleRetriever(retrievers=[stub] * 3, weights=list(weights), id_key="doc_id")
    rng = random.Random(11)
    for _ in range(50):
        pool = [f"d{i}" for i in range(30)]
        rankings = [rng.sample(pool, rng.randint(0, 20)) for _ in weights]
        ours = reciprocal_rank_fusion(rankings, weights=weights, c=60)
        docs = [[Document("", metadata={"doc_id": d}) for d in r] for r in rankings]
        assert [d for d, _ in ours] == [d.metadata["doc_id"] for d in ensemble.weighted_reciprocal_rank(docs)]
        for doc, score in ours:
            expected = sum(w / (r.index(doc) + 1 + 60) for r, w in zip(rankings, weights) if doc in r)
            assert score == pytest.approx(expected)


@pytest.fixture()
def parts(tiny_embedder_path, demo, tmp_path):
    """Three first stages of different kinds over the demo collection: dense on passages,
    BM25, and a run file another system wrote."""
    return (
        Pipeline(embedder=tiny_embedder_path, chunk_size=120, chunk_overlap=20),
        Pipeline(retriever="bm25"),
        Pipeline(retriever="run", run_file=bm25_run_file(demo, tmp_path / "other.trec", depth=100)),
    )


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_a_fusion_keeps_the_first_stage_contract(method, tiny_embedder_path, demo, cache, monkeypatch):
    from langchain_core.vectorstores import InMemoryVectorStore

    from ragkit.langchain_stages import LangChainRetriever
    from ragkit.loaders import HuggingFaceEmbeddingsLoader

    embeddings = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    mine = LangChainRetriever(factory=lambda docs: InMemoryVectorStore.from_documents(docs, embeddings),
                              name="in-memory", fingerprint="v1")  # fmt: skip
    fusion = Fusion(Pipeline(embedder=tiny_embedder_path), Pipeline(retriever="bm25"), mine, weights=[2, 1, 1],
                    method=method)  # fmt: skip
    keeps_the_contract(Pipeline(retriever=fusion), demo, monkeypatch)


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_a_fused_run_is_its_parts_runs_fused_and_its_langchain_view_agrees(method, parts, demo, cache):
    weights = (0.5, 0.3, 0.2)
    fusion = Pipeline(retriever=Fusion(*parts, weights=weights, method=method))
    result = experiment(demo, [*parts, fusion], latency_queries=0, show_progress=False, n_resamples=50)
    for q in sorted(demo.queries):
        # Each part's evaluation run is its ranking at depth 100 (the fusion's depth).
        rankings = [list(result.runs[p.name][q].items()) for p in parts]
        if method == "rrf":
            fused = reciprocal_rank_fusion([[d for d, _ in r] for r in rankings], weights=weights)
        else:
            fused = convex_fusion(rankings, weights=weights)
        assert list(result.runs[fusion.name][q]) == [d for d, _ in fused][:100]


def test_the_hybrid_is_the_fusion_of_dense_and_bm25(tiny_embedder_path, demo, cache):
    fused = Pipeline(retriever=Fusion(Pipeline(embedder=tiny_embedder_path), Pipeline(retriever="bm25"),
                                      weights=[0.7, 0.3]))  # fmt: skip
    hybrid = Pipeline("hybrid", tiny_embedder_path, fusion_weights=(0.7, 0.3))
    result = experiment(demo, [hybrid, fused], latency_queries=2, show_progress=False, n_resamples=50)
    assert result.runs[hybrid.name] == result.runs[fused.name]
    steps = set(result.latency[result.latency["pipeline"] == fused.name]["stage"])
    assert {"embed query", "vector search", "bm25 search", "fusion", "total"} <= steps


def test_a_reranked_fusion_is_judged_against_the_fusion_alone(parts, demo, cache, tiny_cross_encoder_path):
    fusion = Pipeline(retriever=Fusion(*parts[:2]))
    reranked = fusion >> tiny_cross_encoder_path
    result = experiment(demo, [Pipeline(retriever="bm25"), reranked], latency_queries=0, show_progress=False,
                        n_resamples=50)  # fmt: skip
    assert fusion.name in result.table.index
    assert result.table.loc[reranked.name, "first_stage"] == fusion.name
    assert f"Reranking the top {reranked.k} of {fusion.name}" in result.verdict()


def test_a_fusion_with_a_run_file_part_has_no_latency_to_measure(parts, demo, cache):
    fusion = Pipeline(retriever=Fusion(*parts))
    result = experiment(demo, [fusion], latency_queries=2, show_progress=False, n_resamples=50)
    assert fusion.name not in set(result.latency["pipeline"])


def test_the_fingerprint_follows_the_parts_the_weights_and_the_method(parts, tmp_path, demo):
    base = Fusion(*parts)
    assert Fusion(*parts).fingerprint == base.fingerprint
    others = [
        Fusion(*parts, weights=[2, 1, 1]),
        Fusion(*parts, method="convex"),
        Fusion(*parts[:2]),
        Fusion(parts[0], Pipeline(retriever="bm25"), Pipeline(retriever="run", run_file=parts[2].run_file), c=10),
        Fusion(Pipeline(embedder=parts[0].embedder), *parts[1:]),
    ]
    assert len({f.fingerprint for f in [base, *others]}) == len(others) + 1
    # The run file's content is part of it, not only its name: rewritten, the fusion is another.
    before = base.fingerprint
    bm25_run_file(demo, tmp_path / "other.trec", depth=5)
    assert base.fingerprint != before
    # A part of the user's own without a fingerprint: nothing the fusion produces is cached.
    from langchain_core.vectorstores import InMemoryVectorStore

    from ragkit.langchain_stages import LangChainRetriever

    unknown = LangChainRetriever(factory=lambda docs: InMemoryVectorStore.from_documents(docs, None), name="mine")
    assert Fusion(parts[1], unknown).fingerprint is None
    assert not Pipeline(retriever=Fusion(parts[1], unknown)).cacheable


def test_names_models_and_checks_come_from_the_parts(parts, demo, tmp_path, tiny_embedder_path):
    fusion = Fusion(*parts, weights=[2, 1, 1])
    assert Pipeline(retriever=fusion).name == (f"rrf({parts[0].first_stage}+bm25+run(other.trec), weights=2:1:1)")
    assert Pipeline(retriever=Fusion(*parts, method="convex", name="mix")).name == "mix"
    assert Pipeline(retriever=fusion).models() == [(tiny_embedder_path, "embedder")]
    # A run file naming queries the collection does not hold is refused before any work.
    stray = tmp_path / "stray.trec"
    stray.write_text("nope Q0 d1 1 1.0 other\n")
    with pytest.raises(RagkitError, match="stray.trec"):
        experiment(demo, [Pipeline(retriever=Fusion(parts[1], Pipeline(retriever="run", run_file=str(stray))))],
                   show_progress=False)  # fmt: skip


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: Fusion(p[0]), "two or more first stages"),
        (lambda p: Fusion(p[0], p[1] >> "some/cross-encoder"), "part 2 .* is reranked"),
        (lambda p: Fusion(p[0], "bm25"), "part 2 is a str"),
        (lambda p: Fusion(*p, weights=[1, 1]), "weights must be 3 positive numbers"),
        (lambda p: Fusion(*p, weights=[1, 0, 1]), "weights must be 3 positive numbers"),
        (lambda p: Fusion(*p, method="combmnz"), "method must be one of rrf, convex"),
        (lambda p: Fusion(*p, depth=0), "depth"),
    ],
)
def test_bad_fusions_are_refused_with_what_to_do(make, message, parts):
    with pytest.raises(ConfigError, match=message):
        make(parts)


def test_convex_fusion_of_retrievers_without_scores_says_to_use_rank_fusion():
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class Unscored(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return [Document("text", metadata={"doc_id": "d1"})]

    with pytest.raises(RagkitError, match="method='rrf'"):
        ConvexRetriever(retrievers=[Unscored(), Unscored()], weights=[0.5, 0.5]).invoke("query")
