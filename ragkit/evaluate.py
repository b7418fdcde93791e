"""The evaluation engine: compare retrieval pipelines on one collection, honestly.

``experiment()`` runs several pipelines on the same queries and qrels and returns an
``Experiment``: an aggregate table with a baseline, per-measure deltas, paired significance
tests (t-test and randomization, Holm-corrected), bootstrap confidence intervals of each delta
and win/tie/loss counts; per-query scores; per-stage latency; and the runs themselves.
Measures come from ``ir_measures`` only.

Example:
    >>> from ragkit import Pipeline, experiment, load_beir, make_subset
    >>> subset = make_subset(load_beir("scifact"), 20)
    >>> result = experiment(subset, [Pipeline(), Pipeline(reranker="cross-encoder/ms-marco-MiniLM-L-12-v2")])
    >>> result.summary()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import pickle
import platform
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import ir_measures
import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from ragkit.data import BeirCollection
from ragkit.errors import RagkitError
from ragkit.loaders import resolve_device
from ragkit.models import model_revision
from ragkit.rerank import load_reranker, score_pairs
from ragkit.retrievers import BM25Retriever, build_chroma_index
from ragkit.settings import (
    DEFAULT_EMBEDDER,
    DEFAULT_MEASURES,
    DEFAULT_RERANK_K,
    FIRST_STAGE_DEPTH,
    LATENCY_QUERIES,
    N_RESAMPLES,
    RERANK_DTYPES,
    SIGNIFICANCE_LEVEL,
    cache_dir,
    rerank_batch_size,
)

Run = dict[str, dict[str, float]]  # query id -> doc id -> score, as ir_measures and TREC expect
# Bumped when how score_pairs batches changes: scores then differ in float rounding, and a cache
# filled by the old way would make a run disagree with a fresh one in the last digits.
_SCORING_FORMAT = 3


def _short(model_id: str) -> str:
    return model_id.rstrip("/").split("/")[-1]


@dataclass(frozen=True)
class Pipeline:
    """One retrieval pipeline: a first stage (dense or BM25), optionally reranked.

    Args:
        retriever: ``"dense"`` (Chroma + an embedder) or ``"bm25"``.
        embedder: Hub id of the embedder for ``"dense"``.
        reranker: Hub id of a cross-encoder, or ``None`` for the first stage alone.
        k: candidates taken from the first stage: the documents returned when there is no
            reranker (default 100, so that R@100 means something), the documents reranked
            when there is one (default ``settings.DEFAULT_RERANK_K``).
        top_n: reranked documents returned, as LangChain's ``CrossEncoderReranker(top_n=...)``;
            default ``k``. A reranked run holds exactly these documents, so its R@100 is
            bounded by the first stage's recall at ``k``.
        reranker_dtype: the cross-encoder's weight precision, one of ``settings.RERANK_DTYPES``
            (default float32). bfloat16 is faster on GPUs and on CPUs with bf16 support, and
            changes scores slightly: compare both as two pipelines to see what it costs.

    Example:
        >>> Pipeline(reranker="cross-encoder/ms-marco-MiniLM-L-12-v2", k=50).name
        'dense(all-MiniLM-L6-v2) >> ms-marco-MiniLM-L-12-v2(k=50, top_n=50)'
    """

    retriever: Literal["dense", "bm25"] = "dense"
    embedder: str | None = DEFAULT_EMBEDDER
    reranker: str | None = None
    k: int | None = None
    top_n: int | None = None
    reranker_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.retriever not in ("dense", "bm25"):
            raise RagkitError(f"Unknown retriever {self.retriever!r}: use 'dense' or 'bm25'.")
        if self.retriever == "dense" and not self.embedder:
            raise RagkitError("A dense pipeline needs an embedder (a Hub id or a local folder).")
        if self.retriever == "bm25":
            object.__setattr__(self, "embedder", None)
        k = self.k if self.k is not None else (DEFAULT_RERANK_K if self.reranker else FIRST_STAGE_DEPTH)
        top_n = self.top_n if self.top_n is not None else k
        if k < 1 or top_n < 1:
            raise RagkitError(f"k and top_n must be at least 1 (got k={k}, top_n={top_n}).")
        if top_n > k:
            raise RagkitError(f"top_n={top_n} is more than the k={k} candidates the reranker sees.")
        if self.reranker_dtype not in RERANK_DTYPES:
            raise RagkitError(f"reranker_dtype must be one of {', '.join(RERANK_DTYPES)}, got {self.reranker_dtype!r}.")
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "top_n", top_n if self.reranker else k)
        if not self.reranker:
            object.__setattr__(self, "reranker_dtype", "float32")

    @property
    def first_stage(self) -> str:
        """Name of the first stage alone, e.g. ``dense(all-MiniLM-L6-v2)`` or ``bm25``."""
        return "bm25" if self.retriever == "bm25" else f"dense({_short(self.embedder)})"

    @property
    def name(self) -> str:
        """A readable, unique name used in tables, plots and run files."""
        if not self.reranker:
            return self.first_stage if self.k == FIRST_STAGE_DEPTH else f"{self.first_stage}(k={self.k})"
        dtype = "" if self.reranker_dtype == "float32" else f"[{self.reranker_dtype}]"
        return f"{self.first_stage} >> {_short(self.reranker)}{dtype}(k={self.k}, top_n={self.top_n})"


def grid(
    embedders: Sequence[str] = (DEFAULT_EMBEDDER,),
    rerankers: Sequence[str | None] = (None,),
    ks: Sequence[int] = (DEFAULT_RERANK_K,),
    top_ns: Sequence[int | None] = (None,),
    bm25: bool = False,
    reranker_dtypes: Sequence[str] = ("float32",),
) -> list[Pipeline]:
    """Every combination of first stage, reranker (``None`` = no reranking), k, top_n and
    reranker precision.

    First-stage-only pipelines appear once per first stage (k and top_n only matter to a
    reranker); combinations with ``top_n > k`` are left out.

    Example:
        >>> [p.name for p in grid(rerankers=[None, "cross-encoder/ms-marco-MiniLM-L-12-v2"], ks=[20])]
        ['dense(all-MiniLM-L6-v2)', 'dense(all-MiniLM-L6-v2) >> ms-marco-MiniLM-L-12-v2(k=20, top_n=20)']
    """
    stages = [("dense", e) for e in embedders] + ([("bm25", None)] if bm25 else [])
    out: list[Pipeline] = []
    for retriever, embedder in stages:
        for reranker in rerankers:
            if reranker is None:
                out.append(Pipeline(retriever, embedder))
                continue
            for k in ks:
                for top_n in top_ns:
                    if top_n is None or top_n <= k:
                        out += [Pipeline(retriever, embedder, reranker, k, top_n, d) for d in reranker_dtypes]
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- statistics


def paired_comparison(base: np.ndarray, other: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> dict[str, float]:
    """Compare two pipelines' per-query scores on the same queries.

    Returns the mean delta (``other - base``), its 95% bootstrap confidence interval
    (percentile, resampling queries), the two-sided paired t-test p-value and the two-sided
    paired randomization (sign-flip) test p-value, and win/tie/loss counts.

    Example:
        >>> r = paired_comparison(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.3, 0.4, 0.5]), n_resamples=1000)
        >>> round(r["delta"], 3), r["wins"], r["losses"]
        (0.1, 4, 0)
    """
    diff = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    n = len(diff)
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, n))
    observed = abs(diff.mean())
    # The +1s count the observed assignment itself, so p is never exactly 0.
    p_perm = (np.sum(np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12) + 1) / (n_resamples + 1)
    p_t = float(stats.ttest_rel(other, base).pvalue) if np.any(diff != 0) else 1.0
    return {
        "delta": float(diff.mean()),
        "ci_low": float(np.percentile(boot, 2.5)),
        "ci_high": float(np.percentile(boot, 97.5)),
        "p_ttest": p_t,
        "p_perm": float(p_perm),
        "wins": int(np.sum(diff > 0)),
        "ties": int(np.sum(diff == 0)),
        "losses": int(np.sum(diff < 0)),
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return [round(float(x), 12) for x in out]


def mean_ci(values: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap confidence interval of a mean over queries."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def parse_measures(names: Sequence[str]) -> list[Any]:
    """ir-measures objects for names such as ``nDCG@10``, ``RR@10``, ``R@100``, ``P@5``.

    Example:
        >>> [str(m) for m in parse_measures(["nDCG@10", "RR@10"])]
        ['nDCG@10', 'RR@10']
    """
    out = []
    for name in names:
        try:
            out.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise RagkitError(
                f"Unknown measure {name!r} ({exc}). Use an ir-measures name such as nDCG@10, RR@10, "
                "R@100, P@5, AP@100 (see https://ir-measur.es/en/latest/measures.html)."
            ) from exc
    return out


def per_query_scores(qrels: dict[str, dict[str, int]], run: Run, measures: Sequence[Any]) -> pd.DataFrame:
    """One row per (query, measure) for every judged query; a query the run misses scores 0,
    as trec_eval's ``-c`` option counts it."""
    values = {(m.query_id, str(m.measure)): m.value for m in ir_measures.iter_calc(measures, qrels, run)}
    rows = [(qid, str(m), values.get((qid, str(m)), 0.0)) for qid in sorted(qrels) for m in measures]
    return pd.DataFrame(rows, columns=["query_id", "measure", "value"])


# ----------------------------------------------------------------------------- caches


class PairScoreCache:
    """Cross-encoder scores on disk, keyed on the model configuration and the exact pair text,
    so that changing top_n or re-running a grid never scores a pair twice."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (model TEXT, pair TEXT, score REAL, PRIMARY KEY (model, pair))")

    @staticmethod
    def pair_key(query: str, passage: str) -> str:
        return hashlib.sha256(f"{query}\x1f{passage}".encode()).hexdigest()

    def get(self, model_key: str, keys: Sequence[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(
                f"SELECT pair, score FROM scores WHERE model = ? AND pair IN ({marks})", [model_key, *chunk]))
        return found

    def put(self, model_key: str, items: dict[str, float]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
                                 [(model_key, k, float(v)) for k, v in items.items()])

    def close(self) -> None:
        self._db.close()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a cache file so that a half-written one is never read back (an error, Ctrl-C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------- the experiment


@dataclass
class Experiment:
    """What ``experiment()`` returns.

    Attributes:
        table: one row per pipeline: each measure, and against the baseline its delta, the
            delta's 95% CI, t-test and randomization p-values (raw and Holm-corrected) and
            win/tie/loss counts.
        per_query: long table of (pipeline, query_id, measure, value).
        latency: per pipeline and stage (embed query, vector search, rerank, total), p50 and
            p95 milliseconds over queries timed one at a time.
        runs: pipeline name -> query id -> doc id -> score.
        meta: collection, subset flag, device, model revisions, versions, date.
    """

    table: pd.DataFrame
    per_query: pd.DataFrame
    latency: pd.DataFrame
    runs: dict[str, Run]
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self, measure: str | None = None) -> pd.DataFrame:
        """A narrow table for one measure (default: the first): value, delta, CI, p, W/T/L."""
        m = measure or self.meta["measures"][0]
        cols = [m] + [f"{m} {c}" for c in ("delta", "ci_low", "ci_high", "p_perm_holm", "wins", "ties", "losses")]
        out = self.table[cols].copy()
        out.columns = [m, "Δ", "CI low", "CI high", "p (Holm)", "wins", "ties", "losses"]
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the report folder (CSV, JSON, TREC runs, Markdown, plots); see ``ragkit.report``."""
        from ragkit.report import write_report

        return write_report(self, folder)


def _first_stage_key(p: Pipeline) -> tuple[str, str | None]:
    return (p.retriever, p.embedder)


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
) -> Experiment:
    """Run ``pipelines`` on ``collection`` and compare each with the baseline.

    Args:
        collection: a BEIR collection or a ragkit subset (``ragkit.load_beir``, ``make_subset``).
        pipelines: what to compare; names must be unique.
        measures: ir-measures names; default nDCG@10, RR@10 (MRR@10), R@100.
        baseline: index or name of the pipeline the others are compared with.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; one device for every model.
        batch_size: cross-encoder batch size (default: ``settings.rerank_batch_size(device)``).
        engine: ``"batched"`` embeds all queries at once and pools every query's pairs into
            one length-sorted scoring stream, with on-disk caches; ``"langchain"`` runs each
            query through the LangChain retriever the notebooks teach. Both give the same runs.
        latency_queries: how many queries are timed one at a time, uncached, per pipeline.
        n_resamples: permutations and bootstrap samples.
        use_cache: reuse what earlier runs cached under ``settings.cache_dir()``: the whole
            result of an identical call (same collection, queries, qrels, pipelines, models,
            settings, device and library versions), else first-stage runs, pair scores and
            latency timings (reused only on the same hardware, threads and versions). The
            report says what was reused and when it was measured; ``use_cache=False``
            computes and measures everything afresh (the Chroma index is reused all the same).

    Example:
        >>> result = experiment(subset, grid(rerankers=[None, "cross-encoder/ms-marco-MiniLM-L-12-v2"]))  # doctest: +SKIP
        >>> result.table  # doctest: +SKIP
    """
    pipelines = list(pipelines)
    if not pipelines:
        raise RagkitError("experiment() needs at least one pipeline.")
    names = [p.name for p in pipelines]
    if len(set(names)) != len(names):
        raise RagkitError(f"Pipeline names must be unique; got {names}.")
    base_index = names.index(baseline) if isinstance(baseline, str) and baseline in names else baseline
    if not isinstance(base_index, int) or not 0 <= base_index < len(pipelines):
        raise RagkitError(f"Baseline {baseline!r} is not one of the pipelines: {names}.")
    parsed = parse_measures(measures)
    device = resolve_device(device)
    batch_size = rerank_batch_size(device) if batch_size is None else batch_size
    root = cache_dir()
    saved = None
    if use_cache:
        key = _experiment_key(collection, pipelines, [str(m) for m in parsed], base_index, device, batch_size, engine,
                              latency_queries, n_resamples, seed)
        saved = root / "experiments" / f"{key}.pkl"
        if saved.is_file():
            with saved.open("rb") as f:
                result: Experiment = pickle.load(f)
            result.meta["reused_result"] = True
            return result
    result = _run_experiment(collection, pipelines, parsed, base_index, device, batch_size, engine, latency_queries,
                             n_resamples, seed, root if use_cache else None, show_progress)
    if saved is not None:
        _write_atomically(saved, pickle.dumps(result))
    return result


def _experiment_key(collection: BeirCollection, pipelines: list[Pipeline], measures: list[str], base_index: int,
                    device: str, batch_size: int, engine: str, latency_queries: int, n_resamples: int,
                    seed: int) -> str:
    """Everything an experiment's result depends on, cheap to compute: no model is loaded and
    no index opened, so that re-running an unchanged grid costs little more than the imports."""
    from ragkit import retrievers

    models = sorted({m for p in pipelines for m in (p.embedder, p.reranker) if m})
    return _digest("experiment", collection.fingerprint(), sorted(collection.queries.items()),
                   sorted((q, sorted(d.items())) for q, d in collection.qrels.items()),
                   [asdict(p) for p in pipelines], measures, base_index, _machine_state(device), batch_size,
                   engine, latency_queries, n_resamples, seed, {m: _model_state(m) for m in models}, _code_state(),
                   _SCORING_FORMAT, retrievers._INDEX_FORMAT, retrievers._HNSW)


def _machine_state(device: str) -> tuple[Any, ...]:
    """What timings depend on besides the work itself: device, CPU or GPU model, torch
    threads and library versions. torch is already imported by ``resolve_device``."""
    import torch

    return device, device_description(device), torch.get_num_threads(), versions()


def _code_state() -> str:
    """A digest of ragkit's own source: a stored result answers only the code that computed
    it, so an edit to an editable install (whose version number stays put) recomputes."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _model_state(model_id: str) -> Any:
    """A model's identity for cache keys: its revision, or for a local folder (whose revision
    is just "local") the names, sizes and modification times of its files, so retraining a
    model in place is noticed."""
    folder = Path(model_id)
    if not folder.is_dir():
        return model_revision(model_id)
    return sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.rglob("*") if f.is_file())


def _run_experiment(collection: BeirCollection, pipelines: list[Pipeline], parsed: list[Any], base_index: int,
                    device: str, batch_size: int, engine: str, latency_queries: int, n_resamples: int, seed: int,
                    root: Path | None, show_progress: bool) -> Experiment:
    names = [p.name for p in pipelines]
    query_ids = sorted(collection.queries)
    query_texts = [collection.queries[q] for q in query_ids]

    runs: dict[str, Run] = {}
    latency_rows: list[dict[str, Any]] = []
    latency_measured: dict[str, dict[str, Any]] = {}  # pipeline -> when its timings were taken, and if reused
    stages: dict[tuple[str, str | None], Any] = {}
    candidates: dict[tuple[str, str | None], list[list[tuple[str, float]]]] = {}
    pair_cache = PairScoreCache(root / "pair_scores.sqlite") if root is not None else None
    try:
        for key in dict.fromkeys(_first_stage_key(p) for p in pipelines):
            depth = max(p.k for p in pipelines if _first_stage_key(p) == key)
            stage = _build_first_stage(collection, key, device, show_progress)
            stages[key] = stage
            candidates[key] = _first_stage_run(stage, key, query_texts, depth, root)

        bar = tqdm(pipelines, desc="pipelines", disable=not show_progress)
        for p in bar:
            bar.set_postfix_str(p.name)
            stage = stages[_first_stage_key(p)]
            if engine == "langchain":
                run = _langchain_run(p, stage, collection, query_ids, device, batch_size)
            else:
                cands = [c[:p.k] for c in candidates[_first_stage_key(p)]]
                if p.reranker:
                    run = _rerank_batched(p, cands, collection, query_ids, device, batch_size, pair_cache, show_progress)
                else:
                    run = {q: dict(c) for q, c in zip(query_ids, cands)}
            runs[p.name] = run
            if latency_queries > 0:
                rows, latency_measured[p.name] = _pipeline_latency(p, stage, collection, query_ids[:latency_queries],
                                                                   device, batch_size, root)
                latency_rows += rows
    finally:
        if pair_cache is not None:
            pair_cache.close()

    per_query = pd.concat(
        [per_query_scores(collection.qrels, runs[p.name], parsed).assign(pipeline=p.name) for p in pipelines],
        ignore_index=True,
    )[["pipeline", "query_id", "measure", "value"]]
    table = _aggregate(per_query, names, base_index, [str(m) for m in parsed], n_resamples, seed)
    latency = _latency_table(latency_rows)
    meta = _meta(collection, pipelines, names[base_index], [str(m) for m in parsed], device, engine, batch_size)
    meta["latency_measured"] = latency_measured
    meta["reused_result"] = False
    return Experiment(table=table, per_query=per_query, latency=latency, runs=runs, meta=meta)


def _build_first_stage(collection: BeirCollection, key: tuple[str, str | None], device: str, show_progress: bool) -> Any:
    retriever, embedder = key
    documents = collection.documents()
    if retriever == "bm25":
        return BM25Retriever.from_documents(documents)
    return build_chroma_index(documents, embedder, model_kwargs={"device": device}, show_progress=show_progress)


def _first_stage_run(stage: Any, key: tuple[str, str | None], queries: list[str], depth: int,
                     root: Path | None) -> list[list[tuple[str, float]]]:
    path = None
    if root is not None:
        path = root / "runs" / f"{_digest(key, stage.fingerprint, queries, depth)}.json"
        if path.is_file():
            return [[(d, s) for d, s in hits] for hits in json.loads(path.read_text())]
    hits = stage.search(queries, depth)
    if path is not None:
        _write_atomically(path, json.dumps(hits).encode())
    return hits


def _reranker(p: Pipeline, device: str) -> Any:
    return load_reranker(p.reranker, device, p.reranker_dtype)


def _rerank_batched(p: Pipeline, cands: list[list[tuple[str, float]]], collection: BeirCollection,
                    query_ids: list[str], device: str, batch_size: int, cache: PairScoreCache | None,
                    show_progress: bool) -> Run:
    model = _reranker(p, device)
    model_key = _digest(p.reranker, _model_state(p.reranker), device, model.client.max_seq_length, _SCORING_FORMAT,
                        p.reranker_dtype)
    pairs = [(collection.queries[q], collection.text(d)) for q, hits in zip(query_ids, cands) for d, _ in hits]
    keys = [PairScoreCache.pair_key(*pair) for pair in pairs]
    known = cache.get(model_key, keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        scores = score_pairs(model, [pairs[i] for i in todo], batch_size=batch_size, show_progress=show_progress)
        fresh = {keys[i]: float(s) for i, s in zip(todo, scores)}
        if cache is not None:
            cache.put(model_key, fresh)
        known.update(fresh)
    run: Run = {}
    flat = iter(keys)
    for q, hits in zip(query_ids, cands):
        scored = [(d, known[next(flat)]) for d, _ in hits]
        # A stable sort keeps first-stage order among equal scores, as CrossEncoderReranker does.
        scored.sort(key=lambda x: -x[1])
        run[q] = dict(scored[:p.top_n])
    return run


def langchain_retriever(p: Pipeline, stage: Any, device: str = "auto", batch_size: int | None = None) -> Any:
    """The LangChain retriever a pipeline stands for: the first stage's ``as_retriever(k)``,
    wrapped in a ``ContextualCompressionRetriever`` with ragkit's score-keeping reranker."""
    from ragkit.rerank import reranking_retriever

    base = stage.as_retriever(k=p.k)
    if not p.reranker:
        return base
    return reranking_retriever(base, _reranker(p, resolve_device(device)), top_n=p.top_n, batch_size=batch_size)


def _langchain_run(p: Pipeline, stage: Any, collection: BeirCollection, query_ids: list[str], device: str,
                   batch_size: int) -> Run:
    retriever = langchain_retriever(p, stage, device, batch_size)
    score_key = "relevance_score" if p.reranker else "score"
    run: Run = {}
    for q in query_ids:
        docs = retriever.invoke(collection.queries[q])
        run[q] = {d.metadata["doc_id"]: float(d.metadata[score_key]) for d in docs}
    return run


def _pipeline_latency(p: Pipeline, stage: Any, collection: BeirCollection, query_ids: list[str], device: str,
                      batch_size: int, root: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-query stage timings, and when they were measured (``{"measured": date, "reused": bool}``).

    With a cache ``root``, timings of the same pipeline, queries and index on the same
    hardware, thread count and library versions are reused: re-measuring them would only add
    noise, and it is most of what re-running a grid that shares pipelines would cost."""
    path = None
    if root is not None:
        # top_n only cuts the scored list, so pipelines that differ in it cost the same to serve.
        key = _digest({**asdict(p), "top_n": None}, stage.fingerprint, [(q, collection.queries[q]) for q in query_ids],
                      _machine_state(device), batch_size, _model_state(p.reranker) if p.reranker else None,
                      _SCORING_FORMAT)
        path = root / "latency" / f"{key}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            return saved["rows"], {"measured": saved["measured"], "reused": True}
    rows = _time_pipeline(p, stage, collection, query_ids, device, batch_size)
    measured = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if path is not None:
        _write_atomically(path, json.dumps({"rows": rows, "measured": measured}).encode())
    return rows, {"measured": measured, "reused": False}


def _time_pipeline(p: Pipeline, stage: Any, collection: BeirCollection, query_ids: list[str], device: str,
                   batch_size: int) -> list[dict[str, Any]]:
    """Serve queries one at a time, uncached, and time each stage, as a user's app would."""
    model = _reranker(p, device) if p.reranker else None
    rows = []
    for q in query_ids:
        text = collection.queries[q]
        row: dict[str, Any] = {"pipeline": p.name, "query_id": q}
        t0 = time.perf_counter()
        if p.retriever == "dense":
            vectors = stage.embed_queries([text])
            t1 = time.perf_counter()
            hits = stage.search_by_vector(vectors, p.k)[0]
            row["embed query"], row["vector search"] = t1 - t0, time.perf_counter() - t1
        else:
            hits = stage.search([text], p.k)[0]
            row["bm25 search"] = time.perf_counter() - t0
        if model is not None:
            t2 = time.perf_counter()
            score_pairs(model, [(text, collection.text(d)) for d, _ in hits], batch_size=batch_size)
            row["rerank"] = time.perf_counter() - t2
        row["total"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def _latency_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=["pipeline", "stage", "p50_ms", "p95_ms", "queries"])
    # One pipeline's stages stay together, in the order a query passes through them.
    df = pd.DataFrame(rows)
    stages = [c for c in ("embed query", "vector search", "bm25 search", "rerank", "total") if c in df]
    df = df.melt(id_vars=["pipeline", "query_id"], value_vars=stages, var_name="stage", value_name="seconds").dropna()
    df["order"] = df["pipeline"].map({n: i for i, n in enumerate(dict.fromkeys(r["pipeline"] for r in rows))})
    df["stage_order"] = df["stage"].map({s: i for i, s in enumerate(stages)})
    df = df.sort_values(["order", "stage_order"], kind="stable")
    out = df.groupby(["order", "pipeline", "stage_order", "stage"], sort=True)["seconds"].agg(
        p50_ms=lambda s: 1000 * float(np.percentile(s, 50)),
        p95_ms=lambda s: 1000 * float(np.percentile(s, 95)),
        queries="count",
    )
    return out.reset_index().drop(columns=["order", "stage_order"])


def _aggregate(per_query: pd.DataFrame, names: list[str], base_index: int, measures: list[str], n_resamples: int,
               seed: int) -> pd.DataFrame:
    wide = per_query.pivot_table(index=["measure", "query_id"], columns="pipeline", values="value")
    base_name = names[base_index]
    rows: dict[str, dict[str, Any]] = {n: {"baseline": n == base_name} for n in names}
    for m in measures:
        scores = wide.loc[m]
        for n in names:
            rows[n][m] = float(scores[n].mean())
            lo, hi = mean_ci(scores[n].to_numpy(), n_resamples=n_resamples, seed=seed)
            rows[n][f"{m} mean_ci_low"], rows[n][f"{m} mean_ci_high"] = lo, hi
        others = [n for n in names if n != base_name]
        results = {n: paired_comparison(scores[base_name].to_numpy(), scores[n].to_numpy(),
                                        n_resamples=n_resamples, seed=seed) for n in others}
        # Holm controls the family-wise error over the pipelines compared with one baseline.
        adjusted_t = holm([results[n]["p_ttest"] for n in others]) if others else []
        adjusted_p = holm([results[n]["p_perm"] for n in others]) if others else []
        for n, at, ap in zip(others, adjusted_t, adjusted_p):
            r = results[n]
            rows[n].update({f"{m} {k}": v for k, v in r.items()})
            rows[n][f"{m} p_ttest_holm"], rows[n][f"{m} p_perm_holm"] = at, ap
            rows[n][f"{m} significant"] = ap < SIGNIFICANCE_LEVEL and at < SIGNIFICANCE_LEVEL
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "pipeline"
    # The baseline has no counts against itself; nullable integers keep the others whole.
    counts = [c for c in table.columns if c.split(" ")[-1] in ("wins", "ties", "losses")]
    table[counts] = table[counts].astype("Int64")
    return table


def device_description(device: str) -> str:
    """What a device is, for reports: the GPU's name, or the CPU model and its core count.

    Example:
        >>> "core" in device_description("cpu")
        True
    """
    import os

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def versions() -> dict[str, str]:
    """Versions of the libraries that decide what a measurement means, for reports.

    Example:
        >>> sorted(versions())[:3]
        ['ir-measures', 'python', 'ragkit']
    """
    # Installed metadata, not the modules: importing sentence-transformers takes seconds.
    names = ["ragkit", "torch", "transformers", "sentence-transformers", "ir-measures"]
    return {**{n: importlib.metadata.version(n) for n in names}, "python": platform.python_version()}


def _meta(collection: BeirCollection, pipelines: list[Pipeline], baseline: str, measures: list[str], device: str,
          engine: str, batch_size: int) -> dict[str, Any]:
    models = sorted({m for p in pipelines for m in (p.embedder, p.reranker) if m})
    return {
        "collection": collection.name,
        "split": collection.split,
        "is_subset": collection.is_subset,
        "collection_summary": collection.summary(),
        "n_queries": len(collection.queries),
        "n_docs": len(collection.corpus),
        "pipelines": [{"name": p.name, **asdict(p)} for p in pipelines],
        "baseline": baseline,
        "measures": measures,
        "device": device,
        "device_name": device_description(device),
        "engine": engine,
        "batch_size": batch_size,
        "model_revisions": {m: model_revision(m) for m in models},
        "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["Experiment", "PairScoreCache", "Pipeline", "experiment", "grid", "holm", "langchain_retriever",
           "mean_ci", "paired_comparison", "parse_measures", "per_query_scores", "versions"]
