"""Scoring and embedding in sentence-transformers' multi-process pool (one worker process per
device), on tiny random-weight models and CPU workers: the same numbers as one process, in
the input order, no process left behind, and device lists checked before any work.

The workers get the same batches as the single-process path and, by default, as many torch
threads as this process, so they run the same kernels on the same inputs and sum in the same
order: the results are asserted equal to the bit, not to a tolerance. (With another thread
count a CPU splits its sums differently, and the last digits of a score can change.)
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch
from sentence_transformers.base.model import BaseModel

from ragkit import HuggingFaceEmbeddingsLoader
from ragkit.errors import ConfigError
from ragkit.loaders import check_devices, embed_documents, multi_process_pool
from ragkit.rerank import load_reranker, score_pairs, token_lengths

DEVICES = ["cpu", "cpu"]
QUERIES = ["which city is the capital of france", "what is reranking", "bm25"]
PASSAGES = [
    "paris is the capital of france",
    "banana is a yellow fruit",
    "the cross encoder reads the query and the passage together",
    "chroma is a vector store for embeddings",
    "bm25 scores words",
    "the river and the city",  # as many characters as the next: a tie in the length sort
    "the gene and the cell!",
    "the gene and the protein in the cell " * 40,  # longer than the tiny models' 128 tokens
    "score rank",
    "a",
]
PAIRS = [(q, p) for q in QUERIES for p in PASSAGES]


@pytest.fixture(scope="module")
def cross_encoder(spread_cross_encoder_path):
    return load_reranker(spread_cross_encoder_path, "cpu")


@pytest.fixture(scope="module")
def cross_encoder_pool(cross_encoder):
    """One pool for the module's scoring tests: starting workers costs seconds."""
    with multi_process_pool(cross_encoder, DEVICES) as pool:
        yield pool


@pytest.fixture(scope="module")
def embedder(tiny_embedder_path):
    # Small batches, so the texts make many chunks for the two workers; normalised vectors,
    # so encode_kwargs are seen to reach the workers.
    return HuggingFaceEmbeddingsLoader(
        tiny_embedder_path,
        model_kwargs={"device": "cpu"},
        encode_kwargs={"batch_size": 3, "normalize_embeddings": True},
    )


@pytest.fixture(scope="module")
def embedder_pool(embedder):
    with multi_process_pool(embedder, DEVICES) as pool:
        yield pool


@pytest.fixture()
def started(monkeypatch) -> list[dict]:
    """Each pool sentence-transformers starts (a spy: the real method still runs), with its
    workers' pids, and their exit codes as they were when the pool was stopped."""
    pools: list[dict] = []
    start, stop = BaseModel.start_multi_process_pool, BaseModel.stop_multi_process_pool

    def spy_start(self, target_devices=None):
        pool = start(self, target_devices)
        pools.append({"devices": target_devices, "pids": [p.pid for p in pool["processes"]]})
        return pool

    def spy_stop(pool):
        for record in pools:
            if record["pids"] == [p.pid for p in pool["processes"]]:
                record["exitcodes"] = [p.exitcode for p in pool["processes"]]
        return stop(pool)

    monkeypatch.setattr(BaseModel, "start_multi_process_pool", spy_start)
    monkeypatch.setattr(BaseModel, "stop_multi_process_pool", staticmethod(spy_stop))
    return pools


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "options",
    [{}, {"raw": True}, {"batch_size": 4, "max_length": 16}, {"batch_size": 1}],
    ids=["default", "raw", "batch4-len16", "batch1"],
)
def test_pool_scores_equal_single_process_to_the_bit(cross_encoder, cross_encoder_pool, options):
    single = score_pairs(cross_encoder, PAIRS, **options)
    pooled = score_pairs(cross_encoder, PAIRS, devices=DEVICES, **options)
    assert pooled.dtype == np.float32 and pooled.shape == (len(PAIRS),)
    np.testing.assert_array_equal(pooled, single)
    assert len(set(single.tolist())) > len(PAIRS) // 2  # the scores differ, so the order is tested


def test_pool_scores_come_back_in_the_input_order(cross_encoder, cross_encoder_pool):
    permutation = np.random.default_rng(0).permutation(len(PAIRS))
    shuffled = score_pairs(cross_encoder, [PAIRS[i] for i in permutation], devices=DEVICES, batch_size=4)
    # Shuffling only reorders pairs of equal length, which share a padded length whichever batch
    # they land in, but a pair can land in a batch of another size (the last one is short), and
    # BLAS may block a matrix product of another shape differently: float32 sums taken in another
    # order differ by a few units in the last place per layer (2 of 30 scores moved by a relative
    # 1.3e-6 on an AVX2 CPU without AVX-512), so equal up to a relative 1e-5.
    np.testing.assert_allclose(
        shuffled, score_pairs(cross_encoder, PAIRS, batch_size=4)[permutation], rtol=1e-5, atol=1e-6
    )
    # Each pair scored alone, padded to nothing: the same scores to float rounding, whatever
    # batch the pool put it in. Alone it is a matrix product of another shape again, so the same
    # relative 1e-5 (on the AVX2 CPU one of 30 scores moved by a relative 2.4e-6).
    alone = np.array([score_pairs(cross_encoder, [pair])[0] for pair in PAIRS])
    np.testing.assert_allclose(score_pairs(cross_encoder, PAIRS, devices=DEVICES), alone, rtol=1e-5, atol=1e-6)


def test_an_open_pool_is_reused_not_restarted(cross_encoder, cross_encoder_pool, started):
    workers = {p.pid for p in cross_encoder_pool["processes"]}
    for _ in range(3):
        score_pairs(cross_encoder, PAIRS[:5], devices=DEVICES)
    assert started == []
    assert workers <= {p.pid for p in multiprocessing.active_children()}
    with multi_process_pool(cross_encoder, DEVICES) as inner:  # nested: the same pool
        assert inner is cross_encoder_pool
    assert all(p.is_alive() for p in cross_encoder_pool["processes"])


def test_a_nested_pool_cannot_change_the_thread_count(cross_encoder, cross_encoder_pool):
    with pytest.raises(ConfigError, match="already open"):
        with multi_process_pool(cross_encoder, DEVICES, threads=torch.get_num_threads() + 1):
            pass


def test_a_call_without_an_open_pool_starts_and_ends_its_own(tiny_cross_encoder_path, started):
    model = load_reranker(tiny_cross_encoder_path, "cpu")
    before = {p.pid for p in multiprocessing.active_children()}
    scores = score_pairs(model, PAIRS, devices=DEVICES, batch_size=4)
    np.testing.assert_array_equal(scores, score_pairs(model, PAIRS, batch_size=4))
    assert [record["devices"] for record in started] == [DEVICES]
    pids = started[0]["pids"]
    assert len(pids) == 2 and not set(pids) & before
    # Ended by their stop signal (exit code 0), not killed: a killed worker leaves a named
    # semaphore behind, which Python reports as leaked when the program ends.
    assert started[0]["exitcodes"] == [0, 0]
    assert {p.pid for p in multiprocessing.active_children()} == before
    assert all(_gone(pid) for pid in pids)
    assert str(model.client.device) == "cpu"


def test_an_error_ends_the_pool_at_once_and_later_calls_start_their_own(tiny_cross_encoder_path, started):
    model = load_reranker(tiny_cross_encoder_path, "cpu")
    with multi_process_pool(model, ["cpu"]) as outer:
        first = [p.pid for p in outer["processes"]]
        with pytest.raises(KeyError):
            with multi_process_pool(model, ["cpu"]):  # the same pool, nested
                raise KeyError("failure inside the block")
        # Ended although the outer block is open: work of a failed call could still be queued.
        assert all(_gone(pid) for pid in first)
        np.testing.assert_array_equal(score_pairs(model, PAIRS, devices=["cpu"]), score_pairs(model, PAIRS))
    assert [record["pids"] for record in started][0] == first and len(started) == 2
    assert not {p.pid for p in multiprocessing.active_children()} & {pid for r in started for pid in r["pids"]}


def test_nothing_to_score_starts_no_process(cross_encoder, started):
    assert score_pairs(cross_encoder, [], devices=["cpu", "cpu", "cpu"]).shape == (0,)
    assert started == []


# ----------------------------------------------------------------------------- embedding

TEXTS = [passage.replace("the", "the\nthe", 1) for passage in PASSAGES] * 2  # newlines, repeats, ties


def test_pool_embeddings_equal_single_process_and_langchain_to_the_bit(embedder, embedder_pool):
    pooled = embed_documents(embedder, TEXTS, devices=DEVICES)
    single = embed_documents(embedder, TEXTS)
    assert pooled.dtype == np.float32 and pooled.shape == (len(TEXTS), 32)
    np.testing.assert_array_equal(pooled, single)
    # The batches SentenceTransformer.encode forms, so also what LangChain's embed_documents
    # (the index build's path) returns, normalisation from encode_kwargs included.
    np.testing.assert_array_equal(single, np.array(embedder.embed_documents(TEXTS), dtype=np.float32))
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-6)


def test_pool_embeddings_come_back_in_the_input_order(embedder, embedder_pool):
    permutation = np.random.default_rng(1).permutation(len(TEXTS))
    shuffled = embed_documents(embedder, [TEXTS[i] for i in permutation], devices=DEVICES, batch_size=2)
    alone = np.array([embed_documents(embedder, [TEXTS[i]])[0] for i in permutation])
    np.testing.assert_allclose(shuffled, alone, atol=1e-6)
    # ... and no two different texts are that close, so a row in the wrong place would show.
    distinct = embed_documents(embedder, list(dict.fromkeys(TEXTS)))
    assert min(np.abs(a - b).max() for i, a in enumerate(distinct) for b in distinct[i + 1 :]) > 1e-3


def test_embedding_nothing_starts_no_process(embedder, started):
    assert embed_documents(embedder, [], devices=DEVICES).shape == (0, 32)
    assert started == []


# ----------------------------------------------------------------------------- device lists


def test_device_lists_that_work():
    assert check_devices(["cpu", "cpu", "cpu"]) == ["cpu", "cpu", "cpu"]
    assert check_devices(("cpu",)) == ["cpu"]
    assert check_devices([torch.device("cpu")]) == ["cpu"]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([], "devices: the list is empty"),
        ("cpu,cpu", "expected a list of devices"),
        (None, "expected a list of devices"),
        (["cpu", "gpu0"], "unknown device 'gpu0'"),
        (["cpu", "auto"], "unknown device 'auto'"),
        (["cuda:0", "cuda:1", "cuda:0"], "cuda:0 appears more than once"),
        (["cuda", "cuda:0"], "cuda:0 appears more than once"),  # "cuda" is cuda:0
    ],
)
def test_bad_device_lists_are_refused_with_the_fix(devices, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_devices(devices)
    assert "'cpu'" in str(error.value) or "leave devices unset" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_cuda_without_cuda_says_so_and_suggests_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        check_devices(["cuda:3"], option="--devices")
    message = str(error.value)
    assert message.startswith("--devices: cuda:3")
    assert "torch.cuda.is_available() is False" in message and "['cpu', 'cpu']" in message


def test_a_gpu_this_machine_lacks_names_the_ones_it_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_devices(["cuda", "cuda:1"]) == ["cuda:0", "cuda:1"]
    with pytest.raises(
        ConfigError, match=r"cuda:3 asked for, but this machine has 2 CUDA device\(s\): use cuda:0..cuda:1"
    ):
        check_devices(["cuda:0", "cuda:3"])


def test_devices_are_checked_before_any_work(cross_encoder, embedder, started):
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        score_pairs(cross_encoder, PAIRS, devices=["gpu"])
    with pytest.raises(ConfigError, match="the list is empty"):
        score_pairs(cross_encoder, [], devices=[])
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        embed_documents(embedder, TEXTS, devices=["cpu", "gpu"])
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        with multi_process_pool(cross_encoder, DEVICES, threads=0):
            pass
    assert started == []
    assert token_lengths(cross_encoder, PAIRS[:1]).shape == (1,)  # the model is untouched
