"""The evaluation engine on tiny models and the demo corpus: runs, caches, tables, reports, CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import ragkit.retrievers as retrievers
from ragkit import load_beir
from ragkit.cli import main
from ragkit.errors import RagkitError
from ragkit.evaluate import Pipeline, experiment, grid
from ragkit.report import markdown_summary, write_report
from ragkit.results import slug
from ragkit.stages import StageContext


@pytest.fixture()
def pipelines(tiny_embedder_path, tiny_cross_encoder_path) -> list[Pipeline]:
    return [
        Pipeline(embedder=tiny_embedder_path),
        Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=10),
        Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=10, top_n=3),
        Pipeline("bm25", reranker=tiny_cross_encoder_path, k=8),
    ]


def test_batched_engine_gives_the_same_runs_as_the_langchain_retrievers(demo, pipelines, cache):
    fast = experiment(demo, pipelines, latency_queries=0, show_progress=False, n_resamples=200)
    slow = experiment(demo, pipelines, latency_queries=0, show_progress=False, n_resamples=200, engine="langchain")
    for p in pipelines:
        for q in demo.queries:
            assert list(fast.runs[p.name][q]) == list(slow.runs[p.name][q]), (p.name, q)
            for doc, score in fast.runs[p.name][q].items():
                assert score == pytest.approx(slow.runs[p.name][q][doc], abs=1e-5)
    pd.testing.assert_frame_equal(fast.table, slow.table)


def test_runs_hold_k_or_top_n_documents_in_descending_order(demo, pipelines, cache):
    truncated = replace(pipelines[2], truncate=True)
    assert truncated.name.endswith("(k=10, top_n=3, truncated)")
    result = experiment(demo, [*pipelines, truncated], latency_queries=0, show_progress=False, n_resamples=200)
    sizes = {p.name: {len(result.runs[p.name][q]) for q in demo.queries} for p in [*pipelines, truncated]}
    assert sizes[pipelines[0].name] == {40}  # all 40 demo docs: fewer than the depth of 100
    # A reranked run is its reranked top k, then the first stage's other candidates in their
    # order, down to the same depth, so R@100 compares like with like.
    assert sizes[pipelines[1].name] == sizes[pipelines[2].name] == {40}
    assert sizes[truncated.name] == {3}  # LangChain's top_n-only output, when asked for
    first_stage = result.runs[pipelines[0].name]
    for p in [*pipelines, truncated]:
        for q in demo.queries:
            scores = list(result.runs[p.name][q].values())
            assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)  # no ties
    for q in demo.queries:
        reranked = list(result.runs[pipelines[1].name][q])
        assert set(reranked[:10]) == set(list(first_stage[q])[:10])
        assert reranked[10:] == list(first_stage[q])[10:]
        # top_n only decides what the LangChain retriever returns; a truncated run keeps its head.
        assert list(result.runs[pipelines[2].name][q]) == reranked
        assert list(result.runs[truncated.name][q]) == reranked[:3]


def test_pair_scores_are_cached_across_top_n_and_reruns(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache, scored_pairs
):
    first = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=10)]
    experiment(demo, first, latency_queries=0, show_progress=False, n_resamples=100)
    assert sum(scored_pairs) == 10 * len(demo.queries)
    scored_pairs.clear()
    other_top_n = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=10, top_n=5)]
    experiment(demo, first + other_top_n, latency_queries=0, show_progress=False, n_resamples=100)
    assert sum(scored_pairs) == 0
    deeper = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=12)]
    experiment(demo, deeper, latency_queries=0, show_progress=False, n_resamples=100)
    assert sum(scored_pairs) == 2 * len(demo.queries)  # only the two new candidates per query


def test_a_k_sweep_costs_one_scoring_pass_at_its_largest_k(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache, scored_pairs
):
    sweep = grid([tiny_embedder_path], [None, tiny_cross_encoder_path], ks=[5, 10, 20])
    result = experiment(demo, sweep, latency_queries=0, show_progress=False, n_resamples=100, use_cache=False)
    assert scored_pairs == [20 * len(demo.queries)]  # one call, the deepest k's pairs, nothing more
    for q in demo.queries:  # each k reranks a prefix of the same first-stage list
        for k in (5, 10):
            name = next(p.name for p in sweep if p.k == k and p.reranker)
            assert set(list(result.runs[name][q])[:k]) == set(list(result.runs[sweep[0].name][q])[:k])


def test_latency_timings_are_reused_for_an_unchanged_pipeline_and_remeasured_on_request(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache, scored_pairs
):
    reranked = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=5)]
    first = experiment(demo, reranked, latency_queries=2, show_progress=False, n_resamples=50)
    assert first.meta["latency_measured"][reranked[0].name]["reused"] is False
    scored_pairs.clear()
    # Other resamples and another top_n: a new result, but the same pipeline to time.
    reranked_top3 = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=5, top_n=3)]
    again = experiment(demo, reranked_top3, latency_queries=2, show_progress=False, n_resamples=60)
    assert sum(scored_pairs) == 0  # neither the run nor the latency queries scored anything
    renamed = {reranked[0].name: reranked_top3[0].name}
    assert again.meta["latency_measured"] == {
        renamed.get(name, name): {**taken, "reused": True} for name, taken in first.meta["latency_measured"].items()
    }
    pd.testing.assert_frame_equal(again.latency.drop(columns="pipeline"), first.latency.drop(columns="pipeline"))
    assert "reused from the cache" in markdown_summary(again)
    # Another batch size is another measurement; use_cache=False measures everything afresh.
    other = experiment(demo, reranked, latency_queries=2, show_progress=False, n_resamples=70, batch_size=2)
    assert other.meta["latency_measured"][reranked[0].name]["reused"] is False
    fewer = experiment(demo, reranked, latency_queries=1, show_progress=False, n_resamples=70)
    assert fewer.meta["latency_measured"][reranked[0].name]["reused"] is False
    scored_pairs.clear()
    fresh = experiment(demo, reranked, latency_queries=2, show_progress=False, n_resamples=50, use_cache=False)
    assert fresh.meta["latency_measured"][reranked[0].name]["reused"] is False
    assert sum(scored_pairs) == 5 * len(demo.queries) + 2 * 5  # the run, then two latency queries of 5
    assert "reused from the cache" not in markdown_summary(fresh)


def test_an_unchanged_experiment_is_reused_whole_and_anything_changed_recomputes(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache, monkeypatch, scored_pairs
):
    built: list[object] = []
    real_build = retrievers.build_dense_stage
    monkeypatch.setattr(retrievers, "build_dense_stage", lambda *a: built.append(a) or real_build(*a))
    pipelines = [
        Pipeline(embedder=tiny_embedder_path),
        Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=5),
    ]
    first = experiment(demo, pipelines, latency_queries=1, show_progress=False, n_resamples=50)
    assert len(built) == 1 and first.meta["reused_result"] is False
    again = experiment(demo, pipelines, latency_queries=1, show_progress=False, n_resamples=50)
    assert len(built) == 1  # no index opened, no model loaded
    assert again.meta["reused_result"] is True and again.meta["date"] == first.meta["date"]
    pd.testing.assert_frame_equal(again.table, first.table)
    assert again.runs == first.runs
    assert "Reused from ragkit's cache" in markdown_summary(again)
    assert "Reused from ragkit's cache" not in markdown_summary(first)
    # Any input of the result misses: other qrels, other settings, a model retrained in place.
    fewer_qrels = replace(demo, qrels={q: d for q, d in list(demo.qrels.items())[1:]})
    for changed in (
        lambda: experiment(fewer_qrels, pipelines, latency_queries=1, show_progress=False, n_resamples=50),
        lambda: experiment(demo, pipelines, latency_queries=1, show_progress=False, n_resamples=51),
        lambda: experiment(demo, pipelines, latency_queries=1, show_progress=False, n_resamples=50, use_cache=False),
    ):
        assert changed().meta["reused_result"] is False
    weights = next(Path(tiny_cross_encoder_path).glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    scored_pairs.clear()
    assert (
        experiment(demo, pipelines, latency_queries=1, show_progress=False, n_resamples=50).meta["reused_result"]
        is False
    )
    # Nor are its cached pair scores and timings reused: a local folder's revision is just "local".
    assert sum(scored_pairs) == 5 * len(demo.queries) + 5


def test_reranker_precision_is_part_of_the_pipeline_and_of_its_cached_scores(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache, scored_pairs
):
    fp32 = Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=5)
    bf16 = Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=5, reranker_dtype="bfloat16")
    assert bf16.name == fp32.name.replace("(k=5", "[bfloat16](k=5")
    assert Pipeline(embedder=tiny_embedder_path, reranker_dtype="bfloat16").reranker_dtype == "float32"
    with pytest.raises(RagkitError, match="reranker_dtype must be one of float32, bfloat16, float16"):
        Pipeline(reranker=tiny_cross_encoder_path, reranker_dtype="int8")
    assert [
        p.reranker_dtype
        for p in grid(
            [tiny_embedder_path], [None, tiny_cross_encoder_path], [5], reranker_dtypes=["float32", "bfloat16"]
        )
    ] == ["float32", "float32", "bfloat16"]
    built = bf16.reranker_family.build(bf16.reranker_model, bf16, StageContext("cpu", False, None, None, None))
    assert str(built.model.client.model.dtype) == "torch.bfloat16"
    result = experiment(demo, [fp32, bf16], latency_queries=0, show_progress=False, n_resamples=50)
    assert sum(scored_pairs) == 2 * 5 * len(demo.queries)  # bf16 never reads fp32's cached scores
    diffs = [
        abs(score - result.runs[fp32.name][q][d])
        for q in demo.queries
        for d, score in result.runs[bf16.name][q].items()
        if d in result.runs[fp32.name][q]
    ]
    assert diffs and 0 < max(diffs) < 0.05  # rounded, not rescaled


def test_first_stage_runs_are_cached_per_fingerprint(demo, tiny_embedder_path, cache):
    experiment(demo, [Pipeline(embedder=tiny_embedder_path)], latency_queries=0, show_progress=False, n_resamples=50)
    assert len(list((cache / "runs").glob("*.json"))) == 1
    experiment(demo, [Pipeline(embedder=tiny_embedder_path)], latency_queries=0, show_progress=False, n_resamples=50)
    assert len(list((cache / "runs").glob("*.json"))) == 1
    experiment(demo, [Pipeline("bm25")], latency_queries=0, show_progress=False, n_resamples=50)
    assert len(list((cache / "runs").glob("*.json"))) == 2


def test_table_has_baseline_deltas_significance_and_counts(demo, pipelines, cache):
    result = experiment(demo, pipelines, latency_queries=2, show_progress=False, n_resamples=500)
    table = result.table
    base, other = pipelines[0].name, pipelines[1].name
    assert bool(table.loc[base, "baseline"]) and not bool(table.loc[other, "baseline"])
    per_query = result.per_query
    for m in ("nDCG@10", "RR@10", "R@100"):
        values = per_query[(per_query.measure == m)].pivot(index="query_id", columns="pipeline", values="value")
        assert table.loc[other, m] == pytest.approx(values[other].mean())
        assert table.loc[other, f"{m} delta"] == pytest.approx((values[other] - values[base]).mean())
        assert table.loc[other, f"{m} ci_low"] <= table.loc[other, f"{m} delta"] <= table.loc[other, f"{m} ci_high"]
        assert table.loc[other, f"{m} p_perm"] <= table.loc[other, f"{m} p_perm_holm"] <= 1
        assert sum(int(table.loc[other, f"{m} {c}"]) for c in ("wins", "ties", "losses")) == len(demo.queries)
        assert pd.isna(table.loc[base, f"{m} delta"])
    stages = set(result.latency.stage)
    assert {"embed query", "vector search", "bm25 search", "rerank", "total"} <= stages
    assert (result.latency.p95_ms >= result.latency.p50_ms).all()
    assert result.meta["is_subset"] is False and result.meta["device"] == "cpu"


def test_report_folder_holds_every_file_and_runs_round_trip(demo, pipelines, cache, tmp_path):
    result = experiment(demo, pipelines[:2], latency_queries=1, show_progress=False, n_resamples=100)
    folder = write_report(result, tmp_path / "report")
    for name in (
        "results.csv",
        "results.json",
        "per_query.csv",
        "latency.csv",
        "summary.md",
        "deltas.png",
        "per_query.png",
        "frontier.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    trec = sorted((folder / "runs").glob("*.trec"))
    assert len(trec) == 2
    lines = (folder / "runs" / f"{slug(pipelines[1].name)}.trec").read_text().splitlines()
    parsed: dict[str, list[str]] = {}
    for line in lines:
        qid, q0, doc, rank, score, tag = line.split()
        assert q0 == "Q0" and int(rank) == len(parsed.setdefault(qid, [])) + 1
        parsed[qid].append(doc)
    assert parsed == {q: list(r) for q, r in result.runs[pipelines[1].name].items()}
    # Re-read as a scorer does (by score, ties broken by document id): every written run gives
    # back the ranking ragkit decided.
    for path in trec:
        by_rank: dict[str, list[str]] = {}
        by_score: dict[str, list[tuple[float, str]]] = {}
        for line in path.read_text().splitlines():
            qid, _, doc, rank, score, _ = line.split()
            by_rank.setdefault(qid, []).append(doc)
            by_score.setdefault(qid, []).append((float(score), doc))
        for qid, docs in by_rank.items():
            assert [d for _, d in sorted(by_score[qid], key=lambda x: (-x[0], x[1]))] == docs
    meta = json.loads((folder / "results.json").read_text())["meta"]
    assert meta["collection"] == "demo" and meta["model_revisions"]
    assert "/" + "root" not in (folder / "summary.md").read_text()


def test_saturated_scores_keep_their_order_through_a_trec_file():
    from ragkit.evaluate import reranked_run
    from ragkit.results import trec_run

    # Strong matches: logits whose sigmoid is 1.0 in float32, several of them equal.
    logits = [("z", 18.25), ("y", 18.25), ("x", 17.5), ("w", 18.25), ("v", 30.0)]
    run = reranked_run(logits, [("u", 0.3), ("t", 0.2)])
    assert list(run) == ["v", "z", "y", "w", "x", "u", "t"]
    ranked = [(float(line.split()[4]), line.split()[2]) for line in trec_run({"q": run}, "t").splitlines()]
    assert [d for _, d in sorted(ranked, key=lambda x: (-x[0], x[1]))] == list(run)


def test_a_subset_report_says_it_is_a_subset(tiny_embedder_path, cache, tmp_path):
    from ragkit import make_subset

    subset = make_subset(load_beir("scifact"), 5, n_docs=60)
    result = experiment(
        subset, [Pipeline(embedder=tiny_embedder_path)], latency_queries=0, show_progress=False, n_resamples=50
    )
    summary = (result.save(tmp_path / "r") / "summary.md").read_text()
    assert result.meta["is_subset"] is True
    assert "ragkit subset, not the official split" in summary
    assert subset.name in summary


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"retriever": "splade"}, "Unknown retriever"),
        ({"k": 0}, "at least 1"),
        ({"reranker": "x", "k": 5, "top_n": 6}, "top_n=6 is more than the k=5"),
    ],
)
def test_bad_pipelines_are_refused(kwargs, message):
    with pytest.raises(RagkitError, match=message):
        Pipeline(**kwargs)


def test_bad_measure_and_baseline_are_refused(demo, tiny_embedder_path):
    with pytest.raises(RagkitError, match="Unknown measure"):
        experiment(demo, [Pipeline(embedder=tiny_embedder_path)], measures=["nDCG@x"])
    with pytest.raises(RagkitError, match="Baseline 'nope'"):
        experiment(demo, [Pipeline(embedder=tiny_embedder_path)], baseline="nope")


def test_grid_crosses_first_stages_rerankers_k_and_top_n():
    names = [p.name for p in grid(["a/e"], [None, "b/r"], ks=[10, 20], top_ns=[None, 10, 15], bm25=True)]
    assert names == [
        "dense(e)",
        "dense(e) >> r(k=10, top_n=10)",
        "dense(e) >> r(k=20, top_n=20)",
        "dense(e) >> r(k=20, top_n=10)",
        "dense(e) >> r(k=20, top_n=15)",
        "bm25",
        "bm25 >> r(k=10, top_n=10)",
        "bm25 >> r(k=20, top_n=20)",
        "bm25 >> r(k=20, top_n=10)",
        "bm25 >> r(k=20, top_n=15)",
    ]


# ----------------------------------------------------------------------------- the command line


def test_cli_eval_writes_the_report_and_prints_the_table(
    tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path, capsys
):
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "--dataset",
            "demo",
            "--subset",
            "0",
            "--embedders",
            tiny_embedder_path,
            "--rerankers",
            "none",
            tiny_cross_encoder_path,
            "--k",
            "5",
            "--latency-queries",
            "1",
            "--output",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0
    assert "(baseline)" in printed and "nDCG@10" in printed and "note:" not in printed
    # No --queries was given: the default sample needs no note (the summary says 8 queries).
    assert "note:" not in captured.err and "8 queries" in printed
    assert (out / "summary.md").is_file() and len(list((out / "runs").glob("*.trec"))) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "scifcat"], "scifcat"),
        (
            ["--embedders", "sentence-transformers/all-MiniLM-L6-v3"],
            "Known embedder models: sentence-transformers/all-MiniLM-L6-v2",
        ),
        (["--rerankers", "cross-encoder/nope"], "Known cross-encoder models: cross-encoder/ms-marco-MiniLM-L-6-v2"),
        (["--device", "cuda:7"], "cuda:7"),
    ],
)
def test_cli_errors_are_clear(args, message, tmp_path, capsys):
    code = main(["eval", "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ragkit: error:") and message in err


def test_cli_refuses_an_unwritable_output_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits; a file in the way fails for everyone
            target = tmp_path / "file"
            target.write_text("not a folder")
            out = target / "report"
        else:
            out = locked / "report"
        code = main(["eval", "--dataset", "demo", "--output", str(out)])
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert "Cannot write the report to" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subset", "-3"], "--subset must be 0"),
        (["--device", "gpu0"], "gpu0"),
        (["--measures", "P@0"], "cut-off must be a whole number of at least 1, got 0"),
        (["--measures", "nDCG@10.5"], "nDCG@10.5"),
        (["--k", "5", "--top-n", "10"], "every top_n (10) is more than the 5 candidates"),
        (["--k", "0"], "--k must be at least 1"),
        (["--embedders", "none"], "--embedders none needs --bm25"),
        (["--hybrid", "--fusion-weights", "0", "1"], "Fusion weights must be two positive numbers"),
        (["--hybrid", "--fusion-weights", "-1", "1"], "--fusion-weights 0.5 0.5"),
        (["--fusion-weights", "0.7", "0.3"], "add --hybrid"),
        (["--hybrid", "--embedders", "none", "--bm25"], "--hybrid fuses each embedder's ranking"),
        (["--chroma-host", "127.0.0.1", "--chroma-port", "1"], "No Chroma server answers at 127.0.0.1:1"),
        (["--chroma-port", "0", "--chroma-host", "localhost"], "--chroma-port must be a TCP port"),
    ],
)
def test_cli_refuses_bad_options_before_any_work(args, message, tmp_path, capsys, cache):
    out = tmp_path / "new" / "out"
    code = main(["eval", "--dataset", "demo", "--output", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ragkit: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # no empty report folder left behind
    assert not cache.exists()  # nothing was computed


def test_cli_runs_the_whole_split_when_the_subset_is_at_least_its_size(tiny_embedder_path, cache, tmp_path, capsys):
    code = main(
        [
            "eval",
            "--dataset",
            "demo",
            "--subset",
            "500",
            "--embedders",
            tiny_embedder_path,
            "--rerankers",
            "none",
            "--latency-queries",
            "0",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "--subset 500 is at least the 8 queries demo (test) has, so every query is evaluated" in captured.err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["meta"]["n_queries"] == 8


def test_cli_says_which_k_and_top_n_combinations_it_leaves_out(
    tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path, capsys
):
    code = main(
        [
            "eval",
            "--dataset",
            "demo",
            "--subset",
            "0",
            "--embedders",
            tiny_embedder_path,
            "--rerankers",
            tiny_cross_encoder_path,
            "--k",
            "6",
            "--top-n",
            "5",
            "10",
            "--latency-queries",
            "0",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "note: k=6 with top_n=10 is left out" in captured.err and "left out" not in captured.out
    assert "(k=6, top_n=5)" in captured.out


def test_cli_samples_queries_over_the_whole_corpus_by_default(tiny_embedder_path, cache, tmp_path, capsys):
    code = main(
        [
            "eval",
            "--dataset",
            "demo",
            "--queries",
            "5",
            "--embedders",
            tiny_embedder_path,
            "--rerankers",
            "none",
            "--latency-queries",
            "0",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert (meta["n_queries"], meta["n_docs"], meta["is_subset"]) == (5, 40, False)
    assert "query sample: 5 of the split's 8 queries" in printed


def test_cli_pools_several_collections(tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path, capsys):
    import shutil

    from ragkit.data import DEMO_DIR

    shutil.copytree(DEMO_DIR, tmp_path / "demo2")
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--dataset",
            "demo",
            str(tmp_path / "demo2"),
            "--queries",
            "0",
            "--embedders",
            tiny_embedder_path,
            "--rerankers",
            "none",
            tiny_cross_encoder_path,
            "--k",
            "5",
            "--latency-queries",
            "2",
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    pooled = json.loads((out / "results.json").read_text())
    assert pooled["meta"]["n_queries"] == 16 and pooled["meta"]["collection"] == "demo + demo2 (pooled)"
    one = json.loads((out / "demo" / "results.json").read_text())
    for name, row in pooled["table"].items():  # the same queries twice: the same means, twice the evidence
        assert row["nDCG@10"] == pytest.approx(one["table"][name]["nDCG@10"])
    reranked = next(n for n in pooled["table"] if ">>" in n)
    # Twice the evidence: the smallest p-value the sign-flip test can reach falls, and the MDE with
    # it (on one collection too few queries may change for that test to reject at all: no MDE).
    alone, both = one["table"][reranked], pooled["table"][reranked]
    assert both["nDCG@10 own p_perm_min"] < alone["nDCG@10 own p_perm_min"]
    assert both["nDCG@10 own mde"] is not None
    assert alone["nDCG@10 own mde"] is None or both["nDCG@10 own mde"] < alone["nDCG@10 own mde"]
    assert "pooled over 2 collections, 16 queries" in printed
    assert main(["eval", "--dataset", "demo", "demo", "--output", str(out)]) == 2


def test_pooling_needs_the_same_pipelines_and_a_shared_measure(demo, tiny_embedder_path, cache):
    from ragkit.evaluate import pool

    a = experiment(
        demo,
        [Pipeline(embedder=tiny_embedder_path)],
        measures=["nDCG@10"],
        latency_queries=0,
        show_progress=False,
        n_resamples=50,
    )
    b = experiment(
        demo,
        [Pipeline(embedder=tiny_embedder_path)],
        measures=["RR@10"],
        latency_queries=0,
        show_progress=False,
        n_resamples=50,
    )
    c = experiment(
        demo, [Pipeline("bm25")], measures=["nDCG@10"], latency_queries=0, show_progress=False, n_resamples=50
    )
    with pytest.raises(RagkitError, match="share no measure"):
        pool([a, b])
    with pytest.raises(RagkitError, match="different pipelines"):
        pool([a, c])


def test_batched_throughput_is_reported_only_for_a_pass_it_timed(
    demo, tiny_embedder_path, tiny_cross_encoder_path, cache
):
    reranked = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=5)]
    first = experiment(demo, reranked, latency_queries=0, show_progress=False, n_resamples=50)
    timed = first.meta["throughput"][reranked[0].name]
    assert (timed["pairs"], timed["queries"]) == (5 * len(demo.queries), len(demo.queries)) and timed["seconds"] > 0
    assert "queries/s" in markdown_summary(first)
    again = experiment(demo, reranked, latency_queries=0, show_progress=False, n_resamples=60)  # scores all cached
    assert again.meta["throughput"] == {}
    assert "every pair score came from the cache" in markdown_summary(again)
