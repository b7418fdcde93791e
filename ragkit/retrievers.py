"""First stages: a Chroma vector index (fingerprinted, persistent, embedded or client/server)
and a BM25 retriever, each queryable two ways.

- ``invoke`` on a LangChain retriever (``ChromaIndex.as_retriever(k)`` or ``BM25Retriever``),
  as the tutorials and ``ContextualCompressionRetriever`` use them: one query, ``Document`` s
  carrying ``metadata["doc_id"]`` and ``metadata["score"]``.
- ``search(queries, k)``, as the evaluation engine uses it: many queries at once, returning
  ``(doc_id, score)`` pairs per query, one entry per document even when documents were split
  into chunks (a document scores as its best chunk).

Dense scores are cosine similarities (``1 - cosine distance``); BM25 scores are BM25's. What
passages are (how documents are split, how passage hits become document hits) is
``ragkit.passages``'s: an index built with ``chunk_size`` holds passages, and the dense first
stage of a passage pipeline is that index wrapped in a ``ragkit.passages.PassageStage``, which
also gives a document's passages exactly as the index split them (what a reranker reads).

A persisted index is checked before it is reused (:func:`build_chroma_index`): SQLite's
integrity check on ``chroma.sqlite3``, a digest of the HNSW segment files that ragkit records
in ``ragkit-index.json`` beside them, and a probe of stored vectors that must find themselves.
:func:`verify_index` runs the same checks without rebuilding anything (``ragkit cache verify``).

Example::

    from langchain_core.documents import Document
    from ragkit.retrievers import build_chroma_index
    docs = [Document("Paris is the capital of France.", metadata={"doc_id": "d1"}),
            Document("Bananas are yellow fruit.", metadata={"doc_id": "d2"})]
    index = build_chroma_index(docs, show_progress=False)
    [doc_id for doc_id, _ in index.search(["What is France's capital?"], k=1)[0]]
    # ['d1']
    index.as_retriever(k=1).invoke("yellow fruit")[0].metadata["doc_id"]
    # 'd2'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict
from tqdm.auto import tqdm

from ragkit.bm25 import BM25Index
from ragkit.cache import FORMATS, atomic_write
from ragkit.errors import CacheError, ConfigError, RagkitError
from ragkit.loaders import HuggingFaceEmbeddingsLoader, check_devices, embed_documents, multi_process_pool
from ragkit.models import model_revision
from ragkit.passages import (
    PassageStage,
    as_documents,
    best_passages,
    check_chunking,
    passage_id,
    splitting_identity,
    text_splitting,
)
from ragkit.settings import (
    CHUNK_OVERLAP,
    DEFAULT_EMBEDDER,
    DEFAULT_RERANK_K,
    EXACT_SEARCH_MAX_VECTORS,
    INDEX_BATCH_SIZE,
    cache_dir,
)
from ragkit.stages import Hits, Ranked, SearchesByText, StageContext, check_k

log = logging.getLogger("ragkit")


# Chroma's search is approximate (HNSW). Its default breadth, ef_search=100, equals the depth a
# first stage asks for (100), and on SciFact built in batches it misses 0.4% of the exact top 10,
# which cost all-MiniLM-L6-v2 0.003 nDCG@10 (0.6417 against exact search's 0.6451). Four times
# the depth finds the exact top 10 there and on the harder random vectors of the tests (the
# "vector search" latency an experiment reports includes its cost).
HNSW = {"space": "cosine", "ef_search": 400}
# When Chroma's local HNSW index reaches disk: Chroma saves it (its graph files and an id map)
# inside the add that brings the vectors added since its last save to the collection's
# sync_threshold, and each save writes a share of the whole index so far. Until then the
# vectors are only in chroma.sqlite3's log, which every add reads again from the last saved
# position, and which every open replays into memory. ragkit adds in the largest batches
# Chroma accepts and sets the threshold so that an index is saved _SAVES times, evenly, the
# last time with the last add (see _add_plan): the files on disk are the whole index the moment
# a build ends, so they can be digested (see _seal), and reopening replays nothing. A fixed
# number of saves keeps what a build writes a fixed multiple of the index: saving every 4 adds
# wrote 15.8 GB for a 1M-vector index of 1.9 GB, and saving after every add of 256 vectors
# (ragkit before) 88 GiB; one save at the end re-reads the log quadratically.
# benchmarks/results/index_persistence-cpu.md and scaling-cpu.md measure it. These decide
# when vectors reach disk, never what a search returns, so they key the index (its layout)
# but are not part of HNSW.
_SAVES = 4
_HNSW_PERSISTENCE = {"adds": "largest batch, see _add_plan", "saves": _SAVES}


def _persistence(total: int, max_batch: int) -> dict[str, int]:
    """The HNSW configuration that makes Chroma save as :func:`_add_plan` plans for an index
    of ``total`` vectors (Chroma requires batch_size <= sync_threshold)."""
    threshold, _ = _add_plan(total, max_batch, _SAVES)
    return {"sync_threshold": threshold, "batch_size": min(threshold, max_batch)}


def _add_plan(total: int, max_batch: int, saves: int) -> tuple[int, list[int]]:
    """The sync threshold and the sizes of the adds that build an index of ``total`` vectors,
    so that Chroma saves its HNSW index ``saves`` times (fewer when ``total`` is under
    ``saves`` full batches), the last time with the last add.

    Chroma saves once the vectors added since its last save reach the threshold, inside the
    add that reaches it. So the adds come in runs of about ``threshold`` vectors, each run's
    odd part first and its last add a full ``max_batch``: the threshold is crossed exactly by
    each run's last add (runs differ by one vector at most, and ``max_batch`` is at least 2),
    the whole index is on disk when the build ends, and every add but the few odd parts is as
    large as Chroma accepts.

    Example:
        >>> _add_plan(12, 5, 3)
        (6, [1, 5, 1, 5])
        >>> _add_plan(23, 5, 3)
        (7, [3, 5, 3, 5, 2, 5])
    """
    if total < 1:
        return 1, []
    runs = max(1, min(saves, total // max_batch))
    threshold, longer = divmod(total, runs)  # the first `longer` runs hold one vector more
    sizes: list[int] = []
    for run in range(runs):
        full, odd = divmod(threshold + (run < longer), max_batch)
        sizes += [odd] * bool(odd) + [max_batch] * full
    return threshold, sizes


# ragkit's record beside Chroma's files in a persist directory: per collection, the digest of
# its HNSW segment files and its probe (see _seal). Chroma never reads or writes it.
INDEX_RECORD = "ragkit-index.json"
# The lock a build holds on its persist directory (an OS lock, released when the process ends,
# however it ends), so that processes sharing a cache build each index once: the others wait,
# then check and reuse what the first built. It sits in the folder and is never deleted with
# the index (see _discard), so that a rebuild is covered by the same lock as the build.
BUILD_LOCK = "ragkit-build.lock"
# The probe: stored vectors of a few records, chosen by a hash of their ids, that must come
# back as their own nearest neighbour among the first few hits, at (almost) zero distance.
# A few neighbours, not one, so that records with (near-)identical vectors still pass.
_PROBE_SIZE = 16
_PROBE_NEIGHBOURS = 8
_SELF_DISTANCE = 1e-3
# Exact search: how far below the n-th best float32 score of a matrix product a stored vector
# is still rescored in float64. A float32 dot product of unit vectors of d dimensions is off
# by at most d x 2**-24 (2.3e-5 at 384 dimensions), in practice far less.
_EXACT_MARGIN = 1e-4
# Encode arguments that change speed or output display, never the vectors themselves.
_SPEED_ONLY_ENCODE_KWARGS = frozenset({"batch_size", "show_progress_bar"})
# Chroma reads the metadata of all the hits of one query call in one SQLite statement, and
# SQLite refuses a statement of more than 32,766 variables: at k=100 a call of 328 queries
# fails ("too many SQL variables"), whatever the corpus size. Calls stay under this many hits
# (queries x depth), with a margin for the few other variables of that statement.
_HITS_PER_CALL = 32_000


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


def connect_chroma(host: str, port: int = 8000) -> Any:
    """A client of the Chroma server at ``host:port`` (``chroma run``), checked to answer now.

    Use a server when several evaluators share one index, or when the collection outgrows one
    machine's memory; the embedded index in ragkit's cache is simpler otherwise. Build the
    index on it with ``build_chroma_index(docs, client=connect_chroma(host, port))``.

    Raises:
        ConfigError: the port is not one, or nothing answers there (before any work starts).
    """
    import chromadb

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--chroma-port must be a TCP port (1-65535), got {port!r}.")
    if not host:
        raise ConfigError("--chroma-host is empty: give the server's host name or address.")
    try:
        client = chromadb.HttpClient(host=host, port=port, settings=chroma_settings())
        client.heartbeat()
    except Exception as exc:  # chromadb raises plain exceptions of several kinds for this
        raise ConfigError(
            f"No Chroma server answers at {host}:{port} (--chroma-host/--chroma-port): {_first_line(exc)}. "
            f"Start one with `chroma run --path DIR --host {host} --port {port}`, check the address, or leave both "
            "options out to use the embedded index in ragkit's cache."
        ) from None
    return client


def _doc_id(doc: Document, position: int) -> str:
    doc_id = doc.metadata.get("doc_id", doc.id)
    if doc_id is None or str(doc_id) == "":
        raise ConfigError(
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


def _records(documents: Sequence[Document], split: Callable[[str], list[str]] | None) -> list[_Record]:
    """One record per document, or, given ``split`` (``ragkit.passages.text_splitting``), one
    per passage, with ids ``<doc_id>#<n>`` (``ragkit.passages.passage_id``)."""
    if not documents:
        raise ConfigError("No documents to index: pass a non-empty list of LangChain Documents.")
    ids = [_doc_id(doc, i) for i, doc in enumerate(documents)]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ConfigError(f"Duplicate document ids {dupes}: each Document needs its own metadata['doc_id'].")
    records = []
    for doc_id, doc in zip(ids, documents):
        metadata = {**_scalar_metadata(doc.metadata), "doc_id": doc_id}
        if split is None:
            records.append(_Record(doc_id, doc.page_content, metadata))
            continue
        chunks = split(doc.page_content)
        records += [_Record(passage_id(doc_id, n), chunk, {**metadata, "chunk": n}) for n, chunk in enumerate(chunks)]
    return records


def _embedder_identity(embeddings: Embeddings) -> dict[str, Any]:
    """What decides the document vectors: model, revision, and the kwargs that change outputs."""
    name = getattr(embeddings, "model_name", None)
    if not name:
        raise ConfigError(
            f"Cannot fingerprint an index for {type(embeddings).__name__}: it has no `model_name`. Pass a model "
            "name, a HuggingFaceEmbeddings, or an Embeddings with `model_name` (and `model_kwargs`/`encode_kwargs` "
            "when it has them)."
        )
    # The device changes where vectors are computed, not what they are: a CPU-built index is reused on a GPU.
    model_kwargs = {k: v for k, v in (getattr(embeddings, "model_kwargs", None) or {}).items() if k != "device"}
    encode_kwargs = {
        k: v
        for k, v in (getattr(embeddings, "encode_kwargs", None) or {}).items()
        if k not in _SPEED_ONLY_ENCODE_KWARGS
    }
    return {
        "model": name,
        "revision": model_revision(name),
        "model_kwargs": model_kwargs,
        "encode_kwargs": encode_kwargs,
    }


def _index_fingerprint(embeddings: Embeddings, records: Iterable[_Record], splitting: dict[str, Any] | None) -> str:
    """sha256 over the embedder's identity, the splitting parameters, the corpus content, and
    how Chroma stores and searches the vectors (``HNSW`` and the build layout, ``_HNSW_PERSISTENCE``).

    Records are hashed in id order, so the same corpus in another order has the same fingerprint.
    """
    digest = hashlib.sha256()
    header = {
        "format": FORMATS["index"],
        "hnsw": HNSW,
        "persistence": _HNSW_PERSISTENCE,
        "embedder": _embedder_identity(embeddings),
        "splitting": splitting,
    }
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

    Example::

        emb = HuggingFaceEmbeddingsLoader("BAAI/bge-small-en-v1.5")
        vectors = embed_queries(emb, ["what is a cross-encoder?", "chroma"])
        bool(np.allclose(vectors[0], emb.embed_query("what is a cross-encoder?"), atol=1e-5))
        # True
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
        hits = self.index.store.similarity_search_with_score(query, k=min(self.k, self.index._size))
        return [
            Document(
                page_content=doc.page_content, id=doc.id, metadata={**doc.metadata, "score": 1.0 - float(distance)}
            )
            for doc, distance in hits
        ]


class ChromaIndex(SearchesByText):
    """A Chroma collection of embedded documents (or chunks) that ragkit built or reopened.

    Build one with :func:`build_chroma_index`. Attributes: ``store`` (the LangChain ``Chroma``
    vector store), ``client`` (the chromadb client), ``embeddings`` (the LangChain embedder),
    ``fingerprint``, ``embedder_name``, ``revision``, ``chunk_size``, ``split`` (text -> its
    passages as this index split its documents; ``None`` for whole documents),
    ``collection_name``, ``persist_directory`` (``None`` for a client you passed).

    Its records are documents or, on a chunked index, passages (``<doc_id>#<n>``):
    :meth:`nearest` searches records, :meth:`search` documents (on a chunked index a document
    scores as its best passage, ``ragkit.passages.best_passages``).
    """

    def __init__(
        self,
        store: Any,
        client: Any,
        embeddings: Embeddings,
        fingerprint: str,
        *,
        chunk_size: int | None,
        collection_name: str,
        persist_directory: Path | None,
        split: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.embeddings = embeddings
        self.fingerprint = fingerprint
        self.embedder_name: str = embeddings.model_name  # type: ignore[attr-defined]
        self.revision: str | None = model_revision(self.embedder_name)
        self.chunk_size = chunk_size
        self.split = split
        self.collection_name = collection_name
        self.persist_directory = persist_directory
        # Our own handle, with no embedding function, so nothing can ever ask Chroma to embed.
        self._collection = client.get_collection(collection_name, embedding_function=None)
        # Counted once: a count costs a scan that grows with the collection (11 ms at 50,000
        # vectors), and searches need it on every call (how deep they can go).
        self._size = self._collection.count()
        self._exact: tuple[np.ndarray, list[str]] | None = None  # unit vectors and their ids, once loaded

    def __repr__(self) -> str:
        chunks = f", chunk_size={self.chunk_size}" if self.chunk_size else ""
        return f"ChromaIndex({self.embedder_name!r}, count={self.count}{chunks}, fingerprint={self.fingerprint[:12]!r})"

    @property
    def count(self) -> int:
        """Vectors in the collection: documents, or chunks on a chunked index."""
        return self._collection.count()

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> ChromaRetriever:
        """A LangChain retriever returning the ``k`` nearest documents (chunks, if chunked).

        Example::

            index.as_retriever(k=2).invoke("capital of France")[0].metadata["score"]
            # 0.71
        """
        check_k(k)
        return ChromaRetriever(index=self, k=k)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, one row per query, as ``embed_query`` makes them (see :func:`embed_queries`)."""
        return embed_queries(self.embeddings, queries)

    @property
    def exact(self) -> bool:
        """Whether searches are exact by default: on an index of at most
        ``settings.EXACT_SEARCH_MAX_VECTORS`` vectors, where exact search is the faster."""
        return searched_exactly(self._size)

    @property
    def max_depth(self) -> int:
        """The most records one :meth:`nearest` call returns per query: all of them, up to
        what one Chroma query can return (SQLite's limit on one statement)."""
        return min(self._size, _HITS_PER_CALL)

    def nearest(self, vectors: np.ndarray | Sequence[Sequence[float]], n: int, *, exact: bool | None = None) -> Hits:
        """The ``n`` nearest records of each query vector (fewer when the index holds fewer),
        as ``(record id, cosine similarity)``, best first: documents, or passages
        (``<doc_id>#<n>``) on a chunked index. Any number of queries may be searched at once:
        they go to Chroma in calls small enough for its SQLite store. ``exact``: as
        :meth:`search_by_vector`.

        Example::

            index.nearest(index.embed_queries(["capital of France"]), 2)
            # [[('d1#0', 0.71), ('d1#1', 0.42)]]
        """
        check_k(n)
        if n > _HITS_PER_CALL:
            raise ConfigError(
                f"k={n:,} is deeper than one Chroma query can return ({_HITS_PER_CALL:,} hits, SQLite's limit on "
                "one statement); ask for fewer documents per query."
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.size == 0:
            return []
        query = self._query_exact if (self.exact if exact is None else exact) else self._query
        return query(vectors, min(n, self._size))

    def records(self, ids: Sequence[str]) -> list[Document]:
        """The stored records of ``ids`` (text, metadata), in that order, as LangChain documents."""
        got = self._collection.get(ids=list(ids), include=["documents", "metadatas"])
        stored = {i: Document(page_content=t, id=i, metadata=dict(m or {}))
                  for i, t, m in zip(got["ids"], got["documents"], got["metadatas"])}  # fmt: skip
        return [stored[i] for i in ids]

    def search_by_vector(
        self, vectors: np.ndarray | Sequence[Sequence[float]], k: int, *, exact: bool | None = None
    ) -> Hits:
        """The ``k`` best documents for each query vector, as ``(doc_id, cosine similarity)``.

        On a chunked index a document scores as its best chunk; more chunks are fetched until
        ``k`` distinct documents are found (or the index runs out), as the dense first stage
        of a passage pipeline searches (``ragkit.passages.best_passages``). Any number of
        queries may be searched at once (see :meth:`nearest`).

        ``exact``: search every stored vector (one matrix product; the vectors are read from
        Chroma once and kept in memory) instead of Chroma's approximate HNSW search; by
        default on an index of at most ``settings.EXACT_SEARCH_MAX_VECTORS`` vectors (see
        :attr:`exact`). Both return the same ranking, up to HNSW's misses.

        Example::

            index.search_by_vector(index.embed_queries(["capital of France"]), k=1)
            # [[('d1', 0.71)]]
        """
        if self.chunk_size is None:
            return self.nearest(vectors, k, exact=exact)
        return as_documents(best_passages(self, vectors, k, exact=exact))

    def search(self, queries: Sequence[str], k: int, *, exact: bool | None = None) -> Hits:
        """The ``k`` best documents for each query: queries embedded in one batch, then searched
        (exactly or by HNSW, see :meth:`search_by_vector`).

        Example::

            index.search(["capital of France", "yellow fruit"], k=1)
            # [[('d1', 0.71)], [('d2', 0.64)]]
        """
        check_k(k)
        return self.search_by_vector(self.embed_queries(queries), k, exact=exact)

    # The first-stage protocol (ragkit.stages.FirstStage).
    fills_depth = True  # vector search always returns min(k, documents) documents

    @property
    def search_mode(self) -> tuple[str, ...]:
        """``("exact",)`` or ``("hnsw",)``: the same index can be searched either way (see
        :attr:`exact`), and HNSW may miss a neighbour exact search finds."""
        return ("exact",) if self.exact else ("hnsw",)

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]]:
        """One query: embedded, then searched, each step timed in seconds."""
        t0 = time.perf_counter()
        vectors = self.embed_queries([query])
        t1 = time.perf_counter()
        hits = self.search_by_vector(vectors, k)[0]
        return hits, {"embed query": t1 - t0, "vector search": time.perf_counter() - t1}

    def _stored_vectors(self) -> tuple[np.ndarray, list[str]]:
        """Every stored vector, normalised (cosine similarity is then a dot product), and the
        record id of each, read from Chroma once."""
        if self._exact is None:
            rows, ids = [], []
            page, offset = self.client.get_max_batch_size(), 0
            while offset < self._size:
                got = self._collection.get(include=["embeddings"], limit=page, offset=offset)
                if not got["ids"]:
                    break
                rows.append(np.asarray(got["embeddings"], dtype=np.float32))
                ids += got["ids"]
                offset += len(got["ids"])
            matrix = np.concatenate(rows) if rows else np.empty((0, 0), dtype=np.float32)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix /= np.where(norms > 0, norms, 1)
            self._exact = matrix, ids
        return self._exact

    def _query_exact(self, vectors: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """As :meth:`_query`, by brute force: the ``n`` most similar stored vectors of each
        query, ties in the order Chroma stores them.

        A matrix product scores every stored vector at once, but its float32 rounding depends
        on how many queries share it, so it only picks the candidates: every vector within
        ``_EXACT_MARGIN`` of the n-th best, far more than that rounding. The candidates are
        scored again in float64, one query at a time: a query's hits are the same whatever
        other queries are searched with it."""
        matrix, record_ids = self._stored_vectors()
        total = len(record_ids)
        n = min(n, total)
        queries = vectors / np.where((norms := np.linalg.norm(vectors, axis=1, keepdims=True)) > 0, norms, 1)
        out = []
        step = max(1, (1 << 24) // max(1, total))  # queries x vectors scores of 64 MiB at most
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            for query, approximate in zip(block, block @ matrix.T):
                if n < total:
                    nth = np.partition(approximate, total - n)[total - n]
                    candidates = np.flatnonzero(approximate >= nth - _EXACT_MARGIN)
                else:
                    candidates = np.arange(total)
                scores = (matrix[candidates].astype(np.float64) * query.astype(np.float64)).sum(axis=1)
                best = np.lexsort((candidates, -scores))[:n]
                out.append([(record_ids[candidates[j]], float(scores[j])) for j in best])
        return out

    def _query(self, vectors: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """``(record id, score)`` of the ``n`` nearest records of each vector. Only distances
        are fetched: a hit's id says its document (the doc id, or ``<doc_id>#<n>`` for a
        chunk, see _records), so no metadata row is read."""
        out = []
        step = max(1, min(self.client.get_max_batch_size(), _HITS_PER_CALL // n))
        for start in range(0, len(vectors), step):
            res = self._collection.query(
                query_embeddings=vectors[start : start + step], n_results=n, include=["distances"]
            )
            out += [
                [(i, 1.0 - float(d)) for i, d in zip(ids, dists)] for ids, dists in zip(res["ids"], res["distances"])
            ]
        return out


def _marker(
    fingerprint: str,
    expected: int,
    complete: bool,
    embedder: str,
    chunk_size: int | None,
    probe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Kept in the collection's own metadata so it travels with the data, also on a server
    # (where the probe is the only check there is: no files to digest).
    marker = {
        "ragkit_fingerprint": fingerprint,
        "ragkit_expected_count": expected,
        "ragkit_complete": complete,
        "ragkit_embedder": embedder,
        "ragkit_chunk_size": chunk_size or 0,
        "ragkit_format": FORMATS["index"],
    }
    if probe is not None:
        marker.update(ragkit_probe=json.dumps(probe["ids"]), ragkit_probe_sha256=probe["sha256"])
    return marker


def _all_ids(collection: Any, page: int) -> set[str]:
    ids: set[str] = set()
    offset = 0
    while True:
        got = collection.get(include=[], limit=page, offset=offset)["ids"]
        ids.update(got)
        if len(got) < page:
            return ids
        offset += page


def _complete(
    store: Any,
    client: Any,
    collection: Any,
    records: list[_Record],
    embedder_name: str,
    batch_size: int,
    show_progress: bool,
    devices: Sequence[str] | None = None,
    directory: Path | None = None,
) -> None:
    """Embed and add whatever ``records`` the collection lacks. The caller then seals it
    (:func:`_seal`): the marker says complete only once every vector is in, so an interrupted
    build stays marked incomplete. With ``devices``, one worker process per device embeds
    (the same vectors, :func:`ragkit.loaders.embed_documents`), the pool kept for the build.

    Texts are embedded ``batch_size`` at a time and added to Chroma in the batches
    :func:`_add_plan` plans, as large as Chroma accepts, so that it saves its HNSW index as
    planned. In a ``directory``, the free disk space is checked against what the index needs
    before anything is added (:func:`_check_disk_space`)."""
    page = client.get_max_batch_size()
    present = _all_ids(collection, page)
    if present - {r.id for r in records}:
        # Nothing of ours writes foreign ids under this fingerprint; start clean rather than guess.
        log.warning("Chroma index %s holds unexpected ids; rebuilding it.", collection.name)
        store.reset_collection()
        collection = client.get_collection(collection.name, embedding_function=None)
        present = set()
    missing = [r for r in records if r.id not in present]
    if present:
        log.warning(
            "Chroma index %s is incomplete (%d of %d vectors): embedding the %d missing.",
            collection.name,
            len(present),
            len(records),
            len(missing),
        )
    _, adds = _add_plan(len(missing), page, _SAVES)
    step = min(batch_size, page)
    pool = multi_process_pool(store.embeddings, devices) if devices and missing else contextlib.nullcontext()
    waiting: list[_Record] = []  # embedded, not yet added
    vectors: list[Any] = []
    added = 0

    def add(size: int) -> None:
        nonlocal added
        try:
            collection.upsert(
                ids=[r.id for r in waiting[:size]],
                embeddings=vectors[:size],
                metadatas=[r.metadata for r in waiting[:size]],
                documents=[r.text for r in waiting[:size]],
            )
        except Exception as exc:
            if directory is None:
                raise
            # Chroma's HNSW writer reports a failed save without its cause: a disk too full
            # for what is left to add says what it was.
            free = shutil.disk_usage(directory).free
            if not _is_disk_full(exc) and free >= _bytes_needed(missing[added:], len(vectors[0])):
                raise
            raise _DiskFull(_bytes_needed(missing, len(vectors[0])), free, _first_line(exc)) from exc
        added += size
        del waiting[:size], vectors[:size]

    with (
        pool,
        tqdm(
            total=len(missing),
            desc=f"Embedding with {embedder_name.split('/')[-1]}",
            unit="doc",
            disable=not show_progress or not missing,
        ) as bar,
    ):
        for start in range(0, len(missing), step):
            batch = missing[start : start + step]
            texts = [r.text for r in batch]
            try:
                if devices:
                    vectors += list(embed_documents(store.embeddings, texts, devices=devices))
                else:
                    vectors += store.embeddings.embed_documents(texts)
            except BaseException:
                # Interrupted while embedding (an error, Ctrl-C): what was embedded is kept, so
                # that the next build embeds only the rest (it then saves what the plan did not).
                if waiting:
                    add(len(waiting))
                raise
            if directory is not None and start == 0:
                _check_disk_space(directory, missing, len(vectors[0]))
            waiting += batch
            while adds and len(waiting) >= adds[0]:
                add(adds.pop(0))
            bar.update(len(batch))
    collection = client.get_collection(collection.name, embedding_function=None)
    if collection.count() != len(records):
        raise RagkitError(
            f"Chroma index {collection.name!r} holds {collection.count()} vectors after building, "
            f"expected {len(records)}."
        )


# --- Disk space ---------------------------------------------------------------------------------

# What an index holds per vector beyond its dim x 4 bytes, and per byte of text, from the
# indexes of benchmarks/index_persistence.py (HNSW links and labels, the id map, Chroma's log
# and metadata rows; texts are stored once and indexed for full-text search), with headroom.
_BYTES_PER_VECTOR_OVERHEAD = 1024
_BYTES_PER_TEXT_BYTE = 3


class _DiskFull(Exception):
    """The disk holding an index filled up (or would) while building it; ``needed``: the
    estimated bytes the build needs, when known."""

    def __init__(self, needed: int | None, free: int | None, cause: str) -> None:
        super().__init__(cause)
        self.needed, self.free, self.cause = needed, free, cause


def _bytes_needed(records: Sequence[_Record], dim: int) -> int:
    """An estimate of the disk space an index of ``records`` of ``dim`` dimensions takes."""
    texts = sum(len(r.text.encode()) for r in records)
    return len(records) * (dim * 4 + _BYTES_PER_VECTOR_OVERHEAD) + texts * _BYTES_PER_TEXT_BYTE


def _check_disk_space(directory: Path, records: Sequence[_Record], dim: int) -> None:
    """Refuse to start adding ``records`` when the disk of ``directory`` has less free space
    than they are estimated to need: running out half-way costs the embedding done so far
    and fails deep inside Chroma."""
    needed = _bytes_needed(records, dim)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise _DiskFull(needed, free, f"{len(records):,} vectors of {dim} dimensions need about {needed:,} bytes")


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the disk is full: an ``OSError`` of ENOSPC or
    EDQUOT, or Chroma's and SQLite's words for it (Chroma reports errors of its Rust core as
    an ``InternalError`` carrying their text)."""
    import errno

    words = ("no space left on device", "os error 28", "database or disk is full", "disk quota exceeded")
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(word in str(current).lower() for word in words):
            return True
        current = current.__cause__ or current.__context__
    return False


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# --- Checking a persisted index before it is reused -------------------------------------------


class _DamagedIndex(Exception):
    """An index that failed a check; ``rebuild_helps`` is False when Chroma cannot even open
    its database, so that ``rebuild=True`` (which goes through Chroma) cannot replace it."""

    def __init__(self, problems: list[str], *, rebuild_helps: bool = True) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.rebuild_helps = rebuild_helps


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _sqlite_uri(directory: Path) -> str:
    # Read-only: checking a database must never change (or create) it.
    return f"{(directory / 'chroma.sqlite3').resolve().as_uri()}?mode=ro"


def _sqlite_problem(directory: Path) -> str | None:
    """What SQLite's own integrity check finds wrong with ``chroma.sqlite3``, read-only and
    before Chroma opens it: Chroma reports a damaged database as a raw ``InternalError``
    from deep inside its Rust core, and a wiped one as an empty database it would fill."""
    import sqlite3

    path = directory / "chroma.sqlite3"
    if not path.is_file():
        return f"{path} is missing"
    try:
        connection = sqlite3.connect(_sqlite_uri(directory), uri=True, timeout=30)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None  # another connection is writing: that is not damage, and Chroma will wait too
        return f"{path} cannot be read by SQLite ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"{path} is damaged ({exc})"
    if rows != [("ok",)]:
        return f"{path} fails SQLite's integrity check ({'; '.join(str(row[0]) for row in rows[:3])})"
    if not {"collections", "segments"} <= tables:
        return f"{path} holds no Chroma tables (emptied or replaced)"
    return None


def _sqlite_rows(directory: Path, query: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
    """Rows of a read-only query on ``chroma.sqlite3``, or ``None`` when it fails (a Chroma
    whose tables look different): the few facts ragkit needs before Chroma may load anything."""
    import sqlite3

    try:
        connection = sqlite3.connect(_sqlite_uri(directory), uri=True, timeout=30)
        try:
            return connection.execute(query, tuple(parameters)).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        log.debug("Could not read Chroma's tables in %s (%s).", directory, exc)
        return None


def _vector_segment_dirs(directory: Path, collection_id: str) -> list[Path]:
    """The folders holding a collection's HNSW segment: one per vector segment, named by its
    id in Chroma's ``segments`` table. Other collections' folders are not this index's."""
    rows = _sqlite_rows(
        directory, "SELECT id FROM segments WHERE collection = ? AND scope = 'VECTOR'", (collection_id,)
    )
    if rows is None:  # digest every segment folder rather than none
        return sorted(p for p in directory.iterdir() if p.is_dir())
    return sorted(directory / str(row[0]) for row in rows if (directory / str(row[0])).is_dir())


def _log_positions(directory: Path, segments: Sequence[str]) -> dict[str, str] | None:
    """How far into Chroma's log each segment has been saved (its ``max_seq_id``). Chroma
    moves it each time it writes a change to the segment's files, so files that differ from
    their digest while it has moved were changed through Chroma (a delete, an add), not
    damaged behind its back."""
    if not segments:
        return {}
    marks = ", ".join("?" * len(segments))
    rows = _sqlite_rows(
        directory, f"SELECT segment_id, seq_id FROM max_seq_id WHERE segment_id IN ({marks})", list(segments)
    )
    return None if rows is None else {str(segment): str(seq) for segment, seq in rows}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _segment_digest(directory: Path, collection_id: str) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each file of the collection's HNSW segment, by path relative to
    ``directory``. ``chroma.sqlite3`` is not among them: Chroma rewrites it on every open
    (bookkeeping), so it is checked by SQLite's integrity check and the probe instead. The
    segment files do not change on open or query once Chroma has synced them (see
    ``_HNSW_PERSISTENCE``). Hidden files are Chroma's temporaries while it saves."""
    files = {}
    for folder in _vector_segment_dirs(directory, collection_id):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                files[path.relative_to(directory).as_posix()] = {
                    "size": path.stat().st_size,
                    "sha256": _sha256_file(path),
                }
    return files


def _file_problems(directory: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """How the recorded segment files differ from those on disk: missing, resized, changed.
    Sizes first, so a truncated file costs no hashing."""
    problems = []
    for relative, expected in sorted(files.items()):
        path = directory / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{relative} has {path.stat().st_size} bytes, not the {expected['size']} it was built with")
        elif _sha256_file(path) != expected["sha256"]:
            problems.append(f"{relative} changed since it was built (its sha256 differs)")
    return problems


def _valid_entry(entry: Any) -> bool:
    """Whether a collection's entry in ``ragkit-index.json`` has the shape ragkit writes
    (nothing read back from the cache is trusted, see ``ragkit.cache``)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
        return False
    if not isinstance(entry.get("count"), int) or not isinstance(entry.get("files"), dict):
        return False
    for relative, expected in entry["files"].items():
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or not parts:
            return False
        if (
            not isinstance(expected, dict)
            or not isinstance(expected.get("size"), int)
            or not isinstance(expected.get("sha256"), str)
        ):
            return False
    positions = entry.get("log_positions", {})
    if not isinstance(positions, dict) or not all(isinstance(v, str) for v in positions.values()):
        return False
    probe = entry.get("probe")
    return (
        isinstance(probe, dict)
        and isinstance(probe.get("ids"), list)
        and all(isinstance(i, str) for i in probe["ids"])
        and isinstance(probe.get("sha256"), str)
    )


def _read_record(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``ragkit-index.json`` in ``directory`` as ``(record, problem)``: ``(None, None)`` when
    there is none, ``(None, why)`` when it cannot be used."""
    path = directory / INDEX_RECORD
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path} cannot be read ({_first_line(exc)})"
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMATS["index"]
        or not isinstance(record.get("collections"), dict)
    ):
        return None, f"{path} is not a ragkit index record of format {FORMATS['index']}"
    bad = sorted(name for name, entry in record["collections"].items() if not _valid_entry(entry))
    if bad:
        return None, f"{path} has malformed entries for {bad}"
    return record, None


def _write_record(directory: Path, name: str, entry: dict[str, Any] | None) -> None:
    """Set (or, with ``entry=None``, drop) a collection's entry in ``ragkit-index.json``."""
    record, _ = _read_record(directory)
    if record is None:  # none yet, or unusable: either way, start a new one
        if entry is None:
            return
        import chromadb

        record = {"format": FORMATS["index"], "chromadb": chromadb.__version__, "collections": {}}
    if entry is None:
        if record["collections"].pop(name, None) is None:
            return
    else:
        record["collections"][name] = entry
    atomic_write(directory / INDEX_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _changed_through_chroma(directory: Path, entry: dict[str, Any]) -> bool:
    """Whether Chroma itself wrote the segment since ragkit recorded it (see _log_positions)."""
    recorded = entry.get("log_positions")
    if not isinstance(recorded, dict) or not recorded:
        return False
    current = _log_positions(directory, list(recorded))
    return current is not None and current != recorded


def _probe_candidates(records: Sequence[_Record]) -> list[str]:
    """Record ids for the probe, in a fixed order (by a hash of the id): twice as many as it
    needs, so that any that fail on the fresh index can be left out. Only texts that occur
    once, since identical texts have identical vectors and either may come back first."""
    texts = Counter(r.text for r in records)
    unique = [r.id for r in records if texts[r.text] == 1]
    return sorted(unique, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[: 2 * _PROBE_SIZE]


def _fetch_vectors(collection: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
    if not ids:
        return {}
    got = collection.get(ids=list(ids), include=["embeddings"])
    return {i: np.asarray(v, dtype=np.float32) for i, v in zip(got["ids"], got["embeddings"], strict=True)}


def _vectors_sha256(vectors: Sequence[np.ndarray]) -> str:
    return hashlib.sha256(b"".join(np.asarray(v, dtype="<f4").tobytes() for v in vectors)).hexdigest()


def _self_hits(collection: Any, vectors: dict[str, np.ndarray], total: int) -> set[str]:
    """The ids among ``vectors`` that a search with their own vector finds, at distance ~0,
    within the first ``_PROBE_NEIGHBOURS`` hits."""
    if not vectors:
        return set()
    ids = list(vectors)
    found = collection.query(
        query_embeddings=np.stack([vectors[i] for i in ids]),
        n_results=min(_PROBE_NEIGHBOURS, total),
        include=["distances"],
    )
    hits = set()
    for record_id, hit_ids, distances in zip(ids, found["ids"], found["distances"], strict=True):
        if record_id in hit_ids and distances[hit_ids.index(record_id)] <= _SELF_DISTANCE:
            hits.add(record_id)
    return hits


def _make_probe(collection: Any, records: Sequence[_Record]) -> dict[str, Any]:
    """Pick the probe on the freshly built index: the first ``_PROBE_SIZE`` candidates that
    find themselves now (a fresh index that failed would make the probe fail forever)."""
    candidates = _probe_candidates(records)
    vectors = {i: v for i, v in _fetch_vectors(collection, candidates).items() if np.linalg.norm(v) > 0}
    passing = _self_hits(collection, vectors, len(records))
    ids = [i for i in candidates if i in passing][:_PROBE_SIZE]
    return {"ids": ids, "sha256": _vectors_sha256([vectors[i] for i in ids])}


def _probe_problems(collection: Any, probe: dict[str, Any], total: int) -> list[str]:
    """What the probe finds wrong: probe records gone, their stored vectors changed, or a
    search with a record's own vector that does not find it (a damaged HNSW graph)."""
    ids = list(probe["ids"])
    if not ids:
        return []
    vectors = _fetch_vectors(collection, ids)
    missing = [i for i in ids if i not in vectors]
    if missing:
        return [f"{len(missing)} of the {len(ids)} probe records are missing (e.g. {missing[:3]})"]
    problems = []
    if probe.get("sha256") and _vectors_sha256([vectors[i] for i in ids]) != probe["sha256"]:
        problems.append("the probe records' stored vectors changed since it was built")
    lost = [i for i in ids if i not in _self_hits(collection, vectors, total)]
    if lost:
        problems.append(
            f"{len(lost)} of {len(ids)} probe records do not come back as their own nearest neighbour (e.g. {lost[:3]})"
        )
    return problems


def _marker_probe(found: dict[str, Any], records: Sequence[_Record]) -> dict[str, Any]:
    """The probe kept in a collection's marker; recomputed (ids only) if it is unreadable."""
    try:
        ids = json.loads(found["ragkit_probe"])
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            return {"ids": ids, "sha256": str(found.get("ragkit_probe_sha256") or "")}
    except (KeyError, TypeError, ValueError):
        pass
    return {"ids": _probe_candidates(records)[:_PROBE_SIZE], "sha256": ""}


def _seal(
    client: Any,
    name: str,
    records: list[_Record],
    fingerprint: str,
    embedder_name: str,
    chunk_size: int | None,
    directory: Path | None,
) -> None:
    """Record how to check the just-built index, then mark it complete.

    The record (``ragkit-index.json``) is written before the marker: a build stopped between
    the two is simply sealed again next time (the marker still says incomplete), whereas a
    complete marker without a record would read as an index whose files cannot be checked.
    The marker only changes ``chroma.sqlite3``, never the digested segment files.
    """
    collection = client.get_collection(name, embedding_function=None)
    probe = _make_probe(collection, records)
    if directory is not None:
        segments = [folder.name for folder in _vector_segment_dirs(directory, str(collection.id))]
        files = _segment_digest(directory, str(collection.id))
        if not files:
            log.warning(
                "Chroma wrote no HNSW segment files for collection %s in %s: only the probe can check it.",
                name,
                directory,
            )
        _write_record(
            directory,
            name,
            {
                "fingerprint": fingerprint,
                "count": len(records),
                "files": files,
                "probe": probe,
                "segments": segments,
                "log_positions": _log_positions(directory, segments),
            },
        )
    collection.modify(metadata=_marker(fingerprint, len(records), True, embedder_name, chunk_size, probe=probe))


def _release_chroma(directory: Path) -> None:
    """Stop the Chroma system this process keeps for ``directory``, before the folder is
    deleted: chromadb shares one system (an open SQLite connection, loaded HNSW indexes) per
    path among all its clients, and a new client on a re-created folder would otherwise reuse
    the one still pointing at the deleted files. chromadb has no public call for this
    (``client.close()`` only stops it once every client on the path is closed)."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient
    except ImportError:  # a chromadb laid out differently: nothing cached that we know of
        return
    key = str(directory)
    systems = getattr(SharedSystemClient, "_identifier_to_system", None)
    system = systems.pop(key, None) if isinstance(systems, dict) else None
    refcounts = getattr(SharedSystemClient, "_identifier_to_refcount", None)
    if isinstance(refcounts, dict):
        refcounts.pop(key, None)
    if system is not None:
        try:
            system.stop()
        except Exception as exc:  # stopping a system on damaged files may fail; it is discarded anyway
            log.debug("Stopping Chroma's system for %s failed: %s", directory, _first_line(exc))


def _discard(directory: Path) -> None:
    """Delete the index in ``directory``, all but the build lock this process holds on it:
    a process waiting for that lock must find the same lock file once it gets it."""
    _release_chroma(directory)
    try:
        for path in directory.iterdir():
            if path.name == BUILD_LOCK:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CacheError(
            f"The damaged Chroma index in {directory} could not be deleted ({_first_line(exc)}). "
            f"Delete that folder (or run `ragkit cache clear`) and run again."
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)


def _remove_folder(directory: Path, *, keep_folder: bool) -> None:
    """Delete everything in ``directory`` (the folder itself too unless ``keep_folder``),
    never raising: called on the way out of a failed build."""
    _release_chroma(directory)
    if keep_folder:
        for path in directory.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    else:
        shutil.rmtree(directory, ignore_errors=True)


def _disk_full_error(directory: Path, vectors: int, full: _DiskFull, removed: bool) -> CacheError:
    need = (
        f"It needs about {_size(full.needed)} ({full.needed:,} bytes; an estimate: vectors x dimensions x 4 bytes, "
        f"plus {_BYTES_PER_VECTOR_OVERHEAD:,} bytes a vector for links, ids and metadata, plus {_BYTES_PER_TEXT_BYTE} "
        "bytes a byte of text)"
        if full.needed is not None
        else f"It needs about {vectors:,} x (dimensions x 4 + {_BYTES_PER_VECTOR_OVERHEAD:,}) bytes plus "
        f"{_BYTES_PER_TEXT_BYTE} bytes a byte of text (an estimate)"
    )
    free = f", and {_size(full.free)} are free" if full.free is not None else ""
    left = (
        "The half-written index was deleted."
        if removed
        else "The index there is kept, marked incomplete: the next build completes it."
    )
    return CacheError(
        f"Not enough disk space for the Chroma index in {directory} ({full.cause}). {need}{free}. {left} Free some "
        "space on that disk, or build elsewhere (RAGKIT_CACHE_DIR for ragkit's cache, or persist_directory), and "
        "run again."
    )


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold the build lock of ``directory`` (created if need be), waiting while another
    process (or thread) holds it. A lock file deleted while this one waited (a folder
    removed as a whole) is no lock any more: it is made and taken again."""
    import fcntl

    path = directory / BUILD_LOCK
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:  # append: opening never truncates another's lock file
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("Waiting for another process building the Chroma index in %s.", directory)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            held = os.fstat(handle.fileno())
            if (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
                continue
            yield
            return


@contextlib.contextmanager
def _as_disk_full(directory: Path | None) -> Iterator[None]:
    """Raise an error saying that the disk of an embedded index (in ``directory``) is full as
    ``_DiskFull``, which the build turns into its advice. A server's errors pass as they are."""
    try:
        yield
    except _DiskFull:
        raise
    except Exception as exc:
        if directory is not None and _is_disk_full(exc):
            raise _DiskFull(None, None, _first_line(exc)) from exc
        raise


@contextlib.contextmanager
def _as_damage(directory: Path | None, what: str, *, rebuild_helps: bool = True) -> Iterator[None]:
    """Raise an error of Chroma's on an embedded index (in ``directory``) as ``_DamagedIndex``
    saying that ``what`` failed. A server's errors pass as they are: an unreachable or
    refusing server says nothing about the collection it holds."""
    try:
        yield
    except _DiskFull:
        raise
    except Exception as exc:
        if directory is None:
            raise
        raise _DamagedIndex([f"{what} ({_first_line(exc)})"], rebuild_helps=rebuild_helps) from exc


def _chroma_index(
    records: list[_Record],
    embeddings: Embeddings,
    fingerprint: str,
    name: str,
    *,
    client: Any = None,
    directory: Path | None = None,
    split: Callable[[str], list[str]] | None,
    chunk_size: int | None,
    batch_size: int,
    rebuild: bool,
    show_progress: bool,
    devices: Sequence[str] | None = None,
) -> ChromaIndex:
    """Open (and check), complete or build the index in collection ``name``: the one path of
    a server's ``client`` and of the embedded Chroma in ``directory`` (give one of the two).
    ``split`` is how ``records`` were split (``None``: whole documents), kept by the index.

    A collection is reused when its marker says complete, it holds every record and its probe
    passes; otherwise what it lacks is embedded and added (:func:`_complete`), and it is
    sealed (:func:`_seal`). Only a folder has files to check: its ``chroma.sqlite3`` must pass
    SQLite's check before Chroma opens it, its segment files must match their digests in
    ``ragkit-index.json`` before Chroma loads them (:func:`_checked_entry`), the probe is the
    one recorded there, and a build is saved whole to disk (:func:`_save_log`) so that its
    files can be digested. A server's collection carries its probe in its marker.

    A failed check raises ``_DamagedIndex``, which the callers turn into a rebuild or an
    error. In a folder, a full disk raises ``_DiskFull``, and Chroma failing to open, count or
    probe the index is damage; a server's errors pass as they are.
    """
    import chromadb

    embedder_name = embeddings.model_name  # type: ignore[attr-defined]
    if directory is not None and (directory / "chroma.sqlite3").exists():
        problem = _sqlite_problem(directory)
        if problem:
            raise _DamagedIndex([problem], rebuild_helps=False)
    marker = _marker(fingerprint, len(records), False, embedder_name, chunk_size)
    # None of these calls touches the HNSW segment (collection metadata comes from SQLite; a
    # count or a search would load it), so damaged segment files are found below first.
    # rebuild=True cannot mend a database Chroma cannot open: it goes through Chroma too.
    with _as_damage(directory, "Chroma cannot open it", rebuild_helps=False), _as_disk_full(directory):
        if directory is not None:
            client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())
        store = _store(client, name, embeddings, marker, len(records))
        if rebuild:
            store.reset_collection()  # recreated empty, with the marker and configuration given above
            if directory is not None:
                _write_record(directory, name, None)
        collection = client.get_collection(name, embedding_function=None)
        found = dict(collection.metadata or {})
    if found.get("ragkit_fingerprint") != fingerprint:
        where = "" if directory is None else f" in {directory}"
        raise RagkitError(
            f"Collection {name!r}{where} holds another index (fingerprint {found.get('ragkit_fingerprint')!r}, not "
            f"{fingerprint!r}): different documents, embedder or splitting, or an index built by an older ragkit. "
            "Pick another collection_name, or pass rebuild=True to replace it."
        )
    complete = bool(found.get("ragkit_complete"))
    entry, changed = (None, False) if directory is None else _checked_entry(directory, name, fingerprint, complete)
    with _as_damage(directory, "Chroma cannot count its vectors"):
        count = collection.count()  # loads the HNSW segment: only now that its files checked out
    if complete and not changed and count == len(records):
        # A folder's probe is its record's, checked with its files; a server's is in its marker.
        probe = _marker_probe(found, records) if entry is None else entry["probe"]
        with _as_damage(directory, "the probe search failed"):
            problems = _probe_problems(collection, probe, count)
        if problems:
            raise _DamagedIndex(problems)
        log.info("Reusing Chroma index %s (%d vectors, %s).", name, len(records), embedder_name)
    else:
        # A build that stopped part-way, or a collection changed through Chroma since: what it
        # holds is taken from Chroma, as before, completed, then recorded again. A folder's old
        # entry goes first, so a completion stopped half-way is never checked against it.
        with _as_disk_full(directory):
            if directory is not None:
                _write_record(directory, name, None)
            _complete(store, client, collection, records, embedder_name, batch_size, show_progress, devices, directory)
            if directory is not None:
                client, store = _save_log(directory, collection, client, store, embeddings, marker, len(records))
            _seal(client, name, records, fingerprint, embedder_name, chunk_size, directory)
    return ChromaIndex(
        store,
        client,
        embeddings,
        fingerprint,
        chunk_size=chunk_size,
        split=split,
        collection_name=name,
        persist_directory=directory,
    )


def _store(client: Any, name: str, embeddings: Embeddings, marker: dict[str, Any], total: int) -> Any:
    """The LangChain store of collection ``name`` on ``client``, the collection created (with
    ``marker`` and ragkit's HNSW configuration for ``total`` vectors) if it is new."""
    from langchain_chroma import Chroma

    return Chroma(
        collection_name=name,
        embedding_function=embeddings,
        client=client,
        collection_metadata=marker,
        collection_configuration={"hnsw": {**HNSW, **_persistence(total, client.get_max_batch_size())}},
    )


def _checked_entry(directory: Path, name: str, fingerprint: str, complete: bool) -> tuple[dict[str, Any] | None, bool]:
    """Collection ``name``'s entry in the record in ``directory`` (``None`` when it has none
    of this fingerprint), with its segment files checked against the entry before Chroma may
    load them, and whether Chroma itself changed those files since (not damage: the index is
    then completed and recorded again). A collection marked ``complete`` must have an entry.
    Raises ``_DamagedIndex``."""
    record, problem = _read_record(directory)
    entry = (record or {}).get("collections", {}).get(name)
    if entry is not None and entry["fingerprint"] != fingerprint:
        entry = None
    if complete and problem:
        raise _DamagedIndex([problem])
    if complete and entry is None:
        why = "so its files cannot be checked before Chroma loads them"
        raise _DamagedIndex([f"{INDEX_RECORD} has no record of collection {name!r}, {why}"])
    if entry is None:
        return None, False
    problems = _file_problems(directory, entry["files"])
    if problems and _changed_through_chroma(directory, entry):
        # A delete or an add through Chroma's own API since the build: not damage. Its count
        # says what is missing.
        log.warning(
            "Chroma index %s in %s was changed through Chroma since ragkit built it; checking its contents again.",
            name,
            directory,
        )
        return entry, True
    if problems:
        raise _DamagedIndex(problems)  # before anything loads the damaged files
    return entry, False


def _unsaved(directory: Path, collection_id: str) -> int | None:
    """How many entries of Chroma's log for the collection its saved HNSW index does not
    hold yet (``None`` when Chroma's tables cannot be read so)."""
    rows = _sqlite_rows(
        directory,
        "SELECT COUNT(*) FROM embeddings_queue WHERE topic LIKE ? AND seq_id > (SELECT COALESCE(MAX(m.seq_id), 0) "
        "FROM segments s JOIN max_seq_id m ON m.segment_id = s.id WHERE s.collection = ? AND s.scope = 'VECTOR')",
        (f"%/{collection_id}", collection_id),
    )
    return None if not rows else int(rows[0][0])


def _save_log(
    directory: Path,
    collection: Any,
    client: Any,
    store: Any,
    embeddings: Embeddings,
    marker: dict[str, Any],
    total: int,
) -> tuple[Any, Any]:
    """The client and store of the index just built in ``directory`` once its saved HNSW index
    holds all of Chroma's log for ``collection``, so that its files are the whole index and can
    be digested.

    A build completed from a part-way one can end between saves. Chroma reads a collection's
    sync threshold when it opens it, so it is lowered to 1, the collection reopened, and
    loading it (a count) replays the log into a save: the client and store are then new ones."""
    import chromadb

    name, collection_id = collection.name, str(collection.id)
    if _unsaved(directory, collection_id):
        log.info("Saving the rest of Chroma's log into the HNSW index of %s in %s.", name, directory)
        client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())
        client.get_collection(name, embedding_function=None).modify(
            configuration={"hnsw": {"sync_threshold": 1, "batch_size": 1}}
        )
        _release_chroma(directory)
        client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())
        store = _store(client, name, embeddings, marker, total)
        client.get_collection(name, embedding_function=None).count()
    unsaved = _unsaved(directory, collection_id)
    if unsaved:
        raise RagkitError(
            f"Chroma left {unsaved} vectors of collection {name!r} in {directory} out of its saved HNSW index after "
            "building it, so its files cannot be digested. Delete that folder and run again; report this, with "
            "chromadb's version, if it happens again."
        )
    return client, store


def build_chroma_index(
    documents: Sequence[Document],
    embedder: str | Embeddings = DEFAULT_EMBEDDER,
    *,
    model_kwargs: dict[str, Any] | None = None,
    encode_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int = CHUNK_OVERLAP,
    chunk_unit: str = "chars",
    first_passage_only: bool = False,
    persist_directory: str | Path | None = None,
    client: Any = None,
    collection_name: str | None = None,
    batch_size: int = INDEX_BATCH_SIZE,
    rebuild: bool = False,
    show_progress: bool = True,
    devices: Sequence[str] | None = None,
) -> ChromaIndex:
    """Embed ``documents`` into a Chroma collection (cosine space), or reopen the one built before.

    The index is keyed by a fingerprint of the embedder (name, revision, kwargs that change
    vectors), the splitting parameters and the corpus (ids, texts, metadata). A second call
    with the same inputs reuses it without embedding anything. A build that stopped half-way
    (an error, Ctrl-C) is detected on the next call by its marker and count, and completed:
    only the missing documents are embedded. Ids are the document ids, or ``<doc_id>#<n>`` for
    chunks, and adds are upserts, so nothing is ever stored twice.

    Before a persisted index is reused it is checked, without letting Chroma load anything
    that could crash the process: ``chroma.sqlite3`` must pass SQLite's integrity check, the
    HNSW segment files must match the sizes and sha256 recorded in ``ragkit-index.json`` when
    the build finished, and then a probe of stored vectors must find each of them as its own
    nearest neighbour. An index that fails is logged (a warning naming the folder and what
    failed) and, in ragkit's own cache, deleted and built afresh; in a ``persist_directory``
    you gave, ragkit deletes nothing and raises ``CacheError`` saying how to fix it. On a
    ``client`` only the probe applies (there are no files).

    Processes sharing a cache (several ``ragkit eval`` at once) build each index once: a
    build holds an OS lock on its folder (``ragkit-build.lock`` in it), the others wait for
    it, then check the finished index as above and reuse it. No process deletes a folder
    another is building.

    Args:
        documents: LangChain Documents, each with ``metadata["doc_id"]`` (or ``Document.id``).
        embedder: a model name, loaded with ``HuggingFaceEmbeddingsLoader(embedder, model_kwargs,
            encode_kwargs)``, or an ``Embeddings`` object with a ``model_name``.
        chunk_size: split documents longer than this many characters with LangChain's
            ``RecursiveCharacterTextSplitter`` (the tutorial uses ``settings.CHUNK_SIZE``, 400);
            ``None`` indexes whole documents.
        chunk_overlap: characters (or tokens) shared by consecutive chunks; less than ``chunk_size``.
        chunk_unit: ``"chars"`` (default) or ``"tokens"``: ``chunk_size`` counts tokens of the
            embedder's own tokenizer, so that no chunk is longer than what the model reads.
        first_passage_only: index only each document's first chunk (FirstP: a document is
            represented by its beginning); default every chunk, and a document scores as its
            best chunk (MaxP).
        persist_directory: where Chroma stores the index; default
            ``settings.cache_dir() / "chroma" / <fingerprint>``.
        client: a chromadb client to use instead, e.g. ``chromadb.HttpClient(host, port,
            settings=chroma_settings())`` for a ``chroma run`` server.
        collection_name: default ``ragkit-<fingerprint[:16]>``. A collection of that name built
            from other inputs is an error unless ``rebuild=True``.
        batch_size: documents embedded and added per step (capped by Chroma's max batch size).
        rebuild: drop the collection and embed everything again.
        show_progress: show a progress bar while embedding.
        devices: embed in worker processes, one per device (``["cuda:0", "cuda:1"]``, or
            ``["cpu", "cpu"]`` on a many-core CPU), with the same vectors as one process; checked
            before any work (:func:`ragkit.loaders.check_devices`). Default: this process.

    Raises:
        CacheError: a ``persist_directory`` (or ``client`` collection) you gave holds this index
            damaged; the message names the folder and the fix.

    Example::

        from langchain_core.documents import Document
        docs = [Document("Chroma stores vectors.", metadata={"doc_id": "a"}),
                Document("BM25 counts words.", metadata={"doc_id": "b"})]
        index = build_chroma_index(docs, show_progress=False)
        build_chroma_index(docs, show_progress=False).count  # reused, not re-embedded
        # 2
    """
    if client is not None and persist_directory is not None:
        raise ConfigError("Pass either client= or persist_directory=, not both: a client already knows its storage.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    devices = None if devices is None else check_devices(devices)
    inputs = (chunk_size, chunk_overlap, chunk_unit, first_passage_only)
    embeddings, split, records, fingerprint = _index_inputs(documents, embedder, model_kwargs, encode_kwargs, *inputs)
    name = collection_name or f"ragkit-{fingerprint[:16]}"
    options = {"split": split, "chunk_size": chunk_size, "batch_size": batch_size, "show_progress": show_progress,
               "devices": devices}  # fmt: skip

    if client is not None:
        try:
            return _chroma_index(records, embeddings, fingerprint, name, client=client, rebuild=rebuild, **options)
        except _DamagedIndex as damage:  # only the probe checks a server's collection
            log.warning("Chroma collection %s failed its probe: %s.", name, damage)
            raise CacheError(
                f"Chroma collection {name!r} on the client you passed failed its check before reuse: {damage}. "
                "ragkit does not replace a collection in storage you manage unless asked: pass rebuild=True to "
                "build it again."
            ) from damage

    ours = persist_directory is None  # a folder in ragkit's cache, which ragkit may delete
    directory = Path(persist_directory) if persist_directory is not None else cache_dir() / "chroma" / fingerprint
    existed = directory.exists()
    with _build_lock(directory):
        fresh = not (directory / "chroma.sqlite3").exists()
        try:
            return _locked_build(directory, ours, records, embeddings, fingerprint, name, rebuild=rebuild, **options)
        except _DiskFull as full:
            # Nothing half-written stays: a folder of ragkit's cache, or one this build began, goes
            # (its lock with it; a waiting process makes a new one). A folder that held an index
            # before is yours: it stays, that collection marked incomplete.
            if ours or fresh:
                _remove_folder(directory, keep_folder=existed and not ours)
            raise _disk_full_error(directory, len(records), full, removed=ours or fresh) from full


def _index_inputs(
    documents: Sequence[Document],
    embedder: str | Embeddings,
    model_kwargs: dict[str, Any] | None,
    encode_kwargs: dict[str, Any] | None,
    chunk_size: int | None,
    chunk_overlap: int,
    chunk_unit: str,
    first_passage_only: bool,
) -> tuple[Embeddings, Callable[[str], list[str]] | None, list[_Record], str]:
    """What an index is made of: the embedder, the splitter, the records and the fingerprint."""
    check_chunking(chunk_size, chunk_overlap, chunk_unit)
    if isinstance(embedder, str):
        embeddings = HuggingFaceEmbeddingsLoader(embedder, model_kwargs=model_kwargs, encode_kwargs=encode_kwargs)
    elif model_kwargs is not None or encode_kwargs is not None:
        raise ConfigError(
            "model_kwargs and encode_kwargs configure an embedder loaded by name; "
            "an Embeddings object comes configured already."
        )
    else:
        embeddings = embedder
    split = text_splitting(chunk_size, chunk_overlap, chunk_unit, first_only=first_passage_only, embeddings=embeddings)
    records = _records(documents, split)
    splitting = splitting_identity(chunk_size, chunk_overlap, chunk_unit, first_only=first_passage_only)
    return embeddings, split, records, _index_fingerprint(embeddings, records, splitting)


def searched_exactly(vectors: int) -> bool:
    """Whether an index of ``vectors`` vectors is searched exactly by default (see
    :attr:`ChromaIndex.exact`): at most ``settings.EXACT_SEARCH_MAX_VECTORS``."""
    return vectors <= EXACT_SEARCH_MAX_VECTORS


class IndexState(NamedTuple):
    """What :func:`index_state` finds: the vectors an index holds, whether ragkit's cache holds
    it, and the identity its first stage has (``ChromaIndex.fingerprint``, ``search_mode``)."""

    vectors: int
    held: bool
    fingerprint: str
    search_mode: tuple[str, ...]


def index_state(
    documents: Sequence[Document],
    embedder: str | Embeddings = DEFAULT_EMBEDDER,
    *,
    model_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int = CHUNK_OVERLAP,
    chunk_unit: str = "chars",
    first_passage_only: bool = False,
    client: Any = None,
) -> IndexState:
    """How many vectors :func:`build_chroma_index` would store for these inputs, and whether
    ragkit's cache holds that index, finished and unchanged since (then a build embeds
    nothing). Loads the embedder (its identity and tokenizer decide the index), embeds nothing,
    and opens no Chroma; on a ``client`` (a Chroma server) the answer is always "not held",
    since only the server knows.

    Example::

        index_state(load_beir("scifact").documents())
        # IndexState(vectors=5183, held=True, fingerprint='23c518d6...', search_mode=('exact',))
    """
    _, _, records, fingerprint = _index_inputs(documents, embedder, model_kwargs, None, chunk_size, chunk_overlap,
                                               chunk_unit, first_passage_only)  # fmt: skip
    mode = ("exact",) if searched_exactly(len(records)) else ("hnsw",)
    if client is not None:
        return IndexState(len(records), False, fingerprint, mode)
    directory = cache_dir() / "chroma" / fingerprint
    record, _ = _read_record(directory)
    entry = (record or {}).get("collections", {}).get(f"ragkit-{fingerprint[:16]}")
    held = entry is not None and entry["fingerprint"] == fingerprint and not _file_problems(directory, entry["files"])
    return IndexState(len(records), held, fingerprint, mode)


def _locked_build(
    directory: Path,
    ours: bool,
    records: list[_Record],
    embeddings: Embeddings,
    fingerprint: str,
    name: str,
    *,
    rebuild: bool,
    **options: Any,
) -> ChromaIndex:
    """Reuse, complete or build the index in ``directory`` while holding its build lock:
    nothing else builds or deletes it meanwhile. ``ours``: a folder of ragkit's cache."""
    try:
        return _chroma_index(records, embeddings, fingerprint, name, directory=directory, rebuild=rebuild, **options)
    except _DamagedIndex as damage:
        what = "; ".join(damage.problems)
        if not ours:
            log.warning("Chroma index %s in %s failed its check before reuse: %s.", name, directory, what)
            fix = (
                f"pass rebuild=True to build collection {name!r} again in it, or delete {directory} and run again"
                if damage.rebuild_helps
                else f"Chroma cannot open its database, so rebuild=True cannot help either: delete {directory} (or "
                "move it away) and run again"
            )
            raise CacheError(
                f"The Chroma index in {directory} (collection {name!r}) failed its check before reuse: {what}. "
                f"ragkit never deletes a folder you chose; {fix}."
            ) from damage
        log.warning(
            "Chroma index %s in %s failed its check before reuse (%s): deleting it and building it afresh.",
            name,
            directory,
            what,
        )
    _discard(directory)
    try:
        return _chroma_index(records, embeddings, fingerprint, name, directory=directory, rebuild=False, **options)
    except _DamagedIndex as damage:  # a fresh build that fails its own check: nothing more to try
        raise CacheError(
            f"The Chroma index rebuilt in {directory} failed its check: {damage}. Delete that folder "
            "(or run `ragkit cache clear`) and report this, with chromadb's version."
        ) from damage


def verify_index(directory: str | Path) -> list[str]:
    """Check a persisted ragkit index as :func:`build_chroma_index` does before reusing it,
    without rebuilding or changing anything: what ``ragkit cache verify`` reports.

    Checks ``chroma.sqlite3`` (SQLite's integrity check), then each collection recorded in
    ``ragkit-index.json`` (its HNSW segment files against their recorded sizes and sha256,
    its marker and count) and only when every file matches, opens Chroma for the probe, so
    a damaged file is reported, never loaded. Never raises: anything unexpected is a problem.

    Returns:
        The problems found, one line each; empty when the index is healthy.

    Example::

        from ragkit.settings import cache_dir
        for folder in sorted((cache_dir() / "chroma").iterdir()):
            print(folder.name, verify_index(folder) or "ok")
    """
    directory = Path(directory)
    try:
        return _verify(directory)
    except Exception as exc:  # the CLI lists problems; it must not die on one it did not foresee
        return [f"{directory}: the check itself failed ({_first_line(exc)})"]


def _verify(directory: Path) -> list[str]:
    if not directory.is_dir():
        return [f"{directory} is not a folder"]
    if not (directory / "chroma.sqlite3").is_file():
        return [f"{directory} holds no chroma.sqlite3: it is not a Chroma index"]
    problem = _sqlite_problem(directory)
    if problem:
        return [problem]
    record, problem = _read_record(directory)
    if problem:
        return [problem]
    if record is None:
        return [
            f"{directory} has no {INDEX_RECORD}: its files cannot be checked (built by an older ragkit, "
            "interrupted, or not built by ragkit)"
        ]
    if not record["collections"]:
        return [f"{directory / INDEX_RECORD} records no collection"]
    problems = []
    for name, entry in sorted(record["collections"].items()):
        mismatches = _file_problems(directory, entry["files"])
        if mismatches and _changed_through_chroma(directory, entry):
            problems.append(
                f"collection {name!r}: its files were changed through Chroma since ragkit recorded them "
                "(the next build_chroma_index checks its contents and records it again)"
            )
        else:
            problems += [f"collection {name!r}: {p}" for p in mismatches]
    if problems:
        return problems  # never let Chroma load files that fail their digest: a count or search can crash on them
    import chromadb

    client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())
    try:
        for name, entry in sorted(record["collections"].items()):
            try:
                collection = client.get_collection(name, embedding_function=None)
                found = dict(collection.metadata or {})
                count = collection.count()
                if found.get("ragkit_fingerprint") != entry["fingerprint"]:
                    problems.append(f"collection {name!r}: its marker names another fingerprint than {INDEX_RECORD}")
                elif not found.get("ragkit_complete"):
                    problems.append(f"collection {name!r}: marked incomplete (a build that stopped part-way)")
                elif count != entry["count"]:
                    problems.append(f"collection {name!r}: holds {count} vectors, {entry['count']} when built")
                else:
                    probe = _probe_problems(collection, entry["probe"], count)
                    problems += [f"collection {name!r}: {p}" for p in probe]
            except Exception as exc:
                problems.append(f"collection {name!r}: Chroma cannot check it ({_first_line(exc)})")
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()
    return problems


class BM25Retriever(SearchesByText, BaseRetriever):
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
    def from_documents(
        cls, documents: Sequence[Document], k: int = DEFAULT_RERANK_K, *, k1: float = 1.5, b: float = 0.75
    ) -> BM25Retriever:
        """Index whole documents (``page_content``) under their ``metadata["doc_id"]``."""
        check_k(k)
        records = _records(documents, None)
        index = BM25Index.from_texts([r.id for r in records], [r.text for r in records], k1=k1, b=b)
        docs = {r.id: Document(page_content=r.text, metadata=r.metadata, id=r.id) for r in records}
        return cls(index=index, documents=docs, fingerprint=_bm25_fingerprint(records, k1, b), k=k)

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> BM25Retriever:
        """This retriever with another ``k`` (the index is shared, not rebuilt)."""
        check_k(k)
        return self.model_copy(update={"k": k})

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """The ``k`` best documents per query as ``(doc_id, BM25 score)``; fewer when fewer
        documents share a word with the query."""
        check_k(k)
        return self.index.search(list(queries), k)

    # The first-stage protocol (ragkit.stages.FirstStage).
    fills_depth: ClassVar[bool] = False  # only documents sharing a word with the query are found

    @property
    def search_mode(self) -> tuple[str, ...]:
        return ()

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]]:
        """One query searched, timed in seconds."""
        t0 = time.perf_counter()
        hits = self.search([query], k)[0]
        return hits, {"bm25 search": time.perf_counter() - t0}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(
                page_content=self.documents[doc_id].page_content,
                id=doc_id,
                metadata={**self.documents[doc_id].metadata, "score": score},
            )
            for doc_id, score in self.index.search([query], self.k)[0]
        ]


def bm25_fingerprint(documents: Sequence[Document], *, k1: float = 1.5, b: float = 0.75) -> str:
    """The fingerprint :meth:`BM25Retriever.from_documents` gives the BM25 stage of these
    documents, without indexing them: what its cached runs and timings are keyed by, so that a
    plan can find them (it hashes the documents, as the index does, and tokenizes nothing)."""
    return _bm25_fingerprint(_records(documents, None), k1, b)


def _bm25_fingerprint(records: Sequence[_Record], k1: float, b: float) -> str:
    digest = hashlib.sha256(json.dumps({"bm25": "ragkit.bm25", "k1": k1, "b": b}, sort_keys=True).encode())
    for record in sorted(records, key=lambda r: r.id):
        digest.update(f"{record.id}\x00{record.text}\x00".encode())
    return digest.hexdigest()


def build_dense_stage(collection: Any, pipeline: Any, context: StageContext) -> ChromaIndex | PassageStage:
    """The dense first stage a pipeline names: the collection's Chroma index of its embedder,
    built or reopened; with a ``chunk_size``, the index of its passages wrapped in a
    :class:`ragkit.passages.PassageStage`, which ranks documents by their passages
    (ragkit.stages builder)."""
    passages: dict[str, Any] = {}
    if pipeline.chunk_size is not None:
        passages = {
            "chunk_size": pipeline.chunk_size,
            "chunk_overlap": pipeline.chunk_overlap,
            "chunk_unit": pipeline.chunk_unit,
            "first_passage_only": pipeline.passage_score == "firstp",
        }
    index = build_chroma_index(
        collection.documents(),
        pipeline.embedder,
        model_kwargs={"device": context.device},
        client=context.client,
        show_progress=context.show_progress,
        devices=context.devices,
        **passages,
    )
    return index if pipeline.chunk_size is None else PassageStage(index, text=collection.text)


def build_bm25_stage(collection: Any, pipeline: Any, context: StageContext) -> BM25Retriever:
    """The BM25 first stage over the collection's whole documents (ragkit.stages builder)."""
    return BM25Retriever.from_documents(collection.documents())
