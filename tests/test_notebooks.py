"""What the notebooks rely on outside themselves: the kernel they name, which `make lab` and
`make test` install, and nothing imported by path (what they read from the checkout, they read
as files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def _target(makefile: str, name: str) -> str:
    return re.search(rf"^{name}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)


def test_the_kernel_the_notebooks_name_is_installed_by_make_lab_and_make_test():
    assert NOTEBOOKS
    names = {json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] for nb in NOTEBOOKS}
    assert names == {"ragkit"}
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test"):
        assert "-m ipykernel install --sys-prefix --name ragkit" in _target(makefile, target), target


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_a_notebook_imports_nothing_by_path(notebook):
    code = _code(notebook)
    assert "sys.path" not in code
    assert not re.search(r"^\s*(from|import)\s+(harness|benchmarks)\b", code, re.M)
