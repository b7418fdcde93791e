"""Reranking on tiny cross-encoders: the design's LangChain pipeline, score keeping, the score
scale, per-call max_length, truncation counting, and plain transformers == LangChain."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.documents import Document
from pydantic import ValidationError

from ragkit import HuggingFaceRerankerLoader, ModelNotFoundError, RagkitError
from ragkit.errors import ConfigError
from ragkit.rerank import (
    ScoredCrossEncoderReranker,
    count_truncated,
    rerank,
    reranking_retriever,
    score_pairs,
    token_lengths,
    truncation_mask,
)
from ragkit.retrievers import BM25Retriever, build_chroma_index
from ragkit.settings import rerank_batch_size

QUERY = "which city is the capital of france"
# Word counts differ from passage to passage, so no two pairs tokenize alike even where a
# tokenizer maps unknown words to one token.
PASSAGES = [
    "paris is the capital of france",
    "banana is a yellow fruit",
    "the cross encoder reads the query and the passage together",
    "chroma is a vector store for embeddings",
    "bm25 scores words",
    "the gene and the protein in the cell " * 40,  # longer than the tiny models' 128 tokens
]
LONG = len(PASSAGES) - 1


@pytest.fixture
def model(spread_cross_encoder_path):
    return HuggingFaceRerankerLoader(spread_cross_encoder_path, model_kwargs={"device": "cpu"})


def docs() -> list[Document]:
    return [Document(p, metadata={"doc_id": f"d{i}"}) for i, p in enumerate(PASSAGES)]


def test_design_pipeline_runs_with_langchain_1_imports(
    tiny_cross_encoder_path, tiny_embedder_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(tmp_path))
    index = build_chroma_index(docs(), tiny_embedder_path, show_progress=False)
    base = index.as_retriever(k=4)
    compressor = CrossEncoderReranker(model=HuggingFaceRerankerLoader(tiny_cross_encoder_path), top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    found = retriever.invoke(QUERY)
    candidates = [d.metadata["doc_id"] for d in base.invoke(QUERY)]
    assert len(candidates) == 4 and len(found) == 2
    assert {d.metadata["doc_id"] for d in found} <= set(candidates)


def test_scored_reranker_keeps_sorted_scores_and_leaves_inputs_alone(model):
    inputs = docs()
    before = [dict(d.metadata) for d in inputs]
    out = ScoredCrossEncoderReranker(model=model, top_n=4).compress_documents(inputs, QUERY)
    assert len(out) == 4
    scores = [d.metadata["relevance_score"] for d in out]
    assert all(isinstance(s, float) and 0 < s < 1 for s in scores)
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    assert [d.metadata for d in inputs] == before
    # Same choice and order as LangChain's own CrossEncoderReranker, which drops the scores.
    plain = CrossEncoderReranker(model=model, top_n=4).compress_documents(docs(), QUERY)
    assert [d.metadata["doc_id"] for d in out] == [d.metadata["doc_id"] for d in plain]
    assert ScoredCrossEncoderReranker(model=model).compress_documents([], QUERY) == []


def test_scores_are_the_sigmoid_of_the_logits(model):
    pairs = [(QUERY, p) for p in PASSAGES]
    probabilities = score_pairs(model, pairs)
    logits = score_pairs(model, pairs, raw=True)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(PASSAGES),)
    assert np.allclose(probabilities, 1 / (1 + np.exp(-logits)), atol=1e-6)
    raw_docs = ScoredCrossEncoderReranker(model=model, top_n=len(PASSAGES), raw_scores=True).compress_documents(
        docs(), QUERY
    )
    assert np.allclose(sorted(logits, reverse=True), [d.metadata["relevance_score"] for d in raw_docs], atol=1e-5)


def test_max_length_is_per_call_and_safe_across_threads(model):
    pairs = [(QUERY, p) for p in PASSAGES]
    default = score_pairs(model, pairs)
    short = score_pairs(model, pairs, max_length=16)
    assert model.client.max_seq_length == 128  # the shared model was not changed
    assert not np.allclose(default[LONG], short[LONG])
    assert np.allclose(default[:2], score_pairs(model, pairs[:2], max_length=64), atol=1e-6)  # short pairs: no cut

    results: dict[int, list[np.ndarray]] = {16: [], 128: []}

    def work(length: int) -> None:
        for _ in range(5):
            results[length].append(score_pairs(model, pairs, max_length=length, batch_size=2))

    threads = [threading.Thread(target=work, args=(n,)) for n in (16, 128)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.allclose(r, short, atol=1e-6) for r in results[16])
    assert all(np.allclose(r, default, atol=1e-6) for r in results[128])
    with pytest.raises(RagkitError, match="max_length"):
        score_pairs(model, pairs, max_length=10_000)


def test_truncation_is_counted_and_marked(model):
    pairs = [(QUERY, p) for p in PASSAGES]
    assert truncation_mask(model, pairs).tolist() == [i == LONG for i in range(len(PASSAGES))]
    assert count_truncated(model, pairs) == 1
    assert count_truncated(model, pairs, max_length=12) > 1
    out = ScoredCrossEncoderReranker(model=model, top_n=len(PASSAGES)).compress_documents(docs(), QUERY)
    assert {d.metadata["doc_id"]: d.metadata["truncated"] for d in out} == {
        f"d{i}": i == LONG for i in range(len(PASSAGES))
    }
    cut = ScoredCrossEncoderReranker(model=model, top_n=len(PASSAGES), max_length=12).compress_documents(docs(), QUERY)
    assert sum(d.metadata["truncated"] for d in cut) == count_truncated(model, pairs, max_length=12)


def test_pairs_go_in_batches_of_the_device_default_longest_first(model, monkeypatch):
    cross_encoder = model.client
    seen: list[list[tuple[str, str]]] = []
    real = cross_encoder.predict

    def spy(pairs, **kwargs):  # records what reaches the collaborator, then lets it score
        seen.append(list(pairs))
        return real(pairs, **kwargs)

    pairs = [(QUERY, p) for p in PASSAGES] * 3  # 18 pairs
    reference = score_pairs(model, pairs, batch_size=len(pairs))
    monkeypatch.setattr(cross_encoder, "predict", spy)
    scores = score_pairs(model, pairs)
    size = rerank_batch_size("cpu")
    assert [len(b) for b in seen] == [size] * (len(pairs) // size) + ([len(pairs) % size] if len(pairs) % size else [])
    lengths = [int(token_lengths(model, batch).max()) for batch in seen]
    assert lengths == sorted(lengths, reverse=True)
    np.testing.assert_allclose(scores, reference, atol=1e-6)  # batching changes no score
    seen.clear()
    ScoredCrossEncoderReranker(model=model, top_n=3).compress_documents(docs(), QUERY)
    assert [len(b) for b in seen] == [min(size, len(PASSAGES))] + (
        [len(PASSAGES) - size] if len(PASSAGES) > size else []
    )


def test_plain_transformers_rerank_equals_the_langchain_path(model, spread_cross_encoder_path):
    plain = rerank(
        QUERY, PASSAGES, top_n=len(PASSAGES), model_name=spread_cross_encoder_path, device="cpu", batch_size=4
    )
    chain = ScoredCrossEncoderReranker(model=model, top_n=len(PASSAGES)).compress_documents(docs(), QUERY)
    assert [f"d{i}" for i, _ in plain] == [d.metadata["doc_id"] for d in chain]
    assert np.allclose([s for _, s in plain], [d.metadata["relevance_score"] for d in chain], atol=1e-4)
    top = rerank(QUERY, PASSAGES, top_n=2, model_name=spread_cross_encoder_path, device="cpu")
    assert top == plain[:2] or np.allclose([s for _, s in top], [s for _, s in plain[:2]], atol=1e-6)
    assert PASSAGES[top[0].index] == chain[0].page_content
    assert rerank(QUERY, [], model_name=spread_cross_encoder_path, device="cpu") == []


def test_reranking_retriever_builder(spread_cross_encoder_path, model):
    base = BM25Retriever.from_documents(docs(), k=5)
    by_name = reranking_retriever(
        base, spread_cross_encoder_path, top_n=3, model_kwargs={"device": "cpu"}, batch_size=2
    )
    by_model = reranking_retriever(base, model, top_n=3)
    assert isinstance(by_name, ContextualCompressionRetriever)
    query = "capital of france, yellow fruit, vector store or bm25 words?"  # BM25 finds five candidates
    first, second = by_name.invoke(query), by_model.invoke(query)
    assert len(first) == 3 and [d.metadata["doc_id"] for d in first] == [d.metadata["doc_id"] for d in second]
    assert all("relevance_score" in d.metadata and "score" in d.metadata for d in first)


def test_clear_errors(model, monkeypatch):
    with pytest.raises(ValidationError, match="at least 1"):
        ScoredCrossEncoderReranker(model=model, top_n=0)
    with pytest.raises(RagkitError, match="top_k"):
        rerank(QUERY, PASSAGES, top_k=0)
    with pytest.raises(ConfigError, match="top_n"):
        rerank(QUERY, PASSAGES, top_n=0)
    with pytest.raises(ConfigError, match="max_length"):
        score_pairs(model, [(QUERY, "x")], max_length=0)
    with pytest.raises(ConfigError, match="HuggingFaceCrossEncoder"):
        score_pairs(object(), [(QUERY, "x")])
    with pytest.raises(RagkitError, match="HuggingFaceCrossEncoder"):
        score_pairs(object(), [(QUERY, "x")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-reranker"):
        rerank(QUERY, PASSAGES, model_name="no-such-org/no-such-reranker")
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-reranker"):
        reranking_retriever(BM25Retriever.from_documents(docs()), "no-such-org/no-such-reranker")


def test_rerank_says_top_n_like_everything_else(spread_cross_encoder_path):
    kwargs = {"model_name": spread_cross_encoder_path, "device": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        by_name = rerank(QUERY, PASSAGES, top_n=3, **kwargs)
    assert len(by_name) == 3
    assert rerank(QUERY, PASSAGES, 3, **kwargs) == by_name  # third positional parameter, as before
    assert len(rerank(QUERY, PASSAGES * 3, **kwargs)) == 10  # default: settings.DEFAULT_TOP_N
    with pytest.warns(DeprecationWarning, match="top_n"):
        old = rerank(QUERY, PASSAGES, top_k=3, **kwargs)
    assert old == by_name
    with pytest.raises(ConfigError, match="top_n only"):
        rerank(QUERY, PASSAGES, top_n=3, top_k=3, **kwargs)


def test_shared_model_is_safe_across_threads_max_lengths_and_paths(model):
    # One cached instance, scored at once through every path with different max lengths:
    # LangChain's .score (the model's own 128) bypassed ragkit's lock, and a fast tokenizer
    # keeps its truncation length as shared state, so threads got each other's truncation.
    pairs = [(QUERY, p) for p in PASSAGES] * 4
    calls = {
        "score_pairs, max_length=16": lambda: score_pairs(model, pairs, max_length=16, batch_size=2),
        "score_pairs, max_length=64": lambda: score_pairs(model, pairs, max_length=64, batch_size=3),
        "score_pairs, default": lambda: score_pairs(model, pairs, batch_size=4),
        "LangChain .score": lambda: np.asarray(model.score(pairs), dtype=np.float32),
        "client.predict, max_length=32": lambda: model.client.predict(
            pairs,
            batch_size=2,
            show_progress_bar=False,
            processing_kwargs={"text": {"max_length": 32, "truncation": "longest_first"}},
        ),
        "truncation_mask, max_length=12": lambda: truncation_mask(model, pairs, max_length=12).astype(np.float32),
    }
    reference = {name: call() for name, call in calls.items()}  # one thread: the truth
    assert not np.allclose(reference["score_pairs, max_length=16"], reference["LangChain .score"])
    assert not np.allclose(reference["score_pairs, max_length=64"], reference["LangChain .score"])
    wrong: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    for round_ in range(8):
        barrier = threading.Barrier(len(calls))

        def work(name: str, round_: int = round_, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                for _ in range(4):
                    if not np.allclose(calls[name](), reference[name], atol=1e-6):
                        wrong.append((round_, name))
            except BaseException as exc:  # a thread's exception would otherwise only be printed
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(name,)) for name in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert wrong == [], f"scores at another thread's max length in {len(wrong)} calls: {sorted(set(wrong))[:6]}"
