"""Fusion: the rankings of any number of first stages combined into one first stage.

Different retrievers make different mistakes (dense retrieval finds paraphrases, BM25 rare
exact terms, a production system its own signals), so fusing their rankings is the cheapest
strong alternative to reranking: it costs the stages' searches and no model pass. A reranker is
worth its latency only if it beats fusion too.

Two ways of fusing, each weighted per stage:

- ``"rrf"``, reciprocal rank fusion (Cormack et al., 2009), as LangChain's ``EnsembleRetriever``
  computes it: a document scores ``sum(weight / (rank + c))`` over the rankings it appears in
  (ranks from 1). It reads ranks only, so no score needs to be comparable with another's.
- ``"convex"``, a convex combination of scores (Bruch et al., 2023, "An analysis of fusion
  functions for hybrid retrieval"; Weaviate's relative-score fusion): each stage's scores for
  a query are min-max normalised to [0, 1] over the documents it returned (1 for all when they
  are equal), a document it did not return counts 0, and a document scores
  ``sum(weight * normalised score)``. It keeps how much better the best documents are, which
  rank fusion throws away, at the price of depending on each stage's score scale.

Ties keep the order in which documents first appear, the first stage read first (as
``EnsembleRetriever`` does); ``ragkit.measures.ranked_run`` then separates them by rank.

Each stage is read to ``depth`` (``settings.FUSION_DEPTH``, or ``k`` when more are asked for),
fixed, so that the fused top 10 is the fused top 100's prefix.

- :class:`Fusion` is what a pipeline names: ``Pipeline(retriever=Fusion(a, b, c))``, its parts
  pipelines (first stages, with their options) or stages of the user's own.
- :class:`FusedStage` is the first stage it builds (:class:`ragkit.stages.FirstStage`);
  ``ragkit.hybrid.HybridRetriever`` (dense + BM25, ``retriever="hybrid"``) is one.

Example::

    from ragkit import Fusion, Pipeline, experiment
    three = Fusion(Pipeline(embedder="BAAI/bge-small-en-v1.5"), Pipeline(), Pipeline(retriever="bm25"))
    fused = Pipeline(retriever=three)
    experiment(collection, [fused, fused >> "cross-encoder/ms-marco-MiniLM-L-12-v2"])
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from ragkit.errors import ConfigError, RagkitError
from ragkit.settings import DEFAULT_RERANK_K, FUSION_DEPTH, RRF_C
from ragkit.stages import FirstStage, Hits, Query, Ranked, StageContext, StageSource, check_k

FUSION_METHODS = ("rrf", "convex")


def check_fusion_weights(weights: Sequence[float], n: int, *, option: str = "weights") -> tuple[float, ...]:
    """``n`` positive finite weights as floats, or a :class:`ConfigError` naming ``option``.

    Example:
        >>> check_fusion_weights([2, 1, 1], 3)
        (2.0, 1.0, 1.0)
    """
    values = tuple(weights)
    if len(values) != n or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in values
    ):
        raise ConfigError(f"{option} must be {n} positive numbers, one per fused stage in order, got {list(values)}.")
    return tuple(float(w) for w in values)


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


def convex_fusion(rankings: Sequence[Ranked], *, weights: Sequence[float]) -> list[tuple[str, float]]:
    """Documents of several scored rankings, best first, scored by a weighted sum of their
    min-max normalised scores (1 for every document of a ranking whose scores are all equal;
    0 in a ranking that does not hold the document). Ties keep the order of first appearance.

    Example:
        >>> convex_fusion([[("a", 0.9), ("b", 0.5)], [("b", 12.0), ("c", 4.0)]], weights=[0.5, 0.5])
        [('a', 0.5), ('b', 0.5), ('c', 0.0)]
    """
    if len(rankings) != len(weights):
        raise ConfigError(f"{len(rankings)} rankings but {len(weights)} fusion weights: give one weight per ranking.")
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        values = [s for _, s in ranking]
        if not values:
            continue
        low, high = min(values), max(values)
        for doc_id, score in ranking:
            normalised = (score - low) / (high - low) if high > low else 1.0
            scores[doc_id] = scores.get(doc_id, 0.0) + weight * normalised
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def fuse(rankings: Sequence[Ranked], *, method: str, weights: Sequence[float], c: int = RRF_C) -> Ranked:
    """One query's scored rankings fused by ``method`` (``"rrf"`` or ``"convex"``)."""
    if method == "rrf":
        return reciprocal_rank_fusion([[d for d, _ in r] for r in rankings], weights=weights, c=c)
    return convex_fusion(rankings, weights=weights)


class FusedRetriever(BaseRetriever):
    """LangChain's ``EnsembleRetriever`` cut to its ``k`` best documents.

    ``EnsembleRetriever`` returns every document any retriever found (up to their depths
    summed); a first stage hands on ``k``. Each ``Document`` carries ``metadata["doc_id"]`` and
    ``metadata["fused_rank"]`` (1 = best); the per-retriever ``score`` is dropped, since a
    cosine or a BM25 score says nothing about the fused order.
    """

    ensemble: Any
    k: int = DEFAULT_RERANK_K

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.ensemble.invoke(query, config={"callbacks": run_manager.get_child()})
        return _ranked_documents(docs[: self.k])


class ConvexRetriever(BaseRetriever):
    """Convex fusion of LangChain retrievers (``EnsembleRetriever`` has rank fusion only):
    each retriever's documents, told apart by ``metadata["doc_id"]`` and scored by
    ``metadata["score"]``, fused by :func:`convex_fusion`, cut to the ``k`` best, with
    ``metadata["fused_rank"]``."""

    retrievers: list[Any]
    weights: list[float]
    k: int = DEFAULT_RERANK_K

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        rankings, first = [], {}
        for retriever in self.retrievers:
            docs = retriever.invoke(query, config={"callbacks": run_manager.get_child()})
            if any("score" not in d.metadata for d in docs):
                raise RagkitError(
                    f"{type(retriever).__name__} returned documents without metadata['score']: convex fusion "
                    "combines scores. Use method='rrf', which needs ranks only."
                )
            rankings.append([(d.metadata["doc_id"], float(d.metadata["score"])) for d in docs])
            for d in docs:
                first.setdefault(d.metadata["doc_id"], d)
        fused = convex_fusion(rankings, weights=self.weights)[: self.k]
        return _ranked_documents([first[doc_id] for doc_id, _ in fused])


def _ranked_documents(docs: Sequence[Document]) -> list[Document]:
    out = []
    for rank, doc in enumerate(docs, start=1):
        metadata = {key: value for key, value in doc.metadata.items() if key != "score"}
        out.append(Document(page_content=doc.page_content, id=doc.id, metadata={**metadata, "fused_rank": rank}))
    return out


class FusedStage:
    """First stages over the same documents, their rankings fused (a :class:`FirstStage`).

    Args:
        parts: the first stages, each ranking whole documents.
        weights: one positive weight per part (default: equal).
        method: ``"rrf"`` (default) or ``"convex"`` (see the module's docstring).
        c: the RRF constant (default ``settings.RRF_C``).
        depth: how deep each part is read before fusing (default ``settings.FUSION_DEPTH``,
            or ``k`` when more are asked for).
    """

    def __init__(
        self,
        parts: Sequence[FirstStage],
        *,
        weights: Sequence[float] | None = None,
        method: str = "rrf",
        c: int = RRF_C,
        depth: int = FUSION_DEPTH,
    ) -> None:
        _check_method(method)
        self.parts = list(parts)
        if len(self.parts) < 2:
            raise ConfigError(f"Fusion needs at least two first stages, got {len(self.parts)}.")
        self.weights = _weights(weights, len(self.parts))
        self.method, self.c, self.depth = method, c, _check_depth(depth)
        self.fingerprint = self.fingerprint_of([part.fingerprint for part in self.parts], weights=self.weights,
                                               method=self.method, c=self.c, depth=self.depth)  # fmt: skip

    @classmethod
    def fingerprint_of(
        cls, fingerprints: Sequence[str | None], *, weights: Sequence[float], method: str, c: int, depth: int
    ) -> str | None:
        """The fingerprint of this kind of fusion of stages with these ``fingerprints`` (``None``
        when one has none), from their identities alone: what its cached runs and timings are
        keyed by, so that ``ragkit.plan`` can find them without building a stage."""
        if None in fingerprints:
            return None
        return _digest(cls._identity(list(fingerprints), weights=tuple(weights), method=method, c=c, depth=depth))

    @staticmethod
    def _identity(
        fingerprints: list[str | None], *, weights: tuple[float, ...], method: str, c: int, depth: int
    ) -> dict[str, Any]:
        return {"parts": fingerprints, "method": method, "weights": weights, "c": c, "depth": depth}

    def __repr__(self) -> str:
        return f"FusedStage({len(self.parts)} stages, method={self.method!r}, weights={self.weights})"

    def _depth(self, k: int) -> int:
        return max(k, self.depth)

    def fuse(self, hits: Sequence[Hits], k: int) -> Hits:
        """Fuse each part's per-query hits (each read to ``max(k, depth)``), cut to ``k``."""
        return [fuse(rankings, method=self.method, weights=self.weights, c=self.c)[:k] for rankings in zip(*hits)]

    def retrieve(self, queries: Sequence[Query], k: int) -> Hits:
        """The ``k`` best documents per query as ``(doc_id, fused score)``."""
        check_k(k)
        depth = self._depth(k)
        return self.fuse([part.retrieve(queries, depth) for part in self.parts], k)

    # The rest of the first-stage protocol (ragkit.stages.FirstStage).
    @property
    def fills_depth(self) -> bool:
        # The fused ranking holds every document of every part: one part filling its depth fills it.
        return any(part.fills_depth for part in self.parts)

    @property
    def search_mode(self) -> tuple[str, ...]:
        return tuple(mode for part in self.parts for mode in part.search_mode)

    def timed_search(self, query: str, k: int) -> tuple[Ranked, dict[str, float]] | None:
        """One query: each part's own timed search (to the fusion depth), then the fusion, each
        step timed in seconds (steps two parts share, such as "embed query", add up); ``None``
        when a part cannot be timed here (a run file)."""
        depth = self._depth(k)
        rankings, steps = [], {}
        for part in self.parts:
            timed = part.timed_search(query, depth)
            if timed is None:
                return None
            rankings.append(timed[0])
            for step, seconds in timed[1].items():
                steps[step] = steps.get(step, 0.0) + seconds
        start = time.perf_counter()
        hits = fuse(rankings, method=self.method, weights=self.weights, c=self.c)[:k]
        return hits, {**steps, "fusion": time.perf_counter() - start}

    def as_retriever(self, k: int = DEFAULT_RERANK_K) -> BaseRetriever:
        """The fusion as a LangChain retriever of ``k`` documents over the parts' own
        ``as_retriever`` (documents told apart by ``metadata["doc_id"]``): LangChain's
        ``EnsembleRetriever`` for ``"rrf"``, :class:`ConvexRetriever` for ``"convex"``."""
        from langchain_classic.retrievers import EnsembleRetriever

        check_k(k)
        retrievers = [part.as_retriever(self._depth(k)) for part in self.parts]
        if self.method == "convex":
            return ConvexRetriever(retrievers=retrievers, weights=list(self.weights), k=k)
        ensemble = EnsembleRetriever(retrievers=retrievers, weights=list(self.weights), c=self.c, id_key="doc_id")
        return FusedRetriever(ensemble=ensemble, k=k)


@dataclass(frozen=True, init=False)
class Fusion:
    """Several first stages fused into one, for ``Pipeline(retriever=Fusion(...))`` (a
    :class:`ragkit.stages.StageSource`).

    Args:
        parts: two or more first stages: pipelines without a reranker (``Pipeline()``,
            ``Pipeline(retriever="bm25")``, ``Pipeline(retriever="run", run_file=...)``, a
            passage pipeline) or stages of the user's own (``ragkit.LangChainRetriever``).
            A part that is also evaluated on its own is built once and shared.
        weights: one positive weight per part, in order (default: equal).
        method: ``"rrf"`` (default) or ``"convex"`` (see the module's docstring).
        c: the RRF constant (default ``settings.RRF_C``).
        depth: how deep each part is read (default ``settings.FUSION_DEPTH``).
        name: its name in tables (default: the method and the parts' names).

    Example:
        >>> from ragkit import Pipeline
        >>> Pipeline(retriever=Fusion(Pipeline(), Pipeline(retriever="bm25"), weights=[2, 1])).name
        'rrf(dense(all-MiniLM-L6-v2)+bm25, weights=2:1)'
    """

    parts: tuple[Any, ...]
    weights: tuple[float, ...] | None = None
    method: str = "rrf"
    c: int = RRF_C
    depth: int = FUSION_DEPTH
    name: str | None = None

    def __init__(
        self,
        *parts: Any,
        weights: Sequence[float] | None = None,
        method: str = "rrf",
        c: int = RRF_C,
        depth: int = FUSION_DEPTH,
        name: str | None = None,
    ) -> None:
        _check_method(method)
        if len(parts) < 2:
            raise ConfigError(f"Fusion(...) fuses two or more first stages, got {len(parts)}.")
        for i, part in enumerate(parts):
            if getattr(part, "reranker", None):
                raise ConfigError(
                    f"Fusion part {i + 1} ({part.name}) is reranked: fuse first stages, then rerank the fusion "
                    "(Pipeline(retriever=Fusion(...)) >> reranker)."
                )
            if not isinstance(part, StageSource) and not hasattr(part, "own_first_stage"):
                raise ConfigError(
                    f"Fusion part {i + 1} is a {type(part).__name__}: give pipelines (ragkit.Pipeline) or stages of "
                    "your own (ragkit.LangChainRetriever)."
                )
        values = {"parts": tuple(parts), "weights": None if weights is None else _weights(weights, len(parts)),
                  "method": method, "c": c, "depth": _check_depth(depth), "name": name}  # fmt: skip
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def label(self) -> str:
        """Its name in tables."""
        if self.name:
            return self.name
        weights = "" if self.weights is None else ", weights=" + ":".join(f"{w:g}" for w in self.weights)
        return f"{self.method}({'+'.join(_part_label(p) for p in self.parts)}{weights})"

    @property
    def fingerprint(self) -> str | None:
        """What identifies the fused rankings across runs: the parts' options (and a run file's
        content) or own fingerprints, and how they are fused; ``None`` when a part of the
        user's own has none (then nothing the fusion produces is cached)."""
        parts = []
        for part in self.parts:
            if isinstance(part, StageSource):
                if part.fingerprint is None:
                    return None
                parts.append({"stage": part.label, "fingerprint": part.fingerprint})
            else:
                first = part.own_first_stage()
                content = first.kind.content(first) if first.kind.content else None
                parts.append({"pipeline": first.identity(), "content": content})
        return _digest({"parts": parts, "weights": self.weights, "method": self.method, "c": self.c,
                        "depth": self.depth})  # fmt: skip

    def stage_fingerprint(self, fingerprints: Sequence[str | None]) -> str | None:
        """The fingerprint of the stage :meth:`build` returns (``FusedStage.fingerprint``), from
        its parts' stages' fingerprints, in order: what its cached runs and timings are keyed
        by, so that a plan can find them without building the parts."""
        return FusedStage.fingerprint_of(fingerprints, weights=_weights(self.weights, len(self.parts)),
                                         method=self.method, c=self.c, depth=self.depth)  # fmt: skip

    def models(self) -> list[tuple[str, str]]:
        """The models the parts load, as ``(model, kind)``."""
        return [m for part in self.parts if hasattr(part, "models") for m in part.models()]

    def check(self, collection: Any) -> None:
        """Raise now, before any work, on what a part would refuse later (a run file naming
        queries the collection does not hold)."""
        for part in self.parts:
            if hasattr(part, "own_first_stage"):
                first = part.own_first_stage()
                first.kind.check_input(collection, first)
            elif hasattr(part, "check"):
                part.check(collection)

    def build(self, collection: Any, context: StageContext) -> FusedStage:
        """The parts, each built once per run (``context.part``), fused."""
        return FusedStage([context.part(part) for part in self.parts], weights=self.weights, method=self.method,
                          c=self.c, depth=self.depth)  # fmt: skip


def _part_label(part: Any) -> str:
    return part.label if isinstance(part, StageSource) else part.first_stage


def _weights(weights: Sequence[float] | None, n: int) -> tuple[float, ...]:
    return (1.0 / n,) * n if weights is None else check_fusion_weights(weights, n)


def _check_method(method: str) -> None:
    if method not in FUSION_METHODS:
        raise ConfigError(f"Fusion method must be one of {', '.join(FUSION_METHODS)}, got {method!r}.")


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"A fusion's depth (how deep each stage is read) must be a whole number >= 1, got {depth!r}.")
    return depth


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


__all__ = [
    "FUSION_METHODS",
    "ConvexRetriever",
    "FusedRetriever",
    "FusedStage",
    "Fusion",
    "check_fusion_weights",
    "convex_fusion",
    "fuse",
    "reciprocal_rank_fusion",
]
