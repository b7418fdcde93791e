"""Chroma index and BM25 first stage on the tiny embedder: persistence, reuse, interrupted
builds, chunks, the two query paths, client/server mode, and Chroma's default embedder guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from ragkit import HuggingFaceEmbeddingsLoader, ModelNotFoundError, RagkitError
from ragkit.errors import ConfigError
from ragkit.retrievers import (
    BM25Retriever,
    ChromaIndex,
    build_chroma_index,
    chroma_settings,
    embed_queries,
)

# Word counts differ from text to text, so no two texts embed alike even where a tokenizer
# maps unknown words to one token.
TEXTS = {
    "d1": "paris is the capital of france",
    "d2": "banana is a yellow fruit",
    "d3": "a cross encoder reads the query and the passage together to score them",
    "d4": "chroma is a vector store",
    "d5": "bm25 scores words",
    "d6": "the gene and the protein in the cell of the science model",
    "d7": "reranking",
}
QUERIES = ["capital of france", "yellow fruit", "vector store for embedding retrieval", "cell protein gene"]


def make_docs(texts: dict[str, str] = TEXTS) -> list[Document]:
    return [Document(text, metadata={"doc_id": doc_id, "title": doc_id.upper()}) for doc_id, text in texts.items()]


class CountingEmbeddings(Embeddings):
    """The tiny HuggingFaceEmbeddings, counting the texts it embeds as documents; optionally
    failing on the n-th call, as a crash or Ctrl-C part-way through a build would."""

    def __init__(self, inner: Embeddings, fail_on_call: int | None = None) -> None:
        self.inner = inner
        self.calls = 0
        self.texts = 0
        self.fail_on_call = fail_on_call

    def __getattr__(self, name: str):  # model_name, model_kwargs, encode_kwargs: the fingerprint reads them
        return getattr(self.inner, name)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def embedder(tiny_embedder_path):
    return HuggingFaceEmbeddingsLoader(tiny_embedder_path, model_kwargs={"device": "cpu"})


@pytest.fixture
def no_default_embedding_function(monkeypatch):
    """Make Chroma's own embedder (which downloads an ONNX model) raise if anything calls it."""
    from chromadb.api.types import DefaultEmbeddingFunction
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    # Chroma checks an embedding function's signature, so the stand-ins keep it.
    def forbidden_call(self, input):
        raise AssertionError("Chroma's default embedding function was invoked")

    def forbidden_download(self):
        raise AssertionError("Chroma's default embedding function was invoked (model download)")

    for cls in (DefaultEmbeddingFunction, ONNXMiniLM_L6_V2):
        monkeypatch.setattr(cls, "__call__", forbidden_call)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "_download_model_if_not_exists", forbidden_download)
    with pytest.raises(AssertionError, match="default embedding function"):
        DefaultEmbeddingFunction()(["the guard is armed"])


def ids_in(index: ChromaIndex) -> list[str]:
    return sorted(index.store.get(include=[])["ids"])


def test_index_is_cosine_persistent_and_keyed_by_doc_ids(embedder, tmp_path):
    index = build_chroma_index(make_docs(), embedder, show_progress=False)
    assert index.count == len(TEXTS)
    assert ids_in(index) == sorted(TEXTS)
    assert index.store._collection.configuration["hnsw"]["space"] == "cosine"
    assert index.persist_directory == tmp_path / "cache" / "chroma" / index.fingerprint
    assert index.embedder_name == embedder.model_name and index.revision == "local"
    hit = index.store.get(ids=["d1"])
    assert hit["metadatas"][0] == {"doc_id": "d1", "title": "D1"}


def test_second_build_reuses_the_index_without_embedding(embedder):
    first = CountingEmbeddings(embedder)
    built = build_chroma_index(make_docs(), first, show_progress=False)
    assert first.texts == len(TEXTS)

    second = CountingEmbeddings(embedder)
    reused = build_chroma_index(make_docs(), second, show_progress=False)
    assert second.calls == 0
    assert reused.fingerprint == built.fingerprint and reused.count == len(TEXTS)
    assert reused.search(QUERIES, 3) == built.search(QUERIES, 3)


def test_fingerprint_follows_what_changes_the_vectors(tiny_embedder_path):
    docs = make_docs()

    def fingerprint(documents=docs, **kwargs) -> str:
        chunk_size = kwargs.pop("chunk_size", None)
        emb = HuggingFaceEmbeddingsLoader(tiny_embedder_path, model_kwargs={"device": "cpu"}, **kwargs)
        return build_chroma_index(
            documents, emb, chunk_size=chunk_size, chunk_overlap=0, show_progress=False
        ).fingerprint

    base = fingerprint()
    assert fingerprint(list(reversed(docs))) == base  # order of the corpus does not matter
    assert fingerprint(encode_kwargs={"batch_size": 2}) == base  # speed, not vectors
    changed_text = make_docs({**TEXTS, "d7": "reranking again"})
    assert (
        len(
            {
                base,
                fingerprint(changed_text),
                fingerprint(encode_kwargs={"normalize_embeddings": True}),
                fingerprint(chunk_size=20),
            }
        )
        == 4
    )


def test_building_twice_or_rebuilding_never_duplicates(embedder):
    docs = make_docs()
    for _ in range(2):
        assert build_chroma_index(docs, embedder, show_progress=False).count == len(docs)
    assert build_chroma_index(docs, embedder, rebuild=True, show_progress=False).count == len(docs)
    chunked = build_chroma_index(docs, embedder, chunk_size=20, chunk_overlap=0, show_progress=False)
    n_chunks = chunked.count
    assert n_chunks > len(docs)
    assert build_chroma_index(docs, embedder, chunk_size=20, chunk_overlap=0, show_progress=False).count == n_chunks


def test_interrupted_build_is_detected_and_completed(embedder):
    docs = make_docs()
    crashing = CountingEmbeddings(embedder, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        build_chroma_index(docs, crashing, batch_size=2, show_progress=False)
    assert crashing.texts == 4  # two batches of two made it in before the interruption

    resumed = CountingEmbeddings(embedder)
    index = build_chroma_index(docs, resumed, batch_size=2, show_progress=False)
    assert resumed.texts == len(docs) - 4  # only the missing documents were embedded
    assert index.count == len(docs) and ids_in(index) == sorted(TEXTS)
    marker = index.client.get_collection(index.collection_name, embedding_function=None).metadata
    assert marker["ragkit_complete"] is True and marker["ragkit_expected_count"] == len(docs)
    assert [len(hits) for hits in index.search(QUERIES, len(docs))] == [len(docs)] * len(QUERIES)


def test_index_missing_vectors_on_open_is_repaired_not_used(embedder):
    docs = make_docs()
    index = build_chroma_index(docs, embedder, show_progress=False)
    index.store._collection.delete(ids=["d3"])  # marker says complete, the count says otherwise

    counting = CountingEmbeddings(embedder)
    repaired = build_chroma_index(docs, counting, show_progress=False)
    assert counting.texts == 1
    assert repaired.count == len(docs)

    # Stopped after the last add but before the marker was written: checked, marked, not re-embedded.
    collection = repaired.client.get_collection(repaired.collection_name, embedding_function=None)
    collection.modify(metadata={**collection.metadata, "ragkit_complete": False})
    again = CountingEmbeddings(embedder)
    build_chroma_index(docs, again, show_progress=False)
    assert again.calls == 0
    assert (
        repaired.client.get_collection(repaired.collection_name, embedding_function=None).metadata["ragkit_complete"]
        is True
    )


def test_collection_name_holding_another_corpus_is_an_error_unless_rebuilt(embedder, tmp_path):
    where = {"persist_directory": tmp_path / "db", "collection_name": "my-index"}
    build_chroma_index(make_docs(), embedder, show_progress=False, **where)
    other = make_docs({"x1": "a different corpus", "x2": "with two documents in it"})
    with pytest.raises(RagkitError, match="holds another index"):
        build_chroma_index(other, embedder, show_progress=False, **where)
    rebuilt = build_chroma_index(other, embedder, rebuild=True, show_progress=False, **where)
    assert ids_in(rebuilt) == ["x1", "x2"]


def test_chunk_hits_map_to_documents_with_their_best_chunk_score(embedder):
    docs = make_docs()
    index = build_chroma_index(docs, embedder, chunk_size=20, chunk_overlap=0, show_progress=False)
    assert "d3#0" in ids_in(index) and "d3" not in ids_in(index)

    for query, hits in zip(QUERIES, index.search(QUERIES, len(docs))):
        # Reference: every chunk's score, reduced to the best per document.
        best: dict[str, float] = {}
        for chunk, distance in index.store.similarity_search_with_score(query, k=index.count):
            best[chunk.metadata["doc_id"]] = max(best.get(chunk.metadata["doc_id"], -2.0), 1 - distance)
        assert [d for d, _ in hits] == sorted(best, key=lambda d: -best[d])  # every doc, once, best first
        assert np.allclose([s for _, s in hits], [best[d] for d, _ in hits], atol=1e-5)


def test_search_reads_only_distances_and_never_counts(embedder):
    """An HNSW search asks Chroma for distances alone (a hit's id names its document, also a
    chunk's: ``<doc_id>#<n>``, with doc ids that hold '#' themselves) and never counts the
    collection again; its hits are those the stored metadata name."""
    texts = {f"{doc_id}#x" if doc_id in ("d3", "d6") else doc_id: text for doc_id, text in TEXTS.items()}
    for chunk_size in (None, 20):
        index = build_chroma_index(
            make_docs(texts), embedder, chunk_size=chunk_size, chunk_overlap=0, show_progress=False
        )
        collection = index._collection
        calls: list[list[str]] = []
        counts: list[int] = []
        query, count = collection.query, collection.count

        def spy_query(*args, query=query, calls=calls, **kwargs):
            calls.append(list(kwargs.get("include", [])))
            return query(*args, **kwargs)

        def spy_count(count=count, counts=counts):
            counts.append(1)
            return count()

        collection.query, collection.count = spy_query, spy_count
        hits = index.search(QUERIES, len(texts), exact=False)
        assert calls and all(include == ["distances"] for include in calls) and not counts
        collection.query, collection.count = query, count
        # Reference: the doc ids Chroma stored in each hit's metadata, best chunk per document.
        found = collection.query(
            query_embeddings=index.embed_queries(QUERIES), n_results=index.count, include=["metadatas", "distances"]
        )
        for got, metadatas, distances in zip(hits, found["metadatas"], found["distances"]):
            best: dict[str, float] = {}
            for metadata, distance in zip(metadatas, distances):
                best.setdefault(metadata["doc_id"], 1 - distance)
            assert [d for d, _ in got] == list(best) and {d for d, _ in got} == set(texts)
            assert np.allclose([s for _, s in got], list(best.values()), atol=1e-6)


def test_retriever_and_batched_search_agree(embedder):
    for chunk_size in (None, 20):
        index = build_chroma_index(make_docs(), embedder, chunk_size=chunk_size, chunk_overlap=0, show_progress=False)
        batched = index.search(QUERIES, 3)
        for query, hits in zip(QUERIES, batched):
            found = index.as_retriever(k=3 if chunk_size is None else index.count).invoke(query)
            assert all(isinstance(d.metadata["score"], float) for d in found)
            if chunk_size is None:
                assert [d.metadata["doc_id"] for d in found] == [d for d, _ in hits]
                assert np.allclose([d.metadata["score"] for d in found], [s for _, s in hits], atol=1e-5)
            else:  # chunks best first: a document first appears at its best chunk
                assert list(dict.fromkeys(d.metadata["doc_id"] for d in found))[:3] == [d for d, _ in hits]


def test_batched_query_embeddings_equal_embed_query_with_instruction(tiny_embedder_path):
    plain = HuggingFaceEmbeddingsLoader(tiny_embedder_path, model_kwargs={"device": "cpu"})
    instructed = HuggingFaceEmbeddingsLoader(
        tiny_embedder_path, model_kwargs={"device": "cpu"}, query_instruction="Represent this sentence for searching: "
    )
    for emb in (plain, instructed):
        batch = embed_queries(emb, QUERIES)
        single = np.array([emb.embed_query(q) for q in QUERIES])
        assert batch.shape == single.shape and np.allclose(batch, single, atol=1e-5)
    # The instruction reaches the batched path (documents are embedded without it).
    assert not np.allclose(embed_queries(instructed, QUERIES), embed_queries(plain, QUERIES), atol=1e-3)
    index = build_chroma_index(make_docs(), instructed, show_progress=False)
    assert np.allclose(index.embed_queries(QUERIES[:1])[0], instructed.embed_query(QUERIES[0]), atol=1e-5)


def test_k_bounds_and_search_by_vector(embedder):
    index = build_chroma_index(make_docs(), embedder, show_progress=False)
    assert [len(h) for h in index.search(QUERIES, 100)] == [len(TEXTS)] * len(QUERIES)
    vectors = index.embed_queries(QUERIES)
    assert index.search_by_vector(vectors, 2) == index.search(QUERIES, 2)
    for bad in (0, -1, 1.5):
        with pytest.raises(RagkitError, match="k must be"):
            index.search(QUERIES, bad)
        with pytest.raises(RagkitError, match="k must be"):
            index.as_retriever(k=bad)


def test_clear_errors_for_bad_input(embedder, tiny_embedder_path, monkeypatch):
    with pytest.raises(RagkitError, match="No documents"):
        build_chroma_index([], embedder)
    with pytest.raises(RagkitError, match="Duplicate document ids"):
        build_chroma_index(make_docs() + make_docs()[:1], embedder)
    with pytest.raises(RagkitError, match="has no id"):
        build_chroma_index([Document("no id here")], embedder)
    with pytest.raises(RagkitError, match=r"chunk_overlap \(10\) must be less than chunk_size \(10\)"):
        build_chroma_index(make_docs(), embedder, chunk_size=10, chunk_overlap=10)
    with pytest.raises(RagkitError, match="not both"):
        build_chroma_index(make_docs(), embedder, client=object(), persist_directory="x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-embedder"):
        build_chroma_index(make_docs(), "no-such-org/no-such-embedder")


def test_bad_parameter_values_are_config_errors(embedder):
    # ConfigError is a RagkitError and a ValueError: `except RagkitError` and `except ValueError` both catch them.
    index = build_chroma_index(make_docs(), embedder, show_progress=False)
    for call in (
        lambda: index.search(QUERIES, 0),
        lambda: index.as_retriever(k=-1),
        lambda: build_chroma_index(make_docs(), embedder, batch_size=0),
        lambda: build_chroma_index(make_docs(), embedder, chunk_size=10, chunk_overlap=10),
        lambda: build_chroma_index([], embedder),
        lambda: build_chroma_index(make_docs(), embedder, client=object(), persist_directory="x"),
        lambda: BM25Retriever.from_documents(make_docs(), k=0),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, RagkitError)


def test_chroma_default_embedding_function_is_never_invoked(embedder, no_default_embedding_function):
    for chunk_size in (None, 20):
        index = build_chroma_index(make_docs(), embedder, chunk_size=chunk_size, chunk_overlap=0, show_progress=False)
        index = build_chroma_index(make_docs(), embedder, chunk_size=chunk_size, chunk_overlap=0, show_progress=False)
        index.search(QUERIES, 3)
        index.as_retriever(k=2).invoke(QUERIES[0])
        index.store.similarity_search(QUERIES[1], k=2)
        index.store.add_documents([Document("one more", metadata={"doc_id": "extra"})], ids=["extra"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_address(tmp_path):
    """A real ``chroma run`` on 127.0.0.1 with a temporary path, as (host, port); stopped afterwards."""
    port = _free_port()
    chroma = Path(sys.executable).with_name("chroma")
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server-db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port, settings=chroma_settings()).heartbeat()
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        f"chroma run did not answer within 30 s:\n{(tmp_path / 'chroma.log').read_text()}"
                    ) from exc
                time.sleep(0.25)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def chroma_server(chroma_address):
    """A client of the ``chroma run`` server."""
    host, port = chroma_address
    return chromadb.HttpClient(host=host, port=port, settings=chroma_settings())


def test_client_server_mode_builds_reuses_and_queries(chroma_server, embedder, no_default_embedding_function):
    counting = CountingEmbeddings(embedder)
    index = build_chroma_index(make_docs(), counting, client=chroma_server, show_progress=False)
    assert counting.texts == len(TEXTS) and index.persist_directory is None
    assert index.search(["capital of france"], 3)[0][0][0] in TEXTS
    assert len(index.as_retriever(k=2).invoke("yellow fruit")) == 2

    again = CountingEmbeddings(embedder)
    reused = build_chroma_index(make_docs(), again, client=chroma_server, show_progress=False)
    assert again.calls == 0 and reused.count == len(TEXTS)
    assert reused.search(QUERIES, 3) == index.search(QUERIES, 3)
    assert [c.name for c in chroma_server.list_collections()] == [index.collection_name]


def test_bm25_retriever_invoke_and_search_agree():
    bm25 = BM25Retriever.from_documents(make_docs(), k=3)
    batched = bm25.search(QUERIES, 3)
    for query, hits in zip(QUERIES, batched):
        found = bm25.invoke(query)
        assert [(d.metadata["doc_id"], d.metadata["score"]) for d in found] == hits
        assert all(d.page_content == TEXTS[d.metadata["doc_id"]] for d in found)
    assert batched[0][0][0] == "d1" and batched[1][0][0] == "d2"
    assert len(bm25.as_retriever(k=1).invoke("the capital of france")) == 1
    assert bm25.fingerprint == BM25Retriever.from_documents(list(reversed(make_docs()))).fingerprint
    with pytest.raises(RagkitError, match="k must be"):
        bm25.search(QUERIES, 0)


class RandomEmbeddings(Embeddings):
    """64 random dimensions per text: instant, and hard enough for HNSW that its default search misses."""

    model_name = "random-64"

    def _vector(self, text: str) -> list[float]:
        vector = np.random.default_rng(int(text.split()[-1])).standard_normal(64)
        return (vector / np.linalg.norm(vector)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def test_search_returns_the_exact_top_hits_despite_approximate_hnsw():
    # Chroma's default HNSW search breadth (ef_search=100) misses exact neighbours on an index
    # built in batches (0.4% of SciFact's top 10 with MiniLM, 2% here); ragkit's
    # setting must find them all, or its full-split numbers would not be the published ones.
    index = build_chroma_index(
        make_docs({f"d{i}": f"doc {i}" for i in range(3000)}), RandomEmbeddings(), show_progress=False
    )
    queries = [f"query {i}" for i in range(10_000, 10_060)]
    stored = index.store.get(include=["embeddings"])
    similarity = index.embed_queries(queries) @ np.asarray(stored["embeddings"]).T
    for row, hits in zip(similarity, index.search(queries, k=100)):
        np.testing.assert_allclose([score for _, score in hits[:10]], np.sort(row)[::-1][:10], atol=1e-5)


def test_any_number_of_queries_is_searched_in_calls_chroma_accepts():
    # Chroma reads all the hits of one query call in one SQLite statement, and SQLite refuses
    # one of more than 32,766 variables: 400 queries at k=100 (and, on passages, the deeper
    # fetch per query) must come back as if searched a few at a time.
    whole = build_chroma_index(
        make_docs({f"d{i}": f"doc {i}" for i in range(150)}), RandomEmbeddings(), show_progress=False
    )
    passages = build_chroma_index(
        make_docs({f"d{i}": f"{1000 + 2 * i} {1001 + 2 * i}" for i in range(150)}),
        RandomEmbeddings(),
        chunk_size=4,
        chunk_overlap=0,
        show_progress=False,
    )
    assert passages.count > whole.count  # several passages per document
    vectors = whole.embed_queries([f"query {i}" for i in range(10_000, 10_400)])
    for index in (whole, passages):
        hits = index.search_by_vector(vectors, 100)
        assert hits == [h for i in range(0, 400, 50) for h in index.search_by_vector(vectors[i : i + 50], 100)]
        assert [len(h) for h in hits] == [100] * 400
    with pytest.raises(ConfigError, match="deeper than one Chroma query"):
        whole.search_by_vector(vectors[:1], 40_000)


def test_cli_eval_keeps_its_dense_index_on_a_chroma_server(chroma_address, tiny_embedder_path, cache, tmp_path):
    from ragkit.cli import main

    host, port = chroma_address
    args = ["eval", "--dataset", "demo", "--embedders", tiny_embedder_path, "--rerankers", "none", "--queries", "0",
            "--latency-queries", "0", "--chroma-host", host, "--chroma-port", str(port),
            "--output", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 0
    assert not (cache / "chroma").exists()  # nothing embedded into ragkit's own cache
    client = chromadb.HttpClient(host=host, port=port, settings=chroma_settings())
    [collection] = client.list_collections()
    assert collection.name.startswith("ragkit-") and collection.count() == 40


def test_an_unreachable_chroma_server_is_a_clear_error_before_any_work():
    from ragkit.retrievers import connect_chroma

    port = _free_port()  # nothing listens there
    with pytest.raises(ConfigError, match=f"No Chroma server answers at 127.0.0.1:{port}.*chroma run"):
        connect_chroma("127.0.0.1", port)
    with pytest.raises(ConfigError, match="--chroma-port must be a TCP port"):
        connect_chroma("127.0.0.1", 70000)
