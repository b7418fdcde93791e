"""ragkit's on-disk cache never trusts what it reads back: damaged, truncated or planted files
are recomputed (with a warning naming them) or refused, never executed, never a wrong number;
concurrent writers never tear a file; an interrupted scoring run resumes where it stopped."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ragkit.cache import Cache, atomic_folder, atomic_write
from ragkit.cli import main
from ragkit.evaluate import Pipeline, experiment

QUIET = {"latency_queries": 0, "show_progress": False, "n_resamples": 50}


class _Planted:
    """Unpickling this writes a marker file: proof that a cache file was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _only(folder: Path) -> Path:
    files = sorted(folder.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _rewrite_payload(path: Path, change) -> None:
    """Change a record's payload and re-sign it, as someone who knows the format could."""
    from ragkit.cache import _content_hash

    record = json.loads(path.read_text())
    record["payload"] = change(record["payload"])
    record["sha256"] = _content_hash(record["payload"])
    path.write_text(json.dumps(record))


# ----------------------------------------------------------------------------- the result store


def test_a_planted_pickle_is_never_executed_and_the_result_is_recomputed(demo, reranked, cache, tmp_path, caplog):
    first = experiment(demo, reranked, **QUIET)
    stored = _only(cache / "results")
    marker = tmp_path / "marker"
    stored.write_bytes(pickle.dumps(_Planted(marker)))
    (cache / "experiments").mkdir()
    (cache / "experiments" / f"{stored.stem}.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert not marker.exists()
    assert again.meta["reused_result"] is False
    assert str(stored) in caplog.text and "not readable JSON" in caplog.text
    pd.testing.assert_frame_equal(again.table, first.table)
    # The recomputed result replaced the planted file, and is what the next run reuses.
    assert experiment(demo, reranked, **QUIET).meta["reused_result"] is True


def test_a_reused_result_is_the_same_as_a_fresh_one(demo, reranked, cache):
    fresh = experiment(demo, reranked, **{**QUIET, "latency_queries": 1})
    reused = experiment(demo, reranked, **{**QUIET, "latency_queries": 1})
    assert reused.meta["reused_result"] is True
    for name in ("table", "per_query", "latency"):
        pd.testing.assert_frame_equal(getattr(reused, name), getattr(fresh, name))
    assert reused.runs == fresh.runs
    assert {**reused.meta, "reused_result": False} == fresh.meta


def test_made_up_numbers_in_a_stored_result_are_refused(demo, reranked, cache, caplog):
    first = experiment(demo, reranked, **QUIET)
    stored = _only(cache / "results")
    record = json.loads(stored.read_text())
    record["payload"]["table"]["data"][1][1] = 0.999  # the reranker's nDCG@10, not re-signed
    stored.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert again.meta["reused_result"] is False and "checksum" in caplog.text
    pd.testing.assert_frame_equal(again.table, first.table)


@pytest.mark.parametrize("damage", [b"", b"{", b"\x00\xff garbage", b"[]", b'{"payload": 1}'])
def test_a_damaged_result_or_latency_file_is_recomputed(demo, reranked, cache, caplog, damage):
    first = experiment(demo, reranked, **{**QUIET, "latency_queries": 1})
    for store in ("results", "latency"):
        for path in (cache / store).glob("*.json"):
            path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **{**QUIET, "latency_queries": 1})
    assert again.meta["reused_result"] is False
    assert all(not t["reused"] for t in again.meta["latency_measured"].values())
    assert caplog.text.count("Ignoring damaged cache file") == 1 + len(reranked)
    pd.testing.assert_frame_equal(again.table, first.table)


# ----------------------------------------------------------------------------- first-stage runs


@pytest.mark.parametrize("damage", ["empty list, unsigned", "half the queries, re-signed", "truncated"])
def test_a_damaged_first_stage_run_is_recomputed_never_scored(demo, reranked, cache, caplog, damage):
    first = experiment(demo, reranked, **QUIET)
    run_file = _only(cache / "runs")
    if damage == "empty list, unsigned":
        run_file.write_text("[]")
    elif damage == "half the queries, re-signed":
        _rewrite_payload(run_file, lambda hits: hits[: len(hits) // 2])
    else:
        run_file.write_bytes(run_file.read_bytes()[:300])
    Cache().clear("results")  # so that the run itself is needed again
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert str(run_file) in caplog.text
    pd.testing.assert_frame_equal(again.table, first.table)
    assert again.runs == first.runs
    assert Cache().read("runs", run_file.stem) is not None  # replaced by a sound copy


def test_no_cache_overwrites_a_damaged_file_instead_of_leaving_it(demo, reranked, cache, caplog):
    experiment(demo, reranked, **QUIET)
    run_file = _only(cache / "runs")
    run_file.write_text("garbage")
    experiment(demo, reranked, use_cache=False, **QUIET)
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        assert Cache().read("runs", run_file.stem) is not None
    assert "Ignoring damaged" not in caplog.text


# ----------------------------------------------------------------------------- pair scores


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_pair_score_database_is_replaced_with_a_warning(demo, reranked, cache, caplog, scored_pairs, damage):
    first = experiment(demo, reranked, **QUIET)
    db = cache / "pair_scores.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        db.write_bytes(db.read_bytes()[:1500])
    scored_pairs.clear()
    Cache().clear("results")
    with caplog.at_level(logging.WARNING, logger="ragkit"):
        again = experiment(demo, reranked, **QUIET)
    assert str(db) in caplog.text
    assert sum(scored_pairs) == 10 * len(demo.queries)  # rescored, not read from the damaged file
    assert again.runs == first.runs


def test_a_run_killed_mid_scoring_resumes_where_it_stopped(
    demo, tiny_embedder_path, spread_cross_encoder_path, cache, scored_pairs
):
    pipelines = [Pipeline(embedder=tiny_embedder_path, reranker=spread_cross_encoder_path, k=40)]
    total = 40 * len(demo.queries)
    # A child process scores in chunks of 32 pairs and is killed (SIGKILL: no clean-up at all)
    # while scoring its fourth chunk.
    script = f"""
import os, signal
import ragkit.evaluate as evaluate
import ragkit.rerank as rerank
from ragkit import load_beir
from ragkit.evaluate import Pipeline, experiment
evaluate.SCORE_CHUNK = 32
real, calls = rerank.score_pairs, []
def dying(model, pairs, **kwargs):
    calls.append(len(pairs))
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(model, pairs, **kwargs)
rerank.score_pairs = dying
experiment(load_beir("demo"), [Pipeline(embedder={tiny_embedder_path!r}, reranker={spread_cross_encoder_path!r},
           k=40)], latency_queries=0, show_progress=False, n_resamples=50, batch_size=8)
"""
    child = subprocess.run([sys.executable, "-c", script], env=os.environ, capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    resumed = experiment(demo, pipelines, batch_size=8, **QUIET)
    assert sum(scored_pairs) == total - 3 * 32  # only what the killed run had not committed
    scored_pairs.clear()
    fresh = experiment(demo, pipelines, batch_size=8, use_cache=False, **QUIET)
    assert sum(scored_pairs) == total
    assert resumed.runs == fresh.runs  # the resumed scores are the ones a single pass gives


# ----------------------------------------------------------------------------- writers


def _writer(path: str, tag: int, n: int) -> None:
    for i in range(n):
        atomic_write(path, json.dumps({"writer": tag, "i": i, "pad": "x" * 20_000}))


def _reader(path: str, n: int, out) -> None:
    errors = torn = 0
    for _ in range(n):
        try:
            json.loads(Path(path).read_text())
        except FileNotFoundError:
            errors += 1
        except json.JSONDecodeError:
            torn += 1
    out.put((errors, torn))


def test_concurrent_writers_never_tear_or_lose_a_file(tmp_path):
    path = str(tmp_path / "record.json")
    atomic_write(path, json.dumps({"writer": -1}))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, tag, 300)) for tag in range(3)]
    procs.append(ctx.Process(target=_reader, args=(path, 3000, out)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert out.get(timeout=10) == (0, 0)
    assert json.loads(Path(path).read_text())["i"] == 299
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary file left behind


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_write(tmp_path):
    report = tmp_path / "report"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = report / f".ragkit-report-{dead.stdout.strip()}-abc123"
    abandoned.mkdir(parents=True)
    (abandoned / "results.csv").write_text("half")
    with atomic_folder(report) as tmp:
        (tmp / "results.csv").write_text("whole")
    assert sorted(p.name for p in report.iterdir()) == ["results.csv"]


# ----------------------------------------------------------------------------- ragkit cache


def test_cache_command_lists_verifies_and_clears(demo, reranked, cache, capsys):
    experiment(demo, reranked, **QUIET)
    assert main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert str(cache) in listing and "pair_scores" in listing and "runs" in listing
    assert main(["cache", "verify"]) == 0
    assert "sound" in capsys.readouterr().out
    run_file = _only(cache / "runs")
    run_file.write_text("{")
    assert main(["cache", "verify"]) == 1
    report = capsys.readouterr().out
    assert str(run_file) in report and "not readable JSON" in report
    assert run_file.exists()  # verify changes nothing
    assert main(["cache", "clear", "runs"]) == 0
    assert not (cache / "runs").exists() and (cache / "results").exists()
    assert main(["cache", "clear"]) == 0
    assert not any(cache.iterdir())


# ----------------------------------------------------------------------------- start-up


def test_importing_ragkit_and_its_cli_loads_no_heavy_library():
    code = (
        "import sys, ragkit, ragkit.cli; ragkit.cli.build_parser(); "
        "print([m for m in ('torch', 'transformers', 'langchain_core', 'chromadb', 'scipy', 'pandas') "
        "if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
