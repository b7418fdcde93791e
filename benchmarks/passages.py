"""What splitting documents into passages does to retrieval, to the reranker's gain and to its cost.

RAG systems index passages, not whole documents: all-MiniLM-L6-v2 reads only the first 256
tokens of a document and the cross-encoder the first 512 of a (query, document) pair, and
SciFact and NFCorpus abstracts run longer. This benchmark evaluates, on each collection (by
default a ragkit subset of 50 queries and about 1,000 documents, so that passages of every
document can be embedded in minutes; ``--docs 0`` uses the whole corpus with a query sample):

- the dense first stage on whole documents and on 400-character passages (50 overlapping, the
  tutorial's splitting; a document scores as its best passage, MaxP);
- each reranked (top 20) by the L-12 cross-encoder, which on passages scores every passage of
  every candidate (more, shorter pairs), and on whole documents with ``max_length`` 256 too;

and reports nDCG@10, each reranker's change against its own first stage (95% CI, p), the pairs
scored per query, the share of pairs truncated, and the tokens the cross-encoder reads per
query (its cost on any machine; benchmarks/rerank_cost.py times tokens on this one). Results pool the
collections too. Everything goes to ``benchmarks/results/passages-cpu.json`` and ``.md``, which
notebooks 02 and 03 show (``passages_full-cpu`` for whole corpora, which docs/levers.md shows).

    python benchmarks/passages.py                      # SciFact + NFCorpus subsets (~20 min, 2 CPU cores)
    python benchmarks/passages.py --docs 0             # whole corpora, 50 sampled queries (~1 h)
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
from ragkit.data import make_subset, sample_queries
from ragkit.evaluate import pool
from ragkit.passages import passage_splitter
from ragkit.provenance import device_description, machine_state, now, versions
from ragkit.rerank import load_reranker, token_lengths
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


def tokens_read(result: Any, collection: Any, p: Pipeline) -> int:
    """The tokens a reranked pipeline's cross-encoder reads over all queries: every (query,
    passage) pair of its top k candidates, each cut to its max_length. What a forward pass costs
    grows with it, on any machine."""
    # The index's own passages (tokens, FirstP and all), as the engine reranks them.
    split = passage_splitter(
        collection,
        chunk_size=p.chunk_size,
        chunk_overlap=p.chunk_overlap,
        chunk_unit=p.chunk_unit,
        passage_score=p.passage_score,
        embeddings=p.embedder,
    )
    first_stage = result.runs[p.own_first_stage().name]
    pairs = [
        (collection.queries[q], text)
        for q in collection.queries
        for d in list(first_stage[q])[: p.k]
        for text in (split(d) if split else [collection.text(d)])
    ]
    return int(token_lengths(load_reranker(p.reranker, "cpu"), pairs, p.max_length).sum())


def rows(result: Any, grid: list[Pipeline], collection: str, tokens: dict[str, int]) -> list[dict[str, Any]]:
    """One row per pipeline: what it scores, what reranking changed, what it cost."""
    out = []
    truncated = result.meta.get("truncated_pairs", {})
    for p in grid:
        row = result.table.loc[p.name]
        entry: dict[str, Any] = {
            "collection": collection,
            "pipeline": p.name,
            "passages": p.chunk_size is not None,
            "max_length": p.max_length,
            "queries": result.meta["n_queries"],
            "ndcg@10": round(float(row["nDCG@10"]), 4),
            "ndcg@10_ci": [round(float(row["nDCG@10 mean_ci_low"]), 4), round(float(row["nDCG@10 mean_ci_high"]), 4)],
        }
        if not row["baseline"]:  # against the first pipeline: the dense retriever on whole documents
            entry.update(
                vs_whole=round(float(row["nDCG@10 delta"]), 4),
                vs_whole_ci=[round(float(row["nDCG@10 ci_low"]), 4), round(float(row["nDCG@10 ci_high"]), 4)],
                vs_whole_p_holm=float(row["nDCG@10 p_perm_holm"]),
            )
        if p.reranker:
            entry.update(
                first_stage=p.own_first_stage().name,
                gain=round(float(row["nDCG@10 own delta"]), 4),
                gain_ci=[round(float(row["nDCG@10 own ci_low"]), 4), round(float(row["nDCG@10 own ci_high"]), 4)],
                gain_p=float(row["nDCG@10 own p_perm"]),
                pairs_per_query=round(truncated[p.name]["pairs"] / result.meta["n_queries"], 1),
                truncated_share=round(truncated[p.name]["share"], 4),
                tokens_per_query=round(tokens[p.name] / result.meta["n_queries"]),
            )
        out.append(entry)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The stored results as a Markdown page: provenance, then one table."""
    columns = ["collection", "pipeline", "queries", "ndcg@10", "vs_whole", "vs_whole_ci", "vs_whole_p_holm", "gain",
               "gain_ci", "gain_p", "pairs_per_query", "truncated_share", "tokens_per_query"]  # fmt: skip
    import pandas as pd

    table = pd.DataFrame(report["rows"]).reindex(columns=columns)
    for column in ("gain_p", "vs_whole_p_holm"):
        table[column] = table[column].map(lambda v: f"{v:.2g}" if v == v else "")
    for column in ("gain_ci", "vs_whole_ci"):
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
        "`vs_whole` is the change against the dense retriever on whole documents (95% CI, Holm-corrected p); "
        "`gain` is each reranker's nDCG@10 change against its own first stage (95% CI by inverting the paired "
        "randomization test, `gain_p` its p-value); `pairs_per_query` what it scores per query; `truncated_share` "
        "the share of those pairs longer than the cross-encoder reads; `tokens_per_query` the tokens it reads per "
        "query (its cost, on any machine: a forward pass's work grows at least linearly with them). "
        + (
            f"Subsets of {p['docs']} documents with BM25 hard negatives: compare the pipelines with each other, "
            "not with full-split scores."
            if p["docs"]
            else "Query samples over the whole corpus: scores estimate the full splits', with the intervals shown."
        ),
        "",
        markdown_table(table),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--queries", type=int, default=50, help="queries per collection (0: all)")
    parser.add_argument("--docs", type=int, default=1000, help="subset documents (0: the whole corpus)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    start, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    grid = pipelines()
    results, table, totals = [], [], {}
    for name in args.dataset:
        collection = load_beir(name)
        if args.docs:
            collection = make_subset(collection, args.queries or len(collection.queries), n_docs=args.docs, seed=0)
        elif args.queries:
            collection = sample_queries(collection, args.queries, seed=0)
        result = experiment(collection, grid, measures=["nDCG@10", "R@100"], device=args.device, latency_queries=0)
        results.append(result)
        tokens = {p.name: tokens_read(result, collection, p) for p in grid if p.reranker}
        totals = {n: totals.get(n, 0) + t for n, t in tokens.items()}
        table += rows(result, grid, name, tokens)
        print(result.verdict(), "\n", flush=True)
    if len(results) > 1:
        table += rows(pool(results), grid, " + ".join(args.dataset), totals)
    meta = results[0].meta
    report = {
        "parameters": {
            "datasets": args.dataset,
            "queries": args.queries,
            "docs": args.docs,
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
    stem = "passages-cpu" if args.docs else "passages_full-cpu"  # the subsets' file stays the notebooks'
    (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
