"""Exact dense search: the true nearest neighbours (numpy brute force says which), the same
ranking as Chroma's HNSW search where HNSW finds them, a document as its best chunk, ties
kept in a fixed order that ``ranked_run`` turns into strictly decreasing scores, and the
default following the index size (``settings.EXACT_SEARCH_MAX_VECTORS``)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document
from test_index_integrity import QUERIES, K, RandomEmbeddings, exact_top_k, make_docs

from ragkit import retrievers
from ragkit.measures import ranked_run
from ragkit.retrievers import build_chroma_index


@pytest.fixture
def index(cache):
    return build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)


def brute_force(n_docs: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    emb = RandomEmbeddings()
    docs = np.array(emb.embed_documents([d.page_content for d in make_docs(n_docs)]))
    queries = np.array([emb.embed_query(q) for q in QUERIES])
    return queries, queries @ docs.T


def test_exact_search_is_numpys_brute_force(index):
    queries, scores = brute_force()
    hits = index.search_by_vector(queries, K, exact=True)
    assert [[d for d, _ in found] for found in hits] == exact_top_k()
    for found, row in zip(hits, scores):
        assert np.allclose([s for _, s in found], [row[int(d[1:])] for d, _ in found], atol=1e-6)
    # Deeper than the index: every document, once.
    everything = index.search_by_vector(queries[:1], 5000, exact=True)[0]
    assert sorted(d for d, _ in everything) == sorted(f"d{i}" for i in range(1500))


def test_exact_and_hnsw_search_rank_alike(index):
    queries, _ = brute_force()
    exact = index.search_by_vector(queries, K, exact=True)
    hnsw = index.search_by_vector(queries, K, exact=False)
    assert [[d for d, _ in h] for h in exact] == [[d for d, _ in h] for h in hnsw]  # HNSW finds all here
    assert np.allclose([s for h in exact for _, s in h], [s for h in hnsw for _, s in h], atol=1e-5)


def test_exact_search_scores_a_document_as_its_best_chunk(cache):
    # Numbers only (RandomEmbeddings seeds a vector by its text's last word): 1 to 4 per
    # document, two per chunk.
    docs = [
        Document(" ".join(str(1000 + i * 10 + j) for j in range(1 + i % 4)), metadata={"doc_id": f"d{i}#x"})
        for i in range(60)
    ]
    index = build_chroma_index(docs, RandomEmbeddings(), chunk_size=9, chunk_overlap=0, show_progress=False)
    assert index.count > len(docs)
    queries = np.array([RandomEmbeddings().embed_query(q) for q in QUERIES])
    exact = index.search_by_vector(queries, 20, exact=True)
    hnsw = index.search_by_vector(queries, 20, exact=False)
    assert [[d for d, _ in h] for h in exact] == [[d for d, _ in h] for h in hnsw]
    assert all(len({d for d, _ in h}) == 20 and all(d.endswith("#x") for d, _ in h) for h in exact)


def test_ties_keep_a_fixed_order_and_become_strictly_decreasing_runs(cache):
    # Ten pairs of documents with the same text: the same vector, the same score.
    docs = [Document(f"twin {i // 2}", metadata={"doc_id": f"t{i}"}) for i in range(20)]
    index = build_chroma_index(docs, RandomEmbeddings(), show_progress=False)
    query = np.array([RandomEmbeddings().embed_query("query 3")])
    first = index.search_by_vector(query, 20, exact=True)[0]
    assert first == index.search_by_vector(query, 20, exact=True)[0]
    scores = [s for _, s in first]
    assert any(a == b for a, b in zip(scores, scores[1:]))  # there are ties
    assert scores == sorted(scores, reverse=True)
    run = ranked_run(first)
    assert list(run) == [d for d, _ in first]
    values = list(run.values())
    assert all(a > b for a, b in zip(values, values[1:]))


def test_the_default_follows_the_index_size(index, monkeypatch):
    collection = index._collection
    calls = []
    query = collection.query

    def spy(*args, **kwargs):
        calls.append(1)
        return query(*args, **kwargs)

    collection.query = spy
    vectors = brute_force()[0]
    assert index.exact  # 1,500 vectors: under the threshold
    exact = index.search_by_vector(vectors, K)
    assert calls == [] and [[d for d, _ in h] for h in exact] == exact_top_k()
    monkeypatch.setattr(retrievers, "EXACT_SEARCH_MAX_VECTORS", 1000)
    assert not index.exact
    index.search_by_vector(vectors, K)
    assert calls  # HNSW: Chroma's query


def test_runs_are_keyed_by_how_the_dense_index_searches(index, monkeypatch):
    from ragkit.hybrid import HybridRetriever
    from ragkit.retrievers import BM25Retriever

    bm25 = BM25Retriever.from_documents(make_docs(50))
    assert index.search_mode == ("exact",) and bm25.search_mode == ()
    assert HybridRetriever(index, bm25).search_mode == ("exact",)
    monkeypatch.setattr(retrievers, "EXACT_SEARCH_MAX_VECTORS", 0)
    assert index.search_mode == ("hnsw",)
