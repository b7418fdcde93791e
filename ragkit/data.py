"""BEIR collections: find them, download them, check them, cut subsets, hand them to LangChain.

A BEIR collection is a folder holding ``corpus.jsonl``, ``queries.jsonl`` and
``qrels/<split>.tsv``. :func:`load_beir` finds one by name or by path, checks every line and
returns a :class:`BeirCollection`; :func:`make_subset` cuts a small, reproducible subset for
quick runs on a CPU. Facts about the public collections (download URL, md5, official counts,
licence, citation) live in the manifest, ``ragkit/manifest.json`` (see :func:`manifest`).

Example:
    >>> from ragkit.data import load_beir
    >>> demo = load_beir("demo")
    >>> len(demo.corpus), len(demo.queries), demo.is_subset
    (40, 8, False)
    >>> demo.documents()[0].metadata
    {'doc_id': 'd01', 'title': 'What retrieval is for'}
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cache, cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ragkit.errors import ConfigError, DataError
from ragkit.settings import (
    BEIR_DIR_ENV,
    BEIR_MIRROR_ENV,
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DEFAULT_SUBSET_DOCS,
    DEFAULT_SUBSET_HARD_NEGATIVES,
    DEFAULT_SUBSET_QUERIES,
    DEFAULT_SUBSET_SEED,
    NETWORK_PROBE_TIMEOUT_S,
    OFFLINE_ENV,
    beir_download_dir,
    beir_search_dirs,
    env_flag,
)

# Loaded where used: checking a collection's name (the command line does so before any work)
# must not wait for LangChain, ir-measures or bm25s to import.
if TYPE_CHECKING:
    import ir_measures
    from langchain_core.documents import Document

    from ragkit.bm25 import BM25Index

__all__ = [
    "DEMO_DIR",
    "BeirCollection",
    "Doc",
    "SubsetInfo",
    "download_beir",
    "known_collections",
    "load_beir",
    "make_subset",
    "manifest",
    "sample_queries",
]

DEMO_DIR = Path(__file__).with_name("demo")
_MANIFEST_PATH = Path(__file__).with_name("manifest.json")
_QRELS_HEADER = "query-id\tcorpus-id\tscore"
_CORPUS_EXAMPLE = '{"_id": "d1", "title": "...", "text": "..."}'
_FINGERPRINT_VERSION = b"ragkit-corpus-v1\n"
_DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Doc:
    """One corpus entry: BEIR keeps a title apart from the text (the title may be empty)."""

    title: str
    text: str


@dataclass(frozen=True)
class SubsetInfo:
    """How a subset was cut from its parent collection (see :func:`make_subset`).

    ``n_docs`` is what the subset holds; ``target_docs`` what was asked for (a subset keeps
    every judged document of its queries, so it can hold more than asked).
    """

    parent: str
    parent_fingerprint: str
    seed: int
    n_queries: int
    n_docs: int
    target_docs: int
    n_judged_docs: int
    n_hard_negatives: int
    hard_negatives_per_query: int


@dataclass(frozen=True)
class QuerySample:
    """Which queries a query sample kept (see :func:`sample_queries`): the corpus is whole."""

    parent: str
    seed: int
    n_queries: int
    parent_queries: int


@dataclass(frozen=True, eq=False, repr=False)
class BeirCollection:
    """A BEIR collection for one split: corpus, that split's queries and graded judgements.

    ``queries`` holds only the queries judged in ``qrels`` (``queries.jsonl`` lists every
    split's queries). Treat the dictionaries as read-only: indexes are cached under
    :meth:`fingerprint`. ``subset`` is ``None`` for a collection as published.

    Example:
        >>> from ragkit.data import load_beir
        >>> demo = load_beir("demo")
        >>> demo.text("d12")[:35]
        'BM25 BM25 is a lexical ranking func'
        >>> demo.qrels["q1"]["d17"]
        2
    """

    name: str
    split: str
    corpus: dict[str, Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: Path
    subset: SubsetInfo | None = None
    sample: QuerySample | None = None

    @property
    def is_subset(self) -> bool:
        """Whether this is a ragkit subset rather than the official split."""
        return self.subset is not None

    @property
    def n_judgements(self) -> int:
        """Number of (query, document, grade) lines in the qrels."""
        return sum(len(docs) for docs in self.qrels.values())

    @property
    def grades(self) -> tuple[int, ...]:
        """The distinct grades in the qrels, ascending (``(1,)`` for SciFact, ``(1, 2)`` for NFCorpus)."""
        return tuple(sorted({grade for docs in self.qrels.values() for grade in docs.values()}))

    def text(self, doc_id: str) -> str:
        """The text a model sees for ``doc_id``: BEIR's ``(title + " " + text).strip()``.

        Example:
            >>> from ragkit.data import load_beir
            >>> load_beir("demo").text("d05").startswith("Input length limits Many embedding")
            True
        """
        doc = self.corpus[doc_id]
        return (doc.title + " " + doc.text).strip()

    def documents(self) -> list[Document]:
        """The corpus as LangChain documents, in corpus order, with ``doc_id`` and ``title`` metadata.

        Example:
            >>> from ragkit.data import load_beir
            >>> doc = load_beir("demo").documents()[2]
            >>> doc.metadata["doc_id"], doc.page_content[:10]
            ('d03', 'Embeddings')
        """
        from langchain_core.documents import Document

        return [
            Document(page_content=self.text(doc_id), metadata={"doc_id": doc_id, "title": doc.title})
            for doc_id, doc in self.corpus.items()
        ]

    def fingerprint(self) -> str:
        """sha256 of the corpus content (ids, titles, texts), independent of file order.

        Stable across runs and machines, so indexes built from this corpus can be cached
        under it; queries and qrels do not enter it.

        Example:
            >>> from ragkit.data import load_beir
            >>> len(load_beir("demo").fingerprint())
            64
        """
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        for doc_id in sorted(self.corpus):
            doc = self.corpus[doc_id]
            digest.update(json.dumps([doc_id, doc.title, doc.text], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def qrels_list(self) -> list[ir_measures.Qrel]:
        """The judgements as ``ir_measures.Qrel`` tuples, for ``ir_measures.calc_aggregate``.

        Example:
            >>> from ragkit.data import load_beir
            >>> load_beir("demo").qrels_list()[0]
            Qrel(query_id='q1', doc_id='d17', relevance=2, iteration='0')
        """
        import ir_measures

        return [
            ir_measures.Qrel(query_id, doc_id, grade)
            for query_id, docs in self.qrels.items()
            for doc_id, grade in docs.items()
        ]

    def summary(self) -> str:
        """Counts and grades in a sentence or two; says so plainly when this is a subset. (The
        folder it came from is ``source``; it stays out of the summary, which reports and
        notebooks print, so that they carry no machine paths.)

        Example:
            >>> from ragkit.data import load_beir
            >>> print(load_beir("demo").summary().split(";")[0])
            demo (test split): 40 docs, 8 queries, 35 judgements (grades 0, 1, 2)
        """
        grades = ", ".join(str(grade) for grade in self.grades)
        text = (
            f"{self.name} ({self.split} split): {len(self.corpus):,} docs, {len(self.queries):,} queries, "
            f"{self.n_judgements:,} judgements (grades {grades})"
        )
        if self.sample is not None:
            text += (
                f"\nquery sample: {self.sample.n_queries} of the split's {self.sample.parent_queries} queries "
                f"(seed {self.sample.seed}) over the whole corpus, so scores estimate the full split's (with wider "
                "intervals than all queries would give)."
            )
        if self.subset is not None:
            info = self.subset
            random_docs = info.n_docs - info.n_judged_docs - info.n_hard_negatives
            text += (
                f"\nragkit subset, not the official split; do not compare with full-split scores. "
                f"Cut from {info.parent} with seed {info.seed}: {info.n_queries} sampled queries, "
                f"{info.n_judged_docs:,} judged docs, {info.n_hard_negatives:,} BM25 hard negatives, "
                f"{random_docs:,} random docs."
            )
        return text

    def __repr__(self) -> str:
        kind = f", ragkit subset of {self.subset.parent}" if self.subset is not None else ""
        return (
            f"BeirCollection(name={self.name!r}, split={self.split!r}, docs={len(self.corpus):,}, "
            f"queries={len(self.queries):,}, judgements={self.n_judgements:,}{kind})"
        )


@cache
def manifest() -> dict:
    """The manifest: per collection its official counts, zip md5, licence and citation.

    Example:
        >>> from ragkit.data import manifest
        >>> manifest()["collections"]["scifact"]["splits"]["test"]["queries"]
        300
    """
    return json.loads(_MANIFEST_PATH.read_text(encoding="utf-8"))


def known_collections() -> list[str]:
    """Names :func:`load_beir` knows without a path: the public BEIR collections and ``"demo"``.

    Example:
        >>> from ragkit.data import known_collections
        >>> "nfcorpus" in known_collections()
        True
    """
    return sorted(manifest()["collections"])


def load_beir(name_or_path: str | Path, split: str = "test", *, download: bool = True) -> BeirCollection:
    """Load a BEIR collection by name (``"scifact"``, ``"nfcorpus"``, ..., ``"demo"``) or by folder.

    A name is looked up, in order, in ``$RAGKIT_BEIR_DIR/<name>``, then ``<downloads>/<name>``
    (``$RAGKIT_DATA_DIR/beir``, default ``<cache dir>/beir``, see
    :func:`ragkit.settings.beir_download_dir`), and is otherwise downloaded there (the
    official BEIR zip, checked against its md5, else the Hugging Face copy, checked against
    the official counts). ``"demo"`` is the small corpus shipped inside ragkit. A
    ``cqadupstack`` forum loads as ``"cqadupstack/<forum>"``. Every line is checked; a
    problem raises :class:`~ragkit.errors.DataError` naming the file and line.

    Args:
        name_or_path: a collection name, or a folder in BEIR layout (a ``Path``, or a string
            that is not a known name).
        split: which ``qrels/<split>.tsv`` to load; BEIR reports ``test`` (``dev`` for msmarco).
        download: fetch a named collection that is not on this machine.

    Example:
        >>> from ragkit.data import load_beir
        >>> load_beir("demo")
        BeirCollection(name='demo', split='test', docs=40, queries=8, judgements=35)
    """
    folder, name = _resolve(name_or_path, split)
    if folder is not None:
        return _load_checked(folder, name, split)
    parent, _, forum = name.partition("/")
    if not download:
        raise DataError(_not_here_message(name, split, ["download=False was passed to load_beir"]))
    folder, collection = _download(parent, split)
    if forum:
        return _load_checked(folder / forum, name, split)
    if collection is not None and collection.split == split:
        return collection
    return _load_checked(folder, name, split)


def locate_collection(name_or_path: str | Path, split: str = "test") -> Path | None:
    """Where :func:`load_beir` would read a collection from, checked without reading it: its
    folder, or ``None`` for a known collection that is not on this machine yet (``load_beir``
    downloads it). Raises the :class:`~ragkit.errors.DataError` ``load_beir`` would for an
    unknown name, a folder that is not a BEIR collection, or a split it has no judgements for;
    it imports nothing heavy, so the command line checks ``--dataset`` before any work.

    Example:
        >>> from ragkit.data import locate_collection
        >>> locate_collection("demo").name
        'demo'
    """
    folder, _ = _resolve(name_or_path, split)
    if folder is not None:
        _check_layout(folder, split)
    return folder


def _resolve(name_or_path: str | Path, split: str) -> tuple[Path | None, str]:
    """The folder a name or path stands for and the collection's name; the folder is ``None``
    for a known collection to download."""
    name = str(name_or_path)
    if isinstance(name_or_path, Path) or not _looks_like_name(name):
        return Path(name_or_path), Path(name_or_path).name
    if name == "demo":
        return DEMO_DIR, "demo"
    candidates = [folder / name for folder in beir_search_dirs()]
    for folder in candidates:
        if folder.is_dir():
            return folder, name
    if _is_downloadable(name.partition("/")[0]):
        return None, name
    if Path(name).is_dir():
        return Path(name), Path(name).name
    searched = ", ".join(str(folder) for folder in candidates)
    raise DataError(
        f"{name!r} is neither a known collection nor a folder. Looked in: {searched}. "
        f"Known names: {', '.join(known_collections())}. To load your own collection pass its folder "
        f"(holding corpus.jsonl, queries.jsonl and qrels/{split}.tsv), or put it in ${BEIR_DIR_ENV}/{name}."
    )


def download_beir(
    name: str,
    *,
    split: str = "test",
    url: str | None = None,
    md5: str | None = None,
    root: Path | None = None,
) -> Path:
    """Download a collection into ``<root>/<name>`` unless it is there (default root:
    :func:`ragkit.settings.beir_download_dir`, ``$RAGKIT_DATA_DIR/beir`` or ``<cache dir>/beir``).

    Without ``url`` the official BEIR zip is tried first (or ``$RAGKIT_BEIR_MIRROR/<name>.zip``),
    then the Hugging Face copies ``BeIR/<name>`` and ``BeIR/<name>-qrels``. The zip is checked
    against ``md5`` (default: the manifest's), unpacked with every path checked, validated
    line by line and against the official counts, and only then renamed into place: an
    interrupted or rejected download leaves nothing behind but nothing that looks complete.
    Set ``RAGKIT_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` for the Hub) to fail at once instead.

    Args:
        name: the collection name; also the folder it lands in.
        split: the split to validate when the download holds it (else the manifest's).
        url: a zip to fetch instead of the official sources (``https://``, ``http://``, ``file://``).
        md5: expected md5 of that zip; for an unknown collection without one, only the format
            and contents are checked.
        root: where collections live.

    Example::

        from ragkit.data import download_beir
        folder = download_beir("scifact")
        sorted(p.name for p in folder.iterdir())
        # ['corpus.jsonl', 'qrels', 'queries.jsonl']
    """
    folder, _ = _download(name, split, url=url, md5=md5, root=root)
    return folder


def make_subset(
    collection: BeirCollection,
    n_queries: int = DEFAULT_SUBSET_QUERIES,
    *,
    seed: int = DEFAULT_SUBSET_SEED,
    n_docs: int = DEFAULT_SUBSET_DOCS,
    hard_negatives_per_query: int = DEFAULT_SUBSET_HARD_NEGATIVES,
    index: BM25Index | None = None,
) -> BeirCollection:
    """A small, reproducible subset for quick runs: ``n_queries`` queries and about ``n_docs`` docs.

    Samples ``n_queries`` queries (sorted ids, ``random.Random(seed)``), keeps every document
    judged for them, then adds distractors so that ranking is not trivial: for each query its
    ``hard_negatives_per_query`` best BM25 hits that are not judged for it (taken rank by
    rank across queries while room is left), then random documents up to ``n_docs``.
    Defaults (50 queries, 1,000 docs, 10 hard negatives; ``ragkit.settings``) embed in about
    a minute on a 2-core CPU. The same collection, arguments and seed give the same subset.

    Scores on a subset are not comparable with published full-split scores: the subset's
    name and :meth:`BeirCollection.summary` say so.

    Args:
        collection: the collection to cut from.
        n_queries: how many queries to sample.
        seed: the random seed for queries and random distractors.
        n_docs: the target number of documents; judged documents are always kept, so the
            subset can hold more when the queries have many judgements.
        hard_negatives_per_query: BM25 hits per query to add; 0 for random distractors only.
        index: a :class:`~ragkit.bm25.BM25Index` over ``collection``'s documents, to reuse
            across calls; built from the sorted ids it gives the same subset as the one built
            here when it is left out (ties follow the index's id order).

    Example:
        >>> from ragkit.data import load_beir, make_subset
        >>> small = make_subset(load_beir("demo"), 3, n_docs=12, hard_negatives_per_query=2)
        >>> small.name, len(small.queries), len(small.corpus)
        ('demo-subset-q3-s0-d12', 3, 12)
    """
    queries_available = len(collection.queries)
    if not 1 <= n_queries <= queries_available:
        raise ConfigError(
            f"n_queries must be between 1 and {queries_available} (the queries {collection.name} has), got {n_queries}."
        )
    if n_docs < 1:
        raise ConfigError(f"n_docs must be at least 1, got {n_docs}.")
    if hard_negatives_per_query < 0:
        raise ConfigError(f"hard_negatives_per_query must be 0 or more, got {hard_negatives_per_query}.")

    rng = random.Random(seed)
    query_ids = sorted(rng.sample(sorted(collection.queries), n_queries))
    judged = sorted({doc_id for query_id in query_ids for doc_id in collection.qrels[query_id]})
    chosen = dict.fromkeys(judged)

    n_hard_negatives = 0
    if hard_negatives_per_query:
        negatives = _hard_negatives(collection, query_ids, hard_negatives_per_query, index)
        # Rank by rank across queries, so that when room runs out every query still has its
        # hardest negatives in the subset.
        for rank in range(hard_negatives_per_query):
            for ranked in negatives:
                if len(chosen) >= n_docs:
                    break
                if rank < len(ranked) and ranked[rank] not in chosen:
                    chosen[ranked[rank]] = None
                    n_hard_negatives += 1

    room = n_docs - len(chosen)
    if room > 0:
        rest = sorted(set(collection.corpus) - chosen.keys())
        chosen.update(dict.fromkeys(rng.sample(rest, min(room, len(rest)))))

    doc_ids = sorted(chosen)
    info = SubsetInfo(
        parent=collection.name,
        parent_fingerprint=collection.fingerprint(),
        seed=seed,
        n_queries=n_queries,
        n_docs=len(doc_ids),
        target_docs=n_docs,
        n_judged_docs=len(judged),
        n_hard_negatives=n_hard_negatives,
        hard_negatives_per_query=hard_negatives_per_query,
    )
    return BeirCollection(
        name=f"{collection.name}-subset-q{n_queries}-s{seed}-d{n_docs}",
        split=collection.split,
        corpus={doc_id: collection.corpus[doc_id] for doc_id in doc_ids},
        queries={query_id: collection.queries[query_id] for query_id in query_ids},
        qrels={query_id: dict(collection.qrels[query_id]) for query_id in query_ids},
        source=collection.source,
        subset=info,
    )


def sample_queries(collection: BeirCollection, n_queries: int, *, seed: int = DEFAULT_SUBSET_SEED) -> BeirCollection:
    """``n_queries`` of ``collection``'s queries, sampled with ``seed``, over its whole corpus.

    Unlike :func:`make_subset`, the corpus is not cut, so every query is as hard as in the full
    split and the scores are unbiased estimates of the full split's (only less precise): this
    is what ``ragkit eval`` runs by default. A sample as large as the split is the split itself.

    Example:
        >>> from ragkit.data import load_beir
        >>> sampled = sample_queries(load_beir("demo"), 3)
        >>> sampled.name, len(sampled.queries), len(sampled.corpus), sampled.is_subset
        ('demo-q3-s0', 3, 40, False)
    """
    available = len(collection.queries)
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or n_queries < 1:
        raise ConfigError(f"n_queries must be a whole number of at least 1, got {n_queries!r}.")
    if n_queries >= available:
        return collection
    query_ids = sorted(random.Random(seed).sample(sorted(collection.queries), n_queries))
    return replace(
        collection,
        name=f"{collection.name}-q{n_queries}-s{seed}",
        queries={q: collection.queries[q] for q in query_ids},
        qrels={q: dict(collection.qrels[q]) for q in query_ids},
        sample=QuerySample(parent=collection.name, seed=seed, n_queries=n_queries, parent_queries=available),
    )


def _hard_negatives(
    collection: BeirCollection, query_ids: list[str], per_query: int, index: BM25Index | None
) -> list[list[str]]:
    """Per query, its best BM25 hits that are not judged for that query."""
    if index is None:
        from ragkit.bm25 import BM25Index

        doc_ids = sorted(collection.corpus)
        index = BM25Index.from_texts(doc_ids, [collection.text(doc_id) for doc_id in doc_ids])
    elif len(index) != len(collection.corpus) or not collection.corpus.keys() >= set(index.ids):
        raise ConfigError(f"The BM25 index given to make_subset does not cover exactly {collection.name}'s documents.")
    depth = per_query + max(len(collection.qrels[query_id]) for query_id in query_ids)
    hits = index.search([collection.queries[query_id] for query_id in query_ids], k=depth)
    return [
        [doc_id for doc_id, _ in ranked if doc_id not in collection.qrels[query_id]][:per_query]
        for query_id, ranked in zip(query_ids, hits)
    ]


# ---------------------------------------------------------------------------------------------
# Reading and checking a folder


def _load_checked(folder: Path, name: str, split: str) -> BeirCollection:
    collection = _load_folder(folder, name, split)
    mismatches = _official_mismatches(collection)
    if mismatches:
        warnings.warn(
            f"{folder} differs from the official {name} {split} split: {'; '.join(mismatches)}. "
            f"Scores on it are not comparable with published ones; re-download it if that is unintended.",
            stacklevel=3,
        )
    return collection


def _check_layout(folder: Path, split: str) -> None:
    """That ``folder`` holds a BEIR collection with judgements for ``split``, by its files alone."""
    if not folder.is_dir():
        raise DataError(
            f"{folder} is not a folder. A BEIR collection is a folder holding corpus.jsonl, queries.jsonl "
            f"and qrels/{split}.tsv."
        )
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    missing = [path.name for path in (corpus_path, queries_path) if not path.is_file()]
    if missing:
        forums = sorted(path.parent.name for path in folder.glob("*/corpus.jsonl"))
        if forums:
            raise DataError(
                f"{folder} holds several collections ({', '.join(forums)}), not one; load one of them, "
                f"e.g. load_beir({(folder.name + '/' + forums[0])!r}) or load_beir(Path({str(folder / forums[0])!r}))."
            )
        raise DataError(
            f"{folder} is not a complete BEIR collection: {' and '.join(missing)} missing. "
            f"Expected corpus.jsonl, queries.jsonl and qrels/{split}.tsv; copy the missing files in, or delete "
            f"the folder and load the collection again to re-download it."
        )
    if not qrels_path.is_file():
        splits = sorted(path.stem for path in (folder / "qrels").glob("*.tsv"))
        available = f"available splits: {', '.join(splits)}" if splits else "the qrels folder holds no .tsv file"
        raise DataError(
            f"{folder} has no judgements for split {split!r} (expected {qrels_path}); {available}. "
            f"Pass split=... to load_beir."
        )


def _load_folder(folder: Path, name: str, split: str) -> BeirCollection:
    _check_layout(folder, split)
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = _read_qrels(qrels_path)
    corpus = _read_corpus(corpus_path)
    all_queries = _read_queries(queries_path)
    qrels = _drop_dangling(qrels, corpus, all_queries, qrels_path)
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return BeirCollection(name=name, split=split, corpus=corpus, queries=queries, qrels=qrels, source=folder)


def _read_corpus(path: Path) -> dict[str, Doc]:
    corpus: dict[str, Doc] = {}
    for lineno, record in _read_jsonl(path, _CORPUS_EXAMPLE):
        doc_id = _record_id(record, path, lineno, corpus)
        text = _field(record, "text", path, lineno, required=True)
        title = _field(record, "title", path, lineno, required=False)
        corpus[doc_id] = Doc(title=title, text=text)
    if not corpus:
        raise DataError(f"{path} holds no documents; expected one JSON object per line such as {_CORPUS_EXAMPLE}.")
    return corpus


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, record in _read_jsonl(path, '{"_id": "q1", "text": "..."}'):
        query_id = _record_id(record, path, lineno, queries)
        queries[query_id] = _field(record, "text", path, lineno, required=True)
    return queries


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered, decoded lines without their LF or CRLF ending; blank lines skipped."""
    with path.open("rb") as raw_lines:
        for lineno, raw in enumerate(raw_lines, 1):
            try:
                # utf-8-sig on the first line drops the byte-order mark some editors write.
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}, line {lineno}: not UTF-8 text ({error.reason} at byte {error.start}). "
                    f"BEIR files are UTF-8; re-save the file as UTF-8."
                ) from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def _read_jsonl(path: Path, example: str) -> Iterator[tuple[int, dict]]:
    for lineno, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}, line {lineno}: not valid JSON ({error.msg}, column {error.colno}). Expected one JSON "
                f"object per line, such as {example}. {_fix_hint(path)}"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {lineno}: a JSON {type(record).__name__}, not an object. Expected one object per line, "
                f"such as {example}. {_fix_hint(path)}"
            )
        yield lineno, record


def _record_id(record: dict, path: Path, lineno: int, seen: Mapping[str, object]) -> str:
    if "_id" not in record:
        raise DataError(
            f'{path}, line {lineno}: no "_id" field (found {sorted(record)}). Every record needs a unique "_id". '
            f"{_fix_hint(path)}"
        )
    value = record["_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataError(f'{path}, line {lineno}: "_id" is {value!r}; expected a non-empty string. {_fix_hint(path)}')
    record_id = str(value)
    if record_id in seen:
        first = _first_line_with_id(path, record_id)
        raise DataError(
            f'{path}, line {lineno}: duplicate "_id" {record_id!r}, already used on line {first}. '
            f"Ids must be unique; "
            f"remove or rename one of the two records."
        )
    return record_id


def _field(record: dict, key: str, path: Path, lineno: int, *, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        found = "no such field" if key not in record else f"{type(value).__name__} {value!r:.40}"
        need = "a string" if required else "a string (or no field)"
        raise DataError(f'{path}, line {lineno}: "{key}" must be {need}; found {found}. {_fix_hint(path)}')
    return value


def _first_line_with_id(path: Path, record_id: str) -> int:
    # Only runs once, on the error path: cheaper than remembering every id's line number.
    for lineno, record in _read_jsonl(path, ""):
        if str(record.get("_id")) == record_id:
            return lineno
    return 0


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    line_of: dict[tuple[str, str], int] = {}
    for lineno, line in _lines(path):
        columns = line.split("\t")
        if lineno == 1 and not _is_int(columns[-1]):
            continue  # the header line, "query-id<TAB>corpus-id<TAB>score"
        if len(columns) != 3:
            raise DataError(
                f"{path}, line {lineno}: {len(columns)} tab-separated column(s) in {line[:60]!r}; expected 3 "
                f"(query-id, corpus-id, score) separated by tabs, after the header {_QRELS_HEADER!r}. {_fix_hint(path)}"
            )
        query_id, doc_id, score = (column.strip() for column in columns)
        if not query_id or not doc_id:
            raise DataError(f"{path}, line {lineno}: empty query-id or corpus-id. {_fix_hint(path)}")
        if not _is_int(score):
            raise DataError(
                f"{path}, line {lineno}: score {score!r} is not an integer; expected a whole-number grade "
                f"such as 0, 1 or 2. {_fix_hint(path)}"
            )
        grade = int(score)
        previous = qrels.get(query_id, {}).get(doc_id)
        if previous is not None and previous != grade:
            raise DataError(
                f"{path}, line {lineno}: ({query_id}, {doc_id}) graded {grade}, but {previous} on line "
                f"{line_of[query_id, doc_id]}. Keep one grade per pair."
            )
        qrels.setdefault(query_id, {})[doc_id] = grade
        line_of.setdefault((query_id, doc_id), lineno)
    if not qrels:
        raise DataError(
            f"{path} holds no judgements, so the split has no queries. Expected lines "
            f"'query-id<TAB>corpus-id<TAB>score' after the header."
        )
    return qrels


def _is_int(text: str) -> bool:
    return re.fullmatch(r"\s*[-+]?\d+\s*", text) is not None


def _fix_hint(path: Path) -> str:
    return f"Fix that line, or, for a downloaded collection, delete {path.parent} so that ragkit downloads it again."


def _drop_dangling(
    qrels: dict[str, dict[str, int]], corpus: Mapping[str, Doc], queries: Mapping[str, str], path: Path
) -> dict[str, dict[str, int]]:
    """Judgements whose query and document both exist; warns about (or rejects) the others."""
    total = sum(len(docs) for docs in qrels.values())
    unknown_queries = [query_id for query_id in qrels if query_id not in queries]
    unknown_docs = sorted({doc_id for docs in qrels.values() for doc_id in docs if doc_id not in corpus})
    kept = {}
    for query_id, docs in qrels.items():
        if query_id in queries:
            matched = {doc_id: grade for doc_id, grade in docs.items() if doc_id in corpus}
            if matched:
                kept[query_id] = matched
    dropped = total - sum(len(docs) for docs in kept.values())
    if not dropped:
        return qrels
    what = (
        f"{len(unknown_queries):,} query id(s) not in queries.jsonl (e.g. {unknown_queries[:3]}) and "
        f"{len(unknown_docs):,} doc id(s) not in corpus.jsonl (e.g. {unknown_docs[:3]})"
    )
    if not kept:
        raise DataError(
            f"{path}: none of its {total:,} judgements matches the collection: {what}. The qrels probably come from "
            f"another collection or version; put the matching corpus.jsonl, queries.jsonl and qrels side by side."
        )
    warnings.warn(
        f"{path}: dropped {dropped:,} of {total:,} judgements naming {what}. Scores will not match published ones; "
        f"check that the files come from the same collection version.",
        stacklevel=5,
    )
    return kept


def _official_mismatches(collection: BeirCollection) -> list[str]:
    info = manifest()["collections"].get(collection.name)
    if info is None or "subforums" in info:
        return []
    split = info["splits"].get(collection.split, {})
    actual = {"docs": len(collection.corpus), "queries": len(collection.queries), "judgements": collection.n_judgements}
    expected = {"docs": info["docs"], "queries": split.get("queries"), "judgements": split.get("qrels")}
    mismatches = [
        f"{actual[key]:,} {key} (official {value:,})"
        for key, value in expected.items()
        if value is not None and actual[key] != value
    ]
    if split.get("grades") is not None and list(collection.grades) != split["grades"]:
        mismatches.append(f"grades {list(collection.grades)} (official {split['grades']})")
    return mismatches


# ---------------------------------------------------------------------------------------------
# Downloading


def _looks_like_name(text: str) -> bool:
    """A bare name (``scifact``, ``my-set``) or a known forum (``cqadupstack/tex``), not a path."""
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*", text) and text not in {".", ".."}:
        return True
    parent, _, forum = text.partition("/")
    return forum in manifest()["collections"].get(parent, {}).get("subforums", [])


def _is_downloadable(name: str) -> bool:
    info = manifest()["collections"].get(name)
    return info is not None and not info.get("packaged", False)


def _zip_url(name: str) -> str:
    mirror = os.environ.get(BEIR_MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{name}.zip"
    return manifest()["zip_url"].format(name=name)


def _not_here_message(name: str, split: str, problems: list[str], root: Path | None = None) -> str:
    parent, _, forum = name.partition("/")
    if root is None:  # load_beir's lookup: every folder it searched, the last where downloads land
        root = beir_download_dir()
        searched = [str(folder / name) for folder in beir_search_dirs()]
        searched[-1] += f" (downloads: ${DATA_DIR_ENV}/beir, else the beir folder of ${CACHE_DIR_ENV})"
        if os.environ.get(BEIR_DIR_ENV):
            searched[0] += f" (${BEIR_DIR_ENV})"
        else:
            searched[-1] += f"; ${BEIR_DIR_ENV} is not set"
    else:
        searched = [str(root / name)]
    layout = f"{name}/corpus.jsonl, {name}/queries.jsonl and {name}/qrels/{split}.tsv"
    listed = "".join(f"\n  - {problem}" for problem in problems)
    return (
        f"BEIR collection {name!r} is not on this machine and was not downloaded:{listed}\n"
        f"Looked in: {', '.join(searched)}.\n"
        f"Fix: set {BEIR_DIR_ENV} to a folder that holds {layout} (a copy made on a machine with "
        f"internet), or download {manifest()['zip_url'].format(name=parent)} and unzip it into {root}"
        + (f" (the forum is the {forum}/ folder inside)." if forum else ".")
    )


def _download(
    name: str, split: str, *, url: str | None = None, md5: str | None = None, root: Path | None = None
) -> tuple[Path, BeirCollection | None]:
    """Fetch ``name`` into ``<root>/<name>``; also returns the collection when validation loaded it."""
    given_root, root = root, root if root is not None else beir_download_dir()
    target = root / name
    if target.is_dir():
        return target, None
    if env_flag(OFFLINE_ENV):
        raise DataError(
            _not_here_message(name, split, [f"{OFFLINE_ENV}=1 is set, so no download was tried"], given_root)
        )

    info = manifest()["collections"].get(name, {})
    sources = [("zip", url or _zip_url(name))]
    problems = []
    if url is None and info.get("hub"):
        hub_offline = [var for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if env_flag(var)]
        if hub_offline:
            problems.append(f"Hugging Face Hub: skipped, {hub_offline[0]}=1 is set")
        else:
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            sources.append(("hub", endpoint))
    reachable = _probe_all([location for _, location in sources])

    for (kind, location), is_reachable in zip(sources, reachable):
        label = location if kind == "zip" else f"Hugging Face Hub ({location})"
        if not is_reachable:
            problems.append(f"{label}: not reachable within {NETWORK_PROBE_TIMEOUT_S} s (no internet?)")
            continue
        try:
            return _fetch_into_place(kind, location, name, split, md5 or info.get("zip_md5"), root, target)
        except DataError as error:
            problems.append(f"{label}: {error}")
    raise DataError(_not_here_message(name, split, problems, given_root))


def _fetch_into_place(
    kind: str, location: str, name: str, split: str, md5: str | None, root: Path, target: Path
) -> tuple[Path, BeirCollection | None]:
    root.mkdir(parents=True, exist_ok=True)
    # A temporary folder beside the target: same file system, so the final rename is atomic,
    # and a name that no lookup mistakes for a collection if the process dies halfway.
    workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        extracted = workdir / "extracted"
        if kind == "zip":
            archive = workdir / f"{name}.zip"
            digest = _fetch_url(location, archive, f"Downloading {name}.zip")
            if md5 is not None and digest != md5.lower():
                raise DataError(
                    f"md5 {digest} does not match the published {md5}: a corrupt or different file. Nothing was kept; "
                    f"try again later or another mirror."
                )
            _safe_extract(archive, extracted)
            folder = _collection_root(extracted, name)
        else:
            folder = extracted / name
            repos = manifest()["hub_corpus"].format(name=name), manifest()["hub_qrels"].format(name=name)
            _fetch_from_hub(*repos, folder)
        # A matching md5 proves the file is the published one, so a count that disagrees
        # means the manifest is stale, not the download; without an md5 the counts decide.
        collection = _validate_download(folder, name, split, strict_counts=kind != "zip" or md5 is None)
        try:
            os.replace(folder, target)
        except OSError:
            if target.is_dir():  # a concurrent download finished first; keep that one
                return target, None
            raise
        return target, replace(collection, source=target) if collection is not None else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _fetch_url(url: str, dest: Path, description: str) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; returns the md5 of what arrived."""
    digest = hashlib.md5()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "ragkit"})
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            from tqdm.auto import tqdm

            progress = tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=description)
            with progress as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise DataError(f"download failed ({error})") from error
    # http.client does not complain when a connection closes early, so count the bytes.
    if expected is not None and received != expected:
        raise DataError(f"download stopped after {received:,} of {expected:,} bytes; nothing was kept. Try again.")
    return digest.hexdigest()


def _probe_all(locations: list[str]) -> list[bool]:
    """Whether each location answers, all probed at once within NETWORK_PROBE_TIMEOUT_S.

    Daemon threads, because a stuck DNS lookup cannot be interrupted: it is abandoned.
    """
    answers = [False] * len(locations)

    def probe(position: int, location: str) -> None:
        answers[position] = _reachable(location)

    threads = [threading.Thread(target=probe, args=item, daemon=True) for item in enumerate(locations)]
    deadline = time.monotonic() + NETWORK_PROBE_TIMEOUT_S
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return list(answers)


def _reachable(location: str) -> bool:
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path)).is_file()
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return False
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


_REJECTED = "the whole archive was rejected and nothing was kept."


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` after checking every entry stays inside ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            dest_resolved = dest.resolve()
            for member in members:
                name = member.filename.replace("\\", "/")
                if (
                    name.startswith("/")
                    or re.match(r"[A-Za-z]:", name)
                    or ".." in PurePosixPath(name).parts
                    or not (dest_resolved / name).resolve().is_relative_to(dest_resolved)
                ):
                    raise DataError(f"the archive entry {member.filename!r} points outside its folder; {_REJECTED}")
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise DataError(f"the archive entry {member.filename!r} is a symbolic link; {_REJECTED}")
            for member in members:
                path = dest / member.filename.replace("\\", "/")
                if member.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as src, path.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as error:
        raise DataError(f"not a valid zip archive ({error}).") from None


def _collection_root(extracted: Path, name: str) -> Path:
    if (extracted / "corpus.jsonl").is_file():
        return extracted
    if (extracted / name).is_dir():
        return extracted / name
    entries = [path for path in extracted.iterdir() if not path.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise DataError(
        f"the archive holds {sorted(p.name for p in entries)}, not a folder {name}/ with corpus.jsonl, "
        f"queries.jsonl and qrels/."
    )


def _validate_download(folder: Path, name: str, split: str, *, strict_counts: bool) -> BeirCollection | None:
    """Load what arrived (every line checked) and compare it with the official counts."""
    info = manifest()["collections"].get(name, {})
    if "subforums" in info:
        missing = [forum for forum in info["subforums"] if not (folder / forum / "corpus.jsonl").is_file()]
        if missing:
            raise DataError(f"the download lacks the forums {missing}; nothing was kept.")
        for forum in info["subforums"]:
            _load_folder(folder / forum, f"{name}/{forum}", "test")
        return None
    if not (folder / "qrels" / f"{split}.tsv").is_file():
        split = info.get("eval_split") or next((path.stem for path in sorted((folder / "qrels").glob("*.tsv"))), split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dangling judgements in a fresh download mean it is broken
        try:
            collection = _load_folder(folder, name, split)
        except UserWarning as warning:
            raise DataError(f"{warning}; nothing was kept.") from None
    mismatches = _official_mismatches(collection)
    if mismatches and strict_counts:
        raise DataError(f"what arrived is not the official {name}: {'; '.join(mismatches)}. Nothing was kept.")
    if mismatches:
        warnings.warn(
            f"{name} passed its md5 check but differs from the counts in ragkit's manifest: {'; '.join(mismatches)}. "
            f"Please report this so the manifest can be corrected.",
            stacklevel=2,
        )
    return collection


def _fetch_from_hub(corpus_repo: str, qrels_repo: str, folder: Path) -> None:
    """Write the Hub copies (configs ``corpus`` and ``queries``, qrels one split per file) into ``folder``."""
    import datasets  # slow to import; only needed for this fallback

    # Ids stay strings: numeric-looking ids would otherwise be parsed as integers.
    qrels_features = datasets.Features(
        {"query-id": datasets.Value("string"), "corpus-id": datasets.Value("string"), "score": datasets.Value("int64")}
    )
    try:
        corpus = datasets.load_dataset(corpus_repo, "corpus", split="corpus")
        queries = datasets.load_dataset(corpus_repo, "queries", split="queries")
        qrels = datasets.load_dataset(qrels_repo, features=qrels_features)
    except Exception as error:  # datasets raises a different type per failure (network, missing repo, scripts)
        raise DataError(f"{corpus_repo} / {qrels_repo}: {type(error).__name__}: {error}") from error
    _write_beir_folder(folder, corpus, queries, dict(qrels))


def _write_beir_folder(
    folder: Path,
    corpus: Iterable[Mapping],
    queries: Iterable[Mapping],
    qrels_by_split: Mapping[str, Iterable[Mapping]],
) -> None:
    """Write rows in the BEIR layout (the Hub copies hold the same fields as the zip files)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for row in corpus:
            record = {"_id": str(row["_id"]), "title": row.get("title") or "", "text": row["text"]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as out:
        for row in queries:
            out.write(json.dumps({"_id": str(row["_id"]), "text": row["text"]}, ensure_ascii=False) + "\n")
    for split, rows in qrels_by_split.items():
        with (folder / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as out:
            out.write(_QRELS_HEADER + "\n")
            for row in rows:
                out.write(f"{row['query-id']}\t{row['corpus-id']}\t{int(row['score'])}\n")
