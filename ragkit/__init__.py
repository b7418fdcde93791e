"""ragkit: learn and measure cross-encoder reranking on top of a LangChain + Chroma retriever.

The public names, re-exported from the module that holds each one. They are imported on
first use, so that ``import ragkit`` (and ``ragkit --help``) takes a fraction of a second
instead of the seconds torch, LangChain and Chroma need.

Example:
    >>> import ragkit
    >>> ragkit.Pipeline().name
    'dense(all-MiniLM-L6-v2)'
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# A library leaves handler configuration to the application; this keeps Python from
# printing "No handlers could be found" while still letting `logging.basicConfig` show ours.
logging.getLogger("ragkit").addHandler(logging.NullHandler())

__version__ = "0.1.0"

# Public name -> the module that holds it.
_EXPORTS = {
    "BeirCollection": "data",
    "load_beir": "data",
    "make_subset": "data",
    "sample_queries": "data",
    "CacheError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "DeviceNotAvailableError": "errors",
    "ModelNotFoundError": "errors",
    "RagkitError": "errors",
    "CachedLoader": "loaders",
    "CachedModel": "loaders",
    "EmbeddingsFunction": "loaders",
    "HuggingFaceEmbeddingsLoader": "loaders",
    "HuggingFaceRerankerLoader": "loaders",
    "cached_models": "loaders",
    "clear_cache": "loaders",
    "CATALOGUE": "models",
    "ModelInfo": "models",
    "available_models": "models",
    "get_model": "models",
    "model_revision": "models",
    "BM25Retriever": "retrievers",
    "ChromaIndex": "retrievers",
    "build_chroma_index": "retrievers",
    "HybridRetriever": "hybrid",
    "Fusion": "fusion",
    "PassageStage": "passages",
    "plan": "plan",
    "Plan": "plan",
    "until_decided": "until_decided",
    "FirstStage": "stages",
    "Reranker": "stages",
    "PairScorer": "stages",
    "LangChainRetriever": "langchain_stages",
    "LangChainCompressor": "langchain_stages",
    "BiEncoderRescorer": "rescore",
    "CrossEncoderStage": "rerank",
    "RunFileStage": "runfile",
    "read_run": "runfile",
    "ScoredCrossEncoderReranker": "rerank",
    "rerank": "rerank",
    "reranking_retriever": "rerank",
    "score_pairs": "rerank",
    "Pipeline": "evaluate",
    "Rerank": "evaluate",
    "experiment": "evaluate",
    "grid": "evaluate",
    "RunSettings": "settings",
    "EvaluationResult": "results",
    "Experiment": "results",
    "write_report": "report",
}

__all__ = [
    "BM25Retriever",
    "BeirCollection",
    "BiEncoderRescorer",
    "CATALOGUE",
    "CacheError",
    "CachedLoader",
    "CachedModel",
    "ChromaIndex",
    "ConfigError",
    "CrossEncoderStage",
    "DataError",
    "DeviceNotAvailableError",
    "EmbeddingsFunction",
    "EvaluationResult",
    "Experiment",
    "FirstStage",
    "Fusion",
    "HuggingFaceEmbeddingsLoader",
    "HuggingFaceRerankerLoader",
    "HybridRetriever",
    "LangChainCompressor",
    "LangChainRetriever",
    "ModelInfo",
    "ModelNotFoundError",
    "PairScorer",
    "PassageStage",
    "Plan",
    "Pipeline",
    "RagkitError",
    "Rerank",
    "Reranker",
    "RunFileStage",
    "RunSettings",
    "ScoredCrossEncoderReranker",
    "available_models",
    "build_chroma_index",
    "cached_models",
    "clear_cache",
    "experiment",
    "get_model",
    "grid",
    "load_beir",
    "make_subset",
    "sample_queries",
    "model_revision",
    "plan",
    "read_run",
    "rerank",
    "reranking_retriever",
    "score_pairs",
    "write_report",
    "until_decided",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ragkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ragkit.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from ragkit.data import BeirCollection, load_beir, make_subset, sample_queries
    from ragkit.errors import (
        CacheError,
        ConfigError,
        DataError,
        DeviceNotAvailableError,
        ModelNotFoundError,
        RagkitError,
    )
    from ragkit.evaluate import Pipeline, Rerank, experiment, grid
    from ragkit.fusion import Fusion
    from ragkit.hybrid import HybridRetriever
    from ragkit.langchain_stages import LangChainCompressor, LangChainRetriever
    from ragkit.loaders import (
        CachedLoader,
        CachedModel,
        EmbeddingsFunction,
        HuggingFaceEmbeddingsLoader,
        HuggingFaceRerankerLoader,
        cached_models,
        clear_cache,
    )
    from ragkit.models import CATALOGUE, ModelInfo, available_models, get_model, model_revision
    from ragkit.passages import PassageStage
    from ragkit.plan import Plan, plan
    from ragkit.report import write_report
    from ragkit.rerank import CrossEncoderStage, ScoredCrossEncoderReranker, rerank, reranking_retriever, score_pairs
    from ragkit.rescore import BiEncoderRescorer
    from ragkit.results import EvaluationResult, Experiment
    from ragkit.retrievers import BM25Retriever, ChromaIndex, build_chroma_index
    from ragkit.runfile import RunFileStage, read_run
    from ragkit.settings import RunSettings
    from ragkit.stages import FirstStage, PairScorer, Reranker
    from ragkit.until_decided import until_decided
