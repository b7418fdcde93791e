"""The layout table (docs/layout.md, linked from the README) is the package's map: it lists
every module, and a module imports only modules listed above it (at module level or inside
functions), so imports run one way."""

from __future__ import annotations

import re
from pathlib import Path

from ragkit import provenance

ROOT = Path(__file__).resolve().parents[1]


def _layout_order() -> list[str]:
    text = (ROOT / "docs" / "layout.md").read_text()
    table = text[text.index("# Layout") :]
    return [name for row in re.findall(r"^\| `ragkit/(\w+)\.py`", table, re.M) for name in [row]]


def _ragkit_imports(path: Path) -> set[str]:
    # The package's own reading of imports, lazy references of the stage registry included.
    return provenance._ragkit_imports(path.read_text())


def test_every_module_is_on_the_map_and_imports_only_modules_above_it():
    order = _layout_order()
    modules = sorted(p.stem for p in (ROOT / "ragkit").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert sorted(order[1:]) == modules  # the first row is __init__.py
    position = {name: i for i, name in enumerate(order)}
    upward = [
        f"{module} imports {imported}"
        for module in modules
        for imported in _ragkit_imports(ROOT / "ragkit" / f"{module}.py")
        if imported in position and position[imported] > position[module]
    ]
    assert not upward, upward
