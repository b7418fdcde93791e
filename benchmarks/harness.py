"""Benchmark plumbing that runs things in this repository, for ``benchmarks/rerank_cost.py``:
:func:`time_eval`, ``python -m ragkit eval`` end to end, in a new process with its own caches.
The committed results are read back, and the throughput targets checked, by
:mod:`ragkit.profiling` (``stored_results``, ``stored_tags``, ``path_targets``).

It lives beside the benchmarks, not in ``ragkit``: an installed package has no checkout to
run. Scripts here import it as ``harness`` (their folder is on ``sys.path`` when run as
``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ragkit.errors import RagkitError

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


__all__ = ["time_eval"]
