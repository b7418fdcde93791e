"""Published full-split numbers, recomputed (``make test-slow``; minutes of CPU each).

Each test runs the dense retriever on a full official BEIR test split and checks nDCG@10
against the published value in the catalogue, and against what ``benchmarks/reproduce.py``
committed to ``benchmarks/results/reproduction.json`` (which notebook 04 shows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragkit import CATALOGUE, Pipeline, experiment, load_beir

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reproduction.json"
CASES = [(d, m.hub_id, v) for m in CATALOGUE.values() for d, v in m.published_ndcg10.items()]


def _committed(dataset: str, embedder: str) -> float:
    rows = json.loads(RESULTS.read_text())
    return next(r["ndcg@10"] for r in rows if (r["collection"], r["embedder"]) == (dataset, embedder))


def test_every_published_figure_has_a_committed_reproduction_within_tolerance():
    for dataset, embedder, published in CASES:
        assert abs(_committed(dataset, embedder) - published) <= 0.005, (dataset, embedder)


@pytest.mark.slow
@pytest.mark.real_models
@pytest.mark.parametrize("dataset, embedder, published", CASES, ids=[f"{d}-{e.split('/')[-1]}" for d, e, _ in CASES])
def test_dense_retrieval_reproduces_the_published_ndcg10(dataset, embedder, published):
    result = experiment(load_beir(dataset), [Pipeline(embedder=embedder)], measures=["nDCG@10"], latency_queries=0,
                        n_resamples=100, show_progress=False)
    ours = float(result.table["nDCG@10"].iloc[0])
    assert result.meta["n_queries"] == {"scifact": 300, "nfcorpus": 323}[dataset]
    assert abs(ours - published) <= 0.005
    assert ours == pytest.approx(_committed(dataset, embedder), abs=1e-4)
