"""The evidence behind a verdict: intervals that agree with their tests, power that matches a
simulation, and sentences made from the numbers and nothing else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ragkit.results import EvaluationResult
from ragkit.stats import (
    aggregate,
    minimum_detectable_effect,
    paired_comparison,
    queries_needed,
    randomization_ci,
)


@pytest.mark.parametrize("seed", range(40))
def test_the_interval_excludes_zero_exactly_when_the_randomization_test_rejects(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 60))
    base = rng.uniform(size=n)
    other = np.clip(base + rng.normal(rng.uniform(-0.1, 0.15), 0.25, size=n), 0, 1)
    r = paired_comparison(base, other, n_resamples=4000, seed=seed)
    assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    excludes_zero = r["ci_low"] > 0 or r["ci_high"] < 0
    if abs(r["p_perm"] - 0.05) > 0.005:  # away from the boundary, where bisection decides
        assert excludes_zero == (r["p_perm"] < 0.05), r


def test_with_five_queries_no_interval_can_exclude_anything():
    low, high = randomization_ci(np.array([0.1, 0.2, 0.3, 0.2, 0.4]))
    assert (low, high) == (-np.inf, np.inf)  # the exact test's best p is 2/32 > 0.05


def test_the_exact_randomization_test_is_used_for_few_queries():
    diff = np.array([0.3, 0.1, 0.2, 0.4, 0.25, 0.15, -0.05, 0.35])
    r = paired_comparison(np.zeros(8), diff, n_resamples=10_000)
    flips = 1 - 2 * ((np.arange(256)[:, None] >> np.arange(8)) & 1)
    exact = np.mean(np.abs(flips @ diff) >= abs(diff.sum()) - 1e-12)
    assert r["p_perm"] == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n, sd", [(50, 0.27), (300, 0.27), (20, 0.1)])
def test_the_minimum_detectable_effect_is_detected_four_times_in_five(n, sd):
    mde = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(n)
    deltas = rng.normal(mde, sd, size=(4000, n))
    rejected = stats.ttest_1samp(deltas, 0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.03)


def test_power_figures_for_a_typical_reranking_run():
    # Per-query nDCG@10 deltas with sd 0.27: 50 queries see about 0.11, the full SciFact split
    # (300) about 0.044, and +0.02 needs about 1,400 queries.
    assert minimum_detectable_effect(0.27, 50) == pytest.approx(0.11, abs=0.005)
    assert minimum_detectable_effect(0.27, 300) == pytest.approx(0.044, abs=0.002)
    needed = queries_needed(0.02, 0.27)
    assert 1350 < needed < 1500
    assert minimum_detectable_effect(0.27, needed) <= 0.02 < minimum_detectable_effect(0.27, needed - 1)
    assert queries_needed(0.0, 0.27) is None and np.isnan(minimum_detectable_effect(0.0, 50))


def _result(deltas: np.ndarray, *, latency: bool = True) -> EvaluationResult:
    n = len(deltas)
    base = np.full(n, 0.5)
    per_query = pd.DataFrame({
        "pipeline": ["dense(e)"] * n + ["dense(e) >> r(k=20, top_n=20)"] * n + ["bm25"] * n,
        "query_id": [f"q{i}" for i in range(n)] * 3,
        "measure": "nDCG@10",
        "value": np.concatenate([base, base + deltas, base - 0.1]),
    })  # fmt: skip
    names = ["dense(e)", "dense(e) >> r(k=20, top_n=20)", "bm25"]
    table = aggregate(per_query, names, baseline="dense(e)", first_stages={names[1]: "dense(e)"},
                      measures=["nDCG@10"], n_resamples=2000)  # fmt: skip
    rows = [("dense(e)", "total", 40.0), (names[1], "rerank", 1300.0), (names[1], "total", 1340.0),
            ("bm25", "total", 3.0)] if latency else []  # fmt: skip
    lat = pd.DataFrame([{"pipeline": p, "stage": st, "p50_ms": ms, "p95_ms": ms, "queries": 30} for p, st, ms in rows],
                       columns=["pipeline", "stage", "p50_ms", "p95_ms", "queries"])  # fmt: skip
    meta = {"measures": ["nDCG@10"], "baseline": "dense(e)", "n_queries": n, "is_subset": False,
            "device_name": "a test CPU",
            "pipelines": [{"name": names[0], "reranker": None}, {"name": names[1], "reranker": "b/r", "k": 20},
                          {"name": "bm25", "reranker": None}]}  # fmt: skip
    return EvaluationResult(table=table, per_query=per_query, latency=lat, runs={}, meta=meta)


def test_a_verdict_says_not_distinguishable_and_how_many_queries_it_would_take():
    deltas = np.random.default_rng(0).normal(0.013, 0.27, size=50)
    result = _result(deltas)
    row = result.table.loc["dense(e) >> r(k=20, top_n=20)"]
    assert row["nDCG@10 own ci_low"] < 0 < row["nDCG@10 own ci_high"]
    text = result.verdict()
    first = text.splitlines()[0]
    assert first.startswith(f"Reranking the top 20 of dense(e) with b/r changes nDCG@10 by {deltas.mean():+.3f}")
    assert "not distinguishable from zero" in first and "over 50 queries" in first
    assert f"detect changes of {row['nDCG@10 own mde']:.3f} or more" in first
    assert f"about {row['nDCG@10 own queries_needed']:,.0f} would be needed" in first
    assert "Reranking adds 1,300 ms per query (median of 30 queries served one at a time on a test CPU)" in first
    assert "dense(e) alone takes 40 ms" in first
    assert "bm25 without a reranker scores 0.400 nDCG@10" in text and "at 3.0 ms per query" in text
    assert "a gain" not in text


def test_a_verdict_calls_a_clear_gain_a_gain_and_states_no_latency_it_did_not_measure():
    result = _result(np.random.default_rng(1).normal(0.2, 0.05, size=40), latency=False)
    first = result.verdict().splitlines()[0]
    assert "a gain distinguishable from zero" in first
    assert "would be needed" not in first and "ms" not in first


def test_tables_take_one_measure_by_name_and_one_pipeline_alone():
    result = _result(np.random.default_rng(2).normal(0.05, 0.2, size=30))
    assert list(result.own_table("nDCG@10")["measure"]) == ["nDCG@10"]
    alone = EvaluationResult(table=result.table.loc[["dense(e)"], ["baseline", "nDCG@10"]], per_query=result.per_query,
                             latency=result.latency, runs={}, meta=result.meta)  # fmt: skip
    assert list(alone.summary().columns) == ["nDCG@10"]


def test_a_verdict_says_whether_a_first_stage_alone_differs_from_the_baseline():
    text = _result(np.random.default_rng(3).normal(0.0, 0.2, size=40)).verdict()
    bm25 = next(line for line in text.splitlines() if line.startswith("bm25"))
    assert "after Holm's correction: distinguishable from it" in bm25  # every query 0.1 lower: no doubt
