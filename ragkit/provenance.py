"""Where and with what a measurement was taken: device, CPU or GPU model, library versions,
model revisions, and the identity of models and code that cache keys need.

Everything here is cheap: versions come from installed package metadata rather than imports,
and model state from file stats, so a cache key can be computed without loading anything.

Example:
    >>> "cores" in device_description("cpu")
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The modules whose code decides what an evaluation computes. A stored result answers only
# the code that computed it, so an edit to one of these (in an editable install, where the
# version number stays put) recomputes; an edit to a plot, the CLI or a benchmark helper does not.
COMPUTING_MODULES = (
    "bm25", "data", "evaluate", "loaders", "measures", "models", "rerank", "retrievers", "settings", "stats",
)  # fmt: skip


def now() -> str:
    """The current UTC time, to the second, in ISO 8601: how ragkit dates every measurement."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def device_description(device: str) -> str:
    """What a device is, for reports: the GPU's name, or the CPU model and its core count.

    Example:
        >>> "core" in device_description("cpu")
        True
    """
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def versions() -> dict[str, str]:
    """Versions of the libraries that decide what a measurement means, for reports.

    Example:
        >>> sorted(versions())[:3]
        ['ir-measures', 'python', 'ragkit']
    """
    # Installed metadata, not the modules: importing sentence-transformers takes seconds.
    names = ["ragkit", "torch", "transformers", "sentence-transformers", "ir-measures"]
    return {**{n: importlib.metadata.version(n) for n in names}, "python": platform.python_version()}


def model_state(model_id: str) -> Any:
    """A model's identity for cache keys: its revision, or for a local folder (whose revision
    is just "local") the names, sizes and modification times of its files, so retraining a
    model in place is noticed."""
    from ragkit.models import model_revision

    folder = Path(model_id)
    if not folder.is_dir():
        return model_revision(model_id)
    return sorted(
        (str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*") if f.is_file()
    )


def machine_state(device: str) -> tuple[Any, ...]:
    """What timings depend on besides the work itself: device, CPU or GPU model, torch
    threads and library versions."""
    import torch

    return device, device_description(device), torch.get_num_threads(), versions()


def code_state() -> str:
    """A digest of the source of ragkit's computing modules (``COMPUTING_MODULES``)."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for name in COMPUTING_MODULES:
        digest.update(name.encode())
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()


def environment(device: str = "cpu", models: Sequence[str] = ()) -> dict[str, Any]:
    """Where and with what a measurement was taken: machine, device, library versions,
    model revisions and date, for every benchmark result file.

    Example:
        >>> sorted(environment("cpu"))
        ['date', 'device', 'device_name', 'machine', 'model_revisions', 'platform', 'torch_threads', 'versions']
    """
    import torch

    from ragkit.loaders import resolve_device
    from ragkit.models import model_revision

    resolved = resolve_device(device)
    extra = {}
    for package in ("langchain-core", "langchain-community", "langchain-classic", "onnxruntime", "openvino"):
        try:
            extra[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    if resolved.startswith("cuda"):
        extra["cuda"] = str(torch.version.cuda)
    return {
        "machine": device_description("cpu"),
        "device": resolved,
        "device_name": device_description(resolved),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": {**versions(), **extra},
        "model_revisions": {m: model_revision(m) for m in models},
        "date": now(),
    }
