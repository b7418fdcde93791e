"""Defaults and environment variables, in one place.

Every default a user may want to change lives here, so the notebooks, the command line
and the tests read the same value. Environment variables override the paths:

- ``RAGKIT_BEIR_DIR``: a folder holding BEIR collections as ``<dir>/<name>/corpus.jsonl``...
  (CI and the notebooks point it at ``../shared/beir``).
- ``RAGKIT_DATA_DIR``: where downloads land (default: ``data/`` in the working directory).
- ``RAGKIT_CACHE_DIR``: where Chroma indexes, first-stage runs and pair scores are cached.
"""

from __future__ import annotations

import os
from pathlib import Path

BEIR_DIR_ENV = "RAGKIT_BEIR_DIR"
DATA_DIR_ENV = "RAGKIT_DATA_DIR"
CACHE_DIR_ENV = "RAGKIT_CACHE_DIR"

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L-12-v2"
DEFAULT_DEVICE = "auto"


def data_dir() -> Path:
    """Folder for downloaded collections: ``$RAGKIT_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def cache_dir() -> Path:
    """Folder for indexes and score caches: ``$RAGKIT_CACHE_DIR`` or ``~/.cache/ragkit``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragkit"
    return Path(os.environ.get(CACHE_DIR_ENV, default))


def beir_dir() -> Path | None:
    """Folder named by ``$RAGKIT_BEIR_DIR``, or ``None`` when the variable is unset."""
    value = os.environ.get(BEIR_DIR_ENV)
    return Path(value) if value else None
