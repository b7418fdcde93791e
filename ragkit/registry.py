"""The kinds of first stage and the families of reranker a :class:`ragkit.Pipeline` can name,
in one place.

Each kind is a :class:`ragkit.stages.StageKind`: the module and function that build it (imported
only when a stage of the kind is built, so that naming BM25 never imports chromadb), the
pipeline options it reads, and its name in tables. The engine looks kinds up here and nowhere
tests a retriever's name: a new kind of first stage is one module implementing
:class:`ragkit.stages.FirstStage` and one line below.

Rerankers likewise: a :class:`ragkit.stages.RerankerKind` per family, named as a prefix of the
model (``"bi-encoder:BAAI/bge-small-en-v1.5"``; no prefix is a cross-encoder), built by a
function implementing :class:`ragkit.stages.Reranker`.

Example:
    >>> sorted(FIRST_STAGES), sorted(RERANKERS)
    (['bm25', 'dense', 'hybrid', 'run'], ['bi-encoder', 'cross-encoder'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragkit.errors import ConfigError
from ragkit.settings import HYBRID_WEIGHTS
from ragkit.stages import RerankerKind, StageKind, StageSource, short_name


def _dense_label(p: Any) -> str:
    return f"dense({short_name(p.embedder)}{p.passages})"


def _hybrid_label(p: Any) -> str:
    weights = "" if p.fusion_weights == HYBRID_WEIGHTS else ", weights={:g}:{:g}".format(*p.fusion_weights)
    return f"hybrid({short_name(p.embedder)}+bm25{weights})"


def _run_label(p: Any) -> str:
    return f"run({Path(p.run_file).name})"


def _run_content(p: Any) -> str:
    from ragkit.runfile import file_sha256

    return file_sha256(p.run_file)


_PASSAGE_OPTIONS = ("chunk_size", "chunk_overlap", "chunk_unit", "passage_score")

FIRST_STAGES: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind("dense", "ragkit.retrievers:build_dense_stage", ("embedder", *_PASSAGE_OPTIONS), ("embedder",),
                  _dense_label),
        StageKind("bm25", "ragkit.retrievers:build_bm25_stage", (), (), lambda p: "bm25"),
        StageKind("hybrid", "ragkit.hybrid:build_hybrid_stage", ("embedder", "fusion_weights"), ("embedder",),
                  _hybrid_label),
        StageKind("run", "ragkit.runfile:build_run_stage", ("run_file",), ("run_file",), _run_label,
                  check="ragkit.runfile:check_run_stage", content=_run_content),
    )
}  # fmt: skip


RERANKERS: dict[str, RerankerKind] = {
    kind.name: kind
    for kind in (
        RerankerKind("cross-encoder", "ragkit.rerank:build_cross_encoder", "cross-encoder",
                     ("reranker_dtype", "max_length"), short_name),
        RerankerKind("bi-encoder", "ragkit.rescore:build_bi_encoder", "embedder", (),
                     lambda model: f"bi-encoder:{short_name(model)}"),
    )
}  # fmt: skip


# The stages of a user's own ragkit adapts (given to a pipeline as objects, not by name).
USER_STAGES = ("ragkit.langchain_stages:LangChainRetriever", "ragkit.langchain_stages:LangChainCompressor")


def first_stage_kind(retriever: str | StageSource) -> StageKind:
    """The registered kind ``retriever`` names, or a :class:`ConfigError` naming the known
    ones; for a user's own stage (a :class:`ragkit.stages.StageSource`), a kind of its own.

    Example:
        >>> first_stage_kind("bm25").options
        ()
    """
    if not isinstance(retriever, str):
        _check_source(retriever, "retriever")
        check = getattr(retriever, "check", None)  # a source that can refuse its input before any work
        return StageKind(retriever.label, lambda collection, _, context: retriever.build(collection, context), (),
                         (), lambda _: retriever.label, content=lambda _: retriever.fingerprint,
                         check=check and (lambda collection, _: check(collection)))  # fmt: skip
    if retriever not in FIRST_STAGES:
        raise ConfigError(
            f"Unknown retriever {retriever!r}: use one of {', '.join(repr(k) for k in FIRST_STAGES)}, or a stage "
            "of your own (ragkit.LangChainRetriever)."
        )
    return FIRST_STAGES[retriever]


def reranker_kind(reranker: str | StageSource) -> tuple[RerankerKind, str | None]:
    """The family ``reranker`` names and its model: ``"bi-encoder:<model>"``, or a
    cross-encoder's model alone; for a user's own reranker, a family of its own and no model.

    Example:
        >>> kind, model = reranker_kind("bi-encoder:BAAI/bge-small-en-v1.5")
        >>> kind.name, model, kind.label(model)
        ('bi-encoder', 'BAAI/bge-small-en-v1.5', 'bi-encoder:bge-small-en-v1.5')
    """
    if not isinstance(reranker, str):
        _check_source(reranker, "reranker")
        kind = RerankerKind(reranker.label, lambda _, __, context: reranker.build(None, context), None, (),
                            lambda _: reranker.label)  # fmt: skip
        return kind, None
    family, colon, model = reranker.partition(":")
    if not colon or Path(reranker).exists():  # a Hub id has no colon; a folder may
        return RERANKERS["cross-encoder"], reranker
    if family not in RERANKERS:
        raise ConfigError(
            f"Unknown reranker family {family!r} in {reranker!r}: name a cross-encoder by its Hub id or folder, or "
            f"prefix the model with one of {', '.join(repr(k + ':') for k in RERANKERS)}."
        )
    if not model:
        raise ConfigError(f"Reranker {reranker!r} names no model: write {family}:<Hub id or folder>.")
    return RERANKERS[family], model


def _check_source(source: object, option: str) -> None:
    if not isinstance(source, StageSource):
        raise ConfigError(
            f"{option}= takes a registered name or a stage of your own with a label, a fingerprint and "
            f"build(collection, context) (ragkit.stages.StageSource), not a {type(source).__name__}."
        )


__all__ = ["FIRST_STAGES", "RERANKERS", "USER_STAGES", "first_stage_kind", "reranker_kind"]
