"""What reranking costs, measured side by side on the same SciFact pairs (issue 7).

Sections (``--only`` picks some; each prints its tables and writes
``benchmarks/results/<section>-<device>.json`` with its provenance; every run also rewrites
``benchmarks/results/rerank_cost-<device>.md`` from all the section files of that device):

- ``throughput``: pairs/s and ms/query of the four scoring paths, (a) ragkit's LangChain
  compressor, (b) plain ``CrossEncoder.predict``, (c) the plain-transformers ``rerank()`` with
  a query's documents in one padded batch, (d) the evaluation engine's pooled, length-sorted
  stream; their scores checked against (b); the issue's targets; the padding each plan costs.
- ``batch_size``: throughput of (a) and (d) across batch sizes.
- ``max_length``: throughput at 128/256/512 tokens and the nDCG@10 a shorter length costs.
- ``backends`` (CPU): onnxruntime and OpenVINO, fp32 and int8, and torch bf16, against torch
  fp32: speed and nDCG@10. sentence-transformers' own ``backend=`` needs optimum packages that
  do not install beside transformers 5.2x, so the same runtimes run an ONNX export directly.
- ``loader_cache``: a model load from disk against a cached loader hit.
- ``rerun``: ``ragkit eval`` (the README's default evaluation) in a fresh cache, then again:
  end-to-end minutes and what the caches save.
- ``end_to_end_full`` (only when asked for): ``ragkit eval --queries 0``, the full SciFact
  test split, in a fresh cache (about half an hour on 2 CPU cores).
- ``gpu_dtypes`` (CUDA): path (d) in fp32, fp16 and bf16 at 128 and 512 tokens, batch sizes
  up to 512, with the scores' agreement and nDCG@10.

    python benchmarks/rerank_cost.py                      # CPU, every default section (25-30 min)
    python benchmarks/rerank_cost.py --only throughput max_length
    python benchmarks/rerank_cost.py --only end_to_end_full
    python benchmarks/rerank_cost.py --device cuda         # on a GPU machine
    python benchmarks/rerank_cost.py --quick               # tiny sizes, to a temporary folder

Timings are medians over repeats, and the paths take turns, so a change of background load
spreads over all of them; still, run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from harness import time_eval  # benchmarks/harness.py, in this script's folder

from ragkit import load_beir, make_subset
from ragkit.backends import export_onnx, onnx_scorer
from ragkit.loaders import resolve_device
from ragkit.profiling import (
    PATHS,
    Candidates,
    batch_size_sweep,
    candidate_pairs,
    compare_paths,
    loader_timings,
    max_length_effect,
    ndcg_at_10,
    padding_cost,
    path_targets,
    reranking_paths,
    score_agreement,
    stored_results,
    time_calls,
)
from ragkit.provenance import environment
from ragkit.rerank import load_reranker
from ragkit.results import markdown_table, slug
from ragkit.settings import (
    DEFAULT_EMBEDDER,
    DEFAULT_RERANK_K,
    DEFAULT_RERANKER,
    DEFAULT_SUBSET_QUERIES,
    rerank_batch_size,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SECTIONS = ["throughput", "batch_size", "max_length", "backends", "loader_cache", "rerun", "gpu_dtypes"]
SECTIONS = [*DEFAULT_SECTIONS, "end_to_end_full"]
GPU_TARGET_PAIRS_PER_S = 10_000  # the target for L-12 at 128 tokens, fp16, on an H100


@dataclass(frozen=True)
class Sizes:
    """How much each section measures; ``--quick`` and GPUs get their own."""

    quality_queries: int  # queries whose reranked nDCG@10 is compared (max_length, dtypes)
    speed_queries: int  # the first queries of that sample, timed by throughput
    sweep_queries: int  # the first queries, timed by the batch-size, length and backend sweeps
    backend_queries: int  # the first queries, whose nDCG@10 decides on a backend
    k: int  # candidates per query
    deep_queries: int  # the first queries, timed by throughput again with BEIR's deep_k candidates each
    deep_k: int
    repeats: int
    batch_sizes: list[int]
    max_lengths: list[int] = field(default_factory=lambda: [128, 256, 512])
    eval_args: list[str] = field(default_factory=list)  # what `ragkit eval` the rerun section times


# On 2 CPU cores (L-12, SciFact lengths, batch 8: about 9 pairs/s) the default sections took 27 minutes.
CPU = Sizes(
    quality_queries=30,
    speed_queries=8,
    sweep_queries=4,
    backend_queries=15,
    k=20,
    deep_queries=2,
    deep_k=100,
    repeats=3,
    batch_sizes=[2, 4, 8, 16, 32, 64],
)
# One query's 100 candidates are too few to keep a GPU busy; many queries' pooled pairs are not.
GPU = Sizes(
    quality_queries=50,
    speed_queries=50,
    sweep_queries=50,
    backend_queries=50,
    k=100,
    deep_queries=50,
    deep_k=100,
    repeats=5,
    batch_sizes=[16, 32, 64, 128, 256, 512],
)
QUICK = Sizes(
    quality_queries=3,
    speed_queries=2,
    sweep_queries=2,
    backend_queries=3,
    k=5,
    deep_queries=1,
    deep_k=8,
    repeats=2,
    batch_sizes=[2, 8],
    max_lengths=[64, 512],
    eval_args=["--dataset", "demo", "--queries", "0", "--latency-queries", "2"],
)


class Bench:
    """Shared state: the pairs and model every section measures, and where results go."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = resolve_device(args.device)
        self.gpu = self.device.startswith("cuda")
        self.sizes = QUICK if args.quick else (GPU if self.gpu else CPU)
        self.quick = args.quick
        self.reranker = args.reranker
        self.batch_size = args.batch_size or rerank_batch_size(self.device)
        self.output = Path(
            args.output or (Path(tempfile.gettempdir()) / "ragkit-rerank-cost-quick" if args.quick else RESULTS)
        )
        self.tag = "cpu" if not self.gpu else "cuda-" + slug(environment(self.device)["device_name"])
        self._pool: Candidates | None = None

    @property
    def pool(self) -> Candidates:
        """A SciFact subset (50 queries, ~1,000 documents; ``make_subset``'s defaults), each
        sampled query with its dense top candidates: real passages, real lengths."""
        if self._pool is None:
            subset = make_subset(load_beir("scifact"), DEFAULT_SUBSET_QUERIES, seed=0)
            self._pool = candidate_pairs(
                subset,
                n_queries=self.sizes.quality_queries,
                k=max(self.sizes.k, self.sizes.deep_k),
                embedder=DEFAULT_EMBEDDER,
                device=self.device,
                show_progress=True,
            )
        return self._pool

    @property
    def quality(self) -> Candidates:
        return self.pool.head(self.sizes.quality_queries, self.sizes.k)

    @property
    def deep(self) -> Candidates:
        return self.pool.head(self.sizes.deep_queries, self.sizes.deep_k)

    @property
    def speed(self) -> Candidates:
        return self.quality.head(self.sizes.speed_queries)

    @property
    def sweep(self) -> Candidates:
        return self.quality.head(self.sizes.sweep_queries)

    def model(self, dtype: str = "float32") -> Any:
        return load_reranker(self.reranker, self.device, dtype)

    def sample_parameters(self, sample: Candidates) -> dict[str, Any]:
        return {
            "collection": sample.collection,
            "queries": sample.n_queries,
            "k": sample.k,
            "pairs": sample.n_pairs,
            "embedder": sample.embedder,
            "reranker": self.reranker,
        }

    def save(
        self,
        section: str,
        title: str,
        tables: dict[str, pd.DataFrame],
        parameters: dict[str, Any],
        notes: list[str],
        seconds: float,
    ) -> Path:
        record = {
            "section": section,
            "title": title,
            "quick": self.quick,
            "environment": environment(self.device, models=[self.reranker, DEFAULT_EMBEDDER]),
            "parameters": parameters,
            "seconds": round(seconds, 1),
            "notes": notes,
            "tables": {name: json.loads(df.to_json(orient="records")) for name, df in tables.items()},
        }
        self.output.mkdir(parents=True, exist_ok=True)
        path = self.output / f"{section}-{self.tag}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path


# ----------------------------------------------------------------------------- sections


def throughput_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    model = bench.model()
    # ragkit's default k, and BEIR's 100 candidates per query where that is another sample.
    samples = {"": bench.speed}
    if bench.sizes.deep_k != bench.sizes.k:
        samples[f"_k{bench.sizes.deep_k}"] = bench.deep
    tables: dict[str, pd.DataFrame] = {}
    for suffix, sample in samples.items():
        paths = compare_paths(model, sample, batch_size=bench.batch_size, repeats=bench.sizes.repeats)
        tables[f"paths{suffix}"] = paths
        tables[f"targets{suffix}"] = path_targets(paths, bench.device)
        tables[f"padding{suffix}"] = padding_cost(model, sample, sorted({*bench.sizes.batch_sizes, bench.batch_size}))
    notes = [f"{name}: {label}" for name, label in PATHS.items()] + [
        "Scores of every path are compared with (b)'s: max_abs_diff and same_order (per query).",
        "padding counts the tokens each batching plan feeds the model (exact token lengths), padding included.",
        f"Tables without a suffix: k={bench.sizes.k} candidates per query (ragkit's default); "
        f"_k{bench.sizes.deep_k}: the first {bench.sizes.deep_queries} queries with {bench.sizes.deep_k} each "
        "(BEIR's reranking depth), where (c) pads a whole query's candidates to its longest.",
    ]
    return (
        tables,
        {
            **bench.sample_parameters(bench.speed),
            "batch_size": bench.batch_size,
            "repeats": bench.sizes.repeats,
            **({"deep": bench.sample_parameters(bench.deep)} if len(samples) > 1 else {}),
        },
        notes,
    )


def batch_size_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    sample = bench.sweep
    table = batch_size_sweep(
        bench.model(), sample, bench.sizes.batch_sizes, paths=["langchain", "pooled"], repeats=bench.sizes.repeats
    )
    return (
        {"sweep": table},
        {**bench.sample_parameters(sample), "batch_sizes": bench.sizes.batch_sizes, "repeats": bench.sizes.repeats},
        [f"(a) runs query by query, so it is measured only at batch sizes up to k={sample.k}."],
    )


def max_length_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    table = max_length_effect(
        bench.model(),
        bench.sweep,
        bench.quality,
        bench.sizes.max_lengths,
        batch_size=bench.batch_size,
        repeats=bench.sizes.repeats,
    )
    return (
        {"max_length": table},
        {
            "speed": bench.sample_parameters(bench.sweep),
            "quality": bench.sample_parameters(bench.quality),
            "batch_size": bench.batch_size,
            "repeats": bench.sizes.repeats,
        },
        [
            "Throughput is path (d) on the speed sample; nDCG@10 reranks the quality sample's candidates "
            "(a SciFact subset: not comparable with full-split figures)."
        ],
    )


# A backend stays a ragkit option only if it is faster here and costs at most this much quality.
BACKEND_MAX_NDCG_LOSS = 0.005


def backends_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    notes = [
        "sentence-transformers' backend='onnx' needs optimum-onnx (its release requires transformers<4.58) and "
        "backend='openvino' needs optimum-intel>=2 (transformers<5.6); ragkit runs transformers 5.2x for "
        "sentence-transformers 6, so neither installs. The same runtimes run here on a torch.onnx export of "
        "the model: onnxruntime (fp32, and int8 by its dynamic quantization) and OpenVINO (the same two files, "
        "f32 precision hint); torch itself in bf16 runs beside them.",
        f"A backend is kept only if faster than torch here and within {BACKEND_MAX_NDCG_LOSS} nDCG@10; "
        "quality is measured only for backends that are faster.",
    ]
    if bench.gpu:
        return {}, {}, ["CPU backends: skipped on a GPU run.", *notes]
    import importlib.util

    model = bench.model()
    speed, quality = bench.sweep, bench.quality.head(bench.sizes.backend_queries)
    scorers: dict[str, Callable[..., np.ndarray]] = {}
    # Sessions read their file when they are created, so the exports can go with the folder.
    with tempfile.TemporaryDirectory(prefix="ragkit-onnx-") as tmp:
        exports = {
            "fp32": export_onnx(model, Path(tmp) / "model.onnx"),
            "int8": export_onnx(model, Path(tmp) / "model-int8.onnx", int8=True),
        }
        for runtime in ("onnxruntime", "openvino"):
            if importlib.util.find_spec(runtime) is None:
                notes.append(f"{runtime} is not installed (pip install -e '.[backends]'): not measured.")
                continue
            for precision, path in exports.items():
                try:
                    scorers[f"{runtime} {precision}"] = onnx_scorer(path, model, runtime=runtime)
                except Exception as exc:  # a runtime that cannot compile a graph is a result, not a crash
                    notes.append(f"{runtime} {precision}: could not load the export ({type(exc).__name__}: {exc}).")
    flat, bs = speed.flat_pairs(), bench.batch_size
    # Each variant: a timed callable on the speed sample, and one that scores the quality sample.
    half = bench.model("bfloat16")  # torch itself in bf16: fast where the CPU has avx512_bf16 or AMX
    variants: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "torch fp32": (
            reranking_paths(model, speed, batch_size=bs)["pooled"],
            reranking_paths(model, quality, batch_size=bs)["pooled"],
        ),
        "torch bf16": (
            reranking_paths(half, speed, batch_size=bs)["pooled"],
            reranking_paths(half, quality, batch_size=bs)["pooled"],
        ),
    }
    for name, score in scorers.items():
        variants[name] = (
            lambda s=score: speed.split(s(flat, batch_size=bs)),
            lambda s=score: quality.split(s(quality.flat_pairs(), batch_size=bs)),
        )
    for score in scorers.values():  # a few pairs first: sessions and kernels initialise lazily
        score(flat[:4], batch_size=bs)
    for warm in (model, half):
        reranking_paths(warm, speed.head(1, 4), batch_size=bs)["pooled"]()
    timings = time_calls(
        {name: timed for name, (timed, _) in variants.items()}, repeats=bench.sizes.repeats, warmup=False
    )
    reference = timings["torch fp32"]
    torch_ndcg = ndcg_at_10(quality, variants["torch fp32"][1]())
    rows = []
    for name, timing in timings.items():
        ratio = reference.median_s / timing.median_s
        row: dict[str, Any] = {
            "backend": name,
            "median_s": timing.median_s,
            "pairs_per_s": speed.n_pairs / timing.median_s,
            "speed_vs_torch": ratio,
            **score_agreement(timing.result, reference.result),
        }
        if name == "torch fp32":
            row.update({"ndcg@10": torch_ndcg, "ndcg@10_delta": 0.0, "verdict": "reference"})
        elif ratio <= 1.0:
            row.update({"ndcg@10": None, "ndcg@10_delta": None, "verdict": "rejected: not faster"})
        else:
            ndcg = ndcg_at_10(quality, variants[name][1]())
            loss = torch_ndcg - ndcg
            row.update(
                {
                    "ndcg@10": ndcg,
                    "ndcg@10_delta": ndcg - torch_ndcg,
                    "verdict": f"candidate: faster, within {BACKEND_MAX_NDCG_LOSS} nDCG@10"
                    if loss <= BACKEND_MAX_NDCG_LOSS
                    else f"rejected: loses {loss:.3f} nDCG@10",
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    notes.append(
        "The ONNX runtimes cannot become a ragkit option as things stand: HuggingFaceRerankerLoader "
        "builds LangChain's HuggingFaceCrossEncoder, i.e. a sentence-transformers CrossEncoder, whose "
        "backends need the optimum packages above. torch bf16 passes the rule, so ragkit offers it as an "
        "opt-in precision: Pipeline(reranker_dtype='bfloat16'), ragkit eval --reranker-dtypes bfloat16, "
        "ragkit.rerank.load_reranker(name, dtype='bfloat16'). It stays off by default: CPUs without bf16 "
        "support run it slower, and it changes scores slightly."
    )
    return (
        {"backends": table},
        {
            "speed": bench.sample_parameters(speed),
            "quality": bench.sample_parameters(quality),
            "batch_size": bs,
            "repeats": bench.sizes.repeats,
        },
        notes,
    )


def loader_cache_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    rows = [
        loader_timings(bench.reranker, kind="reranker", device=bench.device),
        loader_timings(DEFAULT_EMBEDDER, kind="embedder", device=bench.device),
    ]
    table = pd.DataFrame(rows)
    table["hit_under_1ms"] = table["hit_us_p99"] < 1000
    return (
        {"loaders": table},
        {"reloads": 3, "hits": 1000},
        [
            "first_load_s reads the weights from disk (from the OS file cache if they were read before); "
            "reload_s_median clears ragkit's cache first; hits call the loader again with the same arguments."
        ],
    )


def rerun_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    args = bench.sizes.eval_args + ["--device", bench.device]
    with tempfile.TemporaryDirectory(prefix="ragkit-rerun-") as tmp:
        cache, out = Path(tmp) / "cache", str(Path(tmp) / "report")
        # The plan first, in the same fresh cache: its estimate (rates measured now, then
        # remembered, as a first run on a new machine measures them) against the time taken.
        planned: list[str] = []
        plan_seconds = time_eval([*args, "--plan", "--output", out], cache, output=planned)
        estimate = _estimated_minutes(planned[0])
        printed: list[str] = []
        first = time_eval([*args, "--output", out], cache, output=printed)
        second = time_eval([*args, "--output", out], cache)
        # Another top_n is another result, but reranks the same candidates: every pair score,
        # first-stage run and latency timing comes from the lower caches.
        top_n = ["--top-n", str(DEFAULT_RERANK_K // 2)]
        other_top_n = time_eval([*args, *top_n, "--output", out], cache)
    table = pd.DataFrame(
        [
            {"run": "first (fresh cache: index, first stage, pair scores, latency)", "seconds": first, "speedup": 1.0},
            {"run": "second, unchanged grid (the whole result reused)", "seconds": second, "speedup": first / second},
            {
                "run": f"changed grid, same candidates ({' '.join(top_n)}): index, runs, pair scores and latency "
                "reused",
                "seconds": other_top_n,
                "speedup": first / other_top_n,
            },
        ]
    )
    table["minutes"] = table["seconds"] / 60
    command = "ragkit eval " + " ".join(args)
    return (
        {"rerun": table},
        # The report folder was a temporary one: the output names the default instead.
        {
            "command": command,
            "target_speedup": 20,
            "output": printed[0].replace(out, "results/eval"),
            "estimated_minutes": estimate,
            "plan_seconds": plan_seconds,
            "plan": planned[0],
        },
        [
            f"Each run is `{command}` in a new process (imports and model loads included) with its own "
            "RAGKIT_CACHE_DIR. The first is the README's default evaluation, end to end.",
            "An unchanged grid is answered from ragkit's result cache (keyed on the data, pipelines, models, "
            "settings, device and library versions) without opening an index or loading a model; what remains "
            "is starting Python and importing torch, LangChain and pandas, loading the collection, and writing "
            "the report.",
        ],
    )


def _estimated_minutes(plan_output: str) -> float:
    """The minutes a ``ragkit eval --plan`` output estimates (its headline's "about N min")."""
    found = re.search(r"about ([\d.,]+) (min|s)\b", plan_output)
    if found is None:
        raise ValueError(f"No estimate in the plan printed:\n{plan_output}")
    value = float(found.group(1).replace(",", ""))
    return value if found.group(2) == "min" else value / 60


def end_to_end_full_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    args = ["--queries", "0", "--device", bench.device]
    if bench.quick:
        args = bench.sizes.eval_args + ["--device", bench.device]
    with tempfile.TemporaryDirectory(prefix="ragkit-full-") as tmp:
        seconds = time_eval([*args, "--output", str(Path(tmp) / "report")], Path(tmp) / "cache")
    command = "ragkit eval " + " ".join(args)
    return (
        {"end_to_end": pd.DataFrame([{"command": command, "seconds": seconds, "minutes": seconds / 60}])},
        {"command": command},
        [
            "A new process in a fresh cache: embedding the corpus, first stage, reranking, "
            "latency queries, statistics and the report."
        ],
    )


def gpu_dtypes_section(bench: Bench) -> tuple[dict[str, pd.DataFrame], dict[str, Any], list[str]]:
    if not bench.gpu and not bench.quick:
        return {}, {}, ["GPU only: run with --device cuda on a GPU machine."]
    import torch

    dtypes = ["float32", "float16", "bfloat16"]
    if bench.gpu and not torch.cuda.is_bf16_supported():
        dtypes.remove("bfloat16")
    if not bench.gpu:  # --quick on a CPU: the mechanics only, in the dtype a CPU runs well
        dtypes = ["float32", "bfloat16"]
    sample, rows = bench.sweep, []
    for length in (128, max(bench.sizes.max_lengths)):
        reference = None
        for dtype in dtypes:
            model = bench.model(dtype)
            sweep = batch_size_sweep(
                model, sample, bench.sizes.batch_sizes, paths=["pooled"], max_length=length, repeats=bench.sizes.repeats
            )
            scores = reranking_paths(model, bench.quality, batch_size=max(bench.sizes.batch_sizes), max_length=length)[
                "pooled"
            ]()
            reference = scores if dtype == "float32" else reference
            agreement = score_agreement(scores, reference)
            for _, r in sweep.iterrows():
                rows.append(
                    {
                        "dtype": dtype,
                        "max_length": length,
                        "batch_size": r["batch_size"],
                        "pairs_per_s": r["pairs_per_s"],
                        "ms_per_query": r["ms_per_query"],
                        "median_s": r["median_s"],
                        "ndcg@10": ndcg_at_10(bench.quality, scores),
                        **agreement,
                    }
                )
    table = pd.DataFrame(rows)
    best = table[(table["dtype"] == "float16") & (table["max_length"] == 128)]["pairs_per_s"].max()
    notes = [
        f"Path (d) on {sample.n_pairs} pooled pairs; scores compared with float32 at the same length.",
        f"Target: {bench.reranker} at 128 tokens in fp16 on an H100, >= {GPU_TARGET_PAIRS_PER_S:,} pairs/s; "
        f"best here: {best:,.0f} pairs/s."
        if best == best
        else "No fp16 row (CPU quick run).",
    ]
    return (
        {"dtypes": table},
        {**bench.sample_parameters(sample), "batch_sizes": bench.sizes.batch_sizes, "repeats": bench.sizes.repeats},
        notes,
    )


RUNNERS = {
    "throughput": ("1. Reranking throughput: four paths, same pairs", throughput_section),
    "batch_size": ("2a. Batch size sweep", batch_size_section),
    "max_length": ("2b. Max length: speed and nDCG@10", max_length_section),
    "backends": ("3. CPU backends against torch fp32", backends_section),
    "loader_cache": ("4. Loader cache: load against hit", loader_cache_section),
    "rerun": ("5-6. Re-running an evaluation; the README's default evaluation end to end", rerun_section),
    "end_to_end_full": ("6. Full SciFact test split end to end", end_to_end_full_section),
    "gpu_dtypes": ("7. GPU: fp32, fp16, bf16 across batch sizes", gpu_dtypes_section),
}


# ----------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value:.1e}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def records_table(records: list[dict[str, Any]]) -> str:
    """A GitHub Markdown table of result records (their keys, in order of first appearance, are
    the columns), numbers rounded for reading."""
    if not records:
        return "_(no rows)_"
    columns = list(dict.fromkeys(c for r in records for c in r))
    return markdown_table(pd.DataFrame([[_cell(r.get(c)) for c in columns] for r in records], columns=columns))


def write_markdown(folder: Path, tag: str) -> Path:
    """``rerank_cost-<tag>.md``: every section file of this device, in section order."""
    lines = [
        f"# What reranking costs ({tag})",
        "",
        "Written by `benchmarks/rerank_cost.py` from the JSON files beside it; medians over repeats.",
        "",
    ]
    stored = stored_results(folder, tag)
    for record in (stored[section] for section in SECTIONS if section in stored):
        env = record["environment"]
        ver = env["versions"]
        where = (
            f"CPU: {env['machine']}"
            if env["device"] == "cpu"
            else f"{env['device_name']} ({env['device']}) on {env['machine']}"
        )
        quick = " (**--quick**: tiny sizes, not results)" if record["quick"] else ""
        lines += [
            f"## {record['title']}",
            "",
            f"{where}, {env['torch_threads']} torch threads; torch {ver['torch']}, transformers "
            f"{ver['transformers']}, sentence-transformers {ver['sentence-transformers']}, langchain-core "
            f"{ver.get('langchain-core', '?')}; {env['date']}; section took {record['seconds']:.0f} s{quick}.",
            "",
            # The default evaluation's printed output is in the JSON (and the README), not here.
            f"Parameters: `{json.dumps({k: v for k, v in record['parameters'].items() if k != 'output'})}`",
            "",
        ]
        for name, rows in record["tables"].items():
            # Long labels stay in the JSON; the notes spell them out once.
            shown = [{key: value for key, value in row.items() if key != "label"} for row in rows]
            lines += [f"**{name}**", "", records_table(shown), ""]
        lines += [f"- {note}" for note in record["notes"]] + [""]
    path = folder / f"rerank_cost-{tag}.md"
    path.write_text("\n".join(lines))
    return path


README_BEGIN = "<!-- rerank_cost-{tag}: written by benchmarks/rerank_cost.py, do not edit -->"
README_END = "<!-- end rerank_cost-{tag} -->"
README = Path(__file__).resolve().parents[1] / "README.md"  # the main job's output block
COST_PAGE = README.parent / "docs" / "cost.md"  # each device's headline block


def headline(folder: Path, tag: str) -> str:
    """The few figures docs/cost.md shows, from this device's section files: each target of
    the issue with the measured value, and end-to-end minutes."""
    stored = stored_results(folder, tag)
    rows: list[dict[str, Any]] = []
    if (record := stored.get("throughput")) is not None:
        for name, table in record["tables"].items():
            if not name.startswith("targets"):
                continue
            paths = record["tables"]["paths" + name.removeprefix("targets")]
            k = paths[0]["pairs"] // paths[0]["queries"]
            rate = {r["path"]: r["pairs_per_s"] for r in paths}
            rows.append(
                {
                    "measure": f"pairs/s, k={k}, batch {paths[0]['batch_size']}: (a) / (b) / (c) / (d)",
                    "measured": " / ".join(f"{rate[p]:.1f}" for p in PATHS if p in rate),
                    "target": "",
                }
            )
            rows += [
                {
                    "measure": f"{t['target']}, k={k}",
                    "measured": f"{t['ratio']:.2f} x",
                    "target": f">= {t['at_least']} x: {'met' if t['met'] else 'not met'}",
                }
                for t in table
            ]
    if (record := stored.get("backends")) is not None:
        # How much evidence a quality change rests on: its queries (no interval was computed).
        quality = record["parameters"].get("quality", {})
        on = f" on {quality['queries']} subset queries, no interval" if quality.get("queries") else ""
        rows += [
            {
                "measure": f"backend {r['backend']}",
                "measured": f"{r['speed_vs_torch']:.2f} x torch fp32"
                + (f", nDCG@10 {r['ndcg@10_delta']:+.3f}{on}" if r.get("ndcg@10_delta") is not None else ""),
                "target": r["verdict"],
            }
            for r in record["tables"]["backends"]
            if r["backend"] != "torch fp32"
        ]
    if (record := stored.get("loader_cache")) is not None:
        rows += [
            {
                "measure": f"loader cache hit, {r['loader']}",
                "measured": f"{r['hit_us_p99']:.0f} us (p99)",
                "target": f"< 1 ms: {'met' if r['hit_under_1ms'] else 'not met'}",
            }
            for r in record["tables"]["loaders"]
        ]
    if (record := stored.get("rerun")) is not None:
        first, second = record["tables"]["rerun"][:2]
        rows += [
            {
                "measure": f"`{record['parameters']['command']}` (the default evaluation), fresh cache",
                "measured": f"{first['minutes']:.1f} min",
                "target": "",
            },
            {
                "measure": "the same, run again",
                "measured": f"{second['seconds']:.1f} s ({second['speedup']:.0f} x)",
                "target": f">= {record['parameters']['target_speedup']} x: "
                f"{'met' if second['speedup'] >= record['parameters']['target_speedup'] else 'not met'}",
            },
        ]
    if (record := stored.get("end_to_end_full")) is not None:
        row = record["tables"]["end_to_end"][0]
        rows.append(
            {
                "measure": f"full SciFact test split (`{row['command']}`)",
                "measured": f"{row['minutes']:.1f} min",
                "target": "",
            }
        )
    if not rows:
        return ""
    sections = ("throughput", "backends", "loader_cache", "rerun", "end_to_end_full")
    machines: dict[str, list[str]] = {}  # sections can be measured on different machines: each is named
    for section in (s for s in sections if s in stored):
        machines.setdefault(stored[section]["environment"]["device_name"], []).append(section)
    where = [
        f"{machine} ({', '.join(sorted({stored[s]['environment']['date'][:10] for s in names}))}"
        + (f": {', '.join(n.replace('_', ' ') for n in names)}" if len(machines) > 1 else "")
        + ")"
        for machine, names in machines.items()
    ]
    return "\n".join(
        [
            f"Measured on {'; '.join(where)}; all figures in "
            f"[`benchmarks/results/rerank_cost-{tag}.md`](../benchmarks/results/rerank_cost-{tag}.md).",
            "",
            records_table(rows),
        ]
    )


OUTPUT_BEGIN = "<!-- main-job-output: written by benchmarks/rerank_cost.py from its rerun section, do not edit -->"
OUTPUT_END = "<!-- end main-job-output -->"


def main_job_block(folder: Path, tag: str = "cpu") -> str:
    """What the default ``ragkit eval`` printed in the rerun section's fresh run, with where,
    when and how long: the README shows it on its first screen."""
    record = stored_results(folder, tag)["rerun"]
    env, first = record["environment"], record["tables"]["rerun"][0]
    output = record["parameters"]["output"].strip()
    # Trimmed where the table of each reranker against its own first stage begins: with one
    # reranker it repeats the rows above, and the report keeps it.
    cut = output.find("\nEach reranker against its own first stage:")
    if cut >= 0:
        report = output[output.rfind("\nReport written to") :].strip()
        output = output[:cut].rstrip() + "\n\n[... each reranker against its own first stage ...]\n\n" + report
    return "\n".join([
        f"`{record['parameters']['command']}` in a fresh cache on {env['device_name']} ({env['date'][:10]}), "
        f"{first['minutes']:.1f} minutes end to end{_estimate_words(record['parameters'])}, printed (trimmed):",
        "",
        "```text",
        output,
        "```",
    ])  # fmt: skip


def _estimate_words(parameters: dict[str, Any]) -> str:
    estimate = parameters.get("estimated_minutes")
    return "" if estimate is None else f" (`--plan` had estimated {estimate:.1f})"


def readme_output_block(text: str, block: str) -> str:
    """``text`` (the README) with its main-job output block replaced by ``block``."""
    if OUTPUT_BEGIN not in text or OUTPUT_END not in text:
        raise ValueError(f"README.md has no {OUTPUT_BEGIN} ... {OUTPUT_END} block.")
    head, rest = text.split(OUTPUT_BEGIN, 1)
    return head + OUTPUT_BEGIN + "\n" + block + "\n" + OUTPUT_END + rest.split(OUTPUT_END, 1)[1]


def readme_block(text: str, tag: str, block: str) -> str:
    """``text`` (docs/cost.md) with its block for ``tag`` replaced by ``block``."""
    begin, end = README_BEGIN.format(tag=tag), README_END.format(tag=tag)
    if begin not in text or end not in text:
        raise ValueError(f"docs/cost.md has no {begin} ... {end} block to write the {tag} headline into.")
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"sections to run (default: {' '.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results to a temporary folder")
    parser.add_argument("--reranker", default=DEFAULT_RERANKER)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size of the path comparison (default: ragkit's for the device)",
    )
    parser.add_argument("--output", default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    bench = Bench(args)
    sections = args.only or DEFAULT_SECTIONS
    if bench.gpu:
        print(f"device {bench.device}: {environment(bench.device)['device_name']}")
    total = time.perf_counter()
    for section in sections:
        title, runner = RUNNERS[section]
        print(f"\n=== {title} ===", flush=True)
        start = time.perf_counter()
        tables, parameters, notes = runner(bench)
        seconds = time.perf_counter() - start
        if not tables:
            print("\n".join(notes))
            continue
        path = bench.save(section, title, tables, parameters, notes, seconds)
        for name, table in tables.items():
            with pd.option_context(
                "display.width", 200, "display.max_columns", 30, "display.float_format", "{:,.4g}".format
            ):
                print(f"\n{name}:\n{table.drop(columns=['label'], errors='ignore').to_string(index=False)}")
        print("\n".join(f"- {n}" for n in notes))
        print(f"({seconds / 60:.1f} min) -> {path}", flush=True)
    markdown = write_markdown(bench.output, bench.tag)
    if not bench.quick and bench.output == RESULTS:
        text = COST_PAGE.read_text()
        if README_BEGIN.format(tag=bench.tag) in text:
            COST_PAGE.write_text(readme_block(text, bench.tag, headline(bench.output, bench.tag)))
            if bench.tag == "cpu" and "output" in stored_results(bench.output, "cpu")["rerun"]["parameters"]:
                README.write_text(readme_output_block(README.read_text(), main_job_block(bench.output)))
        else:
            print(f"docs/cost.md has no {README_BEGIN.format(tag=bench.tag)} block: its headline is not shown there.")
    print(f"\nAll sections in {(time.perf_counter() - total) / 60:.1f} min; Markdown: {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
