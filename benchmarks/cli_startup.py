"""How long ``ragkit eval`` takes to refuse a bad option: from starting the command to its
error message, each run a new process (interpreter start-up and imports included), for
options users mistype. The target is under 2 s: every option is checked before torch,
chromadb or LangChain is imported, so none of them is paid for a typo.

Prints a table and writes ``benchmarks/results/cli_startup-cpu.json`` (the section format
``ragkit.profiling.stored_results`` reads) with the machine, versions, load average and date.

    python benchmarks/cli_startup.py                   # this checkout, about a minute
    python benchmarks/cli_startup.py --before 5668faa  # and the same commands at an older commit
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ragkit.provenance import environment
from ragkit.results import markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli_startup-cpu.json"
TARGET_S = 2.0
REPEATS = 5


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once it is closed


def cases() -> list[tuple[str, list[str]]]:
    """(label, arguments after ``ragkit eval --dataset demo``): each a mistake ``ragkit eval``
    refuses with exit status 2."""
    return [
        ("--chunk-sizes -5", ["--chunk-sizes", "-5"]),
        (
            "--chroma-host 127.0.0.1 --chroma-port <closed>",
            ["--chroma-host", "127.0.0.1", "--chroma-port", str(_closed_port())],
        ),
        ("--k 0", ["--k", "0"]),
        ("--k 5 --top-n 10", ["--k", "5", "--top-n", "10"]),
        ("--device gpu0", ["--device", "gpu0"]),
        ("--hybrid --fusion-weights 0 1", ["--hybrid", "--fusion-weights", "0", "1"]),
        ("--measures P@0", ["--measures", "P@0"]),
        ("--dataset no-such-collection", ["--dataset", "no-such-collection"]),
        ("--split train", ["--split", "train"]),
    ]


def time_refusal(checkout: Path, args: list[str], work: Path) -> float:
    """Seconds until ``python -m ragkit eval --dataset demo ARGS`` of ``checkout`` exits with
    its error; raises unless it exits with status 2."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "RAGKIT_CACHE_DIR": str(work / "cache")}
    command = [sys.executable, "-m", "ragkit", "eval", "--dataset", "demo", *args, "--output", str(work / "out")]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 2:
        raise SystemExit(f"{' '.join(args)} exited with {done.returncode}, not 2:\n{done.stderr[-2000:]}")
    return seconds


def measure(checkout: Path, label: str, repeats: int) -> list[dict[str, object]]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="ragkit-startup-"))
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # warms the file cache for the first case
    floor = [0.0] * repeats
    for i in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        floor[i] = time.perf_counter() - start
    rows.append({"code": label, "mistake": "(python -c pass: the interpreter alone)", **_stats(floor, None)})
    for name, args in cases():
        seconds = [time_refusal(checkout, args, work) for _ in range(repeats)]
        rows.append({"code": label, "mistake": name, **_stats(seconds, TARGET_S)})
        print(f"  {label:<10} {name:<48} median {rows[-1]['median_s']:.2f} s")
    return rows


def _stats(seconds: list[float], target: float | None) -> dict[str, object]:
    median = statistics.median(seconds)
    return {
        "median_s": round(median, 3),
        "max_s": round(max(seconds), 3),
        "runs": len(seconds),
        "under_2_s": None if target is None else bool(median < target),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="also time the same commands at this git revision, for comparison")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    load = os.getloadavg()
    rows = measure(ROOT, "this", args.repeats)
    if args.before:
        before = Path(tempfile.mkdtemp(prefix="ragkit-before-")) / "checkout"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True,
                       capture_output=True)  # fmt: skip
        try:
            rows += measure(before, args.before, args.repeats)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=True)
    record = {
        "section": "cli_startup",
        "title": "Time for `ragkit eval` to refuse a bad option",
        "quick": args.repeats < REPEATS,
        "environment": environment("cpu"),
        "parameters": {
            "command": "python -m ragkit eval --dataset demo <mistake> --output <new folder>",
            "repeats": args.repeats,
            "target_s": TARGET_S,
            "before": args.before,
            "load_average_1_5_15_min": [round(x, 2) for x in load],
        },
        "seconds": round(time.perf_counter() - began, 1),
        "notes": [
            "Wall-clock seconds from starting the process to its exit with status 2 and the error on standard "
            "error: interpreter start-up and every import included, medians over the repeats.",
            "`this` is the checkout measured; the other rows, when present, are the same commands at the older "
            "revision, which checked most options only after torch (and, for --chroma-host, chromadb) were loaded.",
            "The machine is shared: the load average when the measurement began is in the parameters.",
        ],
        "tables": {"startup": rows},
    }
    print("\n" + markdown_table(pd.DataFrame(rows)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
