"""A user's own LangChain stages, evaluated beside ragkit's: a retriever or vector store as a
first stage (:class:`LangChainRetriever`), a document compressor as a reranker
(:class:`LangChainCompressor`).

Both are :class:`ragkit.stages.StageSource` s: given to a pipeline as objects, they build the
stage for the collection evaluated, which follows the engine's protocol
(:class:`ragkit.stages.FirstStage`, :class:`ragkit.stages.Reranker`), so the engine measures
them as it measures its own.

What ragkit reads from LangChain's objects:

- **Document ids**: each document a retriever returns names the collection's document it
  stands for in ``metadata["doc_id"]`` (``id_key``), as ``BeirCollection.documents()`` sets it.
  A document without one is an error naming the stage and the fix; ids the collection does
  not hold are reported by the run's check (:func:`ragkit.stages.check_hits`).
- **Scores, higher = better**: a vector store's relevance scores
  (``similarity_search_with_relevance_scores``, LangChain's documented "0 dissimilar, 1 most
  similar" scale) when the store defines its relevance function, as Chroma, FAISS and most
  stores do; else the scores of ``similarity_search_with_score``, which are similarities for
  some stores (``InMemoryVectorStore``: cosine) and distances for others: scores that grow down
  a store's ranking are taken for distances and refused, never silently inverted. A generic
  retriever's ``metadata["relevance_score"]`` or ``metadata["score"]``, else its order
  (``-rank``). A compressor's ``metadata["relevance_score"]`` (``score_key``), else its order.
- **Order**: the scores decide it (sorted stably, best first, if a stage did not); a document
  that comes back twice (a store holding it twice, or a store of passages) counts once, at its
  best place.

Example::

    from langchain_core.vectorstores import InMemoryVectorStore
    from ragkit import HuggingFaceEmbeddingsLoader, Pipeline, experiment, load_beir
    from ragkit.langchain_stages import LangChainCompressor, LangChainRetriever
    embeddings = HuggingFaceEmbeddingsLoader("sentence-transformers/all-MiniLM-L6-v2")
    mine = LangChainRetriever(factory=lambda docs: InMemoryVectorStore.from_documents(docs, embeddings),
                              name="in-memory", fingerprint="minilm-in-memory-v1")
    experiment(load_beir("scifact"), [Pipeline(retriever=mine)])
"""

from __future__ import annotations

import logging
import math
import numbers
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from pydantic import ConfigDict

from ragkit.cache import digest
from ragkit.errors import ConfigError, RagkitError
from ragkit.stages import Hits, Query, Ranked, StageContext, check_hits, check_k

log = logging.getLogger("ragkit")

# A store of passages returns a document once per passage found: while its best n hits hold
# fewer than k documents, ask for twice as many, up to this many times k (a store that repeats
# itself without end must not loop for ever; a query left short is then reported by the run's
# check, since a vector store fills its depth).
_MAX_OVERFETCH = 64
# Metadata keys a generic retriever's scores are read from, in this order: a
# ContextualCompressionRetriever keeps its base retriever's "score" beside its compressor's
# "relevance_score", and ranks by the latter.
_RETRIEVER_SCORE_KEYS = ("relevance_score", "score")
# VectorStore's own methods; a store that overrides one of them knows how to turn its scores
# into relevance (higher = better).
_RELEVANCE_METHODS = (
    "_select_relevance_score_fn",
    "_similarity_search_with_relevance_scores",
    "similarity_search_with_relevance_scores",
)
_Found = list[tuple[Document, float | None]]  # one query's documents as a stage returned them


def _check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}.")


def _check_fingerprint(fingerprint: Any) -> None:
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise ConfigError(
            f"fingerprint must be a non-empty string naming what decides the stage's results (e.g. 'my-index-v3'), "
            f"or None (never cached), got {fingerprint!r}."
        )


def _finite(value: Any, stage: str, where: str) -> float:
    """``value`` as a float, or a :class:`RagkitError` naming ``stage`` and ``where`` the score
    was read when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise RagkitError(f"{stage}: {where} is {value!r}, not a finite number; every score must be one.")
    return float(value)


def _defines_relevance(store: VectorStore) -> bool:
    """Whether ``store`` converts its own scores to relevance (higher = better): LangChain's
    ``VectorStore`` raises ``NotImplementedError`` for a store that does not (``InMemoryVectorStore``)."""
    return any(getattr(type(store), name) is not getattr(VectorStore, name) for name in _RELEVANCE_METHODS)


class LangChainRetriever:
    """A user's LangChain retriever or vector store as a first stage (a :class:`ragkit.stages.StageSource`).

    Give either the ``retriever`` itself, built over a store holding the collection's documents,
    or a ``factory`` that ragkit calls once per collection with its documents
    (``BeirCollection.documents()``, each with ``metadata["doc_id"]``) and that returns one.

    A vector store (or a ``VectorStoreRetriever`` with the ``"similarity"`` search type, whose
    store and ``search_kwargs`` are used) is searched with scores (see the module's docstring:
    ragkit ranks by higher = better, as LangChain's relevance scores are) and fills its depth:
    every query gets ``min(k, documents)`` distinct documents. Any other retriever (an MMR or
    threshold ``VectorStoreRetriever``, an ensemble, BM25) is invoked: told to return ``k``
    documents when it has a ``k`` field (or ``search_kwargs["k"]``), its first ``k`` kept,
    scored by its ``metadata["relevance_score"]`` or ``metadata["score"]`` when every document
    has one, else by rank; it may return fewer.

    Args:
        retriever: a ``BaseRetriever`` or ``VectorStore`` over the collection's documents.
        factory: called with the collection's documents, returns a ``BaseRetriever`` or
            ``VectorStore`` (``lambda docs: InMemoryVectorStore.from_documents(docs, embeddings)``).
        name: the stage's name; tables show it as ``langchain(<name>)``.
        id_key: the metadata key holding the collection's document id.
        fingerprint: what decides the stage's rankings (``"bge-small-in-memory-v2"``): ragkit
            cannot tell when a user's retriever changes, so without one (``None``) nothing the
            stage produces is cached. With a ``factory`` the stage's fingerprint also depends on
            the collection (the same factory over another corpus is another index).

    Raises:
        ConfigError: neither or both of ``retriever`` and ``factory``, or an option of the wrong kind.

    Example:
        >>> from ragkit.data import load_beir
        >>> from ragkit.retrievers import BM25Retriever
        >>> demo = load_beir("demo")
        >>> source = LangChainRetriever(factory=BM25Retriever.from_documents, name="bm25", fingerprint="v1")
        >>> source.label
        'langchain(bm25)'
        >>> stage = source.build(demo, None)
        >>> [doc_id for doc_id, _ in stage.retrieve([("q2", demo.queries["q2"])], k=2)[0]]
        ['d14', 'd13']
    """

    def __init__(
        self,
        retriever: BaseRetriever | VectorStore | None = None,
        *,
        factory: Callable[[list[Document]], BaseRetriever | VectorStore] | None = None,
        name: str,
        id_key: str = "doc_id",
        fingerprint: str | None = None,
    ) -> None:
        if (retriever is None) == (factory is None):
            raise ConfigError(
                f"LangChainRetriever needs exactly one of retriever= (a BaseRetriever or VectorStore over the "
                f"collection's documents) and factory= (a function of the collection's documents returning one), got "
                f"{'both' if factory is not None else 'neither'}."
            )
        if factory is not None and not callable(factory):
            raise ConfigError(f"factory must be a function of a list of Documents, got {type(factory).__name__}.")
        _check_name(name, "name")
        _check_name(id_key, "id_key")
        _check_fingerprint(fingerprint)
        self.label = f"langchain({name})"
        if retriever is not None:
            _check_retriever(retriever, self.label, "retriever=")
        self.retriever = retriever
        self.factory = factory
        self.name = name
        self.id_key = id_key
        # The user's own fingerprint, as the StageSource protocol reads it (None: never cached);
        # the stage's, which cache keys are made of, is built from it in build().
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        given = "factory" if self.factory is not None else type(self.retriever).__name__
        return f"LangChainRetriever({given}, name={self.name!r}, fingerprint={self.fingerprint!r})"

    def build(self, collection: Any, context: StageContext | None) -> LangChainRetrieverStage:
        """The first stage over ``collection``: the retriever given, or the factory's over the
        collection's documents (called here, once per build). ``context`` is not needed."""
        if self.factory is None:
            target = self.retriever
        else:
            target = self.factory(collection.documents())
            _check_retriever(target, self.label, "its factory")
        fingerprint = None
        if self.fingerprint is not None:
            corpus = collection.fingerprint() if self.factory is not None else None
            fingerprint = digest("langchain-retriever", self.name, self.id_key, self.fingerprint, corpus)
        return LangChainRetrieverStage(
            target, label=self.label, id_key=self.id_key, collection=collection, fingerprint=fingerprint
        )


def _check_retriever(target: Any, label: str, given: str) -> None:
    if not isinstance(target, (BaseRetriever, VectorStore)):
        raise ConfigError(
            f"{label}: {given} gave a {type(target).__name__}; a LangChain BaseRetriever or VectorStore is needed "
            "(e.g. InMemoryVectorStore.from_documents(docs, embeddings), or a store's .as_retriever())."
        )


class LangChainRetrieverStage:
    """A LangChain retriever or vector store following :class:`ragkit.stages.FirstStage`
    (built by :meth:`LangChainRetriever.build`; see there for how it searches and scores).

    Attributes:
        label: the stage's name in tables and errors.
        fingerprint: what identifies its rankings, or ``None`` (never cached).
        fills_depth: ``True`` for a vector store searched by similarity without a filter.
        store: the vector store searched, or ``None`` when the retriever is invoked.
        retriever: the retriever invoked, or ``None`` for a store.
    """

    def __init__(
        self,
        target: BaseRetriever | VectorStore,
        *,
        label: str,
        id_key: str,
        collection: Any,
        fingerprint: str | None,
    ) -> None:
        self.label = label
        self.id_key = id_key
        self.collection = collection
        self.fingerprint = fingerprint
        self.store: VectorStore | None = None
        self.retriever: BaseRetriever | None = None
        self.search_kwargs: dict[str, Any] = {}
        if isinstance(target, VectorStore):
            self.store = target
        elif isinstance(target, VectorStoreRetriever) and target.search_type == "similarity":
            # Its own similarity search, with scores; its options (a filter) stay, its k is ours.
            self.store = target.vectorstore
            self.search_kwargs = {key: value for key, value in target.search_kwargs.items() if key != "k"}
        else:
            self.retriever = target
        # Search options (a filter) may leave a query fewer documents than the depth; nothing else may.
        self.fills_depth = self.store is not None and not self.search_kwargs
        self._relevance = self.store is not None and _defines_relevance(self.store)

    def __repr__(self) -> str:
        inner = self.store if self.store is not None else self.retriever
        return f"LangChainRetrieverStage({self.label!r}, {type(inner).__name__})"

    @property
    def search_mode(self) -> tuple[str, ...]:
        """``()``: how the user's store searches is part of what their fingerprint names."""
        return ()

    def retrieve(self, queries: Sequence[Query], k: int) -> Hits:
        """The ``k`` best documents of each ``(query id, text)``, as ``(doc id, score)``, best
        first, checked (:func:`ragkit.stages.check_hits`): a bad run is stopped by the stage's name.

        Raises:
            RagkitError: a returned document has no ``metadata[id_key]``, a score is not a finite
                number, a store's scores look like distances, or the run fails its check.
        """
        check_k(k)
        hits = [[(doc_id, score) for doc_id, score, _ in self._search(text, k)] for _, text in queries]
        if self.retriever is not None and hits and k <= len(self.collection.corpus):
            deepest = max(len(ranked) for ranked in hits)
            if deepest < k:  # most likely its own k, which ragkit could not set
                log.warning(
                    "%s returned at most %d documents per query, fewer than the k=%d asked: set the retriever's own "
                    "number of results (its k, or search_kwargs={'k': ...}) to at least %d.",
                    self.label,
                    deepest,
                    k,
                    k,
                )
        return check_hits(self.label, hits, self.collection.corpus, len(queries), k, self.fills_depth)

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]]:
        """One query's ranking, as :meth:`retrieve` gives it, and the seconds it took
        (``{"retrieve": ...}``: the user's retriever is one step to ragkit)."""
        check_k(k)
        start = time.perf_counter()
        found = self._search(query, k)
        seconds = time.perf_counter() - start
        ranked = [(doc_id, score) for doc_id, score, _ in found]
        check_hits(self.label, [ranked], self.collection.corpus, 1, k, self.fills_depth)
        return ranked, {"retrieve": seconds}

    def as_retriever(self, k: int) -> LangChainStageRetriever:
        """The stage as a LangChain retriever of ``k`` documents: the user's documents, ranked
        and deduplicated as :meth:`retrieve` ranks them, with ``metadata["doc_id"]`` and
        ``metadata["score"]``."""
        check_k(k)
        return LangChainStageRetriever(stage=self, k=k)

    def _search(self, text: str, k: int) -> list[tuple[str, float, Document]]:
        """One query's ``(doc id, score, document)``, best first, each document once, at most ``k``."""
        if self.store is None:
            return self._ranked(self._invoke(text, k), relevance=False)[:k]
        n = k
        while True:
            found = self._store_search(text, n)
            ranked = self._ranked(found, relevance=self._relevance)
            if len(ranked) >= k or len(found) < n or n >= _MAX_OVERFETCH * k:
                return ranked[:k]
            n *= 2

    def _store_search(self, text: str, n: int) -> _Found:
        assert self.store is not None
        if not self._relevance:
            return list(self.store.similarity_search_with_score(text, k=n, **self.search_kwargs))
        # LangChain warns, with every hit in the message, when a relevance score is outside
        # [0, 1] (a cosine similarity below 0 is one): ragkit needs only their order.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Relevance scores must be between")
            return list(self.store.similarity_search_with_relevance_scores(text, k=n, **self.search_kwargs))

    def _invoke(self, text: str, k: int) -> _Found:
        """A generic retriever's documents, with their scores when every one has one (else ``None`` s)."""
        assert self.retriever is not None
        docs = self._told_depth(k).invoke(text)
        for key in _RETRIEVER_SCORE_KEYS:
            if docs and all(key in doc.metadata for doc in docs):
                where = f"a document's metadata[{key!r}]"
                return [(doc, _finite(doc.metadata[key], self.label, where)) for doc in docs]
        return [(doc, None) for doc in docs]

    def _told_depth(self, k: int) -> BaseRetriever:
        """The retriever, told to return ``k`` documents where it has a known way to be told."""
        assert self.retriever is not None
        if isinstance(self.retriever, VectorStoreRetriever):
            return self.retriever.model_copy(update={"search_kwargs": {**self.retriever.search_kwargs, "k": k}})
        if "k" in type(self.retriever).model_fields:
            return self.retriever.model_copy(update={"k": k})
        return self.retriever

    def _ranked(self, found: _Found, *, relevance: bool) -> list[tuple[str, float, Document]]:
        """``found`` as ``(doc id, score, document)``: by rank (``-rank``) when it has no
        scores; sorted stably by score, best first, and each document kept at its first (best)
        place. ``relevance``: the scores are relevance (higher = better) by contract; otherwise
        scores that grow down the ranking are distances and refused."""
        if any(score is None for _, score in found):
            rows = [(self._doc_id(doc), -float(rank), doc) for rank, (doc, _) in enumerate(found, start=1)]
        else:
            rows = [(self._doc_id(doc), _finite(score, self.label, "a document's score"), doc) for doc, score in found]
        scores = [score for _, score, _ in rows]
        if not relevance and scores != sorted(scores, reverse=True) and scores == sorted(scores):
            fix = (
                "Give the store its relevance function (LangChain's _select_relevance_score_fn; many stores take "
                "relevance_score_fn=...), or wrap it so that it returns similarities."
                if self.store is not None
                else "Put higher-is-better scores in metadata['score'], or none (it is then ranked by its order)."
            )
            raise RagkitError(
                f"{self.label}: {type(self.store or self.retriever).__name__} returned scores that grow down its "
                f"ranking ({scores[0]:.4g} first, {scores[-1]:.4g} last): distances, lower = better, it seems, while "
                f"ragkit ranks by higher = better. {fix}"
            )
        best: dict[str, tuple[str, float, Document]] = {}
        for row in sorted(rows, key=lambda r: -r[1]):  # stable: equal scores keep the stage's order
            best.setdefault(row[0], row)
        return list(best.values())

    def _doc_id(self, doc: Document) -> str:
        value = doc.metadata.get(self.id_key)
        if value is None or str(value) == "":
            raise RagkitError(
                f"{self.label}: a document it returned has no metadata[{self.id_key!r}] (its metadata keys: "
                f"{sorted(doc.metadata) or 'none'}; text {doc.page_content[:60]!r}). Set metadata[{self.id_key!r}] "
                f"to the collection's document id when you index (BeirCollection.documents() does), or pass "
                f"id_key=... naming the metadata key that holds it."
            )
        return str(value)


class LangChainStageRetriever(BaseRetriever):
    """A :class:`LangChainRetrieverStage` as a LangChain retriever (its ``as_retriever(k)``):
    ``k`` documents ranked as the stage ranks them, each with ``metadata["doc_id"]`` and
    ``metadata["score"]``."""

    stage: Any
    k: int

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=doc.page_content, id=doc_id, metadata={**doc.metadata, "doc_id": doc_id, "score": s})
            for doc_id, s, doc in self.stage._search(query, self.k)
        ]


class LangChainCompressor:
    """A user's LangChain document compressor as a reranker (a :class:`ragkit.stages.StageSource`).

    Its stage (:class:`LangChainCompressorStage`) gives the compressor each query's candidates
    as ``Document(text, metadata={"doc_id": ...})`` and ranks those it returns: by their
    ``metadata[score_key]`` when every one has it, else in the compressor's order. It is used
    as configured: a compressor that keeps its ``top_n`` best returns only those.

    Args:
        compressor: a ``BaseDocumentCompressor`` (a ``CrossEncoderReranker``, Cohere's or
            FlashRank's rerankers, an ``EmbeddingsFilter``, ragkit's ``ScoredCrossEncoderReranker``).
        name: its name in tables.
        score_key: the metadata key holding the compressor's score (higher = better).
        fingerprint: what decides its scores (``"my-reranker-v2"``); ``None``: ragkit cannot
            tell when the compressor changes, so nothing it produces is cached.

    Example::

        from ragkit import HuggingFaceRerankerLoader, Pipeline
        from ragkit.rerank import ScoredCrossEncoderReranker
        model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        mine = LangChainCompressor(ScoredCrossEncoderReranker(model=model, top_n=10), name="minilm-l12")
        Pipeline(embedder="sentence-transformers/all-MiniLM-L6-v2", reranker=mine)
    """

    def __init__(
        self,
        compressor: BaseDocumentCompressor,
        *,
        name: str,
        score_key: str = "relevance_score",
        fingerprint: str | None = None,
    ) -> None:
        if not isinstance(compressor, BaseDocumentCompressor):
            raise ConfigError(
                f"LangChainCompressor needs a LangChain BaseDocumentCompressor (e.g. CrossEncoderReranker), got "
                f"{type(compressor).__name__}."
            )
        _check_name(name, "name")
        _check_name(score_key, "score_key")
        _check_fingerprint(fingerprint)
        self.compressor = compressor
        self.label = name
        self.score_key = score_key
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"LangChainCompressor({type(self.compressor).__name__}, name={self.label!r})"

    def build(self, collection: Any, context: StageContext | None) -> LangChainCompressorStage:
        """The reranker (the same for every collection; neither argument is needed)."""
        fingerprint = None if self.fingerprint is None else digest("langchain-compressor", self.label, self.fingerprint)
        return LangChainCompressorStage(
            self.compressor, label=self.label, score_key=self.score_key, fingerprint=fingerprint
        )


class LangChainCompressorStage:
    """A LangChain document compressor following :class:`ragkit.stages.Reranker` (built by
    :meth:`LangChainCompressor.build`).

    Attributes:
        label: its name in tables and errors.
        fingerprint: what identifies its scores, or ``None`` (never cached).

    Example:
        >>> from collections.abc import Sequence
        >>> class Shortest(BaseDocumentCompressor):  # keeps the two shortest texts, unscored
        ...     def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None):
        ...         return sorted(documents, key=lambda d: len(d.page_content))[:2]
        >>> stage = LangChainCompressor(Shortest(), name="shortest").build(None, None)
        >>> stage.rerank("q", [("a", "a long text"), ("b", "short"), ("c", "mid text")])
        [('b', -1.0), ('c', -2.0)]
    """

    def __init__(self, compressor: BaseDocumentCompressor, *, label: str, score_key: str, fingerprint: str | None):
        self.compressor = compressor
        self.label = label
        self.score_key = score_key
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"LangChainCompressorStage({self.label!r}, {type(self.compressor).__name__})"

    def rerank(self, query: str, candidates: Sequence[tuple[str, str]]) -> Ranked:
        """The candidates (``(doc id, text)``) the compressor returns for ``query``, as
        ``(doc id, score)``, best first: its ``metadata[score_key]`` when every document it
        returns has one (sorted stably, best first), else ``-rank`` in its order.

        A returned document is matched to its candidate by ``metadata["doc_id"]``, else by its
        ``id``, else by its text when one candidate alone has that text (a compressor that
        dropped the metadata).

        Raises:
            RagkitError: a returned document is not among the candidates (or cannot be told
                apart from another), comes back twice, or has a score that is not a finite number.
        """
        if not candidates:
            return []
        docs = [Document(page_content=text, id=doc_id, metadata={"doc_id": doc_id}) for doc_id, text in candidates]
        returned = list(self.compressor.compress_documents(docs, query))
        ids = [self._candidate(doc, candidates) for doc in returned]
        if len(set(ids)) != len(ids):
            twice = next(doc_id for doc_id in ids if ids.count(doc_id) > 1)
            raise RagkitError(
                f"Reranker {self.label} ({type(self.compressor).__name__}) returned document {twice!r} twice for "
                f"query {query[:60]!r}: a reranker returns each candidate at most once."
            )
        if returned and all(self.score_key in doc.metadata for doc in returned):
            scores = [
                _finite(
                    doc.metadata[self.score_key],
                    f"Reranker {self.label}",
                    f"the metadata[{self.score_key!r}] of document {d!r}",
                )
                for doc, d in zip(returned, ids)
            ]
            return sorted(zip(ids, scores), key=lambda pair: -pair[1])  # stable: ties keep its order
        return [(doc_id, -float(rank)) for rank, doc_id in enumerate(ids, start=1)]

    def _candidate(self, doc: Document, candidates: Sequence[tuple[str, str]]) -> str:
        """The candidate's doc id a returned document stands for."""
        known = {doc_id for doc_id, _ in candidates}
        doc_id = doc.metadata.get("doc_id")
        if doc_id is None and doc.id in known:
            doc_id = doc.id
        if doc_id is None:
            same_text = [candidate for candidate, text in candidates if text == doc.page_content]
            if len(same_text) == 1:
                doc_id = same_text[0]
        if doc_id not in known:
            raise RagkitError(
                f"Reranker {self.label} ({type(self.compressor).__name__}) returned a document that was not among "
                f"the candidates it was given (metadata {doc.metadata}, text {doc.page_content[:60]!r}): a reranker "
                "returns some of its input documents, keeping their metadata['doc_id']."
            )
        return str(doc_id)

    def as_compressor(self, top_n: int) -> BaseDocumentCompressor:
        """The user's compressor itself; a copy with ``top_n`` set when it has a ``top_n`` field
        (``CrossEncoderReranker``'s). It returns what it returns: ``metadata["relevance_score"]``
        only if it sets one."""
        if "top_n" in type(self.compressor).model_fields:
            return self.compressor.model_copy(update={"top_n": top_n})
        return self.compressor


__all__ = [
    "LangChainCompressor",
    "LangChainCompressorStage",
    "LangChainRetriever",
    "LangChainRetrieverStage",
    "LangChainStageRetriever",
]
