"""The betting confidence sequence: its wealth is the paper's formula (checked by a plain loop),
looking after every query keeps the false-gain rate at or under 5% (simulated on real per-query
changes, centred), while a fixed-n interval looked at after every query does not; it covers a
known mean at every time; and the decisions it allows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ragkit.errors import ConfigError
from ragkit.sequential import GRID, confidence_sequence, decide, log_wealth

RESCORING = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rescoring" / "per_query.csv"
SIMULATIONS, LOOKS = 400, 300


@pytest.fixture(scope="module")
def real_deltas() -> np.ndarray:
    """Per-query nDCG@10 changes of the L-12 cross-encoder over all-MiniLM-L6-v2's top 20 on 50
    SciFact queries (a committed run): mostly zeros, a few large moves either way."""
    table = pd.read_csv(RESCORING)
    wide = table[table["measure"] == "nDCG@10"].pivot(index="query_id", columns="pipeline", values="value")
    reranked = next(c for c in wide.columns if "ms-marco" in c)
    return (wide[reranked] - wide["dense(all-MiniLM-L6-v2)"]).to_numpy()


def _clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    return 1.0 if k == n else float(stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k))


def _wealth_by_loop(y: list[float], m: float, alpha: float = 0.05) -> list[float]:
    """The hedged capital against mean ``m`` (on [0, 1]) after each observation, by the paper's
    formulas written out one step at a time (Waudby-Smith and Ramdas 2023, eq. 26, Theorem 3)."""
    wealth, k_up, k_down, total, squares = [], 1.0, 1.0, 0.0, 0.0
    variance_before = 0.25  # the prior variance, before any observation
    for t, value in enumerate(y, start=1):
        stake = math.sqrt(2 * math.log(2 / alpha) / (variance_before * t * math.log(1 + t)))
        k_up *= 1 + min(stake, 0.5 / m) * (value - m)
        k_down *= 1 - min(stake, 0.5 / (1 - m)) * (value - m)
        total += value
        mean_hat = (0.5 + total) / (t + 1)
        squares += (value - mean_hat) ** 2
        variance_before = (0.25 + squares) / (t + 1)
        wealth.append(max(0.5 * k_up, 0.5 * k_down))
    return wealth


def test_the_wealth_is_the_papers_formula_and_the_sequence_keeps_what_it_has_not_rejected(real_deltas):
    rng = np.random.default_rng(3)
    x = rng.choice(real_deltas, 120)
    y = (x + 1) / 2
    means = np.array([0.42, 0.5, 0.53, 0.61])
    ours = log_wealth(y, means)
    for j, m in enumerate(means):
        assert np.allclose(ours[:, j], np.log(_wealth_by_loop(list(y), float(m))), rtol=0, atol=1e-9)
    low, high = confidence_sequence(x)
    step = 2 / (GRID - 1)
    for j, m in enumerate(means):
        delta, kept = 2 * m - 1, ours[:, j] < math.log(20)
        for t in range(len(x)):
            if kept[: t + 1].all():  # never rejected: inside the running intersection (to a grid step)
                assert low[t] - step <= delta <= high[t] + step, (m, t)
            if not kept[t]:  # rejected now: outside the interval of this time
                assert not low[t] + step < delta < high[t] - step, (m, t)


def test_looking_after_every_query_keeps_false_gains_at_or_under_five_percent(real_deltas):
    rng = np.random.default_rng(0)
    centred = real_deltas - real_deltas.mean()  # no change, with the real runs' spread and ties
    false = 0
    for _ in range(SIMULATIONS):
        low, high = confidence_sequence(rng.choice(centred, LOOKS))
        false += bool((low > 0).any() or (high < 0).any())
    upper = _clopper_pearson_upper(false, SIMULATIONS)
    # 400 sequences, a look after each of 300 queries: the 95% interval of the rate stays under 5%.
    assert false / SIMULATIONS <= 0.05 and upper < 0.05, (false, upper)


def test_two_collections_drawn_in_one_random_order_keep_false_gains_at_or_under_five_percent(real_deltas):
    """Several collections (``ragkit.until_decided``): queries drawn in one random order from all
    of them, the sequence for the pooled mean. A null where the two collections move in opposite
    directions (+0.03 on one, -0.03 on the other, pooled 0, as SciFact's 300 and NFCorpus's 323
    queries would weigh them) must not declare a gain either, looked at after every query."""
    rng = np.random.default_rng(1)
    centred = real_deltas - real_deltas.mean()
    sizes, shifts = (300, 323), (0.03 * 323 / 300, -0.03)  # query-weighted, the pooled mean is 0
    population = np.concatenate([np.clip(rng.choice(centred, n) + shift, -1, 1) for n, shift in zip(sizes, shifts)])
    population -= population.mean()  # the clipping moved it a little
    false = 0
    for _ in range(SIMULATIONS):
        low, high = confidence_sequence(rng.choice(population, LOOKS))
        false += bool((low > 0).any() or (high < 0).any())
    assert false / SIMULATIONS <= 0.05 and _clopper_pearson_upper(false, SIMULATIONS) < 0.05, false


def test_a_fixed_n_interval_looked_at_after_every_query_declares_false_gains(real_deltas):
    """Why the sequence is needed: the t-interval at 95%, looked at from the 10th query on and
    stopped at its first exclusion of zero, errs far more often than 5% on the same nulls."""
    rng = np.random.default_rng(0)
    centred = real_deltas - real_deltas.mean()
    false = 0
    for _ in range(200):
        x = rng.choice(centred, LOOKS)
        n = np.arange(1, LOOKS + 1)
        mean = np.cumsum(x) / n
        sd = np.sqrt(np.maximum(np.cumsum(x**2) / n - mean**2, 0) * n / np.maximum(n - 1, 1))
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
        looks = slice(9, None)
        false += bool(((mean - half)[looks] > 0).any() or ((mean + half)[looks] < 0).any())
    assert false / 200 > 0.10


def test_it_covers_a_known_mean_at_every_time_at_once():
    rng = np.random.default_rng(5)
    values, probabilities = np.array([-1.0, 0.0, 0.5, 1.0]), np.array([0.1, 0.6, 0.1, 0.2])
    truth = float(values @ probabilities)
    misses = 0
    for _ in range(SIMULATIONS):
        low, high = confidence_sequence(rng.choice(values, LOOKS, p=probabilities))
        misses += bool(((low > truth) | (high < truth)).any())
    assert _clopper_pearson_upper(misses, SIMULATIONS) < 0.05
    # It narrows as evidence comes: after 300 observations, much tighter than after 10.
    low, high = confidence_sequence(rng.choice(values, LOOKS, p=probabilities))
    assert high[-1] - low[-1] < 0.5 * (high[9] - low[9]) and np.all(np.diff(high - low) <= 1e-12)


def test_the_decisions():
    assert decide([0.3] * 300, min_effect=0.01).outcome == "gain"
    assert decide([-0.3] * 300, min_effect=0.01).outcome == "loss"
    settled = decide([0.0] * 2000, min_effect=0.05)
    # The bounds are the nearest means ruled out: the sequence lies strictly inside (-0.05, 0.05).
    assert settled.outcome == "no gain worth having" and -0.05 <= settled.low and settled.high <= 0.05
    early = decide([0.3] * 3, min_effect=0.01)
    assert early.outcome == "undecided" and early.queries == 3
    gain = decide([0.3] * 300, min_effect=0.01)
    assert gain.queries < 300 and gain.low > 0  # stopped at the first query that decided


@pytest.mark.parametrize("min_effect", [0, -0.1, 1, 1.5])
def test_a_min_effect_outside_zero_to_one_is_refused(min_effect):
    with pytest.raises(ConfigError, match="--min-effect"):
        decide([0.1] * 10, min_effect=min_effect)


def test_observations_without_known_bounds_are_refused():
    with pytest.raises(ConfigError, match="known bounds"):
        confidence_sequence([0.5, 1.5])
    with pytest.raises(ConfigError, match="known bounds"):
        confidence_sequence([0.5, math.nan])
    with pytest.raises(ConfigError, match="alpha"):
        confidence_sequence([0.5], alpha=1.0)
