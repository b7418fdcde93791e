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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("smoke", help="load the default embedder and reranker and rank a few passages")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    p.add_argument("--reranker", default=DEFAULT_RERANKER)
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu, cuda, cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ragkit`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "smoke":
            return smoke(args.embedder, args.reranker, args.device)
    except RagkitError as exc:
        print(f"ragkit: error: {exc}", file=sys.stderr)
        return 2
    return 1
