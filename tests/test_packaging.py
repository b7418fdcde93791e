"""The package declares what it imports: every third-party module ragkit's code imports (at
module level or inside a function) comes from a distribution its pyproject.toml names, so an
install resolves it rather than finding it by luck as another package's dependency."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    declared = {_normal(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for path in sorted((ROOT / "ragkit").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top == "ragkit" or top in sys.stdlib_module_names:
                    continue
                dists = {_normal(d) for d in providers.get(top, [top])}
                if not dists & declared:
                    missing.setdefault(top, path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_version_and_licence_are_written_once_and_shipped():
    import ragkit

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # Installed as ragkit-rerank (the name "ragkit" on PyPI is another project), imported as ragkit.
    assert project["name"] == "ragkit-rerank" and project["scripts"] == {"ragkit": "ragkit.cli:main"}
    assert importlib.metadata.version(project["name"]) == ragkit.__version__
    assert "version" not in project and project["dynamic"] == ["version"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
