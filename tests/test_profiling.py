"""The cost-measuring tools (``ragkit.profiling``) on tiny models and the demo corpus: the four
scoring paths agree with each other and with the evaluation engine, counts and tables hold what
they say. No timing is asserted: only the bookkeeping around the clock."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ragkit import Pipeline, experiment
from ragkit.errors import RagkitError
from ragkit.profiling import (
    PATHS,
    Candidates,
    candidate_pairs,
    compare_paths,
    loader_timings,
    max_length_effect,
    ndcg_at_10,
    padding_cost,
    path_targets,
    reranking_paths,
    score_agreement,
    throughput,
    time_calls,
)
from ragkit.provenance import environment
from ragkit.rerank import load_reranker, score_pairs


@pytest.fixture()
def sample(demo, tiny_embedder_path, cache) -> Candidates:
    return candidate_pairs(demo, n_queries=4, k=6, embedder=tiny_embedder_path, device="cpu")


@pytest.fixture()
def model(spread_cross_encoder_path):
    return load_reranker(spread_cross_encoder_path, "cpu")


def hand_made(passages: list[list[str]], qrels: dict[str, dict[str, int]] | None = None) -> Candidates:
    ids = [f"q{i}" for i in range(len(passages))]
    doc_ids = [[f"d{i}-{j}" for j in range(len(ps))] for i, ps in enumerate(passages)]
    return Candidates(
        collection="hand",
        query_ids=ids,
        queries=["paris"] * len(ids),
        doc_ids=doc_ids,
        passages=passages,
        qrels=qrels or {q: {} for q in ids},
        embedder="none",
        k=max(len(p) for p in passages),
    )


def test_candidate_pairs_are_each_querys_first_stage_hits(demo, sample, tiny_embedder_path):
    assert sample.n_queries == 4 and sample.n_pairs == 24 and sample.k == 6
    assert sample.query_ids == sorted(sample.query_ids)
    for q, query, ids, passages in zip(sample.query_ids, sample.queries, sample.doc_ids, sample.passages):
        assert query == demo.queries[q] and len(set(ids)) == 6
        assert passages == [demo.text(d) for d in ids]
        assert sample.qrels[q] == demo.qrels[q]
    again = candidate_pairs(demo, n_queries=4, k=6, embedder=tiny_embedder_path, device="cpu")
    assert again.doc_ids == sample.doc_ids  # same seed, same sample
    other = candidate_pairs(demo, n_queries=4, k=6, embedder=tiny_embedder_path, device="cpu", seed=1)
    assert other.query_ids != sample.query_ids
    head = sample.head(2, 3)
    assert (
        head.n_pairs == 6
        and head.doc_ids == [d[:3] for d in sample.doc_ids[:2]]
        and set(head.qrels) == set(head.query_ids)
    )
    flat = np.arange(sample.n_pairs)
    assert [list(x) for x in sample.split(flat)] == [list(range(i * 6, i * 6 + 6)) for i in range(4)]
    with pytest.raises(RagkitError, match="n_queries"):
        candidate_pairs(demo, n_queries=0, embedder=tiny_embedder_path)


def test_the_four_paths_give_the_same_scores(model, sample):
    paths = reranking_paths(model, sample, batch_size=4)
    assert list(paths) == list(PATHS)
    scores = {name: fn() for name, fn in paths.items()}
    for name, got in scores.items():
        assert [len(s) for s in got] == [6] * 4, name
        agreement = score_agreement(got, scores["sentence_transformers"])
        assert agreement["max_abs_diff"] < 1e-5 and agreement["same_order"], (name, agreement)
    assert len({round(float(s), 6) for s in np.concatenate(scores["pooled"])}) > 12  # scores spread, not ties
    # Another batch size and length change the batches, not the scores (up to the cut itself).
    assert (
        score_agreement(reranking_paths(model, sample, batch_size=64)["pooled"](), scores["pooled"])["max_abs_diff"]
        < 1e-5
    )


def test_pooled_path_is_what_the_evaluation_engine_computes(
    demo, sample, model, spread_cross_encoder_path, tiny_embedder_path
):
    pipeline = Pipeline(embedder=tiny_embedder_path, reranker=spread_cross_encoder_path, k=6)
    run = experiment(
        demo, [pipeline], device="cpu", latency_queries=0, show_progress=False, n_resamples=100, use_cache=False
    ).runs[pipeline.name]
    pooled = reranking_paths(model, sample)["pooled"]()
    for q, ids, scores in zip(sample.query_ids, sample.doc_ids, pooled):
        # The engine ranks on logits and keeps the first stage's tail below the reranked top k;
        # the pooled path reports the sigmoid of the same logits.
        head = list(run[q].items())[: pipeline.k]
        assert {d: 1 / (1 + math.exp(-logit)) for d, logit in head} == pytest.approx(
            dict(zip(ids, scores.tolist())), abs=1e-6
        )


def test_compare_paths_table_and_targets(model, sample):
    table = compare_paths(model, sample, batch_size=4, repeats=2)
    assert list(table["path"]) == list(PATHS)
    for column in (
        "label",
        "batch_size",
        "max_length",
        "pairs",
        "queries",
        "repeats",
        "median_s",
        "pairs_per_s",
        "ms_per_query",
        "speed_vs_b",
        "max_abs_diff",
        "same_order",
    ):
        assert column in table, column
    assert (table["pairs"] == 24).all() and (table["repeats"] == 2).all() and (table["max_length"] == 128).all()
    assert table["pairs_per_s"].to_numpy() == pytest.approx(24 / table["median_s"].to_numpy())
    assert table["ms_per_query"].to_numpy() == pytest.approx(1000 * table["median_s"].to_numpy() / 4)
    b = table.set_index("path").loc["sentence_transformers"]
    assert b["speed_vs_b"] == pytest.approx(1.0) and b["max_abs_diff"] == 0.0
    assert (table["max_abs_diff"] < 1e-5).all() and table["same_order"].all()

    targets = path_targets(table, "cpu").set_index("target")
    rate = table.set_index("path")["pairs_per_s"]
    assert targets.loc["(d) vs (a)", "ratio"] == pytest.approx(rate["pooled"] / rate["langchain"])
    assert targets.loc["(d) vs (a)", "at_least"] == 1.1 and targets.loc["(a) vs (c)", "at_least"] == 1.5
    assert targets["met"].tolist() == (targets["ratio"] >= targets["at_least"]).tolist()
    with pytest.raises(RagkitError, match="Unknown path"):
        compare_paths(model, sample, paths=["gpu-magic"])


def test_time_calls_takes_turns_warms_up_and_keeps_the_last_result():
    calls: list[str] = []

    def make(name: str):
        def fn():
            calls.append(name)
            return len(calls)

        return fn

    timings = time_calls({"a": make("a"), "b": make("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert timings["a"].result == 7 and timings["b"].result == 8
    assert len(timings["a"].seconds) == 3 and timings["a"].median_s == sorted(timings["a"].seconds)[1]
    row = throughput(lambda: "scores", hand_made([["a", "a a"], ["a"]]), repeats=2, warmup=False)
    assert row["result"] == "scores" and row["pairs"] == 3 and row["queries"] == 2 and row["repeats"] == 2
    assert row["min_s"] <= row["median_s"] <= row["max_s"]
    with pytest.raises(RagkitError, match="repeats"):
        time_calls({"a": make("a")}, repeats=0)


def test_padding_cost_counts_the_tokens_each_plan_processes(model):
    # "[CLS] paris [SEP] a ... [SEP]": n words of "a" make n + 4 tokens with the tiny tokenizer.
    sample = hand_made([["a", "a a a a", "a a"], ["a a a", "a"]])
    table = padding_cost(model, sample, [1, 2]).set_index(["plan", "batch_size"], drop=False)
    assert (table["real_tokens"] == 5 + 8 + 6 + 7 + 5).all()
    assert table.loc[("(c) one batch per query", None), "processed_tokens"].item() == 3 * 8 + 2 * 7
    assert table.loc[("(a) per query, longest first", 1), "processed_tokens"].item() == 31
    assert table.loc[("(a) per query, longest first", 2), "processed_tokens"].item() == (8 + 8 + 5) + (7 + 7)
    assert table.loc[("(d) pooled, longest first", 2), "processed_tokens"].item() == (8 + 8) + (6 + 6) + 5
    assert table.loc[("(d) pooled, longest first", 1), "padding_share"].item() == 0.0
    assert table["padding_share"].between(0, 1).all()


def test_ndcg_at_10_ranks_candidates_by_the_scores_given():
    sample = hand_made([["x", "y", "z"], ["x", "y"]], qrels={"q0": {"d0-2": 1}, "q1": {"d1-0": 1}})
    best = ndcg_at_10(sample, [np.array([0.1, 0.2, 0.9]), np.array([0.9, 0.1])])
    worst = ndcg_at_10(sample, [np.array([0.9, 0.2, 0.1]), np.array([0.1, 0.9])])
    assert best == pytest.approx(1.0)
    assert worst == pytest.approx(np.mean([1 / np.log2(4), 1 / np.log2(3)]))


def test_max_length_effect_reports_speed_truncation_and_quality(model):
    # Pairs of 5, 8, 6 and 7, 5 tokens (n words of "a" make n + 4): a cut at 6 truncates two.
    sample = hand_made([["a", "a a a a", "a a"], ["a a a", "a"]], qrels={"q0": {"d0-1": 1}, "q1": {"d1-1": 1}})
    table = max_length_effect(model, sample.head(1), sample, [6, 128], batch_size=2, repeats=1)
    assert table["max_length"].tolist() == [6, 128]
    assert table["truncated_share"].tolist() == [2 / 5, 0.0]
    assert table.loc[1, "ndcg@10_delta"] == 0.0
    assert table.loc[0, "ndcg@10_delta"] == pytest.approx(table.loc[0, "ndcg@10"] - table.loc[1, "ndcg@10"])
    full = sample.split(score_pairs(model, sample.flat_pairs()))
    assert table.loc[1, "ndcg@10"] == pytest.approx(ndcg_at_10(sample, full))
    assert table.loc[0, "first_stage_ndcg@10"] == pytest.approx(np.mean([1 / np.log2(3), 1 / np.log2(3)]))
    assert (table["pairs"] == 3).all()


def test_half_precision_model_loads_and_leaves_out_the_fp32_only_path(spread_cross_encoder_path, sample):
    import torch

    half = load_reranker(spread_cross_encoder_path, "cpu", dtype="bfloat16")
    assert half.client.model.dtype == torch.bfloat16
    assert half is not load_reranker(spread_cross_encoder_path, "cpu")
    paths = reranking_paths(half, sample.head(2))
    assert "naive_transformers" not in paths
    reference = reranking_paths(load_reranker(spread_cross_encoder_path, "cpu"), sample.head(2))["pooled"]()
    assert score_agreement(paths["pooled"](), reference)["max_abs_diff"] < 0.05  # bf16 keeps ~3 digits
    with pytest.raises(RagkitError, match="dtype"):
        load_reranker(spread_cross_encoder_path, "cpu", dtype="int4")


def test_loader_timings_and_environment_have_their_fields(spread_cross_encoder_path):
    row = loader_timings(spread_cross_encoder_path, reloads=1, hits=20)
    assert row["loader"] == "HuggingFaceRerankerLoader" and row["hits"] == 20 and row["device"] == "cpu"
    assert row["first_load_s"] > 0 and row["reload_s_median"] > 0 and 0 < row["hit_us_median"] <= row["hit_us_p99"]
    with pytest.raises(RagkitError, match="kind"):
        loader_timings(spread_cross_encoder_path, kind="tokenizer")

    env = environment("cpu", models=[spread_cross_encoder_path])
    assert (
        env["device"] == "cpu"
        and "cores" in env["machine"]
        and env["model_revisions"] == {spread_cross_encoder_path: "local"}
    )
    for package in ("torch", "transformers", "sentence-transformers", "langchain-core", "python", "ragkit"):
        assert package in env["versions"], package
    assert pd.Timestamp(env["date"]).tzinfo is not None
