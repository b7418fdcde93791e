"""What ragkit's caches do with damaged, truncated or planted files, and whether concurrent
writers can tear one: measured, not assumed.

Two sections, printed as tables and written to ``benchmarks/results/reliability.json`` with
the machine, versions and date:

- ``writers``: three processes rewrite one cache file while a fourth reads it, with ragkit's
  atomic writer and, for comparison, a writer that renames a shared ``<name>.tmp`` (what
  ragkit did before); counts of failed writes and of reads that found a missing or torn file.
- ``damage``: ``ragkit eval`` on the demo collection (all-MiniLM-L6-v2, the L-12
  cross-encoder reranking the top 10) in a cache where one file was damaged first: every
  store, several kinds of damage. For each: the exit status, whether a warning named the file,
  whether every nDCG@10 equals the undamaged run's, and whether the next run is clean.

    python benchmarks/reliability.py             # both sections, about five minutes on 2 CPU cores
    python benchmarks/reliability.py --only writers
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ragkit.cache import atomic_write
from ragkit.provenance import environment
from ragkit.results import markdown_table
from ragkit.settings import DEFAULT_EMBEDDER, DEFAULT_RERANKER

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "cache.md"  # the page that shows the block
README_BEGIN, README_END = "<!-- reliability: measured by benchmarks/reliability.py -->", "<!-- end reliability -->"
EVAL_ARGS = ["--dataset", "demo", "--queries", "0", "--k", "10", "--latency-queries", "2", "--device", "cpu"]
WRITERS, WRITES, READS = 3, 300, 3000


# ----------------------------------------------------------------------------- writers


def _shared_tmp_write(path: str, data: str) -> None:
    """The writer ragkit used before: every process renames the same temporary file."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(data)
    tmp.replace(path)


def _write_many(path: str, tag: int, shared_tmp: bool, out) -> None:
    failures = 0
    for i in range(WRITES):
        data = json.dumps({"writer": tag, "i": i, "pad": "x" * 20_000})
        try:
            (_shared_tmp_write if shared_tmp else atomic_write)(path, data)
        except OSError:
            failures += 1
    out.put(("write", failures))


def _read_many(path: str, out) -> None:
    missing = torn = 0
    for _ in range(READS):
        try:
            json.loads(Path(path).read_text())
        except FileNotFoundError:
            missing += 1
        except json.JSONDecodeError:
            torn += 1
    out.put(("read", missing, torn))


def race(shared_tmp: bool) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="ragkit-race-"))
    path = str(folder / "record.json")
    atomic_write(path, "{}")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_write_many, args=(path, t, shared_tmp, out)) for t in range(WRITERS)]
    procs.append(ctx.Process(target=_read_many, args=(path, out)))
    for p in procs:
        p.start()
    reports = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    leftovers = sorted(p.name for p in folder.iterdir() if p.name != "record.json")
    shutil.rmtree(folder)
    read = next(r for r in reports if r[0] == "read")
    return {
        "writer": "shared <name>.tmp, renamed" if shared_tmp else "ragkit.cache.atomic_write",
        "writes": WRITERS * WRITES,
        "failed writes": sum(r[1] for r in reports if r[0] == "write"),
        "reads": READS,
        "reads finding no file": read[1],
        "torn reads": read[2],
        "files left behind": len(leftovers),
    }


# ----------------------------------------------------------------------------- damage


def _eval(cache: Path, output: Path) -> tuple[int, str, dict[str, float] | None]:
    env = {**os.environ, "RAGKIT_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "ragkit", "eval", *EVAL_ARGS, "--output", str(output)], env=env,
                          capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    ndcg = None
    if done.returncode == 0:
        table = json.loads((output / "results.json").read_text())["table"]
        ndcg = {name: row["nDCG@10"] for name, row in table.items()}
    return done.returncode, done.stderr, ndcg


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"nothing matches {pattern} under {folder}: has the cache layout changed?")
    return found[0]


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _overwrite_middle(path: Path, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + n] = os.urandom(min(n, len(data) - start))
    path.write_bytes(bytes(data))


def _made_up_numbers(path: Path) -> None:
    record = json.loads(path.read_text())
    record["payload"]["table"]["data"][-1][1] = 0.999  # the reranked pipeline's nDCG@10
    path.write_text(json.dumps(record))


def _resign(path: Path, change: Callable) -> None:
    from ragkit.cache import _content_hash

    record = json.loads(path.read_text())
    record["payload"] = change(record["payload"])
    record["sha256"] = _content_hash(record["payload"])
    path.write_text(json.dumps(record))


def _damages(marker: Path) -> list[tuple[str, str, str, Callable[[Path], Path]]]:
    """(store, damage, which file, how): each takes the cache folder and returns the path it damaged."""

    def result(cache):
        return _one(cache / "results", "*.json")

    def run(cache):
        return _one(cache / "runs", "*.json")

    def latency(cache):
        return _one(cache / "latency", "*.json")

    def pairs(cache):
        return cache / "pair_scores.sqlite"

    def hnsw(cache):
        return _one(cache / "chroma", "*/*/data_level0.bin")

    def chroma_db(cache):
        return _one(cache / "chroma", "*/chroma.sqlite3")

    def apply(locate, how):
        def damage(cache):
            path = locate(cache)
            how(path)
            return path

        return damage

    return [
        (
            "results",
            "a planted pickle",
            "results/<key>.json",
            apply(result, lambda p: p.write_bytes(pickle.dumps(_Planted(marker)))),
        ),  # fmt: skip
        ("results", "made-up numbers, checksum not updated", "results/<key>.json", apply(result, _made_up_numbers)),
        ("results", "truncated to half", "results/<key>.json", apply(result, _truncate)),
        ("runs", "replaced by []", "runs/<key>.json", apply(run, lambda p: p.write_text("[]"))),
        (
            "runs",
            "half the queries, checksum updated",
            "runs/<key>.json",
            apply(run, lambda p: _resign(p, lambda hits: hits[: len(hits) // 2])),
        ),
        ("runs", "truncated to half", "runs/<key>.json", apply(run, _truncate)),
        ("latency", "garbage bytes", "latency/<key>.json", apply(latency, lambda p: p.write_bytes(os.urandom(64)))),
        ("pair_scores", "truncated to half", "pair_scores.sqlite", apply(pairs, _truncate)),
        (
            "pair_scores",
            "overwritten with text",
            "pair_scores.sqlite",
            apply(pairs, lambda p: p.write_text("not a database\n" * 200)),
        ),
        (
            "chroma",
            "HNSW data_level0.bin cut in half",
            "chroma/<index>/<segment>/data_level0.bin",
            apply(hnsw, _truncate),
        ),
        (
            "chroma",
            "256 bytes of data_level0.bin overwritten",
            "chroma/<index>/<segment>/data_level0.bin",
            apply(hnsw, _overwrite_middle),
        ),
        (
            "chroma",
            "HNSW segment folder deleted",
            "chroma/<index>/<segment>/",
            lambda cache: (lambda seg: (shutil.rmtree(seg), seg)[1])(hnsw(cache).parent),
        ),
        (
            "chroma",
            "chroma.sqlite3 overwritten with text",
            "chroma/<index>/chroma.sqlite3",
            apply(chroma_db, lambda p: p.write_text("not a database\n" * 200)),
        ),
    ]


def damage_section() -> list[dict[str, object]]:
    work = Path(tempfile.mkdtemp(prefix="ragkit-damage-"))
    clean = work / "clean"
    code, err, reference = _eval(clean, work / "out")
    if code != 0:
        raise SystemExit(f"the undamaged run failed ({code}):\n{err[-3000:]}")
    rows = []
    marker = work / "marker"
    for store, damage, where, apply in _damages(marker):
        cache = work / "case"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(clean, cache)
        if store != "results":  # else the whole result is reused and the damaged file never read
            shutil.rmtree(cache / "results")
        path = apply(cache)
        code, err, ndcg = _eval(cache, work / "out")
        again_code, again_err, again = _eval(cache, work / "out")
        rows.append({
            "store": store,
            "damage": damage,
            "file": where,
            "exit": code,
            # ragkit names the file, or for an index the index folder it holds and the file within
            "warning names the file": any(str(folder) in err for folder in (path, path.parent, path.parent.parent)),
            "nDCG@10 as undamaged": ndcg == reference,
            "code executed": marker.exists(),
            "next run clean": again_code == 0 and again == reference
            and not any(word in again_err for word in ("Ignoring damaged", "failed its check", "damaged")),
        })  # fmt: skip
        print(f"  {store:<12} {damage:<45} exit {code}")
    shutil.rmtree(work, ignore_errors=True)
    return rows


def readme_section(record: dict) -> str:
    """docs/cache.md's reliability block, from a stored record: both tables and their provenance."""
    env = record["environment"]
    lines = [
        f"Measured on {env['machine']} ({env['date'][:10]}), ragkit {env['versions']['ragkit']}.",
        "",
        f"Writers: {WRITERS} processes rewriting one cache file {WRITES} times each while another reads it "
        f"{READS} times.",
        "",
        markdown_table(pd.DataFrame(record["tables"]["writers"])),
        "",
        "Damage: `ragkit eval " + " ".join(record["parameters"]["eval"]) + "` (all-MiniLM-L6-v2, the L-12 "
        "cross-encoder) in a cache where one file was damaged first.",
        "",
        markdown_table(pd.DataFrame(record["tables"]["damage"])),
    ]
    return "\n".join(lines)


def readme_with(text: str, block: str) -> str:
    """``text`` (docs/cache.md) with its reliability block replaced by ``block``."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"docs/cache.md has no {README_BEGIN} ... {README_END} block.")
    head, rest = text.split(README_BEGIN, 1)
    return head + README_BEGIN + "\n" + block + "\n" + README_END + rest.split(README_END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=["writers", "damage"], default=["writers", "damage"])
    args = parser.parse_args(argv)
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"tables": {}}
    record["environment"] = environment("cpu", models=[DEFAULT_EMBEDDER, DEFAULT_RERANKER])
    record["parameters"] = {"writers": WRITERS, "writes_each": WRITES, "reads": READS, "eval": EVAL_ARGS}
    if "writers" in args.only:
        record["tables"]["writers"] = [race(shared_tmp=True), race(shared_tmp=False)]
    if "damage" in args.only:
        record["tables"]["damage"] = damage_section()
    for name, rows in record["tables"].items():
        print(f"\n{name}\n" + markdown_table(pd.DataFrame(rows)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    if {"writers", "damage"} <= record["tables"].keys():
        PAGE.write_text(readme_with(PAGE.read_text(), readme_section(record)))
    print(f"\nwritten to {RESULTS} and {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
