"""Statistics over per-query scores: paired tests, confidence intervals, Holm's correction,
and the aggregate table that puts them together.

Every comparison is paired: two pipelines are compared on the same queries, query by query.

One rule decides whether a change is *distinguishable* from zero (:func:`distinguishable`): both
the paired randomization (sign-flip) test and the paired t-test reject "no change" at 0.05 after
Holm's correction over the comparisons made together. The 95% CI inverts the randomization test
alone and is not corrected, so it can exclude zero while the change is not distinguishable; the
verdict says which test did not reject when that happens.

Example:
    >>> import numpy as np
    >>> r = paired_comparison(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.3, 0.4, 0.5]), n_resamples=1000)
    >>> round(r["delta"], 3), r["wins"], r["losses"]
    (0.1, 4, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ragkit.settings import N_RESAMPLES, POWER_SIMULATIONS, SIGNIFICANCE_LEVEL


def _sign_matrix(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The sign flips of the paired randomization test: all 2^n of them when that is no more
    than ``n_resamples`` (the exact test), else ``n_resamples`` random ones."""
    if 2**n <= n_resamples:
        return 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_resamples, n))


def _randomization_p(diff: np.ndarray, signs: np.ndarray, shift: float = 0.0) -> float:
    """Two-sided p-value of the sign-flip test that the per-query differences are centred on
    ``shift``. Random flips count the observed assignment once more (+1s), so p is never 0;
    the exact test already holds it."""
    centred = diff - shift
    observed = abs(centred.mean())
    extreme = np.sum(np.abs(signs @ centred) / len(diff) >= observed - 1e-12)
    exact = len(signs) == 2 ** len(diff)
    return float(extreme / len(signs)) if exact else float((extreme + 1) / (len(signs) + 1))


def smallest_p_perm(diff: np.ndarray, *, n_resamples: int = N_RESAMPLES) -> float:
    """The smallest p-value the sign-flip test can give on these per-query differences, however
    large they are: flipping a zero difference changes nothing, so with ``m`` non-zero ones the
    all-same-sign assignment and its mirror are 2 of 2^m equally likely, and p >= 2 / 2^m (and
    >= 1 / (n_resamples + 1) with random flips).

    Example:
        >>> smallest_p_perm(np.array([0.3, 0.1, 0.2, 0.4, 0.1, 0.0, 0.0]))
        0.0625
    """
    changed = int(np.count_nonzero(np.asarray(diff, dtype=float)))
    floor = 0.0 if 2 ** len(diff) <= n_resamples else 1.0 / (n_resamples + 1)
    return max(2.0 ** (1 - changed), floor) if changed else 1.0


def changed_queries_to_reject(alpha: float = SIGNIFICANCE_LEVEL) -> int:
    """How many queries whose score changes the sign-flip test needs before it can reject at
    ``alpha`` at all (six at 0.05: 2 / 2^6 = 0.031).

    Example:
        >>> changed_queries_to_reject(0.05), changed_queries_to_reject(0.01)
        (6, 8)
    """
    m = 1
    while 2.0 ** (1 - m) >= alpha:
        m += 1
    return m


def distinguishable(p_perm_holm: float, p_ttest_holm: float, *, alpha: float = SIGNIFICANCE_LEVEL) -> bool:
    """ragkit's one rule for "distinguishable from zero": the randomization test and the
    paired t-test both reject at ``alpha``, each after Holm's correction over its family.

    Example:
        >>> distinguishable(0.035, 0.069), distinguishable(0.01, 0.02)
        (False, True)
    """
    return bool(p_perm_holm < alpha and p_ttest_holm < alpha)


def sign_flip_power(
    diff: np.ndarray,
    effect: float,
    *,
    alpha: float = SIGNIFICANCE_LEVEL,
    n_sims: int = POWER_SIMULATIONS,
    n_resamples: int = 2000,
    seed: int = 0,
) -> float:
    """The sign-flip test's power against a true mean change of ``effect``, simulated on the
    observed per-query differences rather than assumed normal.

    Each replication draws ``len(diff)`` queries with replacement from the observed differences,
    moved so their mean is ``effect``: queries whose score did not change stay unchanged (a
    reranker that leaves a query's top ten as it was does so under a larger effect too) and the
    changed ones are shifted together. Many ties therefore cost power that a t-test's normal
    approximation does not see. ``n_resamples`` sign flips per replication (capped at 2,000: p
    to about 0.005 near 0.05) keep the whole simulation within a fraction of a second.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> diff = rng.normal(0.1, 0.2, size=60)
        >>> bool(0.7 < sign_flip_power(diff, minimum_detectable_effect(float(diff.std(ddof=1)), 60)) < 0.9)
        True
    """
    diff = np.asarray(diff, dtype=float)
    n, changed = len(diff), diff != 0
    if not changed.any():
        return 0.0
    population = diff.copy()
    population[changed] += effect * n / changed.sum() - diff[changed].mean()
    rng = np.random.default_rng(seed)
    sims = population[rng.integers(0, n, size=(n_sims, n))]
    signs = _sign_matrix(n, min(n_resamples, 2000), seed + 1)
    exact = len(signs) == 2**n
    extreme = np.sum(np.abs(sims @ signs.T) >= np.abs(sims.sum(axis=1, keepdims=True)) - 1e-12, axis=1)
    p = extreme / len(signs) if exact else (extreme + 1) / (len(signs) + 1)
    return float(np.mean(p < alpha))


def randomization_ci(
    diff: np.ndarray, *, level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Confidence interval of the mean paired difference by inverting the randomization test:
    every shift the test does not reject at ``1 - level``. It is the interval that agrees with
    :func:`paired_comparison`'s ``p_perm``: it excludes 0 exactly when ``p_perm < 1 - level``.

    With very few queries no shift can be rejected (five queries give at best p = 1/16), and
    the interval is unbounded: ``(-inf, inf)``.

    Example:
        >>> diff = np.array([0.1, 0.3, 0.2, 0.4, 0.0, 0.2, 0.3, 0.1, 0.2, 0.3])
        >>> low, high = randomization_ci(diff)
        >>> bool(0 < low < diff.mean() < high)
        True
    """
    diff = np.asarray(diff, dtype=float)
    signs = _sign_matrix(len(diff), n_resamples, seed)
    alpha = 1.0 - level
    mean = float(diff.mean())
    spread = float(diff.max() - diff.min()) + 1e-9

    def bound(direction: float) -> float:
        far = mean + direction * spread  # beyond every difference: the test's strongest rejection
        if _randomization_p(diff, signs, far) > alpha:
            return direction * float("inf")
        inside, outside = mean, far
        for _ in range(50):  # bisection to well below the precision any table shows
            middle = (inside + outside) / 2
            if _randomization_p(diff, signs, middle) > alpha:
                inside = middle
            else:
                outside = middle
        return inside

    return bound(-1.0), bound(1.0)


def paired_comparison(
    base: np.ndarray, other: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Compare two pipelines' per-query scores on the same queries.

    Returns the mean delta (``other - base``); its 95% confidence interval, by inverting the
    paired randomization test (:func:`randomization_ci`), so that it excludes zero exactly
    when that test's p-value is below 0.05; the two-sided paired t-test and randomization
    (sign-flip, exact for up to 13 queries) p-values; win/tie/loss counts; and how much
    evidence the queries hold: the standard deviation of the per-query deltas, the smallest
    p-value the randomization test could give on them (``p_perm_min``,
    :func:`smallest_p_perm`), the minimum detectable effect at 80% power of the paired t-test
    (:func:`minimum_detectable_effect`), the randomization test's power at that effect
    simulated on these deltas (``power_perm``, :func:`sign_flip_power`), and the queries
    needed to detect the observed delta (:func:`queries_needed`, and at least enough for the
    randomization test to be able to reject at this share of changed queries; ``nan`` when the
    delta is 0). Where the randomization test cannot reject at 0.05 whatever the changes
    (``p_perm_min >= 0.05``), no effect is detectable: ``mde`` and ``power_perm`` are ``nan``.

    Example:
        >>> r = paired_comparison(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.3, 0.4, 0.5]), n_resamples=1000)
        >>> round(r["delta"], 3), r["wins"], r["losses"]
        (0.1, 4, 0)
    """
    from scipy import stats

    diff = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    n = len(diff)
    signs = _sign_matrix(n, n_resamples, seed)
    p_t = float(stats.ttest_rel(other, base).pvalue) if np.any(diff != 0) else 1.0
    ci_low, ci_high = randomization_ci(diff, n_resamples=n_resamples, seed=seed)
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    p_min = smallest_p_perm(diff, n_resamples=n_resamples)
    mde = minimum_detectable_effect(sd, n) if p_min < SIGNIFICANCE_LEVEL else float("nan")
    power = sign_flip_power(diff, mde, n_resamples=n_resamples, seed=seed) if np.isfinite(mde) else float("nan")
    needed = queries_needed(float(diff.mean()), sd)
    changed = int(np.count_nonzero(diff))
    if needed is not None and changed:  # both tests must be able to reject: enough changed queries
        needed = max(needed, int(np.ceil(changed_queries_to_reject() * n / changed)))
    return {
        "delta": float(diff.mean()),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_ttest": p_t,
        "p_perm": _randomization_p(diff, signs),
        "wins": int(np.sum(diff > 0)),
        "ties": int(np.sum(diff == 0)),
        "losses": int(np.sum(diff < 0)),
        "sd": sd,
        "p_perm_min": p_min,
        "mde": mde,
        "power_perm": power,
        "queries_needed": float("nan") if needed is None else float(needed),
    }


def _z_sum(n: int, alpha: float, power: float) -> float:
    """t_{1-alpha/2, n-1} + z_power: how many standard errors a true difference must be for a
    two-sided paired t-test at ``alpha`` to detect it with probability ``power``. This is the
    usual normal approximation to the noncentral t power (accurate to a query or two beyond
    ten queries), and it gives closed forms for both questions below."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, n - 1) + stats.norm.ppf(power))


def minimum_detectable_effect(sd: float, n: int, *, alpha: float = SIGNIFICANCE_LEVEL, power: float = 0.8) -> float:
    """The smallest mean paired difference that ``n`` queries detect with probability
    ``power`` (two-sided paired t-test at ``alpha``), given the per-query deltas' standard
    deviation ``sd``. ``nan`` when ``n < 2`` or ``sd`` is not positive.

    Example:
        >>> round(minimum_detectable_effect(0.27, 50), 3), round(minimum_detectable_effect(0.27, 300), 3)
        (0.109, 0.044)
    """
    if n < 2 or not sd > 0:
        return float("nan")
    return _z_sum(n, alpha, power) * sd / float(np.sqrt(n))


def queries_needed(delta: float, sd: float, *, alpha: float = SIGNIFICANCE_LEVEL, power: float = 0.8) -> int | None:
    """How many queries a paired t-test needs to detect a mean difference ``delta`` with
    probability ``power``, given the per-query deltas' standard deviation ``sd``; ``None`` when
    ``delta`` is 0 (no number of queries detects no difference) or ``sd`` is unknown.

    Example:
        >>> queries_needed(0.02, 0.27)
        1433
    """
    if not delta or not sd > 0 or not np.isfinite(sd):
        return None
    n = 2
    while minimum_detectable_effect(sd, n, alpha=alpha, power=power) > abs(delta):  # MDE falls as n grows
        n *= 2
    low, high = n // 2, n
    while high - low > 1:
        middle = (low + high) // 2
        detectable = minimum_detectable_effect(sd, middle, alpha=alpha, power=power) <= abs(delta)
        low, high = (low, middle) if detectable else (middle, high)
    return high


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
    """95% percentile-bootstrap confidence interval of a mean over queries.

    Example:
        >>> low, high = mean_ci(np.array([0.2, 0.4, 0.6, 0.8]), n_resamples=2000)
        >>> bool(0.2 <= low < 0.5 < high <= 0.8)
        True
    """
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def percentile_ci(values: np.ndarray, q: float, *, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap confidence interval of the ``q``-th percentile of ``values``
    (for latency: how far the median or p95 of the queries timed could be off).

    Example:
        >>> low, high = percentile_ci(np.arange(1.0, 101.0), 50)
        >>> bool(40 < low < 50.5 < high < 61)
        True
    """
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.percentile(values[rng.integers(0, len(values), size=(n_resamples, len(values)))], q, axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _compare(
    scores: pd.DataFrame, pairs: Sequence[tuple[str, str]], prefix: str, *, n_resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Paired comparisons of ``(pipeline, reference)`` pairs on one measure's per-query
    scores, Holm-corrected together (one family); columns named ``<prefix><statistic>``."""
    results = {
        name: paired_comparison(scores[ref].to_numpy(), scores[name].to_numpy(), n_resamples=n_resamples, seed=seed)
        for name, ref in pairs
    }
    names = [name for name, _ in pairs]
    adjusted_t = holm([results[n]["p_ttest"] for n in names]) if names else []
    adjusted_p = holm([results[n]["p_perm"] for n in names]) if names else []
    out: dict[str, dict[str, Any]] = {}
    for n, at, ap in zip(names, adjusted_t, adjusted_p):
        cells = {f"{prefix}{k}": v for k, v in results[n].items()}
        cells[f"{prefix}p_ttest_holm"], cells[f"{prefix}p_perm_holm"] = at, ap
        cells[f"{prefix}significant"] = distinguishable(ap, at)
        out[n] = cells
    return out


def aggregate(
    per_query: pd.DataFrame,
    names: Sequence[str],
    *,
    baseline: str,
    first_stages: dict[str, str] | None = None,
    measures: Sequence[str],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """The results table: one row per pipeline (in ``names`` order), with, for every measure,
    the mean and its 95% CI, and against ``baseline`` the delta, its CI, raw and
    Holm-corrected p-values of both tests, ``significant``, win/tie/loss counts, the per-query
    deltas' spread, the minimum detectable effect and the queries needed for the delta.

    ``first_stages`` maps each reranked pipeline to its own first stage alone: the same
    statistics against that pipeline go in columns ``"<measure> own <statistic>"`` (Holm's
    correction over that family of comparisons), and the column ``first_stage`` names it.

    Columns are named ``"<measure>"``, ``"<measure> <statistic>"`` (for example
    ``"nDCG@10 p_perm_holm"``); the baseline's comparison cells are empty.

    Example:
        >>> per_query = pd.DataFrame({"pipeline": ["a", "a", "b", "b"], "query_id": ["1", "2", "1", "2"],
        ...                           "measure": "RR@10", "value": [0.5, 1.0, 1.0, 1.0]})
        >>> aggregate(per_query, ["a", "b"], baseline="a", measures=["RR@10"], n_resamples=100)["RR@10 delta"].tolist()
        [nan, 0.25]
    """
    first_stages = {n: f for n, f in (first_stages or {}).items() if f in names}
    wide = per_query.pivot_table(index=["measure", "query_id"], columns="pipeline", values="value")
    rows: dict[str, dict[str, Any]] = {
        n: {"baseline": n == baseline, "first_stage": first_stages.get(n)} for n in names
    }
    others = [(n, baseline) for n in names if n != baseline]
    for m in measures:
        scores = wide.loc[m]
        for n in names:
            rows[n][m] = float(scores[n].mean())
            lo, hi = mean_ci(scores[n].to_numpy(), n_resamples=n_resamples, seed=seed)
            rows[n][f"{m} mean_ci_low"], rows[n][f"{m} mean_ci_high"] = lo, hi
        # Holm controls the family-wise error over the pipelines compared with one baseline.
        for n, cells in _compare(scores, others, f"{m} ", n_resamples=n_resamples, seed=seed).items():
            rows[n].update(cells)
        own = list(first_stages.items())
        for n, cells in _compare(scores, own, f"{m} own ", n_resamples=n_resamples, seed=seed).items():
            rows[n].update(cells)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "pipeline"
    # The baseline has no counts against itself; nullable integers keep the others whole.
    counts = [c for c in table.columns if c.split(" ")[-1] in ("wins", "ties", "losses")]
    table[counts] = table[counts].astype("Int64")
    table["first_stage"] = table["first_stage"].astype(object)
    return table
