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
    changed_queries_to_reject,
    minimum_detectable_effect,
    paired_comparison,
    queries_needed,
    randomization_ci,
    sign_flip_power,
    smallest_p_perm,
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
    assert f"a paired t-test on 50 queries detects changes of {row['nDCG@10 own mde']:.3f} or more" in first
    power = row["nDCG@10 own power_perm"]
    assert f"the randomization test's power there, simulated on these per-query changes, is {power:.2f}" in first
    assert f"About {row['nDCG@10 own queries_needed']:,.0f} queries would be needed" in first
    assert "Reranking adds 1,300 ms per query (median of 30 queries served one at a time on a test CPU)" in first
    assert "dense(e) alone takes 40 ms" in first
    assert "bm25 without a reranker scores 0.400 nDCG@10" in text and "at 3.0 ms per query" in text
    assert "a gain" not in text


def test_a_verdict_calls_a_clear_gain_a_gain_and_states_no_latency_it_did_not_measure():
    result = _result(np.random.default_rng(1).normal(0.2, 0.05, size=40), latency=False)
    first = result.verdict().splitlines()[0]
    assert "a gain distinguishable from zero" in first
    assert "would be needed" not in first and "ms" not in first
    assert "rejects no change" not in first and "not corrected" not in first  # nothing to explain


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


# Per-query deltas on which the two paired tests disagree at 0.05 (found by a search over random
# draws; the tests below check the disagreement before relying on it).
RANDOMIZATION_ONLY = np.array([0.14, 0.0, 0.27, -0.06, 0.76, 0.26, 0.0, 0.23, 0.33, -0.06, -0.08, 0.0])
T_TEST_ONLY = np.array([0.0, 0.0, 0.12, 0.13, 0.0, 0.28, 0.24, 0.0, -0.02, 0.12, -0.03])


@pytest.mark.parametrize(("deltas", "rejecting", "silent"), [
    (RANDOMIZATION_ONLY, "The randomization test rejects no change", "but the paired t-test does not"),
    (T_TEST_ONLY, "The paired t-test rejects no change", "but the randomization test does not"),
])  # fmt: skip
def test_when_the_two_tests_disagree_the_verdict_says_which_and_by_what_rule(deltas, rejecting, silent):
    row = _result(deltas).table.loc["dense(e) >> r(k=20, top_n=20)"]
    p_perm, p_t = row["nDCG@10 own p_perm_holm"], row["nDCG@10 own p_ttest_holm"]
    assert (p_perm < 0.05) != (p_t < 0.05)  # the case this test is about
    assert not row["nDCG@10 own significant"]
    first = _result(deltas).verdict().splitlines()[0]
    assert "not distinguishable from zero" in first and rejecting in first and silent in first
    assert "only when both tests reject at 0.05" in first
    if p_perm < 0.05:  # the CI inverts the randomization test: it excludes zero, as the text explains
        assert row["nDCG@10 own ci_low"] > 0


def test_a_ci_excluding_zero_before_holms_correction_is_explained():
    strong = np.array([0.2, 0.1, 0.3, 0.25, 0.15, 0.2, 0.3, 0.1, -0.05, 0.2, 0.1, 0.0])
    edge = np.array([0.08, 0.12, 0.04, -0.05, 0.01, -0.07, 0.09, 0.28, 0.01, -0.01, 0.15, 0.13])  # p about 0.04
    n = len(strong)
    per_query = pd.DataFrame({
        "pipeline": ["a"] * n + ["a >> r1"] * n + ["a >> r2"] * n + ["a >> r3"] * n,
        "query_id": [f"q{i}" for i in range(n)] * 4, "measure": "nDCG@10",
        "value": np.concatenate([np.full(n, 0.5), 0.5 + strong, 0.5 + edge, np.full(n, 0.5)]),
    })  # fmt: skip
    names = ["a", "a >> r1", "a >> r2", "a >> r3"]
    own = {n: "a" for n in names[1:]}
    table = aggregate(per_query, names, baseline="a", first_stages=own, measures=["nDCG@10"], n_resamples=4000)
    row = table.loc["a >> r2"]
    assert row["nDCG@10 own ci_low"] > 0 and row["nDCG@10 own p_perm"] < 0.05  # uncorrected: rejects
    assert row["nDCG@10 own p_perm_holm"] >= 0.05 and row["nDCG@10 own p_ttest_holm"] >= 0.05
    meta = {
        "measures": ["nDCG@10"],
        "baseline": "a",
        "n_queries": n,
        "is_subset": False,
        "device_name": "cpu",
        "pipelines": [{"name": "a", "reranker": None}] + [{"name": x, "reranker": "b/r", "k": 20} for x in own],
    }
    lat = pd.DataFrame(columns=["pipeline", "stage", "p50_ms", "p95_ms", "queries"])
    text = EvaluationResult(table=table, per_query=per_query, latency=lat, runs={}, meta=meta).verdict()
    line = text.splitlines()[1]
    assert "not distinguishable from zero" in line
    assert "Its 95% CI excludes zero but is not corrected for the 3 comparisons made together" in line


@pytest.mark.parametrize("n", [3, 4, 5])
def test_with_five_queries_or_fewer_no_effect_is_detectable_and_the_verdict_says_how_many_it_takes(n):
    deltas = np.linspace(0.2, 0.4, n)  # every query gains: the strongest evidence n queries can hold
    row = _result(deltas).table.loc["dense(e) >> r(k=20, top_n=20)"]
    assert row["nDCG@10 own p_perm"] >= 0.05  # the sign-flip test cannot reject: smallest p 2/2^n
    assert np.isnan(row["nDCG@10 own mde"]) and np.isnan(row["nDCG@10 own power_perm"])
    first = _result(deltas).verdict().splitlines()[0]
    assert "detects changes of" not in first
    assert f"Only {n} of the {n} queries changed score, so the randomization test cannot reject" in first
    assert f"its smallest possible p is {2 / 2**n:.2g}" in first and "it takes at least 6 queries" in first


def test_many_queries_with_few_changed_are_as_weak_as_few_queries():
    deltas = np.zeros(50)
    deltas[:4] = [0.3, 0.2, 0.5, 0.4]
    row = _result(deltas).table.loc["dense(e) >> r(k=20, top_n=20)"]
    assert smallest_p_perm(deltas) == 2 / 16 and np.isnan(row["nDCG@10 own mde"])
    first = _result(deltas).verdict().splitlines()[0]
    assert "Only 4 of the 50 queries changed score" in first and "about 75 queries at this share" in first
    assert row["nDCG@10 own queries_needed"] >= 75  # the t-test alone would ask for fewer


def test_six_changed_queries_are_the_fewest_that_can_reject():
    assert changed_queries_to_reject() == 6
    assert paired_comparison(np.zeros(6), np.full(6, 0.1))["p_perm"] < 0.05
    assert paired_comparison(np.zeros(5), np.full(5, 0.1))["p_perm"] >= 0.05


def _independent_sign_flip_power(deltas: np.ndarray, effect: float, sims: int, seed: int) -> float:
    """The same power question answered by scipy's paired permutation test on replications drawn
    as documented: resample queries, unchanged ones stay unchanged, changed ones shifted."""
    rng = np.random.default_rng(seed)
    changed = deltas != 0
    population = deltas.copy()
    population[changed] += effect * len(deltas) / changed.sum() - deltas[changed].mean()
    rejected = 0
    for _ in range(sims):
        d = population[rng.integers(0, len(deltas), size=len(deltas))]
        test = stats.permutation_test((d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                      permutation_type="samples", vectorized=True, n_resamples=999,
                                      random_state=rng)  # fmt: skip
        rejected += test.pvalue < 0.05
    return rejected / sims


def test_with_most_deltas_zero_the_randomization_tests_power_at_the_mde_is_below_80_percent():
    rng = np.random.default_rng(7)
    deltas = np.where(rng.uniform(size=50) < 0.8, 0.0, rng.normal(0.05, 0.3, size=50))  # 10 of 50 changed
    r = paired_comparison(np.zeros(50), deltas)
    assert np.isfinite(r["mde"])
    independent = _independent_sign_flip_power(deltas, r["mde"], sims=300, seed=1)
    assert r["power_perm"] == pytest.approx(independent, abs=0.08)  # two Monte Carlo estimates
    assert r["power_perm"] < 0.72 and independent < 0.72  # the t-test's normal approximation promises 0.80


def test_without_ties_the_randomization_tests_power_matches_the_t_tests():
    deltas = np.random.default_rng(8).normal(0.05, 0.25, size=60)
    r = paired_comparison(np.zeros(60), deltas)
    assert r["power_perm"] == pytest.approx(0.8, abs=0.07)
    assert sign_flip_power(deltas, 0.0) == pytest.approx(0.05, abs=0.04)  # no effect: rejects at the level


def test_the_table_star_and_the_verdict_follow_one_rule():
    for deltas in (RANDOMIZATION_ONLY, T_TEST_ONLY, np.random.default_rng(1).normal(0.2, 0.05, size=40)):
        result = _result(deltas)
        row = result.table.loc["dense(e) >> r(k=20, top_n=20)"]
        both = row["nDCG@10 own p_perm_holm"] < 0.05 and row["nDCG@10 own p_ttest_holm"] < 0.05
        assert bool(row["nDCG@10 own significant"]) == both
        assert ("a gain distinguishable from zero" in result.verdict().splitlines()[0]) == both
        reranked = [line for line in result.format_table().splitlines() if line.startswith("dense(e) >> r")]
        assert len(reranked) == 2 and all(("*" in line) == both for line in reranked)
