"""What a stage is to ragkit: the protocols every retriever (:class:`FirstStage`) and every
reranker (:class:`Reranker`, :class:`PairScorer`) the engine evaluates follow, and how a kind
of stage is described (:class:`StageKind`, :class:`RerankerKind`, registered in
``ragkit.registry``).

A first stage turns queries into a run: for each query, documents best first, each with a
finite score, the scores never increasing (``ragkit.measures.ranked_run`` then separates
ties by rank, so every scorer reads the order decided). It says what identifies its rankings
(``fingerprint``, which its cache keys are made of), serves one query at a time with the
seconds each step took (the latency a user's application would see; ``None`` for a stage
that did its work elsewhere, such as a run file), and can be viewed as a LangChain retriever.

The engine (``ragkit.evaluate``) knows first stages only through this protocol and the
registry of kinds (``ragkit.registry``): adding a kind of first stage is one module with a
builder and one line there.

A reranker turns one query's candidates, ``(doc id, text)`` best first, into a ranking of
them (:meth:`Reranker.rerank`), and can be viewed as a LangChain document compressor. One that
scores each (query, text) pair on its own, as a cross-encoder or a bi-encoder does, is a
:class:`PairScorer`: the engine then pools every query's pairs into one stream, keeps each
pair's score in the pair-score cache under the scorer's fingerprint, and scores a document
that is split into passages as its best passage.

A user's own stage (a LangChain retriever or compressor, ``ragkit.langchain_stages``) is given
to a pipeline as an object: a :class:`StageSource`, which builds the stage for a collection.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ragkit.errors import ConfigError, RagkitError

Ranked = list[tuple[str, float]]  # one query's (doc_id, score), best first
Hits = list[Ranked]  # per query, in the order the queries were given
Query = tuple[str, str]  # (query id, query text)


@runtime_checkable
class FirstStage(Protocol):
    """A retriever as the engine evaluates it.

    Attributes:
        fingerprint: what identifies the stage's rankings (its index, model, options, or its
            file's content); cached runs and timings are keyed by it. ``None`` for a stage whose
            identity ragkit cannot know (a user's retriever given no fingerprint): then nothing
            it produces is cached.
        fills_depth: whether every query gets ``min(k, documents)`` hits (vector search
            always fills its depth; BM25 and a run file may return fewer).
        search_mode: how the stage searches when that can change its rankings without
            changing its fingerprint (``("exact",)`` or ``("hnsw",)`` for a dense index;
            ``()`` otherwise); part of the same keys.

    A stage that ranks documents by their passages (``ragkit.passages.PassageStage``) also has
    ``passages(doc_id) -> list[str]``, the document's passages as it indexed them, which a
    pair-scoring reranker then reads instead of the whole document; the engine asks for it
    with a default, so a stage of whole documents need not have it.
    """

    fingerprint: str | None
    fills_depth: bool

    @property
    def search_mode(self) -> tuple[str, ...]: ...

    def retrieve(self, queries: Sequence[Query], k: int) -> Hits:
        """The ``k`` best documents of each query, as ``(doc_id, score)``, best first."""
        ...

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]] | None:
        """One query served as an application would: its ranking and the seconds of each step
        (e.g. ``{"embed query": ..., "vector search": ...}``), in the order a query meets them;
        ``None`` when the stage cannot be timed here (its rankings were computed elsewhere)."""
        ...

    def as_retriever(self, k: int) -> Any:
        """The stage as a LangChain ``BaseRetriever`` returning ``k`` documents, each with
        ``metadata["doc_id"]``."""
        ...


@runtime_checkable
class Reranker(Protocol):
    """A second stage as the engine evaluates it.

    Attributes:
        fingerprint: what identifies its scores (model, revision, precision, device, options);
            its cached scores and runs are keyed by it. ``None`` for a stage whose identity
            ragkit cannot know (a user's compressor given no fingerprint): then nothing it
            produces is cached.
    """

    fingerprint: str | None

    def rerank(self, query: str, candidates: Sequence[tuple[str, str]]) -> Ranked:
        """``candidates`` (``(doc id, text)``, first stage's best first) ranked for ``query``:
        ``(doc id, score)`` of those it keeps, best first; a doc id is one of the candidates'."""
        ...

    def as_compressor(self, top_n: int) -> Any:
        """The reranker as a LangChain ``BaseDocumentCompressor`` returning ``top_n``
        documents, each with ``metadata["relevance_score"]``."""
        ...


@runtime_checkable
class PairScorer(Reranker, Protocol):
    """A reranker that scores each (query, text) pair on its own, so that pairs of many
    queries can be pooled, cached one by one, and a document can score as its best passage."""

    def score(self, pairs: Sequence[tuple[str, str]], *, devices: Sequence[str] | None = None) -> Any:
        """A finite float per pair, higher for more relevant (a cross-encoder's logit, a
        bi-encoder's cosine), in the order given; in worker processes, one per device, with
        ``devices`` (the same scores as one process)."""
        ...

    def scoring_order(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """The positions of ``pairs`` in the order :meth:`score` processes them (a
        cross-encoder: longest first), so that scoring consecutive slices of that order
        forms the batches, and so the scores, of one call."""
        ...

    def truncated(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """A boolean per pair: longer than the model reads, so cut when scored."""
        ...

    def workers(self, devices: Sequence[str] | None) -> Any:
        """A context manager keeping worker processes open (one per device) across many
        :meth:`score` calls; does nothing for ``None``."""
        ...

    def prepare(self, texts: Sequence[str]) -> None:
        """Compute ahead of any query what a deployment computes at index time and stores (a
        bi-encoder's document vectors), so that serving a query, as latency is timed, does
        only the query's work; nothing for a scorer that reads each pair whole."""
        ...


@runtime_checkable
class StageSource(Protocol):
    """A user's own stage given to a pipeline as an object (``Pipeline(retriever=source)`` or
    ``Pipeline(reranker=source)``).

    Attributes:
        label: its name in tables (unique among the pipelines of an evaluation).
        fingerprint: what identifies its results across runs (say, ``"my-index-v3"``), which
            cache keys are made of; ``None``: its results are never cached, since ragkit
            cannot tell when they change.
    """

    label: str
    fingerprint: str | None

    def build(self, collection: Any, context: StageContext) -> Any:
        """The stage (a :class:`FirstStage` or a :class:`Reranker`) for ``collection``."""
        ...


class SearchesByText:
    """``retrieve`` for a stage that ranks by query text alone, through its batched
    ``search(texts, k)`` (the Chroma index, BM25, the hybrid)."""

    def retrieve(self, queries: Sequence[Query], k: int) -> Hits:
        """``search`` for ``(query id, text)`` pairs."""
        return self.search([text for _, text in queries], k)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StageContext:
    """What a builder may use: the device, batch size and progress settings of the run, the
    Chroma server (``client``) and worker devices the caller chose, and ``part(...)``, which
    returns the first stage that a pipeline (``part(pipeline)``), a stage of the user's own
    (``part(source)``) or pipeline options (``part(**options)``) name, built once per run (a
    hybrid's dense and BM25 parts are the grid's own dense and BM25 stages when it has them)."""

    device: str
    show_progress: bool
    client: Any
    devices: Sequence[str] | None
    part: Callable[..., FirstStage]
    batch_size: int | None = None


@dataclass(frozen=True)
class StageKind:
    """One kind of first stage a pipeline can name (``Pipeline(retriever=<name>)``).

    Attributes:
        name: the name pipelines use.
        builder: ``"module:function"``, imported only when a stage of the kind is built (or
            the function itself); it takes ``(collection, pipeline, context)`` and returns a
            :class:`FirstStage`.
        options: the pipeline fields the kind reads; the others are reset to their defaults,
            so that they cannot make two pipelines differ.
        required: those of ``options`` that must be given.
        label: the first stage's name in tables, from the pipeline.
        check: ``"module:function"`` (or the function) taking ``(collection, pipeline)``,
            called before any work of an evaluation; it raises on input the stage cannot use.
        content: what the stage's results depend on that its options do not say (a file's
            sha256), for the result cache's key; from the pipeline, cheaply.
    """

    name: str
    builder: str | Callable[..., FirstStage]
    options: tuple[str, ...]
    required: tuple[str, ...]
    label: Callable[[Any], str]
    check: str | Callable[..., None] | None = None
    content: Callable[[Any], Any] | None = None

    @property
    def passages(self) -> bool:
        """Whether the kind indexes passages: it reads ``chunk_size``."""
        return "chunk_size" in self.options

    def build(self, collection: Any, pipeline: Any, context: StageContext) -> FirstStage:
        """The first stage ``pipeline`` names, on ``collection``."""
        return _resolve(self.builder)(collection, pipeline, context)

    def check_input(self, collection: Any, pipeline: Any) -> None:
        """Raise now, before any work, on what the stage would refuse later."""
        if self.check is not None:
            _resolve(self.check)(collection, pipeline)


@dataclass(frozen=True)
class RerankerKind:
    """One family of reranker a pipeline can name (``Pipeline(reranker="<family>:<model>")``,
    the family left out for a cross-encoder).

    Attributes:
        name: the family's name, the prefix pipelines use.
        builder: ``"module:function"`` (imported only when a reranker of the family is built),
            or the function; it takes ``(model, pipeline, context)`` and returns a
            :class:`Reranker`.
        model_kind: what its model is, for ``ragkit.models.check_model`` (``"cross-encoder"``,
            ``"embedder"``); ``None`` when it names no model.
        options: the reranker options of the pipeline the family reads (``reranker_dtype``,
            ``max_length``); the others are reset to their defaults.
        label: its name in tables, from the model.
    """

    name: str
    builder: str | Callable[..., Reranker]
    model_kind: str | None
    options: tuple[str, ...]
    label: Callable[[str], str]

    def build(self, model: str | None, pipeline: Any, context: StageContext) -> Reranker:
        """The reranker ``pipeline`` names."""
        return _resolve(self.builder)(model, pipeline, context)


def _resolve(reference: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(reference):
        return reference
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def short_name(model_id: str) -> str:
    """A model id without its organisation, for names (``all-MiniLM-L6-v2``)."""
    return model_id.rstrip("/").split("/")[-1]


def check_k(k: int) -> None:
    """Raise a :class:`ConfigError` unless ``k``, the documents asked of a stage per query, is a
    positive whole number (a NumPy integer too; not a bool).

    Example:
        >>> check_k(10)
        >>> check_k(0)
        Traceback (most recent call last):
        ...
        ragkit.errors.ConfigError: k must be a positive integer (the number of documents per query), got 0.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k must be a positive integer (the number of documents per query), got {k!r}.")


def hits_problem(hits: Any, corpus: Mapping[str, Any], n_queries: int, depth: int, fills: bool) -> str | None:
    """What is wrong with a first stage's hits for ``n_queries`` queries at ``depth``, or
    ``None``: one list per query, each of (known doc id, finite score) pairs, best first, none
    repeated, no longer than ``depth`` (exactly ``min(depth, documents)`` when the stage
    ``fills`` its depth).

    Example:
        >>> hits_problem([[("a", 1.0), ("b", 2.0)]], {"a": 0, "b": 0}, 1, 10, False)
        "query 0's hits are not in descending order"
    """
    if not isinstance(hits, list) or len(hits) != n_queries:
        return f"{len(hits) if isinstance(hits, list) else 'no'} hit lists for {n_queries} queries"
    want = min(depth, len(corpus))
    for i, ranked in enumerate(hits):
        if len(ranked) > depth or (fills and len(ranked) != want):
            return f"query {i} has {len(ranked)} hits, expected {want if fills else f'at most {depth}'}"
        scores = [s for _, s in ranked]
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) for s in scores):
            return f"query {i} has a score that is not a finite number"
        if scores != sorted(scores, reverse=True):
            return f"query {i}'s hits are not in descending order"
        ids = [d for d, _ in ranked]
        if len(set(ids)) != len(ids):
            return f"query {i} has a document twice"
        unknown = [d for d in ids if d not in corpus]
        if unknown:
            return f"query {i} has {len(unknown)} documents the collection does not hold (e.g. {unknown[0]!r})"
    return None


def check_hits(stage: str, hits: Any, corpus: Mapping[str, Any], n_queries: int, depth: int, fills: bool) -> Hits:
    """``hits`` if :func:`hits_problem` finds nothing wrong, else a :class:`RagkitError`
    naming the first stage: an evaluation never scores a run its stage got wrong."""
    problem = hits_problem(hits, corpus, n_queries, depth, fills)
    if problem is not None:
        raise RagkitError(
            f"First stage {stage} returned a run ragkit cannot evaluate: {problem}. A first stage must return, for "
            "every query, known document ids with finite scores, best first (see ragkit.stages.FirstStage)."
        )
    return hits


def ranked_by(candidates: Sequence[tuple[str, str]], scores: Sequence[float]) -> Ranked:
    """``candidates`` (doc id, text) as ``(doc id, score)``, best score first; ties keep their
    given order (the first stage's), as LangChain's ``CrossEncoderReranker`` keeps them.

    Example:
        >>> ranked_by([("a", "..."), ("b", "..."), ("c", "...")], [0.5, 2.0, 0.5])
        [('b', 2.0), ('a', 0.5), ('c', 0.5)]
    """
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [(candidates[i][0], float(scores[i])) for i in order]


def check_reranked(stage: str, ranked: Any, candidates: Sequence[str]) -> Ranked:
    """``ranked`` if it is a ranking of some of ``candidates`` (doc ids), each once, with finite
    scores, best first; else a :class:`RagkitError` naming the reranker.

    Example:
        >>> check_reranked("mine", [("b", 2.0), ("a", 1.0)], ["a", "b", "c"])
        [('b', 2.0), ('a', 1.0)]
    """
    problem = None
    if not isinstance(ranked, list) or not all(isinstance(r, tuple) and len(r) == 2 for r in ranked):
        problem = "it is not a list of (doc id, score) pairs"
    else:
        known = set(candidates)
        ids = [d for d, _ in ranked]
        scores = [s for _, s in ranked]
        unknown = [d for d in ids if d not in known]
        if unknown:
            problem = f"{len(unknown)} documents were not among its candidates (e.g. {unknown[0]!r})"
        elif len(set(ids)) != len(ids):
            problem = "a document comes twice"
        elif any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) for s in scores):
            problem = "a score is not a finite number"
        elif scores != sorted(scores, reverse=True):
            problem = "its scores are not in descending order"
    if problem is not None:
        raise RagkitError(
            f"Reranker {stage} returned a ranking ragkit cannot evaluate: {problem}. A reranker must return some of "
            "the candidates it was given, each once, with finite scores, best first (see ragkit.stages.Reranker)."
        )
    return ranked


__all__ = [
    "FirstStage",
    "Hits",
    "PairScorer",
    "Query",
    "Ranked",
    "Reranker",
    "RerankerKind",
    "SearchesByText",
    "StageContext",
    "StageKind",
    "StageSource",
    "check_hits",
    "check_k",
    "check_reranked",
    "ranked_by",
    "hits_problem",
    "short_name",
]
