"""A small BM25 index over texts, on top of ``bm25s``.

Used to pick hard negatives for subsets (:func:`ragkit.data.make_subset`) and as the lexical
first stage that reranking is compared against. Texts are lower-cased, split into words,
stripped of English stopwords and Snowball-stemmed (PyStemmer), so "retrieving" matches
"retrieval". Scores are Lucene's BM25 (k1=1.5, b=0.75 by default).

Example:
    >>> from ragkit.bm25 import BM25Index
    >>> index = BM25Index.from_texts(["a", "b"], ["Cats purr softly.", "Dogs bark at night."])
    >>> [doc_id for doc_id, _ in index.search(["barking dogs"], k=2)[0]]
    ['b']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer

from ragkit.errors import ConfigError

# bm25s sets its own logger to DEBUG, so under any application that configures logging it
# prints "Building index from tokens" on every index; its warnings still come through.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class BM25Index:
    """BM25 over a fixed list of texts, each known by an id.

    Build one with :meth:`from_texts`. Results are deterministic: documents with equal scores
    come in the order their ids were given to :meth:`from_texts`. Bad input raises
    ``ragkit.errors.ConfigError`` (a ``ValueError``, and a ``RagkitError`` like every error
    ragkit raises about its input).
    """

    def __init__(self, ids: Sequence[str], model: bm25s.BM25, stemmer: Stemmer.Stemmer) -> None:
        self._ids = tuple(ids)
        self._model = model
        self._stemmer = stemmer

    @classmethod
    def from_texts(cls, ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> BM25Index:
        """Index ``texts``; ``ids[i]`` names ``texts[i]`` in search results.

        Example:
            >>> index = BM25Index.from_texts(["x", "y"], ["vector stores", "lexical search"])
            >>> len(index)
            2
        """
        if len(ids) != len(texts):
            raise ConfigError(f"BM25Index.from_texts got {len(ids)} ids but {len(texts)} texts; pass one id per text.")
        if not ids:
            raise ConfigError("BM25Index.from_texts got no texts; an index needs at least one document.")
        if len(set(ids)) != len(ids):
            raise ConfigError("BM25Index.from_texts got duplicate ids; each text needs its own id.")
        stemmer = Stemmer.Stemmer("english")
        model = bm25s.BM25(k1=k1, b=b)
        tokens = _tokenize(list(texts), stemmer)
        if not any(tokens):
            raise ConfigError(
                "BM25Index.from_texts got texts without a single indexable word (all empty or stopwords)."
            )
        model.index(tokens, show_progress=False)
        return cls(ids, model, stemmer)

    @property
    def ids(self) -> tuple[str, ...]:
        """The document ids, in the order given to :meth:`from_texts` (the tie-break order)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """For each query, up to ``k`` ``(doc_id, score)`` pairs, best first.

        Only documents sharing at least one term with the query are returned, so a list can be
        shorter than ``k`` (empty for a query made only of stopwords).

        Example:
            >>> index = BM25Index.from_texts(["a", "b"], ["reranking with cross-encoders", "chunk sizes"])
            >>> index.search(["cross-encoder reranker", "the"], k=5)[1]
            []
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}.")
        positions = np.arange(len(self._ids))
        results = []
        for tokens in _tokenize(list(queries), self._stemmer):
            if not tokens:
                results.append([])
                continue
            scores = self._model.get_scores(tokens)
            hits = np.flatnonzero(scores > 0)
            if len(hits) > k:
                # Keep every document tied with the k-th best score, so the tie-break below
                # (by position) decides who makes the cut, not argpartition's arbitrary order.
                kth = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
                hits = hits[scores[hits] >= kth]
            order = np.lexsort((positions[hits], -scores[hits]))[:k]
            results.append([(self._ids[i], float(scores[i])) for i in hits[order]])
        return results


def _tokenize(texts: list[str], stemmer: Stemmer.Stemmer) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer.stemWords, return_ids=False, show_progress=False)
