"""The report folder: a result's files (``EvaluationResult.write_files``) and its plots.

Plots are drawn with matplotlib from an :class:`~ragkit.results.EvaluationResult`, which is
all this module reads.

Example::

    from ragkit.report import write_report
    folder = write_report(result, "results/scifact")   # summary.md, CSV, JSON, runs/, plots
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.cache import atomic_folder, check_writable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ragkit.results import EvaluationResult


def _label(name: str) -> str:
    """A pipeline name over two lines, first stage then reranker, so plot labels stay narrow."""
    return name.replace(" >> ", "\n>> ")


def colours(result: EvaluationResult) -> dict[str, str]:
    """One colour per pipeline, the same in every plot of a report (the table's order)."""
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(result.table.index)}


def forest_plot(result: EvaluationResult, measure: str | None = None) -> Figure:
    """Each comparison's paired delta with its 95% CI: against the baseline (filled) and, for
    reranked pipelines, against their own first stage (hollow). A CI that crosses the zero line
    is a difference these queries cannot tell from none."""
    import matplotlib.pyplot as plt

    m = measure or result.measures[0]
    t, colour = result.table, colours(result)
    rows = [(n, "", m) for n in t.index if not t.loc[n, "baseline"]]
    rows += [(n, " own", m) for n in t.index if isinstance(t.loc[n, "first_stage"], str)]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.8))
    for y, (name, own, _) in enumerate(reversed(rows)):
        row = t.loc[name]
        delta, low, high = row[f"{m}{own} delta"], row[f"{m}{own} ci_low"], row[f"{m}{own} ci_high"]
        bounded = np.isfinite(low) and np.isfinite(high)
        err = [[delta - low], [high - delta]] if bounded else None
        face = "white" if own else colour[name]
        ax.errorbar(delta, y, xerr=err, fmt="o", color=colour[name], mfc=face, capsize=4, ms=7)
        if not bounded:
            ax.annotate("CI unbounded: too few queries", (delta, y), textcoords="offset points", xytext=(8, 4),
                        fontsize=7)  # fmt: skip
    labels = [f"{_label(n)}\n" + (f"vs its first stage, {row}" if own else f"vs {result.baseline}")
              for n, own, _ in reversed(rows) for row in [t.loc[n, "first_stage"]]]  # fmt: skip
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{m} delta, paired over {result.meta['n_queries']} queries (95% CI)")
    subset = " (ragkit subset, not the official split)" if result.meta["is_subset"] else ""
    ax.set_title(f"{result.meta['collection']}{subset}: what each pipeline changes", fontsize=10)
    fig.tight_layout()
    return fig


def per_query_plot(result: EvaluationResult, measure: str | None = None) -> Figure:
    """Every query's change against the baseline, one dot per query and pipeline: how many
    queries a pipeline helps, hurts or leaves as they were (ties sit on the zero line, counted)."""
    import matplotlib.pyplot as plt

    m = measure or result.measures[0]
    deltas, colour = result.per_query_deltas(m), colours(result)
    fig, ax = plt.subplots(figsize=(8, 0.6 * max(len(deltas.columns), 1) + 1.8))
    rng = np.random.default_rng(0)  # jitter only spreads the dots; it is the same on every run
    for y, name in enumerate(reversed(deltas.columns)):
        values = deltas[name].to_numpy()
        ax.scatter(values, y + rng.uniform(-0.18, 0.18, len(values)), s=14, alpha=0.7, color=colour[name])
        ties = int(np.sum(values == 0))
        ax.annotate(f"{int(np.sum(values > 0))} up, {ties} unchanged, {int(np.sum(values < 0))} down", (1.02, y),
                    xycoords=("axes fraction", "data"), fontsize=7, va="center")  # fmt: skip
    ax.set_yticks(range(len(deltas.columns)), [_label(n) for n in reversed(deltas.columns)], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"per-query {m} minus {result.baseline}")
    ax.set_title(f"Per-query {m} change against the baseline", fontsize=10)
    fig.tight_layout()
    return fig


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names whose (cost, quality) no other point beats on both, cheapest first.

    Example:
        >>> pareto_front({"a": (10, 0.60), "b": (1000, 0.70), "c": (2000, 0.65), "d": (5, 0.50)})
        ['d', 'a', 'b']
    """
    front, best = [], -np.inf
    for name, (_, quality) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if quality > best:
            front.append(name)
            best = quality
    return front


def _number_points(ax, marks: list[tuple[tuple[float, float], str, str]]) -> None:
    """Each point's number just right of it, moved down where it would cover a number above it
    (points a few pixels apart, such as pipelines of the same latency), on a white ground so
    error bars do not cross it. Call once the axis limits are set."""
    to_points = 72 / ax.figure.dpi
    placed: list[tuple[float, float]] = []
    for (x, y), text, colour in sorted(marks, key=lambda mark: -mark[0][1]):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        label = py + 2
        for other_x, other_y in placed:
            if abs(other_x - px) < 16 and label > other_y - 10:
                label = other_y - 10
        placed.append((px, label))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, label - py), fontsize=8, va="center",
                    fontweight="bold", color=colour,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})  # fmt: skip


def frontier_plot(result: EvaluationResult, measure: str | None = None) -> Figure:
    """What each point of quality costs: every pipeline's delta against the baseline (95% CI)
    against its milliseconds per query (median, 95% CI), each point numbered and named in the
    legend below the axes, with the pipelines no other is both faster and better than joined
    (the Pareto frontier)."""
    import matplotlib.pyplot as plt

    m = measure or result.measures[0]
    t, colour = result.table, colours(result)
    total = result.latency[result.latency["stage"] == "total"].set_index("pipeline")
    names = [name for name in t.index if name in total.index]
    fig, ax = plt.subplots(figsize=(8, 4.2 + 0.17 * (len(names) + 1)))
    points, xs, ys = {}, [], []
    for number, name in enumerate(names, start=1):
        row, ms = t.loc[name], total.loc[name]
        delta = 0.0 if row["baseline"] else float(row[f"{m} delta"])
        points[name] = (float(ms["p50_ms"]), delta)
        yerr = None
        if not row["baseline"] and np.isfinite(row[f"{m} ci_low"]) and np.isfinite(row[f"{m} ci_high"]):
            yerr = [[delta - row[f"{m} ci_low"]], [row[f"{m} ci_high"] - delta]]
            ys += [row[f"{m} ci_low"], row[f"{m} ci_high"]]
        xerr = None
        if "p50_ci_low" in ms and np.isfinite(ms["p50_ci_low"]) and np.isfinite(ms["p50_ci_high"]):
            xerr = [[ms["p50_ms"] - ms["p50_ci_low"]], [ms["p50_ci_high"] - ms["p50_ms"]]]
            xs += [ms["p50_ci_low"], ms["p50_ci_high"]]
        xs.append(ms["p50_ms"])
        ys.append(delta)
        ax.errorbar(ms["p50_ms"], delta, xerr=xerr, yerr=yerr, fmt="o", color=colour[name], capsize=3, ms=7,
                    label=f"{number}  {name}")  # fmt: skip
    if points:
        front = pareto_front(points)
        ax.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="grey", lw=1,
                label="Pareto frontier: no pipeline is both faster and better")  # fmt: skip
        positive = [x for x in xs if x > 0]
        if positive:  # a log axis, with room on both sides for the points' numbers
            ax.set_xscale("log")
            ax.set_xlim(min(positive) / 2, max(positive) * 3)
        low, high = min([*ys, 0.0]), max([*ys, 0.0])
        pad = 0.08 * (high - low or 1.0)
        ax.set_ylim(low - pad, high + pad)
        _number_points(ax, [(points[name], str(number), colour[name]) for number, name in enumerate(names, start=1)])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=1, frameon=False)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(f"ms per query, median of queries served one at a time (95% CI), {result.meta['device']}", fontsize=8)
    ax.set_ylabel(f"{m} delta against {result.baseline} (95% CI)", fontsize=8)
    ax.set_title(f"{m} against latency", fontsize=10)
    fig.tight_layout()
    return fig


# The report's plots: file name, caption, and the function that draws it.
def sequence_plot(result: EvaluationResult | dict[str, Any]) -> Figure:
    """A sequential evaluation's confidence sequences against the queries evaluated: for each
    reranked pipeline, the band the mean change of the leading measure lies in (valid at every
    query at once), the running mean, zero, and the smallest gain worth having; a mark where it
    was decided. ``result`` is the evaluation, or its ``meta`` as a report's ``results.json``
    holds it."""
    import matplotlib.pyplot as plt

    from ragkit.sequential import confidence_sequence

    if isinstance(result, dict):
        seq = result["sequential"]
        colour = {name: f"C{i + 1}" for i, name in enumerate(seq["deltas"])}
    else:
        seq, colour = result.meta["sequential"], colours(result)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    shown = []  # the bands' range past their first queries, where they are nearly [-1, 1]
    for name, deltas in seq["deltas"].items():
        x = np.arange(1, len(deltas) + 1)
        low, high = confidence_sequence(deltas, alpha=seq["level"])
        shown += [low[min(len(low) - 1, 19) :].min(), high[min(len(high) - 1, 19) :].max()]
        ax.fill_between(x, low, high, color=colour[name], alpha=0.25, lw=0)
        ax.plot(x, np.cumsum(deltas) / x, color=colour[name], lw=1.2, label=f"{_label(name)}: running mean")
        decision = seq["decisions"][name]
        if decision["outcome"] != "undecided":
            ax.axvline(decision["queries"], color=colour[name], ls=":", lw=1)
            ax.annotate(decision["outcome"], (decision["queries"], high[decision["queries"] - 1]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(
        seq["min_effect"], color="grey", ls="--", lw=0.8, label=f"smallest gain worth having ({seq['min_effect']:g})"
    )
    margin = 0.1 * (max(shown) - min(shown)) + 0.01
    ax.set_ylim(max(-1.0, min(shown) - margin), min(1.0, max(shown) + margin))
    ax.set_xlim(0, len(seq["order"]) + 1)
    ax.set_xlabel("queries evaluated, in the order drawn")
    ax.set_ylabel(f"{seq['measure']} change over the first stage")
    ax.set_title(f"Anytime-valid {1 - seq['alpha']:.0%} confidence sequence (shaded) of the mean change", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    return fig


PLOTS = (
    ("deltas.png", "what each pipeline changes, with 95% CIs", forest_plot),
    ("per_query.png", "every query's change against the baseline", per_query_plot),
    ("frontier.png", "quality against latency, with the Pareto frontier", frontier_plot),
)
# A sequential evaluation's report adds its confidence sequences.
SEQUENCE_PLOT = ("sequence.png", "the confidence sequence of each change, query by query", sequence_plot)


def _plots(result: EvaluationResult) -> tuple[tuple[str, str, Any], ...]:
    """The plots of ``result``'s report."""
    return (*PLOTS, SEQUENCE_PLOT) if "sequential" in result.meta else PLOTS


def markdown_summary(result: EvaluationResult) -> str:
    """The report's ``summary.md``: the result in Markdown, with the plots beside it."""
    return result.to_markdown(plots=[(file, caption) for file, caption, _ in _plots(result)])


# What a report folder holds, name -> whether it is a folder: what ``write_report`` writes
# (``EvaluationResult.write_files`` and ``PLOTS``), so that a path of the wrong kind in the way
# is refused before any work.
REPORT_LAYOUT = {
    **dict.fromkeys(("results.csv", "per_query.csv", "latency.csv", "results.json", "summary.md"), False),
    "runs": True,
    **dict.fromkeys((file for file, _, _ in (*PLOTS, SEQUENCE_PLOT)), False),
}


def write_report(result: EvaluationResult, folder: str | Path) -> Path:
    """Write the result's files (``results.csv``, ``results.json``, ``per_query.csv``,
    ``latency.csv``, TREC runs under ``runs/``, ``summary.md``) and the three plots of
    ``PLOTS`` into ``folder`` (a sequential evaluation's adds ``SEQUENCE_PLOT``).

    Files are written to a temporary folder first and moved into place, so an interrupted
    write never leaves a half-written report that looks complete. The plots are drawn first,
    so that the report's size is known and checked to fit on the disk before its first byte
    is written (a ``DiskFullError`` naming the folder and the bytes needed otherwise).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = check_writable(folder, REPORT_LAYOUT)
    images = {}
    plots = _plots(result)
    for file, _, plot in plots:
        fig = plot(result)
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        images[file] = image.getvalue()
    needed = report_bytes(result) + sum(len(image) for image in images.values())
    with atomic_folder(folder, needed=needed) as tmp:
        result.write_files(tmp, plots=[(file, caption) for file, caption, _ in plots])
        for file, image in images.items():
            (tmp / file).write_bytes(image)
    return folder


def report_bytes(result: EvaluationResult) -> int:
    """About how many bytes a report's files take, plots left out: its TREC runs, CSV files,
    ``results.json`` and ``summary.md`` as ``EvaluationResult.write_files`` writes them."""
    from ragkit.results import slug, trec_run

    runs = sum(len(trec_run(run, slug(name))) for name, run in result.runs.items())
    tables = len(result.table.to_csv()) + len(result.per_query.to_csv(index=False))
    tables += 2 * len(result.latency.to_csv(index=False))  # latency.csv, and its records in results.json
    data = len(json.dumps(result.meta, indent=2)) + len(result.table.to_json(orient="index"))
    summary = len(result.to_markdown(plots=[(file, caption) for file, caption, _ in _plots(result)]))
    return runs + tables + data + summary
