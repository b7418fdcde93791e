"""Anytime-valid confidence sequences for a mean per-query change, and the decision they allow.

A fixed-n confidence interval is valid once, at the sample size chosen in advance: looking at it
after every batch of queries and stopping when it excludes zero ("peeking") declares far more
false gains than its 5%. A *confidence sequence* is a sequence of intervals, one after every
query, that all hold together with probability 95%: it may be looked at after every query, and
the evaluation stopped whenever it says enough.

This one is Waudby-Smith and Ramdas's betting confidence sequence (2023, "Estimating means of
bounded random variables by betting", JRSS-B 86(1); the hedged capital process with predictable
plug-in bets, their Theorem 3 and eq. (26)). A per-query change of a measure in [0, 1] (nDCG@10,
RR@10, R@100) lies in [-1, 1]; it is mapped to [0, 1], and for every candidate mean ``m`` (a
grid) two gamblers bet that the mean is above or below ``m`` with stakes set from the
observations before each query. Their average wealth is a nonnegative martingale when the mean
is ``m``, so by Ville's inequality it reaches ``1/alpha`` with probability at most ``alpha``
ever: the sequence holds the ``m`` whose wealth has not. Running intersection keeps every
interval inside the last.

- :func:`confidence_sequence`: the bounds after each observation.
- :func:`decide`: where a sequential evaluation may stop: a gain, a loss, or a change smaller
  than ``min_effect`` either way ("no gain worth having"), each at the first query the sequence
  shows it. Any rule that reads only the sequence keeps its 95%, so the run may stop there.

Example:
    >>> import numpy as np
    >>> low, high = confidence_sequence(np.full(200, 0.3))
    >>> bool(low[-1] > 0 and low[-1] < 0.3 < high[-1])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ragkit.errors import ConfigError

GRID = 2001  # candidate means on [-1, 1]: bounds are exact to 0.001
_STAKE_CAP = 0.5  # c in the paper: a bet never risks more than half the wealth


def confidence_sequence(
    deltas: np.ndarray | list[float], *, alpha: float = 0.05, bounds: tuple[float, float] = (-1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of a ``1 - alpha`` confidence sequence for the mean of
    ``deltas``, one pair after each observation, in the order given; every bound holds at every
    time at once (so the sequence may be looked at after each observation).

    The candidate means are 0.001 apart (on [-1, 1]); each bound is the nearest candidate
    *outside* the sequence (or an end of the range), so the mean lies strictly between them: a
    lower bound of exactly 0 means that 0 itself has been ruled out.

    Args:
        deltas: per-query changes, each within ``bounds``.
        alpha: the probability that the sequence ever misses the mean.
        bounds: the range the observations lie in (a change of a [0, 1] measure: [-1, 1]).

    Raises:
        ConfigError: an observation outside ``bounds``, or ``alpha`` outside (0, 1).
    """
    x = np.asarray(deltas, dtype=np.float64)
    lo, hi = bounds
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}.")
    if x.size and (not np.all(np.isfinite(x)) or x.min() < lo or x.max() > hi):
        raise ConfigError(
            f"A confidence sequence by betting needs observations within known bounds [{lo:g}, {hi:g}] (a change "
            "of a measure in [0, 1]); these are not. Use a bounded measure (nDCG, RR, recall, precision)."
        )
    if x.size == 0:
        return np.empty(0), np.empty(0)
    y = (x - lo) / (hi - lo)  # on [0, 1]
    grid = np.linspace(0.0, 1.0, GRID)
    inner = grid[1:-1]  # the ends 0 and 1 are handled by the bounds' clipping below
    # A mean stays while the hedged wealth betting against it is under 1/alpha.
    kept = log_wealth(y, inner, alpha=alpha) < np.log(1 / alpha)
    any_kept = kept.any(axis=1)
    first = np.where(any_kept, kept.argmax(axis=1), 0)
    last = np.where(any_kept, len(inner) - 1 - kept[:, ::-1].argmax(axis=1), len(inner) - 1)
    step = grid[1] - grid[0]
    # A grid point rejected bounds the mean only to within a step: widen by one.
    lower = np.where(any_kept, inner[first] - step, 0.0)
    upper = np.where(any_kept, inner[last] + step, 1.0)
    lower, upper = np.maximum.accumulate(np.clip(lower, 0, 1)), np.minimum.accumulate(np.clip(upper, 0, 1))
    upper = np.maximum(upper, lower)  # an empty intersection (probability <= alpha): keep a point
    # On the grid of candidates exactly, so that a bound at 0 is 0 and not a rounding error.
    places = int(np.ceil(-np.log10((hi - lo) / (GRID - 1)))) + 3
    return np.round(lo + (hi - lo) * lower, places), np.round(lo + (hi - lo) * upper, places)


def log_wealth(y: np.ndarray, means: np.ndarray, *, alpha: float = 0.05) -> np.ndarray:
    """The log of the hedged capital ``max(K+, K-) / 2`` after each observation of ``y`` (on
    [0, 1]), for each candidate mean in ``means`` (strictly between 0 and 1): one row per
    observation, one column per mean.

    The stakes are the predictable plug-in ones of the paper's eq. (26), computed from the
    observations before each one: ``sqrt(2 log(2/alpha) / (var_{t-1} t log(1 + t)))``, capped
    at ``c / m`` betting up and ``c / (1 - m)`` betting down (``c = 1/2``)."""
    n = len(y)
    t = np.arange(1, n + 1, dtype=np.float64)
    mean_hat = (0.5 + np.cumsum(y)) / (t + 1)
    var_hat = (0.25 + np.cumsum((y - mean_hat) ** 2)) / (t + 1)
    var_before = np.concatenate([[0.25], var_hat[:-1]])
    stake = np.sqrt(2 * np.log(2 / alpha) / (var_before * t * np.log1p(t)))
    up = np.minimum(stake[:, None], _STAKE_CAP / means[None, :])
    down = np.minimum(stake[:, None], _STAKE_CAP / (1 - means[None, :]))
    centred = y[:, None] - means[None, :]
    log_up = np.cumsum(np.log1p(up * centred), axis=0)
    log_down = np.cumsum(np.log1p(-down * centred), axis=0)
    return np.maximum(log_up, log_down) + np.log(0.5)


def check_min_effect(min_effect: float) -> float:
    """``min_effect`` if it is a change of a [0, 1] measure worth having: above 0, below 1.

    Raises:
        ConfigError: otherwise, naming ``--min-effect``.
    """
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or not 0 < min_effect < 1:
        raise ConfigError(
            f"--min-effect must be above 0 and below 1 (the smallest change of the leading measure worth having, "
            f"e.g. 0.01), got {min_effect!r}."
        )
    return float(min_effect)


@dataclass(frozen=True)
class Decision:
    """Where a sequential evaluation of one comparison stands.

    Attributes:
        outcome: ``"gain"`` (the sequence excludes 0 from below), ``"loss"`` (from above),
            ``"no gain worth having"`` (it lies inside ``(-min_effect, min_effect)``) or
            ``"undecided"`` (none yet).
        queries: the observations it took (all of them when undecided).
        low, high: the sequence's bounds then (outside it: the mean lies strictly between).
    """

    outcome: str
    queries: int
    low: float
    high: float


def decide(deltas: np.ndarray | list[float], *, min_effect: float, alpha: float = 0.05) -> Decision:
    """The first observation at which the confidence sequence of ``deltas`` decides: it
    excludes 0, or it lies within ``min_effect`` of 0 on both sides; else undecided. The
    sequence only narrows (a running intersection), so a decision once reached stands at every
    later observation.

    Example:
        >>> decide([0.3] * 200, min_effect=0.01).outcome
        'gain'
    """
    return decision(*confidence_sequence(deltas, alpha=alpha), min_effect=min_effect)


def decision(low: np.ndarray, high: np.ndarray, *, min_effect: float) -> Decision:
    """:func:`decide` on bounds already computed by :func:`confidence_sequence` (a caller
    that needs both computes the sequence once)."""
    check_min_effect(min_effect)
    for i, (lo, hi) in enumerate(zip(low, high)):
        # The bounds lie outside the sequence: one at 0 has ruled 0 out, one at min_effect
        # has ruled out changes of min_effect and beyond.
        if lo >= 0:
            return Decision("gain", i + 1, float(lo), float(hi))
        if hi <= 0:
            return Decision("loss", i + 1, float(lo), float(hi))
        if -min_effect <= lo and hi <= min_effect:
            return Decision("no gain worth having", i + 1, float(lo), float(hi))
    n = len(low)
    return Decision("undecided", n, float(low[-1]) if n else -1.0, float(high[-1]) if n else 1.0)


def check_rounds(round_queries: int | None, max_queries: int | None, budget_minutes: float | None) -> None:
    """That a sequential evaluation's limits are usable: whole numbers of queries of at least 1,
    a budget of minutes above 0 (``None``: the default, or no limit).

    Raises:
        ConfigError: otherwise, naming the option.
    """
    for option, value in (("--round-queries", round_queries), ("--max-queries", max_queries)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{option} must be a whole number of at least 1, got {value!r}.")
    if budget_minutes is not None and not (math.isfinite(budget_minutes) and budget_minutes > 0):
        raise ConfigError(f"--budget must be a number of minutes above 0, got {budget_minutes}.")


__all__ = ["Decision", "check_min_effect", "check_rounds", "confidence_sequence", "decide", "decision"]
