"""A TREC run file as a first stage: another system's rankings evaluated exactly as written,
reranked like ragkit's own, and every fault in the file (or between the file and the
collection) a clear error before any work."""

from __future__ import annotations

import pytest
from test_stages import bm25_run_file

from ragkit.cli import main
from ragkit.errors import DataError
from ragkit.evaluate import Pipeline, experiment
from ragkit.report import write_report
from ragkit.results import slug
from ragkit.runfile import read_run


def test_a_reports_run_read_back_scores_as_the_pipeline_that_wrote_it(demo, tiny_embedder_path, cache, tmp_path):
    dense = Pipeline(embedder=tiny_embedder_path)
    first = experiment(demo, [dense], latency_queries=0, show_progress=False, n_resamples=50)
    write_report(first, tmp_path / "report")
    path = tmp_path / "report" / "runs" / f"{slug(dense.name)}.trec"
    run = Pipeline(retriever="run", run_file=str(path))
    again = experiment(demo, [run], latency_queries=0, show_progress=False, n_resamples=50)
    assert again.runs[run.name] == first.runs[dense.name]
    per_query = again.per_query.drop(columns="pipeline").reset_index(drop=True)
    assert per_query.equals(first.per_query.drop(columns="pipeline").reset_index(drop=True))


def test_a_run_file_is_reranked_and_its_reranker_alone_is_timed(demo, tiny_cross_encoder_path, cache, tmp_path):
    path = bm25_run_file(demo, tmp_path / "bm25.trec", depth=100)
    pipelines = [Pipeline(retriever="run", run_file=path, reranker=tiny_cross_encoder_path, k=5)]
    result = experiment(demo, pipelines, latency_queries=2, show_progress=False, n_resamples=50)
    reranked, alone = pipelines[0].name, "run(bm25.trec)"
    assert list(result.table.index) == [reranked, alone]
    written = read_run(path)
    for q, scores in result.runs[alone].items():
        assert list(scores) == [d for d, _ in written[q]]
    for q, scores in result.runs[reranked].items():
        assert set(list(scores)[:5]) == {d for d, _ in written[q][:5]}  # the file's top 5, reordered
        assert list(scores)[5:] == [d for d, _ in written[q][5:]]  # the rest as the file ranked them
    steps = result.latency.groupby("pipeline")["stage"].apply(list).to_dict()
    assert steps == {reranked: ["rerank"]}  # no first stage or total: the system ran elsewhere
    assert "Reranking adds" in result.verdict()


def test_ties_keep_the_rank_columns_order(demo, tmp_path):
    path = tmp_path / "ties.trec"
    path.write_text("q1 Q0 d3 1 2.0 sys\nq1 Q0 d1 3 1.0 sys\nq1 Q0 d2 2 1.0 sys\n")
    assert read_run(path)["q1"] == [("d3", 2.0), ("d2", 1.0), ("d1", 1.0)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("q1 Q0 d1 1 0.5\n", "line 1: expected 6 fields"),
        ("q1 Q0 d1 first 0.5 sys\n", "line 1: the rank ('first') must be a whole number"),
        ("q1 Q0 d1 1 0.5 sys\nq1 Q0 d2 2 nan sys\n", "line 2: score 'nan' is not a finite number"),
        ("q1 Q0 d1 1 0.5 sys\nq1 Q0 d1 2 0.4 sys\n", "line 2: document 'd1' is ranked for query 'q1' a second time"),
        ("q1 Q0 d1 1 0.5 a\nq2 Q0 d1 1 0.5 b\n", "holds 2 runs (tags 'a', 'b')"),
        ("\n\n", "holds no ranking"),
    ],
)
def test_a_malformed_run_file_names_the_line_and_the_fix(text, message, tmp_path):
    path = tmp_path / "bad.trec"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        read_run(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_run_file_that_does_not_match_the_collection_stops_the_evaluation_before_any_work(
    demo, tiny_embedder_path, cache, tmp_path
):
    good = read_run(bm25_run_file(demo, tmp_path / "good.trec"))
    unknown = tmp_path / "unknown.trec"
    unknown.write_text("".join(f"{q} Q0 {d}x 1 1.0 sys\n" for q in good for d, _ in good[q][:1]))
    missing = tmp_path / "missing.trec"
    missing.write_text("".join(f"q1 Q0 {d} {r} {1.0 / r} sys\n" for r, (d, _) in enumerate(good["q1"], 1)))
    for path, message in ((unknown, "names 8 documents that demo (test) does not hold"),
                          (missing, "has no ranking for 7 of the 8 queries of demo (test) evaluated")):  # fmt: skip
        pipelines = [Pipeline(embedder=tiny_embedder_path), Pipeline(retriever="run", run_file=str(path))]
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            experiment(demo, pipelines, show_progress=False)
        assert not (cache / "chroma").exists()  # no index was built first


def test_cli_evaluates_and_reranks_a_run_file(tiny_cross_encoder_path, demo, cache, tmp_path, capsys):
    path = bm25_run_file(demo, tmp_path / "system.trec", depth=100)
    out = tmp_path / "report"
    args = ["eval", "--dataset", "demo", "--run", path, "--rerankers", "none", tiny_cross_encoder_path]
    code = main([*args, "--k", "5", "--latency-queries", "1", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "run(system.trec) (baseline)" in printed and "dense(" not in printed  # --run alone: no dense stage
    reranked = f"run(system.trec) >> {tiny_cross_encoder_path.split('/')[-1]}(k=5, top_n=5)"
    written = sorted(p.name for p in (out / "runs").glob("*.trec"))
    assert written == sorted(f"{slug(n)}.trec" for n in ["run(system.trec)", reranked])


@pytest.mark.parametrize("name, message", [("absent.trec", "does not exist"), (".", "is a folder")])
def test_cli_refuses_a_run_path_that_is_not_a_file(name, message, tmp_path, capsys):
    code = main(["eval", "--dataset", "demo", "--run", str(tmp_path / name), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "TREC run file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
