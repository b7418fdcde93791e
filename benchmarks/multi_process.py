"""One process against sentence-transformers' multi-process pool, on a CPU: the L-12
cross-encoder scoring SciFact (query, passage) pairs and all-MiniLM-L6-v2 embedding SciFact
documents, through ragkit's ``score_pairs`` and ``embed_documents``.

Four ways to spend this machine's cores (T = torch's thread count here, P = ``--processes``):

- ``1 process x T threads``: the single-process path as ragkit runs it, the baseline;
- ``1 process x T/P threads``: the same with a worker's share of the threads;
- ``P processes x T/P threads``: the pool, the cores split between the workers;
- ``P processes x T threads``: the pool with ragkit's default threads per worker, which keep
  the scores bit-identical to the baseline at the cost of more threads than cores.

Every configuration's scores are compared with the single-process run with as many threads
per process (``bit_identical``) and with the baseline (``max_abs_diff``, and for the
cross-encoder ``same_order``: each query's candidates in the same order). Pools are started
before timing; ``start_s`` is what starting one cost (the workers import torch and receive the
model, one after the other) up to its first scored batch.

    python benchmarks/multi_process.py            # 2 CPU cores: about 7 minutes
    python benchmarks/multi_process.py --quick    # tiny sizes, to a temporary folder

Configurations take turns within each repeat, so a change of background load spreads over all
of them; still, run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ragkit import load_beir, make_subset
from ragkit.bm25 import BM25Index
from ragkit.loaders import HuggingFaceEmbeddingsLoader, embed_documents, multi_process_pool
from ragkit.profiling import Timing, score_agreement, time_calls
from ragkit.provenance import environment
from ragkit.rerank import load_reranker, score_pairs
from ragkit.results import markdown_table
from ragkit.settings import (
    DEFAULT_EMBEDDER,
    DEFAULT_RERANK_K,
    DEFAULT_RERANKER,
    DEFAULT_SUBSET_QUERIES,
    rerank_batch_size,
)

RESULTS = Path(__file__).resolve().parent / "results"
SECTION = "multiprocess"
TITLE = "One process against a multi-process pool (CPU)"


@dataclass(frozen=True)
class Sizes:
    queries: int  # queries whose BM25 top k are scored
    k: int  # candidates per query
    docs: int  # documents embedded
    repeats: int


# On 2 CPU cores the L-12 scores 5-10 SciFact pairs per second: 120 pairs, four ways, three times.
FULL = Sizes(queries=6, k=DEFAULT_RERANK_K, docs=200, repeats=3)
QUICK = Sizes(queries=2, k=4, docs=12, repeats=1)


@dataclass(frozen=True)
class Configuration:
    processes: int
    threads: int  # torch threads per process

    @property
    def name(self) -> str:
        processes = "1 process" if self.processes == 1 else f"{self.processes} processes"
        return f"{processes} x {self.threads} thread{'s' if self.threads > 1 else ''}"


def workload(sizes: Sizes) -> tuple[list[list[tuple[str, str]]], list[str], str]:
    """Each query's BM25 top ``k`` as (query, passage) pairs, the documents to embed, and the
    collection's name: a SciFact subset (``make_subset``'s defaults, as the cost benchmark)."""
    subset = make_subset(load_beir("scifact"), DEFAULT_SUBSET_QUERIES, seed=0)
    ids = sorted(subset.corpus)
    index = BM25Index.from_texts(ids, [subset.text(i) for i in ids])
    query_ids = sorted(subset.queries)[: sizes.queries]
    hits = index.search([subset.queries[q] for q in query_ids], sizes.k)
    pairs = [[(subset.queries[q], subset.text(d)) for d, _ in ranked] for q, ranked in zip(query_ids, hits)]
    return pairs, [subset.text(i) for i in ids[: sizes.docs]], subset.name


def measure(
    model: Any,
    run: Callable[..., np.ndarray],
    items: Sequence[Any],
    warmup: Sequence[Any],
    configurations: list[Configuration],
    repeats: int,
) -> tuple[dict[Configuration, float | None], dict[Configuration, Timing]]:
    """Pool start-up seconds and timings of ``run(model, items, devices=...)`` per configuration.

    Each pool gets its own copy of the model: ragkit keeps one open pool per model and device
    list, and the configurations take turns. ``warmup`` items are scored first, untimed."""
    here = torch.get_num_threads()
    started: dict[Configuration, float | None] = {}
    calls: dict[Configuration, Callable[[], np.ndarray]] = {}
    with ExitStack() as pools:
        for config in configurations:
            if config.processes == 1:
                calls[config] = _in_this_process(run, model, items, config.threads)
                _in_this_process(run, model, warmup, config.threads)()
                started[config] = None
            else:
                devices = ["cpu"] * config.processes
                copied = copy.deepcopy(model)
                start = time.perf_counter()
                pools.enter_context(multi_process_pool(copied, devices, threads=config.threads))
                run(copied, warmup, devices=devices)
                started[config] = time.perf_counter() - start
                calls[config] = functools.partial(run, copied, items, devices=devices)
        try:
            timings = time_calls(calls, repeats=repeats, warmup=False)
        finally:
            torch.set_num_threads(here)
    return started, timings


def _in_this_process(run: Callable[..., np.ndarray], model: Any, items: Sequence[Any], threads: int) -> Callable:
    def call() -> np.ndarray:
        torch.set_num_threads(threads)
        return run(model, items)

    return call


def rows(
    kind: str,
    model_name: str,
    n_items: int,
    started: dict[Configuration, float | None],
    timings: dict[Configuration, Timing],
    split: Callable[[np.ndarray], list[np.ndarray]] | None,
) -> list[dict[str, Any]]:
    """One table row per configuration; ``split`` cuts cross-encoder scores into queries (the
    order each query's candidates come out in is compared), None for embeddings."""
    configurations = list(timings)
    baseline = configurations[0]
    out = []
    for config in configurations:
        result = timings[config].result
        twin = next(c for c in configurations if c.processes == 1 and c.threads == config.threads)
        row = {
            "model": model_name,
            "configuration": config.name,
            "processes": config.processes,
            "threads_per_process": config.threads,
            kind: n_items,
            "repeats": len(timings[config].seconds),
            "start_s": started[config],
            "median_s": timings[config].median_s,
            "min_s": min(timings[config].seconds),
            "max_s": max(timings[config].seconds),
            f"{kind}_per_s": n_items / timings[config].median_s,
            "speed_vs_baseline": timings[baseline].median_s / timings[config].median_s,
            # Best repeat against best repeat: what is left when other load came and went.
            "speed_vs_baseline_best": min(timings[baseline].seconds) / min(timings[config].seconds),
            "bit_identical_to": twin.name,
            "bit_identical": bool(np.array_equal(result, timings[twin].result)),
            "max_abs_diff_vs_baseline": float(np.max(np.abs(result - timings[baseline].result))),
        }
        if split is not None:
            row["same_order_vs_baseline"] = score_agreement(split(result), split(timings[baseline].result))[
                "same_order"
            ]
        out.append(row)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.1e}" if abs(value) < 1e-3 else f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_markdown(record: dict[str, Any], path: Path) -> None:
    env = record["environment"]
    ver = env["versions"]
    quick = " (**--quick**: tiny sizes, not results)" if record["quick"] else ""
    lines = [
        f"# {record['title']}",
        "",
        "Written by `benchmarks/multi_process.py` with the JSON file beside it; medians over repeats.",
        "",
        f"CPU: {env['machine']}, {env['torch_threads']} torch threads; torch {ver['torch']}, transformers "
        f"{ver['transformers']}, sentence-transformers {ver['sentence-transformers']}; {env['date']}; "
        f"took {record['seconds']:.0f} s{quick}.",
        "",
        f"Parameters: `{json.dumps(record['parameters'])}`",
        "",
    ]
    for name, table in record["tables"].items():
        frame = pd.DataFrame([[_cell(v) for v in row.values()] for row in table], columns=list(table[0]))
        lines += [f"**{name}**", "", markdown_table(frame), ""]
    lines += [f"- {note}" for note in record["notes"]] + [""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="worker processes of the pool (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results to a temporary folder")
    parser.add_argument("--output", default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    output = Path(args.output or (Path(tempfile.gettempdir()) / "ragkit-multiprocess-quick" if args.quick else RESULTS))
    threads = torch.get_num_threads()
    share = max(1, threads // args.processes)
    configurations = [
        Configuration(1, threads),
        Configuration(1, share),
        Configuration(args.processes, share),
        Configuration(args.processes, threads),
    ]
    configurations = list(dict.fromkeys(configurations))  # with one thread here, a share is the whole
    total = time.perf_counter()
    per_query, docs, collection = workload(sizes)
    pairs = [pair for query in per_query for pair in query]
    bounds = np.cumsum([len(query) for query in per_query])[:-1]

    print(f"Scoring {len(pairs)} pairs with {DEFAULT_RERANKER}...", flush=True)
    reranker = load_reranker(DEFAULT_RERANKER, "cpu")
    started, timings = measure(
        reranker,
        lambda model, items, **kw: score_pairs(model, items, raw=True, **kw),
        pairs,
        pairs[:8],
        configurations,
        sizes.repeats,
    )
    scoring = rows("pairs", DEFAULT_RERANKER, len(pairs), started, timings, lambda s: np.split(s, bounds))

    print(f"Embedding {len(docs)} documents with {DEFAULT_EMBEDDER}...", flush=True)
    embedder = HuggingFaceEmbeddingsLoader(DEFAULT_EMBEDDER, model_kwargs={"device": "cpu"})
    started, timings = measure(embedder, embed_documents, docs, docs[:32], configurations, sizes.repeats)
    embedding = rows("docs", DEFAULT_EMBEDDER, len(docs), started, timings, None)

    pool = next(r for r in scoring if r["processes"] > 1 and r["threads_per_process"] == share)
    notes = [
        "The point of the pool is several GPUs (one process each) or a CPU with many cores; on a machine with "
        "few cores, processes only share the same cores that one process's threads already use.",
        f"Here, {pool['configuration']} scored {len(pairs)} pairs at {pool['speed_vs_baseline']:.2f} x the "
        f"single process's speed by median time, {pool['speed_vs_baseline_best']:.2f} x by best repeat "
        f"(start-up of {pool['start_s']:.0f} s not included).",
        "bit_identical compares with the single-process run that has as many torch threads per process: "
        "the workers get the same batches as one process, so with the same thread count they compute the "
        "same bits. A CPU splits its sums by thread count, so with fewer threads per worker the last digits "
        "of a score can differ (max_abs_diff_vs_baseline: by how much here).",
        "same_order_vs_baseline: every query's candidates come out in the baseline's order.",
        "start_s: seconds from starting the pool to its first scored batch (workers start one after the other: "
        "each imports torch and sentence-transformers and receives the model); paid once per pool, which "
        "ragkit.loaders.multi_process_pool keeps open across calls.",
        f"Cross-encoder: raw logits in batches of {rerank_batch_size('cpu')} (ragkit's CPU default); embedder: "
        "batches of 32 (sentence-transformers' default).",
    ]
    record = {
        "section": SECTION,
        "title": TITLE,
        "quick": args.quick,
        "environment": environment("cpu", models=[DEFAULT_RERANKER, DEFAULT_EMBEDDER]),
        "parameters": {
            "collection": collection,
            "queries": sizes.queries,
            "k": sizes.k,
            "pairs": len(pairs),
            "docs": len(docs),
            "processes": args.processes,
            "repeats": sizes.repeats,
            "reranker": DEFAULT_RERANKER,
            "embedder": DEFAULT_EMBEDDER,
            "first_stage": "bm25",
        },
        "seconds": round(time.perf_counter() - total, 1),
        "notes": notes,
        "tables": {"cross_encoder": scoring, "embedder": embedding},
    }
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{SECTION}-cpu.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(record, path.with_suffix(".md"))
    shown = ["configuration", "start_s", "median_s", "min_s", "pairs_per_s", "docs_per_s", "speed_vs_baseline"]
    shown += ["speed_vs_baseline_best"]
    shown += ["bit_identical", "max_abs_diff_vs_baseline", "same_order_vs_baseline"]
    for name, table in record["tables"].items():
        frame = pd.DataFrame(table)
        with pd.option_context("display.width", 200, "display.float_format", "{:,.4g}".format):
            print(f"\n{name}:\n{frame[[c for c in shown if c in frame]].to_string(index=False)}")
    print("\n".join(f"- {n}" for n in notes))
    print(f"\n{record['seconds'] / 60:.1f} min -> {path}, {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
