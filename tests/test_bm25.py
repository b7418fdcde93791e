"""BM25Index: Lucene BM25 scores, English stopwords and stemming, deterministic ties."""

from __future__ import annotations

import math

import pytest

from ragkit.bm25 import BM25Index
from ragkit.errors import ConfigError, RagkitError


def lucene_bm25(docs: list[list[str]], doc: list[str], term: str, k1: float = 1.5, b: float = 0.75) -> float:
    """Lucene's BM25 for one term, written out from the formula."""
    n = len(docs)
    df = sum(term in d for d in docs)
    avgdl = sum(len(d) for d in docs) / n
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    tf = doc.count(term)
    return idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))


def test_scores_follow_the_lucene_formula_after_stopwords_and_stemming():
    texts = ["Cats chase mice.", "Dogs chase cats and the cats nap.", "Birds sing."]
    index = BM25Index.from_texts(["a", "b", "c"], texts)
    # What the tokenizer should make of them: lower case, no "and"/"the", Snowball stems.
    tokens = [["cat", "chase", "mice"], ["dog", "chase", "cat", "cat", "nap"], ["bird", "sing"]]

    hits = index.search(["cat"], k=3)[0]

    assert [doc_id for doc_id, _ in hits] == ["b", "a"]
    for doc_id, score in hits:
        expected = lucene_bm25(tokens, tokens["abc".index(doc_id)], "cat")
        assert score == pytest.approx(expected, rel=1e-5)


def test_stemming_matches_word_forms():
    index = BM25Index.from_texts(["x", "y"], ["Retrieval of passages", "Cooking pasta at home"])
    assert index.search(["retrieving passage"], k=2)[0][0][0] == "x"


def test_query_of_stopwords_or_unknown_words_returns_nothing():
    index = BM25Index.from_texts(["x", "y"], ["vector stores", "lexical search"])
    assert index.search(["the of and", "zebra", ""], k=5) == [[], [], []]


def test_ties_follow_the_order_of_ids():
    texts = ["same words here", "same words here", "other text entirely", "same words here"]
    forward = BM25Index.from_texts(["p", "q", "r", "s"], texts)
    backward = BM25Index.from_texts(["s", "q", "r", "p"], [texts[3], texts[1], texts[2], texts[0]])

    assert [d for d, _ in forward.search(["same words"], k=2)[0]] == ["p", "q"]
    assert [d for d, _ in backward.search(["same words"], k=2)[0]] == ["s", "q"]
    assert [d for d, _ in forward.search(["same words"], k=10)[0]] == ["p", "q", "s"]


def test_results_are_sorted_and_cut_at_k():
    texts = [f"reranking {'model ' * i}note {i}" for i in range(1, 30)]
    index = BM25Index.from_texts([f"d{i}" for i in range(1, 30)], texts)
    hits = index.search(["reranking model"], k=7)[0]
    assert len(hits) == 7
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(score > 0 for score in scores)


def test_several_queries_keep_their_order():
    index = BM25Index.from_texts(["a", "b"], ["chroma vector store", "cross encoder reranking"])
    results = index.search(["reranking", "vector"], k=1)
    assert [hits[0][0] for hits in results] == ["b", "a"]


@pytest.mark.parametrize(
    ("ids", "texts", "message"),
    [
        (["a"], ["one text", "two texts"], "1 ids but 2 texts"),
        ([], [], "no texts"),
        (["a", "a"], ["one text", "two texts"], "duplicate ids"),
        (["a", "b"], ["the", "of and"], "indexable word"),
    ],
)
def test_bad_input_is_refused(ids, texts, message):
    with pytest.raises(ValueError, match=message):
        BM25Index.from_texts(ids, texts)
    # ragkit's own error, as errors.py promises for all bad input: `except RagkitError` catches it.
    with pytest.raises(ConfigError, match=message) as info:
        BM25Index.from_texts(ids, texts)
    assert isinstance(info.value, RagkitError)


def test_k_must_be_positive():
    index = BM25Index.from_texts(["a"], ["some text"])
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(["text"], k=0)
    with pytest.raises(ConfigError, match="k must be at least 1"):
        index.search(["text"], k=0)
