"""Defaults and environment variables, in one place.

Every default a user may want to change lives here, so the notebooks, the command line
and the tests read the same value. Environment variables override the paths:

- ``RAGKIT_BEIR_DIR``: a folder holding BEIR collections as ``<dir>/<name>/corpus.jsonl``...,
  searched first.
- ``RAGKIT_DATA_DIR``: where downloaded collections land, in ``<dir>/beir`` (default: the
  ``beir`` folder of the cache directory; never the working directory).
- ``RAGKIT_CACHE_DIR``: where Chroma indexes, first-stage runs and pair scores are cached
  (default ``~/.cache/ragkit``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ragkit.errors import ConfigError

BEIR_DIR_ENV = "RAGKIT_BEIR_DIR"
DATA_DIR_ENV = "RAGKIT_DATA_DIR"
CACHE_DIR_ENV = "RAGKIT_CACHE_DIR"

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L-12-v2"
DEFAULT_DEVICE = "auto"

# Set to 1 to make ragkit fail at once, instead of trying the network, when a collection is
# missing (HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 are honoured too).
OFFLINE_ENV = "RAGKIT_OFFLINE"
# A base URL that replaces the BEIR download server (it must serve the same <name>.zip files,
# which are checked against the manifest's md5 all the same).
BEIR_MIRROR_ENV = "RAGKIT_BEIR_MIRROR"
# How long to wait for a download server to answer before calling it unreachable: short, so
# that a machine without internet gets a clear error at once rather than a timeout.
NETWORK_PROBE_TIMEOUT_S = 0.8

# Queries `ragkit eval` samples by default, over the whole corpus (scores estimate the full
# split's): on 2 CPU cores SciFact's 5,183 abstracts embed in about four minutes (once; the index
# is cached) and 50 queries' 1,000 pairs rerank in two, which keeps the default run under ten.
DEFAULT_EVAL_QUERIES = 50
# The command line writes no line wider than this (a narrower terminal gets its own width, down
# to the minimum): the verdict is wrapped, and tables name pipelines P1, P2, ... with a legend.
OUTPUT_WIDTH = 100
MIN_OUTPUT_WIDTH = 60
# A run estimated longer than this says so in its first lines (``ragkit.plan``).
LONG_RUN_MINUTES = 30

# Subsets for quick runs on a laptop CPU (see ragkit.data.make_subset): about 1,000 documents
# embed in under a minute at ~20 docs/s, and 50 queries keep reranking to a few minutes.
DEFAULT_SUBSET_QUERIES = 50
DEFAULT_SUBSET_DOCS = 1000
DEFAULT_SUBSET_HARD_NEGATIVES = 10
DEFAULT_SUBSET_SEED = 0

# The notebooks' subsets: small enough that every notebook together runs in CI within
# minutes on 2 CPU cores. Raise them (environment variables) for steadier numbers.
NOTEBOOK_QUERIES = int(os.environ.get("RAGKIT_NOTEBOOK_QUERIES", "15"))
NOTEBOOK_DOCS = int(os.environ.get("RAGKIT_NOTEBOOK_DOCS", "300"))


def cache_dir() -> Path:
    """Folder for indexes and score caches: ``$RAGKIT_CACHE_DIR`` or ``~/.cache/ragkit``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragkit"
    return Path(os.environ.get(CACHE_DIR_ENV, default))


def beir_download_dir() -> Path:
    """Where named BEIR collections are downloaded to, as ``<folder>/<name>``:
    ``$RAGKIT_DATA_DIR/beir``, else ``<cache dir>/beir``, so that a download never lands in the
    working directory. ``ragkit cache clear`` leaves this folder alone.

    Example:
        >>> beir_download_dir().name
        'beir'
    """
    data = os.environ.get(DATA_DIR_ENV)
    return Path(data) / "beir" if data else cache_dir() / "beir"


def env_flag(variable: str) -> bool:
    """Whether an on/off environment variable (``HF_HUB_OFFLINE``, ``RAGKIT_OFFLINE``...) is on:
    ``1``, ``true``, ``yes`` or ``on``, in any case.

    Example:
        >>> os.environ["RAGKIT_EXAMPLE_FLAG"] = "Yes"
        >>> env_flag("RAGKIT_EXAMPLE_FLAG"), env_flag("RAGKIT_UNSET_FLAG")
        (True, False)
    """
    return os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}


def beir_dir() -> Path | None:
    """Folder named by ``$RAGKIT_BEIR_DIR``, or ``None`` when the variable is unset."""
    value = os.environ.get(BEIR_DIR_ENV)
    return Path(value) if value else None


def beir_search_dirs() -> list[Path]:
    """The folders a BEIR collection is looked for in by name, in order: ``$RAGKIT_BEIR_DIR``
    (when set), then :func:`beir_download_dir`, where a missing one is downloaded to."""
    return [folder for folder in (beir_dir(), beir_download_dir()) if folder is not None]


# Evaluation. ir-measures names: nDCG@10, RR@10 (MRR@10) and R@100 are what BEIR reports.
DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@100")
FIRST_STAGE_DEPTH = 100  # documents a retriever-only pipeline returns (R@100 needs 100)
# Candidates a reranker sees by default: the L-12 cross-encoder scores about 5 SciFact pairs/s
# on a 2-core CPU, so 20 per query keeps the default evaluation within minutes there.
DEFAULT_RERANK_K = 20
# Queries timed one at a time, uncached, for per-stage p50/p95 latency: with 30, a p95 rests on
# the two slowest of thirty rather than being interpolated between the two slowest of ten.
LATENCY_QUERIES = 30
N_RESAMPLES = 10_000  # permutations and bootstrap samples for significance and CIs
SIGNIFICANCE_LEVEL = 0.05
# Simulated replications behind the randomization test's power: 400 put its Monte Carlo error
# at about 0.02 near 80% power, enough to tell 0.8 from 0.6, in a fraction of a second.
POWER_SIMULATIONS = 400
# The smallest change of the leading measure worth having: what "no gain worth having" and "a
# gain of at least ..." are measured against (`--min-effect`). 0.01 nDCG@10 is a starting point:
# set what a change must reach to matter to your application.
MIN_EFFECT = 0.01
# Queries added per round of a sequential evaluation (`--until-decided`): the default sample's
# size, so that its first round costs what the default run costs.
ROUND_QUERIES = DEFAULT_EVAL_QUERIES

# Retrieval and reranking (DEFAULT_RERANK_K, the candidates a reranker sees, is above).
DEFAULT_TOP_N = 10  # documents the reranker returns (nDCG@10 reads ten)
CHUNK_SIZE = 400  # characters per chunk when long documents are split (the design's tutorial)
CHUNK_OVERLAP = 50
# What a chunk size counts: characters, or tokens of the embedder's tokenizer (no chunk is then
# longer than the model reads; all-MiniLM-L6-v2 reads 256 tokens, the cross-encoders 512).
CHUNK_UNITS = ("chars", "tokens")
# How a chunked document scores: as its best passage (MaxP) or as its first (FirstP).
PASSAGE_SCORES = ("maxp", "firstp")
# The hybrid first stage: dense and BM25 rankings fused by weighted reciprocal rank fusion
# (Cormack et al., 2009), as LangChain's EnsembleRetriever computes it: a document scores the
# sum over rankings of weight / (rank + RRF_C). 60 is the paper's and LangChain's constant; equal
# weights are EnsembleRetriever's default. Each ranking is read to FUSION_DEPTH (or deeper when
# more candidates are asked for), so that a shorter candidate list is a prefix of a longer one.
RRF_C = 60
HYBRID_WEIGHTS = (0.5, 0.5)  # dense, BM25
FUSION_DEPTH = FIRST_STAGE_DEPTH
INDEX_BATCH_SIZE = 256  # documents embedded and added to Chroma per step (capped by Chroma's limit)
# Dense search is exact (one matrix product over the stored vectors, held in memory) for an
# index of at most this many vectors, and Chroma's HNSW search above: the largest size at which
# exact search was the faster one query at a time on a quiet 2-core machine
# (benchmarks/results/exact_crossover/scaling-cpu.md, 384-d: 1.95 ms exact against 2.63 ms HNSW
# at 20,000 vectors, 3.42 ms against 2.48 ms at 30,000; they meet near 24,000). An evaluation's
# batch of 1,000 queries is faster exact up to 50,000 (1.01 s against 1.03 s). Below the
# threshold exact search finds the true nearest neighbours too. 0: always HNSW.
EXACT_SEARCH_MAX_VECTORS = 20_000
# (query, passage) pairs per cross-encoder forward pass, by kind of device. On a CPU small
# batches are fastest: on 2 cores the pooled stream scored about 30% more SciFact pairs per
# second in batches of 8 than of 32, and the per-query path as many in batches of 2-8 (less
# padding, smaller attention tensors; benchmarks/results/batch_size-cpu.json). A GPU needs
# large batches to keep busy.
RERANK_BATCH_SIZE = {"cpu": 8, "gpu": 128}
# Cross-encoder weight precisions ragkit offers; float32 is the default everywhere. bfloat16
# scored 2.45 x faster than float32 on a CPU with bf16 support, at the same nDCG@10 on a
# SciFact subset (benchmarks/results/backends-cpu.json); CPUs without it run bf16 slower.
# float16 is for GPUs.
RERANK_DTYPES = ("float32", "bfloat16", "float16")


def rerank_batch_size(device: str, devices: Sequence[str] | None = None) -> int:
    """The default cross-encoder batch size on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...),
    or, when worker processes score on ``devices``, the smallest of theirs: one batch size serves
    every worker, and a GPU runs CPU-sized batches (only more slowly) where a CPU would crawl
    through GPU-sized ones.

    Example:
        >>> rerank_batch_size("cpu"), rerank_batch_size("cuda:0"), rerank_batch_size("cuda", ["cpu", "cuda:0"])
        (8, 128, 8)
    """
    return min(RERANK_BATCH_SIZE["cpu" if d == "cpu" else "gpu"] for d in (devices or [device]))


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How an evaluation is run, as one frozen object: ``experiment()`` builds it from its
    keyword arguments, every stage reads it, and the result cache's key is computed from it.

    Attributes:
        measures: ir-measures names; the first is the one tables and plots lead with.
        baseline: index or name of the pipeline the others are compared with.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``; one device for every model.
        batch_size: cross-encoder batch size; ``None``: ``rerank_batch_size(device)``.
        engine: ``"batched"`` (pooled scoring, on-disk caches) or ``"langchain"`` (each query
            through the LangChain retriever the notebooks teach).
        latency_queries: queries timed one at a time, uncached, per pipeline.
        n_resamples: permutations and bootstrap samples.
        seed: seed of the resampling.

    Example:
        >>> RunSettings(device="cpu", latency_queries=0).latency_queries
        0
    """

    measures: tuple[str, ...] = DEFAULT_MEASURES
    baseline: int | str = 0
    device: str = DEFAULT_DEVICE
    batch_size: int | None = None
    engine: Literal["batched", "langchain"] = "batched"
    latency_queries: int = LATENCY_QUERIES
    n_resamples: int = N_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "measures", tuple([self.measures] if isinstance(self.measures, str) else self.measures)
        )
        if self.engine not in ("batched", "langchain"):
            raise ConfigError(f"engine must be 'batched' or 'langchain', got {self.engine!r}.")
        for name in ("latency_queries", "n_resamples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "latency_queries" else 1):
                least = 0 if name == "latency_queries" else 1
                raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size!r}.")
