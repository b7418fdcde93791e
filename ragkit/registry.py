"""The kinds of first stage a :class:`ragkit.Pipeline` can name, in one place.

Each kind is a :class:`ragkit.stages.StageKind`: the module and function that build it (imported
only when a stage of the kind is built, so that naming BM25 never imports chromadb), the
pipeline options it reads, and its name in tables. The engine looks kinds up here and nowhere
tests a retriever's name: a new kind of first stage is one module implementing
:class:`ragkit.stages.FirstStage` and one line below.

Example:
    >>> sorted(FIRST_STAGES)
    ['bm25', 'dense', 'hybrid', 'run']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragkit.errors import ConfigError
from ragkit.settings import HYBRID_WEIGHTS
from ragkit.stages import StageKind, short_name


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


def first_stage_kind(name: str) -> StageKind:
    """The registered kind ``name``, or a :class:`ConfigError` naming the known ones.

    Example:
        >>> first_stage_kind("bm25").options
        ()
    """
    if name not in FIRST_STAGES:
        raise ConfigError(f"Unknown retriever {name!r}: use one of {', '.join(repr(k) for k in FIRST_STAGES)}.")
    return FIRST_STAGES[name]


__all__ = ["FIRST_STAGES", "first_stage_kind"]
