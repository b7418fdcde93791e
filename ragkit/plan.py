"""What an evaluation will do and about how long it will take, before it starts.

:func:`plan` lists the work of ``experiment(collection, pipelines, ...)``: the documents each
dense index must embed (none when ragkit's cache holds the index), the (query, passage) pairs
each reranker scores (exactly, less those in the pair-score cache, when the first stage's run is
cached; else at most ``k`` per query), and the queries timed one at a time (in the pipelines
whose timings the latency cache does not hold); or that the whole result is cached. What the
caches hold is looked up under the keys the run uses, from each first stage's identity
computed without building it; a stage of the user's own is known only once built, so its
pairs are planned as "at most" and its timings as not cached. With ``engine="langchain"`` every
reranked pipeline scores all of its pairs (query by query, past the pair-score cache), and is
planned so.

It estimates the minutes from rates measured on this machine: a short calibration (32 of the
collection's own documents embedded, 32 of its (query, document) pairs scored, with each model
on the run's device), remembered in the cache per machine, model and collection, so that it is
measured once. Loading the models for it is not wasted: the run that follows finds them in the
loaders' cache.

The estimate is of the work that dominates (embedding, scoring, timing); what it leaves out
(imports, BM25, searches, statistics) takes seconds. ``benchmarks/rerank_cost.py`` checks it
against the measured time of a run (section ``rerun``).

Example::

    print(plan(collection, grid(rerankers=[None, "cross-encoder/ms-marco-MiniLM-L-12-v2"])).to_text())
"""

from __future__ import annotations

import functools
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragkit.cache import Cache, PairScoreCache, digest
from ragkit.evaluate import (
    Pipeline,
    _deepest_reranked,
    _latency_key,
    _latency_problem,
    _prepared,
    _reranked_pairs,
    _run_depth,
    _run_key,
)
from ragkit.provenance import device_description, machine_state, model_state, now
from ragkit.settings import LONG_RUN_MINUTES
from ragkit.stages import StageContext, short_name

CALIBRATION_TEXTS = 32  # documents embedded, and pairs scored, to measure a model's rate


@dataclass
class Step:
    """One piece of an evaluation's work.

    Attributes:
        what: what is done, in words (``"embed 5,183 documents with all-MiniLM-L6-v2"``).
        seconds: the estimate; 0 for work the cache already holds.
        cached: whether the cache holds it (then it is not redone).
        rate: the measured rate the estimate comes from, in words (``"20.3 documents/s"``).
    """

    what: str
    seconds: float
    cached: bool = False
    rate: str = ""


@dataclass
class Plan:
    """What ``experiment()`` will do on one collection, and about how long it will take."""

    collection: str
    n_queries: int
    n_documents: int
    device: str
    steps: list[Step] = field(default_factory=list)
    result_cached: bool = False

    @property
    def minutes(self) -> float:
        """The estimated minutes of the whole run."""
        return sum(s.seconds for s in self.steps) / 60

    @property
    def long(self) -> bool:
        """Whether the run is estimated over ``settings.LONG_RUN_MINUTES``."""
        return self.minutes > LONG_RUN_MINUTES

    def headline(self) -> str:
        """One sentence: the estimate, and what to do when it is long."""
        if self.result_cached:
            return f"{self.collection}: the whole result is cached; nothing will be computed."
        text = f"{self.collection}: about {_minutes(self.minutes)} on {self.device}"
        if self.long:
            text += (
                f", over {LONG_RUN_MINUTES} minutes: fewer queries (--queries), fewer candidates (--k) or fewer "
                "pipelines shorten it"
            )
        return text + "."

    def to_text(self, width: int = 100) -> str:
        """The plan as lines that fit ``width`` columns: the headline, then each step with its
        estimate and the rate it comes from."""
        lines = [textwrap.fill(self.headline(), width)]
        for step in self.steps:
            cost = "none, it is in the cache" if step.cached else _minutes(step.seconds / 60)
            rate = f" at {step.rate}" if step.rate and not step.cached else ""
            lines.append(textwrap.fill(f"- {step.what}: {cost}{rate}", width, subsequent_indent="  "))
        return "\n".join(lines)


def plan(
    collection: Any,
    pipelines: Sequence[Pipeline],
    *,
    use_cache: bool = True,
    calibrate: bool = True,
    **options: Any,
) -> Plan:
    """What ``experiment(collection, pipelines, **options)`` will do, and an estimate of how
    long it will take on this machine, computed without doing it: the same checks first (bad
    input is refused as the run would refuse it), then what the cache holds, then rates
    measured here (``calibrate=False``: only those measured before; work without a known rate
    is estimated at 0 and says "rate not measured").

    Args:
        collection, pipelines, options: as :func:`ragkit.experiment` takes them.
        use_cache: as the run will be called (``False``: nothing cached counts).
        calibrate: measure rates not measured before (seconds per model).
    """
    prepared = _prepared(collection, pipelines, **options)
    settings, cache = prepared.settings, prepared.cache
    device = settings.device
    out = Plan(getattr(collection, "name", "collection"), len(collection.queries), len(collection.corpus),
               f"{device_description(device)} ({device})")  # fmt: skip
    if use_cache and prepared.stored_result(collection) is not None:
        out.result_cached = True
        return out
    rates = _Rates(cache, collection, device, settings.batch_size, calibrate=calibrate)
    n = len(collection.queries)
    # Every dense index the run builds (the pipelines' own, a hybrid's and a fusion's parts'), once.
    indexes: dict[tuple[Any, ...], Any] = {}
    for first in (part for p in prepared.pipelines for part in _parts(p.own_first_stage())):
        key = _index_key(first)
        if first.embedder is None or key in indexes:
            continue
        indexes[key] = state = _index_state(collection, first, device, prepared.client)
        vectors, cached = state.vectors, state.held
        what = f"embed {vectors:,} {'passages' if first.chunk_size else 'documents'} with {short_name(first.embedder)}"
        if cached:
            out.steps.append(Step(what, 0.0, cached=True))
            continue
        per_second, loaded = rates.embedding(first.embedder)
        out.steps.append(Step(what, _seconds(vectors, per_second) + loaded, rate=_rate(per_second, "documents")))

    def passages_per_document(p: Pipeline) -> float:
        # The collection's mean passages per document, which the top k's mean is close to.
        return 1.0 if p.chunk_size is None else indexes[_index_key(p)].vectors / max(1, len(collection.corpus))

    identities = _StageIdentities(collection, indexes)
    # Each reranker scores the pairs of its deepest k once (a k sweep shares them), and a pair
    # two first stages share once (planned holds the pairs of the pipelines planned so far).
    planned: set[tuple[str | None, str]] = set()
    if settings.engine == "langchain":
        # LangChain's retrievers rerank query by query, each pipeline on its own and past the
        # pair-score cache: every reranked pipeline scores all of its pairs.
        for p in (p for p in prepared.pipelines if p.reranker):
            label = p.reranker_family.label(p.reranker_model)  # type: ignore[union-attr]
            per_second, loaded = rates.scoring(p)
            pairs = n * min(p.k, out.n_documents)
            what = (f"score {pairs:,} pairs with {label} ({n} queries x k={p.k}, query by query through LangChain's "
                    "retriever, which reads no pair-score cache)")  # fmt: skip
            out.steps.append(Step(what, _seconds(pairs, per_second) + loaded, rate=_rate(per_second, "pairs")))
    for p in _deepest_reranked(prepared.pipelines) if settings.engine == "batched" else []:
        label = p.reranker_family.label(p.reranker_model)  # type: ignore[union-attr]
        per_second, loaded = rates.scoring(p)
        identity = identities.of(p.own_first_stage())
        known = _known_pairs(collection, prepared, p, identity, planned) if use_cache else None
        if known is not None:  # the first stage's run is cached: its pairs are known
            pairs, cached, shared = known
            todo = pairs - cached - shared
            what = f"score {todo:,} pairs with {label} ({cached:,} of its {pairs:,} are in the pair-score cache"
            what += f", {shared:,} are scored first for another pipeline)" if shared else ")"
            out.steps.append(Step(what, _seconds(todo, per_second) + (loaded if todo else 0.0), cached=todo == 0,
                                  rate=_rate(per_second, "pairs")))  # fmt: skip
            continue
        per_doc = passages_per_document(p)
        pairs = round(n * min(p.k, out.n_documents) * per_doc)
        what = f"score at most {pairs:,} pairs with {label} ({n} queries x k={p.k}"
        what += f" x {per_doc:.1f} passages" if per_doc != 1 else ""
        what += "; those in the pair-score cache are not scored again)" if use_cache else ")"
        out.steps.append(Step(what, _seconds(pairs, per_second) + loaded, rate=_rate(per_second, "pairs")))
    timed = min(settings.latency_queries, n)
    # A run file's ranking alone (or a fusion's with one) has nothing to time here: it ran elsewhere.
    served = [p for p in prepared.pipelines if p.reranker or _searched_here(p.own_first_stage())]
    if timed > 0 and served:
        query_ids = sorted(collection.queries)[:timed]
        seconds, reused = 0.0, 0
        for p in served:
            if use_cache and p.cacheable and _timings_cached(prepared, p, identities.of(p.own_first_stage()),
                                                             collection, query_ids):  # fmt: skip
                reused += 1
                continue
            # Serving a query reranks its k candidates at about the pooled rate; a first
            # stage's own search takes milliseconds.
            if p.reranker:
                per_second, _ = rates.scoring(p)
                seconds += _seconds(timed * min(p.k, out.n_documents) * passages_per_document(p), per_second)
        cached = reused == len(served)
        timing = len(served) if cached else len(served) - reused
        where = f"each of {timing} pipelines" if timing > 1 else "1 pipeline"
        what = f"time {timed} queries one at a time in {where}"
        if reused and not cached:
            what += f" (the timings of the other {reused}, made before on this machine, are reused)"
        out.steps.append(Step(what, seconds, cached=cached))
    return out


def _known_pairs(
    collection: Any,
    prepared: Any,
    p: Pipeline,
    identity: tuple[str, tuple[str, ...]] | None,
    planned: set[tuple[str | None, str]],
) -> tuple[int, int, int] | None:
    """The (query, text) pairs a reranked pipeline scores, when its first stage's run is cached
    under the key the stage's ``identity`` (fingerprint, search mode) gives: how many, how many
    of them the pair-score cache holds, and how many of the rest a pipeline planned before it
    scores first (``planned``: the (reranker, pair) keys planned so far, to which this
    pipeline's are added), since a run scores a pair once. ``None`` when the run is not cached
    or the identity is not known: the pairs are known only once the first stage has run."""
    if identity is None:
        return None
    first = p.own_first_stage()
    query_ids = sorted(collection.queries)
    texts = [collection.queries[q] for q in query_ids]
    depth = _run_depth(p, prepared.pipelines)
    hits = prepared.cache.read("runs", _run_key(*identity, query_ids, texts, depth))
    if hits is None:
        return None
    # A stage over passages gives a reranker each document's passages as its index split them.
    split = None
    if first.chunk_size is not None:
        from ragkit.passages import passage_splitter

        split = passage_splitter(collection, chunk_size=first.chunk_size, chunk_overlap=first.chunk_overlap,
                                 chunk_unit=first.chunk_unit, passage_score=first.passage_score,
                                 embeddings=first.embedder)  # fmt: skip
    pairs, _ = _reranked_pairs(p, hits, collection, query_ids, split)
    model = _reranker(p, prepared.settings.device, prepared.settings.batch_size).fingerprint
    keys = [PairScoreCache.pair_key(*pair) for pair in pairs]
    store = prepared.cache.pair_scores()
    try:
        found = store.get(model, keys)
    finally:
        store.close()
    # Counted by position, as the run scores them: a pair twice among one pipeline's is scored twice.
    cached = sum(key in found for key in keys)
    shared = sum(key not in found and (model, key) in planned for key in keys)
    planned.update((model, key) for key in keys)
    return len(pairs), cached, shared


def _timings_cached(
    prepared: Any, p: Pipeline, identity: tuple[str, tuple[str, ...]] | None, collection: Any, query_ids: list[str]
) -> bool:
    """Whether the run will reuse the timings of ``p`` on ``query_ids``: the latency cache holds
    them under the key the run looks them up by, and they pass the run's check. ``False`` when
    the first stage's ``identity`` is not known: then they are timed, or found, once it is built."""
    if identity is None:
        return False
    key = _latency_key(p, *identity, collection, query_ids, prepared.settings)
    return prepared.cache.read("latency", key, check=lambda saved: _latency_problem(saved, query_ids)) is not None


class _StageIdentities:
    """The identity each first stage of a plan will have once built: its ``fingerprint`` and
    ``search_mode`` (``ragkit.stages.FirstStage``), which its cached run and timings are keyed
    by, computed without building it, and once per stage.

    A dense stage's comes from its index's state, BM25's from the documents, a run file's from
    its bytes, a hybrid's and a fusion's from their parts'. A stage of the user's own (or a
    fusion with one) has ``None``: its fingerprint is the one its built stage gives, known only
    once it is built."""

    def __init__(self, collection: Any, indexes: dict[tuple[Any, ...], Any]):
        self.collection, self.indexes = collection, indexes
        self.known: dict[Pipeline, tuple[str, tuple[str, ...]] | None] = {}

    def of(self, first: Pipeline) -> tuple[str, tuple[str, ...]] | None:
        """The identity of the first stage ``first`` (a pipeline without a reranker) names."""
        if first not in self.known:
            self.known[first] = self._identity(first)
        return self.known[first]

    @functools.cached_property
    def bm25(self) -> str:
        """The BM25 stage's fingerprint (the collection's documents hashed, once)."""
        from ragkit.retrievers import bm25_fingerprint

        return bm25_fingerprint(self.collection.documents())

    def _identity(self, first: Pipeline) -> tuple[str, tuple[str, ...]] | None:
        from ragkit.fusion import Fusion
        from ragkit.hybrid import hybrid_fingerprint
        from ragkit.runfile import file_sha256, run_fingerprint

        if isinstance(first.retriever, Fusion):
            parts = [self.of(part.own_first_stage()) if isinstance(part, Pipeline) else None
                     for part in first.retriever.parts]  # fmt: skip
            known = [part for part in parts if part is not None]
            fingerprint = first.retriever.stage_fingerprint([f for f, _ in known]) if len(known) == len(parts) else None
            return None if fingerprint is None else (fingerprint, tuple(m for _, mode in known for m in mode))
        fingerprint, mode = None, ()
        if first.retriever in ("dense", "hybrid"):
            # A hybrid's dense part is its embedder's index of whole documents, the same key.
            state = self.indexes[_index_key(first)]
            mode = state.search_mode
            fingerprint = (state.fingerprint if first.retriever == "dense" else
                           hybrid_fingerprint(state.fingerprint, self.bm25, first.fusion_weights))  # fmt: skip
        elif first.retriever == "bm25":
            fingerprint = self.bm25
        elif first.retriever == "run":
            fingerprint = run_fingerprint(file_sha256(first.run_file))  # type: ignore[arg-type]
        # Else a stage of the user's own: its fingerprint is known once it is built.
        return None if fingerprint is None else (fingerprint, mode)


def _index_key(first: Pipeline) -> tuple[Any, ...]:
    """What decides a dense index: the embedder and how documents are split."""
    return first.embedder, first.chunk_size, first.chunk_overlap, first.chunk_unit, first.passage_score


def _searched_here(first: Pipeline) -> bool:
    """Whether a first stage's own search is timed here: not a run file's, nor a fusion's with
    one (``FirstStage.timed_search`` is ``None``: the system ran elsewhere)."""
    return all(part.kind.name != "run" for part in _parts(first))


def _parts(first: Pipeline) -> list[Pipeline]:
    """A first stage and, for a fusion of pipelines, its parts' first stages (recursively)."""
    parts = getattr(first.retriever, "parts", None)
    if parts is None:
        return [first]
    return [first] + [q for part in parts if isinstance(part, Pipeline) for q in _parts(part.own_first_stage())]


def _index_state(collection: Any, first: Pipeline, device: str, client: Any) -> Any:
    """The state of the dense index a first stage names (``ragkit.retrievers.IndexState``): its
    vectors, whether ragkit's cache holds it, its fingerprint and search mode."""
    from ragkit.retrievers import index_state

    return index_state(collection.documents(), first.embedder, model_kwargs={"device": device},
                       chunk_size=first.chunk_size, chunk_overlap=first.chunk_overlap, chunk_unit=first.chunk_unit,
                       first_passage_only=first.passage_score == "firstp", client=client)  # fmt: skip


class _Rates:
    """Rates measured on this machine, per model, remembered in the cache."""

    def __init__(self, cache: Cache, collection: Any, device: str, batch_size: int | None, *, calibrate: bool):
        self.cache, self.collection, self.device, self.batch_size = cache, collection, device, batch_size
        self.calibrate = calibrate
        self.known: dict[tuple[Any, ...], tuple[float | None, float]] = {}
        ids = sorted(collection.corpus)[:: max(1, len(collection.corpus) // CALIBRATION_TEXTS)][:CALIBRATION_TEXTS]
        self.texts = [collection.text(d) for d in ids]

    def embedding(self, model: str) -> tuple[float | None, float]:
        """Documents per second for ``model`` on this machine, and the seconds loading it took."""

        def measure() -> tuple[float, float]:
            from ragkit.loaders import HuggingFaceEmbeddingsLoader, embed_documents

            start = time.perf_counter()
            embeddings = HuggingFaceEmbeddingsLoader(model, model_kwargs={"device": self.device})
            loaded = time.perf_counter() - start
            embed_documents(embeddings, self.texts[:2])  # warm-up: first-call overheads are not the rate
            start = time.perf_counter()
            embed_documents(embeddings, self.texts)
            return len(self.texts) / (time.perf_counter() - start), loaded

        return self._rate(("embed", model), model, measure)

    def scoring(self, p: Pipeline) -> tuple[float | None, float]:
        """(query, text) pairs per second for a pipeline's reranker, and the seconds loading it took."""

        def measure() -> tuple[float, float]:
            start = time.perf_counter()
            reranker = _reranker(p, self.device, self.batch_size)
            loaded = time.perf_counter() - start
            queries = [self.collection.queries[q] for q in sorted(self.collection.queries)]
            pairs = [(queries[i % len(queries)], text) for i, text in enumerate(self.texts)]
            reranker.score(pairs[:2])
            start = time.perf_counter()
            reranker.score(pairs)
            return len(pairs) / (time.perf_counter() - start), loaded

        if p.reranker_model is None:  # a reranker of the user's own: its cost is not known here
            return None, 0.0
        identity = (p.reranker_family.name, p.reranker_model, p.reranker_dtype, p.max_length)  # type: ignore[union-attr]
        return self._rate(("score", *identity), p.reranker_model, measure)

    def _rate(self, what: tuple[Any, ...], model: str, measure: Any) -> tuple[float | None, float]:
        if what in self.known:
            return self.known[what][0], 0.0  # a model is loaded once per run
        key = digest("rates", what, model_state(model), machine_state(self.device), self.batch_size,
                     self.collection.fingerprint())  # fmt: skip
        stored = self.cache.read("rates", key, check=_rate_problem)
        if stored is not None:
            rate, loaded = stored["per_second"], stored["load_seconds"]
        elif self.calibrate:
            rate, loaded = measure()
            self.cache.write("rates", key, {"per_second": rate, "load_seconds": loaded, "measured": now()})
        else:
            rate, loaded = None, 0.0
        self.known[what] = (rate, loaded)
        return rate, loaded


def _reranker(p: Pipeline, device: str, batch_size: int | None) -> Any:
    context = StageContext(device, False, None, None, None, batch_size=batch_size)
    return p.reranker_family.build(p.reranker_model, p, context)  # type: ignore[union-attr]


def _rate_problem(data: Any) -> str | None:
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), (int, float)) for k in ("per_second", "load_seconds")
    ):
        return "it is not a measured rate"
    return None if data["per_second"] > 0 else "its rate is not positive"


def _seconds(work: float, per_second: float | None) -> float:
    return work / per_second if per_second else 0.0


def _rate(per_second: float | None, unit: str) -> str:
    return f"{per_second:,.1f} {unit}/s" if per_second else "rate not measured"


def _minutes(minutes: float) -> str:
    if minutes < 1:
        return f"{max(1, round(minutes * 60))} s"
    return f"{minutes:,.0f} min" if minutes >= 10 else f"{minutes:.1f} min"


__all__ = ["Plan", "Step", "plan"]
