"""The evaluation engine: run retrieval pipelines on one collection and compare them, honestly.

``experiment()`` runs several pipelines on the same queries and qrels and returns an
:class:`~ragkit.results.EvaluationResult`: an aggregate table with a baseline, per-measure
deltas, paired significance tests (t-test and randomization, Holm-corrected), bootstrap
confidence intervals and win/tie/loss counts (``ragkit.stats``); per-query scores
(``ragkit.measures``); per-stage latency; and the runs themselves. What it computes is
reused through ``ragkit.cache``.

Example::

    from ragkit import Pipeline, experiment, load_beir, make_subset
    subset = make_subset(load_beir("scifact"), 20)
    result = experiment(subset, [Pipeline(), Pipeline(reranker="cross-encoder/ms-marco-MiniLM-L-12-v2")])
    result.summary()
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from ragkit.cache import FORMATS, Cache, PairScoreCache, digest
from ragkit.data import BeirCollection
from ragkit.errors import ConfigError, RagkitError
from ragkit.loaders import resolve_device
from ragkit.measures import Run, parse_measures, per_query_scores, ranked_run
from ragkit.provenance import code_state, device_description, machine_state, model_state, now, versions
from ragkit.registry import first_stage_kind, reranker_kind
from ragkit.results import EvaluationResult
from ragkit.settings import (
    CHUNK_OVERLAP,
    CHUNK_UNITS,
    DEFAULT_EMBEDDER,
    DEFAULT_MEASURES,
    DEFAULT_RERANK_K,
    FIRST_STAGE_DEPTH,
    HYBRID_WEIGHTS,
    LATENCY_QUERIES,
    N_RESAMPLES,
    PASSAGE_SCORES,
    RERANK_DTYPES,
    RunSettings,
    rerank_batch_size,
)
from ragkit.stages import (
    FirstStage,
    Hits,
    PairScorer,
    Reranker,
    RerankerKind,
    StageContext,
    StageKind,
    StageSource,
    check_hits,
    check_reranked,
    hits_problem,
)
from ragkit.stats import aggregate, percentile_ci

log = logging.getLogger("ragkit")

# Pairs scored between two commits to the pair-score cache: an interrupted run loses at most
# this many. A multiple of the batch size is used, so batches are the same as in one pass.
SCORE_CHUNK = 256


@dataclass(frozen=True)
class Pipeline:
    """One retrieval pipeline: a first stage (dense, BM25, both fused, a run file, or the
    user's own), optionally reranked (by a cross-encoder, a second bi-encoder, or the user's
    own compressor).

    Args:
        retriever: the kind of first stage, one of ``ragkit.registry.FIRST_STAGES``:
            ``"dense"`` (Chroma + an embedder), ``"bm25"``, ``"hybrid"`` (the dense and BM25
            rankings fused by weighted reciprocal rank fusion, ``ragkit.hybrid``), or ``"run"``
            (a TREC run file another system wrote, ``run_file``; ``ragkit.runfile``); or a
            first stage of the user's own, a :class:`ragkit.stages.StageSource` such as
            ``ragkit.LangChainRetriever(...)``.
        embedder: Hub id of the embedder for ``"dense"`` and ``"hybrid"``.
        reranker: ``None`` for the first stage alone; a cross-encoder's Hub id or folder; a
            family-prefixed model (``"bi-encoder:BAAI/bge-small-en-v1.5"``: rescoring by a
            second embedder, ``ragkit.rescore``; the families are ``ragkit.registry.RERANKERS``);
            or a reranker of the user's own, such as ``ragkit.LangChainCompressor(...)``.
        k: candidates taken from the first stage: the documents returned when there is no
            reranker (default 100, so that R@100 means something), the documents reranked
            when there is one (default ``settings.DEFAULT_RERANK_K``).
        top_n: reranked documents returned, as LangChain's ``CrossEncoderReranker(top_n=...)``;
            default ``k``. A reranked run holds exactly these documents, so its R@100 is
            bounded by the first stage's recall at ``k``.
        reranker_dtype: the cross-encoder's weight precision, one of ``settings.RERANK_DTYPES``
            (default float32). bfloat16 is faster on GPUs and on CPUs with bf16 support, and
            changes scores slightly: compare both as two pipelines to see what it costs.
        truncate: what a reranked pipeline's evaluation run holds. ``False`` (default): the
            reranked top ``k`` followed by the first stage's other candidates, down to 100, in
            their first-stage order (the BEIR and PyTerrier convention), so that R@100 and
            other deep measures compare like with like with the first stage; ``top_n`` then
            only sets what the LangChain retriever hands on. ``True``: only the ``top_n``
            reranked documents, as LangChain's ``CrossEncoderReranker`` returns them; the name
            says ``truncated``.
        fusion_weights: the hybrid's (dense, BM25) weights, both positive (default equal,
            ``settings.HYBRID_WEIGHTS``); the name shows them when they differ.
        chunk_size: split documents into passages of at most this many characters (or tokens,
            ``chunk_unit="tokens"``: the embedder's tokens), as a RAG system indexes them; the
            index holds passages and the reranker scores (query, passage) pairs, and a document
            scores as its best passage (``passage_score="maxp"``) or as its first (``"firstp"``,
            which indexes and reranks first passages only). Evaluation stays per document.
            Default ``None``: whole documents (which the embedder and the cross-encoder
            truncate at their maximum length). Dense pipelines only.
        chunk_overlap: characters (tokens) consecutive passages share; less than ``chunk_size``.
        chunk_unit: ``"chars"`` (default) or ``"tokens"``.
        passage_score: ``"maxp"`` (default) or ``"firstp"``.
        max_length: tokens of each (query, passage) pair the cross-encoder reads (default: the
            model's maximum, 512 for the MiniLM cross-encoders); longer pairs are truncated, and
            the results table says what share of each pipeline's pairs were.
        run_file: for ``retriever="run"``, the TREC run file whose rankings are the first stage.

    Rankings are decided on the cross-encoder's logits, which never saturate (its sigmoid
    rounds every strong match to 1.0 and turns them into ties), and a run's scores strictly
    decrease down the ranking, so any scorer reads the order ragkit decided.

    Example:
        >>> Pipeline(reranker="cross-encoder/ms-marco-MiniLM-L-12-v2", k=50).name
        'dense(all-MiniLM-L6-v2) >> ms-marco-MiniLM-L-12-v2(k=50, top_n=50)'
    """

    retriever: str | StageSource = "dense"
    embedder: str | None = DEFAULT_EMBEDDER
    reranker: str | StageSource | None = None
    k: int | None = None
    top_n: int | None = None
    reranker_dtype: str = "float32"
    truncate: bool = False
    fusion_weights: tuple[float, float] = HYBRID_WEIGHTS
    chunk_size: int | None = None
    chunk_overlap: int = CHUNK_OVERLAP
    chunk_unit: str = "chars"
    passage_score: str = "maxp"
    max_length: int | None = None
    run_file: str | None = None

    def __post_init__(self) -> None:
        kind = self.kind
        what = {"embedder": "an embedder (a Hub id or a local folder)", "run_file": "a run_file (a TREC run file)"}
        for option in kind.required:
            if not getattr(self, option):
                raise ConfigError(f"A {kind.name} pipeline needs {what.get(option, option)}.")
        if self.chunk_size is not None and not kind.passages:
            raise ConfigError(
                f"Passages (chunk_size) are for dense pipelines: a {kind.name} first stage ranks whole "
                "documents. Leave chunk_size out, or use retriever='dense'."
            )
        # Options the kind does not read go back to their defaults: they cannot make pipelines differ.
        for option in ("embedder", "fusion_weights", "run_file"):
            if option not in kind.options:
                object.__setattr__(self, option, None if option != "fusion_weights" else HYBRID_WEIGHTS)
        if "fusion_weights" in kind.options:
            from ragkit.hybrid import check_weights

            object.__setattr__(self, "fusion_weights", check_weights(self.fusion_weights))
        if self.run_file is not None:
            object.__setattr__(self, "run_file", str(self.run_file))
        k = self.k if self.k is not None else (DEFAULT_RERANK_K if self.reranker else FIRST_STAGE_DEPTH)
        top_n = self.top_n if self.top_n is not None else k
        if k < 1 or top_n < 1:
            raise ConfigError(f"k and top_n must be at least 1 (got k={k}, top_n={top_n}).")
        if top_n > k:
            raise ConfigError(f"top_n={top_n} is more than the k={k} candidates the reranker sees.")
        if self.reranker_dtype not in RERANK_DTYPES:
            raise ConfigError(f"reranker_dtype must be one of {', '.join(RERANK_DTYPES)}, got {self.reranker_dtype!r}.")
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "top_n", top_n if self.reranker else k)
        if not self.reranker:
            object.__setattr__(self, "reranker", None)
            object.__setattr__(self, "truncate", False)
        # Reranker options its family does not read (a bi-encoder's precision) go back to their defaults too.
        family = self.reranker_family
        if family is None or "reranker_dtype" not in family.options:
            object.__setattr__(self, "reranker_dtype", "float32")
        self._check_passages()
        if self.max_length is not None and (family is None or "max_length" not in family.options):
            object.__setattr__(self, "max_length", None)

    def _check_passages(self) -> None:
        if self.passage_score not in PASSAGE_SCORES:
            raise ConfigError(f"passage_score must be one of {', '.join(PASSAGE_SCORES)}, got {self.passage_score!r}.")
        if self.chunk_size is not None:
            from ragkit.passages import check_chunking

            check_chunking(self.chunk_size, self.chunk_overlap, self.chunk_unit)
        elif self.chunk_unit not in CHUNK_UNITS:
            raise ConfigError(f"chunk_unit must be one of {', '.join(CHUNK_UNITS)}, got {self.chunk_unit!r}.")
        else:  # whole documents: the passage options mean nothing, so they cannot make pipelines differ
            for field_name, default in (("chunk_overlap", CHUNK_OVERLAP), ("chunk_unit", "chars"),
                                        ("passage_score", "maxp")):  # fmt: skip
                object.__setattr__(self, field_name, default)
        if self.max_length is not None:
            if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
                raise ConfigError(f"max_length must be a whole number of tokens >= 1, got {self.max_length!r}.")

    @property
    def kind(self) -> StageKind:
        """The kind of first stage (``ragkit.registry``)."""
        return first_stage_kind(self.retriever)

    @property
    def reranker_family(self) -> RerankerKind | None:
        """The reranker's family (``ragkit.registry.RERANKERS``), ``None`` without one."""
        return reranker_kind(self.reranker)[0] if self.reranker else None

    @property
    def reranker_model(self) -> str | None:
        """The reranker's model (Hub id or folder), without its family's prefix; ``None``
        without a reranker or for the user's own."""
        return reranker_kind(self.reranker)[1] if self.reranker else None

    def models(self) -> list[tuple[str, str]]:
        """The models the pipeline loads, as ``(model, kind)`` for ``ragkit.models.check_model``."""
        family = self.reranker_family
        reranker = [(self.reranker_model, family.model_kind)] if family and family.model_kind else []
        # A stage of the user's own that names models of its own (a fusion's parts) says so.
        own = self.retriever.models() if hasattr(self.retriever, "models") else []
        return ([(self.embedder, "embedder")] if self.embedder else []) + own + reranker  # type: ignore[list-item]

    def fields(self) -> dict[str, Any]:
        """The pipeline's fields as plain data: a stage of the user's own as its label and
        fingerprint."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("retriever", "reranker"):
            if isinstance(out[name], StageSource):
                out[name] = {"stage": out[name].label, "fingerprint": out[name].fingerprint}
        return out

    def identity(self) -> dict[str, Any]:
        """What cache keys know of the pipeline: its fields, less those at their defaults among
        the options added after its first ones, so that adding an option keeps every cached
        result and timing of the pipelines that do not use it."""
        return {k: v for k, v in self.fields().items() if k not in _LATER_DEFAULTS or v != _LATER_DEFAULTS[k]}

    @property
    def cacheable(self) -> bool:
        """Whether what the pipeline computes can be cached: not when a stage of the user's
        own has no fingerprint, since ragkit cannot tell when it changes."""
        return all(getattr(s, "fingerprint", "") is not None for s in (self.retriever, self.reranker))

    @property
    def passages(self) -> str:
        """How documents are split, for names: ``""`` for whole documents."""
        if self.chunk_size is None:
            return ""
        unit = "char" if self.chunk_unit == "chars" else "token"
        overlap = "" if self.chunk_overlap == CHUNK_OVERLAP else f" overlap {self.chunk_overlap}"
        return f", {self.chunk_size}-{unit} chunks{overlap}" + (", firstp" if self.passage_score == "firstp" else "")

    @property
    def first_stage(self) -> str:
        """Name of the first stage alone, e.g. ``dense(all-MiniLM-L6-v2)``, ``bm25``,
        ``hybrid(all-MiniLM-L6-v2+bm25)`` or ``run(bm25.trec)``."""
        return self.kind.label(self)

    @property
    def name(self) -> str:
        """A readable, unique name used in tables, plots and run files."""
        if not self.reranker:
            return self.first_stage if self.k == FIRST_STAGE_DEPTH else f"{self.first_stage}(k={self.k})"
        dtype = "" if self.reranker_dtype == "float32" else f"[{self.reranker_dtype}]"
        truncated = ", truncated" if self.truncate else ""
        length = "" if self.max_length is None else f", max_length={self.max_length}"
        reranker = self.reranker_family.label(self.reranker_model)  # type: ignore[union-attr, arg-type]
        return f"{self.first_stage} >> {reranker}{dtype}(k={self.k}, top_n={self.top_n}{length}{truncated})"

    @property
    def depth(self) -> int:
        """How many first-stage candidates the pipeline's evaluation run needs."""
        return self.k if not self.reranker or self.truncate else max(self.k, FIRST_STAGE_DEPTH)

    def __rshift__(self, reranker: str | StageSource | Rerank) -> Pipeline:
        """This first stage reranked: ``first >> reranker``, PyTerrier's composition. The
        reranker is a model (as ``Pipeline(reranker=...)`` takes it), a stage of the user's
        own, or a :class:`Rerank` with its options.

        Example:
            >>> (Pipeline(retriever="bm25") >> Rerank("cross-encoder/ms-marco-MiniLM-L-12-v2", k=50)).name
            'bm25 >> ms-marco-MiniLM-L-12-v2(k=50, top_n=50)'
        """
        if self.reranker:
            raise ConfigError(f"{self.name} is reranked already: compose a first stage with one reranker.")
        step = reranker if isinstance(reranker, Rerank) else Rerank(reranker)
        return replace(self, **{f.name: getattr(step, f.name) for f in fields(step)})

    def own_first_stage(self) -> Pipeline:
        """The same first stage without reranking, at its full depth: what this pipeline's
        reranker is measured against."""
        return Pipeline(
            self.retriever,
            self.embedder,
            fusion_weights=self.fusion_weights,
            chunk_size=self.chunk_size,
            chunk_overlap=self.chunk_overlap,
            chunk_unit=self.chunk_unit,
            passage_score=self.passage_score,
            run_file=self.run_file,
        )


@dataclass(frozen=True)
class Rerank:
    """A reranker and its options, to compose with a first stage: ``Pipeline(...) >> Rerank(...)``.
    The options mean what :class:`Pipeline`'s do.

    Example:
        >>> (Pipeline() >> Rerank("bi-encoder:BAAI/bge-small-en-v1.5", k=100)).name
        'dense(all-MiniLM-L6-v2) >> bi-encoder:bge-small-en-v1.5(k=100, top_n=100)'
    """

    reranker: str | StageSource
    _: KW_ONLY
    k: int | None = None
    top_n: int | None = None
    reranker_dtype: str = "float32"
    truncate: bool = False
    max_length: int | None = None


# Pipeline options added after the first ones, with their defaults (see Pipeline.identity).
_LATER_DEFAULTS: dict[str, Any] = {
    "fusion_weights": HYBRID_WEIGHTS,
    "chunk_size": None,
    "chunk_overlap": CHUNK_OVERLAP,
    "chunk_unit": "chars",
    "passage_score": "maxp",
    "max_length": None,
    "run_file": None,
}


def grid(
    embedders: Sequence[str] = (DEFAULT_EMBEDDER,),
    rerankers: Sequence[str | None] = (None,),
    ks: Sequence[int] = (DEFAULT_RERANK_K,),
    top_ns: Sequence[int | None] = (None,),
    *,
    bm25: bool = False,
    hybrid: bool = False,
    fusion_weights: tuple[float, float] = HYBRID_WEIGHTS,
    reranker_dtypes: Sequence[str] = ("float32",),
    truncate: bool = False,
    chunk_sizes: Sequence[int | None] = (None,),
    chunk_overlap: int = CHUNK_OVERLAP,
    chunk_unit: str = "chars",
    passage_score: str = "maxp",
    max_lengths: Sequence[int | None] = (None,),
    runs: Sequence[str] = (),
) -> list[Pipeline]:
    """Every combination of first stage, reranker (``None`` = no reranking), k, top_n and
    reranker precision. First stages: each embedder's dense retriever, BM25 with ``bm25``,
    with ``hybrid`` each embedder fused with BM25 (``fusion_weights``: dense, BM25), and each
    TREC run file of ``runs`` (another system's rankings, ``ragkit.runfile``). Dense first
    stages come once per ``chunk_sizes`` entry (``None``: whole documents; the others split into
    passages with ``chunk_overlap``, ``chunk_unit`` and ``passage_score``), reranked ones once per
    cross-encoder ``max_lengths`` entry (``None``: the model's maximum).

    First-stage-only pipelines appear once per first stage (k and top_n only matter to a
    reranker); combinations with ``top_n > k`` are left out (:func:`skipped_combinations`
    lists them, and a k for which every top_n is too large is an error).

    Example:
        >>> [p.name for p in grid(rerankers=[None, "cross-encoder/ms-marco-MiniLM-L-12-v2"], ks=[20])]
        ['dense(all-MiniLM-L6-v2)', 'dense(all-MiniLM-L6-v2) >> ms-marco-MiniLM-L-12-v2(k=20, top_n=20)']
    """
    if any(r is not None for r in rerankers):
        for k in ks:
            if not any(top_n is None or top_n <= k for top_n in top_ns):
                raise ConfigError(
                    f"No reranked pipeline with k={k}: every top_n ({', '.join(map(str, top_ns))}) is more than "
                    f"the {k} candidates the reranker sees. Use top_n <= k, or a larger k."
                )
    passages = {"chunk_overlap": chunk_overlap, "chunk_unit": chunk_unit, "passage_score": passage_score}
    stages: list[dict[str, Any]] = [{"retriever": "dense", "embedder": e, "chunk_size": c, **passages}
                                    for e in embedders for c in chunk_sizes]  # fmt: skip
    stages += [{"retriever": "bm25"}] if bm25 else []
    if hybrid:
        stages += [{"retriever": "hybrid", "embedder": e, "fusion_weights": fusion_weights} for e in embedders]
    stages += [{"retriever": "run", "run_file": str(path)} for path in runs]
    out: list[Pipeline] = []
    for first in stages:
        for reranker in rerankers:
            if reranker is None:
                out.append(Pipeline(**first))
                continue
            for k in ks:
                for top_n in top_ns:
                    if top_n is None or top_n <= k:
                        out += [Pipeline(**first, reranker=reranker, k=k, top_n=top_n, reranker_dtype=d,
                                         truncate=truncate, max_length=length)
                                for d in reranker_dtypes for length in max_lengths]  # fmt: skip
    return list(dict.fromkeys(out))


def skipped_combinations(ks: Sequence[int], top_ns: Sequence[int | None]) -> list[tuple[int, int]]:
    """The (k, top_n) combinations :func:`grid` leaves out because top_n is more than k.

    Example:
        >>> skipped_combinations([5, 20], [10])
        [(5, 10)]
    """
    return [(k, n) for k in ks for n in top_ns if n is not None and n > k]


# ----------------------------------------------------------------------------- the experiment


def _first_stage_key(p: Pipeline) -> tuple[Any, ...]:
    """What makes two pipelines' first stages the same: the kind and the options it reads
    (options it does not read are at their defaults, see ``Pipeline.__post_init__``)."""
    return (p.retriever, *(getattr(p, option) for option in p.kind.options))


def _reranker_key(p: Pipeline) -> tuple[Any, ...]:
    """What makes two pipelines' rerankers the same: the reranker and the options its family
    reads (the others are at their defaults)."""
    return (p.reranker, p.reranker_dtype, p.max_length)


@dataclass
class _Prepared:
    """An evaluation checked and set up, before any work: what ``experiment()`` and
    ``ragkit.plan.plan()`` share."""

    pipelines: list[Pipeline]
    settings: RunSettings
    cache: Cache
    client: Any
    devices: Sequence[str] | None
    key: str | None  # the result cache's key; None when something of the user's own cannot be cached

    def stored_result(self, collection: BeirCollection) -> EvaluationResult | None:
        """The whole result, when an identical call cached it."""
        if self.key is None:
            return None
        stored = self.cache.read("results", self.key,
                                 check=lambda data: _result_problem(data, collection, self.pipelines))  # fmt: skip
        if stored is None:
            return None
        result = EvaluationResult.from_dict(stored)
        result.meta["reused_result"] = True
        return result


def _prepared(
    collection: BeirCollection,
    pipelines: Sequence[Pipeline],
    *,
    measures: Sequence[str] = DEFAULT_MEASURES,
    baseline: int | str = 0,
    device: str = "auto",
    batch_size: int | None = None,
    engine: Literal["batched", "langchain"] = "batched",
    latency_queries: int = LATENCY_QUERIES,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    chroma_server: tuple[str, int] | None = None,
    devices: Sequence[str] | None = None,
) -> _Prepared:
    """Check an evaluation's input and settle its settings (see :func:`experiment`): every
    refusal comes here, before any index is built or model run."""
    pipelines = list(pipelines)
    if not pipelines:
        raise ConfigError("experiment() needs at least one pipeline.")
    # Every reranker is also measured against the first stage it reranks: add that first
    # stage alone where the grid lacks it (it costs no model pass: its run is computed anyway).
    for own in dict.fromkeys(p.own_first_stage() for p in pipelines if p.reranker):
        if own not in pipelines:
            pipelines.append(own)
    names = [p.name for p in pipelines]
    if len(set(names)) != len(names):
        raise ConfigError(f"Pipeline names must be unique; got {names}.")
    base_index = names.index(baseline) if isinstance(baseline, str) and baseline in names else baseline
    if isinstance(base_index, bool) or not isinstance(base_index, int) or not 0 <= base_index < len(pipelines):
        raise ConfigError(f"Baseline {baseline!r} is not one of the pipelines: {names}.")
    measures = [str(m) for m in parse_measures(measures)]
    if engine == "langchain" and any(p.chunk_size for p in pipelines):
        raise ConfigError(
            "engine='langchain' evaluates the documents LangChain's retrievers return, and on a passage index those "
            "are passages: use engine='batched' (the default) for passage pipelines, which scores documents by "
            "their passages."
        )
    settings = RunSettings(
        measures=tuple(measures),
        baseline=base_index,
        device=device,
        batch_size=batch_size,
        engine=engine,
        latency_queries=latency_queries,
        n_resamples=n_resamples,
        seed=seed,
    )
    device = resolve_device(settings.device)
    if devices is not None:
        from ragkit.loaders import check_devices

        devices = check_devices(devices)
    # Decided once, here, for every stage: by the devices that score (the workers, when there are any).
    settings = replace(settings, device=device, batch_size=settings.batch_size or rerank_batch_size(device, devices))
    # What a first stage would refuse once the work has begun (a run file naming documents the
    # collection does not hold) is refused now, before any index is built or model loaded.
    for p in {_first_stage_key(p): p for p in pipelines}.values():
        p.kind.check_input(collection, p)
    # So is a model that cannot load: a folder that is not a model, a Hub id offline and not cached.
    from ragkit.models import check_model

    for model, kind in sorted({m for p in pipelines for m in p.models()}):
        check_model(model, kind)  # type: ignore[arg-type]
    client = None
    if chroma_server is not None and any(p.embedder for p in pipelines):
        from ragkit.retrievers import connect_chroma

        client = connect_chroma(*chroma_server)
    cache = Cache()
    # A stage of the user's own without a fingerprint may change unseen: nothing of it is cached.
    cacheable = all(p.cacheable for p in pipelines)
    key = _result_key(collection, pipelines, settings) if cacheable else None
    return _Prepared(pipelines, settings, cache, client, devices, key)


def experiment(
    collection: BeirCollection,
    pipelines: Sequence[Pipeline],
    *,
    measures: Sequence[str] = DEFAULT_MEASURES,
    baseline: int | str = 0,
    device: str = "auto",
    batch_size: int | None = None,
    engine: Literal["batched", "langchain"] = "batched",
    latency_queries: int = LATENCY_QUERIES,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    use_cache: bool = True,
    show_progress: bool = True,
    chroma_server: tuple[str, int] | None = None,
    devices: Sequence[str] | None = None,
) -> EvaluationResult:
    """Run ``pipelines`` on ``collection`` and compare each with the baseline.

    Args:
        collection: a BEIR collection or a ragkit subset (``ragkit.load_beir``, ``make_subset``).
        pipelines: what to compare; names must be unique. The first stage of each reranked
            pipeline, alone, is added when it is missing: every reranker is compared with it.
        measures: ir-measures names; default nDCG@10, RR@10 (MRR@10), R@100.
        baseline: index or name of the pipeline the others are compared with.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; one device for every model.
        batch_size: cross-encoder batch size (default: ``settings.rerank_batch_size(device)``).
        engine: ``"batched"`` embeds all queries at once and pools every query's pairs into
            one length-sorted scoring stream, with on-disk caches; ``"langchain"`` runs each
            query through the LangChain retriever the notebooks teach. Both give the same runs.
        latency_queries: how many queries are timed one at a time, uncached, per pipeline.
        n_resamples: permutations and bootstrap samples.
        seed: seed of the resampling.
        use_cache: reuse what earlier runs cached under ``settings.cache_dir()``: the whole
            result of an identical call (same collection, queries, qrels, pipelines, models,
            settings, device and library versions), else first-stage runs, pair scores and
            latency timings (reused only on the same hardware, threads and versions). The
            report says what was reused and when it was measured; ``use_cache=False``
            computes and measures everything afresh and overwrites what was cached (the
            Chroma index is reused all the same, once verified).
        show_progress: progress bars while embedding, scoring and over pipelines.
        chroma_server: ``(host, port)`` of a Chroma server (``chroma run``) to hold the dense
            indexes, instead of the embedded Chroma in ragkit's cache; checked to answer
            before any work. Where the index lives never changes a result.
        devices: embed the corpus and score the pooled pairs in worker processes, one per
            device (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]`` on a many-core CPU), with the
            same vectors and scores as one process (``ragkit.loaders.multi_process_pool``);
            checked before any work. Latency is still timed one query at a time, in this process.

    The keyword arguments become one :class:`ragkit.settings.RunSettings`, which every stage
    reads and the result cache's key is computed from.

    Example::

        result = experiment(subset, grid(rerankers=[None, "cross-encoder/ms-marco-MiniLM-L-12-v2"]))
        result.table
    """
    prepared = _prepared(collection, pipelines, measures=measures, baseline=baseline, device=device,
                         batch_size=batch_size, engine=engine, latency_queries=latency_queries,
                         n_resamples=n_resamples, seed=seed, chroma_server=chroma_server, devices=devices)  # fmt: skip
    pipelines, settings, cache, client, devices = (prepared.pipelines, prepared.settings, prepared.cache,
                                                   prepared.client, prepared.devices)  # fmt: skip
    key = prepared.key
    if use_cache:
        stored = prepared.stored_result(collection)
        if stored is not None:
            return stored
    result = _run_experiment(
        collection,
        pipelines,
        settings,
        cache=cache,
        reuse=use_cache,
        show_progress=show_progress,
        client=client,
        devices=devices,
    )
    if key is not None:
        cache.write("results", key, result.to_dict())
    return result


def _result_problem(data: Any, collection: BeirCollection, pipelines: list[Pipeline]) -> str | None:
    """What is wrong with a stored result for this call, or ``None``."""
    result = EvaluationResult.from_dict(data)  # raises on anything that is not a result
    if list(result.table.index) != [p.name for p in pipelines]:
        return "it holds other pipelines"
    if result.meta["n_queries"] != len(collection.queries) or set(result.per_query["query_id"]) != set(
        collection.qrels
    ):
        return "it covers other queries"
    return None


def _result_key(collection: BeirCollection, pipelines: list[Pipeline], settings: RunSettings) -> str:
    """Everything an experiment's result depends on, cheap to compute: no model is loaded and
    no index opened, so that re-running an unchanged grid costs little more than the imports."""
    from ragkit.retrievers import HNSW

    models = sorted({m for p in pipelines for m, _ in p.models()})
    first_stages = dict.fromkeys(p.own_first_stage() for p in pipelines)
    return digest(
        "results",
        collection.name,  # the report names it: a copy under another name is another result
        collection.split,
        collection.fingerprint(),
        sorted(collection.queries.items()),
        sorted((q, sorted(d.items())) for q, d in collection.qrels.items()),
        [p.identity() for p in pipelines],
        # What a first stage depends on beyond its options (a run file's content).
        [p.kind.content(p) for p in first_stages if p.kind.content],
        asdict(settings),
        machine_state(settings.device),
        {m: model_state(m) for m in models},
        code_state(),
        FORMATS,
        HNSW,
    )


def _run_experiment(
    collection: BeirCollection,
    pipelines: list[Pipeline],
    settings: RunSettings,
    *,
    cache: Cache,
    reuse: bool,
    show_progress: bool,
    client: Any = None,
    devices: Sequence[str] | None = None,
) -> EvaluationResult:
    """Compute a result: first stages, runs, latency, measures, statistics. With ``reuse``,
    cached runs, pair scores and timings are read; fresh ones are written either way. Dense
    indexes live on ``client`` (a Chroma server) when one is given."""
    from tqdm.auto import tqdm

    query_ids = sorted(collection.queries)
    runs: dict[str, Run] = {}
    latency_rows: list[dict[str, Any]] = []
    latency_measured: dict[str, dict[str, Any]] = {}  # pipeline -> when its timings were taken, and if reused
    stages: dict[tuple[Any, ...], FirstStage] = {}
    candidates: dict[tuple[Any, ...], Hits] = {}

    def stage_of(p: Pipeline) -> FirstStage:
        """The first stage ``p`` names, built once per run (a hybrid's parts included)."""
        key = _first_stage_key(p)
        if key not in stages:
            stages[key] = p.kind.build(collection, p, context)
        return stages[key]

    def part(spec: Pipeline | StageSource | None = None, **options: Any) -> FirstStage:
        """A part of a composed first stage: a pipeline's first stage, the user's own stage, or
        the one pipeline options name; shared with the grid's own when it has the same."""
        if isinstance(spec, Pipeline):
            return stage_of(spec.own_first_stage())
        return stage_of(Pipeline(**options) if spec is None else Pipeline(retriever=spec))

    context = StageContext(settings.device, show_progress, client, devices, part, batch_size=settings.batch_size)

    # Each reranker built once; one that ranks documents as wholes cannot score passages.
    rerankers: dict[tuple[Any, ...], Reranker] = {}
    for p in pipelines:
        if p.reranker and _reranker_key(p) not in rerankers:
            rerankers[_reranker_key(p)] = _build_reranker(p, context)
        if p.chunk_size is not None and p.reranker and not isinstance(rerankers[_reranker_key(p)], PairScorer):
            raise ConfigError(
                f"{p.name}: this reranker ranks whole documents, and a passage pipeline scores a document by its "
                "passages. Use whole documents (no chunk_size) with it, or a cross-encoder or bi-encoder reranker."
            )

    pair_cache = cache.pair_scores()
    try:
        for key, p in {_first_stage_key(p): p for p in pipelines}.items():
            candidates[key] = _first_stage_run(stage_of(p), p.first_stage, collection, query_ids,
                                               _run_depth(p, pipelines), cache=cache, reuse=reuse)  # fmt: skip

        # A k sweep costs one scoring pass at its largest k: a smaller k's candidates are a
        # prefix of the larger one's, so scoring the deepest pipeline of each reranker first
        # leaves the others nothing to score.
        scored: dict[str, float] = {}  # pair scores computed in this run, whatever `reuse` says
        truncation: dict[str, dict[str, Any]] = {}  # reranked pipeline -> share of its pairs truncated
        throughput: dict[str, dict[str, Any]] = {}  # batched scoring passes timed in this run
        if settings.engine == "batched":
            for p in _deepest_reranked(pipelines):
                reranker = rerankers[_reranker_key(p)]
                if not isinstance(reranker, PairScorer):
                    continue  # each of its pipelines reranks query by query below
                cands = [c[: p.depth] for c in candidates[_first_stage_key(p)]]
                timing: dict[str, Any] = {}
                _rerank_batched(p, reranker, cands, collection, query_ids, pair_cache, scored, reuse=reuse,
                                show_progress=show_progress, timing=timing, devices=devices,
                                split=_passages_of(stages[_first_stage_key(p)]))  # fmt: skip
                if timing and timing["pairs"] == timing["of"]:  # every pair scored now: a whole pass, timed
                    throughput[p.name] = {"pairs": timing["pairs"], "queries": len(query_ids),
                                          "seconds": timing["seconds"], "measured": now()}  # fmt: skip

        bar = tqdm(pipelines, desc="pipelines", disable=not show_progress)
        for p in bar:
            bar.set_postfix_str(p.name)
            stage = stages[_first_stage_key(p)]
            reranker = rerankers.get(_reranker_key(p))
            split = _passages_of(stage)
            cands = [c[: p.depth] for c in candidates[_first_stage_key(p)]]
            if isinstance(reranker, PairScorer):
                truncation[p.name] = _truncation(p, reranker, cands, collection, query_ids, split)
            if settings.engine == "langchain":
                run = _langchain_run(p, stage, reranker, collection, query_ids, settings)
            elif isinstance(reranker, PairScorer):
                run = _rerank_batched(p, reranker, cands, collection, query_ids, pair_cache, scored, reuse=reuse,
                                      show_progress=show_progress, split=split, devices=devices)  # fmt: skip
            elif reranker is not None:
                run = _rerank_each(p, reranker, cands, collection, query_ids, cache=cache, reuse=reuse)
            else:
                run = {q: ranked_run(c) for q, c in zip(query_ids, cands)}
            runs[p.name] = run
            if settings.latency_queries > 0:
                rows, measured = _pipeline_latency(p, stage, reranker, collection,
                                                   query_ids[: settings.latency_queries], settings, cache=cache,
                                                   reuse=reuse, show_progress=show_progress)  # fmt: skip
                if rows:  # a run file's first stage alone has nothing to time here
                    latency_measured[p.name] = measured
                latency_rows += rows
    finally:
        pair_cache.close()

    parsed = parse_measures(settings.measures)
    per_query = pd.concat(
        [per_query_scores(collection.qrels, runs[p.name], parsed).assign(pipeline=p.name) for p in pipelines],
        ignore_index=True,
    )[["pipeline", "query_id", "measure", "value"]]
    names = [p.name for p in pipelines]
    table = aggregate(
        per_query,
        names,
        baseline=names[settings.baseline],
        first_stages={p.name: p.own_first_stage().name for p in pipelines if p.reranker},
        measures=list(settings.measures),
        n_resamples=settings.n_resamples,
        seed=settings.seed,
    )
    meta = _meta(collection, pipelines, settings)
    meta["latency_measured"] = latency_measured
    meta["throughput"] = throughput
    meta["truncated_pairs"] = truncation
    meta["reused_result"] = False
    for name, cut in truncation.items():
        table.loc[name, "truncated_pairs"] = cut["share"]
    timings = pd.DataFrame(latency_rows, columns=["pipeline", "query_id", *_steps(latency_rows)])
    return EvaluationResult(
        table=table, per_query=per_query, latency=_latency_table(latency_rows), runs=runs, meta=meta, timings=timings
    )


def pool(results: Sequence[EvaluationResult], *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> EvaluationResult:
    """Several collections' results as one: every query of every collection is one paired
    observation (query ids become ``<collection>/<query id>``), so the means are query-weighted
    and the tests and intervals use all the queries together. This is how evidence adds up
    when one small collection cannot detect the effect asked about; the tests stay valid under
    a different effect per collection, since every sign flip is within one query.

    The results must hold the same pipelines (in the same order) and share at least one
    measure; the pooled table keeps the measures they share. Latency is pooled over every
    query timed. Runs stay with each collection's own result.
    """
    results = list(results)
    if len(results) < 2:
        raise ConfigError("Pooling needs the results of at least two collections.")
    names = list(results[0].table.index)
    for r in results[1:]:
        if list(r.table.index) != names:
            raise ConfigError(
                f"Cannot pool {results[0].meta['collection']} with {r.meta['collection']}: they hold different "
                "pipelines. Evaluate the same grid on every collection."
            )
    measures = [m for m in results[0].measures if all(m in r.measures for r in results)]
    if not measures:
        raise ConfigError(
            "Cannot pool results that share no measure: evaluate every collection with the same --measures."
        )
    per_query = pd.concat(
        [r.per_query.assign(query_id=r.meta["collection"] + "/" + r.per_query["query_id"]) for r in results],
        ignore_index=True,
    )
    per_query = per_query[per_query["measure"].isin(measures)].reset_index(drop=True)
    timings = pd.concat(
        [r.timings.assign(query_id=r.meta["collection"] + "/" + r.timings["query_id"]) for r in results],
        ignore_index=True,
    )
    collections = [r.meta["collection"] for r in results]
    return _joined(
        results, per_query, timings, measures=measures, runs={}, n_resamples=n_resamples, seed=seed,
        collection=" + ".join(collections) + " (pooled)",
        split=", ".join(sorted({r.meta["split"] for r in results})),
        is_subset=any(r.meta["is_subset"] for r in results),
        collection_summary="pooled over " + "; ".join(r.meta["collection_summary"].split("\n")[0] for r in results),
        n_docs=sum(r.meta["n_docs"] for r in results),
        pooled=[{"collection": c, "n_queries": r.meta["n_queries"]} for c, r in zip(collections, results)],
    )  # fmt: skip


def concatenate(
    results: Sequence[EvaluationResult],
    *,
    collection: str,
    summary: str,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> EvaluationResult:
    """The results of one grid on disjoint sets of one collection's queries, as the result of
    all those queries: per-query scores and runs side by side, means, tests and intervals
    computed afresh over every query, latency over every query timed. This is how a sequential
    evaluation (``ragkit.until_decided``) adds a round of queries to those before without
    evaluating them again. The whole is named ``collection``, and ``summary`` describes the
    queries it holds.
    """
    results = list(results)
    names = list(results[0].table.index)
    ids = [q for r in results for q in r.per_query["query_id"].unique()]
    if any(list(r.table.index) != names for r in results) or len(set(ids)) != len(ids):
        raise ConfigError("Only results of the same pipelines on disjoint sets of queries can be put together.")
    throughput: dict[str, dict[str, Any]] = {}
    for r in results:  # the passes that scored every pair of their queries, added up
        for name, t in r.meta.get("throughput", {}).items():
            total = throughput.setdefault(name, {"pairs": 0, "queries": 0, "seconds": 0.0})
            total.update(pairs=total["pairs"] + t["pairs"], queries=total["queries"] + t["queries"],
                         seconds=total["seconds"] + t["seconds"], measured=t["measured"])  # fmt: skip
    runs = {name: {q: hits for r in results for q, hits in r.runs[name].items()} for name in names}
    return _joined(
        results, pd.concat([r.per_query for r in results], ignore_index=True),
        pd.concat([r.timings for r in results], ignore_index=True), measures=results[0].measures, runs=runs,
        n_resamples=n_resamples, seed=seed, collection=collection, collection_summary=summary, throughput=throughput,
    )  # fmt: skip


def _joined(
    results: Sequence[EvaluationResult],
    per_query: pd.DataFrame,
    timings: pd.DataFrame,
    *,
    measures: Sequence[str],
    runs: dict[str, Run],
    n_resamples: int,
    seed: int,
    **meta: Any,
) -> EvaluationResult:
    """Results over disjoint queries (``pool``, ``concatenate``) as one, from their per-query
    scores and timings put together: the table aggregated afresh, truncation pair-weighted,
    latency over every query timed (``measures``: the table's, in the meta too); the first
    result's ``meta``, with what they add up to and ``meta`` given."""
    first_stages = {n: f for n, f in results[0].table["first_stage"].items() if isinstance(f, str)}
    table = aggregate(per_query, list(results[0].table.index), baseline=results[0].baseline,
                      first_stages=first_stages, measures=list(measures), n_resamples=n_resamples,
                      seed=seed)  # fmt: skip
    joined = dict(results[0].meta)
    joined.update(
        measures=list(measures),
        n_queries=sum(r.meta["n_queries"] for r in results),
        truncated_pairs=_pooled_truncation(results, table),
        latency_measured={n: t for r in results for n, t in r.meta.get("latency_measured", {}).items()},
        reused_result=all(r.meta.get("reused_result") for r in results),
        **meta,
    )
    return EvaluationResult(table=table, per_query=per_query, latency=_latency_table(_timing_rows(timings)),
                            runs=runs, meta=joined, timings=timings)  # fmt: skip


def _pooled_truncation(results: Sequence[EvaluationResult], table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The share of each reranked pipeline's pairs truncated over several results, weighted by
    their pairs (as the pooled queries are), written into ``table`` too."""
    cuts = [r.meta.get("truncated_pairs", {}) for r in results]
    truncation = {}
    for name in table.index:
        if all(name in cut for cut in cuts):
            pairs = sum(cut[name]["pairs"] for cut in cuts)
            share = sum(cut[name]["share"] * cut[name]["pairs"] for cut in cuts) / pairs
            truncation[name] = {"share": share, "pairs": pairs}
            table.loc[name, "truncated_pairs"] = share
    return truncation


def _timing_rows(timings: pd.DataFrame) -> list[dict[str, Any]]:
    """A timings frame back as the rows it was made of (a step a pipeline lacks left out)."""
    return [{k: v for k, v in row.items() if pd.notna(v)} for row in timings.to_dict("records")]


def _run_depth(p: Pipeline, pipelines: Sequence[Pipeline]) -> int:
    """How deep ``p``'s first stage is run: as deep as the deepest pipeline sharing it needs."""
    return max(q.depth for q in pipelines if _first_stage_key(q) == _first_stage_key(p))


def _deepest_reranked(pipelines: Sequence[Pipeline]) -> list[Pipeline]:
    """For each first stage and reranker, the reranked pipeline of the largest ``k``: a smaller
    k's candidates are a prefix of its own, so scoring its pairs scores theirs."""
    deepest: dict[tuple[Any, ...], Pipeline] = {}
    for p in pipelines:
        group = (*_first_stage_key(p), *_reranker_key(p))
        if p.reranker and (group not in deepest or p.k > deepest[group].k):
            deepest[group] = p
    return list(deepest.values())


def _run_key(fingerprint: str, search_mode: Sequence[str], query_ids: list[str], texts: list[str], depth: int) -> str:
    """The key of a first stage's cached run: its identity, the queries by id and text (a run
    file ranks by id, the other stages by text) and the depth."""
    return digest("runs", FORMATS["runs"], fingerprint, list(zip(query_ids, texts)), depth, *search_mode)


def _first_stage_run(
    stage: FirstStage,
    name: str,
    collection: BeirCollection,
    query_ids: list[str],
    depth: int,
    *,
    cache: Cache,
    reuse: bool,
) -> Hits:
    """The stage's hits for every query at ``depth``, from the cache when it holds them; a
    fresh run is checked (``ragkit.stages.check_hits``) before anything is scored or cached."""
    texts = [collection.queries[q] for q in query_ids]
    n = len(query_ids)
    if stage.fingerprint is None:  # a stage of the user's own that cannot say when it changes
        return check_hits(name, stage.retrieve(list(zip(query_ids, texts)), depth), collection.corpus, n, depth,
                          stage.fills_depth)  # fmt: skip
    key = _run_key(stage.fingerprint, stage.search_mode, query_ids, texts, depth)
    if reuse:
        stored = cache.read(
            "runs", key, check=lambda h: hits_problem(h, collection.corpus, n, depth, stage.fills_depth)
        )
        if stored is not None:
            return [[(d, float(s)) for d, s in ranked] for ranked in stored]
    hits = stage.retrieve(list(zip(query_ids, texts)), depth)
    check_hits(name, hits, collection.corpus, n, depth, stage.fills_depth)
    cache.write("runs", key, hits)
    return hits


def _reranked_pairs(
    p: Pipeline, cands: Hits, collection: BeirCollection, query_ids: list[str], split: Any
) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
    """The (query, passage) pairs a reranked pipeline scores, and whose they are: (query
    position, candidate rank). Only the top k are reranked; deeper candidates keep their order."""
    pairs, owners = [], []
    for i, (q, hits) in enumerate(zip(query_ids, cands)):
        for rank, (d, _) in enumerate(hits[: p.k]):
            for text in split(d) if split is not None else [collection.text(d)]:
                pairs.append((collection.queries[q], text))
                owners.append((i, rank))
    return pairs, owners


def _truncation(
    p: Pipeline, reranker: PairScorer, cands: Hits, collection: BeirCollection, query_ids: list[str], split: Any
) -> dict[str, Any]:
    """The share of a reranked pipeline's pairs longer than its reranker reads."""
    pairs, _ = _reranked_pairs(p, cands, collection, query_ids, split)
    mask = reranker.truncated(pairs)
    return {"share": float(mask.mean()) if len(mask) else 0.0, "pairs": len(pairs)}


def _passages_of(stage: Any) -> Any:
    """Doc id -> its passages, from a first stage over passages (``ragkit.passages.PassageStage``:
    as its index split them); ``None`` for a stage of whole documents. Asked with a default,
    so that a user's own stage need not say."""
    return getattr(stage, "passages", None)


def _build_reranker(p: Pipeline, context: StageContext) -> Reranker:
    return p.reranker_family.build(p.reranker_model, p, context)  # type: ignore[union-attr]


def _rerank_batched(
    p: Pipeline,
    reranker: PairScorer,
    cands: Hits,
    collection: BeirCollection,
    query_ids: list[str],
    pair_cache: PairScoreCache,
    scored: dict[str, float],
    *,
    reuse: bool,
    show_progress: bool,
    timing: dict[str, Any] | None = None,
    split: Any = None,
    devices: Sequence[str] | None = None,
) -> Run:
    """Every query's candidates scored as one pooled stream, longest pairs first, committed to
    the pair-score cache chunk by chunk so an interrupted run resumes where it stopped.
    ``scored`` holds the scores this run computed (keyed by model and pair); the on-disk cache
    is read only with ``reuse``. ``timing`` receives how many pairs were scored now, of how
    many, in how many seconds (model load excluded). ``split`` turns a document id into its
    passages (a passage pipeline; each document then scores as its best passage's logit).
    ``devices``: score in one worker process per device, the pool kept for the whole pass.
    A reranker without a fingerprint (a user's own) has nothing read from or written to the
    on-disk cache."""
    from tqdm.auto import tqdm

    model_key = reranker.fingerprint
    cached = model_key is not None
    pairs, owners = _reranked_pairs(p, cands, collection, query_ids, split)
    keys = [PairScoreCache.pair_key(*pair) for pair in pairs]
    known = pair_cache.get(model_key, keys) if reuse and cached else {}
    known.update((k, scored[f"{model_key}{k}"]) for k in keys if cached and f"{model_key}{k}" in scored)
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        # The reranker's own scoring order, cut into chunks of whole batches, so the batches
        # (and so the scores, to the last bit) are those of a single call.
        order = reranker.scoring_order([pairs[i] for i in todo])
        todo = [todo[j] for j in order]
        batch = getattr(reranker, "batch_size", None) or 1
        chunk = max(1, SCORE_CHUNK // batch) * batch
        start_time = time.perf_counter()
        with reranker.workers(devices), tqdm(total=len(todo), desc="scoring pairs", unit="pair",
                                             disable=not show_progress) as bar:  # fmt: skip
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                logits = np.asarray(reranker.score([pairs[i] for i in part], devices=devices), dtype=np.float64)
                if logits.shape != (len(part),) or not np.isfinite(logits).all():
                    raise RagkitError(
                        f"Reranker of {p.name} returned {logits.shape} scores for {len(part)} pairs, or a score "
                        "that is not a finite number: a pair scorer gives one finite score per pair "
                        "(ragkit.stages.PairScorer)."
                    )
                fresh = {keys[i]: float(s) for i, s in zip(part, logits)}
                if cached:
                    pair_cache.put(model_key, fresh)
                    scored.update((f"{model_key}{k}", v) for k, v in fresh.items())
                known.update(fresh)
                bar.update(len(part))
        if timing is not None:
            timing.update(pairs=len(todo), of=len(keys), seconds=time.perf_counter() - start_time)
    # A document's logit is its best passage's (MaxP; a FirstP pipeline has only the first).
    best: dict[tuple[int, int], float] = {}
    for owner, key in zip(owners, keys):
        best[owner] = max(best.get(owner, -math.inf), known[key])
    run: Run = {}
    for i, (q, hits) in enumerate(zip(query_ids, cands)):
        reranked = [(d, best[(i, rank)]) for rank, (d, _) in enumerate(hits[: p.k])]
        run[q] = reranked_run(reranked, hits[p.k :], keep=p.top_n if p.truncate else None)
    return run


def _rerank_each(
    p: Pipeline,
    reranker: Reranker,
    cands: Hits,
    collection: BeirCollection,
    query_ids: list[str],
    *,
    cache: Cache,
    reuse: bool,
) -> Run:
    """A reranker that ranks a query's candidates as a whole (a user's LangChain compressor),
    called query by query; its rankings are checked (``ragkit.stages.check_reranked``) and,
    when it has a fingerprint, cached by it and the candidates."""
    label = p.reranker_family.label(p.reranker_model)  # type: ignore[union-attr, arg-type]
    asked = [[(d, collection.text(d)) for d, _ in hits[: p.k]] for hits in cands]
    key = None
    if reranker.fingerprint is not None:
        key = digest("reranked", FORMATS["runs"], reranker.fingerprint,
                     [(q, collection.queries[q], [d for d, _ in a]) for q, a in zip(query_ids, asked)])  # fmt: skip
    stored = None
    if reuse and key is not None:
        stored = cache.read("runs", key, check=lambda r: None if isinstance(r, list) and len(r) == len(asked) else
                            "it ranks other queries")  # fmt: skip
    if stored is not None:
        rankings = [[(d, float(s)) for d, s in ranked] for ranked in stored]
    else:
        rankings = [reranker.rerank(collection.queries[q], a) for q, a in zip(query_ids, asked)]
    for ranked, a in zip(rankings, asked):
        check_reranked(label, ranked, [d for d, _ in a])
    if key is not None and stored is None:
        cache.write("runs", key, rankings)
    # Candidates it dropped follow the ones it kept, in the first stage's order, as deeper ones do.
    return {q: reranked_run(ranked, hits, keep=p.top_n if p.truncate else None)
            for q, ranked, hits in zip(query_ids, rankings, cands)}  # fmt: skip


def reranked_run(
    reranked: Sequence[tuple[str, float]], rest: Sequence[tuple[str, float]] = (), *, keep: int | None = None
) -> dict[str, float]:
    """One query's evaluation run: the ``reranked`` candidates by descending logit (ties keep
    their first-stage order, as ``CrossEncoderReranker`` does), then the first stage's ``rest``
    in its order, scored one less per rank below the last logit; only the first ``keep``
    reranked documents when ``keep`` is given. Scores strictly decrease as 32-bit floats
    (:func:`ranked_run`).

    Example:
        >>> reranked_run([("a", 0.5), ("b", 2.0), ("c", 2.0)], [("d", 0.9)])
        {'b': 2.0, 'c': 1.9999998807907104, 'a': 0.5, 'd': -0.5}
    """
    ordered = sorted(reranked, key=lambda x: -x[1])
    if keep is not None:
        ordered, rest = ordered[:keep], ()
    floor = min((float(s) for _, s in ordered), default=0.0)
    seen = {d for d, _ in ordered}
    deeper = [(doc, floor - rank) for rank, (doc, _) in enumerate((d for d in rest if d[0] not in seen), start=1)]
    return ranked_run([*ordered, *deeper])


def langchain_retriever(
    p: Pipeline,
    stage: Any,
    device: str = "auto",
    batch_size: int | None = None,
    *,
    raw_scores: bool = False,
    reranker: Reranker | None = None,
) -> Any:
    """The LangChain retriever a pipeline stands for: the first stage's ``as_retriever(k)``,
    wrapped in a ``ContextualCompressionRetriever`` with the reranker's compressor
    (``Reranker.as_compressor``; for a cross-encoder ragkit's score-keeping one) that returns
    ``top_n`` documents (with logits as ``relevance_score`` when ``raw_scores``). ``reranker``:
    the one already built for ``p``, else it is built on ``device``."""
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = stage.as_retriever(k=p.k)
    if not p.reranker:
        return base
    if reranker is None:
        device = resolve_device(device)
        batch_size = batch_size or rerank_batch_size(device)
        reranker = _build_reranker(p, StageContext(device, False, None, None, _no_parts, batch_size=batch_size))
    compressor = reranker.as_compressor(p.top_n, raw_scores=raw_scores)
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)


def _no_parts(**options: Any) -> FirstStage:
    raise ConfigError("A reranker is built from its own options; it has no first-stage parts.")


def _langchain_run(
    p: Pipeline,
    stage: Any,
    reranker: Reranker | None,
    collection: BeirCollection,
    query_ids: list[str],
    settings: RunSettings,
) -> Run:
    if not p.reranker:
        retriever = stage.as_retriever(k=p.k)
        return {q: ranked_run([(d.metadata["doc_id"], _first_stage_score(d))
                               for d in retriever.invoke(collection.queries[q])]) for q in query_ids}  # fmt: skip
    # The compressor returns every reranked candidate (top_n=k) unless the run is truncated;
    # the first stage's deeper candidates come from a second, deeper retriever.
    evaluated = p if p.truncate else replace(p, top_n=p.k)
    retriever = langchain_retriever(evaluated, stage, settings.device, settings.batch_size, raw_scores=True,
                                    reranker=reranker)  # fmt: skip
    deeper = stage.as_retriever(k=p.depth) if p.depth > p.k else None
    run: Run = {}
    for q in query_ids:
        docs = retriever.invoke(collection.queries[q])
        scores = [d.metadata.get("relevance_score") for d in docs]
        if any(score is None for score in scores):  # a compressor that keeps no score: its order
            scores = [-rank for rank in range(len(docs))]
        reranked = [(d.metadata["doc_id"], float(score)) for d, score in zip(docs, scores)]
        rest = [(d.metadata["doc_id"], 0.0) for d in deeper.invoke(collection.queries[q])] if deeper else []
        run[q] = reranked_run(reranked, rest)
    return run


def _first_stage_score(doc: Any) -> float:
    """A first-stage document's score: its own (cosine, BM25), or, for a fused ranking, one
    that decreases with its fused rank (EnsembleRetriever keeps no fused score)."""
    return float(doc.metadata["score"]) if "score" in doc.metadata else -float(doc.metadata["fused_rank"])


# ----------------------------------------------------------------------------- latency


def _pipeline_latency(
    p: Pipeline,
    stage: Any,
    reranker: Reranker | None,
    collection: BeirCollection,
    query_ids: list[str],
    settings: RunSettings,
    *,
    cache: Cache,
    reuse: bool,
    show_progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-query stage timings, and when they were measured (``{"measured": date, "reused": bool}``).

    Timings of the same pipeline, queries and index on the same hardware, thread count and
    library versions are reused: re-measuring them would only add noise, and it is most of
    what re-running a grid that shares pipelines would cost. A stage of the user's own without
    a fingerprint is timed afresh every time."""
    if not p.cacheable:
        rows = _time_pipeline(p, stage, reranker, collection, query_ids, settings, show_progress=show_progress)
        return rows, {"measured": now(), "reused": False}
    key = _latency_key(p, stage.fingerprint, stage.search_mode, collection, query_ids, settings)
    if reuse:
        saved = cache.read("latency", key, check=lambda s: _latency_problem(s, query_ids))
        if saved is not None:
            rows = [{**row, "pipeline": p.name} for row in saved["rows"]]
            return rows, {"measured": saved["measured"], "reused": True}
    rows = _time_pipeline(p, stage, reranker, collection, query_ids, settings, show_progress=show_progress)
    measured = now()
    cache.write("latency", key, {"rows": rows, "measured": measured})
    return rows, {"measured": measured, "reused": False}


def _latency_key(
    p: Pipeline,
    fingerprint: str,
    search_mode: Sequence[str],
    collection: BeirCollection,
    query_ids: list[str],
    settings: RunSettings,
) -> str:
    """The key of a pipeline's cached timings: the pipeline, its first stage's identity
    (``fingerprint``, ``search_mode``), the queries timed by id and text, and what timings
    depend on beyond the work (the machine, the batch size, the reranker's model). One
    function, so that ``ragkit.plan`` looks timings up under the key the run writes them."""
    # top_n only cuts the scored list, so pipelines that differ in it cost the same to serve.
    return digest(
        "latency",
        FORMATS["latency"],
        {**p.identity(), "top_n": None},
        fingerprint,
        *search_mode,
        [(q, collection.queries[q]) for q in query_ids],
        machine_state(settings.device),
        settings.batch_size,
        model_state(p.reranker_model) if p.reranker_model else None,
        FORMATS["scoring"],
    )


def _latency_problem(saved: Any, query_ids: list[str]) -> str | None:
    rows = saved["rows"]
    if [row["query_id"] for row in rows] != query_ids:
        return "it times other queries"
    steps = [v for row in rows for k, v in row.items() if k not in ("pipeline", "query_id")]
    if any(not isinstance(v, float) or not v >= 0 for v in steps):
        return "a timing is not a duration"
    return None


def _time_pipeline(
    p: Pipeline,
    stage: FirstStage,
    reranker: Reranker | None,
    collection: BeirCollection,
    query_ids: list[str],
    settings: RunSettings,
    *,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Serve queries one at a time, uncached, and time each step, as a user's app would: the
    first stage's own steps (``FirstStage.timed_search``), the reranker's, and the total. A
    first stage that cannot be timed here (a run file) leaves only the reranker's step, and
    no total: what it cost its own system is not known."""
    split = _passages_of(stage)
    from tqdm.auto import tqdm

    rows = []
    for q in tqdm(query_ids, desc="timing queries", leave=False, disable=not show_progress):
        text = collection.queries[q]
        row: dict[str, Any] = {"pipeline": p.name, "query_id": q}
        t0 = time.perf_counter()
        timed = stage.timed_search(text, p.k)
        if timed is None:
            if reranker is None:
                return []  # nothing of this pipeline runs here
            hits = stage.retrieve([(q, text)], p.k)[0]
        else:
            hits, steps = timed
            row.update(steps)
        indexing = 0.0
        if reranker is not None:
            # A RAG system stores its passages (and what a scorer computes of them ahead, such as
            # a bi-encoder's vectors): that work is left out of the timings.
            t4 = time.perf_counter()
            candidates = [(d, t) for d, _ in hits for t in (split(d) if split else [collection.text(d)])]
            if isinstance(reranker, PairScorer):
                reranker.prepare([t for _, t in candidates])
            t5 = time.perf_counter()
            indexing = t5 - t4
            if isinstance(reranker, PairScorer):
                reranker.score([(text, t) for _, t in candidates])
            else:
                reranker.rerank(text, candidates)
            row["rerank"] = time.perf_counter() - t5
        if timed is not None:
            row["total"] = time.perf_counter() - t0 - indexing
        rows.append(row)
    return rows


def _steps(rows: list[dict[str, Any]]) -> list[str]:
    """The steps timed, in the order a query meets them: the first stages' own steps (each
    row in the order its stage's ``timed_search`` listed them, merged across stages), then the
    reranker's, then the total.

    Example:
        >>> _steps([{"bm25 search": 1.0, "total": 1.0},
        ...         {"embed query": 1.0, "vector search": 1.0, "bm25 search": 1.0, "fusion": 1.0}])
        ['embed query', 'vector search', 'bm25 search', 'fusion', 'total']
    """
    merged: list[str] = []
    for row in rows:
        at = 0
        for step in row:
            if step in ("pipeline", "query_id", "rerank", "total"):
                continue
            if step in merged:
                at = merged.index(step) + 1
            else:
                merged.insert(at, step)
                at += 1
    return [*merged, *(last for last in ("rerank", "total") if any(last in row for row in rows))]


_LATENCY_COLUMNS = ["pipeline", "stage", "p50_ms", "p50_ci_low", "p50_ci_high", "p95_ms", "p95_ci_low", "p95_ci_high",
                    "queries"]  # fmt: skip


def _latency_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per pipeline and stage, the median and 95th percentile of the milliseconds per query,
    each with its 95% bootstrap confidence interval, over the queries timed."""
    if not rows:
        return pd.DataFrame(columns=_LATENCY_COLUMNS)
    # One pipeline's stages stay together, in the order a query passes through them.
    df = pd.DataFrame(rows)
    stages = _steps(rows)
    df = df.melt(id_vars=["pipeline", "query_id"], value_vars=stages, var_name="stage", value_name="seconds").dropna()
    df["order"] = df["pipeline"].map({n: i for i, n in enumerate(dict.fromkeys(r["pipeline"] for r in rows))})
    df["stage_order"] = df["stage"].map({s: i for i, s in enumerate(stages)})
    df = df.sort_values(["order", "stage_order"], kind="stable")
    out = []
    for (_, pipeline, _, stage), seconds in df.groupby(["order", "pipeline", "stage_order", "stage"], sort=True):
        ms = 1000 * seconds["seconds"].to_numpy()
        row: dict[str, Any] = {"pipeline": pipeline, "stage": stage}
        for q in (50, 95):
            row[f"p{q}_ms"] = float(np.percentile(ms, q))
            row[f"p{q}_ci_low"], row[f"p{q}_ci_high"] = percentile_ci(ms, q)
        row["queries"] = len(ms)
        out.append(row)
    return pd.DataFrame(out, columns=_LATENCY_COLUMNS)


def _meta(collection: BeirCollection, pipelines: list[Pipeline], settings: RunSettings) -> dict[str, Any]:
    from ragkit.models import CATALOGUE, model_revision

    models = sorted({m for p in pipelines for m, _ in p.models()})
    return {
        "collection": collection.name,
        "split": collection.split,
        "is_subset": collection.is_subset,
        "collection_summary": collection.summary(),
        "n_queries": len(collection.queries),
        "n_docs": len(collection.corpus),
        # As JSON reads them back (tuples as lists), so a reused result's meta equals a fresh one's.
        "pipelines": [json.loads(json.dumps({"name": p.name, **p.fields()})) for p in pipelines],
        "baseline": pipelines[settings.baseline].name,
        "measures": list(settings.measures),
        "device": settings.device,
        "device_name": device_description(settings.device),
        "engine": settings.engine,
        "batch_size": settings.batch_size,
        "model_revisions": {m: model_revision(m) for m in models},
        # Models ragkit's catalogue does not know: no query instruction, their own maximum length.
        "uncatalogued_models": [m for m in models if m not in CATALOGUE],
        "versions": versions(),
        "date": now(),
    }


__all__ = [
    "Pipeline",
    "Rerank",
    "RunSettings",
    "concatenate",
    "experiment",
    "grid",
    "langchain_retriever",
    "pool",
    "ranked_run",
    "reranked_run",
    "skipped_combinations",
]
