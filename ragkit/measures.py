"""Retrieval measures, by their ir-measures names (``nDCG@10``, ``RR@10``, ``R@100``...).

ragkit computes every measure with ``ir_measures``; this module turns names into measure
objects (checking them before any work starts) and runs into per-query scores.

Example:
    >>> [str(m) for m in parse_measures(["nDCG@10", "RR@10"])]
    ['nDCG@10', 'RR@10']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ragkit.errors import ConfigError, DataError

Run = dict[str, dict[str, float]]  # query id -> doc id -> score, as ir_measures and TREC expect
Qrels = dict[str, dict[str, int]]  # query id -> doc id -> graded relevance

# pytrec_eval, which ir-measures uses for nDCG and recall, reads scores as 32-bit floats; the
# MS MARCO evaluator (RR) reads them at full precision. A run is scored as ranked only if its
# scores stay strictly decreasing after that rounding.
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)

_HELP = "Use an ir-measures name such as nDCG@10, RR@10, R@100, P@5, AP@100 (see https://ir-measur.es/)."


def parse_measures(names: Sequence[str]) -> list[Any]:
    """ir-measures objects for names such as ``nDCG@10``, ``RR@10``, ``R@100``, ``P@5``.

    A name is checked completely here, cut-off included, and tried on a one-query example, so
    that a bad one fails before any model is loaded rather than after a run (a cut-off of 0
    would abort the process inside the scorer).

    Example:
        >>> [str(m) for m in parse_measures(["nDCG@10", "RR@10"])]
        ['nDCG@10', 'RR@10']
        >>> parse_measures(["P@0"])
        Traceback (most recent call last):
        ...
        ragkit.errors.ConfigError: Measure 'P@0': the cut-off must be a whole number of at least 1, got 0. ...
    """
    import ir_measures

    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError(f"No measures given. {_HELP}")
    out = []
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError, TypeError, AttributeError) as exc:
            raise ConfigError(f"Unknown measure {name!r} ({exc}). {_HELP}") from exc
        cutoff = measure.params.get("cutoff")
        if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1):
            raise ConfigError(
                f"Measure {name!r}: the cut-off must be a whole number of at least 1, got {cutoff!r}. {_HELP}"
            )
        try:
            list(ir_measures.iter_calc([measure], {"q": {"d": 1}}, {"q": {"d": 1.0}}))
        except Exception as exc:  # noqa: BLE001 - any failure of the scorer means the name is unusable
            raise ConfigError(f"Measure {name!r} cannot be computed ({type(exc).__name__}: {exc}). {_HELP}") from exc
        out.append(measure)
    return out


# Measures whose per-query value lies in [0, 1] (ir-measures names): a change of one lies in
# [-1, 1], which an anytime-valid confidence sequence by betting needs (``ragkit.sequential``).
BOUNDED = frozenset({"nDCG", "RR", "R", "P", "AP", "Success", "Judged", "Rprec", "SetP", "SetR", "SetF", "Bpref",
                     "ERR", "infAP"})  # fmt: skip


def bounded(name: str) -> bool:
    """Whether the measure ``name`` (``nDCG@10``) takes per-query values in [0, 1].

    Example:
        >>> bounded("nDCG@10"), bounded("NumRet")
        (True, False)
    """
    return parse_measures([name])[0].NAME in BOUNDED


def check_bounded(name: str) -> None:
    """That a sequential evaluation can decide on the measure ``name``: its per-query values
    lie in [0, 1] (:func:`bounded`).

    Raises:
        ConfigError: otherwise, naming ``--measures``.
    """
    if not bounded(name):
        raise ConfigError(
            f"--measures: a sequential evaluation decides on the first measure, and {name} has no known bounds "
            "(its confidence sequence needs per-query values in [0, 1]). Put nDCG@10, RR@10, R@100, P@k or AP first."
        )


def _float32(score: float) -> float:
    """``score`` as the nearest 32-bit float, subnormals as 0 (a scorer that flushes them to
    zero would read two of them as a tie)."""
    single = float(np.float32(score))
    return 0.0 if abs(single) < _FLOAT32_TINY else single


def _float32_below(score: float) -> float:
    """The largest normal (or zero) 32-bit float strictly below ``score``, a float32 value."""
    below = float(np.nextafter(np.float32(score), np.float32(-np.inf)))
    if abs(below) < _FLOAT32_TINY:
        below = 0.0 if score > 0 else -_FLOAT32_TINY
    return below


def ranked_run(ranked: Sequence[tuple[str, float]]) -> dict[str, float]:
    """One query's run that keeps the order given, whatever scorer reads it.

    Each score is rounded to the nearest normal 32-bit float (or 0), and made the next 32-bit
    float below the one above it when rounding (or a tie) would not keep it strictly lower.
    Every score is then exactly a float32 value, strictly decreasing, so pytrec_eval (which
    reads float32), the MS MARCO evaluator (full precision) and a TREC file
    (:func:`ragkit.results.trec_run`, read back at either precision) all see this order.
    Scores move by at most a few float32 steps, a relative 1e-7 each.

    Example:
        >>> ranked_run([("a", 0.5), ("b", 0.5), ("c", 0.1)])
        {'a': 0.5, 'b': 0.4999999701976776, 'c': 0.10000000149011612}
        >>> ranked_run([("a", 0.0), ("b", 0.0)])
        {'a': 0.0, 'b': -1.1754943508222875e-38}
    """
    run: dict[str, float] = {}
    previous = math.inf
    for doc, score in ranked:
        run[doc] = previous = min(_float32(score), _float32_below(previous))
    return run


def order_problem(run: Run) -> str | None:
    """What keeps a scorer from reading ``run`` as ranked, or ``None``: a score that is not
    finite, or two scores of one query that 32-bit floats cannot tell apart (pytrec_eval would
    order those by document id). :func:`ranked_run` builds runs that have neither.

    Example:
        >>> order_problem({"q1": {"a": 0.5, "b": 0.5 - 1e-12}})
        "query 'q1': documents 'a' and 'b' score 0.5 and 0.499999999999, the same as 32-bit floats"
    """
    for qid, scores in run.items():
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        if any(not math.isfinite(s) for _, s in ranked):
            return f"query {qid!r} has a score that is not a finite number"
        rounded = np.asarray([s for _, s in ranked], dtype=np.float32)
        same = np.flatnonzero(rounded[1:] >= rounded[:-1])
        if len(same):
            (a, sa), (b, sb) = ranked[same[0]], ranked[same[0] + 1]
            return f"query {qid!r}: documents {a!r} and {b!r} score {sa:.12g} and {sb:.12g}, the same as 32-bit floats"
    return None


def per_query_scores(qrels: Qrels, run: Run, measures: Sequence[Any]) -> pd.DataFrame:
    """One row per (query, measure) for every judged query; a query the run misses scores 0,
    as trec_eval's ``-c`` option counts it. A run whose scores a float32 scorer would reorder is
    refused (:func:`order_problem`): its measures would not be those of its ranking.

    Example:
        >>> per_query_scores({"q1": {"d1": 1}}, {"q1": {"d1": 2.0, "d2": 1.0}}, parse_measures(["RR@10"]))
          query_id measure  value
        0       q1   RR@10    1.0
    """
    import ir_measures

    problem = order_problem(run)
    if problem is not None:
        raise DataError(f"This run cannot be scored as ranked: {problem}. Build each query's run with ranked_run().")
    values = {(m.query_id, str(m.measure)): m.value for m in ir_measures.iter_calc(measures, qrels, run)}
    rows = [(qid, str(m), values.get((qid, str(m)), 0.0)) for qid in sorted(qrels) for m in measures]
    return pd.DataFrame(rows, columns=["query_id", "measure", "value"])
