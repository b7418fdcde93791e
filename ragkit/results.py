"""The result of an evaluation, as an object that knows how to become a table, Markdown and
files. It depends on nothing above it: no models, no index, no plotting (``ragkit.report``
adds the plots).

Columns of the results table are named ``"<measure>"`` and ``"<measure> <statistic>"``
(``ragkit.stats.aggregate`` makes them); ``meta`` holds what the run was (``RESULT_META``
lists the keys every result has).

Example:
    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"k": [20], "pairs/s": [7.1]})))
    | k | pairs/s |
    |---|---|
    | 20 | 7.1 |
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ragkit.cache import atomic_folder, check_writable
from ragkit.errors import ConfigError, DataError
from ragkit.measures import Run
from ragkit.registry import reranker_kind
from ragkit.sequential import check_min_effect
from ragkit.settings import FIRST_STAGE_DEPTH, SIGNIFICANCE_LEVEL
from ragkit.stats import changed_queries_to_reject

SUBSET_WARNING = (
    "ragkit subset, not the official split: these scores are not comparable with full-split (published) scores."
)

# The keys of ``EvaluationResult.meta``: what every report reads.
RESULT_META = (
    "collection", "split", "is_subset", "collection_summary", "n_queries", "n_docs", "pipelines", "baseline",
    "measures", "device", "device_name", "engine", "batch_size", "model_revisions", "versions", "date",
    "latency_measured", "reused_result",
)  # fmt: skip


def slug(name: str) -> str:
    """A file-name-safe version of a pipeline name.

    Example:
        >>> slug("dense(all-MiniLM-L6-v2) >> ms-marco-MiniLM-L-12-v2(k=20, top_n=20)")
        'dense_all-MiniLM-L6-v2_ms-marco-MiniLM-L-12-v2_k20_top_n20'
    """
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.\-]+", "_", name.replace("=", ""))).strip("_")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df``'s columns and rows (the index is left out).

    Example:
        >>> print(markdown_table(pd.DataFrame({"k": [20], "pairs/s": [7.1]})))
        | k | pairs/s |
        |---|---|
        | 20 | 7.1 |
    """
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def trec_run(run: Run, tag: str) -> str:
    """A run in TREC format: ``qid Q0 docid rank score tag``, ranks from 1 by descending score.

    Scores are written in the shortest form that reads back as the same number: a 32-bit
    float's when the score is one (ragkit's runs hold only such scores, see
    :func:`ragkit.measures.ranked_run`), else a 64-bit float's. A scorer that re-reads the file
    at either precision and sorts by score (trec_eval breaks ties by document id) gets exactly
    the ranking written: ragkit's runs have no ties, and rounding would make some.

    Example:
        >>> print(trec_run({"q1": {"d2": 0.10000000149011612, "d1": 17.000000000000004}}, "demo"), end="")
        q1 Q0 d1 1 17.000000000000004 demo
        q1 Q0 d2 2 0.1 demo
    """
    lines = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda x: -x[1])
        lines += [f"{qid} Q0 {doc} {rank} {_score_text(score)} {tag}" for rank, (doc, score) in enumerate(ranked, 1)]
    return "\n".join(lines) + "\n"


def _score_text(score: float) -> str:
    single = np.float32(score)
    return str(single) if float(single) == score else repr(float(score))


# DataFrames go into the result cache as plain JSON (never pickle): values, index, and the
# dtype of every column, so that a reused result is the same frame as a fresh one.
def _number(value: float, digits: int = 3) -> str:
    if not np.isfinite(value):
        return "-inf" if value < 0 else "+inf"
    return f"{round(value, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.000"


def _milliseconds(ms: float) -> str:
    return f"{ms:,.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def _comparison_cells(row: pd.Series, prefix: str, measure: str) -> dict[str, str]:
    """One comparison (columns ``<prefix> <statistic>``), as text: delta, CI, p, W/T/L, MDE,
    queries needed."""
    needed = row.get(f"{prefix} queries_needed", float("nan"))
    mde = row.get(f"{prefix} mde", float("nan"))
    return {
        "delta": f"{row[f'{prefix} delta']:+.4f}" + ("*" if _is_true(row[f"{prefix} significant"]) else ""),
        "95% CI": f"[{_number(row[f'{prefix} ci_low'])}, {_number(row[f'{prefix} ci_high'])}]",
        "p (Holm)": f"{row[f'{prefix} p_perm_holm']:.3g}",
        "W/T/L": f"{row[f'{prefix} wins']}/{row[f'{prefix} ties']}/{row[f'{prefix} losses']}",
        "MDE": f"{mde:.3f}" if np.isfinite(mde) else "-",
        "queries for delta": f"{needed:,.0f}" if np.isfinite(needed) else "-",
    }


def _is_true(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _ms(latency: pd.DataFrame, pipeline: str, stage: str) -> tuple[float, int] | None:
    """A pipeline stage's median milliseconds per query and how many queries were timed."""
    rows = latency[(latency["pipeline"] == pipeline) & (latency["stage"] == stage)]
    return (float(rows["p50_ms"].iloc[0]), int(rows["queries"].iloc[0])) if len(rows) else None


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else "< 0.001"


def _reader(pipeline: dict[str, Any]) -> str:
    """What reads a reranked pipeline's pairs, for the verdict: the cross-encoder, or the
    reranker of another family (a bi-encoder cuts each text alone)."""
    reranker = pipeline.get("reranker")
    is_cross_encoder = isinstance(reranker, str) and reranker_kind(reranker)[0].name == "cross-encoder"
    return "the cross-encoder" if is_cross_encoder else "the reranker"


def _why_not_distinguishable(row: pd.Series, prefix: str, family: int) -> str:
    """A sentence for a change that is not distinguishable although part of the evidence points
    the other way: which of the two tests did not reject, or that the CI is not corrected for
    the ``family`` comparisons made together. Empty when nothing needs explaining."""
    if _is_true(row[f"{prefix} significant"]):
        return ""
    alpha = SIGNIFICANCE_LEVEL
    perm, ttest = row[f"{prefix} p_perm_holm"], row[f"{prefix} p_ttest_holm"]
    corrected = " (Holm-corrected)" if family > 1 else ""
    rule = f"a change counts as distinguishable only when both tests reject at {alpha:g}"
    if perm < alpha <= ttest:
        return (f" The randomization test rejects no change (p {_p(perm)}{corrected}) but the paired t-test does not "
                f"(p {_p(ttest)}): {rule}.")  # fmt: skip
    if ttest < alpha <= perm:
        return (f" The paired t-test rejects no change (p {_p(ttest)}{corrected}) but the randomization test does "
                f"not (p {_p(perm)}): {rule}.")  # fmt: skip
    if row[f"{prefix} ci_low"] > 0 or row[f"{prefix} ci_high"] < 0:
        return (f" Its 95% CI excludes zero but is not corrected for the {family} comparisons made together; after "
                f"Holm's correction neither test rejects at {alpha:g}.")  # fmt: skip
    return ""


def _evidence(row: pd.Series, prefix: str, n: int) -> str:
    """What these queries could detect: the paired t-test's minimum detectable effect, the
    randomization test's simulated power there, the queries the observed delta would need; or
    why no effect is detectable."""
    delta, mde, needed = row[f"{prefix} delta"], row[f"{prefix} mde"], row[f"{prefix} queries_needed"]
    power, p_min = row.get(f"{prefix} power_perm", float("nan")), row.get(f"{prefix} p_perm_min", float("nan"))
    changed = int(row[f"{prefix} wins"]) + int(row[f"{prefix} losses"])
    if np.isfinite(mde):
        text = (f" With this spread of per-query changes, a paired t-test on {n} queries detects changes of {mde:.3f} "
                f"or more with 80% power")  # fmt: skip
        if np.isfinite(power):
            text += f"; the randomization test's power there, simulated on these per-query changes, is {power:.2f}"
        text += "."
        if not _is_true(row[f"{prefix} significant"]) and np.isfinite(needed) and needed > n:
            text += f" About {needed:,.0f} queries would be needed to detect {delta:+.3f}."
        return text
    if changed == 0:
        return f" No query's score changed, so these {n} queries cannot show a difference either way."
    if np.isfinite(p_min) and p_min >= SIGNIFICANCE_LEVEL:
        least = changed_queries_to_reject()
        return (f" Only {changed} of the {n} queries changed score, so the randomization test cannot reject at "
                f"{SIGNIFICANCE_LEVEL:g} whatever the change (its smallest possible p is {p_min:.2g}): it takes at "
                f"least {least} queries whose score changes, about {np.ceil(least * n / changed):,.0f} queries at "
                "this share.")  # fmt: skip
    return " There are too few queries to say what this comparison could detect."


_STOPPED = {
    "decided": "every comparison was decided",
    "every query evaluated": "every query was evaluated",
    "max queries": "it reached --max-queries",
    "budget": "the next round would have overrun the budget",
}


def _sequential(result: EvaluationResult) -> list[str]:
    """The verdict of a sequential evaluation (``ragkit.until_decided``): where it stopped and
    why, then each comparison's decision with its confidence sequence."""
    meta, seq = result.meta, result.meta["sequential"]
    pipelines = {p["name"]: p for p in meta["pipelines"]}
    m, effect, rounds = seq["measure"], seq["min_effect"], seq["rounds"]
    n = len(seq["order"])
    counts = rounds[-1]["by_collection"] if rounds else {}
    split = f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if len(counts) > 1 else ""
    budget = f" of {seq['budget_minutes']:g} minutes" if seq["stopped"] == "budget" else ""
    level = f"{1 - seq['alpha']:.0%}"
    together = (f" (the {len(seq['decisions'])} sequences hold together: each at {1 - seq['level']:.1%})"
                if len(seq["decisions"]) > 1 else "")  # fmt: skip
    sentences = [
        f"Evaluated in rounds of {seq['round_queries']} queries drawn in a random order (seed {seq['seed']}) until "
        f"decided: stopped after {len(rounds)} round{'s' * (len(rounds) != 1)}, {n} of {seq['available_queries']} "
        f"queries{split}, {seq['minutes']:.1f} minutes, because {_STOPPED[seq['stopped']]}{budget}. Each change of "
        f"{m} is judged by an anytime-valid {level} confidence sequence{together}, which may be read after every "
        f"round (its bounds are the nearest values it rules out); a gain worth having is one of at least {effect:g}."
    ]
    for name, decision in seq["decisions"].items():
        p = pipelines[name]
        low, high = decision["low"], decision["high"]
        at = f"after {decision['queries']} queries (the sequence then between {_number(low)} and {_number(high)})"
        outcome = decision["outcome"]
        if outcome == "gain":
            what = f"a gain in {m}, shown {at}"
            what += (f", of at least {effect:g}" if low >= effect
                     else f"; whether it reaches {effect:g} is not decided")  # fmt: skip
        elif outcome == "loss":
            what = f"a loss in {m}, shown {at}"
        elif outcome == "no gain worth having":
            what = f"no gain worth having: a change of {effect:g} or more in {m}, either way, is ruled out {at}"
        else:
            what = (f"undecided after all {n} queries: the sequence, between {_number(low)} and {_number(high)}, "
                    f"still holds 0 and a change of {effect:g} or more, one way or the other")  # fmt: skip
        sentences.append(f"Reranking the top {p['k']} of {seq['first_stage'][name]} with {p['reranker']}: {what}.")
    sentences.append(
        "The fixed-sample statistics that follow are over the same queries, but how many there are was chosen by "
        "looking at them: read them as a description; the confidence sequence is what holds."
    )
    return sentences


def _worth(row: pd.Series, prefix: str, effect: float, m: str) -> str:
    """Against the smallest change worth having: the gain is at least that, less than that,
    or these queries cannot tell (from the comparison's 95% CI)."""
    low, high = row[f"{prefix} ci_low"], row[f"{prefix} ci_high"]
    if low >= effect:
        return f" The gain is at least {effect:g} {m}, the smallest worth having (its CI lies above it)."
    if high < effect:
        return f" Any gain is less than {effect:g} {m}, the smallest worth having (its CI lies below it)."
    return f" These queries cannot tell whether the change reaches {effect:g} {m}, the smallest worth having."


def _within_budget(result: EvaluationResult, max_ms: float, m: str) -> str:
    """Which reranked pipeline is best (by its mean change) among those that rerank within
    ``max_ms`` a query on this machine, and what it costs; or that none does."""
    table, device = result.table, result.meta["device_name"]
    costs = {
        name: _ms(result.latency, name, "rerank")
        for name in table.index
        if isinstance(table.loc[name].get("first_stage"), str)
    }
    timed = {name: ms[0] for name, ms in costs.items() if ms is not None}
    if not timed:
        return f"No reranker was timed, so none can be held to {max_ms:g} ms a query (time some: --latency-queries)."
    within = [name for name, ms in timed.items() if ms <= max_ms]
    if not within:
        quickest = min(timed, key=timed.get)
        return (f"No reranker stays within {max_ms:g} ms a query on {device}: the quickest, {quickest}, adds "
                f"{_milliseconds(timed[quickest])}.")  # fmt: skip
    best = max(within, key=lambda name: table.loc[name, f"{m} own delta"])
    row = table.loc[best]
    judged = "distinguishable from zero" if _is_true(row[f"{m} own significant"]) else "not distinguishable from zero"
    over = sorted(set(timed) - set(within))
    text = (f"Within {max_ms:g} ms a query on {device}, the best reranked pipeline by its mean is {best}: "
            f"{row[f'{m} own delta']:+.3f} {m} (95% CI {_number(row[f'{m} own ci_low'])} to "
            f"{_number(row[f'{m} own ci_high'])}) over {row['first_stage']}, {judged}; its reranker adds "
            f"{_milliseconds(timed[best])}.")  # fmt: skip
    if over:
        text += f" Over the budget: {', '.join(over)}."
    return text


def verdict(result: EvaluationResult, *, width: int | None = None) -> str:
    """See :meth:`EvaluationResult.verdict`."""
    meta, table, m = result.meta, result.table, result.measures[0]
    pipelines = {p["name"]: p for p in meta["pipelines"]}
    n = meta["n_queries"]
    own_family = int(table["first_stage"].map(lambda f: isinstance(f, str)).sum())
    question = meta.get("question", {})
    sentences = _sequential(result) if "sequential" in meta else []
    effect = None if "sequential" in meta else question.get("min_effect")
    for name, row in table.iterrows():
        first_stage = row.get("first_stage")
        if not isinstance(first_stage, str):
            continue
        p = pipelines[name]
        delta, low, high = row[f"{m} own delta"], row[f"{m} own ci_low"], row[f"{m} own ci_high"]
        if _is_true(row[f"{m} own significant"]):
            judgement = "a gain distinguishable from zero" if delta > 0 else "a loss distinguishable from zero"
        else:
            judgement = "not distinguishable from zero"
        dtype = "" if p.get("reranker_dtype", "float32") == "float32" else f" in {p['reranker_dtype']}"
        text = (
            f"Reranking the top {p['k']} of {first_stage} with {p['reranker']}{dtype} changes {m} by {delta:+.3f} "
            f"(95% CI {_number(low)} to {_number(high)}, p {_p(row[f'{m} own p_perm_holm'])}) over {n} queries: "
            f"{judgement}."
        )
        text += _why_not_distinguishable(row, f"{m} own", own_family)
        if effect is not None:
            text += _worth(row, f"{m} own", effect, m)
        text += _evidence(row, f"{m} own", n)
        share = row.get("truncated_pairs", float("nan"))
        if pd.notna(share) and share > 0:
            limit = f"the {p['max_length']} tokens" if p.get("max_length") else "what"
            text += f" {share:.0%} of its (query, passage) pairs were longer than {limit} {_reader(p)} reads, "
            text += "and were truncated."
        rerank, first = _ms(result.latency, name, "rerank"), _ms(result.latency, first_stage, "total")
        if rerank is not None:
            text += (f" Reranking adds {_milliseconds(rerank[0])} per query (median of {rerank[1]} queries served one "
                     f"at a time on {meta['device_name']})")  # fmt: skip
            text += f"; {first_stage} alone takes {_milliseconds(first[0])}." if first is not None else "."
        sentences.append(text)
    for name, row in table.iterrows():
        if pipelines[name]["reranker"]:
            continue
        text = f"{name} without a reranker scores {row[m]:.3f} {m}"
        if not row["baseline"]:
            against = "distinguishable" if _is_true(row[f"{m} significant"]) else "not distinguishable"
            text += f" ({row[f'{m} delta']:+.3f} against {result.baseline}, 95% CI {_number(row[f'{m} ci_low'])} to "
            text += f"{_number(row[f'{m} ci_high'])}, p {_p(row[f'{m} p_perm_holm'])} after Holm's correction: "
            text += f"{against} from it)"
        total = _ms(result.latency, name, "total")
        text += f" at {_milliseconds(total[0])} per query." if total is not None else "."
        if not row["baseline"]:
            text += _why_not_distinguishable(row, m, len(table) - 1)
        sentences.append(text)
    if question.get("max_added_ms") is not None:
        sentences.append(_within_budget(result, question["max_added_ms"], m))
    if meta["is_subset"]:
        sentences.append("These are scores on a ragkit subset, not the official split: compare the pipelines with "
                         "each other, not with published numbers.")  # fmt: skip
    if width is None:
        return "\n".join(sentences)
    return "\n\n".join(textwrap.fill(sentence, width, break_on_hyphens=False) for sentence in sentences)


def _frame_to_json(df: pd.DataFrame) -> dict[str, Any]:
    def cell(value: Any) -> Any:
        if value is pd.NA or value is None:
            return None
        if isinstance(value, (np.bool_, bool)):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return float(value)
        return value

    return {
        "columns": [str(c) for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes],
        "index": [cell(i) for i in df.index],
        "index_name": df.index.name,
        "data": [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)],
    }


def _frame_from_json(data: dict[str, Any]) -> pd.DataFrame:
    df = pd.DataFrame(data["data"], columns=data["columns"], index=data["index"])
    df.index.name = data["index_name"]
    for column, dtype in zip(data["columns"], data["dtypes"]):
        df[column] = df[column].astype(dtype)
    if data["index_name"] is None and df.index.tolist() == list(range(len(df))):
        df.index = pd.RangeIndex(len(df))
    return df


def _decimals(value: float) -> int:
    """The decimals a stored number is written with (17 for a float at full precision)."""
    text = repr(float(value))
    return len(text.split(".")[1]) if "." in text and "e" not in text and np.isfinite(value) else 17


def _agrees(stored: float, recomputed: float, decimals: int) -> bool:
    """Whether a stored statistic is ``recomputed`` to the precision the table is stored at
    (``decimals``): rounded to 4 decimals, within half the last digit; at full precision,
    within float noise."""
    if not (np.isfinite(stored) and np.isfinite(recomputed)):
        return bool(np.isnan(stored) and np.isnan(recomputed)) or stored == recomputed
    return abs(stored - recomputed) <= max(0.5 * 10.0**-decimals, 1e-9 * max(1.0, abs(recomputed)))


def _run_depth(pipeline: dict[str, Any]) -> int | None:
    """The most documents a pipeline's run holds per query (``Pipeline.depth``; ``top_n`` when
    truncated), or ``None`` when the record does not say."""
    k = pipeline.get("k")
    if not isinstance(k, int):
        return None
    if not pipeline.get("reranker"):
        return k
    return pipeline.get("top_n", k) if pipeline.get("truncate") else max(k, FIRST_STAGE_DEPTH)


def _disagreement(result: EvaluationResult) -> str | None:
    """What in a result disagrees with the rest of it, or ``None``: every check recomputes
    something the result holds twice (a mean and its per-query values, the queries and the
    count in ``meta``, a run and its pipeline's depth)."""
    meta, table, per_query = result.meta, result.table, result.per_query
    names = [p["name"] for p in meta["pipelines"]]
    if list(table.index) != names:
        return f"its table holds the pipelines {list(table.index)}, its meta names {names}"
    if result.runs and set(result.runs) != set(names):
        return f"its runs are of {sorted(result.runs)}, its pipelines are {names}"
    if meta["baseline"] not in names:
        return f"its baseline {meta['baseline']!r} is none of its pipelines"
    measures = list(meta["measures"])
    absent = [m for m in measures if m not in table.columns]
    if not measures or absent:
        return f"its table has no column for the measures {absent or measures}"
    if set(per_query["pipeline"]) != set(names) or set(per_query["measure"]) != set(measures):
        return "its per-query values are of other pipelines or measures than its table"
    if per_query.duplicated(["pipeline", "query_id", "measure"]).any():
        return "its per-query values score a query twice"
    n = meta["n_queries"]
    queries = set(per_query["query_id"])
    for (name, m), ids in per_query.groupby(["pipeline", "measure"], sort=False)["query_id"]:
        if len(ids) != len(queries):
            return f"{name} has {m} values for {len(ids)} queries, the others for {len(queries)}"
    if len(queries) != n:
        return f"it holds per-query values for {len(queries)} queries, and says it evaluated {n} queries"
    means = per_query.groupby(["pipeline", "measure"])["value"].mean()
    # The precision is the table's, not each number's: one mean edited to a short value (0.7)
    # in a table stored at full precision is held to full precision.
    columns = [c for c in table.columns if c in measures or c.endswith(" delta")]
    decimals = max((_decimals(v) for v in table[columns].to_numpy(dtype=float).ravel() if np.isfinite(v)), default=17)
    for name in names:
        for m in measures:
            if not _agrees(table.loc[name, m], means[(name, m)], decimals):
                return (f"{name}'s {m} is {table.loc[name, m]:.4f}, but its {n} per-query values average "
                        f"{means[(name, m)]:.4f}")  # fmt: skip
    for name in names:
        references = [("", meta["baseline"]), (" own", table.loc[name].get("first_stage"))]
        for m in measures:
            for own, reference in references:
                column = f"{m}{own} delta"
                if not isinstance(reference, str) or reference == name or column not in table.columns:
                    continue
                delta = means[(name, m)] - means[(reference, m)]
                if not _agrees(table.loc[name, column], delta, decimals):
                    return (f"{name}'s {m} delta against {reference} is {table.loc[name, column]:+.4f}, but the "
                            f"per-query values give {delta:+.4f}")  # fmt: skip
    pipelines = {p["name"]: p for p in meta["pipelines"]}
    for name, run in result.runs.items():
        if set(run) != queries:
            return f"{name}'s run holds {len(run)} queries, not the {n} queries its values are of"
        depth, deepest = _run_depth(pipelines[name]), max((len(hits) for hits in run.values()), default=0)
        if depth is not None and deepest > depth:
            return f"{name}'s run holds {deepest} documents for a query, and the pipeline returns at most {depth}"
    for frame, what in ((result.latency, "latency"), (result.timings, "timings")):
        if "pipeline" in frame and not set(frame["pipeline"]) <= set(names):
            return f"its {what} are of pipelines it does not hold"
    return None


@dataclass
class EvaluationResult:
    """What ``ragkit.experiment()`` returns.

    Attributes:
        table: one row per pipeline: each measure with its 95% CI, and against the baseline
            its delta, the delta's 95% CI, t-test and randomization p-values (raw and
            Holm-corrected) and win/tie/loss counts.
        per_query: long table of (pipeline, query_id, measure, value).
        latency: per pipeline and stage (embed query, vector search, rerank, total), p50 and
            p95 milliseconds over queries timed one at a time.
        runs: pipeline name -> query id -> doc id -> score.
        meta: collection, subset flag, device, model revisions, versions, date (``RESULT_META``).
        timings: every query timed: pipeline, query id and seconds per stage (what ``latency``
            summarises).
    """

    table: pd.DataFrame
    per_query: pd.DataFrame
    latency: pd.DataFrame
    runs: dict[str, Run]
    meta: dict[str, Any] = field(default_factory=dict)
    timings: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def measures(self) -> list[str]:
        """The measures, the leading one first."""
        return list(self.meta["measures"])

    @property
    def baseline(self) -> str:
        """The name of the pipeline the others are compared with."""
        return str(self.meta["baseline"])

    def _chosen(self, measures: str | Sequence[str] | None) -> list[str]:
        """The measures a table shows: one by name, several, or (``None``) all of them."""
        return [measures] if isinstance(measures, str) else list(measures or self.measures)

    def summary(self, measure: str | None = None) -> pd.DataFrame:
        """A narrow table for one measure (default: the first): value, delta, CI, p, W/T/L."""
        m = measure or self.measures[0]
        stats = ("delta", "ci_low", "ci_high", "p_perm_holm", "wins", "ties", "losses")
        names = [m, "Δ", "CI low", "CI high", "p (Holm)", "wins", "ties", "losses"]
        present = [(c, n) for c, n in zip([m] + [f"{m} {c}" for c in stats], names) if c in self.table]
        out = self.table[[c for c, _ in present]].copy()  # one pipeline alone has no comparisons
        out.columns = [n for _, n in present]
        return out

    def per_query_table(self, measure: str | None = None) -> pd.DataFrame:
        """One row per query, one column per pipeline: the per-query scores of one measure."""
        m = measure or self.measures[0]
        rows = self.per_query[self.per_query["measure"] == m]
        return rows.pivot(index="query_id", columns="pipeline", values="value")[list(self.table.index)]

    def per_query_deltas(self, measure: str | None = None) -> pd.DataFrame:
        """Per query, each other pipeline's score minus the baseline's (one column each)."""
        wide = self.per_query_table(measure)
        others = [n for n in self.table.index if n != self.baseline]
        return wide[others].sub(wide[self.baseline], axis=0)

    def latency_table(self) -> pd.DataFrame:
        """The latency, rounded for reading: p50 and p95 milliseconds per query with their CIs."""
        lat = self.latency
        out = pd.DataFrame({"pipeline": lat["pipeline"], "stage": lat["stage"]})
        for q in ("p50", "p95"):
            if f"{q}_ci_low" in lat:
                out[f"{q} ms (95% CI)"] = [f"{v:.1f} [{lo:.1f}, {hi:.1f}]" for v, lo, hi in
                                           zip(lat[f"{q}_ms"], lat[f"{q}_ci_low"], lat[f"{q}_ci_high"])]  # fmt: skip
            else:  # a result stored before the intervals were computed
                out[f"{q} ms"] = lat[f"{q}_ms"].map("{:.1f}".format)
        out["queries"] = lat["queries"]
        return out

    def own_table(self, measures: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Each reranked pipeline against its own first stage alone, one row per pipeline and
        measure: delta, CI, Holm-corrected p, W/T/L, MDE and queries needed for the delta, and
        the share of its (query, passage) pairs longer than the cross-encoder reads (truncated)."""
        measures = self._chosen(measures)
        rows = []
        for name, row in self.table.iterrows():
            first_stage = row.get("first_stage")
            if not isinstance(first_stage, str):
                continue
            truncated = {}
            if "truncated_pairs" in row:  # measured whenever pairs were scored
                share = row["truncated_pairs"]
                truncated["pairs truncated"] = f"{share:.1%}" if pd.notna(share) else "-"
            budget = self.meta.get("question", {}).get("max_added_ms")
            if budget is not None:  # the reranker's median added ms against the budget asked
                ms = _ms(self.latency, name, "rerank")
                truncated["rerank ms"] = (
                    "-" if ms is None else f"{ms[0]:,.0f} {'>' if ms[0] > budget else '<='} {budget:g}"
                )
            for m in measures:
                rows.append({"pipeline": name, "first stage": first_stage, "measure": m,
                             **_comparison_cells(row, f"{m} own", m), **truncated})  # fmt: skip
        return pd.DataFrame(rows)

    def asking(self, *, min_effect: float | None = None, max_added_ms: float | None = None) -> EvaluationResult:
        """This result framed by the user's question: ``min_effect``, the smallest change of
        the leading measure worth having (the verdict says whether each reranker's gain is at
        least that, less, or cannot be told), and ``max_added_ms``, the milliseconds a reranker
        may add to a query (the verdict names the best pipeline within it; the tables mark
        those over it). Nothing is recomputed; the report and ``results.json`` keep the question.

        Example::

            print(result.asking(min_effect=0.01, max_added_ms=200).verdict())
        """
        if min_effect is not None:
            check_min_effect(min_effect)
        if max_added_ms is not None and not (np.isfinite(max_added_ms) and max_added_ms > 0):
            raise ConfigError(f"--max-added-ms must be a number of milliseconds above 0, got {max_added_ms}.")
        question = {k: v for k, v in (("min_effect", min_effect), ("max_added_ms", max_added_ms)) if v is not None}
        return replace(self, meta={**self.meta, "question": question})

    def verdict(self, *, width: int | None = None) -> str:
        """The answer, in words, to "is this reranker worth its latency?", generated from the
        table and the latency measured, and nothing else: for each reranked pipeline, its change
        of the leading measure against its own first stage (CI, p, queries), whether that is
        distinguishable from zero, how much evidence the queries hold, and what it costs per
        query; then what the other first stages score alone. One line per pipeline, or, given
        a ``width`` (a terminal's columns), one paragraph each, wrapped to it."""
        return verdict(self, width=width)

    def format_table(self, measures: str | Sequence[str] | None = None, *, width: int | None = None) -> str:
        """A plain-text table, one line per pipeline and measure: the score and, against the
        baseline, its delta (``*`` when significant), the delta's 95% CI, the Holm-corrected
        randomization p-value, wins/ties/losses over queries, and how much evidence there is:
        the smallest delta these queries detect at 80% power (MDE) and the queries that would
        be needed to detect the observed delta.

        Given a ``width`` (a terminal's columns), pipelines are named ``P1``, ``P2``, ... in the
        tables and spelled out in a legend above them, wrapped to it, so that rows stay short.
        """
        short = {name: f"P{i}" for i, name in enumerate(self.table.index, start=1)} if width else {}
        rows = []
        for name, row in self.table.iterrows():
            for m in self._chosen(measures):
                label = short.get(name, name) + (" (baseline)" if row["baseline"] and not short else "")
                cells = {"pipeline": label, "measure": m, "score": f"{row[m]:.4f}", "delta": "", "95% CI": "",
                         "p (Holm)": "", "W/T/L": "", "MDE": "", "queries for delta": ""}  # fmt: skip
                if not row["baseline"]:
                    cells.update(_comparison_cells(row, m, m))
                rows.append(cells)
        table = pd.DataFrame(rows)
        own = self.own_table(measures)
        if short:
            table = table.rename(columns={"queries for delta": "n for delta"})
            own = own.replace({"pipeline": short, "first stage": short}).rename(
                columns={"queries for delta": "n for delta", "pairs truncated": "truncated"}
            )
            legend = [
                textwrap.fill(f"{short[name]} = {name}" + (" (baseline)" if row["baseline"] else ""), width,
                              subsequent_indent=" " * (len(short[name]) + 3), break_on_hyphens=False)
                for name, row in self.table.iterrows()
            ]  # fmt: skip
            text = "\n".join(legend) + "\n\n" + table.to_string(index=False)
        else:
            text = table.to_string(index=False)
        if len(own):
            text += "\n\nEach reranker against its own first stage:\n" + own.to_string(index=False)
        return text

    def to_markdown(self, *, plots: Sequence[tuple[str, str]] = ()) -> str:
        """The report's ``summary.md``: what was measured, on what, the table and the latency;
        ``plots`` lists ``(file name, caption)`` of images beside it."""
        meta = self.meta
        lines = [f"# ragkit evaluation: {meta['collection']} ({meta['split']})", ""]
        if meta["is_subset"]:
            lines += [f"> **{SUBSET_WARNING}**", ""]
        if meta.get("reused_result"):
            lines += [
                f"> Reused from ragkit's cache: the result of an identical run on {meta['date']} (same data, "
                "pipelines, models, settings, device and versions). `ragkit eval --no-cache` recomputes it.",
                "",
            ]
        lines += ["## Verdict", "", *[f"- {sentence}" for sentence in self.verdict().splitlines()], ""]
        lines += [
            f"- collection: {meta['collection_summary']}",
            f"- queries: {meta['n_queries']}, documents: {meta['n_docs']}",
            f"- baseline: `{meta['baseline']}`; device: {meta['device']} ({meta['device_name']}); date: {meta['date']}",
            "- models: " + ", ".join(f"`{m}` (revision `{r}`)" for m, r in meta["model_revisions"].items()),
            *(
                [
                    f"- not in ragkit's model catalogue (no query instruction added; maximum length from the model's "
                    f"own configuration): {', '.join(f'`{m}`' for m in meta['uncatalogued_models'])}"
                ]
                if meta.get("uncatalogued_models")
                else []
            ),
            "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
            "",
        ]
        rows = []
        for name, row in self.table.iterrows():
            cells = [f"`{name}`" + (" (baseline)" if row["baseline"] else "")]
            for m in self.measures:
                if row["baseline"]:
                    cells.append(f"{row[m]:.4f}")
                else:
                    c = _comparison_cells(row, m, m)
                    cells.append(f"{row[m]:.4f} ({c['delta']}; CI {c['95% CI']}; p {c['p (Holm)']}; {c['W/T/L']}; "
                                 f"MDE {c['MDE']})")  # fmt: skip
            rows.append(cells)
        lines += [
            "## Quality",
            "",
            markdown_table(pd.DataFrame(rows, columns=["pipeline", *self.measures])),
            "",
            f"Each cell: mean over the {meta['n_queries']} queries (delta against the baseline; its 95% confidence "
            "interval, from inverting the paired randomization test, so it excludes 0 exactly when that test's "
            "uncorrected p-value is below 0.05; the Holm-corrected randomization p-value; wins/ties/losses over "
            "queries; MDE, the smallest delta these queries detect with 80% power in a paired t-test, given the "
            "spread of the per-query deltas, `-` where fewer than 6 queries changed score and the randomization "
            "test cannot reject at all). `*`: distinguishable from zero, that is significant at 0.05 by both the "
            "paired t-test and the randomization test, after Holm's correction.",
            "",
        ]
        own = self.own_table()
        if len(own):
            lines += [
                "## Each reranker against its own first stage",
                "",
                markdown_table(own),
                "",
                "The same statistics as above, against the same first stage without reranking (Holm's correction "
                "over these comparisons).",
                "",
            ]
        reranked = [p for p in meta["pipelines"] if p["reranker"]]
        if any(not p.get("truncate") for p in reranked):
            lines += [
                "A reranked run is its reranked top `k` followed by the first stage's other candidates in their "
                "first-stage order, down to 100 (the BEIR convention), so R@100 and other deep measures compare "
                "like with like.",
                "",
            ]
        if any(p.get("truncate") for p in reranked):
            lines += [
                "`truncated` pipelines hold only their `top_n` reranked documents, as LangChain's retriever "
                "returns them, so their R@100 cannot exceed the first stage's recall at `top_n`.",
                "",
            ]
        if len(self.latency):
            lat = self.latency_table()
            taken = meta.get("latency_measured", {}).values()
            reused = any(t["reused"] for t in taken)
            when = (
                "measured " + ", ".join(sorted({t["measured"] for t in taken})) if taken else "measured during this run"
            )
            lines += [
                "## Latency per query",
                "",
                markdown_table(lat),
                "",
                "Milliseconds per query, each query served on its own (embed, search, rerank), uncached, on the "
                "device above: median and 95th percentile over the queries timed, each with its 95% bootstrap "
                "confidence interval. This is latency, what one user waits; throughput in batches is higher. "
                f"{when[0].upper() + when[1:]}"
                + (
                    " (an earlier run's timings of the same pipelines on this machine and software, reused from "
                    "the cache; `ragkit eval --no-cache` re-measures them)."
                    if reused
                    else "."
                ),
                "",
            ]
        throughput = meta.get("throughput", {})
        if any(p["reranker"] for p in meta["pipelines"]):
            lines += ["## Throughput, batched", ""]
            if throughput:
                for name, t in throughput.items():
                    lines.append(
                        f"- `{name}`: {t['queries'] / t['seconds']:.2f} queries/s ({t['pairs'] / t['seconds']:.1f} "
                        f"pairs/s), every query's pairs pooled into one length-sorted stream, as this evaluation "
                        f"scored them ({t['pairs']:,} pairs in {t['seconds']:.1f} s, {t['measured']})."
                    )
            else:
                lines.append("Not measured in this run: every pair score came from the cache.")
            lines += ["", "Throughput is what an offline evaluation or a batch job sees; latency above is what one "
                      "query waits. Smaller k's of the same reranker score a prefix of these pairs.", ""]  # fmt: skip
        if plots:
            lines += ["## Plots", ""]
            for file, caption in plots:
                lines += [f"![{caption}]({file})", ""]
        return "\n".join(lines)

    # -- as data

    def to_dict(self) -> dict[str, Any]:
        """Everything in the result as JSON-serialisable data (what the result cache stores)."""
        return {
            "table": _frame_to_json(self.table),
            "per_query": _frame_to_json(self.per_query),
            "latency": _frame_to_json(self.latency),
            "runs": self.runs,
            "meta": self.meta,
            "timings": _frame_to_json(self.timings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """The result :meth:`to_dict` described, checked against itself: its means are
        recomputed from its per-query values, and its pipelines, measures, queries and runs
        must agree with one another. Raises :class:`~ragkit.errors.DataError` saying what
        disagrees otherwise (a result edited or damaged since it was computed)."""
        try:
            missing = [k for k in RESULT_META if k not in data["meta"]]
            if missing:
                raise DataError(f"Not a ragkit result: its meta lacks {missing}.")
            runs = {
                str(name): {str(q): {str(d): float(s) for d, s in hits.items()} for q, hits in run.items()}
                for name, run in data["runs"].items()
            }
            result = cls(
                table=_frame_from_json(data["table"]),
                per_query=_frame_from_json(data["per_query"]),
                latency=_frame_from_json(data["latency"]),
                runs=runs,
                meta=dict(data["meta"]),
                timings=_frame_from_json(data["timings"]),
            )
            problem = _disagreement(result)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"Not a ragkit result ({type(exc).__name__}: {exc}).") from exc
        if problem is not None:
            raise DataError(
                f"This result disagrees with itself: {problem}. It was changed after it was computed; "
                "compute it again (`ragkit eval`, or experiment())."
            )
        return result

    # -- as files

    def write_files(self, folder: str | Path, *, plots: Sequence[tuple[str, str]] = ()) -> Path:
        """Write ``results.csv``, ``results.json``, ``per_query.csv``, ``latency.csv``, TREC
        runs under ``runs/`` and ``summary.md`` into ``folder`` as they are (no temporary
        folder; :meth:`save` is the safe way)."""
        folder = Path(folder)
        self.table.to_csv(folder / "results.csv")
        self.per_query.to_csv(folder / "per_query.csv", index=False)
        self.latency.to_csv(folder / "latency.csv", index=False)
        payload: dict[str, Any] = {
            "meta": self.meta,
            "table": json.loads(self.table.to_json(orient="index")),
            "latency": json.loads(self.latency.to_json(orient="records")),
        }
        (folder / "results.json").write_text(json.dumps(payload, indent=2))
        (folder / "runs").mkdir(exist_ok=True)
        for name, run in self.runs.items():
            (folder / "runs" / f"{slug(name)}.trec").write_text(trec_run(run, slug(name)))
        (folder / "summary.md").write_text(self.to_markdown(plots=plots))
        return folder

    def save(self, folder: str | Path) -> Path:
        """Write the result's files (see :meth:`write_files`) into ``folder``, all at once: they
        are written to a temporary folder first and moved into place, so an interrupted write
        never leaves a half-written set that looks complete. ``ragkit.report.write_report``
        adds the plots."""
        folder = check_writable(folder)
        with atomic_folder(folder) as tmp:
            self.write_files(tmp)
        return folder


# The name ragkit's first versions gave the result; it keeps working.
Experiment = EvaluationResult
