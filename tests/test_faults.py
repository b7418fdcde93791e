"""Faults that used to end in a traceback after all the work, or in lost work: paths of the
wrong kind, a pair-score database another process holds, a disk that fills while a report is
written, a stored result edited and re-signed, and options only checked once torch was loaded.
Each is now found before the work (or recomputed, inside the cache) and reported in one
paragraph naming the path or option."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ragkit.cache import Cache, PairScoreCache
from ragkit.cli import main
from ragkit.evaluate import Pipeline, experiment

QUIET = {"latency_queries": 0, "show_progress": False, "n_resamples": 50}


def _only(folder: Path) -> Path:
    files = sorted(folder.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _eval_args(embedder: str, out: Path) -> list[str]:
    return ["eval", "--dataset", "demo", "--queries", "0", "--embedders", embedder, "--rerankers", "none",
            "--latency-queries", "0", "--output", str(out)]  # fmt: skip


# ----------------------------------------------------------------------------- paths of the wrong kind


def test_a_folder_where_a_cache_record_belongs_is_cleared_and_recomputed(demo, reranked, cache, caplog):
    first = experiment(demo, reranked, **QUIET)
    result_file, run_file = _only(cache / "results"), _only(cache / "runs")
    for path in (result_file, run_file):
        path.unlink()
        path.mkdir()
        (path / "left-over").write_text("x")
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert again.meta["reused_result"] is False
    pd.testing.assert_frame_equal(again.table, first.table)
    for path in (result_file, run_file):
        assert str(path) in caplog.text and path.is_file()
    assert "a folder, not a record file" in caplog.text
    assert experiment(demo, reranked, **QUIET).meta["reused_result"] is True


def test_a_file_where_a_cache_folder_belongs_is_cleared_and_recomputed(demo, reranked, cache, caplog):
    experiment(demo, reranked, **QUIET)
    for store in ("results", "runs"):
        Cache().clear(store)
        (cache / store).write_text("not a folder")
    scores = cache / "pair_scores.sqlite"
    Cache().clear("pair_scores")
    scores.mkdir()
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert again.meta["reused_result"] is False
    for path in (cache / "results", cache / "runs", scores):
        assert str(path) in caplog.text
    assert (cache / "results").is_dir() and (cache / "runs").is_dir() and scores.is_file()
    assert experiment(demo, reranked, **QUIET).meta["reused_result"] is True


def test_a_cache_folder_that_is_a_file_is_named_before_any_work(demo, reranked, tmp_path, monkeypatch):
    from ragkit.errors import CacheError

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(not_a_folder))
    with pytest.raises(CacheError, match="RAGKIT_CACHE_DIR") as error:
        experiment(demo, reranked, **QUIET)
    assert str(not_a_folder) in str(error.value) and not_a_folder.read_text() == "x"


@pytest.mark.parametrize(
    "layout, output, message",
    [
        ({"file": "f"}, "file", "is a file, not a folder"),
        ({"file": "f"}, "file/report", "is a file, not a folder"),
        ({"report/runs": "f"}, "report", "is a file where the report writes a folder"),
        ({"report/results.csv/": "d"}, "report", "is a folder where the report writes a file"),
        ({"report/deltas.png/": "d"}, "report", "is a folder where the report writes a file"),
    ],
)
def test_an_output_path_of_the_wrong_kind_is_refused_before_any_work(
    tiny_embedder_path, cache, tmp_path, capsys, layout, output, message
):
    for name, kind in layout.items():
        path = tmp_path / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "d":
            path.mkdir()
            (path / "mine.txt").write_text("keep")
        else:
            path.write_text("keep")
    code = main(_eval_args(tiny_embedder_path, tmp_path / output))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("ragkit: error:") and message in err and "Traceback" not in err
    assert str(tmp_path / next(iter(layout)).rstrip("/")) in err
    assert not cache.exists()  # refused before any work
    for name, kind in layout.items():  # nothing of the user's was touched
        path = tmp_path / name.rstrip("/")
        assert (path / "mine.txt" if kind == "d" else path).read_text() == "keep"


def test_the_report_layout_is_what_write_report_writes(demo, tiny_embedder_path, cache, tmp_path):
    from ragkit.report import REPORT_LAYOUT, write_report

    result = experiment(demo, [Pipeline(embedder=tiny_embedder_path)], **QUIET)
    folder = write_report(result, tmp_path / "report")
    written = {p.name: p.is_dir() for p in folder.iterdir()}
    # Everything but the plot only a sequential evaluation's report has (tests/test_until_decided.py).
    assert written == {name: kind for name, kind in REPORT_LAYOUT.items() if name != "sequence.png"}


# ----------------------------------------------------------------------------- a locked pair-score database


def _hold_exclusive_lock(db: Path) -> subprocess.Popen:
    """Another process that holds ``db`` locked (``BEGIN EXCLUSIVE``, as a writer mid-commit
    does) until its standard input closes."""
    code = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read(); db.rollback()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_pair_score_database_is_waited_for_then_reported_never_deleted(tmp_path, caplog):
    from ragkit.errors import CacheError

    db = tmp_path / "pair_scores.sqlite"
    scores = PairScoreCache(db)
    keys = [PairScoreCache.pair_key(f"query {i}", "passage") for i in range(80)]
    scores.put("model", {k: i / 80 for i, k in enumerate(keys)})
    scores.close()
    holder = _hold_exclusive_lock(db)
    try:
        with caplog.at_level(logging.WARNING, logger="ragkit"), pytest.raises(CacheError) as error:
            PairScoreCache(db, timeout=0.5)
    finally:
        holder.communicate("")
    message = str(error.value)
    assert str(db) in message and "another ragkit process" in message and "locked" in message
    assert "Ignoring damaged" not in caplog.text
    reopened = PairScoreCache(db)
    assert len(reopened.get("model", keys)) == 80  # the file and every score survived
    reopened.close()


def test_a_pair_score_database_locked_mid_run_is_reported_not_called_damaged(tmp_path):
    from ragkit.errors import CacheError

    db = tmp_path / "pair_scores.sqlite"
    scores = PairScoreCache(db, timeout=0.5)
    scores.put("model", {"a": 0.5})
    holder = _hold_exclusive_lock(db)
    try:
        with pytest.raises(CacheError) as error:
            scores.put("model", {"b": 0.25})
    finally:
        holder.communicate("")
    assert str(db) in str(error.value) and "another ragkit process" in str(error.value)
    assert "Delete that file" not in str(error.value)
    assert scores.get("model", ["a"]) == {"a": 0.5}
    scores.close()


# ----------------------------------------------------------------------------- a full disk


def _disk_fills_at_the_runs(monkeypatch) -> None:
    """The disk fills while the report's TREC runs are written: half of the first file goes
    down, then the write fails as the operating system fails it (ENOSPC)."""
    real = Path.write_text

    def write_text(self: Path, data: str, *args, **kwargs) -> int:
        if self.suffix == ".trec":
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("existing", [False, True])
def test_a_disk_that_fills_while_the_report_is_written_is_named_and_leaves_nothing(
    tiny_embedder_path, cache, tmp_path, capsys, monkeypatch, existing
):
    out = tmp_path / "new" / "report"
    if existing:  # an earlier report in the folder stays as it was
        out.mkdir(parents=True)
        (out / "results.csv").write_text("the earlier report")
    _disk_fills_at_the_runs(monkeypatch)
    code = main(_eval_args(tiny_embedder_path, out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index("ragkit: error:") :]
    assert str(out) in message and "bytes" in message and "Not enough space" in message
    if existing:
        assert [p.name for p in out.iterdir()] == ["results.csv"] and (out / "results.csv").read_text() == (
            "the earlier report"
        )
    else:
        assert not (tmp_path / "new").exists()  # no empty or half-written report folder


def test_a_report_larger_than_the_free_space_is_refused_before_its_first_byte(
    demo, tiny_embedder_path, cache, tmp_path, monkeypatch
):
    import shutil

    from ragkit.errors import RagkitError
    from ragkit.report import write_report

    result = experiment(demo, [Pipeline(embedder=tiny_embedder_path)], **QUIET)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    out = tmp_path / "new" / "report"
    with pytest.raises(RagkitError) as error:
        write_report(result, out)
    message = str(error.value)
    needed = int(message.split(" needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert str(out) in message and "1,000 bytes free" in message
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    written = sum(p.stat().st_size for p in write_report(result, out).rglob("*") if p.is_file())
    assert 0.9 * written <= needed <= 1.1 * written  # the size asked for is the report's


def test_a_cache_record_that_does_not_fit_is_reported_and_skipped(tmp_path, monkeypatch, caplog):
    import os

    from ragkit.cache import DiskFullError, atomic_write

    def fsync(fd: int) -> None:  # where a full disk reports a delayed write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError) as error:
        atomic_write(tmp_path / "record.json", "x" * 5000)
    assert str(tmp_path / "record.json") in str(error.value) and "5,000 bytes" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    cache = Cache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        assert cache.write("runs", "key", [[["d1", 0.5]]]) is None
    assert "Not caching" in caplog.text and "bytes" in caplog.text
    assert not any((tmp_path / "cache" / "runs").iterdir())


def test_a_pair_score_database_that_cannot_grow_keeps_its_scores_and_says_the_disk_is_full(tmp_path):
    from ragkit.cache import DiskFullError

    db = tmp_path / "pair_scores.sqlite"
    scores = PairScoreCache(db)
    scores.put("model", {"kept": 0.5})
    pages = scores._db.execute("PRAGMA page_count").fetchone()[0]
    scores._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own limit: the file cannot grow
    with pytest.raises(DiskFullError) as error:
        scores.put("model", {f"pair {i}": i / 10_000 for i in range(10_000)})
    assert str(db) in str(error.value) and "disk is full" in str(error.value)
    assert "Delete that file" not in str(error.value)
    assert scores.get("model", ["kept"]) == {"kept": 0.5}
    scores.close()


# ----------------------------------------------------------------------------- a result that disagrees with itself


def _cell(frame: dict, row: str, column: str) -> tuple[int, int]:
    return frame["index"].index(row), frame["columns"].index(column)


def _set_mean(payload: dict, pipeline: str, measure: str, value: float) -> dict:
    i, j = _cell(payload["table"], pipeline, measure)
    payload["table"]["data"][i][j] = value
    return payload


def _set_delta(payload: dict, pipeline: str, measure: str, value: float) -> dict:
    return _set_mean(payload, pipeline, f"{measure} delta", value)


def _set_query_value(payload: dict, pipeline: str, measure: str, value: float) -> dict:
    rows = payload["per_query"]["data"]
    row = next(r for r in rows if r[0] == pipeline and r[2] == measure)
    row[3] = value
    return payload


def _drop_query_row(payload: dict, pipeline: str, measure: str) -> dict:
    rows = payload["per_query"]["data"]
    rows.remove(next(r for r in rows if r[0] == pipeline and r[2] == measure))
    payload["per_query"]["index"] = payload["per_query"]["index"][: len(rows)]
    return payload


def _drop_run_query(payload: dict, pipeline: str, measure: str) -> dict:
    run = payload["runs"][pipeline]
    del run[sorted(run)[0]]
    return payload


def _deepen_run(payload: dict, pipeline: str, measure: str) -> dict:
    run = payload["runs"][pipeline]
    first = sorted(run)[0]
    run[first] = {**run[first], **{f"planted-{i}": -1000.0 - i for i in range(120)}}
    return payload


def _more_queries(payload: dict, pipeline: str, measure: str) -> dict:
    payload["meta"]["n_queries"] += 1
    return payload


EDITS = {
    "a baseline mean": (lambda p, b, r, m: _set_mean(p, b, m, 1.0), "per-query values average"),
    "a reranked mean": (lambda p, b, r, m: _set_mean(p, r, m, 0.9999), "per-query values average"),
    "a delta": (lambda p, b, r, m: _set_delta(p, r, m, 0.5), "delta"),
    "a per-query value": (lambda p, b, r, m: _set_query_value(p, r, m, 1.0), "per-query values average"),
    "a per-query row": (lambda p, b, r, m: _drop_query_row(p, r, m), "queries"),
    "a query of a run": (lambda p, b, r, m: _drop_run_query(p, r, m), "run"),
    "a run deeper than its pipeline": (lambda p, b, r, m: _deepen_run(p, b, m), "documents"),
    "the query count": (lambda p, b, r, m: _more_queries(p, b, m), "queries"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_stored_result_edited_and_re_signed_is_discarded_and_recomputed(demo, reranked, cache, caplog, edit):
    from ragkit.cache import _content_hash

    first = experiment(demo, reranked, **QUIET)
    stored = _only(cache / "results")
    record = json.loads(stored.read_text())
    names = list(first.table.index)
    change, _ = EDITS[edit]
    record["payload"] = change(record["payload"], names[0], names[1], first.measures[0])
    record["sha256"] = _content_hash(record["payload"])  # re-signed: the checksum alone cannot tell
    stored.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert again.meta["reused_result"] is False
    assert str(stored) in caplog.text and "disagrees with itself" in caplog.text
    pd.testing.assert_frame_equal(again.table, first.table)
    assert experiment(demo, reranked, **QUIET).meta["reused_result"] is True


@pytest.mark.parametrize("edit", EDITS)
def test_loading_a_result_that_disagrees_with_itself_is_a_clear_error(demo, reranked, cache, edit):
    from ragkit.errors import DataError
    from ragkit.results import EvaluationResult

    result = experiment(demo, reranked, **QUIET)
    data = json.loads(json.dumps(result.to_dict()))
    assert EvaluationResult.from_dict(data).runs == result.runs  # a sound result loads as it was
    names = list(result.table.index)
    change, words = EDITS[edit]
    with pytest.raises(DataError) as error:
        EvaluationResult.from_dict(change(data, names[0], names[1], result.measures[0]))
    message = str(error.value)
    assert message.startswith("This result disagrees with itself") and words in message
    assert any(name in message for name in names) or "queries" in message


def test_the_table_means_are_checked_to_the_precision_stored(demo, reranked, cache):
    from ragkit.errors import DataError
    from ragkit.results import EvaluationResult

    data = json.loads(json.dumps(experiment(demo, reranked, **QUIET).to_dict()))
    table = data["table"]
    columns = [j for j, c in enumerate(table["columns"]) if c in data["meta"]["measures"] or c.endswith(" delta")]
    name, measure = table["index"][1], data["meta"]["measures"][0]
    i, j = _cell(table, name, measure)
    mean = table["data"][i][j]
    rounded = json.loads(json.dumps(data))
    for row in rounded["table"]["data"]:  # every mean and delta rounded, as a table prints them
        for c in columns:
            row[c] = None if row[c] is None else round(row[c], 4)
    assert EvaluationResult.from_dict(rounded).table.loc[name, measure] == round(mean, 4)
    table["data"][i][j] = round(mean, 2)  # one mean made short in a table stored at full precision
    assert round(mean, 2) != mean
    with pytest.raises(DataError, match="per-query values average"):
        EvaluationResult.from_dict(data)


# ----------------------------------------------------------------------------- options checked before heavy imports

HEAVY = ("torch", "chromadb", "sentence_transformers", "langchain")


def _cli_in_a_new_process(args: list[str]) -> tuple[int, str, list[str]]:
    """``ragkit`` run with ``args`` in a fresh interpreter: its exit status, what it printed on
    standard error, and which heavy libraries it had imported by then."""
    code = (
        "import sys; from ragkit.cli import main; code = main(sys.argv[1:]); "
        f"print(sorted({{m for m in sys.modules if m.split('.')[0].startswith({HEAVY!r})}})); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr, json.loads(done.stdout.strip().replace("'", '"'))


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once it is closed


@pytest.mark.parametrize(
    "args, option",
    [
        (["--chunk-sizes", "-5"], "--chunk-sizes"),
        (["--chroma-host", "127.0.0.1", "--chroma-port", "CLOSED"], "--chroma-port"),
        (["--chroma-host", "127.0.0.1", "--chroma-port", "70000"], "--chroma-port"),
        (["--k", "0"], "--k"),
        (["--k", "5", "--top-n", "10"], "--top-n"),
        (["--top-n", "0"], "--top-n"),
        (["--chunk-sizes", "100", "--chunk-overlap", "200"], "--chunk-overlap"),
        (["--max-lengths", "0"], "--max-lengths"),
        (["--hybrid", "--fusion-weights", "0", "1"], "--fusion-weights"),
        (["--fusion-weights", "0.7", "0.3"], "--hybrid"),
        (["--device", "gpu0"], "--device"),
        (["--devices", "cpu", "tpu0"], "--devices"),
        (["--batch-size", "0"], "--batch-size"),
        (["--latency-queries", "-1"], "--latency-queries"),
        (["--subset", "-3"], "--subset"),
        (["--queries", "5", "--subset", "5"], "--queries"),
        (["--measures", "P@0"], "P@0"),
        (["--embedders", "nope/model"], "nope/model"),
        (["--output", "FILE/report"], "--output"),
        (["--dataset", "no-such-collection"], "no-such-collection"),
        (["--dataset", "FILE/report"], "is not a folder"),
        (["--split", "train"], "no judgements for split 'train'"),
    ],
)
def test_every_option_is_checked_before_torch_chromadb_or_langchain_is_imported(tmp_path, cache, args, option):
    (tmp_path / "file").write_text("not a folder")
    args = [{"CLOSED": str(_closed_port()), "FILE/report": str(tmp_path / "file" / "report")}.get(a, a) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "report")]
    dataset = [] if "--dataset" in args else ["--dataset", "demo"]
    code, err, heavy = _cli_in_a_new_process(["eval", *dataset, *args])
    assert code == 2, err
    assert err.startswith("ragkit: error:") and option in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err  # one paragraph
    assert heavy == []
    assert not (tmp_path / "report").exists() and not cache.exists()


def test_python_m_ragkit_refuses_a_bad_option_with_exit_status_2():
    done = subprocess.run([sys.executable, "-m", "ragkit", "eval", "--chunk-sizes", "-5"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "ragkit: error: --chunk-sizes takes whole numbers of at least 1 or 'none', got '-5'.\n"
