"""What splitting documents into passages does to retrieval, to the reranker's gain and to its cost.

RAG systems index passages, not whole documents: all-MiniLM-L6-v2 reads only the first 256
tokens of a document and the cross-encoder the first 512 of a (query, document) pair, and
SciFact and NFCorpus abstracts run longer. This benchmark evaluates, on each collection's query
sample over its whole corpus:

- the dense first stage on whole documents and on 400-character passages (50 overlapping, the
  tutorial's splitting; a document scores as its best passage, MaxP);
- each reranked (top 20) by the L-12 cross-encoder, which on passages scores every passage of
  every candidate (more, shorter pairs), and on whole documents with ``max_length`` 256 too;

and reports nDCG@10, each reranker's change against its own first stage (95% CI, p), the pairs
scored per query, the share of pairs truncated, and the scoring seconds per query of the batched
path (a throughput, timed only when every pair was scored in this run). Results pool the
collections too. Everything goes to ``benchmarks/results/passages-cpu.json`` and ``.md``, which
notebooks 02 and 03 show.

    python benchmarks/passages.py                      # SciFact + NFCorpus, 50 queries each (~40 min, 2 CPU cores)
    python benchmarks/passages.py --dataset demo --queries 0 --output-dir /tmp/passages
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from ragkit import Pipeline, experiment, load_beir
from ragkit.data import sample_queries
from ragkit.evaluate import pool
from ragkit.provenance import device_description, machine_state, now, versions
from ragkit.results import markdown_table
from ragkit.settings import DEFAULT_EMBEDDER, DEFAULT_RERANKER

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_SIZE, CHUNK_OVERLAP, K, SHORT_MAX_LENGTH = 400, 50, 20, 256


def pipelines(embedder: str = DEFAULT_EMBEDDER, reranker: str = DEFAULT_RERANKER) -> list[Pipeline]:
    """Whole documents and passages, each alone and reranked; whole documents reranked at 256 tokens."""
    chunked = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP}
    return [
        Pipeline(embedder=embedder),
        Pipeline(embedder=embedder, reranker=reranker, k=K),
        Pipeline(embedder=embedder, reranker=reranker, k=K, max_length=SHORT_MAX_LENGTH),
        Pipeline(embedder=embedder, **chunked),
        Pipeline(embedder=embedder, reranker=reranker, k=K, **chunked),
    ]


def rows(result: Any, grid: list[Pipeline], collection: str) -> list[dict[str, Any]]:
    """One row per pipeline: what it scores, what reranking changed, what it cost."""
    out = []
    truncated = result.meta.get("truncated_pairs", {})
    throughput = result.meta.get("throughput", {})
    for p in grid:
        row = result.table.loc[p.name]
        entry: dict[str, Any] = {
            "collection": collection,
            "pipeline": p.name,
            "passages": p.chunk_size is not None,
            "max_length": p.max_length,
            "queries": result.meta["n_queries"],
            "ndcg@10": round(float(row["nDCG@10"]), 4),
            "ndcg@10_ci": [round(float(row["nDCG@10 ci_low"]), 4), round(float(row["nDCG@10 ci_high"]), 4)],
        }
        if p.reranker:
            entry.update(
                first_stage=p.own_first_stage().name,
                gain=round(float(row["nDCG@10 own delta"]), 4),
                gain_ci=[round(float(row["nDCG@10 own ci_low"]), 4), round(float(row["nDCG@10 own ci_high"]), 4)],
                gain_p=float(row["nDCG@10 own p_perm"]),
                pairs_per_query=round(truncated[p.name]["pairs"] / result.meta["n_queries"], 1),
                truncated_share=round(truncated[p.name]["share"], 4),
            )
            timed = throughput.get(p.name)
            if timed:
                entry["scoring_s_per_query"] = round(timed["seconds"] / timed["queries"], 2)
                entry["pairs_per_s"] = round(timed["pairs"] / timed["seconds"], 1)
        out.append(entry)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The stored results as a Markdown page: provenance, then one table."""
    columns = ["collection", "pipeline", "queries", "ndcg@10", "gain", "gain_ci", "gain_p", "pairs_per_query",
               "truncated_share", "scoring_s_per_query"]  # fmt: skip
    import pandas as pd

    table = pd.DataFrame(report["rows"]).reindex(columns=columns)
    for column in ("gain_ci",):
        table[column] = table[column].map(lambda v: f"[{v[0]:+.3f}, {v[1]:+.3f}]" if isinstance(v, list) else "")
    table = table.astype(object).where(table.notna(), "")
    p = report["parameters"]
    lines = [
        "# Passages against whole documents",
        "",
        f"{report['device']}; {report['versions']}; {report['date']}; took {report['minutes']} min; "
        f"load average at start {report['load_average']}.",
        "",
        f"Parameters: `{json.dumps(p)}`",
        "",
        "`gain` is each reranker's nDCG@10 change against its own first stage (95% CI by inverting the paired "
        "randomization test, `gain_p` its p-value); `pairs_per_query` what it scores per query; `truncated_share` "
        "the share of those pairs longer than the cross-encoder reads; `scoring_s_per_query` the batched path's "
        "seconds per query, where every pair was scored in this run. Query samples over the whole corpus: "
        "scores estimate the full splits', with the intervals shown.",
        "",
        markdown_table(table),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--queries", type=int, default=50, help="sampled queries per collection (0: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    start, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    grid = pipelines()
    results, table = [], []
    for name in args.dataset:
        collection = load_beir(name)
        if args.queries:
            collection = sample_queries(collection, args.queries, seed=0)
        result = experiment(collection, grid, measures=["nDCG@10", "R@100"], device=args.device, latency_queries=0)
        results.append(result)
        table += rows(result, grid, name)
        print(result.verdict(), "\n", flush=True)
    if len(results) > 1:
        table += rows(pool(results), grid, " + ".join(args.dataset))
    meta = results[0].meta
    report = {
        "parameters": {
            "datasets": args.dataset,
            "queries": args.queries,
            "chunk_size": CHUNK_SIZE,
            "chunk_overlap": CHUNK_OVERLAP,
            "k": K,
            "short_max_length": SHORT_MAX_LENGTH,
            "embedder": DEFAULT_EMBEDDER,
            "reranker": DEFAULT_RERANKER,
        },  # fmt: skip
        "device": device_description(meta["device"]),
        "machine": machine_state(meta["device"]),
        "versions": versions(),
        "date": now(),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "load_average": load,
        "rows": table,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "passages-cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "passages-cpu.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
