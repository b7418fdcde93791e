"""An evaluation with worker processes (``devices``) gives the runs one process gives: the
index embedded and the pairs scored in a pool, then every worker gone."""

from __future__ import annotations

import multiprocessing

import pytest

from ragkit import Pipeline, experiment
from ragkit.cli import main


def test_an_evaluation_on_two_cpu_workers_equals_one_process(demo, tiny_embedder_path, tiny_cross_encoder_path,
                                                             tmp_path, monkeypatch):  # fmt: skip
    pipelines = [Pipeline(embedder=tiny_embedder_path, reranker=tiny_cross_encoder_path, k=10, chunk_size=150,
                          chunk_overlap=20)]  # fmt: skip
    kwargs = {"latency_queries": 0, "show_progress": False, "n_resamples": 50}
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "one"))
    one = experiment(demo, pipelines, **kwargs)
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "two"))  # nothing cached: embed and score again
    two = experiment(demo, pipelines, devices=["cpu", "cpu"], **kwargs)
    assert two.runs == one.runs  # same documents, same order, same scores to the last bit
    assert not multiprocessing.active_children()


@pytest.mark.parametrize(
    "devices, message",
    [(["gpu1"], "unknown device 'gpu1'"), (["cuda:3"], "cuda:3"), (["cpu", "cpu", "cuda:0", "cuda:0"], "cuda:0")],
)
def test_cli_refuses_bad_devices_before_any_work(devices, message, tmp_path, capsys, cache):
    code = main(["eval", "--dataset", "demo", "--output", str(tmp_path / "new" / "out"), "--devices", *devices])
    err = capsys.readouterr().err
    assert code == 2 and "--devices" in err and message in err
    assert not (tmp_path / "new").exists() and not cache.exists()
