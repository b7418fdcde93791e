"""First stages: a Chroma vector index (fingerprinted, persistent, embedded or client/server)
and a BM25 retriever, each queryable two ways.

- ``invoke`` on a LangChain retriever (``ChromaIndex.as_retriever(k)`` or ``BM25Retriever``),
  as the tutorials and ``ContextualCompressionRetriever`` use them: one query, ``Document`` s
  carrying ``metadata["doc_id"]`` and ``metadata["score"]``.
- ``search(queries, k)``, as the evaluation engine uses it: many queries at once, returning
  ``(doc_id, score)`` pairs per query, one entry per document even when documents were split
  into chunks (a document scores as its best chunk).

Dense scores are cosine similarities (``1 - cosine distance``); BM25 scores are BM25's.

Example:
    >>> from langchain_core.documents import Document
    >>> from ragkit.retrievers import build_chroma_index
    >>> docs = [Document("Paris is the capital of France.", metadata={"doc_id": "d1"}),
    ...         Document("Bananas are yellow fruit.", metadata={"doc_id": "d2"})]
    >>> index = build_chroma_index(docs, show_progress=False)
    >>> [doc_id for doc_id, _ in index.search(["What is France's capital?"], k=1)[0]]
    ['d1']
    >>> index.as_retriever(k=1).invoke("yellow fruit")[0].metadata["doc_id"]
    'd2'
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict
from tqdm.auto import tqdm

from ragkit.bm25 import BM25Index
from ragkit.errors import RagkitError
from ragkit.loaders import HuggingFaceEmbeddingsLoader
from ragkit.models import model_revision
from ragkit.settings import CHUNK_OVERLAP, DEFAULT_EMBEDDER, DEFAULT_RERANK_K, INDEX_BATCH_SIZE, cache_dir

log = logging.getLogger("ragkit")

Hits = list[list[tuple[str, float]]]  # per query: (doc_id, score), best first

# Bumped when the way ragkit lays out an index changes, so old caches are not mistaken for new.
_INDEX_FORMAT = 2
# Chroma's search is approximate (HNSW). Its default breadth, ef_search=100, equals the depth a
# first stage asks for (100), and on SciFact built in batches it misses 0.4% of the exact top 10,
# which cost all-MiniLM-L6-v2 0.003 nDCG@10 (0.6417 against exact search's 0.6451). Four times
# the depth finds the exact top 10 there and on the harder random vectors of the tests (the
# "vector search" latency an experiment reports includes its cost).
_HNSW = {"space": "cosine", "ef_search": 400}
# Encode arguments that change speed or output display, never the vectors themselves.
_SPEED_ONLY_ENCODE_KWARGS = frozenset({"batch_size", "show_progress_bar"})
# How many chunks to fetch per wanted document on the first try; doubled while short.
_CHUNK_OVERFETCH = 4


def chroma_settings() -> Any:
    """Chroma client settings ragkit uses everywhere: telemetry off.

    Pass them to your own client too (``chromadb.HttpClient(..., settings=chroma_settings())``):
    Chroma refuses two clients on one path with different settings.

    Example:
        >>> chroma_settings().anonymized_telemetry
        False
    """
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise RagkitError(f"k must be a positive integer (the number of documents per query), got {k!r}.")


def _doc_id(doc: Document, position: int) -> str:
    doc_id = doc.metadata.get("doc_id", doc.id)
    if doc_id is None or str(doc_id) == "":
        raise RagkitError(
            f"Document {position} has no id: set metadata['doc_id'] (ragkit.data's documents() does) or Document.id."
        )
    return str(doc_id)


def _scalar_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    # Chroma stores only scalar metadata values; anything else is left out rather than rejected.
    return {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}


@dataclass(frozen=True)
class _Record:
    id: str
    text: str
    metadata: dict[str, Any]


def _records(documents: Sequence[Document], chunk_size: int | None, chunk_overlap: int) -> list[_Record]:
    """One record per document, or per chunk (ids ``<doc_id>#<n>``) when ``chunk_size`` is set."""
    if not documents:
        raise RagkitError("No documents to index: pass a non-empty list of LangChain Documents.")
    ids = [_doc_id(doc, i) for i, doc in enumerate(documents)]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise RagkitError(f"Duplicate document ids {dupes}: each Document needs its own metadata['doc_id'].")
    splitter = None
    if chunk_size is not None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
            raise RagkitError(f"Need chunk_size >= 1 and 0 <= chunk_overlap < chunk_size, got {chunk_size} and "
                              f"{chunk_overlap}.")
        splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    records = []
    for doc_id, doc in zip(ids, documents):
        metadata = {**_scalar_metadata(doc.metadata), "doc_id": doc_id}
        if splitter is None:
            records.append(_Record(doc_id, doc.page_content, metadata))
            continue
        # An empty document still gets one (empty) chunk, so every doc id stays in the index.
        chunks = splitter.split_text(doc.page_content) or [doc.page_content]
        records += [_Record(f"{doc_id}#{n}", chunk, {**metadata, "chunk": n}) for n, chunk in enumerate(chunks)]
    return records


def _embedder_identity(embeddings: Embeddings) -> dict[str, Any]:
    """What decides the document vectors: model, revision, and the kwargs that change outputs."""
    name = getattr(embeddings, "model_name", None)
    if not name:
        raise RagkitError(
            f"Cannot fingerprint an index for {type(embeddings).__name__}: it has no `model_name`. Pass a model "
            "name, a HuggingFaceEmbeddings, or an Embeddings with `model_name` (and `model_kwargs`/`encode_kwargs` "
            "when it has them)."
        )
    # The device changes where vectors are computed, not what they are: a CPU-built index is reused on a GPU.
    model_kwargs = {k: v for k, v in (getattr(embeddings, "model_kwargs", None) or {}).items() if k != "device"}
    encode_kwargs = {k: v for k, v in (getattr(embeddings, "encode_kwargs", None) or {}).items()
                     if k not in _SPEED_ONLY_ENCODE_KWARGS}
    return {"model": name, "revision": model_revision(name), "model_kwargs": model_kwargs,
            "encode_kwargs": encode_kwargs}


def _index_fingerprint(embeddings: Embeddings, records: Iterable[_Record], splitting: dict[str, Any] | None) -> str:
    """sha256 over the embedder's identity, the splitting parameters and the corpus content.

    Records are hashed in id order, so the same corpus in another order has the same fingerprint.
    """
    digest = hashlib.sha256()
    header = {"format": _INDEX_FORMAT, "hnsw": _HNSW, "embedder": _embedder_identity(embeddings),
              "splitting": splitting}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for record in sorted(records, key=lambda r: r.id):
        for part in (record.id, record.text, json.dumps(record.metadata, sort_keys=True)):
            digest.update(part.encode())
            digest.update(b"\x00")
    return digest.hexdigest()


def embed_queries(embeddings: Embeddings, queries: Sequence[str]) -> np.ndarray:
    """Embed many queries in one batch, exactly as ``embeddings.embed_query`` embeds one.

    ``HuggingFaceEmbeddings`` has no public batched query method: ``embed_documents`` would
    skip ``query_encode_kwargs`` (where ragkit's loader puts bge's query instruction), and
    calling ``embed_query`` per query forgoes batching. So for it, the batch goes through the
    same internal call ``embed_query`` makes, with the same kwargs; other ``Embeddings`` get
    ``embed_query`` per query.

    Example:
        >>> emb = HuggingFaceEmbeddingsLoader("BAAI/bge-small-en-v1.5")
        >>> vectors = embed_queries(emb, ["what is a cross-encoder?", "chroma"])
        >>> bool(np.allclose(vectors[0], emb.embed_query("what is a cross-encoder?"), atol=1e-5))
        True
    """
    from langchain_huggingface import HuggingFaceEmbeddings

    queries = list(queries)
    if not queries:
        return np.empty((0, 0), dtype=np.float32)
    if isinstance(embeddings, HuggingFaceEmbeddings):
        kwargs = embeddings.query_encode_kwargs or embeddings.encode_kwargs
        vectors = embeddings._embed(queries, kwargs)
    else:
        vectors = [embeddings.embed_query(q) for q in queries]
    return np.asarray(vectors, dtype=np.float32)


class ChromaRetriever(BaseRetriever):
    """The LangChain retriever over a :class:`ChromaIndex`: ``k`` hits per query via
    ``Chroma.similarity_search_with_score``, each ``Document`` carrying ``metadata["doc_id"]``
    and ``metadata["score"]`` (cosine similarity). On a chunked index the hits are chunks
    (``metadata["chunk"]`` is their position in the document). Get one with
    :meth:`ChromaIndex.as_retriever`.
    """

    index: Any
    k: int = DEFAULT_RERANK_K

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.index.store.similarity_search_with_score(query, k=min(self.k, self.index.count))
        return [Document(page_content=doc.page_content, id=doc.id,
                         metadata={**doc.metadata, "score": 1.0 - float(distance)})
                for doc, distance in hits]


class ChromaIndex:
    """A Chroma collection of embedded documents (or chunks) that ragkit built or reopened.

    Build one with :func:`build_chroma_index`. Attributes: ``store`` (the LangChain ``Chroma``
    vector store), ``client`` (the chromadb client), ``embeddings`` (the LangChain embedder),
    ``fingerprint``, ``embedder_name``, ``revision``, ``chunk_size``, ``collection_name``,
    ``persist_directory`` (``None`` for a client you passed).
    """

    def __init__(self, store: Any, client: Any, embeddings: Embeddings, fingerprint: str, *,
                 chunk_size: int | None, collection_name: str, persist_directory: Path | None) -> None:
        self.store = store
        self.client = client
        self.embeddings = embeddings
        self.fingerprint = fingerprint
        self.embedder_name: str = embeddings.model_name  # type: ignore[attr-defined]
        self.revision: str | None = model_revision(self.embedder_name)
        self.chunk_size = chunk_size
        self.collection_name = collection_name
        self.persist_directory = persist_directory
        # Our own handle, with no embedding function, so nothing can ever ask Chroma to embed.
        self._collection = client.get_collection(collection_name, embedding_function=None)

    def __repr__(self) -> str:
        chunks = f", chunk_size={self.chunk_size}" if self.chunk_size else ""
        return (f"ChromaIndex({self.embedder_name!r}, count={self.count}{chunks}, "
                f"fingerprint={self.fingerprint[:12]!r})")

    @property
    def count(self) -> int:
        """Vectors in the collection: documents, or chunks on a chunked index."""
        return self._collection.count()

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> ChromaRetriever:
        """A LangChain retriever returning the ``k`` nearest documents (chunks, if chunked).

        Example:
            >>> index.as_retriever(k=2).invoke("capital of France")[0].metadata["score"]  # doctest: +SKIP
            0.71
        """
        _check_k(k)
        return ChromaRetriever(index=self, k=k)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, one row per query, as ``embed_query`` makes them (see :func:`embed_queries`)."""
        return embed_queries(self.embeddings, queries)

    def search_by_vector(self, vectors: np.ndarray | Sequence[Sequence[float]], k: int) -> Hits:
        """The ``k`` best documents for each query vector, as ``(doc_id, cosine similarity)``.

        On a chunked index a document scores as its best chunk; more chunks are fetched until
        ``k`` distinct documents are found (or the index runs out).

        Example:
            >>> index.search_by_vector(index.embed_queries(["capital of France"]), k=1)  # doctest: +SKIP
            [[('d1', 0.71)]]
        """
        _check_k(k)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.size == 0:
            return []
        total = self.count
        results: Hits = [[] for _ in vectors]
        pending = list(range(len(vectors)))
        n = min(k if self.chunk_size is None else k * _CHUNK_OVERFETCH, total)
        while pending:
            short = []
            for i, ranked in zip(pending, self._query(vectors[pending], n)):
                best: dict[str, float] = {}
                for doc_id, score in ranked:
                    best.setdefault(doc_id, score)  # chunks come best first: the first is the max
                results[i] = list(best.items())[:k]
                if len(best) < k and n < total:
                    short.append(i)
            pending, n = short, min(2 * n, total)
        return results

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """The ``k`` best documents for each query: queries embedded in one batch, then searched.

        Example:
            >>> index.search(["capital of France", "yellow fruit"], k=1)  # doctest: +SKIP
            [[('d1', 0.71)], [('d2', 0.64)]]
        """
        _check_k(k)
        return self.search_by_vector(self.embed_queries(queries), k)

    def _query(self, vectors: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        out = []
        step = self.client.get_max_batch_size()
        for start in range(0, len(vectors), step):
            res = self._collection.query(query_embeddings=vectors[start:start + step], n_results=n,
                                         include=["metadatas", "distances"])
            out += [[(m["doc_id"], 1.0 - float(d)) for m, d in zip(metas, dists)]
                    for metas, dists in zip(res["metadatas"], res["distances"])]
        return out


def _marker(fingerprint: str, expected: int, complete: bool, embedder: str, chunk_size: int | None) -> dict[str, Any]:
    # Kept in the collection's own metadata so it travels with the data, also on a server.
    return {"ragkit_fingerprint": fingerprint, "ragkit_expected_count": expected, "ragkit_complete": complete,
            "ragkit_embedder": embedder, "ragkit_chunk_size": chunk_size or 0, "ragkit_format": _INDEX_FORMAT}


def _all_ids(collection: Any, page: int) -> set[str]:
    ids: set[str] = set()
    offset = 0
    while True:
        got = collection.get(include=[], limit=page, offset=offset)["ids"]
        ids.update(got)
        if len(got) < page:
            return ids
        offset += page


def _complete(store: Any, client: Any, collection: Any, records: list[_Record], fingerprint: str,
              embedder_name: str, chunk_size: int | None, batch_size: int, show_progress: bool) -> None:
    """Embed and add whatever ``records`` the collection lacks, then mark it complete."""
    page = client.get_max_batch_size()
    present = _all_ids(collection, page)
    if present - {r.id for r in records}:
        # Nothing of ours writes foreign ids under this fingerprint; start clean rather than guess.
        log.warning("Chroma index %s holds unexpected ids; rebuilding it.", collection.name)
        store.reset_collection()
        present = set()
    missing = [r for r in records if r.id not in present]
    if present:
        log.warning("Chroma index %s is incomplete (%d of %d vectors): embedding the %d missing.",
                    collection.name, len(present), len(records), len(missing))
    step = min(batch_size, page)
    with tqdm(total=len(missing), desc=f"Embedding with {embedder_name.split('/')[-1]}", unit="doc",
              disable=not show_progress or not missing) as bar:
        for start in range(0, len(missing), step):
            batch = missing[start:start + step]
            store.add_texts([r.text for r in batch], metadatas=[r.metadata for r in batch],
                            ids=[r.id for r in batch])
            bar.update(len(batch))
    # The marker is set only once every vector is in: an interrupted build stays marked incomplete.
    collection = client.get_collection(collection.name, embedding_function=None)
    if collection.count() != len(records):
        raise RagkitError(f"Chroma index {collection.name!r} holds {collection.count()} vectors after building, "
                          f"expected {len(records)}.")
    collection.modify(metadata=_marker(fingerprint, len(records), True, embedder_name, chunk_size))


def build_chroma_index(
    documents: Sequence[Document],
    embedder: str | Embeddings = DEFAULT_EMBEDDER,
    *,
    model_kwargs: dict[str, Any] | None = None,
    encode_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int = CHUNK_OVERLAP,
    persist_directory: str | Path | None = None,
    client: Any = None,
    collection_name: str | None = None,
    batch_size: int = INDEX_BATCH_SIZE,
    rebuild: bool = False,
    show_progress: bool = True,
) -> ChromaIndex:
    """Embed ``documents`` into a Chroma collection (cosine space), or reopen the one built before.

    The index is keyed by a fingerprint of the embedder (name, revision, kwargs that change
    vectors), the splitting parameters and the corpus (ids, texts, metadata). A second call
    with the same inputs reuses it without embedding anything. A build that stopped half-way
    (an error, Ctrl-C) is detected on the next call by its marker and count, and completed:
    only the missing documents are embedded. Ids are the document ids, or ``<doc_id>#<n>`` for
    chunks, and adds are upserts, so nothing is ever stored twice.

    Args:
        documents: LangChain Documents, each with ``metadata["doc_id"]`` (or ``Document.id``).
        embedder: a model name, loaded with ``HuggingFaceEmbeddingsLoader(embedder, model_kwargs,
            encode_kwargs)``, or an ``Embeddings`` object with a ``model_name``.
        chunk_size: split documents longer than this many characters with LangChain's
            ``RecursiveCharacterTextSplitter`` (the tutorial uses ``settings.CHUNK_SIZE``, 400);
            ``None`` indexes whole documents.
        chunk_overlap: characters shared by consecutive chunks.
        persist_directory: where Chroma stores the index; default
            ``settings.cache_dir() / "chroma" / <fingerprint>``.
        client: a chromadb client to use instead, e.g. ``chromadb.HttpClient(host, port,
            settings=chroma_settings())`` for a ``chroma run`` server.
        collection_name: default ``ragkit-<fingerprint[:16]>``. A collection of that name built
            from other inputs is an error unless ``rebuild=True``.
        batch_size: documents embedded and added per step (capped by Chroma's max batch size).
        rebuild: drop the collection and embed everything again.
        show_progress: show a progress bar while embedding.

    Example:
        >>> from langchain_core.documents import Document
        >>> docs = [Document("Chroma stores vectors.", metadata={"doc_id": "a"}),
        ...         Document("BM25 counts words.", metadata={"doc_id": "b"})]
        >>> index = build_chroma_index(docs, show_progress=False)
        >>> build_chroma_index(docs, show_progress=False).count  # reused, not re-embedded
        2
    """
    from langchain_chroma import Chroma

    if client is not None and persist_directory is not None:
        raise RagkitError("Pass either client= or persist_directory=, not both: a client already knows its storage.")
    if batch_size < 1:
        raise RagkitError(f"batch_size must be at least 1, got {batch_size}.")
    records = _records(documents, chunk_size, chunk_overlap)
    if isinstance(embedder, str):
        embeddings = HuggingFaceEmbeddingsLoader(embedder, model_kwargs=model_kwargs, encode_kwargs=encode_kwargs)
    elif model_kwargs is not None or encode_kwargs is not None:
        raise RagkitError("model_kwargs and encode_kwargs configure an embedder loaded by name; "
                          "an Embeddings object comes configured already.")
    else:
        embeddings = embedder
    splitting = None if chunk_size is None else {"splitter": "RecursiveCharacterTextSplitter",
                                                 "chunk_size": chunk_size, "chunk_overlap": chunk_overlap}
    fingerprint = _index_fingerprint(embeddings, records, splitting)
    name = collection_name or f"ragkit-{fingerprint[:16]}"
    embedder_name = embeddings.model_name  # type: ignore[attr-defined]

    directory = None
    if client is None:
        import chromadb

        directory = Path(persist_directory) if persist_directory is not None else cache_dir() / "chroma" / fingerprint
        directory.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())

    marker = _marker(fingerprint, len(records), False, embedder_name, chunk_size)
    store = Chroma(collection_name=name, embedding_function=embeddings, client=client,
                   collection_metadata=marker, collection_configuration={"hnsw": dict(_HNSW)})
    if rebuild:
        store.reset_collection()  # recreated empty, with the marker and configuration given above
    collection = client.get_collection(name, embedding_function=None)
    found = dict(collection.metadata or {})
    if found.get("ragkit_fingerprint") != fingerprint:
        raise RagkitError(
            f"Collection {name!r} holds another index (fingerprint {found.get('ragkit_fingerprint')!r}, not "
            f"{fingerprint!r}): different documents, embedder or splitting. Pick another collection_name, or "
            "pass rebuild=True to replace it."
        )
    if found.get("ragkit_complete") and collection.count() == len(records):
        log.info("Reusing Chroma index %s (%d vectors, %s).", name, len(records), embedder_name)
    else:
        _complete(store, client, collection, records, fingerprint, embedder_name, chunk_size, batch_size,
                  show_progress)

    return ChromaIndex(store, client, embeddings, fingerprint, chunk_size=chunk_size, collection_name=name,
                       persist_directory=directory)


class BM25Retriever(BaseRetriever):
    """BM25 first stage (``ragkit.bm25``, on ``bm25s``) as a LangChain retriever, with the same
    batched ``search(queries, k)`` as :class:`ChromaIndex`. Not LangChain community's
    ``BM25Retriever``: this one keeps scores (``metadata["score"]``) and stems words.

    Example:
        >>> from langchain_core.documents import Document
        >>> bm25 = BM25Retriever.from_documents([Document("Cats purr.", metadata={"doc_id": "a"}),
        ...                                      Document("Dogs bark.", metadata={"doc_id": "b"})], k=1)
        >>> bm25.invoke("barking dogs")[0].metadata["doc_id"]
        'b'
        >>> bm25.search(["purring cat"], k=1)[0][0][0]
        'a'
    """

    index: Any
    documents: dict[str, Document]
    fingerprint: str
    k: int = DEFAULT_RERANK_K

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def from_documents(cls, documents: Sequence[Document], k: int = DEFAULT_RERANK_K, *, k1: float = 1.5,
                       b: float = 0.75) -> BM25Retriever:
        """Index whole documents (``page_content``) under their ``metadata["doc_id"]``."""
        _check_k(k)
        records = _records(documents, None, 0)
        digest = hashlib.sha256(json.dumps({"bm25": "ragkit.bm25", "k1": k1, "b": b}, sort_keys=True).encode())
        for record in sorted(records, key=lambda r: r.id):
            digest.update(f"{record.id}\x00{record.text}\x00".encode())
        index = BM25Index.from_texts([r.id for r in records], [r.text for r in records], k1=k1, b=b)
        docs = {r.id: Document(page_content=r.text, metadata=r.metadata, id=r.id) for r in records}
        return cls(index=index, documents=docs, fingerprint=digest.hexdigest(), k=k)

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> BM25Retriever:
        """This retriever with another ``k`` (the index is shared, not rebuilt)."""
        _check_k(k)
        return self.model_copy(update={"k": k})

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """The ``k`` best documents per query as ``(doc_id, BM25 score)``; fewer when fewer
        documents share a word with the query."""
        _check_k(k)
        return self.index.search(list(queries), k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=self.documents[doc_id].page_content, id=doc_id,
                         metadata={**self.documents[doc_id].metadata, "score": score})
                for doc_id, score in self.index.search([query], self.k)[0]]
