"""The ``ragkit`` command line: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ragkit.errors import RagkitError
from ragkit.settings import DEFAULT_DEVICE, DEFAULT_EMBEDDER, DEFAULT_RERANKER

SMOKE_QUERY = "How does a cross-encoder rerank retrieved passages?"
SMOKE_PASSAGES = [
    "Bananas are rich in potassium and are often eaten as a quick snack.",
    "A cross-encoder reads the query and a passage together and outputs one relevance score, "
    "which is used to reorder the candidates a first-stage retriever returned.",
    "Chroma is an open-source vector database that stores embeddings and searches them by similarity.",
    "Reranking passages with a cross-encoder is slower than vector search, so it is applied only to the top hits.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
]


def smoke(embedder: str, reranker: str, device: str) -> int:
    """Load both models through the cached loaders and rank a few passages, printing scores."""
    import numpy as np

    from ragkit.loaders import HuggingFaceEmbeddingsLoader, HuggingFaceRerankerLoader
    from ragkit.models import model_revision

    emb = HuggingFaceEmbeddingsLoader(embedder, model_kwargs={"device": device})
    ce = HuggingFaceRerankerLoader(reranker, model_kwargs={"device": device})
    query_vec = np.asarray(emb.embed_query(SMOKE_QUERY))
    doc_vecs = np.asarray(emb.embed_documents(SMOKE_PASSAGES))
    cosine = doc_vecs @ query_vec / (np.linalg.norm(doc_vecs, axis=1) * np.linalg.norm(query_vec))
    scores = np.asarray(list(ce.score([(SMOKE_QUERY, p) for p in SMOKE_PASSAGES])), dtype=float)

    print(f"embedder: {embedder} (revision {model_revision(embedder)})")
    print(f"reranker: {reranker} (revision {model_revision(reranker)})")
    print(f"query:    {SMOKE_QUERY}\n")
    print(f"{'rank':>4}  {'cross-enc':>9}  {'cosine':>6}  passage")
    for rank, i in enumerate(np.argsort(-scores), start=1):
        print(f"{rank:>4}  {scores[i]:>9.4f}  {cosine[i]:>6.3f}  {SMOKE_PASSAGES[i][:70]}")
    return 0


def _check_model(name: str, kind: str) -> str:
    from pathlib import Path

    from ragkit.models import get_model

    if not Path(name).is_dir():
        get_model(name, kind)  # raises with the list of known models
    return name


def evaluate(args: argparse.Namespace) -> int:
    """Run the grid the options describe on one collection, print the table, write the report."""
    from ragkit.data import load_beir, make_subset
    from ragkit.evaluate import experiment, grid
    from ragkit.loaders import resolve_device
    from ragkit.report import check_writable, format_table

    embedders = [_check_model(e, "embedder") for e in args.embedders]
    rerankers = [None if r.lower() == "none" else _check_model(r, "cross-encoder") for r in args.rerankers]
    device = resolve_device(args.device)
    output = check_writable(args.output)  # fail now, not after minutes of scoring
    collection = load_beir(args.dataset, split=args.split)
    if args.subset:
        collection = make_subset(collection, args.subset, seed=args.seed)
    print(collection.summary())
    pipelines = grid(embedders, rerankers, args.k, args.top_n or [None], bm25=args.bm25,
                     reranker_dtypes=args.reranker_dtypes)
    result = experiment(collection, pipelines, measures=args.measures, device=device, batch_size=args.batch_size,
                        latency_queries=args.latency_queries, use_cache=not args.no_cache)
    result.save(output)
    print()
    print(format_table(result))
    print(f"\nReport written to {output}/ (summary.md, results.csv, results.json, per_query.csv, runs/, plots)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ragkit.settings import (
        DEFAULT_MEASURES,
        DEFAULT_RERANK_K,
        DEFAULT_SUBSET_QUERIES,
        LATENCY_QUERIES,
        RERANK_BATCH_SIZE,
        RERANK_DTYPES,
    )

    parser = argparse.ArgumentParser(prog="ragkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="compare retrievers with and without reranking on a BEIR collection",
                       description="Compare retrieval pipelines (first stage x reranker x k x top_n) on a BEIR "
                                   "collection: prints the results table and writes a report folder.")
    e.add_argument("--dataset", default="scifact", help="BEIR name (scifact, nfcorpus, ...), 'demo', or a folder")
    e.add_argument("--split", default="test")
    e.add_argument("--subset", type=int, default=DEFAULT_SUBSET_QUERIES,
                   help=f"sample this many queries into a ragkit subset (default {DEFAULT_SUBSET_QUERIES}; 0 = full split)")
    e.add_argument("--seed", type=int, default=0, help="subset sampling seed")
    e.add_argument("--embedders", nargs="+", default=[DEFAULT_EMBEDDER], metavar="MODEL")
    e.add_argument("--rerankers", nargs="+", default=["none", DEFAULT_RERANKER], metavar="MODEL",
                   help="cross-encoders; 'none' adds the first stage alone (default: none and %(default)s)")
    e.add_argument("--bm25", action="store_true", help="add BM25 as a first stage too")
    e.add_argument("--k", nargs="+", type=int, default=[DEFAULT_RERANK_K], help="candidates the reranker sees")
    e.add_argument("--top-n", nargs="+", type=int, default=None, help="reranked documents kept (default: k)")
    e.add_argument("--reranker-dtypes", nargs="+", default=["float32"], choices=RERANK_DTYPES, metavar="DTYPE",
                   help="cross-encoder weight precision(s), each a pipeline: float32 (default), bfloat16 (faster on "
                        "GPUs and on CPUs with bf16 support, slower on others), float16 (GPUs)")
    e.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES), help="ir-measures names")
    e.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu, cuda, cuda:N")
    e.add_argument("--batch-size", type=int, default=None,
                   help="cross-encoder batch size (default: " + ", ".join(
                       f"{n} on {kind.upper()}" for kind, n in RERANK_BATCH_SIZE.items()) + ")")
    e.add_argument("--latency-queries", type=int, default=LATENCY_QUERIES,
                   help="queries timed one at a time, per pipeline (default %(default)s)")
    e.add_argument("--no-cache", action="store_true",
                   help="recompute first-stage runs and pair scores and re-measure latency instead of reusing "
                        "what an earlier run cached (the Chroma index is reused all the same)")
    e.add_argument("--output", default="results/eval", help="report folder (default: %(default)s)")
    p = sub.add_parser("smoke", help="load the default embedder and reranker and rank a few passages")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    p.add_argument("--reranker", default=DEFAULT_RERANKER)
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu, cuda, cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ragkit`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # ragkit's own INFO lines (loading, cache hits) only: at INFO, sentence-transformers would
    # also draw a progress bar for every tiny encode call.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ragkit").setLevel(logging.INFO)
    try:
        if args.command == "smoke":
            return smoke(args.embedder, args.reranker, args.device)
        if args.command == "eval":
            return evaluate(args)
    except RagkitError as exc:
        print(f"ragkit: error: {exc}", file=sys.stderr)
        return 2
    return 1
