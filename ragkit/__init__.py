"""ragkit: learn and measure cross-encoder reranking on top of a LangChain + Chroma retriever.

The public names, re-exported from the module that holds each one.
"""

import logging

from ragkit.data import BeirCollection, load_beir, make_subset
from ragkit.errors import DataError, DeviceNotAvailableError, ModelNotFoundError, RagkitError
from ragkit.loaders import (
    CachedLoader,
    CachedModel,
    EmbeddingsFunction,
    HuggingFaceEmbeddingsLoader,
    HuggingFaceRerankerLoader,
    cached_models,
    clear_cache,
)
from ragkit.evaluate import Experiment, Pipeline, experiment, grid
from ragkit.models import CATALOGUE, ModelInfo, available_models, get_model, model_revision
from ragkit.rerank import ScoredCrossEncoderReranker, rerank, reranking_retriever, score_pairs
from ragkit.retrievers import BM25Retriever, ChromaIndex, build_chroma_index

# A library leaves handler configuration to the application; this keeps Python from
# printing "No handlers could be found" while still letting `logging.basicConfig` show ours.
logging.getLogger("ragkit").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "BM25Retriever",
    "ChromaIndex",
    "Experiment",
    "Pipeline",
    "ScoredCrossEncoderReranker",
    "build_chroma_index",
    "experiment",
    "grid",
    "rerank",
    "reranking_retriever",
    "score_pairs",
    "BeirCollection",
    "CATALOGUE",
    "CachedLoader",
    "CachedModel",
    "DataError",
    "DeviceNotAvailableError",
    "EmbeddingsFunction",
    "HuggingFaceEmbeddingsLoader",
    "HuggingFaceRerankerLoader",
    "ModelInfo",
    "ModelNotFoundError",
    "RagkitError",
    "available_models",
    "cached_models",
    "clear_cache",
    "get_model",
    "load_beir",
    "make_subset",
    "model_revision",
]
