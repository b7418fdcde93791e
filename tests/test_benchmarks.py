"""The committed benchmark results and what the README and docs/ show of them stay one and the same.

``benchmarks/rerank_cost.py`` writes ``benchmarks/results/<section>-cpu.json``, the headline block
of docs/cost.md and the README's main-job output block from them; these tests fail when either is
edited without the other.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from ragkit.errors import RagkitError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS_MEASURED_ON_CPU = [
    "throughput",
    "batch_size",
    "max_length",
    "backends",
    "loader_cache",
    "rerun",
    "end_to_end_full",
]


@pytest.fixture(scope="module")
def script():
    # The script imports benchmarks/harness.py from its own folder, which is on sys.path only
    # when it is run as `python benchmarks/rerank_cost.py`.
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("rerank_cost", ROOT / "benchmarks" / "rerank_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_every_cpu_section_is_committed_with_its_provenance():
    for section in SECTIONS_MEASURED_ON_CPU:
        record = json.loads((RESULTS / f"{section}-cpu.json").read_text())
        assert record["quick"] is False, section
        env = record["environment"]
        assert env["device"] == "cpu" and env["versions"]["torch"] and env["date"], section
        assert all(rows for rows in record["tables"].values()), section


def test_stored_results_reads_section_records_only(script, tmp_path):
    stored = script.stored_results(RESULTS, "cpu")  # ragkit.profiling's, as the script imports it
    assert set(SECTIONS_MEASURED_ON_CPU) <= set(stored)
    assert "passages" not in stored  # a file of another format, read by notebooks 02 and 03 themselves
    (tmp_path / "passages-cpu.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(RagkitError, match="No benchmark results"):
        script.stored_results(tmp_path, "cpu")


def test_cost_doc_headline_is_what_the_committed_results_say(script):
    page = (ROOT / "docs" / "cost.md").read_text()
    assert script.readme_block(page, "cpu", script.headline(RESULTS, "cpu")) == page


def test_readme_shows_what_the_default_evaluation_printed(script):
    readme = (ROOT / "README.md").read_text()
    block = script.main_job_block(RESULTS)
    assert script.readme_output_block(readme, block) == readme
    words = " ".join(block.split())  # the verdict is wrapped to 100 columns
    assert "Reranking the top 20 of dense(all-MiniLM-L6-v2)" in words and "over 50 queries" in words
    assert max(len(line) for line in block.split("```text")[1].splitlines()) <= 100


def test_readme_says_what_the_default_evaluation_printed_and_how_long_it_took(script):
    readme = (ROOT / "README.md").read_text()
    block = " ".join(script.main_job_block(RESULTS).split())
    found = readme[readme.index("## What it found") : readme.index("- On the full test splits")]
    # Every figure the README quotes about the default job is one the run printed.
    for figure in re.findall(r"[+-]?\d[\d,]*(?:\.\d+)?", found.replace("L-12", "").replace("MiniLM-L6", "")):
        assert figure in block, figure
    minutes = re.search(r"(\d+\.\d) minutes end to end", block).group(1)
    assert f"evaluation took {minutes} minutes" in " ".join(readme.split())


def test_headline_follows_the_results_it_is_written_from(script, tmp_path):
    for path in RESULTS.glob("*-cpu.json"):
        shutil.copy(path, tmp_path / path.name)
    record = json.loads((tmp_path / "rerun-cpu.json").read_text())
    record["tables"]["rerun"][1]["speedup"] = 3.0
    (tmp_path / "rerun-cpu.json").write_text(json.dumps(record))
    changed = script.headline(tmp_path, "cpu")
    assert changed != script.headline(RESULTS, "cpu")
    assert "(3 x) | >= 20 x: not met" in changed
    with pytest.raises(ValueError, match="no <!-- rerank_cost-cuda"):
        script.readme_block("# a README without a block\n", "cuda", changed)


def test_cache_doc_reliability_block_is_what_the_committed_results_say():
    spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability"] = module
    spec.loader.exec_module(module)
    record = json.loads((ROOT / "benchmarks" / "results" / "reliability.json").read_text())
    page = (ROOT / "docs" / "cache.md").read_text()
    assert module.readme_with(page, module.readme_section(record)) == page
    damage = record["tables"]["damage"]
    assert {row["store"] for row in damage} == {"results", "runs", "latency", "pair_scores", "chroma"}
    assert all(row["exit"] == 0 and row["nDCG@10 as undamaged"] and not row["code executed"] for row in damage)
