"""Passages, as a RAG system indexes documents: how ragkit splits a document, how a search
over passages becomes a ranking of documents, and :class:`PassageStage`, the first stage that
wraps a dense index of passages.

A document is split by LangChain's ``RecursiveCharacterTextSplitter`` into chunks of at most
``chunk_size`` characters (or tokens of the embedder, ``chunk_unit="tokens"``); the index holds
one record per passage, ``<doc_id>#<n>``. A document then scores as its best passage (MaxP),
or, when only first passages are indexed, as its first (FirstP). Evaluation stays per
document: :class:`PassageStage` searches passages until it has ``k`` distinct documents, and
gives a pair-scoring reranker a document's passages exactly as the index split them
(:meth:`PassageStage.passages`), so that the reranker reads what the index embedded.

One splitter (:func:`text_splitting`) serves the index's records, :class:`PassageStage` and
:func:`passage_splitter`, and one aggregation (:func:`best_passages`) serves
:class:`PassageStage` and ``ragkit.retrievers.ChromaIndex.search`` on a passage index.

Example:
    >>> text_splitting(12, 0, "chars", first_only=False)("one two three four five")
    ['one two', 'three four', 'five']
    >>> passage_id("d05", 1), document_of("d05#1")
    ('d05#1', 'd05')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from ragkit.errors import ConfigError
from ragkit.loaders import HuggingFaceEmbeddingsLoader
from ragkit.settings import CHUNK_OVERLAP, CHUNK_UNITS, DEFAULT_RERANK_K, PASSAGE_SCORES
from ragkit.stages import Hits, Ranked, SearchesByText, check_k

if TYPE_CHECKING:
    from ragkit.data import BeirCollection

# How many passages to fetch per wanted document on the first try; doubled while a query's
# passages hold fewer than k documents (a document may fill several of the best places).
OVERFETCH = 4


def check_chunking(chunk_size: int | None, chunk_overlap: int, chunk_unit: str = "chars") -> None:
    """Raise a :class:`ConfigError` naming the option and the fix unless the chunking makes sense.

    Example:
        >>> check_chunking(400, 50)
        >>> check_chunking(40, 50)
        Traceback (most recent call last):
        ...
        ragkit.errors.ConfigError: chunk_overlap (50) must be less than chunk_size (40): ...
    """
    if chunk_unit not in CHUNK_UNITS:
        raise ConfigError(f"chunk_unit must be one of {', '.join(CHUNK_UNITS)}, got {chunk_unit!r}.")
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a whole number of {chunk_unit} of at least 1, got {chunk_size!r}.")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or chunk_overlap < 0:
        raise ConfigError(f"chunk_overlap must be a whole number of {chunk_unit} >= 0, got {chunk_overlap!r}.")
    if chunk_overlap >= chunk_size:
        raise ConfigError(
            f"chunk_overlap ({chunk_overlap}) must be less than chunk_size ({chunk_size}): consecutive chunks would "
            f"share everything. Use a larger chunk size or a smaller overlap (chunk_overlap, --chunk-overlap; "
            f"e.g. {max(0, chunk_size // 8)})."
        )


def text_splitter(chunk_size: int, chunk_overlap: int = CHUNK_OVERLAP, *, tokenizer: Any = None) -> Any:
    """LangChain's ``RecursiveCharacterTextSplitter``: it cuts at blank lines, then line breaks,
    then spaces, then anywhere, into chunks of at most ``chunk_size`` characters, or, given a
    Hugging Face ``tokenizer``, of at most ``chunk_size`` of its tokens (what a model truncates).

    Example:
        >>> text_splitter(12, 0).split_text("one two three four five")
        ['one two', 'three four', 'five']
    """
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    check_chunking(chunk_size, chunk_overlap, "tokens" if tokenizer is not None else "chars")
    if tokenizer is None:
        return RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )


def passages(text: str, splitter: Any, *, first_only: bool = False) -> list[str]:
    """A document's passages, in order (only the first with ``first_only``). An empty
    document is one empty passage, so that every document keeps a place in the index.

    Example:
        >>> passages("one two three four five", text_splitter(12, 0), first_only=True)
        ['one two']
        >>> passages("", text_splitter(12, 0))
        ['']
    """
    chunks = splitter.split_text(text) or [text]
    return chunks[:1] if first_only else chunks


def embedder_tokenizer(embeddings: Embeddings) -> Any:
    """The Hugging Face tokenizer behind a LangChain embedder, for token-based chunking."""
    for inner in (getattr(embeddings, "_client", None), embeddings):
        tokenizer = getattr(inner, "tokenizer", None)
        if tokenizer is not None:
            return tokenizer
    raise ConfigError(
        f"Cannot chunk by tokens for {type(embeddings).__name__}: its tokenizer is unknown. "
        "Use chunk_unit='chars', or an embedder loaded by name."
    )


def text_splitting(
    chunk_size: int | None,
    chunk_overlap: int,
    chunk_unit: str,
    *,
    first_only: bool,
    embeddings: Embeddings | str | None = None,
) -> Callable[[str], list[str]] | None:
    """Text -> its passages (``None`` for whole documents, ``chunk_size=None``): the one
    decision of how ragkit splits, which the index's records, :class:`PassageStage` and
    :func:`passage_splitter` share, so that what a reranker reads is what the index stores.

    ``embeddings`` is the embedder whose tokens ``chunk_unit="tokens"`` counts (an
    ``Embeddings``, or a model name, loaded by ``HuggingFaceEmbeddingsLoader`` and so its
    cached instance when there is one); characters need none.
    """
    if chunk_size is None:
        return None
    tokenizer = None
    if chunk_unit == "tokens":
        if embeddings is None:
            raise ConfigError(
                "chunk_unit='tokens' counts an embedder's tokens: pass embeddings= (the index's embedder, or its "
                "model name)."
            )
        if isinstance(embeddings, str):
            embeddings = HuggingFaceEmbeddingsLoader(embeddings)
        tokenizer = embedder_tokenizer(embeddings)
    splitter = text_splitter(chunk_size, chunk_overlap, tokenizer=tokenizer)

    def split(text: str) -> list[str]:
        return passages(text, splitter, first_only=first_only)

    return split


def splitting_identity(
    chunk_size: int | None, chunk_overlap: int, chunk_unit: str, *, first_only: bool
) -> dict[str, Any] | None:
    """What of the splitting enters an index's fingerprint (``None`` for whole documents).
    Keys beyond the first three are only there when set, so that fingerprints of indexes built
    before those options existed stay valid.

    Example:
        >>> splitting_identity(400, 50, "chars", first_only=True)
        {'splitter': 'RecursiveCharacterTextSplitter', 'chunk_size': 400, 'chunk_overlap': 50, 'first_only': True}
    """
    if chunk_size is None:
        return None
    identity: dict[str, Any] = {
        "splitter": "RecursiveCharacterTextSplitter",
        "chunk_size": chunk_size,
        "chunk_overlap": chunk_overlap,
    }
    if chunk_unit == "tokens":
        identity["unit"] = "tokens"
    if first_only:
        identity["first_only"] = True
    return identity


def by_document(split: Callable[[str], list[str]], text: Callable[[str], str]) -> Callable[[str], list[str]]:
    """Doc id -> its passages, each document split once and remembered, since one document is
    reranked for many queries."""
    memo: dict[str, list[str]] = {}

    def split_document(doc_id: str) -> list[str]:
        if doc_id not in memo:
            memo[doc_id] = split(text(doc_id))
        return memo[doc_id]

    return split_document


def passage_splitter(
    collection: BeirCollection,
    *,
    chunk_size: int | None,
    chunk_overlap: int = CHUNK_OVERLAP,
    chunk_unit: str = "chars",
    passage_score: str = "maxp",
    embeddings: Embeddings | str | None = None,
) -> Callable[[str], list[str]] | None:
    """Doc id -> its passages, exactly as ``ragkit.retrievers.build_chroma_index`` splits the
    documents of ``collection`` with the same options (``passage_score="firstp"`` is its
    ``first_passage_only=True``: only each document's first passage); ``None`` for whole
    documents (``chunk_size=None``). For what reads passages without the index at hand (a
    count of the tokens a reranker reads); a :class:`PassageStage` gives its own.

    Args:
        collection: the documents, read by ``collection.text(doc_id)``.
        chunk_size, chunk_overlap, chunk_unit: as ``build_chroma_index`` takes them.
        passage_score: ``"maxp"`` (every passage) or ``"firstp"`` (the first only).
        embeddings: the embedder whose tokens ``chunk_unit="tokens"`` counts (see
            :func:`text_splitting`); not needed for characters.

    Example:
        >>> from ragkit.data import load_beir
        >>> split = passage_splitter(load_beir("demo"), chunk_size=120, chunk_overlap=20)
        >>> [len(p) <= 120 for p in split("d05")]
        [True, True]
        >>> first = passage_splitter(load_beir("demo"), chunk_size=120, chunk_overlap=20, passage_score="firstp")
        >>> first("d05") == split("d05")[:1]
        True
        >>> passage_splitter(load_beir("demo"), chunk_size=None) is None
        True
    """
    if passage_score not in PASSAGE_SCORES:
        raise ConfigError(f"passage_score must be one of {', '.join(PASSAGE_SCORES)}, got {passage_score!r}.")
    check_chunking(chunk_size, chunk_overlap, chunk_unit)
    split = text_splitting(
        chunk_size, chunk_overlap, chunk_unit, first_only=passage_score == "firstp", embeddings=embeddings
    )
    return None if split is None else by_document(split, collection.text)


def passage_id(doc_id: str, n: int) -> str:
    """The index record id of a document's ``n``-th passage (from 0)."""
    return f"{doc_id}#{n}"


def document_of(record_id: str) -> str:
    """The document a passage's record id names (a doc id may hold ``#`` itself: the last one
    separates the passage's number)."""
    return record_id.rpartition("#")[0]


class PassageIndex(Protocol):
    """What :class:`PassageStage` needs of the dense index it wraps (``ragkit.retrievers.ChromaIndex``
    built with ``chunk_size``): its records are passages, ``<doc_id>#<n>``.

    Attributes:
        fingerprint: what identifies its rankings (embedder, splitting, corpus, search setup).
        split: text -> its passages, as the index split its documents (:func:`text_splitting`).
    """

    fingerprint: str
    split: Callable[[str], list[str]] | None

    @property
    def search_mode(self) -> tuple[str, ...]: ...

    @property
    def max_depth(self) -> int:
        """The most records one :meth:`nearest` call can return."""
        ...

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray: ...

    def nearest(self, vectors: Any, n: int, *, exact: bool | None = None) -> Hits:
        """The ``n`` nearest records of each query vector, ``(record id, cosine)``, best first."""
        ...

    def records(self, ids: Sequence[str]) -> list[Document]:
        """The stored records of ``ids`` (text and metadata), in that order."""
        ...


def best_passages(index: PassageIndex, vectors: Any, k: int, *, exact: bool | None = None) -> Hits:
    """For each query vector, the ``k`` best documents of a passage ``index``, each as its best
    passage: ``(passage id, cosine)``, best first (MaxP; an index of first passages only
    scores a document as its first, FirstP).

    Passages come from ``index.nearest`` best first, so a document's first passage among them
    is its best. ``OVERFETCH`` passages are fetched per wanted document, twice as many while a
    query's passages hold fewer than ``k`` documents, until the index (or the most one search
    returns, ``index.max_depth``) runs out: then a query keeps the documents found.
    """
    check_k(k)
    vectors = np.asarray(vectors, dtype=np.float32)
    deepest = index.max_depth
    # Never less than k: a depth that index.nearest refuses (deeper than one search can go)
    # is refused here as on an index of whole documents, not cut short.
    n = min(k * OVERFETCH, max(k, deepest))
    results: Hits = [[] for _ in vectors]
    pending = list(range(len(vectors)))
    while pending:
        short = []
        for i, ranked in zip(pending, index.nearest(vectors[pending], n, exact=exact)):
            best: dict[str, tuple[str, float]] = {}
            for record_id, score in ranked:
                best.setdefault(document_of(record_id), (record_id, score))
            results[i] = list(best.values())[:k]
            if len(best) < k and n < deepest:
                short.append(i)
        pending, n = short, min(2 * n, deepest)
    return results


def as_documents(hits: Hits) -> Hits:
    """Passage hits as the hits of their documents: ``(doc id, score)``."""
    return [[(document_of(record_id), score) for record_id, score in ranked] for ranked in hits]


class PassageStage(SearchesByText):
    """The dense first stage over passages: a Chroma index of passages (``dense``, built with
    ``chunk_size``) that ranks documents, each as its best passage (MaxP, or its first on an
    index of first passages only, FirstP).

    Its fingerprint and search mode are the index's, so that runs cached for the index are
    its own. A pair-scoring reranker after it reads :meth:`passages`, a document's passages as
    the index split them; the engine asks any first stage for ``passages`` and reranks whole
    documents for one without.

    Args:
        dense: the passage index (``ragkit.retrievers.build_chroma_index(..., chunk_size=...)``).
        text: doc id -> the document's text, as it was indexed (``BeirCollection.text``).

    Example::

        from ragkit import load_beir
        from ragkit.retrievers import build_chroma_index
        demo = load_beir("demo")
        stage = PassageStage(build_chroma_index(demo.documents(), chunk_size=200), text=demo.text)
        stage.search(["what is reranking?"], k=2)
        # [[('d07', 0.62), ('d01', 0.55)]]
        stage.passages("d07")
        # ['Cross-encoders read the query and ...', '...']
    """

    fills_depth = True  # vector search always returns min(k, documents) documents

    def __init__(self, dense: PassageIndex, *, text: Callable[[str], str]) -> None:
        if dense.split is None:
            raise ConfigError(
                "PassageStage wraps an index of passages: build it with chunk_size (an index of whole documents "
                "ranks documents by itself)."
            )
        self.dense = dense
        self.fingerprint: str = dense.fingerprint  # the index's: cached indexes and runs stay valid
        self._passages = by_document(dense.split, text)

    def __repr__(self) -> str:
        return f"PassageStage({self.dense!r})"

    @property
    def search_mode(self) -> tuple[str, ...]:
        """The index's: ``("exact",)`` or ``("hnsw",)``."""
        return self.dense.search_mode

    def passages(self, doc_id: str) -> list[str]:
        """The document's passages, in order, exactly as the index split it (its first only on
        a FirstP index): what a reranker scoring (query, passage) pairs reads for it."""
        return self._passages(doc_id)

    def search_passages(self, queries: Sequence[str], k: int, *, exact: bool | None = None) -> Hits:
        """The ``k`` best documents of each query, each as its best passage: ``(passage id,
        cosine similarity)`` (see :func:`best_passages`)."""
        check_k(k)
        return best_passages(self.dense, self.dense.embed_queries(queries), k, exact=exact)

    def search_by_vector(self, vectors: Any, k: int, *, exact: bool | None = None) -> Hits:
        """The ``k`` best documents for each query vector, as ``(doc_id, cosine similarity)``."""
        return as_documents(best_passages(self.dense, vectors, k, exact=exact))

    def search(self, queries: Sequence[str], k: int, *, exact: bool | None = None) -> Hits:
        """The ``k`` best documents for each query, as ``(doc_id, cosine similarity)``."""
        check_k(k)
        return self.search_by_vector(self.dense.embed_queries(queries), k, exact=exact)

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]]:
        """One query: embedded, then searched, each step timed in seconds (the steps of an
        index of whole documents, so that their latencies compare)."""
        t0 = time.perf_counter()
        vectors = self.dense.embed_queries([query])
        t1 = time.perf_counter()
        hits = self.search_by_vector(vectors, k)[0]
        return hits, {"embed query": t1 - t0, "vector search": time.perf_counter() - t1}

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> PassageRetriever:
        """A LangChain retriever returning the ``k`` best documents, each as its best passage:
        the passage's text and stored metadata (``doc_id``, ``chunk``), and ``score``."""
        check_k(k)
        return PassageRetriever(stage=self, k=k)


class PassageRetriever(BaseRetriever):
    """The LangChain view of a :class:`PassageStage`: per query, ``k`` distinct documents, each
    the ``Document`` of its best passage with ``metadata["score"]`` (cosine similarity). Get one
    with :meth:`PassageStage.as_retriever`."""

    stage: Any
    k: int = DEFAULT_RERANK_K

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.stage.search_passages([query], self.k)[0]
        stored = self.stage.dense.records([record_id for record_id, _ in hits])
        return [
            Document(page_content=doc.page_content, id=doc.id, metadata={**doc.metadata, "score": score})
            for doc, (_, score) in zip(stored, hits)
        ]


__all__ = [
    "OVERFETCH",
    "PassageIndex",
    "PassageRetriever",
    "PassageStage",
    "as_documents",
    "best_passages",
    "by_document",
    "check_chunking",
    "document_of",
    "embedder_tokenizer",
    "passage_id",
    "passage_splitter",
    "passages",
    "splitting_identity",
    "text_splitter",
    "text_splitting",
]
