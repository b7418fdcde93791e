"""Reproduce published full-split nDCG@10 figures.

- Dense: for every (embedder, collection) pair with a published value in the model catalogue
  (``ModelInfo.published_ndcg10``), the dense retriever on the full official test split.
- BM25: for every collection with a published BM25 value in the dataset manifest
  (``published_ndcg10``, from the BEIR paper), ragkit's BM25 first stage (``ragkit.bm25``:
  bm25s's Lucene variant, k1=1.5, b=0.75, English stopwords and Snowball stemming, over
  title + text as one field; the paper's Elasticsearch BM25 searches title and body as two
  fields, so the values differ by the variant).
- BM25 reranked: for every collection with a published ``bm25_reranked`` value (the BEIR
  paper's BM25 top 100 reranked by cross-encoder/ms-marco-MiniLM-L-6-v2), ragkit's BM25 top 100
  reranked by the provisioned ``settings.DEFAULT_RERANKER`` (ms-marco-MiniLM-L-12-v2: the
  nearest model ragkit can run offline, so the published value is a reference, not a target),
  with the gain over BM25 alone, its 95% CI and p-value, and every query's nDCG@10 (which
  ``tests/test_reproduction.py`` re-scores on a sample of queries). ``--reranker-dtype
  bfloat16`` runs it in about 50 min on 2 CPU cores with bf16 support, float32 in about 2 h.

Each measured value is written with the published one and the provenance (device, model
revision, versions, date) to ``benchmarks/results/reproduction.json``. Notebook 04 shows that
file; ``tests/test_reproduction.py`` recomputes the values (the dense ones with
``make test-slow``).

    python benchmarks/reproduce.py                       # everything (about 30 min on 2 CPU cores)
    python benchmarks/reproduce.py --only scifact:sentence-transformers/all-MiniLM-L6-v2
    python benchmarks/reproduce.py --only scifact:bm25 nfcorpus:bm25   # seconds
    python benchmarks/reproduce.py --only scifact:bm25-reranked nfcorpus:bm25-reranked \
        --reranker-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ragkit import CATALOGUE, Pipeline, experiment, load_beir
from ragkit.data import manifest
from ragkit.settings import DEFAULT_RERANKER

RESULTS = Path(__file__).resolve().parent / "results" / "reproduction.json"


def published_pairs() -> list[tuple[str, str, float]]:
    """(collection, first stage, published nDCG@10): every catalogue embedder with a published
    value, then BM25 on every collection the manifest gives a published BM25 value for."""
    dense = [(dataset, m.hub_id, value) for m in CATALOGUE.values() for dataset, value in m.published_ndcg10.items()]
    bm25 = [
        (name, "bm25", info["published_ndcg10"]["bm25"])
        for name, info in manifest()["collections"].items()
        if "bm25" in info.get("published_ndcg10", {})
    ]
    reranked = [
        (name, "bm25-reranked", info["published_ndcg10"]["bm25_reranked"])
        for name, info in manifest()["collections"].items()
        if "bm25_reranked" in info.get("published_ndcg10", {})
    ]
    return dense + bm25 + reranked


def reranked_pipeline(dtype: str = "float32") -> Pipeline:
    """BM25's top 100, every one reranked (the BEIR paper's protocol) by the default reranker."""
    return Pipeline("bm25", reranker=DEFAULT_RERANKER, k=100, reranker_dtype=dtype)


def reproduce_reranked(dataset: str, device: str = "auto", dtype: str = "float32") -> dict:
    """nDCG@10 of BM25 top 100 reranked, on the full test split, against BM25 alone."""
    start = time.perf_counter()
    pipeline = reranked_pipeline(dtype)
    result = experiment(
        load_beir(dataset),
        [Pipeline("bm25"), pipeline],
        measures=["nDCG@10"],
        device=device,
        latency_queries=0,
        n_resamples=10_000,
    )
    meta, row = result.meta, result.table.loc[pipeline.name]
    per_query = result.per_query_table("nDCG@10")[pipeline.name]
    return {
        "collection": dataset,
        "embedder": "bm25-reranked",
        "pipeline": pipeline.name,
        "reranker": DEFAULT_RERANKER,
        "reranker_dtype": dtype,
        "ndcg@10": round(float(row["nDCG@10"]), 4),
        "bm25_ndcg@10": round(float(result.table.loc["bm25", "nDCG@10"]), 4),
        "delta": round(float(row["nDCG@10 delta"]), 4),
        "delta_ci": [round(float(row["nDCG@10 ci_low"]), 4), round(float(row["nDCG@10 ci_high"]), 4)],
        "p": float(row["nDCG@10 p_perm"]),
        "queries": meta["n_queries"],
        "docs": meta["n_docs"],
        "pairs": sum(min(len(hits), 100) for hits in result.runs["bm25"].values()),
        "revision": meta["model_revisions"][DEFAULT_RERANKER],
        "device": f"{meta['device']} ({meta['device_name']})",
        "versions": meta["versions"],
        "date": meta["date"],
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "per_query_ndcg@10": {str(q): round(float(v), 6) for q, v in per_query.items()},
    }


def reproduce(dataset: str, embedder: str, device: str = "auto") -> dict:
    """nDCG@10 of the dense retriever (or, for ``embedder="bm25"``, of BM25) on the full test
    split, with the run's provenance."""
    start = time.perf_counter()
    pipeline = Pipeline("bm25") if embedder == "bm25" else Pipeline(embedder=embedder)
    result = experiment(
        load_beir(dataset),
        [pipeline],
        measures=["nDCG@10"],
        device=device,
        latency_queries=0,
        n_resamples=1000,
    )
    meta = result.meta
    return {
        "collection": dataset,
        "embedder": embedder,
        "ndcg@10": round(float(result.table["nDCG@10"].iloc[0]), 4),
        "queries": meta["n_queries"],
        "docs": meta["n_docs"],
        "revision": meta["model_revisions"].get(embedder, "ragkit.bm25 (bm25s lucene, k1=1.5, b=0.75)"),
        "device": f"{meta['device']} ({meta['device_name']})",
        "versions": meta["versions"],
        "date": meta["date"],
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, metavar="COLLECTION:EMBEDDER")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reranker-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for dataset, embedder, published in published_pairs():
        if args.only is not None and f"{dataset}:{embedder}" not in args.only:
            continue
        if embedder == "bm25-reranked":
            row = {**reproduce_reranked(dataset, args.device, args.reranker_dtype), "published": published}
        else:
            row = {**reproduce(dataset, embedder, args.device), "published": published}
        rows = [r for r in rows if (r["collection"], r["embedder"]) != (dataset, embedder)] + [row]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")  # after each pair: nothing lost if stopped
        print(
            f"{dataset:10} {embedder:42} nDCG@10 {row['ndcg@10']:.4f} (published {published:.3f}) "
            f"in {row['minutes']} min"
        )
    print(f"\n{'collection':10} {'embedder':42} {'ours':>7} {'published':>9}")
    for r in rows:
        print(f"{r['collection']:10} {r['embedder']:42} {r['ndcg@10']:7.4f} {r['published']:9.3f}")


if __name__ == "__main__":
    main()
