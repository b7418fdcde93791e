"""Rescoring with a second, stronger bi-encoder: an alternative to a cross-encoder that costs little at query time.

A bi-encoder reranker embeds the query and each candidate on their own, with a model other
than the first stage's (say ``BAAI/bge-small-en-v1.5`` over ``all-MiniLM-L6-v2``'s top 100),
and ranks the candidates by cosine similarity. It reads each text once instead of each
(query, text) pair, so it costs about one embedding per candidate rather than one joint pass
per pair; what that buys in quality is what the engine measures, in the same tables and verdict
as a cross-encoder's (``Pipeline(reranker="bi-encoder:BAAI/bge-small-en-v1.5")``, or
``ragkit eval --rerankers bi-encoder:BAAI/bge-small-en-v1.5``).

The query is embedded as ragkit's dense first stage embeds it (with the catalogue's query
instruction, for bge), the candidates as documents; a text longer than the model reads is cut
(``truncated`` says which).

Deployed, the second model's document vectors are computed at index time and stored beside the
first stage's, so serving a query costs one more query embedding and a dot product per
candidate; that is what its latency measures (``prepare`` stores the timed candidates' vectors
first, untimed). The price moves to indexing: the corpus is embedded by both models.

Example::

    stage = BiEncoderRescorer("BAAI/bge-small-en-v1.5", device="cpu")
    stage.rerank("capital of France?", [("d1", "Bananas are yellow."), ("d2", "Paris is the capital.")])
    # [('d2', 0.77...), ('d1', 0.42...)]
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict

from ragkit.loaders import HuggingFaceEmbeddingsLoader, embed_documents, multi_process_pool
from ragkit.retrievers import _embedder_identity, embed_queries
from ragkit.stages import ranked_by

Pair = tuple[str, str]


class BiEncoderRescorer:
    """A bi-encoder as a reranker (a :class:`ragkit.stages.PairScorer`): a pair's score is the
    cosine similarity of the query's and the text's embeddings.

    Args:
        model_name: a sentence-transformers embedder's Hub id or folder.
        device: where it runs (resolved, e.g. ``"cpu"``).
        batch_size: texts per forward pass (default: the model's).

    Its ``fingerprint`` (the key of its cached pair scores) covers what decides the vectors
    (model, revision, query instruction and output options), the device, and ragkit's
    scoring format.
    """

    def __init__(self, model_name: str, *, device: str, batch_size: int | None = None) -> None:
        from ragkit.cache import FORMATS, digest

        self.embeddings = HuggingFaceEmbeddingsLoader(model_name, model_kwargs={"device": device})
        self.batch_size = batch_size
        self._stored: dict[str, np.ndarray] = {}  # text -> unit vector, what prepare() computed ahead
        instruction = (self.embeddings.query_encode_kwargs or {}).get("prompt", "")
        self.fingerprint = digest(
            "bi-encoder", _embedder_identity(self.embeddings), instruction, device, FORMATS["scoring"]
        )

    def score(self, pairs: Sequence[Pair], *, devices: Sequence[str] | None = None) -> np.ndarray:
        """Cosine similarity of each pair, every distinct query and text embedded once (a text
        :meth:`prepare` stored is not embedded again)."""
        if not pairs:
            return np.empty(0, dtype=np.float32)
        queries = list(dict.fromkeys(q for q, _ in pairs))
        texts = list(dict.fromkeys(t for _, t in pairs))
        q_vectors = _unit(embed_queries(self.embeddings, queries))
        new = [t for t in texts if t not in self._stored]
        fresh = dict(zip(new, self._embed(new, devices))) if new else {}
        t_vectors = np.stack([self._stored[t] if t in self._stored else fresh[t] for t in texts])
        q_row = {q: i for i, q in enumerate(queries)}
        t_row = {t: i for i, t in enumerate(texts)}
        rows_q = np.array([q_row[q] for q, _ in pairs])
        rows_t = np.array([t_row[t] for _, t in pairs])
        return np.einsum("ij,ij->i", q_vectors[rows_q], t_vectors[rows_t]).astype(np.float32)

    def prepare(self, texts: Sequence[str]) -> None:
        """Embed and store ``texts`` (documents) ahead of the queries, as an index would."""
        new = list(dict.fromkeys(t for t in texts if t not in self._stored))
        if new:
            self._stored.update(zip(new, self._embed(new, None)))

    def _embed(self, texts: list[str], devices: Sequence[str] | None) -> np.ndarray:
        return _unit(embed_documents(self.embeddings, texts, batch_size=self.batch_size, devices=devices))

    def scoring_order(self, pairs: Sequence[Pair]) -> np.ndarray:
        """Longest text first, and a text's pairs together, so that a text is embedded in one
        slice of the order (and once) however the engine cuts it."""
        return np.array(sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][1]), pairs[i][1])), dtype=np.int64)

    def truncated(self, pairs: Sequence[Pair]) -> np.ndarray:
        """Which pairs' texts are longer than the model reads (the query is read on its own)."""
        model = self.embeddings._client
        if not pairs:
            return np.zeros(0, dtype=bool)
        lengths = model.tokenizer([t for _, t in pairs], truncation=False, padding=False, verbose=False)["input_ids"]
        return np.array([len(ids) > model.max_seq_length for ids in lengths], dtype=bool)

    def workers(self, devices: Sequence[str] | None) -> Any:
        """The embedder's worker pool over ``devices`` for many :meth:`score` calls."""
        return multi_process_pool(self.embeddings, devices) if devices else contextlib.nullcontext()

    def rerank(self, query: str, candidates: Sequence[tuple[str, str]]) -> list[tuple[str, float]]:
        """``candidates`` (doc id, text) by descending cosine; ties keep their given order."""
        scores = self.score([(query, text) for _, text in candidates])
        return ranked_by(candidates, scores)

    def as_compressor(self, top_n: int, *, raw_scores: bool = False) -> BiEncoderCompressor:
        """The rescorer as a LangChain compressor keeping ``top_n`` documents (cosines are
        their own raw scores, so ``raw_scores`` changes nothing)."""
        return BiEncoderCompressor(rescorer=self, top_n=top_n)


class BiEncoderCompressor(BaseDocumentCompressor):
    """LangChain's view of a :class:`BiEncoderRescorer`: the ``top_n`` documents by cosine
    similarity to the query, best first, as new ``Document`` s with
    ``metadata["relevance_score"]``."""

    rescorer: Any
    top_n: int

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rescore ``documents`` against ``query`` and return the best ``top_n``."""
        ranked = self.rescorer.rerank(query, [(str(i), d.page_content) for i, d in enumerate(documents)])
        return [
            Document(
                page_content=documents[int(i)].page_content,
                id=documents[int(i)].id,
                metadata={**documents[int(i)].metadata, "relevance_score": score},
            )
            for i, score in ranked[: self.top_n]
        ]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def build_bi_encoder(model: str, pipeline: Any, context: Any) -> BiEncoderRescorer:
    """The bi-encoder reranker a pipeline names (``ragkit.registry`` builder)."""
    return BiEncoderRescorer(model, device=context.device)


__all__ = ["BiEncoderCompressor", "BiEncoderRescorer", "build_bi_encoder"]
