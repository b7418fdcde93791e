"""Benchmark plumbing that reads or runs things in this repository, for
``benchmarks/rerank_cost.py`` and notebook 05.

- :func:`stored_results`, :func:`stored_tags`: the section records ``rerank_cost.py`` (and
  the benchmarks that share its format) stored in ``benchmarks/results``, read back;
- :func:`time_eval`: ``python -m ragkit eval`` end to end, in a new process with its own caches;
- :func:`path_targets`: the throughput targets the cost benchmark was built to, checked on a
  :func:`ragkit.profiling.compare_paths` table.

It lives beside the benchmarks, not in ``ragkit``: an installed package has no
``benchmarks/results`` and no checkout to run. Scripts here import it as ``harness`` (their
folder is on ``sys.path`` when run as ``python benchmarks/<script>.py``); notebooks and tests
put ``benchmarks/`` on ``sys.path`` first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ragkit.errors import RagkitError
from ragkit.loaders import resolve_device

# ----------------------------------------------------------------------------- targets


def path_targets(table: pd.DataFrame, device: str) -> pd.DataFrame:
    """The throughput targets the cost benchmark was built to, checked on a :func:`ragkit.profiling.compare_paths`
    table: (a) at least 0.97 x (b), (a) at least 1.5 x (c), (d) at least 1.1 x (a) on a CPU and
    2 x (a) on a GPU.

    Example::

        path_targets(compare_paths(model, sample), "cpu")
    """
    rate = dict(zip(table["path"], table["pairs_per_s"]))
    gpu = resolve_device(device).startswith("cuda")
    checks = [
        ("(a) vs (b)", "langchain", "sentence_transformers", 0.97),
        ("(a) vs (c)", "langchain", "naive_transformers", 1.5),
        ("(d) vs (a)", "pooled", "langchain", 2.0 if gpu else 1.1),
    ]
    rows = []
    for name, top, bottom, target in checks:
        ratio = rate[top] / rate[bottom] if top in rate and bottom in rate else float("nan")
        rows.append(
            {
                "target": name,
                "ratio": ratio,
                "at_least": target,
                "met": bool(ratio >= target) if ratio == ratio else None,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- whole runs


def time_eval(
    args: Sequence[str], cache: str | Path, *, timeout_s: float | None = None, output: list[str] | None = None
) -> float:
    """Wall-clock seconds of ``python -m ragkit eval ARGS`` in a new process whose caches
    (Chroma indexes, first-stage runs, pair scores) live in ``cache``: what a user waits for,
    imports and model loads included. What it printed is appended to ``output`` when given.

    Example::

        time_eval(["--dataset", "demo", "--queries", "0", "--output", "/tmp/out"], "/tmp/cache")  # 21.4
    """
    env = {**os.environ, "RAGKIT_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ragkit", "eval", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RagkitError(f"ragkit eval {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    if output is not None:
        output.append(done.stdout)
    return seconds


# ----------------------------------------------------------------------------- stored results


def stored_results(folder: str | Path, tag: str = "cpu") -> dict[str, dict[str, Any]]:
    """The section records stored for one device: section name -> its record (``title``,
    ``environment``, ``parameters``, ``notes``, and ``tables``, each a list of rows that
    ``pd.DataFrame`` takes as is). ``rerank_cost.py`` writes most of them; ``multi_process.py``
    and ``scaling.py`` write theirs in the same format. Files of another format (such as
    ``passages.py``'s) are left out.

    Example::

        stored = stored_results("benchmarks/results", "cpu")
        pd.DataFrame(stored["throughput"]["tables"]["targets"])
    """
    records = {
        p.name.removesuffix(f"-{tag}.json"): json.loads(p.read_text())
        for p in sorted(Path(folder).glob(f"*-{tag}.json"))
    }
    found = {name: record for name, record in records.items() if "section" in record}
    if not found:
        raise RagkitError(f"No benchmark results for {tag!r} in {folder}: run benchmarks/rerank_cost.py there first.")
    return found


def stored_tags(folder: str | Path, prefix: str = "") -> list[str]:
    """The device tags ``folder`` holds results for, sorted: ``"cpu"``, and ``"cuda-"`` followed
    by the GPU's name for each GPU measured; only those starting with ``prefix``.

    Files are named ``<section>-<tag>.json``, and section names have no hyphen.

    Example::

        stored_tags("benchmarks/results")  # ['cpu']
        stored_tags("benchmarks/results", "cuda")  # [] until a GPU run is committed
    """
    tags = {p.stem.split("-", 1)[1] for p in Path(folder).glob("*-*.json")}
    return sorted(t for t in tags if t.startswith(prefix))


__all__ = ["path_targets", "stored_results", "stored_tags", "time_eval"]
