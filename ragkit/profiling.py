"""What reranking costs, measured on real pairs: the tools notebook 05 teaches with.

A cross-encoder's cost is tokens: long passages, many candidates per query, and the padding a
batch adds. Everything here times or counts work on the same real ``(query, passage)`` pairs,
each query's first-stage candidates (:func:`candidate_pairs`), so that figures from different
paths, batch sizes and lengths can be set side by side:

- the four ways to score the pairs (:func:`reranking_paths`): (a) ragkit's LangChain
  compressor, (b) plain ``sentence_transformers.CrossEncoder.predict``, (c) the plain-
  transformers ``rerank()`` with a query's documents in one padded batch, and (d) the
  evaluation engine's stream that pools every query's pairs, longest first;
- :func:`throughput` and :func:`compare_paths`: medians over repeats, with the scores checked
  against each other (largest absolute difference, same order per query);
- :func:`padding_cost`: the tokens each batching plan pushes through the model, counted
  rather than timed, so that it holds on a busy machine too;
- :func:`batch_size_sweep`, :func:`max_length_effect`: throughput (and nDCG@10) across batch
  sizes and maximum lengths; :func:`loader_timings`: what the cached loaders save;
- :func:`path_targets`: the throughput targets the cost benchmark was built to, checked on a
  :func:`compare_paths` table; :func:`stored_results`, :func:`stored_tags`: the records
  ``benchmarks/rerank_cost.py`` and the benchmarks sharing its format committed, read back
  from the folder given (``benchmarks/results`` in a checkout; an installed package has none).

Other runtimes (ONNX Runtime, OpenVINO) are in :mod:`ragkit.backends`; where and with what a
measurement was taken, in :func:`ragkit.provenance.environment`. ``benchmarks/rerank_cost.py``
runs all of it at larger sizes and stores the results.

Example::

    from ragkit import load_beir, make_subset
    from ragkit.profiling import candidate_pairs, compare_paths
    from ragkit.rerank import load_reranker

    sample = candidate_pairs(make_subset(load_beir("scifact"), 50), n_queries=2, k=5)
    model = load_reranker("cross-encoder/ms-marco-MiniLM-L-12-v2", "cpu")
    table = compare_paths(model, sample, repeats=1)
    list(table["path"])  # ['langchain', 'sentence_transformers', 'naive_transformers', 'pooled']
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from langchain_core.documents import Document

from ragkit.data import BeirCollection
from ragkit.errors import RagkitError
from ragkit.loaders import HuggingFaceEmbeddingsLoader, HuggingFaceRerankerLoader, resolve_device
from ragkit.measures import parse_measures, per_query_scores, ranked_run
from ragkit.rerank import (
    Pair,
    ScoredCrossEncoderReranker,
    _sentence_transformers_model,
    default_batch_size,
    rerank,
    score_pairs,
    token_lengths,
    truncation_mask,
)
from ragkit.retrievers import build_chroma_index
from ragkit.settings import DEFAULT_EMBEDDER, DEFAULT_RERANK_K

Scores = list[np.ndarray]  # per query, one score per candidate, in first-stage order

# The four scoring paths, in the order tables list them.
PATHS: dict[str, str] = {
    "langchain": "(a) ragkit via LangChain: ScoredCrossEncoderReranker, query by query",
    "sentence_transformers": "(b) sentence-transformers CrossEncoder.predict, query by query",
    "naive_transformers": "(c) plain-transformers rerank(), each query's documents in one padded batch",
    "pooled": "(d) evaluation engine: every query's pairs in one stream, longest first",
}


@dataclass(frozen=True, eq=False)
class Candidates:
    """Real ``(query, passage)`` pairs: sampled queries, each with its first-stage top ``k``.

    Attributes:
        collection: name of the collection (a ragkit subset says so in its name).
        query_ids, queries: the sampled queries, in id order.
        doc_ids, passages: per query, the candidates' ids and the texts a cross-encoder reads,
            best first-stage score first.
        qrels: the sampled queries' judgements, for nDCG@10.
        embedder, k: the first stage that chose the candidates.
    """

    collection: str
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[list[str]]
    passages: list[list[str]]
    qrels: dict[str, dict[str, int]]
    embedder: str
    k: int

    @property
    def n_queries(self) -> int:
        """How many queries."""
        return len(self.query_ids)

    @property
    def n_pairs(self) -> int:
        """How many ``(query, passage)`` pairs in all."""
        return sum(len(p) for p in self.passages)

    def pairs(self) -> list[list[Pair]]:
        """The pairs, grouped per query."""
        return [[(q, p) for p in ps] for q, ps in zip(self.queries, self.passages)]

    def flat_pairs(self) -> list[Pair]:
        """Every query's pairs in one list, query after query (what the engine pools)."""
        return [pair for group in self.pairs() for pair in group]

    def split(self, flat_scores: Sequence[float] | np.ndarray) -> Scores:
        """Cut scores of :meth:`flat_pairs` back into one array per query."""
        flat = np.asarray(flat_scores, dtype=np.float32)
        bounds = np.cumsum([len(p) for p in self.passages])[:-1]
        return np.split(flat, bounds)

    def head(self, n_queries: int, k: int | None = None) -> Candidates:
        """The first ``n_queries`` queries with their first ``k`` candidates (default all):
        a smaller sample of the same pairs.

        Example::

            sample.head(1, 2).n_pairs  # 2
        """
        k = self.k if k is None else k
        ids = self.query_ids[:n_queries]
        return replace(
            self,
            query_ids=ids,
            queries=self.queries[:n_queries],
            doc_ids=[d[:k] for d in self.doc_ids[:n_queries]],
            passages=[p[:k] for p in self.passages[:n_queries]],
            qrels={q: self.qrels[q] for q in ids if q in self.qrels},
            k=k,
        )


def candidate_pairs(
    collection: BeirCollection,
    *,
    n_queries: int = 10,
    k: int = DEFAULT_RERANK_K,
    embedder: str = DEFAULT_EMBEDDER,
    seed: int = 0,
    device: str = "auto",
    show_progress: bool = False,
) -> Candidates:
    """Sample ``n_queries`` queries and take each one's top ``k`` from the dense first stage.

    The Chroma index is ragkit's cached one (``build_chroma_index``): a collection indexed
    before, by ``ragkit eval`` or here, is reopened without embedding anything. Passages are
    the texts ``ragkit eval`` reranks (title and abstract), so their lengths are real.

    Example::

        from ragkit import load_beir

        sample = candidate_pairs(load_beir("demo"), n_queries=3, k=4)
        sample.n_queries, sample.n_pairs  # (3, 12)
    """
    ids = sorted(collection.queries)
    if not 1 <= n_queries <= len(ids):
        raise RagkitError(
            f"n_queries must be between 1 and the {len(ids)} queries of {collection.name}, got {n_queries}."
        )
    chosen = sorted(random.Random(seed).sample(ids, n_queries))
    index = build_chroma_index(
        collection.documents(), embedder, model_kwargs={"device": resolve_device(device)}, show_progress=show_progress
    )
    hits = index.search([collection.queries[q] for q in chosen], k)
    doc_ids = [[d for d, _ in h] for h in hits]
    return Candidates(
        collection=collection.name,
        query_ids=chosen,
        queries=[collection.queries[q] for q in chosen],
        doc_ids=doc_ids,
        passages=[[collection.text(d) for d in ds] for ds in doc_ids],
        qrels={q: collection.qrels.get(q, {}) for q in chosen},
        embedder=embedder,
        k=k,
    )


# ----------------------------------------------------------------------------- the four paths


def reranking_paths(
    model: Any,
    candidates: Candidates,
    *,
    batch_size: int | None = None,
    max_length: int | None = None,
) -> dict[str, Callable[[], Scores]]:
    """The four ways to score ``candidates`` (see :data:`PATHS`), as zero-argument callables
    to time; each returns the scores per query, in first-stage order, on one scale (the
    sigmoid of the logit).

    Inputs are prepared outside the callables (LangChain ``Document`` s, the flat pair list),
    so a timing holds scoring only, as a retriever would hand its documents over. Path (c)
    loads its own float32 copy of the model with ``transformers``, so it is left out when
    ``model`` runs in another dtype or backend.

    Args:
        model: a ``HuggingFaceCrossEncoder`` from ``HuggingFaceRerankerLoader``.
        candidates: the pairs, from :func:`candidate_pairs`.
        batch_size: pairs per forward pass for (a), (b) and (d) (default: ragkit's for the
            model's device); (c) always puts a query's documents in one batch.
        max_length: tokens per pair (default: the model's maximum).

    Example::

        paths = reranking_paths(model, sample, batch_size=16)
        [len(s) for s in paths["pooled"]()]  # [20, 20]
    """
    cross_encoder = _sentence_transformers_model(model)
    batch_size = default_batch_size(model) if batch_size is None else batch_size
    documents = [
        [Document(p, id=d, metadata={"doc_id": d}) for d, p in zip(ids, ps)]
        for ids, ps in zip(candidates.doc_ids, candidates.passages)
    ]
    compressor = ScoredCrossEncoderReranker(
        model=model, top_n=max(candidates.k, 1), batch_size=batch_size, max_length=max_length
    )
    grouped = candidates.pairs()
    flat = candidates.flat_pairs()
    # Plain predict as a user calls it; the per-call length only when one is asked for.
    length_kwargs = (
        {}
        if max_length is None
        else {"processing_kwargs": {"text": {"max_length": max_length, "truncation": "longest_first"}}}
    )

    def langchain() -> Scores:
        out = []
        for query, docs in zip(candidates.queries, documents):
            kept = {d.id: d.metadata["relevance_score"] for d in compressor.compress_documents(docs, query)}
            out.append(np.array([kept[d.id] for d in docs], dtype=np.float32))
        return out

    def sentence_transformers() -> Scores:
        return [
            np.asarray(
                cross_encoder.predict(
                    pairs,
                    batch_size=batch_size,
                    activation_fn=torch.nn.Sigmoid(),
                    show_progress_bar=False,
                    **length_kwargs,
                ),
                dtype=np.float32,
            )
            for pairs in grouped
        ]

    def naive_transformers() -> Scores:
        out = []
        for query, passages in zip(candidates.queries, candidates.passages):
            scores = np.empty(len(passages), dtype=np.float32)
            for i, score in rerank(
                query,
                passages,
                top_n=max(len(passages), 1),
                model_name=model.model_name,
                device=str(cross_encoder.device),
                batch_size=max(len(passages), 1),
                max_length=max_length,
            ):
                scores[i] = score
            out.append(scores)
        return out

    def pooled() -> Scores:
        # What experiment(engine="batched") does with the pairs its cache does not hold yet.
        return candidates.split(score_pairs(model, flat, batch_size=batch_size, max_length=max_length))

    paths: dict[str, Callable[[], Scores]] = {
        "langchain": langchain,
        "sentence_transformers": sentence_transformers,
        "naive_transformers": naive_transformers,
        "pooled": pooled,
    }
    plain_fp32 = cross_encoder.get_backend() == "torch" and cross_encoder.model.dtype == torch.float32
    if not plain_fp32:
        del paths["naive_transformers"]
    return paths


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each repeat of one measured callable, and its last result."""

    seconds: tuple[float, ...]
    result: Any = None

    @property
    def median_s(self) -> float:
        """The median over repeats: what tables report."""
        return float(statistics.median(self.seconds))


def _synchronize() -> None:
    # A GPU works asynchronously: without this a timer stops before the work is done.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_calls(
    functions: Mapping[str, Callable[[], Any]], *, repeats: int = 3, warmup: bool = True
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, taking turns (a, b, a, b...), so that a change in
    background load during the run spreads over all of them instead of skewing one.

    ``warmup`` first calls each callable once, untimed, to take one-time costs (lazy loads,
    thread pools, kernel selection) out of the figures.

    Example:
        >>> timings = time_calls({"sleep": lambda: time.sleep(0.01)}, repeats=3, warmup=False)
        >>> len(timings["sleep"].seconds), timings["sleep"].median_s >= 0.01
        (3, True)
    """
    if repeats < 1:
        raise RagkitError(f"repeats must be at least 1, got {repeats}.")
    results: dict[str, Any] = {}
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    if warmup:
        for fn in functions.values():
            fn()
    for _ in range(repeats):
        for name, fn in functions.items():
            _synchronize()
            start = time.perf_counter()
            results[name] = fn()
            _synchronize()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(seconds[name]), results[name]) for name in functions}


def throughput(
    fn: Callable[[], Any], candidates: Candidates, *, repeats: int = 3, warmup: bool = True
) -> dict[str, Any]:
    """Pairs per second and milliseconds per query of ``fn`` scoring ``candidates``: medians
    over ``repeats`` (see :func:`time_calls`).

    Returns:
        A table row: ``pairs``, ``queries``, ``repeats``, ``median_s``, ``min_s``, ``max_s``,
        ``pairs_per_s`` and ``ms_per_query`` (both from the median), and ``result`` (what the
        last call returned, e.g. the scores).

    Example::

        row = throughput(reranking_paths(model, sample)["pooled"], sample)
        round(row["pairs_per_s"])  # 7
    """
    timing = time_calls({"fn": fn}, repeats=repeats, warmup=warmup)["fn"]
    return {**_rates(timing, candidates), "result": timing.result}


def _rates(timing: Timing, candidates: Candidates) -> dict[str, Any]:
    median = timing.median_s
    return {
        "pairs": candidates.n_pairs,
        "queries": candidates.n_queries,
        "repeats": len(timing.seconds),
        "median_s": median,
        "min_s": min(timing.seconds),
        "max_s": max(timing.seconds),
        "pairs_per_s": candidates.n_pairs / median if median > 0 else float("inf"),
        "ms_per_query": 1000 * median / candidates.n_queries,
    }


def score_agreement(scores: Scores, reference: Scores) -> dict[str, Any]:
    """How close two scorings of the same pairs are: the largest absolute difference, and
    whether every query's candidates come out in the same order.

    Example:
        >>> score_agreement([np.array([0.5, 0.25])], [np.array([0.5, 0.375])])
        {'max_abs_diff': 0.125, 'same_order': True}
    """
    diff = max(
        (
            float(np.max(np.abs(np.asarray(s, dtype=np.float64) - np.asarray(r, dtype=np.float64))))
            for s, r in zip(scores, reference)
            if len(s)
        ),
        default=0.0,
    )
    # A stable sort, as the reranker's: equal scores keep first-stage order on both sides.
    same = all(
        np.array_equal(np.argsort(-np.asarray(s), kind="stable"), np.argsort(-np.asarray(r), kind="stable"))
        for s, r in zip(scores, reference)
    )
    return {"max_abs_diff": diff, "same_order": same}


def _warmup_sample(candidates: Candidates) -> Candidates:
    # A few pairs take one-time costs (lazy loads, kernel selection) out of the timings
    # without paying for a full untimed pass.
    return candidates.head(1, min(candidates.k, 4))


def compare_paths(
    model: Any,
    candidates: Candidates,
    *,
    batch_size: int | None = None,
    max_length: int | None = None,
    repeats: int = 3,
    paths: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Throughput of the scoring paths on the same pairs, side by side, with their scores
    checked against path (b), plain ``CrossEncoder.predict``.

    Each path is warmed up once on a few pairs, then the paths take turns for ``repeats``
    rounds (:func:`time_calls`).

    Returns:
        One row per path: ``path``, ``label``, ``batch_size``, ``max_length``, the
        :func:`throughput` columns, ``speed_vs_b`` (pairs/s over (b)'s), ``max_abs_diff`` and
        ``same_order`` (against (b)).

    Example::

        compare_paths(model, sample, repeats=3)[["path", "pairs_per_s", "max_abs_diff"]]
    """
    wanted = list(paths or PATHS)
    unknown = [p for p in wanted if p not in PATHS]
    if unknown:
        raise RagkitError(f"Unknown path(s) {unknown}; choose from {list(PATHS)}.")
    batch_size = default_batch_size(model) if batch_size is None else batch_size
    functions = reranking_paths(model, candidates, batch_size=batch_size, max_length=max_length)
    warm = reranking_paths(model, _warmup_sample(candidates), batch_size=batch_size, max_length=max_length)
    for name in wanted:
        if name in warm:
            warm[name]()
    timings = time_calls({n: functions[n] for n in wanted if n in functions}, repeats=repeats, warmup=False)
    reference = timings["sentence_transformers"].result if "sentence_transformers" in timings else None
    reference_rate = (
        _rates(timings["sentence_transformers"], candidates)["pairs_per_s"] if reference is not None else None
    )
    rows = []
    for name, timing in timings.items():
        rates = _rates(timing, candidates)
        row = {
            "path": name,
            "label": PATHS[name],
            "batch_size": batch_size,
            "max_length": max_length or int(_sentence_transformers_model(model).max_seq_length),
            **rates,
            "speed_vs_b": rates["pairs_per_s"] / reference_rate if reference_rate else float("nan"),
        }
        row.update(
            score_agreement(timing.result, reference)
            if reference is not None
            else {"max_abs_diff": float("nan"), "same_order": None}
        )
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- padding, batch size, length


def padding_cost(
    model: Any, candidates: Candidates, batch_sizes: Sequence[int], *, max_length: int | None = None
) -> pd.DataFrame:
    """Tokens each batching plan pushes through the model, padding included, from the pairs'
    exact token lengths: a count, not a timing, so it holds on a busy machine.

    Plans: ``(c) one batch per query`` (padded to the query's longest pair),
    ``(a) per query, longest first`` (batches of ``batch_size`` within a query), and
    ``(d) pooled, longest first`` (all queries' pairs in one sorted stream). Compute grows
    with the processed tokens (and attention with their square), so ``padding_share`` is the
    part of the work spent on nothing.

    Example::

        padding_cost(model, sample, [8, 32])[["plan", "batch_size", "padding_share"]]
    """
    lengths = [np.sort(token_lengths(model, group, max_length))[::-1] for group in candidates.pairs()]
    real = int(sum(int(x.sum()) for x in lengths))

    def batched(sorted_lengths: np.ndarray, size: int) -> int:
        return int(
            sum(
                sorted_lengths[i : i + size].max() * len(sorted_lengths[i : i + size])
                for i in range(0, len(sorted_lengths), size)
            )
        )

    pooled = np.sort(np.concatenate(lengths))[::-1] if lengths else np.zeros(0, dtype=np.int64)
    rows: list[dict[str, Any]] = [
        {
            "plan": "(c) one batch per query",
            "batch_size": None,
            "processed_tokens": int(sum(int(x.max()) * len(x) for x in lengths if len(x))),
        }
    ]
    for size in batch_sizes:
        rows.append(
            {
                "plan": "(a) per query, longest first",
                "batch_size": size,
                "processed_tokens": sum(batched(x, size) for x in lengths),
            }
        )
        rows.append(
            {"plan": "(d) pooled, longest first", "batch_size": size, "processed_tokens": batched(pooled, size)}
        )
    table = pd.DataFrame(rows).astype({"batch_size": "Int64"})
    table["real_tokens"] = real
    table["padding_share"] = 1 - real / table["processed_tokens"]
    return table


def ndcg_at_10(candidates: Candidates, scores: Scores) -> float:
    """Mean nDCG@10 over the sampled queries when their candidates are ranked by ``scores``.

    Example::

        round(ndcg_at_10(sample, reranking_paths(model, sample)["pooled"]()), 3)  # 0.712
    """
    # Equal scores (saturated or low-precision ones) keep the candidates' order, as a reranker's
    # stable sort does.
    run = {
        q: ranked_run(sorted(zip(ids, map(float, sc)), key=lambda hit: -hit[1]))
        for q, ids, sc in zip(candidates.query_ids, candidates.doc_ids, scores)
    }
    return float(per_query_scores(candidates.qrels, run, parse_measures(["nDCG@10"]))["value"].mean())


def batch_size_sweep(
    model: Any,
    candidates: Candidates,
    batch_sizes: Sequence[int],
    *,
    paths: Sequence[str] = ("langchain", "pooled"),
    max_length: int | None = None,
    repeats: int = 3,
) -> pd.DataFrame:
    """Throughput of ``paths`` at each batch size, all configurations taking turns.

    A query-by-query path is measured only at batch sizes up to ``k``: beyond it, it runs
    the same single batch per query.

    Returns:
        One row per (path, batch size): ``path``, ``batch_size``, ``max_length`` and the
        :func:`throughput` columns.

    Example::

        batch_size_sweep(model, sample, [8, 32, 128], paths=["pooled"])
    """
    configurations = [
        (path, size) for path in paths for size in batch_sizes if path == "pooled" or size <= candidates.k
    ]
    functions = {
        (path, size): reranking_paths(model, candidates, batch_size=size, max_length=max_length)[path]
        for path, size in configurations
    }
    for path, size in configurations:
        reranking_paths(model, _warmup_sample(candidates), batch_size=size, max_length=max_length)[path]()
    timings = time_calls(functions, repeats=repeats, warmup=False)
    length = max_length or int(_sentence_transformers_model(model).max_seq_length)
    return pd.DataFrame(
        [
            {"path": path, "batch_size": size, "max_length": length, **_rates(t, candidates)}
            for (path, size), t in timings.items()
        ]
    )


def max_length_effect(
    model: Any,
    speed: Candidates,
    quality: Candidates,
    lengths: Sequence[int],
    *,
    batch_size: int | None = None,
    repeats: int = 3,
) -> pd.DataFrame:
    """What a shorter maximum length buys and costs: throughput of path (d) on ``speed``, and
    nDCG@10 of the reranked ``quality`` sample, at each length.

    Returns:
        One row per length: ``max_length``, the :func:`throughput` columns, ``truncated_share``
        (pairs of ``quality`` cut at that length), ``ndcg@10``, ``ndcg@10_delta`` (against the
        longest length) and ``first_stage_ndcg@10`` (the candidates' own order).

    Example::

        max_length_effect(model, sample.head(5), sample, [128, 512])
    """
    functions = {n: reranking_paths(model, speed, batch_size=batch_size, max_length=n)["pooled"] for n in lengths}
    for n in lengths:
        reranking_paths(model, _warmup_sample(speed), batch_size=batch_size, max_length=n)["pooled"]()
    timings = time_calls(functions, repeats=repeats, warmup=False)
    flat = quality.flat_pairs()
    first_stage = ndcg_at_10(quality, [-np.arange(len(ids), dtype=np.float32) for ids in quality.doc_ids])
    rows = []
    for n in lengths:
        scores = quality.split(score_pairs(model, flat, batch_size=batch_size, max_length=n))
        rows.append(
            {
                "max_length": n,
                **_rates(timings[n], speed),
                "truncated_share": float(truncation_mask(model, flat, n).mean()) if flat else 0.0,
                "ndcg@10": ndcg_at_10(quality, scores),
                "first_stage_ndcg@10": first_stage,
            }
        )
    table = pd.DataFrame(rows)
    table["ndcg@10_delta"] = table["ndcg@10"] - table.loc[table["max_length"].idxmax(), "ndcg@10"]
    return table


# ----------------------------------------------------------------------------- loader caches


def loader_timings(
    model_name: str, *, kind: str = "reranker", device: str = "cpu", reloads: int = 3, hits: int = 1000
) -> dict[str, Any]:
    """What the cached loaders save: a load from disk against a cache hit.

    The first load reads the weights from disk (from the OS file cache when they were read
    before); ``reloads`` more loads after clearing ragkit's cache give the median reload; then
    ``hits`` calls with the same arguments time the cache hit (median and 99th percentile).

    Example::

        loader_timings("cross-encoder/ms-marco-MiniLM-L-12-v2", hits=100)["hit_us_median"] < 1000  # True
    """
    loader = {"reranker": HuggingFaceRerankerLoader, "embedder": HuggingFaceEmbeddingsLoader}.get(kind)
    if loader is None:
        raise RagkitError(f"kind must be 'reranker' or 'embedder', got {kind!r}.")
    kwargs = {"device": resolve_device(device)}
    loads = []
    for _ in range(1 + reloads):
        loader.clear_cache()
        start = time.perf_counter()
        loader(model_name, model_kwargs=kwargs)
        loads.append(time.perf_counter() - start)
    hit_s = []
    for _ in range(hits):
        start = time.perf_counter()
        loader(model_name, model_kwargs=kwargs)
        hit_s.append(time.perf_counter() - start)
    return {
        "model": model_name,
        "loader": loader.__name__,
        "device": kwargs["device"],
        "first_load_s": loads[0],
        "reload_s_median": float(statistics.median(loads[1:])) if reloads else float("nan"),
        "hits": hits,
        "hit_us_median": 1e6 * float(np.median(hit_s)),
        "hit_us_p99": 1e6 * float(np.percentile(hit_s, 99)),
    }


# ----------------------------------------------------------------------------- targets and committed results


def path_targets(table: pd.DataFrame, device: str) -> pd.DataFrame:
    """The throughput targets the cost benchmark was built to, checked on a :func:`compare_paths`
    table: (a) at least 0.97 x (b), (a) at least 1.5 x (c), (d) at least 1.1 x (a) on a CPU and
    2 x (a) on a GPU.

    Example::

        path_targets(compare_paths(model, sample), "cpu")
    """
    rate = dict(zip(table["path"], table["pairs_per_s"]))
    gpu = resolve_device(device).startswith("cuda")
    checks = [
        ("(a) vs (b)", "langchain", "sentence_transformers", 0.97),
        ("(a) vs (c)", "langchain", "naive_transformers", 1.5),
        ("(d) vs (a)", "pooled", "langchain", 2.0 if gpu else 1.1),
    ]
    rows = []
    for name, top, bottom, target in checks:
        ratio = rate[top] / rate[bottom] if top in rate and bottom in rate else float("nan")
        rows.append(
            {
                "target": name,
                "ratio": ratio,
                "at_least": target,
                "met": bool(ratio >= target) if ratio == ratio else None,
            }
        )
    return pd.DataFrame(rows)


def stored_results(folder: str | Path, tag: str = "cpu") -> dict[str, dict[str, Any]]:
    """The section records stored for one device: section name -> its record (``title``,
    ``environment``, ``parameters``, ``notes``, and ``tables``, each a list of rows that
    ``pd.DataFrame`` takes as is). ``rerank_cost.py`` writes most of them; ``multi_process.py``
    and ``scaling.py`` write theirs in the same format. Files of another format (such as
    ``passages.py``'s) are left out.

    Example::

        stored = stored_results("benchmarks/results", "cpu")
        pd.DataFrame(stored["throughput"]["tables"]["targets"])
    """
    records = {
        p.name.removesuffix(f"-{tag}.json"): json.loads(p.read_text())
        for p in sorted(Path(folder).glob(f"*-{tag}.json"))
    }
    found = {name: record for name, record in records.items() if "section" in record}
    if not found:
        raise RagkitError(f"No benchmark results for {tag!r} in {folder}: run benchmarks/rerank_cost.py there first.")
    return found


def stored_tags(folder: str | Path, prefix: str = "") -> list[str]:
    """The device tags ``folder`` holds results for, sorted: ``"cpu"``, and ``"cuda-"`` followed
    by the GPU's name for each GPU measured; only those starting with ``prefix``.

    Files are named ``<section>-<tag>.json``, and section names have no hyphen.

    Example::

        stored_tags("benchmarks/results")  # ['cpu']
        stored_tags("benchmarks/results", "cuda")  # [] until a GPU run is committed
    """
    tags = {p.stem.split("-", 1)[1] for p in Path(folder).glob("*-*.json")}
    return sorted(t for t in tags if t.startswith(prefix))


__all__ = [
    "PATHS",
    "Candidates",
    "Scores",
    "Timing",
    "batch_size_sweep",
    "candidate_pairs",
    "compare_paths",
    "loader_timings",
    "max_length_effect",
    "ndcg_at_10",
    "padding_cost",
    "path_targets",
    "reranking_paths",
    "score_agreement",
    "stored_results",
    "stored_tags",
    "throughput",
    "time_calls",
]
