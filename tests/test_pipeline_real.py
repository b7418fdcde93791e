"""The pipeline on the real models and a SciFact subset: the cross-encoder raises nDCG@10 of
the dense retriever, plain transformers equals LangChain on the real L-12, and bge's query
instruction reaches both query paths.

Needs the models provisioned (``python tools/provision_models.py``, or the Hub) and SciFact under
``$RAGKIT_BEIR_DIR``; about two minutes on a 2-core CPU, mostly cross-encoder passes.
"""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
from langchain_core.documents import Document

from ragkit import HuggingFaceEmbeddingsLoader, HuggingFaceRerankerLoader
from ragkit.models import BGE_QUERY_INSTRUCTION, is_available_offline
from ragkit.rerank import ScoredCrossEncoderReranker, count_truncated, rerank, reranking_retriever
from ragkit.retrievers import build_chroma_index

pytestmark = pytest.mark.real_models

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
RERANKER = "cross-encoder/ms-marco-MiniLM-L-12-v2"
BGE = "BAAI/bge-small-en-v1.5"
# Sized for about two minutes on 2 CPU cores: 150 documents to embed, 15 x 20 pairs to rerank.
N_QUERIES, N_DOCS, K, TOP_N = 15, 150, 20, 10


def require(model_id: str) -> str:
    if not is_available_offline(model_id):
        pytest.fail(
            f"{model_id} is not on this machine (not in the Hugging Face cache). Provision it with "
            "`python tools/provision_models.py` (or download it from the Hub) before running real-model tests.",
            pytrace=False,
        )
    return model_id


@pytest.fixture(scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGKIT_CACHE_DIR", str(tmp_path_factory.mktemp("ragkit-cache")))
        yield


@pytest.fixture(scope="module")
def subset(_cache):
    from ragkit.data import load_beir, make_subset

    return make_subset(load_beir("scifact", download=False), N_QUERIES, n_docs=N_DOCS)


@pytest.fixture(scope="module")
def dense_index(subset):
    embedder = HuggingFaceEmbeddingsLoader(require(EMBEDDER), model_kwargs={"device": "cpu"})
    return build_chroma_index(subset.documents(), embedder, show_progress=False)


@pytest.fixture(scope="module")
def cross_encoder(_cache):
    return HuggingFaceRerankerLoader(require(RERANKER), model_kwargs={"device": "cpu"})


@pytest.fixture(autouse=True)
def _fresh_loader_caches():
    """Overrides conftest's per-test cache clearing: these tests share loaded real models."""
    yield


def test_cross_encoder_raises_ndcg_at_10_of_dense_top_10(subset, dense_index, cross_encoder):
    query_ids = list(subset.queries)
    hits = dense_index.search([subset.queries[q] for q in query_ids], K)
    dense_run = {q: dict(h[:TOP_N]) for q, h in zip(query_ids, hits)}

    # The design's pipeline, LangChain end to end: top-K dense candidates, cross-encoder, top-N.
    retriever = reranking_retriever(dense_index.as_retriever(k=K), cross_encoder, top_n=TOP_N)
    reranked_run, truncated = {}, 0
    for q in query_ids:
        docs = retriever.invoke(subset.queries[q])
        assert len(docs) == TOP_N
        scores = [d.metadata["relevance_score"] for d in docs]
        assert scores == sorted(scores, reverse=True)
        reranked_run[q] = {d.metadata["doc_id"]: s for d, s in zip(docs, scores)}
        truncated += sum(d.metadata["truncated"] for d in docs)
        # Same candidates as the batched path: the reranker only reorders them.
        assert set(reranked_run[q]) <= {d for d, _ in hits[query_ids.index(q)]}

    ndcg = ir_measures.nDCG @ 10
    dense = ir_measures.calc_aggregate([ndcg], subset.qrels, dense_run)[ndcg]
    reranked = ir_measures.calc_aggregate([ndcg], subset.qrels, reranked_run)[ndcg]
    print(
        f"\n{subset.name}: nDCG@10 dense {dense:.4f} -> reranked {reranked:.4f} "
        f"({truncated} of the returned passages were truncated to 512 tokens)"
    )
    assert reranked > dense + 0.02, f"reranking did not help: dense {dense:.4f}, reranked {reranked:.4f}"


def test_plain_transformers_rerank_equals_langchain_path_on_l12(subset, cross_encoder):
    query = next(iter(subset.queries.values()))
    # The longest abstracts too, so that truncation is compared as well.
    by_length = sorted(subset.corpus, key=lambda d: len(subset.text(d)))
    doc_ids = by_length[:4] + by_length[-4:]
    texts = [subset.text(d) for d in doc_ids]
    assert count_truncated(cross_encoder, [(query, t) for t in texts]) >= 1

    plain = rerank(query, texts, top_n=len(texts), model_name=RERANKER, device="cpu")
    chain = ScoredCrossEncoderReranker(model=cross_encoder, top_n=len(texts)).compress_documents(
        [Document(t, metadata={"doc_id": d}) for d, t in zip(doc_ids, texts)], query
    )
    assert [doc_ids[i] for i, _ in plain] == [d.metadata["doc_id"] for d in chain]
    assert np.allclose([s for _, s in plain], [d.metadata["relevance_score"] for d in chain], atol=1e-4)


def test_bge_small_queries_carry_the_instruction_on_both_paths(subset):
    embedder = HuggingFaceEmbeddingsLoader(require(BGE), model_kwargs={"device": "cpu"})
    doc_ids = sorted(subset.corpus)[:8]
    index = build_chroma_index(
        [Document(subset.text(d), metadata={"doc_id": d}) for d in doc_ids], embedder, show_progress=False
    )
    queries = list(subset.queries.values())[:3]
    model = embedder._client
    instructed = model.encode([BGE_QUERY_INSTRUCTION + q for q in queries])
    bare = model.encode(queries)

    batched = index.embed_queries(queries)
    assert np.allclose(batched, instructed, atol=1e-5)
    assert not np.allclose(batched, bare, atol=1e-2)
    assert np.allclose(batched[0], embedder.embed_query(queries[0]), atol=1e-5)

    # The LangChain retriever path scores with the instructed query too.
    doc_vectors = dict(zip(doc_ids, model.encode([subset.text(d) for d in doc_ids])))
    found = index.as_retriever(k=3).invoke(queries[0])
    for doc in found:
        v = doc_vectors[doc.metadata["doc_id"]]
        cosine = float(v @ instructed[0] / (np.linalg.norm(v) * np.linalg.norm(instructed[0])))
        assert abs(doc.metadata["score"] - cosine) < 1e-4
    assert [d.metadata["doc_id"] for d in found] == [d for d, _ in index.search(queries[:1], 3)[0]]
