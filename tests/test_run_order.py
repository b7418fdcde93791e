"""Every run ragkit scores is read in the order ragkit decided, by every scorer.

pytrec_eval (nDCG, recall) reads scores as 32-bit floats; the MS MARCO evaluator (RR) reads them
at full precision; a TREC file is re-read by whatever tool a reader has. Runs with tied or nearly
tied scores (fused ranks, duplicate texts, saturated logits) are where these could disagree.
"""

from __future__ import annotations

import math

import ir_measures
import numpy as np
import pytest
import pytrec_eval

from ragkit.bm25 import BM25Index
from ragkit.errors import DataError
from ragkit.evaluate import reranked_run
from ragkit.fusion import reciprocal_rank_fusion
from ragkit.measures import order_problem, parse_measures, per_query_scores, ranked_run
from ragkit.results import trec_run


def _hybrid_ranking() -> list[tuple[str, float]]:
    # Two rankings that place documents at mirrored ranks: every pair fuses to the same score.
    dense = [f"d{i:02d}" for i in range(12)]
    bm25 = [f"d{i:02d}" for i in [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]]
    return reciprocal_rank_fusion([dense, bm25], weights=[0.5, 0.5])


def _bm25_duplicates_ranking() -> list[tuple[str, float]]:
    # The same text under several ids (NFCorpus has such duplicates): exactly equal BM25 scores.
    texts = ["vector store retrieval"] * 4 + ["vector store"] * 3 + ["retrieval of a cell protein"] * 4
    ids = [f"z{i:02d}" for i in range(len(texts))][::-1]  # best documents get the larger ids
    return BM25Index.from_texts(ids, texts).search(["vector store retrieval"], 10)[0]


def _saturated_ranking() -> list[tuple[str, float]]:
    # Logits of strong matches, several equal and some a relative 1e-9 apart.
    logits = [("a", 18.25), ("b", 18.25), ("c", 18.25 * (1 - 1e-9)), ("d", 9.0), ("e", 9.0 + 1e-12), ("f", 3.0)]
    return sorted(logits, key=lambda x: -x[1]) + [("g", -1.0), ("h", -1.0), ("i", -1.0), ("j", -2.0)]


def _near_zero_ranking() -> list[tuple[str, float]]:
    # Ties at 0 and at the smallest floats, where a step down could land on a subnormal.
    return [("a", 1e-40), ("b", 0.0), ("c", 0.0), ("d", -1e-45), ("e", -1e-45), ("f", -1.0)]


RANKINGS = {
    "hybrid": _hybrid_ranking,
    "bm25 duplicates": _bm25_duplicates_ranking,
    "saturated logits": _saturated_ranking,
    "near zero": _near_zero_ranking,
}


def _independent_ndcg10(run: dict[str, float], relevant: str) -> float:
    """nDCG@10 of one relevant document, ranking by the scores as written (float64)."""
    order = [d for d, _ in sorted(run.items(), key=lambda x: -x[1])]
    rank = order.index(relevant) + 1
    return 1 / math.log2(rank + 1) if rank <= 10 else 0.0


@pytest.mark.parametrize("name", RANKINGS)
def test_every_scorer_reads_the_decided_ranking(name):
    ranking = RANKINGS[name]()
    decided = [d for d, _ in ranking]
    scores = [s for _, s in ranking]
    assert len(set(np.float32(scores))) < len(scores), "the example must hold float32 ties to be a test"
    run = ranked_run(ranking)
    assert list(run) == decided and order_problem({"q": run}) is None
    for rank, relevant in enumerate(decided[:10], start=1):
        qrels = {"q": {relevant: 1}}
        expected_ndcg = 1 / math.log2(rank + 1)
        pytrec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"}).evaluate({"q": run})["q"]
        assert pytrec["ndcg_cut_10"] == pytest.approx(expected_ndcg, abs=1e-12), (name, relevant)
        assert pytrec["recip_rank"] == pytest.approx(1 / rank, abs=1e-12), (name, relevant)
        msmarco = ir_measures.msmarco.calc_aggregate([ir_measures.RR @ 10], qrels, {"q": run})
        assert msmarco[ir_measures.RR @ 10] == pytest.approx(1 / rank, abs=1e-12), (name, relevant)
        assert _independent_ndcg10(run, relevant) == pytest.approx(expected_ndcg, abs=1e-12)
        ours = per_query_scores(qrels, {"q": run}, parse_measures(["nDCG@10", "RR@10"]))
        assert ours["value"].tolist() == pytest.approx([expected_ndcg, 1 / rank], abs=1e-12)


@pytest.mark.parametrize("name", RANKINGS)
def test_a_trec_file_reads_back_in_the_decided_order_at_either_precision(name):
    run = ranked_run(RANKINGS[name]())
    rows = [line.split() for line in trec_run({"q": run}, "t").splitlines()]
    assert [r[2] for r in rows] == list(run) and [int(r[3]) for r in rows] == list(range(1, len(run) + 1))
    for dtype in (np.float64, np.float32):
        written = np.array([float(r[4]) for r in rows], dtype=dtype)
        assert np.all(np.diff(written) < 0), dtype
        # Scores are written as float32 values' shortest text: read back at either precision,
        # each rounds to the 32-bit float ragkit decided.
        assert np.array_equal(written.astype(np.float32), np.array(list(run.values()), dtype=np.float32))


def test_a_reranked_run_is_its_logits_order_then_the_first_stage_order():
    logits = [("a", 18.25), ("b", 18.25 * (1 + 1e-9)), ("c", 18.25), ("d", 3.0)]
    run = reranked_run(logits, [("e", 0.9), ("a", 0.8), ("f", 0.7)])
    assert list(run) == ["b", "a", "c", "d", "e", "f"] and order_problem({"q": run}) is None


def test_scores_stay_within_a_few_float32_steps_of_the_input():
    ranking = _saturated_ranking()
    run = ranked_run(ranking)
    for (_, given), kept in zip(ranking, run.values()):
        assert abs(kept - given) <= 8 * abs(np.spacing(np.float32(given)))


def test_a_run_that_float32_would_reorder_is_refused():
    tied = {"q": {"a": 0.5, "b": 0.5 * (1 - 1e-9), "c": 0.1}}
    with pytest.raises(DataError, match=r"query 'q': documents 'a' and 'b'.*32-bit floats.*ranked_run"):
        per_query_scores({"q": {"b": 1}}, tied, parse_measures(["nDCG@10"]))
    with pytest.raises(DataError, match="not a finite number"):
        per_query_scores({"q": {"b": 1}}, {"q": {"a": math.nan}}, parse_measures(["nDCG@10"]))
