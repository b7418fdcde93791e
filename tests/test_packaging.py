"""The package declares what it imports: every third-party module ragkit's code imports (at
module level or inside a function) comes from a distribution its pyproject.toml names, so an
install resolves it rather than finding it by luck as another package's dependency."""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
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


def _shipped_files(package: Path) -> set[str]:
    """The files under ragkit/ the wheel must hold: every one but bytecode, as wheel paths."""
    return {
        f"ragkit/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_the_built_wheel_installs_as_itself_and_runs_from_an_empty_folder(
    tmp_path, tiny_embedder_path, tiny_cross_encoder_path
):
    """What a user of the wheel gets, not of this checkout: the wheel is built from a copy of the
    package's sources, installed (no dependencies, no network) into a new virtual environment
    that sees this environment's libraries but not its editable ragkit, and an evaluation of the
    demo collection runs from an empty folder, writing nowhere but its output and cache folders."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "ragkit", source / "ragkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist",
                    source], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.parser.Parser().parsestr(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
    assert metadata["Name"] == "ragkit-rerank"
    left_out = sorted(_shipped_files(source / "ragkit") - names)
    assert not left_out, f"the wheel leaves out {left_out}: add them to package-data in pyproject.toml"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python, command = venv / "bin" / "python", venv / "bin" / "ragkit"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    # The dependencies from this environment, as plain paths: a path listed in a .pth file is not
    # itself scanned for .pth files, so the editable install's finder (which would map `ragkit`
    # to this checkout) stays out, and the new environment's own site-packages come first.
    new_site = subprocess.run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(new_site) / "_ragkit_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))

    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env = {k: v for k, v in env.items() if not k.startswith("RAGKIT_")}
    env |= {"PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "RAGKIT_OFFLINE": "1", "RAGKIT_CACHE_DIR": str(cache)}

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=empty, env=env, capture_output=True, text=True, timeout=300)

    found = run(
        python, "-I", "-c", "import importlib.metadata as m, ragkit; print(ragkit.__file__, m.version('ragkit-rerank'))"
    )
    assert found.returncode == 0, found.stderr
    where, version = found.stdout.split()
    assert Path(where).is_relative_to(new_site), f"ragkit imported from {where}, not from the new environment"
    assert version == metadata["Version"]
    shown = run(command, "--version")
    assert (shown.returncode, shown.stdout.strip()) == (0, f"ragkit {metadata['Version']}"), shown.stderr

    evaluated = run(command, "eval", "--dataset", "demo", "--queries", "0", "--embedders", tiny_embedder_path,
                    "--rerankers", "none", tiny_cross_encoder_path, "--bm25", "--latency-queries", "0",
                    "--output", "report")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-4000:]
    assert sorted(p.name for p in empty.iterdir()) == ["report"], "written into the working directory"
    assert (empty / "report" / "summary.md").is_file() and (empty / "report" / "results.json").is_file()
    assert (cache / "chroma").is_dir() and not (cache / "beir").exists()
