"""LangChain's cross-encoder interface over sentence-transformers, for when
``langchain-community`` is not installed.

``HuggingFaceRerankerLoader`` returns LangChain community's ``HuggingFaceCrossEncoder``, the
model LangChain's ``CrossEncoderReranker`` documents. Its maintainers are retiring
``langchain-community``; where it does not install, the loader returns
:class:`SentenceTransformersCrossEncoder` instead: the same fields (``model_name``,
``model_kwargs``, ``client``), the same ``score`` and the same scores, implementing
``langchain_core``'s own ``BaseCrossEncoder``, so every reranker built on it works unchanged.

Example::

    ce = SentenceTransformersCrossEncoder(model_name="cross-encoder/ms-marco-MiniLM-L-12-v2")
    ce.score([("capital of France?", "Paris is the capital of France.")])
    # array([0.99...], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.cross_encoders import BaseCrossEncoder
from pydantic import BaseModel, ConfigDict, Field


class SentenceTransformersCrossEncoder(BaseModel, BaseCrossEncoder):
    """A sentence-transformers ``CrossEncoder`` as a LangChain ``BaseCrossEncoder``.

    Args:
        model_name: a Hub id or a local folder.
        model_kwargs: passed to ``sentence_transformers.CrossEncoder`` (``device``, ``max_length``...).
    """

    client: Any = None
    model_name: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from sentence_transformers import CrossEncoder

        self.client = CrossEncoder(self.model_name, **self.model_kwargs)

    def score(self, text_pairs: Sequence[tuple[str, str]]) -> Any:
        """The model's score of each (query, text) pair, as its sentence-transformers
        configuration makes it (a sigmoid for the one-label MS MARCO models); for a model with
        two labels (not relevant, relevant), the second's, as LangChain community reads it."""
        scores = self.client.predict(list(text_pairs))
        return scores[:, 1] if len(scores.shape) > 1 else scores


__all__ = ["SentenceTransformersCrossEncoder"]
