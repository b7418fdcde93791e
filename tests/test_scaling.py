"""The scaling benchmark's mechanics at tiny sizes: one row per size with its figures, recall
against brute force, the table and plot in the folder asked for, extrapolation of a size too
large for the build budget, and clear errors for options it cannot use."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SIZES = [500, 2000]
TOO_LARGE = 1_000_000  # skipped: the two tiny builds predict far more than the budget
FIELDS = {
    "documents",
    "build_s",
    "build_docs_per_s",
    "build_peak_rss_mb",
    "search_peak_rss_mb",
    "disk_mb",
    "hnsw_mb",
    "sqlite_mb",
    "open_s",
    "p50_ms",
    "p95_ms",
    "batch_s",
    "batch_queries_per_s",
    "recall@100",
    "exact_ms_per_query",
    "build_written_mb",
    "written_vs_disk",
    "bare_build_s",
    "bare_build_docs_per_s",
    "build_vs_bare",
    "bare_p50_ms",
    "p50_vs_bare",
    "exact_p50_ms",
    "exact_batch_s",
    "exact_recall@100",
    "extrapolated",
}


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling", ROOT / "benchmarks" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(scaling, tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling-out")
    work = tmp_path_factory.mktemp("scaling-work")
    record = scaling.run(
        sizes=[TOO_LARGE, *SIZES],
        queries=30,
        latency_queries=20,
        recall_queries=30,
        output_dir=out,
        work_dir=work,
        build_budget_s=0.01,  # whatever the tiny builds take, 1M is predicted far over it
        progress=False,
    )
    return record, out, work


def test_one_row_per_size_with_every_figure(measured):
    record, _, _ = measured
    rows = record["tables"]["scaling"]
    assert [r["documents"] for r in rows] == [*SIZES, TOO_LARGE]  # sorted
    for row in rows[:2]:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert row["extrapolated"] is False
        for field in FIELDS - {"documents", "extrapolated", "build_written_mb", "written_vs_disk"}:
            assert row[field] > 0, field
        assert row["exact_recall@100"] == 1.0  # exact search is exact
        assert row["p50_vs_bare"] == pytest.approx(row["p50_ms"] / row["bare_p50_ms"])
        assert row["build_written_mb"] is None or row["build_written_mb"] >= 0  # None where /proc/self/io is not
        assert row["p95_ms"] >= row["p50_ms"]
        # A high-water mark never falls: the build's is at least the one after imports.
        assert round(row["build_peak_rss_mb"], 1) >= record["parameters"]["rss_after_imports_mb"] > 0
    assert rows[1]["disk_mb"] > rows[0]["disk_mb"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux's /proc reports VmHWM")
def test_a_workers_peak_memory_is_its_own_not_its_parents():
    held = b"\x01" * (600 * 1024 * 1024)  # the parent's high-water mark rises past 600 MiB
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('scaling', {str(ROOT / 'benchmarks' / 'scaling.py')!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['scaling'] = m; spec.loader.exec_module(m); "
            "print(m._peak_rss_mb())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    del held  # held until the worker has measured itself
    assert float(child.stdout) < 500, child.stdout


def test_build_progress_is_kept_per_chunk(measured, scaling):
    progress = measured[0]["tables"]["build_progress"]
    assert [(r["size"], r["documents"]) for r in progress] == [(500, 500), (2000, 2000)]  # one chunk each
    assert all(r["seconds"] > 0 and r["chunk_docs_per_s"] > 0 for r in progress)


def test_a_slowing_build_is_pointed_out(scaling):
    chunk = scaling.CHUNK
    progress = [
        {"size": 3 * chunk, "documents": (i + 1) * chunk, "seconds": s, "chunk_documents": chunk, "chunk_docs_per_s": r}
        for i, (s, r) in enumerate([(1.0, chunk / 1.0), (3.0, chunk / 2.0), (7.0, chunk / 4.0)])
    ]
    row = {"documents": 3 * chunk, "extrapolated": False, "build_written_mb": 10240.0, "disk_mb": 100.0}
    (note,) = scaling._slowdown_notes(progress, [row])
    assert f"at {chunk:,} docs/s" in note and f"at {chunk // 4:,} docs/s" in note and "wrote 10 GiB" in note
    assert scaling._slowdown_notes(progress[:1], [row]) == []  # one chunk: nothing to compare


def test_the_crossover_is_where_exact_and_hnsw_latencies_meet(measured, scaling):
    record = measured[0]
    assert set(record["crossover"]) == {"exact_faster_at", "documents"}
    rows = [
        {"documents": 10_000, "p50_ms": 2.0, "exact_p50_ms": 1.0, "extrapolated": False},
        {"documents": 100_000, "p50_ms": 2.0, "exact_p50_ms": 4.0, "extrapolated": False},
    ]
    found = scaling.exact_crossover(rows)
    assert found["exact_faster_at"] == [10_000] and found["documents"] == 31_623  # halfway, log-log
    assert scaling.exact_crossover(rows[:1])["documents"] is None


def test_hnsw_finds_the_exact_top_100(measured):
    for row in measured[0]["tables"]["scaling"][:2]:
        assert row["recall@100"] >= 0.9, row
        assert row["min_recall@100"] <= row["recall@100"]


def test_records_ragkits_chroma_configuration_and_provenance(measured, scaling):
    record = measured[0]
    params, env = record["parameters"], record["environment"]
    assert params["hnsw_configuration"]["space"] == "cosine"
    assert params["hnsw_configuration"]["ef_search"] == scaling.HNSW["ef_search"]
    # The largest size built last: its configuration is ragkit's for that many vectors.
    built = record["tables"]["scaling"][1]["documents"]
    assert (
        params["hnsw_configuration"]["sync_threshold"]
        == scaling._persistence(built, params["add_batch_size"])["sync_threshold"]
    )
    assert params["saves"] == scaling._SAVES
    assert env["libraries"]["chromadb"] and env["versions"]["torch"] and env["date"]
    assert isinstance(env["load_average_1min_at_start"], float)
    assert env["load_average_1min_during"]["samples"] >= 1 and env["load_average_1min_during"]["max"] >= 0
    assert record["quick"] is True


def test_a_size_over_the_build_budget_is_extrapolated_and_says_so(measured):
    record, out, _ = measured
    row = record["tables"]["scaling"][-1]
    assert row["extrapolated"] is True and row["recall@100"] is None
    assert row["build_s"] > record["tables"]["scaling"][1]["build_s"]
    assert any("1,000,000 documents: not built" in note for note in record["notes"])
    text = (out / "scaling-cpu.md").read_text()
    assert "**extrapolated**" in text and "| 1,000,000 | ~" in text


def test_results_go_to_the_output_dir_and_the_work_dir_is_cleaned(measured):
    record, out, work = measured
    assert sorted(p.name for p in out.iterdir()) == ["scaling-cpu.json", "scaling-cpu.md", "scaling-cpu.png"]
    assert json.loads((out / "scaling-cpu.json").read_text()) == record
    assert (out / "scaling-cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "scaling-cpu.md").read_text()
    for size in SIZES:
        assert f"| {size:,} |" in text
    assert "precomputed" in text and "load average" in text and "during the run" in text
    assert list(work.iterdir()) == []  # indexes and worker files removed


def test_synthetic_vectors_are_seeded_unit_vectors_and_prefixes(scaling):
    gen = scaling.SyntheticVectors()
    small = np.concatenate([b for _, b in gen.documents(300)])
    chunks = list(gen.documents(scaling.CHUNK + 10))
    assert [start for start, _ in chunks] == [0, scaling.CHUNK]
    assert np.array_equal(small, chunks[0][1][:300])
    assert np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-5)
    assert not np.array_equal(small, np.concatenate([b for _, b in scaling.SyntheticVectors(seed=1).documents(300)]))
    # Clustered, not uniform noise: nearest neighbours are far closer than random pairs.
    sims = small @ small.T
    np.fill_diagonal(sims, -1)
    assert sims.max(axis=1).mean() > 0.4 > sims[np.triu_indices(300, 1)].mean()


def test_exact_top_k_is_a_full_sort(scaling):
    gen = scaling.SyntheticVectors(seed=3)
    queries = gen.queries(4)
    docs = np.concatenate([b for _, b in gen.documents(700)])
    top, _ = scaling.exact_top_k(gen, queries, 700, 10)
    assert np.array_equal(top, np.argsort(-(queries @ docs.T), axis=1)[:, :10])


def test_bm25_is_measured_at_the_same_sizes(measured):
    record, out, _ = measured
    rows = record["tables"]["bm25"]
    assert [r["documents"] for r in rows] == SIZES  # the budget skips BM25's 1M too, with a note
    assert any(note.startswith("BM25 at 1,000,000 documents: not measured") for note in record["notes"])
    for row in rows[:2]:
        assert row["build_s"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0 and row["batch_s"] > 0
        assert row["peak_rss_mb"] >= row["rss_with_texts_mb"] > 0
    assert "BM25 (`ragkit.bm25`" in (out / "scaling-cpu.md").read_text()


def test_synthetic_texts_are_seeded(scaling):
    texts = scaling.SyntheticTexts()
    docs = texts.documents(50)
    assert docs == texts.documents(50)[:50] and docs != scaling.SyntheticTexts(seed=1).documents(50)
    assert 30 < np.mean([len(d.split()) for d in docs]) < 90
    assert all(1 <= len(q.split()) <= 20 for q in texts.queries(20))


def test_a_build_stopped_part_way_is_extrapolated_from_its_own_progress(scaling):
    rows = [
        {"documents": n, "build_s": 1e-3 * n, "p50_ms": 1.0, "batch_s": 2.0, "batch_queries_per_s": 500.0,
         "extrapolated": False}
        for n in (10_000, 100_000)
    ]  # fmt: skip
    partial = {"added": 400_000, "checkpoints": [(m, 1e-3 * m**1.2) for m in range(50_000, 400_001, 50_000)]}
    row = scaling._extrapolated_row(rows, 1_000_000, 100, partial=partial)
    assert row["extrapolated"] is True
    assert row["build_s"] == pytest.approx(1e-3 * 1e6**1.2, rel=1e-6)  # its own curve, not the sizes' (1,000 s)
    assert row["build_peak_rss_mb"] is None and row["recall@100"] is None
    assert row["p50_ms"] == pytest.approx(1.0)


def test_extrapolation_follows_the_power_law(scaling):
    rows = [{"documents": n, "build_s": 2e-3 * n**1.1, "extrapolated": False} for n in (10_000, 100_000)]
    assert scaling._extrapolate(rows, 1_000_000, "build_s") == pytest.approx(2e-3 * 1e6**1.1, rel=1e-6)
    assert scaling._extrapolate(rows[:1], 1_000_000, "build_s") is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sizes": [0]}, "positive integers"),
        ({"sizes": []}, "No corpus sizes"),
        ({"sizes": [500, 500]}, "repeat"),
        ({"sizes": [50]}, "smaller than k=100"),
        ({"queries": 0}, "positive integer"),
        ({"latency_queries": -1}, "positive integer"),
        ({"queries": 10, "recall_queries": 20}, "between 1 and 10"),
        ({"k": 0}, "positive integer"),
        ({"build_budget_s": 0}, "budget"),
    ],
)
def test_unusable_options_are_refused_before_anything_runs(scaling, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        scaling.run(**{"sizes": [500], "output_dir": tmp_path, "work_dir": tmp_path, **options})
    assert list(tmp_path.iterdir()) == []


def test_command_line_reports_bad_sizes(scaling, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--sizes", "0", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "Corpus sizes must be positive integers" in capsys.readouterr().err


def test_the_cost_doc_states_the_committed_scaling_measurements():
    record = json.loads((ROOT / "benchmarks" / "results" / "scaling-cpu.json").read_text())
    k = record["parameters"]["k"]
    page = (ROOT / "docs" / "cost.md").read_text()
    section = page[page.index("## Before a larger corpus") :]
    for row in record["tables"]["scaling"]:
        assert not row["extrapolated"]  # a committed figure is a measured one
        for figure in (
            f"{row['documents']:,}",
            f"{row['build_docs_per_s']:,.0f} docs/s",
            f"{row['disk_mb']:,.0f} MiB",
            f"{row['p50_ms']:.1f} ms",
            f"{row[f'recall@{k}']:.3f}",
        ):
            assert figure in section, figure
    for row in record["tables"]["bm25"]:
        assert f"{row['p50_ms']:.1f} ms" in section
    dense, bm25 = record["tables"]["scaling"], record["tables"]["bm25"]
    for figure in (f"{dense[0]['batch_s']:.1f} s at 10k", f"{dense[-1]['batch_s']:.1f} s at 1M"):
        assert figure in section, figure
    assert f"BM25 took {bm25[-1]['batch_s']:.1f} s at 1M" in section
    assert f"{dense[-1]['build_s'] / 60:.0f} min" in section and f"{bm25[-1]['peak_rss_mb'] / 1024:.1f} GiB" in section


def test_the_exact_search_threshold_follows_the_committed_crossover():
    """settings.EXACT_SEARCH_MAX_VECTORS is the largest measured size at which exact search was
    faster than HNSW one query at a time, and lies below the size where the two meet."""
    from ragkit.settings import EXACT_SEARCH_MAX_VECTORS

    record = json.loads((ROOT / "benchmarks" / "results" / "exact_crossover" / "scaling-cpu.json").read_text())
    rows = [r for r in record["tables"]["scaling"] if not r["extrapolated"]]
    faster = [r["documents"] for r in rows if r["exact_p50_ms"] < r["p50_ms"]]
    assert record["crossover"]["exact_faster_at"] == faster
    assert EXACT_SEARCH_MAX_VECTORS == max(faster)
    assert all(r["exact_p50_ms"] >= r["p50_ms"] for r in rows if r["documents"] > EXACT_SEARCH_MAX_VECTORS)
    assert EXACT_SEARCH_MAX_VECTORS < record["crossover"]["documents"]


def test_the_cost_doc_states_the_committed_crossover_and_build_ratios():
    page = (ROOT / "docs" / "cost.md").read_text()
    section = page[page.index("## Before a larger corpus") :]
    crossover = json.loads((ROOT / "benchmarks" / "results" / "exact_crossover" / "scaling-cpu.json").read_text())
    for row in crossover["tables"]["scaling"]:
        if row["documents"] in (10_000, 20_000, 30_000):
            said = f"{row['exact_p50_ms']:.1f} ms exact against {row['p50_ms']:.1f} ms HNSW"
            said_short = f"{row['exact_p50_ms']:.1f} ms against {row['p50_ms']:.1f} ms"
            assert said in section or said_short in section, said
    assert f"near {round(crossover['crossover']['documents'], -3) // 1000}k" in section
    largest = json.loads((ROOT / "benchmarks" / "results" / "scaling-cpu.json").read_text())["tables"]["scaling"][-1]
    assert f"{largest['build_vs_bare']:.2f} times the rate" in section
    assert f"wrote {largest['written_vs_disk']:.1f} times" in section
