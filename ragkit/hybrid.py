"""The hybrid first stage: a dense ranking and a BM25 ranking fused into one
(``retriever="hybrid"``), the most common fusion (``ragkit.fusion`` fuses any number of stages).

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

from collections.abc import Sequence
from typing import Any

from ragkit.errors import ConfigError
from ragkit.fusion import FusedStage, check_fusion_weights
from ragkit.retrievers import BM25Retriever, ChromaIndex
from ragkit.settings import FUSION_DEPTH, HYBRID_WEIGHTS, RRF_C
from ragkit.stages import Hits, StageContext


def check_weights(weights: Sequence[float]) -> tuple[float, float]:
    """The (dense, BM25) fusion weights as floats, or a :class:`ConfigError` saying what is wrong.

    Example:
        >>> check_weights([0.7, 0.3])
        (0.7, 0.3)
    """
    try:
        dense, bm25 = check_fusion_weights(weights, 2)
    except ConfigError:
        raise ConfigError(
            f"Fusion weights must be two positive numbers, dense then BM25 (e.g. --fusion-weights 0.5 0.5), "
            f"got {list(weights)}."
        ) from None
    return dense, bm25


class HybridRetriever(FusedStage):
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
        self.dense, self.bm25 = dense, bm25
        super().__init__([dense, bm25], weights=check_weights(weights), c=c, depth=depth)

    @staticmethod
    def _identity(
        fingerprints: list[str | None], *, weights: tuple[float, ...], method: str, c: int, depth: int
    ) -> dict[str, Any]:
        # The hybrid's own key, older than general fusion (so it has no method: always RRF): its
        # cached runs and timings stay valid.
        dense, bm25 = fingerprints
        return {"dense": dense, "bm25": bm25, "weights": weights, "c": c, "depth": depth}

    def __repr__(self) -> str:
        return f"HybridRetriever({self.dense.embedder_name!r} + bm25, weights={self.weights}, c={self.c})"

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """The ``k`` best documents per query as ``(doc_id, fused score)``."""
        return self.retrieve([(text, text) for text in queries], k)


def hybrid_fingerprint(dense: str, bm25: str, weights: Sequence[float] = HYBRID_WEIGHTS) -> str | None:
    """The fingerprint of the hybrid stage :func:`build_hybrid_stage` builds (RRF at the default
    constant and depth) over stages with these fingerprints: what its cached runs and timings
    are keyed by, so that a plan can find them without building the parts."""
    return HybridRetriever.fingerprint_of([dense, bm25], weights=check_weights(weights), method="rrf", c=RRF_C,
                                          depth=FUSION_DEPTH)  # fmt: skip


def build_hybrid_stage(collection: Any, pipeline: Any, context: StageContext) -> HybridRetriever:
    """The hybrid first stage a pipeline names: its embedder's dense stage and the BM25 stage,
    each the grid's own when it has them, fused with its weights (ragkit.stages builder)."""
    dense = context.part(retriever="dense", embedder=pipeline.embedder)
    return HybridRetriever(dense, context.part(retriever="bm25"), weights=pipeline.fusion_weights)
