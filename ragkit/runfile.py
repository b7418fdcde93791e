"""A TREC run file as a first stage: rerank (and measure) the output of any system.

Pyserini, Elasticsearch, a production retriever: whatever ranked the documents elsewhere can
write the standard TREC run format, one line per retrieved document::

    <query id> Q0 <document id> <rank> <score> <run tag>

and ragkit evaluates it beside its own first stages, reranks its top ``k`` like theirs and
compares each reranker with it (``ragkit eval --run FILE``, or
``Pipeline(retriever="run", run_file=FILE)``). A query's documents are read best first by
score; equal scores keep the order of the rank column (then of the lines). Its latency is
not measured here (the system ran elsewhere); a reranker's is.

Every line is checked, and so is the file against the collection, before any work: a
malformed line, a repeated document, a score that is not a finite number, documents the
collection does not hold, or queries evaluated that the file has no ranking for are a
:class:`ragkit.errors.DataError` naming the file, the line or the ids, and the fix.

A report's ``runs/`` folder holds such files (``ragkit.results.trec_run``), so one
evaluation's first stage can be fed to another.

Example::

    from ragkit import Pipeline, experiment, load_beir
    scifact = load_beir("scifact")
    experiment(scifact, [Pipeline(retriever="run", run_file="bm25.trec",
                                  reranker="cross-encoder/ms-marco-MiniLM-L-12-v2")])
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from ragkit.errors import ConfigError, DataError
from ragkit.stages import Hits, Query, Ranked, StageContext

# How many ids an error lists before "and N more".
_SHOWN = 3


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, or a :class:`DataError` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(
            f"Run file {path} cannot be read ({exc.strerror or exc}): give the path of a TREC run file "
            "(lines of '<query id> Q0 <document id> <rank> <score> <run tag>')."
        ) from exc
    return digest.hexdigest()


def run_fingerprint(sha256: str) -> str:
    """The fingerprint of the first stage a run file is (``RunFileStage.fingerprint``), from the
    sha256 of its bytes (:func:`file_sha256`): its rankings are the file's content, so that a
    plan finds its cached runs and timings without reading the file's rankings."""
    return hashlib.sha256(f"trec run\x00{sha256}".encode()).hexdigest()


def _some(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN:,} more" if len(ids) > _SHOWN else "")


@functools.lru_cache(maxsize=8)
def _parsed(path: str, sha256: str) -> dict[str, Ranked]:
    """Per query id, the file's ranking (best first). Keyed by the file's sha256 too, so an
    edited file is read again."""
    rows: dict[str, list[tuple[float, int, int, str]]] = {}
    seen: dict[tuple[str, str], int] = {}
    tags: dict[str, None] = {}
    with open(path, encoding="utf-8", errors="strict") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"Run file {path}, line {number}"
            if len(fields) != 6:
                raise DataError(
                    f"{where}: expected 6 fields '<query id> Q0 <document id> <rank> <score> <run tag>', got "
                    f"{len(fields)}: {line.strip()[:120]!r}. Write the run in the TREC format."
                )
            query_id, _, doc_id, rank_text, score_text, tag = fields
            try:
                rank, score = int(rank_text), float(score_text)
            except ValueError:
                raise DataError(
                    f"{where}: the rank ({rank_text!r}) must be a whole number and the score ({score_text!r}) a number."
                ) from None
            if not math.isfinite(score):
                raise DataError(f"{where}: score {score_text!r} is not a finite number; give every document one.")
            if (query_id, doc_id) in seen:
                raise DataError(
                    f"{where}: document {doc_id!r} is ranked for query {query_id!r} a second time (first on line "
                    f"{seen[query_id, doc_id]}); a run ranks each document once per query."
                )
            seen[query_id, doc_id] = number
            tags[tag] = None
            rows.setdefault(query_id, []).append((-score, rank, number, doc_id))
    if not rows:
        raise DataError(f"Run file {path} holds no ranking: it is empty.")
    if len(tags) > 1:
        raise DataError(
            f"Run file {path} holds {len(tags)} runs (tags {_some(list(tags))}): give each system's run its own file "
            "(--run FILE once per run)."
        )
    return {q: [(d, -negative) for negative, _, _, d in sorted(r)] for q, r in rows.items()}


def read_run(path: str | Path) -> dict[str, Ranked]:
    """A TREC run file as per-query rankings, best first (equal scores in the rank column's order).

    Example::

        read_run("bm25.trec")["1"][:2]
        # [('31715818', 21.3), ('13734012', 18.9)]
    """
    return _parsed(str(path), file_sha256(path))


def check_run_stage(collection: Any, pipeline: Any) -> None:
    """That the run file of ``pipeline`` can be evaluated on ``collection``: every document it
    names is the collection's, and it ranks every query evaluated; else a :class:`DataError`
    saying which ids, how many, and what to do."""
    path = pipeline.run_file
    ranked = read_run(path)
    unknown = sorted({d for hits in ranked.values() for d, _ in hits if d not in collection.corpus})
    if unknown:
        hint = (
            " A ragkit subset holds about 1,000 of the corpus's documents: evaluate a run of the whole corpus with "
            "--queries (queries sampled over the whole corpus), not --subset."
            if collection.is_subset
            else " Was it made on another collection, or another version of it?"
        )
        raise DataError(
            f"Run file {path} names {len(unknown):,} documents that {collection.name} ({collection.split}) does not "
            f"hold: {_some(unknown)}.{hint}"
        )
    missing = sorted(q for q in collection.queries if q not in ranked)
    if missing:
        found = sorted(ranked)
        raise DataError(
            f"Run file {path} has no ranking for {len(missing):,} of the {len(collection.queries):,} queries of "
            f"{collection.name} ({collection.split}) evaluated: {_some(missing)} (it ranks {len(found):,} queries, "
            f"e.g. {_some(found)}). Write a ranking for every query of the split, with the collection's query ids."
        )


class RunFileRetriever(BaseRetriever):
    """A run file as a LangChain retriever: a query's text names the query it was written for
    (the collection's), and its documents come back as the file ranked them, each with
    ``metadata["doc_id"]`` and ``metadata["score"]``."""

    stage: Any
    k: int

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        ids = self.stage.query_ids.get(query, [])
        if len(ids) != 1:
            which = "no query" if not ids else f"{len(ids)} queries ({_some(ids)})"
            raise ConfigError(
                f"The run file {self.stage.path} ranks documents for a query id, and the text {query[:80]!r} is "
                f"{which} of {self.stage.collection.name}: search it with one of the collection's query texts."
            )
        return [
            Document(page_content=self.stage.collection.text(d), id=d, metadata={"doc_id": d, "score": s})
            for d, s in self.stage.ranked[ids[0]][: self.k]
        ]


class RunFileStage:
    """A first stage read from a TREC run file (see the module's docstring). ``retrieve``
    looks queries up by id; ``timed_search`` is ``None``: the system ran elsewhere."""

    fills_depth: ClassVar[bool] = False  # a system may return fewer documents than asked

    def __init__(self, path: str | Path, collection: Any) -> None:
        self.path = str(path)
        self.collection = collection
        sha256 = file_sha256(path)
        self.ranked = _parsed(self.path, sha256)
        self.fingerprint = run_fingerprint(sha256)
        self.query_ids: dict[str, list[str]] = {}
        for query_id, text in collection.queries.items():
            self.query_ids.setdefault(text, []).append(query_id)

    def __repr__(self) -> str:
        return f"RunFileStage({self.path!r}, queries={len(self.ranked):,})"

    @property
    def search_mode(self) -> tuple[str, ...]:
        return ()

    def retrieve(self, queries: Sequence[Query], k: int) -> Hits:
        """The file's first ``k`` documents of each query, by query id."""
        missing = [q for q, _ in queries if q not in self.ranked]
        if missing:
            raise DataError(f"Run file {self.path} has no ranking for queries {_some(missing)}.")
        return [list(self.ranked[q][:k]) for q, _ in queries]

    def timed_search(self, query: str, k: int) -> None:
        return None

    def as_retriever(self, k: int) -> RunFileRetriever:
        return RunFileRetriever(stage=self, k=k)


def build_run_stage(collection: Any, pipeline: Any, context: StageContext) -> RunFileStage:
    """The first stage of ``pipeline.run_file``, checked against the collection (ragkit.stages builder)."""
    check_run_stage(collection, pipeline)
    return RunFileStage(pipeline.run_file, collection)


__all__ = ["RunFileStage", "build_run_stage", "check_run_stage", "file_sha256", "read_run", "run_fingerprint"]
