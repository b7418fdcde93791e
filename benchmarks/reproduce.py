"""Reproduce published full-split nDCG@10 figures.

- Dense: for every (embedder, collection) pair with a published value in the model catalogue
  (``ModelInfo.published_ndcg10``), the dense retriever on the full official test split.
- BM25: for every collection with a published BM25 value in the dataset manifest
  (``published_ndcg10``, from the BEIR paper), ragkit's BM25 first stage (``ragkit.bm25``:
  bm25s's Lucene variant, k1=1.5, b=0.75, English stopwords and Snowball stemming, over
  title + text as one field; the paper's Elasticsearch BM25 searches title and body as two
  fields, so the values differ by the variant).

Each measured value is written with the published one and the provenance (device, model
revision, versions, date) to ``benchmarks/results/reproduction.json``. Notebook 04 shows that
file; ``tests/test_reproduction.py`` recomputes the values (the dense ones with
``make test-slow``).

    python benchmarks/reproduce.py                       # everything (about 30 min on 2 CPU cores)
    python benchmarks/reproduce.py --only scifact:sentence-transformers/all-MiniLM-L6-v2
    python benchmarks/reproduce.py --only scifact:bm25 nfcorpus:bm25   # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ragkit import CATALOGUE, Pipeline, experiment, load_beir
from ragkit.data import manifest

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
    return dense + bm25


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
    args = parser.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for dataset, embedder, published in published_pairs():
        if args.only is not None and f"{dataset}:{embedder}" not in args.only:
            continue
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
