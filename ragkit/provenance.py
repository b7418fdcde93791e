"""Where and with what a measurement was taken: device, CPU or GPU model, library versions,
model revisions, and the identity of models and code that cache keys need.

Everything here is cheap: versions come from installed package metadata rather than imports,
and model state from file stats, so a cache key can be computed without loading anything.

Example:
    >>> "cores" in device_description("cpu")
    True
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import importlib.metadata
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The module whose code, with everything it imports from ragkit, decides what an evaluation
# computes. A stored result answers only the code that computed it, so an edit to any of those
# modules (in an editable install, where the version number stays put) recomputes; an edit to a
# plot, the CLI or a benchmark helper, which the engine never imports, does not.
ENGINE_MODULE = "evaluate"


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
    from ragkit import __version__

    # Installed metadata, not the modules: importing sentence-transformers takes seconds. ragkit's
    # own is the version it was built from (its distribution is named ragkit-rerank: pyproject.toml).
    names = ["torch", "transformers", "sentence-transformers", "ir-measures"]
    installed = {n: importlib.metadata.version(n) for n in names}
    return {"ragkit": __version__, **installed, "python": platform.python_version()}


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


def _ragkit_imports(source: str) -> set[str]:
    """The ragkit modules a module's source imports, at module level or inside functions, or
    names for a lazy import (``"ragkit.runfile:build_run_stage"``, as ``ragkit.registry`` does)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= set(re.findall(r"^ragkit\.(\w+):\w+$", node.value))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ragkit."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "ragkit":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ragkit.")}
    return found


def computing_modules(package: Path | None = None) -> list[str]:
    """The modules whose code decides what an evaluation computes: ``evaluate`` and every
    ragkit module it imports, directly or through others, read from the source rather than kept
    by hand, so a module the engine starts to use is part of the cache key from then on.

    Example:
        >>> modules = computing_modules()
        >>> "hybrid" in modules and "stats" in modules, "report" in modules or "cli" in modules
        (True, False)
    """
    package = package or Path(__file__).parent
    found, todo = set(), [ENGINE_MODULE]
    while todo:
        name = todo.pop()
        path = package / f"{name}.py"
        if name in found or not path.is_file():  # a subpackage's data, not a module
            continue
        found.add(name)
        todo += sorted(_ragkit_imports(path.read_text(encoding="utf-8")) - found)
    return sorted(found)


def code_state(package: Path | None = None) -> str:
    """A digest of the source of ragkit's computing modules (:func:`computing_modules`)."""
    package = package or Path(__file__).parent
    digest = hashlib.sha256()
    for name in computing_modules(package):
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
