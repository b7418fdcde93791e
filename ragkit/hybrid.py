"""The hybrid first stage: a dense ranking and a BM25 ranking fused into one.

Dense retrieval finds paraphrases, BM25 finds rare exact terms (names, numbers, codes); their
errors differ, so fusing the two rankings is the cheapest strong alternative to reranking: it
costs one BM25 search beside the vector search and no model pass. A reranker is worth its
latency only if it beats this too.

Fusion is weighted reciprocal rank fusion (Cormack et al., 2009), exactly as LangChain's
``EnsembleRetriever`` computes it: a document scores ``sum(weight / (rank + c))`` over the
rankings it appears in (ranks from 1), ties keep the order of first appearance (dense first).
Fusing ranks, not scores, needs no normalisation of cosine similarities against BM25 scores.

- :class:`HybridRetriever` is the first stage the evaluation engine searches
  (``search(queries, k)``, like ``ChromaIndex`` and ``BM25Retriever``).
- ``HybridRetriever.as_retriever(k)`` is LangChain's own ``EnsembleRetriever`` over the Chroma
  and BM25 retrievers, cut to ``k`` documents: the path the notebooks teach. Both give the
  same rankings (``tests/test_hybrid.py`` checks it on a real subset).

Example::

    from ragkit.hybrid import HybridRetriever
    hybrid = HybridRetriever(index, BM25Retriever.from_documents(docs))
    hybrid.search(["What is France's capital?"], k=1)
    # [[('d1', 0.01639344262295082)]]
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from ragkit.errors import ConfigError
from ragkit.retrievers import BM25Retriever, ChromaIndex, _check_k
from ragkit.settings import DEFAULT_RERANK_K, FUSION_DEPTH, HYBRID_WEIGHTS, RRF_C
from ragkit.stages import Hits, Ranked, SearchesByText, StageContext


def check_weights(weights: Sequence[float]) -> tuple[float, float]:
    """The (dense, BM25) fusion weights as floats, or a :class:`ConfigError` saying what is wrong.

    Example:
        >>> check_weights([0.7, 0.3])
        (0.7, 0.3)
    """
    values = tuple(weights)
    if len(values) != 2 or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in values
    ):
        raise ConfigError(
            f"Fusion weights must be two positive numbers, dense then BM25 (e.g. --fusion-weights 0.5 0.5), "
            f"got {list(values)}."
        )
    return float(values[0]), float(values[1])


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], *, weights: Sequence[float], c: int = RRF_C
) -> list[tuple[str, float]]:
    """Documents of several rankings, best first, scored by weighted reciprocal rank fusion.

    Each ranking lists document ids best first. A document scores ``weight / (rank + c)``
    summed over the rankings it appears in; equal scores keep the order in which documents
    first appear, the first ranking read first (as ``EnsembleRetriever`` does).

    Example:
        >>> [(d, round(s, 5)) for d, s in reciprocal_rank_fusion([["a", "b"], ["b", "c"]], weights=[0.5, 0.5])]
        [('b', 0.01626), ('a', 0.0082), ('c', 0.00806)]
    """
    if len(rankings) != len(weights):
        raise ConfigError(f"{len(rankings)} rankings but {len(weights)} fusion weights: give one weight per ranking.")
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (rank + c)
    # sorted() is stable, also with reverse=True: ties stay in order of first appearance.
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


class FusedRetriever(BaseRetriever):
    """LangChain's ``EnsembleRetriever`` cut to its ``k`` best documents.

    ``EnsembleRetriever`` returns every document either retriever found (up to twice their
    depth); a first stage hands on ``k``. Each ``Document`` carries ``metadata["doc_id"]`` and
    ``metadata["fused_rank"]`` (1 = best); the per-retriever ``score`` is dropped, since a
    cosine or a BM25 score says nothing about the fused order.
    """

    ensemble: Any
    k: int = DEFAULT_RERANK_K

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.ensemble.invoke(query, config={"callbacks": run_manager.get_child()})
        out = []
        for rank, doc in enumerate(docs[: self.k], start=1):
            metadata = {key: value for key, value in doc.metadata.items() if key != "score"}
            out.append(Document(page_content=doc.page_content, id=doc.id, metadata={**metadata, "fused_rank": rank}))
        return out


class HybridRetriever(SearchesByText):
    """A dense index and a BM25 retriever over the same documents, fused by weighted RRF.

    Args:
        dense: the Chroma index (not chunked: both rankings must rank documents).
        bm25: the BM25 retriever over the same documents.
        weights: (dense, BM25) weights, both positive (default ``settings.HYBRID_WEIGHTS``).
        c: the RRF constant (default ``settings.RRF_C``).
        depth: how deep each ranking is read before fusing (default ``settings.FUSION_DEPTH``,
            or ``k`` when more are asked for). Fixed, so that the top 20 is the top 100's prefix.
    """

    def __init__(
        self,
        dense: ChromaIndex,
        bm25: BM25Retriever,
        *,
        weights: Sequence[float] = HYBRID_WEIGHTS,
        c: int = RRF_C,
        depth: int = FUSION_DEPTH,
    ) -> None:
        if dense.chunk_size is not None:
            raise ConfigError("A hybrid first stage fuses rankings of documents: build its index without chunk_size.")
        _check_k(depth)
        self.dense, self.bm25 = dense, bm25
        self.weights = check_weights(weights)
        self.c, self.depth = c, depth
        identity = {"dense": dense.fingerprint, "bm25": bm25.fingerprint, "weights": self.weights}
        identity.update(c=c, depth=depth)
        self.fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"HybridRetriever({self.dense.embedder_name!r} + bm25, weights={self.weights}, c={self.c})"

    def _depth(self, k: int) -> int:
        return max(k, self.depth)

    def fuse(self, dense: Hits, bm25: Hits, k: int) -> Hits:
        """Fuse per-query dense and BM25 hits (each read to ``max(k, depth)``), cut to ``k``."""
        return [
            reciprocal_rank_fusion([[d for d, _ in a], [d for d, _ in b]], weights=self.weights, c=self.c)[:k]
            for a, b in zip(dense, bm25)
        ]

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """The ``k`` best documents per query as ``(doc_id, fused score)``."""
        _check_k(k)
        depth = self._depth(k)
        return self.fuse(self.dense.search(queries, depth), self.bm25.search(queries, depth), k)

    # The first-stage protocol (ragkit.stages.FirstStage).
    fills_depth = True  # the dense ranking alone fills the depth

    @property
    def search_mode(self) -> tuple[str, ...]:
        return self.dense.search_mode

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]]:
        """One query: its dense and BM25 parts' own timed searches (each to the fusion depth),
        then the fusion, each step timed in seconds."""
        depth = self._depth(k)
        dense, dense_steps = self.dense.timed_search(query, depth)
        bm25, bm25_steps = self.bm25.timed_search(query, depth)
        start = time.perf_counter()
        hits = self.fuse([dense], [bm25], k)[0]
        return hits, {**dense_steps, **bm25_steps, "fusion": time.perf_counter() - start}

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> FusedRetriever:
        """LangChain's ``EnsembleRetriever`` over ``dense.as_retriever`` and ``bm25.as_retriever``
        (documents told apart by ``metadata["doc_id"]``), cut to the ``k`` best."""
        from langchain_classic.retrievers import EnsembleRetriever

        _check_k(k)
        depth = self._depth(k)
        ensemble = EnsembleRetriever(
            retrievers=[self.dense.as_retriever(k=depth), self.bm25.as_retriever(k=depth)],
            weights=list(self.weights),
            c=self.c,
            id_key="doc_id",
        )
        return FusedRetriever(ensemble=ensemble, k=k)


def build_hybrid_stage(collection: Any, pipeline: Any, context: StageContext) -> HybridRetriever:
    """The hybrid first stage a pipeline names: its embedder's dense stage and the BM25 stage,
    each the grid's own when it has them, fused with its weights (ragkit.stages builder)."""
    dense = context.part(retriever="dense", embedder=pipeline.embedder)
    return HybridRetriever(dense, context.part(retriever="bm25"), weights=pipeline.fusion_weights)
