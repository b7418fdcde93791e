"""What `ragkit eval` prints fits the terminal: at most 100 columns, the verdict wrapped into
one paragraph per pipeline (to a narrower terminal's width too), tables naming pipelines P1,
P2, ... with a legend, notes on standard error; the words are the result's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ragkit.settings import OUTPUT_WIDTH


@pytest.fixture()
def printed(tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path):
    """The command run as its user runs it, in a process of its own (its logging set up as in
    any run, not pytest's), at a terminal width of ``columns`` (``None``: not a terminal)."""

    def run(columns: int | None) -> tuple[str, str, Path]:
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        if columns is not None:
            env["COLUMNS"] = str(columns)
        folder = tmp_path / f"r{columns}"
        done = subprocess.run([sys.executable, "-m", "ragkit", "eval", "--dataset", "demo", "--queries", "0",
                               "--embedders", tiny_embedder_path, "--rerankers", "none", tiny_cross_encoder_path,
                               f"bi-encoder:{tiny_embedder_path}", "--k", "10", "--bm25", "--latency-queries", "2",
                               "--output", str(folder)], capture_output=True, text=True, env=env)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout, done.stderr, folder

    return run


@pytest.mark.parametrize("columns", [None, 200, 72])
def test_every_line_fits_100_columns_and_prose_a_narrower_terminal(printed, columns):
    out, err, _ = printed(columns)
    # Progress bars are left out: on a terminal tqdm trims them to its width itself.
    err = "\n".join(line for line in err.splitlines() if not re.match(r"[\w ]+:\s+\d+%\|", line))
    too_wide = [line for line in (out + "\n" + err).splitlines() if len(line) > OUTPUT_WIDTH]
    assert not too_wide
    # The verdict, the legend and the notes wrap to the terminal; the tables keep their columns.
    prose = out[: out.index("\n\npipeline")] + "\n" + err
    narrow = min(columns or OUTPUT_WIDTH, OUTPUT_WIDTH)
    assert not [line for line in prose.splitlines() if len(line) > narrow]


def test_the_tables_name_pipelines_by_a_legend_and_the_verdict_is_the_results_own(printed):
    out, _, folder = printed(None)
    names = [p["name"] for p in json.loads((folder / "results.json").read_text())["meta"]["pipelines"]]
    # Each legend entry, unwrapped, is one pipeline's full name, in the table's order.
    entries = re.split(r"\n(?=P\d+ = )", out[out.index("P1 = ") : out.index("\n\npipeline")])
    legend = dict(" ".join(entry.split()).split(" = ", 1) for entry in entries)
    assert [name.removesuffix(" (baseline)") for name in legend.values()] == names
    tables = out[out.index("\n\npipeline") :]
    labels = {line.split()[0] for line in tables.splitlines() if re.match(r"\s+P\d+ ", line)}
    assert labels == set(legend) and not any(name in tables for name in names)
    # The verdict printed is the report's, wrapped: the same words in the same order.
    verdict = " ".join(out[: out.index("\n\nP1 = ")].split())
    sentences = [
        line[2:] for line in (folder / "summary.md").read_text().splitlines() if line.startswith("- Reranking")
    ]
    assert len(sentences) == 4 and all(" ".join(sentence.split()) in verdict for sentence in sentences)
