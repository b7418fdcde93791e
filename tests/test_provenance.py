"""Cache keys follow the code: the digest covers every module the engine imports, found by
reading the package, so no module can be left out of a hand-kept list."""

from __future__ import annotations

import shutil
from pathlib import Path

from ragkit.provenance import code_state, computing_modules

PACKAGE = Path(__file__).resolve().parents[1] / "ragkit"


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "ragkit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_an_edit_to_the_fusion_code_changes_the_key(tmp_path):
    copy = _copy(tmp_path)
    before = code_state(copy)
    assert before == code_state(PACKAGE)  # the key is the source, wherever it lies
    hybrid = copy / "hybrid.py"
    hybrid.write_text(hybrid.read_text().replace("def ", "def  ", 1))  # any change to the source
    assert code_state(copy) != before


def test_a_module_the_engine_starts_to_import_joins_the_key(tmp_path):
    copy = _copy(tmp_path)
    (copy / "newstage.py").write_text("WEIGHT = 1.0\n")
    assert "newstage" not in computing_modules(copy)
    before = code_state(copy)
    stats = copy / "stats.py"  # imported by the engine, so its imports count too
    stats.write_text(stats.read_text() + "\n\ndef _uses_new_stage():\n    from ragkit.newstage import WEIGHT\n")
    assert "newstage" in computing_modules(copy)
    changed = code_state(copy)
    (copy / "newstage.py").write_text("WEIGHT = 2.0\n")
    assert len({before, changed, code_state(copy)}) == 3


def test_presentation_code_is_not_in_the_key(tmp_path):
    copy = _copy(tmp_path)
    before = code_state(copy)
    for name in ("report", "cli"):
        assert name not in computing_modules(copy)
        path = copy / f"{name}.py"
        path.write_text(path.read_text() + "\n# a comment\n")
    assert code_state(copy) == before  # a plot's colour never invalidates a stored result


def test_the_stage_registry_brings_every_first_stage_module_into_the_digest():
    modules = computing_modules()
    assert {"stages", "registry", "retrievers", "hybrid", "runfile", "bm25"} <= set(modules)
