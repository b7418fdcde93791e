"""When Chroma should save its HNSW index while ragkit builds one: the options compared on
one corpus of synthetic vectors, each built in its own process.

Chroma's local HNSW segment is saved to disk (its graph files and an id map that grows with
the index) each time the vectors added since the last save reach the collection's
``sync_threshold``, inside the add that reaches it. Until then the vectors are only in
Chroma's SQLite log, which each add reads again from the last saved position. So the
options trade saves (bytes written) against log re-reads (time):

- ``every-add-256``: ragkit before: ``sync_threshold=1``, adds of ``INDEX_BATCH_SIZE``;
- ``chroma-default``: Chroma's own configuration (``sync_threshold=1000``), adds of
  ``client.get_max_batch_size()``: what a bare ChromaDB build does;
- ``saves-K``: :func:`ragkit.retrievers._add_plan`: adds of the largest batch Chroma
  accepts, K saves evenly spread, the last one with the last add (ragkit: ``_SAVES``);
- ``one-save``: a single save when the last vector comes in (``saves-1``);
- ``every-add``: ``_add_plan`` with as many saves as adds (a save after every add).

For each: build seconds and documents/s, MiB written by the building process
(``/proc/self/io``), MiB of the index on disk, and how many log entries are not in the saved
HNSW index when the build ends (0 is required: ragkit digests the saved files, see ``_seal``).

    python benchmarks/index_persistence.py                       # 50,000 vectors, 2 repeats
    python benchmarks/index_persistence.py --size 20000 --repeats 1 --output-dir /tmp/p
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ragkit.provenance import environment, now
from ragkit.results import markdown_table
from ragkit.retrievers import HNSW, _add_plan, chroma_settings
from ragkit.settings import INDEX_BATCH_SIZE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import SyntheticVectors, _written_mb, disk_usage_mb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "index_persistence-cpu"
OPTIONS = ("every-add-256", "chroma-default", "every-add", "saves-16", "saves-4", "one-save")


def _configuration(option: str, n: int, max_batch: int) -> tuple[dict[str, Any], list[int]]:
    """The HNSW configuration and the sizes of the adds of one option."""
    if option == "every-add-256":
        full, rest = divmod(n, INDEX_BATCH_SIZE)
        return {"sync_threshold": 1, "batch_size": 1}, [INDEX_BATCH_SIZE] * full + [rest] * bool(rest)
    if option == "chroma-default":
        full, rest = divmod(n, max_batch)
        return {}, [max_batch] * full + [rest] * bool(rest)
    saves = {"one-save": 1, "every-add": n}.get(option) or int(option.split("-")[1])
    threshold, sizes = _add_plan(n, max_batch, saves)
    return {"sync_threshold": threshold, "batch_size": min(threshold, max_batch)}, sizes


def _unsaved(directory: Path) -> int:
    """Log entries newer than what the saved HNSW segment holds."""
    connection = sqlite3.connect(f"{(directory / 'chroma.sqlite3').as_uri()}?mode=ro", uri=True)
    try:
        [(saved,)] = connection.execute(
            "SELECT COALESCE(MAX(m.seq_id), 0) FROM segments s LEFT JOIN max_seq_id m ON m.segment_id = s.id "
            "WHERE s.scope = 'VECTOR'"
        ).fetchall()
        [(pending,)] = connection.execute("SELECT COUNT(*) FROM embeddings_queue WHERE seq_id > ?", (saved,)).fetchall()
    finally:
        connection.close()
    return int(pending)


def worker(option: str, n: int, directory: Path) -> dict[str, Any]:
    import chromadb

    vectors = np.concatenate([block for _, block in SyntheticVectors().documents(n)])
    client = chromadb.PersistentClient(path=str(directory), settings=chroma_settings())
    configuration, sizes = _configuration(option, n, client.get_max_batch_size())
    collection = client.create_collection(
        "persistence", configuration={"hnsw": {**HNSW, **configuration}}, embedding_function=None
    )
    written = _written_mb()
    start, at = time.perf_counter(), 0
    for size in sizes:
        ids = [str(i) for i in range(at, at + size)]
        collection.add(ids=ids, embeddings=vectors[at : at + size], metadatas=[{"doc_id": i} for i in ids])
        at += size
    seconds = time.perf_counter() - start
    written = _written_mb() - written
    if collection.count() != n:
        raise RuntimeError(f"{option}: {collection.count()} vectors after adding {n}")
    return {
        "option": option,
        "adds": len(sizes),
        "sync_threshold": configuration.get("sync_threshold", 1000),
        "build_s": round(seconds, 2),
        "docs_per_s": round(n / seconds),
        "written_mb": round(written, 1),
        "index_mb": round(disk_usage_mb(directory)["disk_mb"], 1),
        "unsaved_after_build": _unsaved(directory),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        option, n, directory = args.worker
        print(json.dumps(worker(option, int(n), Path(directory))))
        return 0
    date, load = now(), os.getloadavg()[0]
    rows = []
    for repeat in range(args.repeats):
        for option in args.options:  # interleaved, so that a busy spell of the machine hits every option
            directory = Path(tempfile.mkdtemp(prefix="ragkit-persistence-"))
            try:
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", option, str(args.size), str(directory)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            rows.append({"repeat": repeat + 1, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    best = {}
    for row in rows:  # the fastest repeat of each option: the least disturbed by other work
        if row["option"] not in best or row["build_s"] < best[row["option"]]["build_s"]:
            best[row["option"]] = row
    base = best.get("every-add-256")
    summary = [
        {
            **row,
            "speed_vs_every_add": round(base["build_s"] / row["build_s"], 2) if base else None,
            "written_vs_index": round(row["written_mb"] / row["index_mb"], 2),
        }
        for row in best.values()
    ]
    record = {
        "section": "index_persistence",
        "environment": {
            **environment("cpu"),
            "date": date,
            "load_average_1min_at_start": round(load, 2),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },  # fmt: skip
        "parameters": {"size": args.size, "dim": SyntheticVectors().dim, "repeats": args.repeats, "hnsw": HNSW},
        "tables": {"runs": rows, "best": summary},
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{NAME}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown_table(pd.DataFrame(summary))
    (args.output_dir / f"{NAME}.md").write_text(
        f"# When Chroma saves its HNSW index during a build: {args.size:,} synthetic {SyntheticVectors().dim}-d "
        f"vectors\n\nFastest of {args.repeats} repeat(s) per option; {date}, load average {load:.2f} at the start. "
        "`unsaved_after_build` must be 0 for ragkit to seal the index.\n\n" + table + "\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
