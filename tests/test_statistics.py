"""The evaluation engine's measures and statistics, against independent implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import pytrec_eval
from scipy import stats

from ragkit.errors import RagkitError
from ragkit.measures import parse_measures, per_query_scores
from ragkit.stats import holm, mean_ci, paired_comparison


def _random_qrels_and_run(seed: int, n_queries: int = 30, n_docs: int = 200):
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.choice(n_docs, size=rng.integers(1, 8), replace=False)
        qrels[qid] = {f"d{d}": int(rng.integers(1, 3)) for d in judged}
        retrieved = rng.choice(n_docs, size=120, replace=False)
        run[qid] = {f"d{d}": float(s) for d, s in zip(retrieved, rng.normal(size=120))}
    run.pop("q0")  # a judged query the run misses must count as 0
    return qrels, run


@pytest.mark.parametrize("seed", [1, 2])
def test_measures_equal_trec_eval_to_1e_9(seed):
    qrels, run = _random_qrels_and_run(seed)
    df = per_query_scores(qrels, run, parse_measures(["nDCG@10", "RR@10", "R@100"]))
    ours = {(r.query_id, r.measure): r.value for r in df.itertuples()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    # trec_eval's recip_rank has no cutoff: give it each query's top 10 (its own tie order).
    top10 = {q: dict(sorted(d.items(), key=lambda x: (-x[1], x[0]), reverse=False)[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    assert ours[("q0", "nDCG@10")] == 0.0 and ours[("q0", "R@100")] == 0.0
    for qid in run:
        assert ours[(qid, "nDCG@10")] == pytest.approx(full[qid]["ndcg_cut_10"], abs=1e-9)
        assert ours[(qid, "R@100")] == pytest.approx(full[qid]["recall_100"], abs=1e-9)
        assert ours[(qid, "RR@10")] == pytest.approx(rr[qid]["recip_rank"], abs=1e-9)


def test_unknown_measure_names_the_measure_and_examples():
    with pytest.raises(RagkitError, match=r"'nDCG@ten'.*nDCG@10"):
        parse_measures(["nDCG@ten"])


def test_holm_matches_hand_computation():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.9]) == [0.4, 0.9]


def test_randomization_p_matches_exact_enumeration():
    rng = np.random.default_rng(3)
    base = rng.uniform(size=10)
    other = base + rng.normal(0.08, 0.1, size=10)
    diff = other - base
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    exact = np.mean(np.abs((flips * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12)
    ours = paired_comparison(base, other, n_resamples=20_000, seed=0)
    assert ours["p_perm"] == pytest.approx(exact, abs=0.01)
    assert ours["p_ttest"] == pytest.approx(stats.ttest_rel(other, base).pvalue, abs=1e-12)
    assert ours["delta"] == pytest.approx(diff.mean())
    assert ours["wins"] + ours["ties"] + ours["losses"] == 10


def test_bootstrap_interval_covers_the_mean_and_matches_scipy():
    rng = np.random.default_rng(4)
    values = rng.uniform(size=200)
    lo, hi = mean_ci(values, n_resamples=5000)
    ref = stats.bootstrap((values,), np.mean, n_resamples=5000, method="percentile", random_state=0).confidence_interval
    assert lo < values.mean() < hi
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)


def test_identical_pipelines_are_not_significant():
    x = np.linspace(0, 1, 50)
    r = paired_comparison(x, x.copy())
    assert r["delta"] == 0 and r["p_ttest"] == 1.0 and r["p_perm"] == 1.0 and r["ties"] == 50
