"""A user's own LangChain stages (ragkit.langchain_stages): a vector store ranks as exact cosine
search does, whether ragkit builds it from a factory or the user passes it built; a generic
retriever keeps its scores, or its order when it has none; ids come from the metadata or the
stage is stopped by name; the fingerprint follows the user's and the corpus; a compressor is
a reranker that keeps its scores, or its order when it leaves none, and is stopped by name
when it returns what it was not given."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore
from test_stages import assert_ranked_alike

from ragkit.cache import digest
from ragkit.errors import ConfigError, RagkitError
from ragkit.langchain_stages import LangChainCompressor, LangChainRetriever
from ragkit.loaders import HuggingFaceEmbeddingsLoader, HuggingFaceRerankerLoader
from ragkit.rerank import ScoredCrossEncoderReranker, score_pairs
from ragkit.retrievers import BM25Retriever, chroma_settings
from ragkit.stages import FirstStage, PairScorer, Reranker, StageContext, StageSource, hits_problem

DEPTH = 10
CONTEXT = StageContext("cpu", False, None, None, lambda **options: pytest.fail("a LangChain stage asked for a part"))


@pytest.fixture()
def embeddings(tiny_embedder_path):
    return HuggingFaceEmbeddingsLoader(tiny_embedder_path)


@pytest.fixture()
def queries(demo) -> list[tuple[str, str]]:
    return [(q, demo.queries[q]) for q in sorted(demo.queries)]


def in_memory(embeddings):
    """A factory as a user writes one."""
    return lambda docs: InMemoryVectorStore.from_documents(docs, embeddings)


def exact_cosine(embeddings, collection, queries, k) -> list[list[tuple[str, float]]]:
    """The k best documents of each query by cosine similarity, computed here with numpy."""
    ids = list(collection.corpus)
    vectors = np.asarray(embeddings.embed_documents([collection.text(d) for d in ids]), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hits = []
    for _, text in queries:
        query = np.asarray(embeddings.embed_query(text), dtype=np.float64)
        similarities = vectors @ (query / np.linalg.norm(query))
        hits.append([(ids[i], float(similarities[i])) for i in np.argsort(-similarities, kind="stable")[:k]])
    return hits


def assert_runs_alike(run, expected) -> None:
    assert len(run) == len(expected)
    for ranked, want in zip(run, expected):
        assert_ranked_alike(ranked, want)


class Scoreless(BaseRetriever):
    """A retriever that returns another's documents in its order without their scores."""

    inner: BaseRetriever

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(d.page_content, metadata={"doc_id": d.metadata["doc_id"]}) for d in self.inner.invoke(query)]


class Reordered(BaseRetriever):
    """Another retriever's scored documents, handed back out of order: ``"rotated"`` (second
    half first) or ``"reversed"`` (worst first, as a distance would order them)."""

    inner: BaseRetriever
    how: str

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.inner.invoke(query)
        return docs[::-1] if self.how == "reversed" else docs[len(docs) // 2 :] + docs[: len(docs) // 2]


class CosineDistances(InMemoryVectorStore):
    """A store that returns cosine distances (lower = better) and defines no relevance function."""

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs) -> list[tuple[Document, float]]:
        return [(doc, 1.0 - similarity) for doc, similarity in super().similarity_search_with_score(query, k, **kwargs)]


def test_a_vector_store_from_a_factory_ranks_as_exact_cosine_search(demo, embeddings, queries):
    source = LangChainRetriever(factory=in_memory(embeddings), name="in-memory")
    assert isinstance(source, StageSource) and source.label == "langchain(in-memory)"
    stage = source.build(demo, CONTEXT)
    assert isinstance(stage, FirstStage) and stage.fills_depth and stage.search_mode == ()

    hits = stage.retrieve(queries, DEPTH)
    assert hits_problem(hits, demo.corpus, len(queries), DEPTH, stage.fills_depth) is None
    assert_runs_alike(hits, exact_cosine(embeddings, demo, queries, DEPTH))
    # Deeper than the corpus: every document, once.
    everything = stage.retrieve(queries[:1], 100)[0]
    assert sorted(d for d, _ in everything) == sorted(demo.corpus)

    for (_, text), ranked in zip(queries, hits):
        one, steps = stage.timed_search(text, DEPTH)
        assert_ranked_alike(one, ranked)
        assert list(steps) == ["retrieve"] and steps["retrieve"] >= 0
    retriever = stage.as_retriever(k=5)
    assert isinstance(retriever, BaseRetriever)
    for (_, text), ranked in zip(queries[:3], hits):
        docs = retriever.invoke(text)
        assert_ranked_alike([(d.metadata["doc_id"], d.metadata["score"]) for d in docs], ranked[:5])
        assert all(d.page_content == demo.text(d.metadata["doc_id"]) for d in docs)


def test_a_prebuilt_store_and_its_retriever_give_the_factory_s_run(demo, embeddings, queries):
    expected = LangChainRetriever(factory=in_memory(embeddings), name="f").build(demo, CONTEXT).retrieve(queries, DEPTH)
    store = InMemoryVectorStore.from_documents(demo.documents(), embeddings)
    for given in (store, store.as_retriever()):
        stage = LangChainRetriever(given, name="prebuilt").build(demo, CONTEXT)
        assert stage.fills_depth and stage.store is store
        assert_runs_alike(stage.retrieve(queries, DEPTH), expected)


def test_a_store_holding_each_document_twice_ranks_each_once_and_still_fills_its_depth(demo, embeddings, queries):
    expected = LangChainRetriever(factory=in_memory(embeddings), name="f").build(demo, CONTEXT).retrieve(queries, DEPTH)
    twice = InMemoryVectorStore.from_documents(demo.documents() + demo.documents(), embeddings)
    stage = LangChainRetriever(twice, name="twice").build(demo, CONTEXT)
    hits = stage.retrieve(queries, DEPTH)  # checked: no document twice, DEPTH hits per query
    assert_runs_alike(hits, expected)


def test_the_retriever_s_own_search_options_are_kept(demo, embeddings, queries):
    store = InMemoryVectorStore.from_documents(demo.documents(), embeddings)
    even = {d for i, d in enumerate(demo.corpus) if i % 2 == 0}
    filtered = store.as_retriever(search_kwargs={"filter": lambda doc: doc.metadata["doc_id"] in even, "k": 3})
    stage = LangChainRetriever(filtered, name="filtered").build(demo, CONTEXT)
    assert not stage.fills_depth  # a filter may leave fewer documents than the depth
    hits = stage.retrieve(queries, DEPTH)
    assert all(len(r) == DEPTH and {d for d, _ in r} <= even for r in hits)  # its k=3 is the depth asked

    mmr = LangChainRetriever(store.as_retriever(search_type="mmr"), name="mmr").build(demo, CONTEXT)
    assert mmr.store is None and not mmr.fills_depth  # invoked: MMR is not a similarity ranking
    hits = mmr.retrieve(queries, DEPTH)
    assert all(len(r) == DEPTH and [s for _, s in r] == [-float(i) for i in range(1, DEPTH + 1)] for r in hits)


def test_a_store_that_turns_distances_into_relevance_ranks_by_relevance(demo, embeddings, queries, tmp_path):
    from langchain_chroma import Chroma

    def chroma(docs):
        return Chroma.from_documents(
            docs,
            embeddings,
            persist_directory=str(tmp_path / "chroma"),
            client_settings=chroma_settings(),
            collection_configuration={"hnsw": {"space": "cosine"}},
        )

    stage = LangChainRetriever(factory=chroma, name="chroma").build(demo, CONTEXT)
    assert_runs_alike(stage.retrieve(queries, DEPTH), exact_cosine(embeddings, demo, queries, DEPTH))


def test_a_store_returning_distances_without_a_relevance_function_is_refused(demo, embeddings, queries):
    store = CosineDistances.from_documents(demo.documents(), embeddings)
    stage = LangChainRetriever(store, name="distances").build(demo, CONTEXT)
    with pytest.raises(RagkitError, match=r"langchain\(distances\): CosineDistances returned scores that grow"):
        stage.retrieve(queries, DEPTH)


def test_bm25_through_langchain_keeps_its_scores_or_else_its_order(demo, queries):
    bm25 = BM25Retriever.from_documents(demo.documents())
    texts = [text for _, text in queries]
    stage = LangChainRetriever(bm25, name="bm25").build(demo, CONTEXT)
    assert stage.store is None and not stage.fills_depth
    hits = stage.retrieve(queries, DEPTH)
    assert hits_problem(hits, demo.corpus, len(queries), DEPTH, stage.fills_depth) is None
    assert hits == bm25.search(texts, DEPTH)
    # Deeper than its own k (20): it is told the depth asked.
    assert stage.retrieve(queries, 30) == bm25.search(texts, 30)
    docs = stage.as_retriever(k=3).invoke(texts[0])
    assert [(d.metadata["doc_id"], d.metadata["score"]) for d in docs] == hits[0][:3]

    by_rank = LangChainRetriever(Scoreless(inner=bm25), name="scoreless").build(demo, CONTEXT).retrieve(queries, DEPTH)
    assert hits_problem(by_rank, demo.corpus, len(queries), DEPTH, False) is None
    for ranked, scored in zip(by_rank, hits):
        assert [d for d, _ in ranked] == [d for d, _ in scored]
        assert [s for _, s in ranked] == [-float(rank) for rank in range(1, len(ranked) + 1)]


def test_scores_out_of_order_are_sorted_and_scores_that_grow_are_refused(demo, queries):
    bm25 = BM25Retriever.from_documents(demo.documents())
    expected = bm25.search([text for _, text in queries], DEPTH)
    rotated = LangChainRetriever(Reordered(inner=bm25, how="rotated"), name="rotated").build(demo, CONTEXT)
    assert rotated.retrieve(queries, DEPTH) == expected
    reversed_ = LangChainRetriever(Reordered(inner=bm25, how="reversed"), name="reversed").build(demo, CONTEXT)
    with pytest.raises(RagkitError, match=r"langchain\(reversed\): Reordered returned scores that grow"):
        reversed_.retrieve(queries, DEPTH)


def test_the_fingerprint_follows_the_user_s_and_the_corpus(demo, embeddings):
    factory = in_memory(embeddings)
    assert LangChainRetriever(factory=factory, name="m").build(demo, CONTEXT).fingerprint is None
    one = LangChainRetriever(factory=factory, name="m", fingerprint="v1")
    assert one.fingerprint == "v1"
    stage = one.build(demo, CONTEXT)
    assert isinstance(stage.fingerprint, str) and stage.fingerprint == one.build(demo, CONTEXT).fingerprint
    fewer = replace(demo, corpus=dict(list(demo.corpus.items())[:-1]))
    assert one.build(fewer, CONTEXT).fingerprint != stage.fingerprint
    other = LangChainRetriever(factory=factory, name="m", fingerprint="v2")
    assert other.build(demo, CONTEXT).fingerprint != stage.fingerprint
    # A prebuilt store is the user's whole index: their fingerprint names it.
    store = InMemoryVectorStore.from_documents(demo.documents(), embeddings)
    prebuilt = LangChainRetriever(store, name="m", fingerprint="v1")
    assert prebuilt.build(fewer, CONTEXT).fingerprint == prebuilt.build(demo, CONTEXT).fingerprint


def test_documents_without_the_id_key_stop_the_stage_by_name(demo, embeddings, queries):
    anonymous = [Document(d.page_content, metadata={"title": d.metadata["title"]}) for d in demo.documents()]
    store = InMemoryVectorStore.from_documents(anonymous, embeddings)
    stage = LangChainRetriever(store, name="anonymous").build(demo, CONTEXT)
    with pytest.raises(RagkitError, match=r"langchain\(anonymous\): .* no metadata\['doc_id'\].* id_key="):
        stage.retrieve(queries, DEPTH)
    # The key the user's store holds ids under.
    renamed = [Document(d.page_content, metadata={"corpus_id": d.metadata["doc_id"]}) for d in demo.documents()]
    store = InMemoryVectorStore.from_documents(renamed, embeddings)
    hits = LangChainRetriever(store, name="renamed", id_key="corpus_id").build(demo, CONTEXT).retrieve(queries, DEPTH)
    assert_runs_alike(hits, exact_cosine(embeddings, demo, queries, DEPTH))
    with pytest.raises(RagkitError, match=r"no metadata\['doc_id'\]"):
        LangChainRetriever(store, name="renamed").build(demo, CONTEXT).retrieve(queries, DEPTH)


def test_exactly_one_of_a_retriever_and_a_factory(demo, embeddings):
    store = InMemoryVectorStore(embeddings)
    with pytest.raises(ConfigError, match="exactly one of retriever= .* and factory= .* got both"):
        LangChainRetriever(store, factory=in_memory(embeddings), name="x")
    with pytest.raises(ConfigError, match="got neither"):
        LangChainRetriever(name="x")
    with pytest.raises(ConfigError, match="BaseRetriever or VectorStore is needed"):
        LangChainRetriever(factory=lambda docs: docs, name="x").build(demo, CONTEXT)


@pytest.fixture()
def candidates(demo, queries) -> tuple[str, list[tuple[str, str]]]:
    """A query and BM25's ten best documents for it, as (doc id, text)."""
    query = queries[0][1]
    hits = BM25Retriever.from_documents(demo.documents()).search([query], DEPTH)[0]
    return query, [(d, demo.text(d)) for d, _ in hits]


def test_a_compressor_that_leaves_scores_ranks_by_them(candidates, tiny_cross_encoder_path):
    query, pairs = candidates
    model = HuggingFaceRerankerLoader(tiny_cross_encoder_path)
    compressor = ScoredCrossEncoderReranker(model=model, top_n=3)
    source = LangChainCompressor(compressor, name="ce")
    assert isinstance(source, StageSource) and source.label == "ce"
    stage = source.build(None, CONTEXT)
    assert isinstance(stage, Reranker) and not isinstance(stage, PairScorer)
    assert stage.fingerprint is None

    ranked = stage.rerank(query, pairs)
    scores = score_pairs(model, [(query, text) for _, text in pairs])
    expected = sorted(((d, float(s)) for (d, _), s in zip(pairs, scores)), key=lambda x: -x[1])[:3]
    assert [d for d, _ in ranked] == [d for d, _ in expected]
    assert all(abs(s - e) <= 1e-6 for (_, s), (_, e) in zip(ranked, expected))
    assert stage.rerank(query, []) == []

    wider = stage.as_compressor(5)
    assert wider.top_n == 5 and compressor.top_n == 3
    named = LangChainCompressor(compressor, name="ce", fingerprint="ce-v1").build(None, CONTEXT)
    assert named.fingerprint == digest("langchain-compressor", "ce", "ce-v1")


def test_a_compressor_that_leaves_no_score_ranks_in_its_order(candidates, spread_cross_encoder_path):
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

    query, pairs = candidates
    model = HuggingFaceRerankerLoader(spread_cross_encoder_path)
    plain = LangChainCompressor(CrossEncoderReranker(model=model, top_n=5), name="plain").build(None, CONTEXT)
    scored = LangChainCompressor(ScoredCrossEncoderReranker(model=model, top_n=5), name="scored").build(None, CONTEXT)
    ranked = plain.rerank(query, pairs)
    assert [d for d, _ in ranked] == [d for d, _ in scored.rerank(query, pairs)]
    assert [s for _, s in ranked] == [-1.0, -2.0, -3.0, -4.0, -5.0]


class Handmade(BaseDocumentCompressor):
    """A compressor that scores a document by its text's length, shortest best, and hands the
    documents back as ``how`` says: "as given" (their input order, so unsorted), "invents" (one
    it was not given), "nan" (a score that is not a number), "twice" (one document twice),
    "id only" (shortest first, the text rewritten and the metadata dropped: only the id left),
    "text only" (shortest first, the metadata and ids dropped)."""

    how: str

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None) -> Sequence[Document]:
        docs = [
            Document(d.page_content, id=d.id, metadata={**d.metadata, "relevance_score": -len(d.page_content)})
            for d in documents
        ]
        if self.how == "invents":
            return [*docs[:2], Document("A document nobody gave it.", metadata={"relevance_score": 0.1})]
        if self.how == "nan":
            docs[1].metadata["relevance_score"] = math.nan
        if self.how == "twice":
            return [docs[0], docs[1], docs[0]]
        shortest_first = sorted(docs, key=lambda d: len(d.page_content))
        if self.how == "id only":
            return [Document(d.page_content.upper(), id=d.id) for d in shortest_first]
        if self.how == "text only":
            return [Document(d.page_content) for d in shortest_first]
        return docs


def test_a_compressor_s_scores_decide_its_order_ties_kept_in_its_order():
    stage = LangChainCompressor(Handmade(how="as given"), name="lengths").build(None, CONTEXT)
    ranked = stage.rerank("q", [("a", "a longer text"), ("b", "short"), ("c", "three"), ("d", "mid text")])
    assert ranked == [("b", -5.0), ("c", -5.0), ("d", -8.0), ("a", -13.0)]


@pytest.mark.parametrize(
    "how, error",
    [
        ("invents", r"Reranker bad \(Handmade\) returned a document that was not among the candidates .*nobody"),
        ("nan", r"Reranker bad: the metadata\['relevance_score'\] of document 'b' is nan, not a finite number"),
        ("twice", r"Reranker bad \(Handmade\) returned document 'a' twice"),
    ],
)
def test_a_compressor_that_returns_what_it_was_not_given_is_stopped_by_name(how, error):
    stage = LangChainCompressor(Handmade(how=how), name="bad").build(None, CONTEXT)
    with pytest.raises(RagkitError, match=error):
        stage.rerank("q", [("a", "first text"), ("b", "second text"), ("c", "third text")])


@pytest.mark.parametrize("how", ["id only", "text only"])
def test_a_compressor_that_drops_the_metadata_is_matched_by_id_or_else_by_unambiguous_text(how):
    stage = LangChainCompressor(Handmade(how=how), name="text").build(None, CONTEXT)
    assert stage.rerank("q", [("a", "three"), ("b", "two"), ("c", "four")]) == [("b", -1.0), ("c", -2.0), ("a", -3.0)]
    if how == "text only":  # two candidates of one text cannot be told apart by it
        with pytest.raises(RagkitError, match="not among the candidates"):
            stage.rerank("q", [("a", "same"), ("b", "same")])


# ----------------------------------------------------------------------------- through the engine


@pytest.fixture()
def searched(monkeypatch) -> list[str]:
    """The queries an InMemoryVectorStore is searched with (a spy on the user's store, which
    still searches)."""
    queries: list[str] = []
    real = InMemoryVectorStore.similarity_search_with_score

    def spy(self, query, *args, **kwargs):
        queries.append(query)
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(InMemoryVectorStore, "similarity_search_with_score", spy)
    return queries


def test_a_users_langchain_pipeline_is_evaluated_as_ragkits_own_equivalent(
    demo, embeddings, tiny_embedder_path, spread_cross_encoder_path, cache, searched
):
    from ragkit.evaluate import Pipeline, Rerank, experiment

    quiet = {"latency_queries": 2, "show_progress": False, "n_resamples": 50}
    model = HuggingFaceRerankerLoader(spread_cross_encoder_path, model_kwargs={"device": "cpu"})
    retriever = LangChainRetriever(factory=in_memory(embeddings), name="in-memory", fingerprint="tiny-v1")
    compressor = LangChainCompressor(ScoredCrossEncoderReranker(model=model, top_n=5, raw_scores=True),
                                     name="my-ce", fingerprint="spread-v1")  # fmt: skip
    theirs = Pipeline(retriever=retriever) >> Rerank(compressor, k=5)
    ours = Pipeline(embedder=tiny_embedder_path) >> Rerank(spread_cross_encoder_path, k=5)
    assert theirs.name == "langchain(in-memory) >> my-ce(k=5, top_n=5)"
    result = experiment(demo, [theirs, ours], **quiet)
    # The same vectors searched exactly and the same cross-encoder: the same rankings, both stages.
    for q in demo.queries:
        mine = list(result.runs[theirs.own_first_stage().name][q])
        assert mine == list(result.runs[ours.own_first_stage().name][q])[: len(mine)]
        assert list(result.runs[theirs.name][q])[:5] == list(result.runs[ours.name][q])[:5]
    assert result.table.loc[theirs.name, "first_stage"] == "langchain(in-memory)"
    assert set(result.latency[result.latency["pipeline"] == theirs.name]["stage"]) == {"retrieve", "rerank", "total"}

    # With fingerprints, its runs come from the cache the next time: its store is not searched again.
    searched.clear()
    experiment(demo, [theirs, ours], **{**quiet, "latency_queries": 0, "n_resamples": 60})
    assert searched == []


def test_a_users_retriever_without_a_fingerprint_is_searched_every_time(demo, embeddings, cache, searched):
    from ragkit.evaluate import Pipeline, experiment

    retriever = LangChainRetriever(factory=in_memory(embeddings), name="in-memory")
    for _ in range(2):
        experiment(demo, [Pipeline(retriever=retriever)], latency_queries=0, show_progress=False, n_resamples=50)
    assert len(searched) == 2 * len(demo.queries)
