"""Reranking with a cross-encoder: scores kept, truncation counted, and a plain-transformers
version for teaching.

Score scale: ragkit reports a cross-encoder's relevance as the **sigmoid of its logit**, a
number between 0 and 1, which is sentence-transformers' default for one-label models. The
sigmoid is applied explicitly rather than taken from the model's saved configuration (some Hub
cross-encoders save an identity activation), so every path here (``score_pairs``,
``ScoredCrossEncoderReranker``, ``rerank``) agrees on one scale. Pass ``raw=True`` (or
``raw_scores=True`` to the compressor) for the raw logits; the order is the same either way.

Truncation: a (query, passage) pair longer than the model's maximum length (its tokenizer's
``model_max_length``, or the ``max_length`` you pass) is cut, passage first
(``"longest_first"``). ``truncation_mask`` and ``count_truncated`` say which pairs were cut,
and the compressor marks each returned document with ``metadata["truncated"]``.

Threads: the loaders hand every caller the same cached model, so everything that tokenizes
with it holds that model's lock (``ragkit.loaders.predict_lock``): ragkit's scoring here, and,
for models from ``HuggingFaceRerankerLoader``, LangChain's ``HuggingFaceCrossEncoder.score``
and any other ``model.client.predict`` call too. A fast tokenizer keeps its truncation length
as shared state, so without the lock two threads scoring with different ``max_length`` s
would truncate with each other's.

Devices: ``score_pairs(..., devices=["cuda:0", "cuda:1"])`` (or ``["cpu", "cpu"]``) scores in
sentence-transformers' multi-process pool, one worker process per device, with the batches,
and so the scores, of one process; ``ragkit.loaders.multi_process_pool`` keeps the workers
open across many calls.

Example::

    from ragkit import HuggingFaceRerankerLoader
    from ragkit.rerank import score_pairs
    model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
    scores = score_pairs(model, [("capital of France?", "Paris is the capital of France."),
                                 ("capital of France?", "Bananas are yellow.")])
    bool(scores[0] > 0.9 > 0.1 > scores[1])
    # True
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from langchain_core.callbacks import Callbacks
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, field_validator
from tqdm.auto import tqdm

from ragkit.errors import ConfigError
from ragkit.loaders import (
    HuggingFaceRerankerLoader,
    PlainCrossEncoder,
    TransformersRerankerLoader,
    check_devices,
    multi_process_pool,
    predict_lock,
    resolve_device,
)
from ragkit.settings import DEFAULT_DEVICE, DEFAULT_RERANKER, DEFAULT_TOP_N, RERANK_DTYPES, rerank_batch_size
from ragkit.stages import ranked_by

if TYPE_CHECKING:
    from langchain_classic.retrievers import ContextualCompressionRetriever

Pair = tuple[str, str]


def _sentence_transformers_model(model: Any) -> Any:
    """The ``sentence_transformers.CrossEncoder`` behind a LangChain ``HuggingFaceCrossEncoder``
    (or the CrossEncoder itself)."""
    from sentence_transformers import CrossEncoder

    inner = model if isinstance(model, CrossEncoder) else getattr(model, "client", None)
    if not isinstance(inner, CrossEncoder):
        raise ConfigError(
            f"Expected a HuggingFaceCrossEncoder (e.g. from HuggingFaceRerankerLoader) or a sentence-transformers "
            f"CrossEncoder, got {type(model).__name__}."
        )
    if inner.num_labels != 1:
        raise ConfigError(
            f"ragkit reranks with one-label cross-encoders (one relevance logit per pair); this "
            f"model has {inner.num_labels} labels."
        )
    return inner


def _max_length(cross_encoder: Any, max_length: int | None) -> int:
    if max_length is None:
        return int(cross_encoder.max_seq_length)
    limit = cross_encoder.model.config.max_position_embeddings
    if not 1 <= max_length <= limit:
        raise ConfigError(f"max_length must be between 1 and the model's {limit} positions, got {max_length}.")
    return max_length


# One re-entrant lock per model, shared with the predict guard the reranker loader installs
# (see ragkit.loaders.predict_lock for why); the old name stays for code that imported it.
_predict_lock = predict_lock


def load_reranker(model_name: str, device: str = "auto", dtype: str = "float32") -> Any:
    """The cached ``HuggingFaceCrossEncoder`` for ``model_name`` on ``device``, with its weights
    in ``dtype`` (one of ``settings.RERANK_DTYPES``; float16 is for GPUs, bfloat16 for GPUs and
    CPUs with bf16 support).

    float32 asks for exactly what ``ragkit eval`` loads, so both share one cached instance.

    Example::

        model = load_reranker("cross-encoder/ms-marco-MiniLM-L-12-v2", "cpu")
        str(model.client.model.dtype)
        # 'torch.float32'
    """
    if dtype not in RERANK_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(RERANK_DTYPES)}, got {dtype!r}.")
    kwargs: dict[str, Any] = {"device": resolve_device(device)}
    if dtype != "float32":
        # sentence-transformers hands model_kwargs to transformers' from_pretrained (dtype=...).
        kwargs["model_kwargs"] = {"dtype": dtype}
    return HuggingFaceRerankerLoader(model_name, model_kwargs=kwargs)


def token_lengths(model: Any, pairs: Sequence[Pair], max_length: int | None = None) -> np.ndarray:
    """How many tokens each ``(query, passage)`` pair takes when scored: its full length, cut
    to ``max_length`` (default: the model's maximum). This is what a forward pass costs per
    pair, before padding.

    Example::

        model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        token_lengths(model, [("q", "short passage"), ("q", "word " * 1000)]).tolist()
        # [6, 512]
    """
    cross_encoder = _sentence_transformers_model(model)
    if not pairs:
        return np.zeros(0, dtype=np.int64)
    length = _max_length(cross_encoder, max_length)
    with _predict_lock(cross_encoder):  # the same shared tokenizer state as scoring
        return np.minimum(_full_lengths(cross_encoder, pairs), length)


def _full_lengths(cross_encoder: Any, pairs: Sequence[Pair]) -> np.ndarray:
    """Untruncated token counts. Call it holding the model's predict lock.

    verbose=False: the over-length warning is exactly what callers measure."""
    encoded = cross_encoder.tokenizer(
        [q for q, _ in pairs], [p for _, p in pairs], truncation=False, padding=False, verbose=False
    )
    return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def score_pairs(
    model: Any,
    pairs: Sequence[Pair],
    *,
    batch_size: int | None = None,
    max_length: int | None = None,
    raw: bool = False,
    show_progress: bool = False,
    devices: Sequence[str] | None = None,
) -> np.ndarray:
    """Relevance of each ``(query, passage)`` pair: the single entry point ragkit scores through.

    Pairs are batched longest first by their exact token length (cut to ``max_length``), so
    a batch is padded only to lengths close to its own: pooling the pairs of many queries in
    one call wastes less compute on padding than scoring query by query. sentence-transformers
    sorts by character count, a rougher proxy for scientific text; the scores are the same
    either way (padding is masked), within float rounding.

    Args:
        model: a ``HuggingFaceCrossEncoder`` (``HuggingFaceRerankerLoader(...)``) or a
            sentence-transformers ``CrossEncoder``.
        pairs: ``(query, passage)`` tuples; pairs of many queries can be pooled in one call.
        batch_size: pairs per forward pass (default: ``settings.rerank_batch_size`` for the
            model's device, small on a CPU, large on a GPU).
        max_length: truncate pairs to this many tokens for this call only (default: the
            model's maximum). It goes to the tokenizer with the call, so the shared model is
            never modified and concurrent callers with other lengths do not interfere.
        raw: return logits instead of their sigmoid.
        show_progress: show a progress bar over batches.
        devices: score in worker processes, one per device, e.g. ``["cuda:0", "cuda:1"]`` or
            ``["cpu", "cpu"]`` (checked before anything else, by
            ``ragkit.loaders.check_devices``). The workers are started for this call and
            stopped after it, unless a ``ragkit.loaders.multi_process_pool`` block on the same
            model and devices is open: then its workers do the work, and many calls pay the
            start-up (seconds) once. Each worker scores whole batches formed as above, so the
            scores are those of one process: to the bit from CPU workers with as many torch
            threads as this process (the pool's default), and from GPU workers, which run the
            kernels this process would on the same kind of GPU.

    Returns:
        float32 array, one score per pair, in the order given.

    Example::

        model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        pairs = [("what is bm25?", "BM25 ranks documents by term statistics.")]
        score_pairs(model, pairs).shape
        # (1,)
        bool((score_pairs(model, pairs, devices=["cpu", "cpu"]) == score_pairs(model, pairs)).all())
        # True
    """
    return _score_and_measure(
        model,
        pairs,
        batch_size=batch_size,
        max_length=max_length,
        raw=raw,
        show_progress=show_progress,
        devices=devices,
    )[0]


def _score_and_measure(
    model: Any,
    pairs: Sequence[Pair],
    *,
    batch_size: int | None,
    max_length: int | None,
    raw: bool,
    show_progress: bool = False,
    devices: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``score_pairs``'s scores and whether each pair was truncated, from one tokenization
    for the lengths (the compressor needs both; measuring twice would tokenize twice)."""
    devices = None if devices is None else check_devices(devices)
    cross_encoder = _sentence_transformers_model(model)
    if batch_size is None:
        # The devices doing the work decide (settings.rerank_batch_size says how).
        batch_size = rerank_batch_size(str(cross_encoder.device), devices)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    pairs = [(str(q), str(p)) for q, p in pairs]
    if not pairs:
        return np.empty(0, dtype=np.float32), np.zeros(0, dtype=bool)
    length = _max_length(cross_encoder, max_length)
    options: dict[str, Any] = {
        "activation_fn": torch.nn.Identity() if raw else torch.nn.Sigmoid(),
        "convert_to_tensor": True,
        "processing_kwargs": {"text": {"max_length": length, "truncation": "longest_first"}},
    }
    with _predict_lock(cross_encoder):
        full_lengths = _full_lengths(cross_encoder, pairs)
        order = np.argsort(-np.minimum(full_lengths, length), kind="stable")
        if devices is None:
            batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
            # One predict call per batch we formed (its own re-sort stays within the batch). The
            # scores stay on the device until the end, so a GPU never waits for the host between
            # batches while the next one is tokenized.
            scored = torch.cat(
                [
                    cross_encoder.predict(
                        [pairs[i] for i in batch], batch_size=len(batch), show_progress_bar=False, **options
                    ).reshape(-1)
                    for batch in tqdm(batches, desc="scoring", unit="batch", disable=not show_progress)
                ]
            )
        else:
            # The same batches, one per chunk: a worker's predict call gets exactly the pairs the
            # loop above would give one call. The model's lock, held here, also keeps two callers
            # off one open pool, whose output queue they would otherwise take each other's from.
            with multi_process_pool(cross_encoder, devices) as pool:
                scored = cross_encoder.predict(
                    [pairs[i] for i in order],
                    pool=pool,
                    batch_size=batch_size,
                    chunk_size=batch_size,
                    show_progress_bar=show_progress,
                    **options,
                ).reshape(-1)
    scores = np.empty(len(pairs), dtype=np.float32)
    scores[order] = scored.float().cpu().numpy()
    return scores, full_lengths > length


def default_batch_size(model: Any) -> int:
    """The batch size :func:`score_pairs` uses for ``model`` when given no batch size and no
    ``devices``: ragkit's default for the device the model sits on (``settings.rerank_batch_size``).

    Example::

        default_batch_size(HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2",
                                                 model_kwargs={"device": "cpu"}))
        # 8
    """
    return rerank_batch_size(str(_sentence_transformers_model(model).device))


def truncation_mask(model: Any, pairs: Sequence[Pair], max_length: int | None = None) -> np.ndarray:
    """Which pairs are longer than the model reads (``max_length``, default the model's
    maximum) and so get truncated when scored: a boolean array, one entry per pair.

    Example::

        model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        truncation_mask(model, [("q", "short passage"), ("q", "word " * 1000)]).tolist()
        # [False, True]
    """
    cross_encoder = _sentence_transformers_model(model)
    if not pairs:
        return np.zeros(0, dtype=bool)
    length = _max_length(cross_encoder, max_length)
    with _predict_lock(cross_encoder):  # the same shared tokenizer state as scoring
        return _full_lengths(cross_encoder, pairs) > length


def count_truncated(model: Any, pairs: Sequence[Pair], max_length: int | None = None) -> int:
    """How many pairs :func:`score_pairs` truncates with the same ``max_length``.

    Example::

        model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        count_truncated(model, [("q", "word " * 1000)] * 3)
        # 3
    """
    return int(truncation_mask(model, pairs, max_length).sum())


class ScoredCrossEncoderReranker(BaseDocumentCompressor):
    """LangChain's ``CrossEncoderReranker`` (same ``model`` and ``top_n``) that keeps the scores.

    Returns the ``top_n`` documents, best first, as new ``Document`` s (the inputs are left
    untouched) with ``metadata["relevance_score"]`` (sigmoid of the logit, or the logit with
    ``raw_scores=True``) and ``metadata["truncated"]`` (whether the pair was cut to
    ``max_length``). Ties keep the first stage's order, as ``CrossEncoderReranker`` does.

    Example::

        from langchain_core.documents import Document
        model = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        reranker = ScoredCrossEncoderReranker(model=model, top_n=1)
        best = reranker.compress_documents([Document("Bananas are yellow."), Document("Paris is in France.")],
                                       "Where is Paris?")
        best[0].page_content, round(best[0].metadata["relevance_score"], 2), best[0].metadata["truncated"]
        # ('Paris is in France.', 1.0, False)
    """

    model: BaseCrossEncoder
    top_n: int = DEFAULT_TOP_N
    batch_size: int | None = None  # None: ragkit's default for the model's device
    max_length: int | None = None
    raw_scores: bool = False

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @field_validator("model")
    @classmethod
    def _sentence_transformers_backed(cls, model: BaseCrossEncoder) -> BaseCrossEncoder:
        _sentence_transformers_model(model)
        return model

    @field_validator("top_n", "batch_size")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Score every document against ``query`` and return the best ``top_n`` with scores."""
        if not documents:
            return []
        pairs = [(query, doc.page_content) for doc in documents]
        scores, truncated = _score_and_measure(
            self.model, pairs, batch_size=self.batch_size, max_length=self.max_length, raw=self.raw_scores
        )
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[: self.top_n]
        return [
            Document(
                page_content=documents[i].page_content,
                id=documents[i].id,
                metadata={
                    **documents[i].metadata,
                    "relevance_score": float(scores[i]),
                    "truncated": bool(truncated[i]),
                },
            )
            for i in order
        ]


def reranking_retriever(
    base_retriever: BaseRetriever,
    reranker: str | BaseCrossEncoder = DEFAULT_RERANKER,
    top_n: int = DEFAULT_TOP_N,
    *,
    model_kwargs: dict[str, Any] | None = None,
    **compressor_kwargs: Any,
) -> ContextualCompressionRetriever:
    """The design's pipeline: ``ContextualCompressionRetriever`` over ``base_retriever`` (which
    sets how many candidates, k, are reranked) with a :class:`ScoredCrossEncoderReranker`.

    Args:
        base_retriever: the first stage, e.g. ``index.as_retriever(k=20)``.
        reranker: a cross-encoder name (loaded with ``HuggingFaceRerankerLoader(reranker,
            model_kwargs)``) or a loaded ``HuggingFaceCrossEncoder``.
        top_n: documents returned.
        compressor_kwargs: ``batch_size``, ``max_length``, ``raw_scores``.

    Example::

        retriever = reranking_retriever(index.as_retriever(k=20), top_n=5)
        [d.metadata["relevance_score"] for d in retriever.invoke("what is reranking?")]
        # [0.98, 0.91, 0.40, 0.07, 0.01]
    """
    from langchain_classic.retrievers import ContextualCompressionRetriever

    if isinstance(reranker, str):
        model = HuggingFaceRerankerLoader(reranker, model_kwargs=model_kwargs)
    elif model_kwargs is not None:
        raise ConfigError("model_kwargs configure a reranker loaded by name; a loaded model comes configured.")
    else:
        model = reranker
    compressor = ScoredCrossEncoderReranker(model=model, top_n=top_n, **compressor_kwargs)
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)


class CrossEncoderStage:
    """A one-label cross-encoder as ragkit's engine reranks with it (a
    :class:`ragkit.stages.PairScorer`): each (query, passage) pair scored on its own, by its
    logit, through :func:`score_pairs`.

    Args:
        model_name: a Hub id or a local folder.
        device: where it runs (resolved, e.g. ``"cpu"``).
        dtype: the weights' precision (``settings.RERANK_DTYPES``).
        batch_size: pairs per forward pass (default: ragkit's for the device).
        max_length: tokens of a pair it reads (default: the model's maximum).

    Its ``fingerprint`` (the key of its cached pair scores) covers the model and its revision,
    the device, precision, maximum length and ragkit's scoring format.

    Example::

        stage = CrossEncoderStage("cross-encoder/ms-marco-MiniLM-L-12-v2", device="cpu")
        stage.rerank("capital of France?", [("d1", "Bananas are yellow."), ("d2", "Paris is the capital.")])
        # [('d2', 8.6...), ('d1', -11.2...)]
    """

    def __init__(
        self,
        model_name: str,
        *,
        device: str,
        dtype: str = "float32",
        batch_size: int | None = None,
        max_length: int | None = None,
    ) -> None:
        from ragkit.cache import FORMATS, digest
        from ragkit.provenance import model_state

        self.model = load_reranker(model_name, device, dtype)
        self.batch_size = batch_size or default_batch_size(self.model)
        self.max_length = max_length
        parts: list[Any] = [model_name, model_state(model_name), device, self.model.client.max_seq_length,
                            FORMATS["scoring"], dtype]  # fmt: skip
        if max_length is not None:  # only then: scores cached at the model's own length stay valid
            parts.append(("max_length", max_length))
        self.fingerprint = digest(*parts)

    def score(self, pairs: Sequence[Pair], *, devices: Sequence[str] | None = None) -> np.ndarray:
        """The logit of each pair (the ranking is decided on logits: their sigmoid rounds every
        strong match to 1.0)."""
        return score_pairs(
            self.model, pairs, batch_size=self.batch_size, max_length=self.max_length, raw=True, devices=devices
        )

    def scoring_order(self, pairs: Sequence[Pair]) -> np.ndarray:
        """Longest pair first, as :func:`score_pairs` batches them."""
        return np.argsort(-token_lengths(self.model, pairs, self.max_length), kind="stable")

    def truncated(self, pairs: Sequence[Pair]) -> np.ndarray:
        """Which pairs are longer than the model reads."""
        return truncation_mask(self.model, pairs, self.max_length)

    def workers(self, devices: Sequence[str] | None) -> Any:
        """The model's worker pool over ``devices`` for many :meth:`score` calls."""
        return multi_process_pool(self.model, devices) if devices else contextlib.nullcontext()

    def prepare(self, texts: Sequence[str]) -> None:
        """Nothing: a cross-encoder reads the query and the text together, so no part of its
        work can be done before the query comes."""

    def rerank(self, query: str, candidates: Sequence[tuple[str, str]]) -> list[tuple[str, float]]:
        """``candidates`` (doc id, text) by descending logit; ties keep their given order."""
        logits = self.score([(query, text) for _, text in candidates])
        return ranked_by(candidates, logits)

    def as_compressor(self, top_n: int, *, raw_scores: bool = False) -> ScoredCrossEncoderReranker:
        """The same model, batch size and length as LangChain's compressor, keeping ``top_n``."""
        return ScoredCrossEncoderReranker(
            model=self.model, top_n=top_n, batch_size=self.batch_size, max_length=self.max_length, raw_scores=raw_scores
        )


def build_cross_encoder(model: str, pipeline: Any, context: Any) -> CrossEncoderStage:
    """The cross-encoder a pipeline names (``ragkit.registry`` builder)."""
    return CrossEncoderStage(model, device=context.device, dtype=pipeline.reranker_dtype,
                             batch_size=context.batch_size, max_length=pipeline.max_length)  # fmt: skip


class RerankResult(NamedTuple):
    """One reranked passage: its position in the input list and its score."""

    index: int
    score: float


def _plain_model(model_name: str, device: str) -> PlainCrossEncoder:
    """The cached plain-transformers ``(tokenizer, model)``: held by ``ragkit.loaders`` like
    every other model, so ``clear_cache()`` frees it and ``cached_models()`` lists it."""
    return TransformersRerankerLoader(model_name, model_kwargs={"device": device})


def rerank(
    query: str,
    documents: Sequence[str],
    top_n: int | None = None,
    model_name: str = DEFAULT_RERANKER,
    device: str = DEFAULT_DEVICE,
    batch_size: int | None = None,
    max_length: int | None = None,
    *,
    top_k: int | None = None,
) -> list[RerankResult]:
    """Rerank ``documents`` for ``query`` with plain ``transformers``, no LangChain: what a
    cross-encoder does, step by step. Scores are the sigmoid of the logit, as everywhere in
    ragkit, and equal ``score_pairs``'s within float error.

    Args:
        query: the question.
        documents: the passages to rerank.
        top_n: how many to return (default ``settings.DEFAULT_TOP_N``), the name every other
            ragkit reranker uses.
        model_name: a one-label cross-encoder (Hub id or local folder), loaded once and cached.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        batch_size: passages per forward pass (default: ragkit's for the device).
        max_length: truncate each (query, passage) pair to this many tokens (default: the
            tokenizer's maximum).
        top_k: the old name of ``top_n``; still accepted, with a ``DeprecationWarning``.

    Returns:
        The ``top_n`` best as ``(index, score)``, best first; ``documents[index]`` is the text.

    Example::

        passages = ["Bananas are yellow.", "Paris is the capital of France."]
        [i for i, _ in rerank("What is the capital of France?", passages, top_n=2)]
        # [1, 0]
    """
    name = "top_n"
    if top_k is not None:
        if top_n is not None:
            raise ConfigError("Pass top_n only: top_k is its old name, and both were given.")
        warnings.warn(
            "rerank(top_k=...) is deprecated: pass top_n=..., the name ragkit's other rerankers use.",
            DeprecationWarning,
            stacklevel=2,
        )
        top_n, name = top_k, "top_k"
    top_n = DEFAULT_TOP_N if top_n is None else top_n
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise ConfigError(f"{name} must be a positive integer (the number of passages returned), got {top_n!r}.")
    tokenizer, model = _plain_model(model_name, resolve_device(device))
    if model.config.num_labels != 1:
        raise ConfigError(f"rerank() needs a one-label cross-encoder; {model_name} has {model.config.num_labels}.")
    documents = list(documents)
    batch_size = rerank_batch_size(str(model.device)) if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    scores: list[float] = []
    for start in range(0, len(documents), batch_size):
        batch = documents[start : start + batch_size]
        # The query and passage go in together, as one "[CLS] query [SEP] passage [SEP]" input:
        # that joint reading is what makes it a cross-encoder. Passages are cut to fit. The
        # cached tokenizer is shared, and keeps its truncation length as state: hold its lock.
        with predict_lock(model):
            features = tokenizer(
                [query] * len(batch),
                batch,
                padding=True,
                truncation="longest_first",
                max_length=max_length or tokenizer.model_max_length,
                return_tensors="pt",
            )
        with torch.inference_mode():
            logits = model(**features.to(model.device)).logits.squeeze(-1)
        scores += torch.sigmoid(logits.float()).tolist()
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    return [RerankResult(i, scores[i]) for i in order[:top_n]]


class _RerankModule(types.ModuleType):
    """``ragkit.rerank`` names both this module and its :func:`rerank` function. The package
    imports its names on first use, so once this module is imported, ``ragkit.rerank`` (and
    ``from ragkit import rerank``) finds the module: calling it calls the function, as it
    did when the package imported everything up front."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[RerankResult]:
        return rerank(*args, **kwargs)


sys.modules[__name__].__class__ = _RerankModule
