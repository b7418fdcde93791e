"""Tables, plots, Markdown and files written from an experiment's results.

Example:
    >>> from ragkit.report import write_report
    >>> folder = write_report(result, "results/scifact")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ragkit.errors import RagkitError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ragkit.evaluate import Experiment

SUBSET_WARNING = ("ragkit subset, not the official split: these scores are not comparable with "
                  "full-split (published) scores.")


def slug(name: str) -> str:
    """A file-name-safe version of a pipeline name.

    Example:
        >>> slug("dense(all-MiniLM-L6-v2) >> ms-marco-MiniLM-L-12-v2(k=20, top_n=20)")
        'dense_all-MiniLM-L6-v2_ms-marco-MiniLM-L-12-v2_k20_top_n20'
    """
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.\-]+", "_", name.replace("=", ""))).strip("_")


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long work.

    Raises a ``RagkitError`` naming the folder and the reason otherwise.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ragkit-probe-"):
            pass
    except OSError as exc:
        raise RagkitError(f"Cannot write the report to {folder}: {exc.strerror or exc}. "
                          "Choose another folder with --output, or fix its permissions.") from exc
    return folder


def format_table(exp: Experiment, measures: list[str] | None = None) -> str:
    """A plain-text table, one line per pipeline and measure: the score and, against the
    baseline, its delta (``*`` when significant), the delta's 95% CI, the Holm-corrected
    randomization p-value and wins/ties/losses over queries."""
    measures = measures or exp.meta["measures"]
    rows = []
    for name, row in exp.table.iterrows():
        for m in measures:
            cells = {"pipeline": name + (" (baseline)" if row["baseline"] else ""), "measure": m,
                     "score": f"{row[m]:.4f}", "delta": "", "95% CI": "", "p (Holm)": "", "W/T/L": ""}
            if not row["baseline"]:
                cells.update({
                    "delta": f"{row[f'{m} delta']:+.4f}" + ("*" if row[f"{m} significant"] else ""),
                    "95% CI": f"[{row[f'{m} ci_low']:+.3f}, {row[f'{m} ci_high']:+.3f}]",
                    "p (Holm)": f"{row[f'{m} p_perm_holm']:.3g}",
                    "W/T/L": f"{row[f'{m} wins']}/{row[f'{m} ties']}/{row[f'{m} losses']}",
                })
            rows.append(cells)
    return pd.DataFrame(rows).to_string(index=False)


def _markdown_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def markdown_summary(exp: Experiment) -> str:
    """The report's ``summary.md``: what was measured, on what, the table and the latency."""
    meta = exp.meta
    lines = [f"# ragkit evaluation: {meta['collection']} ({meta['split']})", ""]
    if meta["is_subset"]:
        lines += [f"> **{SUBSET_WARNING}**", ""]
    if meta.get("reused_result"):
        lines += [f"> Reused from ragkit's cache: the result of an identical run on {meta['date']} (same data, "
                  "pipelines, models, settings, device and versions). `ragkit eval --no-cache` recomputes it.", ""]
    lines += [f"- collection: {meta['collection_summary']}",
              f"- queries: {meta['n_queries']}, documents: {meta['n_docs']}",
              f"- baseline: `{meta['baseline']}`; device: {meta['device']} ({meta['device_name']}); date: {meta['date']}",
              "- models: " + ", ".join(f"`{m}` (revision `{r}`)" for m, r in meta["model_revisions"].items()),
              "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    rows = []
    for name, row in exp.table.iterrows():
        cells = [f"`{name}`" + (" (baseline)" if row["baseline"] else "")]
        for m in meta["measures"]:
            if row["baseline"]:
                cells.append(f"{row[m]:.4f}")
            else:
                star = " *" if row[f"{m} significant"] else ""
                cells.append(f"{row[m]:.4f} ({row[f'{m} delta']:+.4f}{star}; "
                             f"CI [{row[f'{m} ci_low']:+.3f}, {row[f'{m} ci_high']:+.3f}]; "
                             f"p {row[f'{m} p_perm_holm']:.3g}; "
                             f"{row[f'{m} wins']}/{row[f'{m} ties']}/{row[f'{m} losses']})")
        rows.append(cells)
    lines += ["## Quality", "", _markdown_table(pd.DataFrame(rows, columns=["pipeline", *meta["measures"]])), "",
              "Each cell: mean over queries (delta against the baseline; 95% bootstrap CI of the delta; "
              "Holm-corrected paired randomization p-value; wins/ties/losses over queries). "
              "`*`: significant at 0.05 by both the paired t-test and the randomization test, after Holm's correction.", ""]
    if any(p["reranker"] and p["top_n"] < 100 for p in meta["pipelines"]):
        lines += ["A reranked pipeline returns its `top_n` documents only, so its R@100 cannot exceed the "
                  "first stage's recall at `k`.", ""]
    if len(exp.latency):
        lat = exp.latency.copy()
        lat["p50_ms"] = lat["p50_ms"].map("{:.1f}".format)
        lat["p95_ms"] = lat["p95_ms"].map("{:.1f}".format)
        taken = meta.get("latency_measured", {}).values()
        reused = any(t["reused"] for t in taken)
        when = "measured " + ", ".join(sorted({t["measured"] for t in taken})) if taken else "measured during this run"
        lines += ["## Latency per query", "", _markdown_table(lat), "",
                  f"Queries served one at a time, uncached, on the device above; {when}"
                  + (" (an earlier run's timings of the same pipelines on this machine and software, reused from "
                     "the cache; `ragkit eval --no-cache` re-measures them)." if reused else "."), ""]
    lines += ["## Plots", "", "![nDCG@10 per pipeline](quality.png)", "", "![quality against latency](quality_vs_latency.png)",
              "", "![per-query deltas](delta_histogram.png)", ""]
    return "\n".join(lines)


def trec_run(run: dict[str, dict[str, float]], tag: str) -> str:
    """A run in TREC format: ``qid Q0 docid rank score tag``, ranks from 1 by descending score."""
    lines = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda x: -x[1])
        lines += [f"{qid} Q0 {doc} {rank} {score:.6f} {tag}" for rank, (doc, score) in enumerate(ranked, start=1)]
    return "\n".join(lines) + "\n"


def _label(name: str) -> str:
    """A pipeline name over two lines, first stage then reranker, so plot labels stay narrow."""
    return name.replace(" >> ", "\n>> ")


def quality_plot(exp: Experiment, measure: str | None = None) -> Figure:
    """Each pipeline's mean score with its 95% bootstrap CI, the baseline highlighted."""
    import matplotlib.pyplot as plt

    m = measure or exp.meta["measures"][0]
    t = exp.table
    fig, ax = plt.subplots(figsize=(8, 0.8 * len(t) + 1.5))
    y = np.arange(len(t))[::-1]
    err = np.vstack([t[m] - t[f"{m} mean_ci_low"], t[f"{m} mean_ci_high"] - t[m]])
    colors = ["tab:gray" if b else "tab:blue" for b in t["baseline"]]
    ax.barh(y, t[m], xerr=err, color=colors, capsize=4)
    ax.set_yticks(y, [_label(n) for n in t.index], fontsize=8)
    ax.set_xlabel(f"{m} (mean over queries, 95% CI; grey: baseline)")
    ax.set_title(f"{exp.meta['collection']}" + ("\n(ragkit subset, not the official split)" if exp.meta["is_subset"] else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig


def latency_plot(exp: Experiment, measure: str | None = None) -> Figure:
    """Quality against median milliseconds per query: what each point of quality costs."""
    import matplotlib.pyplot as plt

    m = measure or exp.meta["measures"][0]
    total = exp.latency[exp.latency["stage"] == "total"].set_index("pipeline")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, row in exp.table.iterrows():
        if name in total.index:
            ax.scatter(total.loc[name, "p50_ms"], row[m], s=60, label=_label(name))
    ax.set_xscale("log")
    if ax.collections:  # no points when the experiment timed no queries (latency_queries=0)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_xlabel(f"ms per query, p50 ({exp.meta['device']})")
    ax.set_ylabel(m)
    ax.set_title(f"{m} against latency")
    fig.tight_layout()
    return fig


def delta_histogram(exp: Experiment, measure: str | None = None) -> Figure:
    """Per-query change against the baseline: how many queries a pipeline helps and hurts."""
    import matplotlib.pyplot as plt

    m = measure or exp.meta["measures"][0]
    wide = exp.per_query[exp.per_query["measure"] == m].pivot(index="query_id", columns="pipeline", values="value")
    base = exp.meta["baseline"]
    others = [n for n in exp.table.index if n != base]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(-1, 1, 41)
    for n in others:
        ax.hist(wide[n] - wide[base], bins=bins, alpha=0.6, label=_label(n))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"per-query {m} minus baseline")
    ax.set_ylabel("queries")
    ax.set_title(f"Per-query {m} change against the baseline, {base}", fontsize=10)
    if others:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def write_report(exp: Experiment, folder: str | Path) -> Path:
    """Write ``results.csv``, ``results.json``, ``per_query.csv``, ``latency.csv``, TREC run
    files under ``runs/``, ``summary.md`` and three PNG plots into ``folder``.

    Files are written to a temporary folder first and moved into place, so an interrupted
    write never leaves a half-written report that looks complete.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = check_writable(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".ragkit-report-", dir=folder))
    try:
        exp.table.to_csv(tmp / "results.csv")
        exp.per_query.to_csv(tmp / "per_query.csv", index=False)
        exp.latency.to_csv(tmp / "latency.csv", index=False)
        payload: dict[str, Any] = {"meta": exp.meta, "table": json.loads(exp.table.to_json(orient="index")),
                                   "latency": json.loads(exp.latency.to_json(orient="records"))}
        (tmp / "results.json").write_text(json.dumps(payload, indent=2))
        (tmp / "runs").mkdir()
        for name, run in exp.runs.items():
            (tmp / "runs" / f"{slug(name)}.trec").write_text(trec_run(run, slug(name)))
        (tmp / "summary.md").write_text(markdown_summary(exp))
        for file, plot in [("quality.png", quality_plot), ("quality_vs_latency.png", latency_plot),
                           ("delta_histogram.png", delta_histogram)]:
            fig = plot(exp)
            fig.savefig(tmp / file, dpi=110, bbox_inches="tight")
            plt.close(fig)
        if (folder / "runs").exists():
            shutil.rmtree(folder / "runs")
        for item in tmp.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
