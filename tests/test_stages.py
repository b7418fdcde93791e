"""The first-stage seam: every registered kind of first stage goes through the same contract
(ids known, scores finite and best first, the fingerprint stable and sensitive to what changes
the rankings, the cache round trip exact, the one-query timed path ranking as the batch path
does, the LangChain view agreeing), and a stage that breaks the contract is stopped with its
name before anything is scored."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

import ragkit.retrievers as retrievers
from ragkit.cache import Cache
from ragkit.errors import ConfigError, RagkitError
from ragkit.evaluate import Pipeline, _first_stage_run, experiment, grid
from ragkit.measures import ranked_run
from ragkit.registry import FIRST_STAGES
from ragkit.results import trec_run
from ragkit.stages import FirstStage, StageContext, hits_problem

DEPTH = 10
# A query embedded alone and in a batch may differ in its last bits (another batch shape can
# take another BLAS path), and so may their cosine scores, by about 1e-6 on 2.4e-6-relative
# vectors: positions must agree in score to this much, and may swap only documents whose
# scores are that close.
SCORE_TOLERANCE = 1e-5


def assert_ranked_alike(one: list, batch: list) -> None:
    """The same ranking, up to neighbours whose scores cannot be told apart at SCORE_TOLERANCE."""
    assert len(one) == len(batch)
    batch_scores = dict(batch)
    for (doc, score), (batch_doc, batch_score) in zip(one, batch):
        assert abs(score - batch_score) <= SCORE_TOLERANCE, (doc, score, batch_doc, batch_score)
        if doc != batch_doc and doc in batch_scores:  # a swap: of two documents the scores tie
            assert abs(batch_scores[doc] - batch_score) <= SCORE_TOLERANCE, (doc, batch_doc)


def bm25_run_file(collection, path, depth=DEPTH) -> str:
    """A TREC run file of BM25's rankings of ``collection``, as another system would write it."""
    bm25 = retrievers.BM25Retriever.from_documents(collection.documents())
    ids = sorted(collection.queries)
    hits = bm25.search([collection.queries[q] for q in ids], depth)
    path.write_text(trec_run({q: ranked_run(h) for q, h in zip(ids, hits)}, "other-system"))
    return str(path)


@pytest.fixture()
def options(tiny_embedder_path, demo, tmp_path) -> dict[str, dict]:
    """For every registered kind, the options of one pipeline of that kind."""
    return {
        "dense": {"embedder": tiny_embedder_path},
        "bm25": {},
        "hybrid": {"embedder": tiny_embedder_path},
        "run": {"run_file": bm25_run_file(demo, tmp_path / "bm25.trec")},
    }


def build(collection, pipeline: Pipeline) -> FirstStage:
    built: dict = {}

    def part(spec=None, **o):  # as the engine's: a pipeline, a stage of one's own, or options
        if isinstance(spec, Pipeline):
            q = spec.own_first_stage()
        else:
            q = Pipeline(**o) if spec is None else Pipeline(retriever=spec)
        built.setdefault(q.first_stage, q.kind.build(collection, q, context))
        return built[q.first_stage]

    context = StageContext("cpu", False, None, None, part)
    return pipeline.kind.build(collection, pipeline, context)


def test_every_registered_kind_is_under_the_contract(options):
    assert sorted(options) == sorted(FIRST_STAGES)


@pytest.mark.parametrize("kind", sorted(FIRST_STAGES))
def test_a_first_stage_keeps_the_contract(kind, options, demo, cache, monkeypatch):
    keeps_the_contract(Pipeline(retriever=kind, **options[kind]), demo, monkeypatch)


@pytest.mark.parametrize("passage_score", ["maxp", "firstp"])
def test_a_passage_first_stage_keeps_the_contract(passage_score, tiny_embedder_path, demo, cache, monkeypatch):
    # A dense pipeline over passages is the passage index wrapped in a PassageStage, which
    # ranks documents: the same contract as every kind.
    from ragkit.passages import PassageStage

    pipeline = Pipeline(embedder=tiny_embedder_path, chunk_size=120, chunk_overlap=20, passage_score=passage_score)
    assert isinstance(build(demo, pipeline), PassageStage)
    keeps_the_contract(pipeline, demo, monkeypatch)


def test_a_users_own_first_stage_keeps_the_contract(tiny_embedder_path, demo, cache, monkeypatch):
    from langchain_core.vectorstores import InMemoryVectorStore

    from ragkit.langchain_stages import LangChainRetriever
    from ragkit.loaders import HuggingFaceEmbeddingsLoader

    embeddings = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    source = LangChainRetriever(factory=lambda docs: InMemoryVectorStore.from_documents(docs, embeddings),
                                name="in-memory", fingerprint="v1")  # fmt: skip
    keeps_the_contract(Pipeline(retriever=source), demo, monkeypatch)


def keeps_the_contract(pipeline: Pipeline, demo, monkeypatch) -> None:
    kind = pipeline.kind.name
    stage = build(demo, pipeline)
    assert isinstance(stage, FirstStage)
    queries = [(q, demo.queries[q]) for q in sorted(demo.queries)]

    hits = stage.retrieve(queries, DEPTH)
    assert hits_problem(hits, demo.corpus, len(queries), DEPTH, stage.fills_depth) is None
    assert all(ranked for ranked in hits)  # every demo query finds something
    for ranked in hits:
        assert all(math.isfinite(s) for _, s in ranked)
        # Best first, and the engine's tie-break keeps that order with strictly decreasing scores.
        assert list(ranked_run(ranked)) == [d for d, _ in ranked]

    # The same stage built again has the same fingerprint; deeper is the same ranking extended.
    assert build(demo, pipeline).fingerprint == stage.fingerprint
    deeper = stage.retrieve(queries, 2 * DEPTH)
    assert [r[:DEPTH] for r in deeper] == hits

    # The cache round trip is exact, and a cached run is read, not recomputed.
    first = _first_stage_run(stage, pipeline.first_stage, demo, sorted(demo.queries), DEPTH, cache=Cache(), reuse=True)
    assert first == hits
    monkeypatch.setattr(type(stage), "retrieve", lambda *a: pytest.fail("a cached run was recomputed"))
    again = _first_stage_run(stage, pipeline.first_stage, demo, sorted(demo.queries), DEPTH, cache=Cache(), reuse=True)
    assert again == hits
    monkeypatch.undo()

    # One query at a time, timed, ranks as the batch does; a run file's system ran elsewhere.
    for (_, text), ranked in zip(queries, hits):
        timed = stage.timed_search(text, DEPTH)
        if kind == "run":
            assert timed is None
            continue
        one, steps = timed
        assert_ranked_alike(one, ranked)
        assert steps and all(isinstance(s, float) and s >= 0 for s in steps.values())

    # The LangChain view returns the same documents, each carrying its doc id.
    retriever = stage.as_retriever(k=5)
    for (_, text), ranked in zip(queries[:3], hits):
        docs = retriever.invoke(text)
        if all("score" in d.metadata for d in docs):
            assert_ranked_alike([(d.metadata["doc_id"], d.metadata["score"]) for d in docs], ranked[:5])
        else:  # the fused retriever keeps ranks, not scores
            assert [d.metadata["doc_id"] for d in docs] == [d for d, _ in ranked[:5]]


@pytest.mark.parametrize(
    "kind, changed",
    [
        ("dense", {"chunk_size": 200, "chunk_overlap": 20}),
        ("hybrid", {"fusion_weights": (0.7, 0.3)}),
    ],
)
def test_the_fingerprint_follows_each_option_that_changes_the_rankings(kind, changed, options, demo, cache):
    base = build(demo, Pipeline(retriever=kind, **options[kind]))
    other = build(demo, Pipeline(retriever=kind, **options[kind], **changed))
    assert other.fingerprint != base.fingerprint


def test_the_fingerprint_follows_the_corpus_and_the_run_files_content(options, demo, cache, tmp_path):
    fewer = replace(demo, corpus=dict(list(demo.corpus.items())[:-1]))
    assert build(fewer, Pipeline(retriever="bm25")).fingerprint != build(demo, Pipeline(retriever="bm25")).fingerprint
    path = tmp_path / "shallow.trec"
    shallow = Pipeline(retriever="run", run_file=bm25_run_file(demo, path, depth=5))
    assert build(demo, shallow).fingerprint != build(demo, Pipeline(retriever="run", **options["run"])).fingerprint


def test_a_stage_that_breaks_the_contract_is_stopped_by_name_before_anything_is_scored(
    demo, cache, monkeypatch, scored_pairs, tiny_cross_encoder_path
):
    def broken(self, queries, k):
        return [[(d, math.nan) for d in list(demo.corpus)[:k]] for _ in queries]

    monkeypatch.setattr(retrievers.BM25Retriever, "retrieve", broken)
    with pytest.raises(RagkitError, match=r"First stage bm25 returned a run .* not a finite number"):
        experiment(demo, [Pipeline(retriever="bm25", reranker=tiny_cross_encoder_path, k=5)], show_progress=False)
    assert scored_pairs == []


def test_pipelines_name_registered_kinds_and_their_own_options(tmp_path):
    with pytest.raises(ConfigError, match="Unknown retriever 'splade'.*'dense', 'bm25', 'hybrid', 'run'"):
        Pipeline(retriever="splade")
    with pytest.raises(ConfigError, match="A run pipeline needs a run_file"):
        Pipeline(retriever="run")
    with pytest.raises(ConfigError, match="Passages .* are for dense pipelines"):
        Pipeline(retriever="run", run_file="x.trec", chunk_size=200)
    # Options a kind does not read cannot make two pipelines differ.
    assert Pipeline(retriever="bm25", run_file="x.trec") == Pipeline(retriever="bm25")
    assert Pipeline(retriever="run", run_file="a/x.trec", embedder="m").embedder is None
    names = [p.name for p in grid(rerankers=[None, "ce"], ks=[5], embedders=(), runs=["a/x.trec"])]
    assert names == ["run(x.trec)", "run(x.trec) >> ce(k=5, top_n=5)"]
