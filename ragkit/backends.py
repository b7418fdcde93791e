"""Other runtimes for a cross-encoder, apart from the models: an ONNX export, and scorers that
run it with ONNX Runtime or OpenVINO on a CPU.

sentence-transformers keeps its runtimes apart from its models (``sentence_transformers.backend``),
and so does ragkit. What is here needs only ``onnx``, ``onnxruntime`` and ``openvino`` (ragkit's
``backends`` extra), each imported where it is used; :func:`export_onnx` says why not
sentence-transformers' own ``backend=``. A scorer batches exactly as
:func:`ragkit.rerank.score_pairs` does and returns the same scale (the sigmoid of the logit), so
its scores can be compared with torch's pair by pair; ``benchmarks/rerank_cost.py`` does so, for
speed and nDCG@10.

Example::

    from ragkit.backends import export_onnx, onnx_scorer
    from ragkit.rerank import load_reranker

    model = load_reranker("cross-encoder/ms-marco-MiniLM-L-12-v2", "cpu")
    score = onnx_scorer(export_onnx(model, "/tmp/l12-int8.onnx", int8=True), model, runtime="openvino")
    score([("capital of France?", "Paris is the capital of France.")])  # array([0.99...], dtype=float32)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragkit.errors import RagkitError
from ragkit.loaders import predict_lock
from ragkit.rerank import Pair, _sentence_transformers_model, token_lengths
from ragkit.settings import rerank_batch_size


def export_onnx(model: Any, path: str | Path, *, int8: bool = False, opset: int = 17) -> Path:
    """Write the cross-encoder as an ONNX graph (dynamic batch and length), optionally with
    onnxruntime's dynamic int8 quantization of its weights, for :func:`onnx_scorer`.

    sentence-transformers' own ``backend="onnx"`` / ``"openvino"`` need ``optimum-onnx`` /
    ``optimum-intel``, whose releases do not install beside transformers 5.2x; this export
    needs only ``onnx`` and ``onnxruntime`` (ragkit's ``backends`` extra).

    Example::

        export_onnx(model, "/tmp/l12.onnx", int8=True)  # PosixPath('/tmp/l12.onnx')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = _sentence_transformers_model(model).model
    if network.dtype != torch.float32 or network.device.type != "cpu":
        raise RagkitError("Export a float32 model loaded on the CPU (model_kwargs={'device': 'cpu'}).")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dummy = torch.ones((2, 8), dtype=torch.long)
    # One padded row, so that the traced graph is the one that masks padding.
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    fp32 = path.with_name(path.stem + ".fp32.onnx") if int8 else path
    # The TorchScript exporter: the dynamo one needs onnxscript, which ragkit does not install.
    # Its tracer warns about Python-side branches in the attention mask code; the export is
    # checked against torch's scores instead (tests/test_backends.py).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index", category=UserWarning)
        torch.onnx.export(
            network,
            (dummy, mask, torch.zeros_like(dummy)),
            str(fp32),
            input_names=names,
            output_names=["logits"],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
        )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
        fp32.unlink()
    return path


def onnx_scorer(path: str | Path, model: Any, *, runtime: str = "onnxruntime") -> Callable[..., np.ndarray]:
    """A ``score(pairs, *, batch_size=None, max_length=None)`` function that runs an ONNX export
    of ``model`` with onnxruntime or OpenVINO (CPU), batching exactly as ``score_pairs`` does
    (longest first by token length) and returning the sigmoid of the logit.

    Example::

        score = onnx_scorer(export_onnx(model, "/tmp/l12.onnx"), model)
        score([("capital of France?", "Paris is the capital of France.")])  # array([0.999...], dtype=float32)
    """
    cross_encoder = _sentence_transformers_model(model)
    tokenizer = cross_encoder.tokenizer
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}

        def forward(features: dict[str, np.ndarray]) -> np.ndarray:
            return session.run(None, {k: v for k, v in features.items() if k in inputs})[0]
    elif runtime == "openvino":
        import openvino as ov

        # OpenVINO computes in bf16 by default on CPUs that have it; f32 keeps the model's
        # precision, so a speed-up is never bought with silently lower precision.
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        inputs = {i.get_any_name() for i in compiled.inputs}

        def forward(features: dict[str, np.ndarray]) -> np.ndarray:
            return compiled({k: v for k, v in features.items() if k in inputs})[compiled.output(0)]
    else:
        raise RagkitError(f"Unknown runtime {runtime!r}: use 'onnxruntime' or 'openvino'.")

    def score(pairs: Sequence[Pair], *, batch_size: int | None = None, max_length: int | None = None) -> np.ndarray:
        length = max_length or int(cross_encoder.max_seq_length)
        batch_size = rerank_batch_size("cpu") if batch_size is None else batch_size
        order = np.argsort(-token_lengths(model, pairs, length), kind="stable")
        logits = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # The tokenizer is the shared model's: its padding and truncation settings are state
            # that another thread scoring with the same model would otherwise change mid-call.
            with predict_lock(cross_encoder):
                features = tokenizer(
                    [pairs[i][0] for i in batch],
                    [pairs[i][1] for i in batch],
                    padding=True,
                    truncation="longest_first",
                    max_length=length,
                    return_tensors="np",
                )
            logits[batch] = np.asarray(forward({k: v.astype(np.int64) for k, v in features.items()})).reshape(-1)
        return (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    return score


__all__ = ["export_onnx", "onnx_scorer"]
