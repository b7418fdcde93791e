"""Retrieval measures, by their ir-measures names (``nDCG@10``, ``RR@10``, ``R@100``...).

ragkit computes every measure with ``ir_measures``; this module turns names into measure
objects (checking them before any work starts) and runs into per-query scores.

Example:
    >>> [str(m) for m in parse_measures(["nDCG@10", "RR@10"])]
    ['nDCG@10', 'RR@10']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ragkit.errors import ConfigError

Run = dict[str, dict[str, float]]  # query id -> doc id -> score, as ir_measures and TREC expect
Qrels = dict[str, dict[str, int]]  # query id -> doc id -> graded relevance

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


def per_query_scores(qrels: Qrels, run: Run, measures: Sequence[Any]) -> pd.DataFrame:
    """One row per (query, measure) for every judged query; a query the run misses scores 0,
    as trec_eval's ``-c`` option counts it.

    Example:
        >>> per_query_scores({"q1": {"d1": 1}}, {"q1": {"d1": 2.0, "d2": 1.0}}, parse_measures(["RR@10"]))
          query_id measure  value
        0       q1   RR@10    1.0
    """
    import ir_measures

    values = {(m.query_id, str(m.measure)): m.value for m in ir_measures.iter_calc(measures, qrels, run)}
    rows = [(qid, str(m), values.get((qid, str(m)), 0.0)) for qid in sorted(qrels) for m in measures]
    return pd.DataFrame(rows, columns=["query_id", "measure", "value"])
