"""How ragkit's dense first stage scales with the corpus: what a Chroma index of 10k, 100k and
1M documents costs to build, to keep and to query, before you point ragkit at TREC-COVID
(171k documents) or MS MARCO (8.8M passages).

For each corpus size it measures, on ragkit's own Chroma configuration (a persistent client
with :func:`ragkit.retrievers.chroma_settings`, cosine space and ragkit's HNSW parameters
``HNSW`` and ``_persistence``, vectors added as ragkit adds them, ``_add_plan``, each record
carrying ``metadata["doc_id"]``), and beside it on a bare ChromaDB build of the same vectors:

- index build: seconds and documents/s, the peak RSS of the building process, the size of
  the persisted index on disk and the bytes the build wrote; the same build rate of a bare
  ChromaDB collection (Chroma's default configuration, adds of its largest batch);
- query latency, one query at a time (p50 and p95 ms for ``k=100``), through
  :meth:`ragkit.retrievers.ChromaIndex.search_by_vector` as the evaluation's latency timings
  call it, on the index reopened in a new process (the usual case: the index is cached),
  beside a bare ``collection.query`` of the same index and exact search (a matrix product);
- the first stage of an evaluation: one ``search_by_vector`` call over a batch of queries
  (1,000 by default, ``k=100``);
- recall@100 of those HNSW results against the exact top 100 (brute force with numpy) for a
  sample of the queries, so that the speed is not bought with silent misses.

The vectors are synthetic and precomputed, so nothing is embedded: embedding the corpus is
the larger cost and grows linearly with it (``benchmarks/rerank_cost.py`` and the evaluation's
own timings measure the embedder). They are unit vectors of 384 dimensions (like
all-MiniLM-L6-v2's), drawn from a seeded hierarchical mixture of gaussians (see
:class:`SyntheticVectors`) whose statistics resemble MiniLM's on SciFact, because HNSW finds
neighbours in uniform noise far less easily than in real embeddings. Only vectors and ``doc_id``
metadata are stored: a real corpus also stores its texts in ``chroma.sqlite3``, which adds
their size (and Chroma's full-text index of them) to the disk figures and some time per
document to the build.

Each size is built in a new process and searched in another, so each peak RSS belongs to
that size alone. Everything lives in a temporary folder that is removed afterwards (a 1M
index takes about 2 GB). A build still adding after ``--build-budget-min`` (40 by default)
is stopped: the figures for that size are then extrapolated, and labelled so.

    python benchmarks/scaling.py                                # 10k, 100k, 1M: about 35 minutes on 2 cores
    python benchmarks/scaling.py --sizes 10000 100000 --queries 500
    python benchmarks/scaling.py --sizes 2000 --output-dir /tmp/scaling --work-dir /tmp
    python benchmarks/scaling.py --plot-only                    # redraw the plot from the stored JSON

It writes ``scaling-cpu.json`` (the record, with its provenance), ``scaling-cpu.md`` (the
table) and ``scaling-cpu.png`` (a log-log plot) to ``--output-dir`` (default
``benchmarks/results``). Run it on a quiet machine: the 1-minute load average at the start is
recorded beside the figures.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragkit.errors import ConfigError, RagkitError
from ragkit.provenance import environment, now
from ragkit.results import markdown_table
from ragkit.retrievers import (
    _HNSW_PERSISTENCE,
    _SAVES,
    HNSW,
    ChromaIndex,
    _add_plan,
    _persistence,
    chroma_settings,
)
from ragkit.settings import FIRST_STAGE_DEPTH

RESULTS = Path(__file__).resolve().parent / "results"
SECTION = "scaling"
TAG = "cpu"  # Chroma searches on the CPU, whatever the machine's GPU
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DIM = 384  # all-MiniLM-L6-v2, ragkit's default embedder
COLLECTION = "ragkit-scaling"
# Documents are generated in chunks of this many, each from its own seeded stream, so that
# document i is the same vector whatever the corpus size (the 10k corpus is the first 10k
# documents of the 1M one) and no process ever holds more than one chunk of them.
CHUNK = 16_384
# Queries searched, untimed, before the latency timings: the first search of a process pays
# for lazy initialisation that no later query does.
WARMUP_QUERIES = 5
# A build still adding after this many minutes is stopped and its size extrapolated. On 2 CPU
# cores the 1M-document build takes about half an hour (adding slows as the index grows).
BUILD_BUDGET_MIN = 40.0
# Bytes on disk per vector, measured (HNSW level-0 data and links, ids, metadata in SQLite)
# with headroom: the free-space check before anything is built.
DISK_BYTES_PER_VECTOR = 3_000


# ----------------------------------------------------------------------------- synthetic vectors


@dataclass(frozen=True)
class SyntheticVectors:
    """Seeded unit vectors that look like sentence embeddings to a nearest-neighbour index.

    A hierarchical mixture of gaussians: ``topics`` topic centres, each with ``subtopics``
    subtopic centres around it, each document drawn around one subtopic centre, all offset
    along one common direction (real embeddings share a mean direction), then normalised.
    Every component has the same anisotropic, power-law spectrum (variance of dimension
    ``i`` proportional to ``i ** -spectrum``), as the principal components of real embeddings
    have. On 1,000 documents these parameters give much what all-MiniLM-L6-v2 gives on the
    1,000 SciFact abstracts of a ragkit subset (``make_subset``): mean pairwise cosine 0.14
    (MiniLM: 0.14), nearest neighbour 0.67 (0.60), 10th 0.52 (0.45), 100th 0.28 (0.29), 23
    principal components for half the variance (28), a TwoNN intrinsic dimension of 14 (15).
    Uniform random unit vectors have none of that structure (nearest neighbour 0.16, TwoNN
    dimension 124): every document is about as far from a query as any other, which is not
    what an index of real embeddings searches. Queries are drawn from the same mixture (other
    streams): new points, not corpus members.

    Example:
        >>> gen = SyntheticVectors()
        >>> first = next(gen.documents(10))[1]
        >>> first.shape, bool(np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5))
        ((10, 384), True)
        >>> bool(np.array_equal(next(gen.documents(10))[1], next(gen.documents(20))[1][:10]))
        True
    """

    dim: int = DIM
    topics: int = 50
    subtopics: int = 20  # per topic
    spectrum: float = 0.8
    topic_scale: float = 1.0
    subtopic_scale: float = 0.7
    document_scale: float = 0.9
    common: float = 0.6
    seed: int = 0

    def _model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0])
        scale = np.arange(1, self.dim + 1, dtype=np.float64) ** (-self.spectrum / 2)
        scale /= np.sqrt((scale**2).sum())  # each gaussian component has unit expected norm
        mean = rng.standard_normal(self.dim)
        mean /= np.linalg.norm(mean)
        topics = rng.standard_normal((self.topics, self.dim)) * scale * self.topic_scale
        parents = np.repeat(np.arange(self.topics), self.subtopics)
        centres = topics[parents] + rng.standard_normal((len(parents), self.dim)) * scale * self.subtopic_scale
        return scale, self.common * mean + centres, mean

    def _draw(self, rng: np.random.Generator, n: int, scale: np.ndarray, centres: np.ndarray) -> np.ndarray:
        which = rng.integers(len(centres), size=n)
        x = centres[which] + rng.standard_normal((n, self.dim)) * scale * self.document_scale
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def documents(self, n: int, *, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Documents ``start`` to ``n - 1`` as ``(first index, vectors)`` chunks of up to ``CHUNK`` rows."""
        scale, centres, _ = self._model()
        for chunk_start in range(start - start % CHUNK, n, CHUNK):
            rng = np.random.default_rng([self.seed, 1, chunk_start // CHUNK])
            block = self._draw(rng, CHUNK, scale, centres)
            lo, hi = max(start, chunk_start), min(n, chunk_start + CHUNK)
            yield lo, block[lo - chunk_start : hi - chunk_start]

    def queries(self, n: int) -> np.ndarray:
        """``n`` query vectors, one row each."""
        scale, centres, _ = self._model()
        return self._draw(np.random.default_rng([self.seed, 2]), n, scale, centres)


def exact_top_k(generator: SyntheticVectors, queries: np.ndarray, n_docs: int, k: int) -> tuple[np.ndarray, float]:
    """The exact top ``k`` document indices per query by cosine similarity (dot products of
    unit vectors), best first, streamed over the corpus a chunk at a time; and the seconds
    the search itself took (generating the chunks excluded)."""
    k = min(k, n_docs)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    searching = 0.0
    for start, block in generator.documents(n_docs):
        t0 = time.perf_counter()
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, start + len(block)), (len(queries), len(block)))], axis=1
        )
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
        searching += time.perf_counter() - t0
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, 1), searching


@dataclass(frozen=True)
class SyntheticTexts:
    """Seeded texts for the BM25 first stage: words drawn from a Zipf distribution (exponent
    ``zipf``) over ``vocabulary`` made-up words of 3 to 9 letters, as word frequencies in
    real text are; documents of about ``words`` words (Poisson), like an MS MARCO passage,
    and queries of ``query_words``.

    Example:
        >>> texts = SyntheticTexts().documents(2)
        >>> len(texts), texts == SyntheticTexts().documents(2)
        (2, True)
    """

    vocabulary: int = 30_000
    zipf: float = 1.1
    words: int = 60
    query_words: int = 6
    seed: int = 0

    def _words(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 10])
        letters = rng.integers(ord("a"), ord("z") + 1, size=(self.vocabulary, 9), dtype=np.uint8).tobytes()
        lengths = rng.integers(3, 10, size=self.vocabulary)
        vocabulary = np.array([letters[9 * i : 9 * i + n].decode() for i, n in enumerate(lengths)], dtype=object)
        weights = 1.0 / np.arange(1, self.vocabulary + 1) ** self.zipf
        return vocabulary, weights / weights.sum()

    def _texts(self, rng: np.random.Generator, n: int, mean_words: int) -> list[str]:
        vocabulary, p = self._words()
        lengths = rng.poisson(mean_words - 1, size=n) + 1
        words = vocabulary[rng.choice(len(vocabulary), size=int(lengths.sum()), p=p)]
        ends = np.cumsum(lengths)
        return [" ".join(words[end - length : end]) for end, length in zip(ends, lengths)]

    def documents(self, n: int) -> list[str]:
        return self._texts(np.random.default_rng([self.seed, 11]), n, self.words)

    def queries(self, n: int) -> list[str]:
        return self._texts(np.random.default_rng([self.seed, 12]), n, self.query_words)


# ----------------------------------------------------------------------------- measuring, in worker processes


def _proc_self(file: str, field: str) -> int | None:
    """The number after ``field:`` in Linux's ``/proc/self/<file>``, or None where the kernel
    does not say (another system, or a kernel without it)."""
    try:
        for line in Path("/proc/self", file).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss_mb() -> float:
    """This process's resident-memory high-water mark so far, in MiB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` carries the parent's high-water mark across
    fork and exec, so a worker started by a large parent would report the parent's peak.
    """
    kib = _proc_self("status", "VmHWM")
    if kib is not None:
        return kib / 1024
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _written_mb() -> float | None:
    """MiB this process has caused to be written to storage so far (Linux's
    ``/proc/self/io``), or None where the kernel does not say."""
    written = _proc_self("io", "write_bytes")
    return None if written is None else written / 2**20


def _precomputed_embedder() -> Any:
    """An ``Embeddings`` that refuses to embed: every vector here is precomputed, so a call
    to it would mean the benchmark measured something it does not claim to."""
    from langchain_core.embeddings import Embeddings

    class PrecomputedVectors(Embeddings):
        model_name = "synthetic-precomputed-vectors"

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise RagkitError("The scaling benchmark adds precomputed vectors; nothing may be embedded.")

        def embed_query(self, text: str) -> list[float]:
            raise RagkitError("The scaling benchmark searches by precomputed vectors; nothing may be embedded.")

    return PrecomputedVectors()


def _import_chroma() -> None:
    # Before any timing or memory baseline: importing them is a cost of every process, not of the index.
    import chromadb  # noqa: F401
    import langchain_chroma  # noqa: F401
    from tqdm.auto import tqdm  # noqa: F401


def _open_store(directory: Path, size: int) -> tuple[Any, Any, Any]:
    """The client, LangChain store and embedding-free collection handle, made as
    ``ragkit.retrievers._chroma_index`` makes them for ``size`` vectors (same settings,
    same configuration)."""
    import chromadb
    from langchain_chroma import Chroma

    client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())
    store = Chroma(
        collection_name=COLLECTION,
        embedding_function=_precomputed_embedder(),
        client=client,
        collection_configuration={"hnsw": {**HNSW, **_persistence(size, client.get_max_batch_size())}},
    )
    return client, store, client.get_collection(COLLECTION, embedding_function=None)


def build_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Build the index of ``config["size"]`` documents in ``config["directory"]``; stop early
    once ``config["budget_s"]`` is spent. Returns the timings, progress and peak RSS.

    ``config["bare"]``: build it as a bare ChromaDB user would instead, into its own folder:
    Chroma's own configuration (cosine space, everything else default) and adds of the largest
    batch Chroma accepts; otherwise as ragkit's ``_complete`` adds (``_add_plan``)."""
    from tqdm.auto import tqdm

    _import_chroma()
    generator = SyntheticVectors(**config["generator"])
    n, budget, bare = config["size"], config["budget_s"], config.get("bare", False)
    rss_before, written_before = _peak_rss_mb(), _written_mb()
    if bare:
        import chromadb

        client = chromadb.PersistentClient(path=config["bare_directory"], settings=chroma_settings())
        collection = client.create_collection(
            COLLECTION, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        full, rest = divmod(n, client.get_max_batch_size())
        adds = [client.get_max_batch_size()] * full + [rest] * bool(rest)
    else:
        client, _, collection = _open_store(Path(config["directory"]), n)
        _, adds = _add_plan(n, client.get_max_batch_size(), _SAVES)
    checkpoints: list[tuple[int, float]] = []
    added, seconds, generating = 0, 0.0, 0.0
    waiting: list[np.ndarray] = []  # generated, not yet added
    start = time.perf_counter()
    label = "Bare Chroma" if bare else "Building"
    with tqdm(total=n, desc=f"{label} {n:,}", unit="doc", disable=not config["progress"], mininterval=2) as bar:
        chunks = generator.documents(n)
        while added < n:
            t0 = time.perf_counter()
            waiting.append(next(chunks)[1])
            generating += time.perf_counter() - t0
            block = np.concatenate(waiting)
            at = 0
            while adds and len(block) - at >= adds[0]:
                size = adds.pop(0)
                ids = [str(i) for i in range(added, added + size)]
                collection.add(ids=ids, embeddings=block[at : at + size], metadatas=[{"doc_id": i} for i in ids])
                added += size
                at += size
                bar.update(size)
            waiting = [block[at:]]
            seconds = time.perf_counter() - start - generating
            if not checkpoints or checkpoints[-1][0] != added:
                checkpoints.append((added, seconds))
            if seconds > budget and added < n:
                break
    count = collection.count()
    if count != added:
        raise RagkitError(f"The index holds {count} vectors after adding {added}.")
    return {
        "size": n,
        "added": added,
        "complete": added == n,
        "build_s": seconds,
        "checkpoints": checkpoints,
        "batch_size": client.get_max_batch_size(),
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "configuration": collection.configuration.get("hnsw"),
        "written_mb": None if written_before is None else _written_mb() - written_before,
    }


def search_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Reopen the index in ``config["directory"]``, time single queries and a batch, and
    compare a sample of the batch's results with the exact top k."""
    _import_chroma()
    generator = SyntheticVectors(**config["generator"])
    n, k = config["size"], config["k"]
    t0 = time.perf_counter()
    client, store, collection = _open_store(Path(config["directory"]), n)
    count = collection.count()  # loads the HNSW segment from disk
    open_s = time.perf_counter() - t0
    if count != n:
        raise RagkitError(f"The reopened index holds {count} vectors, not {n}.")
    index = ChromaIndex(
        store,
        client,
        store.embeddings,
        "synthetic",
        chunk_size=None,
        collection_name=COLLECTION,
        persist_directory=Path(config["directory"]),
    )
    batch, latency = config["queries"], config["latency_queries"]
    vectors = generator.queries(WARMUP_QUERIES + latency + batch)
    warmup, single, many = np.split(vectors, [WARMUP_QUERIES, WARMUP_QUERIES + latency])

    def one_at_a_time(*searches: Any) -> list[np.ndarray]:
        """ms per query of each ``search(vector)``, after the warm-up queries. The searches
        take turns on each query, in an order reversed from one query to the next, so that
        a busy spell of the machine, or the caches one search leaves, favour none of them."""
        for v in warmup:
            for search in searches:
                search(v)
        times: list[list[float]] = [[] for _ in searches]
        for i, v in enumerate(single):
            order = range(len(searches)) if i % 2 == 0 else reversed(range(len(searches)))
            for which in order:
                t = time.perf_counter()
                searches[which](v)
                times[which].append(time.perf_counter() - t)
        return [np.asarray(spent) * 1000 for spent in times]

    # One query at a time, as the evaluation's latency timings search: ragkit's HNSW search
    # and the bare Chroma query it makes (distances only) on the same index, taking turns;
    # then exact search on its own, since it sweeps every stored vector through the caches.
    ms, bare = one_at_a_time(
        lambda v: index.search_by_vector(v[None], k, exact=False),
        lambda v: collection.query(query_embeddings=v[None], n_results=k, include=["distances"]),
    )
    t = time.perf_counter()
    index.search_by_vector(warmup[:1], k, exact=True)  # reads every stored vector into memory, once
    exact_load_s = time.perf_counter() - t
    [exact_ms] = one_at_a_time(lambda v: index.search_by_vector(v[None], k, exact=True))
    t = time.perf_counter()
    hits = index.search_by_vector(many, k, exact=False)  # one call, as an evaluation's first stage makes it
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    exact_hits = index.search_by_vector(many, k, exact=True)
    exact_batch_s = time.perf_counter() - t
    sample = config["recall_queries"]
    exact, exact_s = exact_top_k(generator, many[:sample], n, k)
    depth = min(k, n)
    recall = [
        len({int(doc_id) for doc_id, _ in found[:depth]} & set(truth.tolist())) / depth
        for found, truth in zip(hits[:sample], exact)
    ]
    exact_recall = [
        len({int(doc_id) for doc_id, _ in found[:depth]} & set(truth.tolist())) / depth
        for found, truth in zip(exact_hits[:sample], exact)
    ]
    return {
        "open_s": open_s,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "bare_p50_ms": float(np.percentile(bare, 50)),
        "bare_p95_ms": float(np.percentile(bare, 95)),
        "exact_p50_ms": float(np.percentile(exact_ms, 50)),
        "exact_p95_ms": float(np.percentile(exact_ms, 95)),
        "exact_load_s": exact_load_s,
        "batch_s": batch_s,
        "exact_batch_s": exact_batch_s,
        "recall": float(np.mean(recall)),
        "recall_min": float(np.min(recall)),
        "exact_recall": float(np.mean(exact_recall)),
        "exact_ms_per_query": exact_s / sample * 1000,
        "peak_rss_mb": _peak_rss_mb(),
    }


def bm25_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Index ``config["size"]`` synthetic texts with :class:`ragkit.bm25.BM25Index` and time
    its searches as the dense index's are timed (BM25 is exact: no recall to check)."""
    from ragkit.bm25 import BM25Index

    texts = SyntheticTexts(**config["texts"])
    n, k = config["size"], config["k"]
    corpus = texts.documents(n)
    ids = [str(i) for i in range(n)]
    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    index = BM25Index.from_texts(ids, corpus)
    build_s = time.perf_counter() - t
    queries = texts.queries(WARMUP_QUERIES + config["latency_queries"] + config["queries"])
    warmup, single = queries[:WARMUP_QUERIES], queries[WARMUP_QUERIES : WARMUP_QUERIES + config["latency_queries"]]
    many = queries[WARMUP_QUERIES + config["latency_queries"] :]
    index.search(warmup, k)
    times = []
    for query in single:
        t = time.perf_counter()
        index.search([query], k)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    index.search(many, k)
    batch_s = time.perf_counter() - t
    ms = np.asarray(times) * 1000
    return {
        "documents": n,
        "build_s": build_s,
        "build_docs_per_s": n / build_s,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_with_texts_mb": rss_before,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "batch_s": batch_s,
        "batch_queries_per_s": len(many) / batch_s,
    }


WORKERS = {"build": build_worker, "search": search_worker, "bm25": bm25_worker}


def _run_worker(phase: str, config: dict[str, Any], result_path: Path) -> dict[str, Any]:
    """Run one phase in a new Python process, so its peak RSS is its own."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", phase, json.dumps(config), str(result_path)],
        check=False,
    )
    if done.returncode != 0 or not result_path.is_file():
        raise RagkitError(
            f"The {phase} of {config['size']:,} documents failed (exit status {done.returncode}): its error is above."
        )
    return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------- the benchmark


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) CPU time since boot from Linux's ``/proc/stat``, or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


class LoadSampler:
    """The 1-minute load average every ``every_s`` seconds while a run lasts, in a thread: the
    load at the start alone does not show another job that starts half-way through. Also the
    share of CPU time the hypervisor took from this (virtual) machine over the run ("steal"),
    which slows every timing without showing up in the load."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu_start = self._cpu_end = None

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._cpu_start = _cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._cpu_end = _cpu_times()

    def summary(self) -> dict[str, Any]:
        return {
            "every_s": self.every_s,
            "samples": len(self.samples),
            "median": round(float(np.median(self.samples)), 2) if self.samples else None,
            "max": round(max(self.samples), 2) if self.samples else None,
            "cpu_steal_percent": self._steal_percent(),
        }

    def _steal_percent(self) -> float | None:
        if self._cpu_start is None or self._cpu_end is None or self._cpu_end[1] <= self._cpu_start[1]:
            return None
        steal = self._cpu_end[0] - self._cpu_start[0]
        return round(100 * steal / (self._cpu_end[1] - self._cpu_start[1]), 1)


def disk_usage_mb(directory: Path) -> dict[str, float]:
    """What a persisted index occupies on disk (allocated blocks, as ``du`` counts them), in
    MiB: the HNSW segment folders, ``chroma.sqlite3`` (with its write-ahead log), and both."""

    def allocated(paths: Iterator[Path]) -> float:
        return sum(p.stat().st_blocks * 512 for p in paths if p.is_file()) / 2**20

    hnsw = allocated(p for d in directory.iterdir() if d.is_dir() for p in d.rglob("*"))
    sqlite = allocated(p for p in directory.iterdir() if p.name.startswith("chroma.sqlite3"))
    return {"hnsw_mb": hnsw, "sqlite_mb": sqlite, "disk_mb": allocated(directory.rglob("*"))}


def _power_law(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """``(a, b)`` of the least-squares fit ``log y = a + b log x``."""
    b, a = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(a), float(b)


def _extrapolate(rows: list[dict[str, Any]], size: int, field: str) -> float | None:
    """``field`` at ``size`` by a power law through the measured rows (None below two)."""
    points = [(r["documents"], r[field]) for r in rows if r.get(field) and not r.get("extrapolated")]
    if len(points) < 2:
        return None
    a, b = _power_law(*zip(*points))
    return math.exp(a + b * math.log(size))


def validate(
    *, sizes: Sequence[int], queries: int, latency_queries: int, recall_queries: int, k: int, build_budget_s: float
) -> list[int]:
    """The sizes, sorted, once every option is usable; else a ``ConfigError`` that says why."""
    for name, value in [("queries", queries), ("latency_queries", latency_queries), ("k", k)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if not sizes:
        raise ConfigError("No corpus sizes given: pass at least one, e.g. --sizes 10000 100000.")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(f"Corpus sizes must be positive integers (documents), got {bad}.")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"Corpus sizes {list(sizes)} repeat one; each size is one row of the table.")
    if min(sizes) < k:
        raise ConfigError(
            f"Corpus size {min(sizes)} is smaller than k={k}: recall@{k} needs at least {k} documents to rank."
        )
    if not 1 <= recall_queries <= queries:
        raise ConfigError(
            f"Recall is checked on a sample of the {queries} batch queries: --recall-queries must be between 1 "
            f"and {queries}, got {recall_queries}."
        )
    if not build_budget_s > 0:
        raise ConfigError(f"The build budget must be positive (minutes), got {build_budget_s / 60!r}.")
    return sorted(sizes)


def run(
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    queries: int = 1_000,
    latency_queries: int = 200,
    recall_queries: int = 200,
    k: int = FIRST_STAGE_DEPTH,
    output_dir: str | Path = RESULTS,
    work_dir: str | Path | None = None,
    build_budget_s: float = BUILD_BUDGET_MIN * 60,
    generator: SyntheticVectors | None = None,
    bm25: bool = True,
    texts: SyntheticTexts | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every size, write ``scaling-cpu.json``, ``.md`` and ``.png`` to ``output_dir``
    and return the record. Indexes are built in a temporary folder under ``work_dir`` (the
    system's temporary folder by default), removed afterwards. With ``bm25``, ragkit's BM25
    index is measured too, at the same sizes, on ``texts``.

    Example::

        record = run(sizes=[2000], queries=50, latency_queries=20, recall_queries=20, output_dir="/tmp/s")
        record["tables"]["scaling"][0]["recall@100"]  # 1.0
    """
    sizes = validate(
        sizes=sizes,
        queries=queries,
        latency_queries=latency_queries,
        recall_queries=recall_queries,
        k=k,
        build_budget_s=build_budget_s,
    )
    generator = generator or SyntheticVectors()
    texts = texts or SyntheticTexts(seed=generator.seed)
    output_dir = Path(output_dir)
    load_at_start = os.getloadavg()[0]
    date = now()
    root = Path(tempfile.mkdtemp(prefix="ragkit-scaling-", dir=work_dir))
    needed = max(sizes) * DISK_BYTES_PER_VECTOR
    free = shutil.disk_usage(root).free
    if free < needed:
        shutil.rmtree(root, ignore_errors=True)
        raise ConfigError(
            f"{root.parent} has {free / 2**30:.1f} GiB free; an index of {max(sizes):,} vectors needs about "
            f"{needed / 2**30:.1f} GiB. Pass --work-dir on a larger disk, or smaller --sizes."
        )
    rows: list[dict[str, Any]] = []
    bm25_rows: list[dict[str, Any]] = []
    progress_rows: list[dict[str, Any]] = []  # per build and chunk: how the adding rate changes as the index grows
    notes: list[str] = []
    chroma: dict[str, Any] = {}  # what the builds found: Chroma's own view of the configuration, batch size
    total = time.perf_counter()
    with LoadSampler() as sampler:
        try:
            for size in sizes:
                lexical = _extrapolate(bm25_rows, size, "build_s") if bm25 else None
                if bm25 and lexical is not None and lexical > 1.5 * build_budget_s:
                    notes.append(
                        f"BM25 at {size:,} documents: not measured, since the power law through the smaller BM25 "
                        f"builds predicts {lexical / 60:.1f} min, over the {build_budget_s / 60:g} min budget."
                    )
                elif bm25:
                    # In its own process, before the dense index of this size: the two are independent.
                    _say(f"{size:,} documents: BM25")
                    bm25_rows.append(
                        _run_worker(
                            "bm25",
                            {
                                "size": size,
                                "k": k,
                                "queries": queries,
                                "latency_queries": latency_queries,
                                "texts": asdict(texts),
                            },
                            root / f"bm25-{size}.json",
                        )
                    )
                predicted = _extrapolate(rows, size, "build_s")
                if predicted is not None and predicted > 1.5 * build_budget_s:
                    # Not even started: the smaller builds say it would overrun the budget by far.
                    rows.append(_extrapolated_row(rows, size, k))
                    notes.append(
                        f"{size:,} documents: not built, since the power law through the smaller builds predicts a "
                        f"{predicted / 60:.1f} min build, over the {build_budget_s / 60:g} min budget; its row is "
                        "extrapolated from the smaller sizes."
                    )
                    continue
                directory = root / f"index-{size}"
                config = {
                    "size": size,
                    "k": k,
                    "queries": queries,
                    "latency_queries": latency_queries,
                    "recall_queries": recall_queries,
                    "directory": str(directory),
                    "generator": asdict(generator),
                    "budget_s": build_budget_s,
                    "progress": progress,
                    "texts": asdict(texts),
                }
                _say(f"{size:,} documents: building the index")
                built = _run_worker("build", config, root / f"build-{size}.json")
                progress_rows += _progress_rows(built)
                chroma = {
                    "hnsw_configuration": built["configuration"],
                    "add_batch_size": built["batch_size"],
                    "rss_after_imports_mb": round(built["rss_before_mb"], 1),
                }
                if not built["complete"]:
                    rows.append(_extrapolated_row(rows, size, k, partial=built))
                    notes.append(_partial_note(built, build_budget_s))
                    shutil.rmtree(directory, ignore_errors=True)
                    continue
                disk = disk_usage_mb(directory)
                _say(f"{size:,} documents: searching the reopened index")
                searched = _run_worker("search", config, root / f"search-{size}.json")
                shutil.rmtree(directory, ignore_errors=True)  # a 1M index is gigabytes: gone before the next
                _say(f"{size:,} documents: the same vectors into a bare ChromaDB collection")
                bare_directory = root / f"bare-{size}"
                bare = _run_worker(
                    "build",
                    {**config, "bare": True, "bare_directory": str(bare_directory), "budget_s": math.inf},
                    root / f"bare-{size}.json",
                )
                bare_disk = disk_usage_mb(bare_directory)
                shutil.rmtree(bare_directory, ignore_errors=True)
                written = built["written_mb"]
                rows.append(
                    {
                        "documents": size,
                        "build_s": built["build_s"],
                        "build_docs_per_s": size / built["build_s"],
                        "build_peak_rss_mb": built["peak_rss_mb"],
                        "search_peak_rss_mb": searched["peak_rss_mb"],
                        **disk,
                        "open_s": searched["open_s"],
                        "p50_ms": searched["p50_ms"],
                        "p95_ms": searched["p95_ms"],
                        "bare_p50_ms": searched["bare_p50_ms"],
                        "bare_p95_ms": searched["bare_p95_ms"],
                        "p50_vs_bare": searched["p50_ms"] / searched["bare_p50_ms"],
                        "exact_p50_ms": searched["exact_p50_ms"],
                        "exact_p95_ms": searched["exact_p95_ms"],
                        "exact_load_s": searched["exact_load_s"],
                        "batch_s": searched["batch_s"],
                        "batch_queries_per_s": queries / searched["batch_s"],
                        "exact_batch_s": searched["exact_batch_s"],
                        f"recall@{k}": searched["recall"],
                        f"min_recall@{k}": searched["recall_min"],
                        f"exact_recall@{k}": searched["exact_recall"],
                        "exact_ms_per_query": searched["exact_ms_per_query"],
                        "build_written_mb": written,
                        "written_vs_disk": None if written is None else written / disk["disk_mb"],
                        "bare_build_s": bare["build_s"],
                        "bare_build_docs_per_s": size / bare["build_s"],
                        "build_vs_bare": bare["build_s"] / built["build_s"],
                        "bare_build_written_mb": bare["written_mb"],
                        "bare_disk_mb": bare_disk["disk_mb"],
                        "extrapolated": False,
                    }
                )
                _say(_row_line(rows[-1], k))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    record = {
        "section": SECTION,
        "title": "Scaling of the dense first stage with the corpus: Chroma, synthetic precomputed vectors",
        "quick": list(sizes) != list(DEFAULT_SIZES),
        "environment": {
            **environment("cpu"),
            "date": date,  # when the run started; environment() dates its own call, at the end
            "load_average_1min_at_start": round(load_at_start, 2),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "load_average_1min_during": sampler.summary(),
            "libraries": _library_versions(),
        },
        "parameters": {
            "sizes": sizes,
            "dim": generator.dim,
            "k": k,
            "batch_queries": queries,
            "latency_queries": latency_queries,
            "warmup_queries": WARMUP_QUERIES,
            "recall_queries": recall_queries,
            "hnsw": {**HNSW, **_HNSW_PERSISTENCE},
            "saves": _SAVES,
            **chroma,
            "build_budget_min": build_budget_s / 60,
            "generator": asdict(generator),
            **({"texts": asdict(texts)} if bm25 else {}),
        },
        "seconds": round(time.perf_counter() - total, 1),
        "notes": _notes(k, queries, latency_queries, recall_queries)
        + (_bm25_notes(texts, k) if bm25 else [])
        + _slowdown_notes(progress_rows, rows)
        + notes,
        "crossover": exact_crossover(rows),
        "tables": {"scaling": rows, **({"bm25": bm25_rows} if bm25 else {}), "build_progress": progress_rows},
    }
    write_outputs(record, output_dir)
    return record


def exact_crossover(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where exact search stops being faster than ragkit's HNSW search, one query at a time:
    the corpus size at which their p50 latencies meet, interpolated log-log between the two
    measured sizes around it (``None`` when one is faster at every measured size).

    Example:
        >>> rows = [{"documents": 10**4, "p50_ms": 2.0, "exact_p50_ms": 0.2, "extrapolated": False},
        ...         {"documents": 10**6, "p50_ms": 8.0, "exact_p50_ms": 20.0, "extrapolated": False}]
        >>> exact_crossover(rows)["documents"]
        251189
    """
    measured = [r for r in rows if not r.get("extrapolated") and r.get("exact_p50_ms") and r.get("p50_ms")]
    faster = [r["documents"] for r in measured if r["exact_p50_ms"] < r["p50_ms"]]
    found: dict[str, Any] = {"exact_faster_at": faster, "documents": None}
    for a, b in zip(measured, measured[1:]):
        ra, rb = math.log(a["exact_p50_ms"] / a["p50_ms"]), math.log(b["exact_p50_ms"] / b["p50_ms"])
        if ra < 0 <= rb:
            share = -ra / (rb - ra)
            size = math.exp(math.log(a["documents"]) + share * math.log(b["documents"] / a["documents"]))
            found["documents"] = round(size)
            break
    return found


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _extrapolated_row(
    rows: list[dict[str, Any]], size: int, k: int, *, partial: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A row of figures for a size that was not (fully) measured, each by a power law through
    the measured sizes; the build time, when a build ran part-way, from its own progress."""
    row: dict[str, Any] = {"documents": size}
    fields = [
        "build_s",
        "build_peak_rss_mb",
        "search_peak_rss_mb",
        "hnsw_mb",
        "sqlite_mb",
        "disk_mb",
        "open_s",
        "p50_ms",
        "p95_ms",
        "batch_s",
        "exact_ms_per_query",
        "bare_p50_ms",
        "exact_p50_ms",
        "bare_build_s",
    ]
    for field in fields:
        row[field] = _extrapolate(rows, size, field)
    if partial is not None:
        # The build's own cost curve (seconds to add the first m documents), from its second half.
        points = [(m, s) for m, s in partial["checkpoints"] if m >= partial["added"] / 2 and s > 0]
        if len(points) >= 2:
            a, b = _power_law(*zip(*points))
            row["build_s"] = math.exp(a + b * math.log(size))
        row["build_peak_rss_mb"] = None  # measured only part-way: not a figure for this size
    if row["build_s"]:
        row["build_docs_per_s"] = size / row["build_s"]
    measured = [r for r in rows if not r.get("extrapolated")]
    if row.get("batch_s") and measured:
        row["batch_queries_per_s"] = measured[-1]["batch_s"] * measured[-1]["batch_queries_per_s"] / row["batch_s"]
    row[f"recall@{k}"] = None  # no honest extrapolation of a miss rate
    row["extrapolated"] = True
    return row


def _partial_note(built: dict[str, Any], budget_s: float) -> str:
    return (
        f"{built['size']:,} documents: the build was stopped at the {budget_s / 60:g} min budget after "
        f"{built['added']:,} documents ({built['build_s'] / 60:.1f} min, {built['added'] / built['build_s']:,.0f} "
        "docs/s on average), so nothing was searched at this size; its build time is extrapolated from that "
        "build's own progress, the other figures from the smaller sizes (power laws, log-log)."
    )


def _notes(k: int, queries: int, latency_queries: int, recall_queries: int) -> list[str]:
    return [
        "Vectors are synthetic and precomputed: seeded 384-d unit vectors from a hierarchical mixture of gaussians "
        "(topics, subtopics, documents; power-law spectrum; a common direction), whose neighbour cosines and "
        "intrinsic dimension are close to all-MiniLM-L6-v2's on SciFact (SyntheticVectors in "
        "benchmarks/scaling.py); queries are new draws from the same mixture. Nothing is embedded, so embedding "
        "the corpus and the queries (the larger cost, linear in the corpus; measured by benchmarks/rerank_cost.py "
        "and by each evaluation) comes on top of these figures.",
        "Only vectors and doc_id metadata are stored; a real corpus also stores its texts in chroma.sqlite3, which "
        "adds their size and Chroma's full-text index of them to the disk figures, and some time to the build.",
        "Build: each size in a new process, into a persistent collection with ragkit's settings and HNSW "
        "configuration, in the adds ragkit makes (ragkit.retrievers._add_plan: the largest batches Chroma accepts, "
        f"Chroma saving the HNSW index {_SAVES} times, evenly, the last with the last add); seconds exclude "
        "generating the vectors. Peak RSS is the building process's high-water mark, Python and imports included "
        "(rss_after_imports_mb in the parameters). Disk is what du counts of the persisted folder; build wrote is "
        "what the building process wrote to storage (/proc/self/io), and written_vs_disk its ratio to the disk "
        "figure.",
        "Bare ChromaDB (bare_*): the same vectors, in another new process, into a collection of Chroma's own "
        "configuration (cosine space, everything else default: a save once 1,000 vectors came in) in adds of the "
        "largest batch Chroma accepts, as a user of ChromaDB alone would build it; build_vs_bare is ragkit's build "
        "rate over that one's, measured in the same run.",
        f"Search: the index reopened in another new process (open_s: client, collection and loading the HNSW "
        f"segment); {WARMUP_QUERIES} warm-up queries, then {latency_queries} queries one at a time through "
        f"ChromaIndex.search_by_vector with HNSW (p50/p95 ms), the same through a bare collection.query(..., "
        "include=['distances']) of the same index in the same process (bare_p50_ms; p50_vs_bare their ratio), and "
        "through exact search (exact_p50_ms: one matrix product over the stored vectors, after reading them once, "
        f"exact_load_s); then the batch: {queries} other queries through search_by_vector (batch_s, HNSW; "
        f"exact_batch_s, exact: an evaluation's first stage, query embedding excluded), all at k={k}. The crossover "
        "in the JSON is the corpus size where exact and HNSW p50 meet (log-log between the measured sizes): "
        "ragkit.settings.EXACT_SEARCH_MAX_VECTORS follows it.",
        f"recall@{k}: the share of the exact top {k} (numpy brute force over the same vectors) that HNSW returned, "
        f"averaged over the first {recall_queries} batch queries (min_recall@{k}: the worst of them); "
        "exact_ms_per_query is that brute force's own time per query, for comparison.",
    ]


def _progress_rows(built: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per chunk of a build: documents added so far, seconds so far, and the rate
    of adding over that chunk alone."""
    rows, previous = [], (0, 0.0)
    for added, seconds in built["checkpoints"]:
        rate = (added - previous[0]) / (seconds - previous[1]) if seconds > previous[1] else None
        rows.append(
            {
                "size": built["size"],
                "documents": added,
                "seconds": seconds,
                "chunk_documents": added - previous[0],
                "chunk_docs_per_s": rate,
            }
        )
        previous = (added, seconds)
    return rows


def _slowdown_notes(progress: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """How much slower the largest build added its last chunk than its first, and what it
    wrote to disk, when that is worth saying (a factor of 2 or more)."""
    largest = max((r["size"] for r in progress), default=None)
    # Whole chunks only: the last one of a build is usually a short remainder, timed too briefly.
    chunks = [r for r in progress if r["size"] == largest and r["chunk_docs_per_s"] and r["chunk_documents"] == CHUNK]
    if len(chunks) < 2 or chunks[0]["chunk_docs_per_s"] < 2 * chunks[-1]["chunk_docs_per_s"]:
        return []
    row = next((r for r in rows if r["documents"] == largest and not r["extrapolated"]), None)
    written = (
        f" The build wrote {row['build_written_mb'] / 1024:,.0f} GiB to disk for an index of "
        f"{row['disk_mb'] / 1024:,.1f} GiB."
        if row and row.get("build_written_mb")
        else ""
    )
    return [
        f"Adding slows down as the index grows: the {largest:,}-document build added its first "
        f"{chunks[0]['documents']:,} documents at {chunks[0]['chunk_docs_per_s']:,.0f} docs/s and the {CHUNK:,} up "
        f"to {chunks[-1]['documents']:,} at "
        f"{chunks[-1]['chunk_docs_per_s']:,.0f} docs/s (table build_progress in the JSON).{written} Each insertion "
        "into an HNSW graph searches it for the new vector's neighbours, and each save of the index rewrites an id "
        "map that grows with it, so build time grows faster than the corpus."
    ]


def _bm25_notes(texts: SyntheticTexts, k: int) -> list[str]:
    return [
        f"BM25 (table bm25): ragkit.bm25.BM25Index over synthetic texts (SyntheticTexts: about {texts.words} words "
        f"from a Zipf({texts.zipf}) vocabulary of {texts.vocabulary:,} made-up words; queries of about "
        f"{texts.query_words}), each size in a new process: from_texts (tokenising, stemming, indexing) and then "
        f"searches timed as the dense ones, at k={k}. Peak RSS includes the corpus's texts, which an evaluation "
        "holds in memory too (rss_with_texts_mb: before indexing). Nothing is persisted: ragkit builds BM25 in memory."
    ]


def _library_versions() -> dict[str, str]:
    found = {}
    for name in ("chromadb", "langchain-chroma", "numpy", "hnswlib", "chroma-hnswlib"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


# ----------------------------------------------------------------------------- output


COLUMNS = {
    "documents": "documents",
    "build_s": "build s",
    "build_docs_per_s": "build docs/s",
    "bare_build_docs_per_s": "bare Chroma build docs/s",
    "build_vs_bare": "build rate vs bare",
    "build_peak_rss_mb": "build peak RSS MiB",
    "search_peak_rss_mb": "search peak RSS MiB",
    "disk_mb": "disk MiB",
    "build_written_mb": "build wrote MiB",
    "written_vs_disk": "wrote / disk",
    "open_s": "open s",
    "p50_ms": "p50 ms",
    "p95_ms": "p95 ms",
    "bare_p50_ms": "bare query p50 ms",
    "p50_vs_bare": "p50 vs bare",
    "exact_p50_ms": "exact p50 ms",
    "batch_s": "batch s",
    "batch_queries_per_s": "batch queries/s",
    "exact_batch_s": "exact batch s",
    "recall": "recall",
}


def _cell(value: Any, *, extrapolated: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        text = value
    elif isinstance(value, int):
        text = f"{value:,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"~{text}*" if extrapolated else text


def table_rows(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record's rows as the Markdown table shows them: extrapolated figures as ``~x*``."""
    k = record["parameters"]["k"]
    shown = []
    for row in record["tables"]["scaling"]:
        cells = {}
        for key, label in COLUMNS.items():
            if key == "recall":
                key, label = f"recall@{k}", f"recall@{k}"
            value = row.get(key)
            if key.startswith("recall@") and value is not None:
                value = f"{value:.4f}"  # a miss rate of 0.1% is what one reads here
            cells[label] = _cell(value, extrapolated=row["extrapolated"] and key != "documents")
        shown.append(cells)
    return shown


BM25_COLUMNS = {
    "documents": "documents",
    "build_s": "build s",
    "build_docs_per_s": "build docs/s",
    "peak_rss_mb": "peak RSS MiB",
    "p50_ms": "p50 ms",
    "p95_ms": "p95 ms",
    "batch_s": "batch s",
    "batch_queries_per_s": "batch queries/s",
}


def bm25_table_rows(record: dict[str, Any]) -> list[dict[str, str]]:
    """The BM25 rows as the Markdown table shows them."""
    return [{label: _cell(row.get(key)) for key, label in BM25_COLUMNS.items()} for row in record["tables"]["bm25"]]


def markdown(record: dict[str, Any]) -> str:
    """``scaling-cpu.md``: what was measured, the table, and where and with what."""
    import pandas as pd

    env, params = record["environment"], record["parameters"]
    ver, libs = env["versions"], env["libraries"]
    quick = " (**smaller than the default sizes**)" if record["quick"] else ""
    lines = [
        "# How the dense first stage scales with the corpus (cpu)",
        "",
        "Written by `benchmarks/scaling.py`. Chroma as ragkit uses it (persistent client, cosine space, "
        f"`{json.dumps(params['hnsw'])}`), on synthetic precomputed {params['dim']}-d unit vectors: "
        "nothing is embedded, so embedding time comes on top (see the notes).",
        "",
        markdown_table(pd.DataFrame(table_rows(record))),
        "",
    ]
    if any(r["extrapolated"] for r in record["tables"]["scaling"]):
        lines += ["`~x*`: **extrapolated**, not measured (why: see the notes).", ""]
    crossover = record.get("crossover") or {}
    if crossover.get("documents"):
        lines += [
            f"Exact search is faster than HNSW one query at a time up to about **{crossover['documents']:,}** "
            "documents (where their p50 latencies meet, log-log between the measured sizes).",
            "",
        ]
    elif crossover.get("exact_faster_at") is not None:
        lines += [f"Exact search was faster one query at a time at: {crossover['exact_faster_at']} documents.", ""]
    if record["tables"].get("bm25"):
        lines += [
            "BM25 (`ragkit.bm25`, synthetic texts, in memory) at the same sizes:",
            "",
            markdown_table(pd.DataFrame(bm25_table_rows(record))),
            "",
        ]
    lines += [
        f"CPU: {env['machine']}; {env['platform']}; {env['date']}; the run took {record['seconds'] / 60:.1f} min"
        f"{quick}.",
        "",
        _load_line(env),
        "",
        f"chromadb {libs.get('chromadb', '?')}, langchain-chroma {libs.get('langchain-chroma', '?')}, numpy "
        f"{libs.get('numpy', '?')}, torch {ver['torch']} ({env['torch_threads']} threads, unused here), ragkit "
        f"{ver['ragkit']}, python {ver['python']}.",
        "",
        f"Parameters: `{json.dumps({k: v for k, v in params.items() if k != 'generator'})}`",
        "",
        f"Synthetic vectors (`SyntheticVectors`): `{json.dumps(params['generator'])}`",
        "",
    ]
    lines += [f"- {note}" for note in record["notes"]] + [""]
    return "\n".join(lines)


def _load_line(env: dict[str, Any]) -> str:
    during = env.get("load_average_1min_during") or {}
    sampled = (
        f", median {during['median']} and max {during['max']} during the run (sampled every {during['every_s']:g} s)"
        if during.get("samples")
        else ""
    )
    steal = during.get("cpu_steal_percent")
    stolen = "" if steal is None else f"; CPU steal {steal}% over the run (time the hypervisor gave elsewhere)"
    return (
        f"Load: 1-minute load average {env['load_average_1min_at_start']} at the start{sampled}, "
        f"{env['load_average_1min_at_end']} at the end (the benchmark itself keeps one to two cores busy){stolen}."
    )


def _plain_log_ticks(axis: Any, low: float, high: float) -> None:
    """A log axis's ticks as plain numbers (``20``, ``1.1``), not ``2 x 10^1``: the powers of
    ten; between them every tick where the axis spans less than a decade (nothing would show
    otherwise), the 2s and 5s where it spans less than two."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: Any) -> str:
        leading = f"{value:e}"[0]
        return f"{value:g}" if high / low < 10 or (high / low < 100 and leading in "25") else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def plot(record: dict[str, Any], path: Path) -> Path:
    """A log-log plot of build time, p50 latency and the batch's run time against corpus size;
    extrapolated points hollow, on a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["tables"]["scaling"]
    panels = [
        ("build_s", "index build (s)"),
        ("p50_ms", "query latency p50 (ms), one at a time"),
        ("batch_s", f"first stage, {record['parameters']['batch_queries']:,} queries (s)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4), constrained_layout=True)
    for ax, (field, title) in zip(axes, panels):
        points = [(r["documents"], r[field], r["extrapolated"]) for r in rows if r.get(field)]
        measured = [(x, y) for x, y, e in points if not e]
        if measured:
            ax.plot(*zip(*measured), "o-", color="tab:blue", label="Chroma HNSW")
        others = {
            "p50_ms": [("exact_p50_ms", "exact search", "tab:red"), ("bare_p50_ms", "bare Chroma query", "tab:gray")],
            "build_s": [("bare_build_s", "bare ChromaDB build", "tab:gray")],
        }.get(field, [])
        for other, name, colour in others:
            line = [(r["documents"], r[other]) for r in rows if r.get(other) and not r["extrapolated"]]
            if line:
                ax.plot(*zip(*line), "^-", color=colour, label=name)
        guessed = [(x, y) for x, y, e in points if e]
        if guessed:
            joined = ([measured[-1]] if measured else []) + guessed
            ax.plot(*zip(*joined), "--", color="tab:orange")
            ax.plot(*zip(*guessed), "o", mfc="none", color="tab:orange", label="Chroma HNSW, extrapolated")
        lexical = [(r["documents"], r[field]) for r in record["tables"].get("bm25", []) if r.get(field)]
        if lexical:
            ax.plot(*zip(*lexical), "s-", color="tab:green", label="BM25 (in memory)")
        largest = max((x for x, _, _ in points), default=None)
        for x, y, _ in points:  # the largest size's label left of its point, inside the axes
            left = x == largest
            ax.annotate(_cell(float(y)), (x, y), textcoords="offset points", xytext=(-5 if left else 5, -11),
                        ha="right" if left else "left", fontsize=7)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis, *ax.get_ylim())
        ax.set_xlabel("documents")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if guessed or lexical or others:
            ax.legend(fontsize=8)
    env = record["environment"]
    fig.suptitle(
        f"ragkit's first stages, k={record['parameters']['k']}, synthetic 384-d vectors and texts: {env['machine']} "
        f"({env['date'][:10]})",
        fontsize=10,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def write_outputs(record: dict[str, Any], folder: Path) -> dict[str, Path]:
    """``scaling-cpu.json``, ``.md`` and ``.png`` in ``folder`` (created if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ext: folder / f"{SECTION}-{TAG}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["md"].write_text(markdown(record))
    plot(record, paths["png"])
    return paths


def _row_line(row: dict[str, Any], k: int) -> str:
    return (
        f"{row['documents']:,} documents: build {row['build_s']:.1f} s ({row['build_docs_per_s']:,.0f} docs/s), "
        f"peak RSS {row['build_peak_rss_mb']:,.0f} MiB, disk {row['disk_mb']:,.0f} MiB, p50 {row['p50_ms']:.2f} ms, "
        f"p95 {row['p95_ms']:.2f} ms, batch {row['batch_s']:.2f} s, recall@{k} {row[f'recall@{k}']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A terminated run still removes its temporary indexes (finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if argv[:1] == ["--worker"]:  # one phase of one size, in its own process (see _run_worker)
        phase, config, result = argv[1], json.loads(argv[2]), Path(argv[3])
        result.write_text(json.dumps(WORKERS[phase](config)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), help="corpus sizes (documents)")
    parser.add_argument("--queries", type=int, default=1_000, help="queries in the batch run (default 1000)")
    parser.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time (default 200)")
    parser.add_argument(
        "--recall-queries", type=int, default=200, help="batch queries checked against brute force (default 200)"
    )
    parser.add_argument("-k", type=int, default=FIRST_STAGE_DEPTH, help=f"depth (default {FIRST_STAGE_DEPTH})")
    parser.add_argument("--output-dir", default=str(RESULTS), help="where the results go (default benchmarks/results)")
    parser.add_argument("--work-dir", default=None, help="where the temporary indexes go (default: the system's temp)")
    parser.add_argument(
        "--build-budget-min",
        type=float,
        default=BUILD_BUDGET_MIN,
        help=f"stop a build past this and extrapolate (default {BUILD_BUDGET_MIN:.0f})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic vectors (default 0)")
    parser.add_argument("--no-bm25", action="store_true", help="measure the Chroma index only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="measure nothing: redraw scaling-cpu.png from the scaling-cpu.json already in --output-dir",
    )
    args = parser.parse_args(argv)
    if args.plot_only:
        stored = Path(args.output_dir) / f"{SECTION}-{TAG}.json"
        if not stored.is_file():
            parser.error(f"--plot-only redraws {stored}, which does not exist: run the measurement first.")
        print(f"-> {plot(json.loads(stored.read_text()), stored.with_suffix('.png'))}")
        return 0
    try:
        record = run(
            sizes=args.sizes,
            queries=args.queries,
            latency_queries=args.latency_queries,
            recall_queries=args.recall_queries,
            k=args.k,
            output_dir=args.output_dir,
            work_dir=args.work_dir,
            build_budget_s=args.build_budget_min * 60,
            generator=SyntheticVectors(seed=args.seed),
            bm25=not args.no_bm25,
            progress=not args.no_progress,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(pd.DataFrame(table_rows(record)).to_string(index=False))
        if record["tables"].get("bm25"):
            print("\nBM25:\n" + pd.DataFrame(bm25_table_rows(record)).to_string(index=False))
    print("\n".join(f"- {note}" for note in record["notes"][5 + bool(record["tables"].get("bm25")) :]))
    print(f"-> {Path(args.output_dir) / f'{SECTION}-{TAG}.md'} (.json, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
