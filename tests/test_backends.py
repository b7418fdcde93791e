"""ONNX export and the ONNX Runtime / OpenVINO scorers (``ragkit.backends``) on a tiny model and
the demo corpus: the export scores like torch, in fp32 and int8."""

from __future__ import annotations

import numpy as np
import pytest

from ragkit import load_beir
from ragkit.backends import export_onnx, onnx_scorer
from ragkit.errors import RagkitError
from ragkit.profiling import Candidates, candidate_pairs
from ragkit.rerank import load_reranker, score_pairs


@pytest.fixture()
def sample(tiny_embedder_path, cache) -> Candidates:
    return candidate_pairs(load_beir("demo"), n_queries=4, k=6, embedder=tiny_embedder_path, device="cpu")


@pytest.fixture()
def model(spread_cross_encoder_path):
    return load_reranker(spread_cross_encoder_path, "cpu")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_export_scores_like_torch(model, sample, tmp_path, runtime):
    pairs = sample.flat_pairs()
    expected = score_pairs(model, pairs)
    score = onnx_scorer(export_onnx(model, tmp_path / "model.onnx"), model, runtime=runtime)
    assert np.abs(score(pairs, batch_size=5) - expected).max() < 1e-4
    int8 = onnx_scorer(export_onnx(model, tmp_path / "model-int8.onnx", int8=True), model, runtime=runtime)
    got = int8(pairs)
    assert got.shape == expected.shape and np.all((got > 0) & (got < 1))
    assert not (tmp_path / "model-int8.fp32.onnx").exists()
    with pytest.raises(RagkitError, match="runtime"):
        onnx_scorer(tmp_path / "model.onnx", model, runtime="tensorrt")
