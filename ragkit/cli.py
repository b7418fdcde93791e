"""The ``ragkit`` command line: argument parsing and checking only; the work happens in the
modules it calls. Every option is checked before any model is loaded or any file written, and
all that can be checked without them before torch, chromadb or LangChain is even imported (a
typo costs a second, not the minute those imports can take on a busy machine). Every error is
one paragraph on standard error with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shutil
import socket
import sys
import textwrap
from collections.abc import Sequence

from ragkit.errors import ConfigError, RagkitError
from ragkit.settings import (
    DEFAULT_DEVICE,
    DEFAULT_EMBEDDER,
    DEFAULT_EVAL_QUERIES,
    DEFAULT_RERANKER,
    HYBRID_WEIGHTS,
    MIN_EFFECT,
    MIN_OUTPUT_WIDTH,
    OUTPUT_WIDTH,
    ROUND_QUERIES,
)

# What `ragkit --help` says: for the user of the command, not for the reader of this module.
USAGE = (
    "Measure whether a cross-encoder reranker is worth its latency on top of a LangChain + Chroma "
    "retriever: `ragkit eval` evaluates retrieval pipelines on BEIR collections and writes a report, "
    "`ragkit cache` shows, verifies or clears what ragkit cached, `ragkit smoke` checks that the "
    "default models load. `ragkit eval --help` lists the options."
)

# Seconds to wait for a Chroma server to accept a connection before calling it unreachable.
CHROMA_PROBE_TIMEOUT_S = 3.0

SMOKE_QUERY = "How does a cross-encoder rerank retrieved passages?"
SMOKE_PASSAGES = [
    "Bananas are rich in potassium and are often eaten as a quick snack.",
    "A cross-encoder reads the query and a passage together and outputs one relevance score, "
    "which is used to reorder the candidates a first-stage retriever returned.",
    "Chroma is an open-source vector database that stores embeddings and searches them by similarity.",
    "Reranking passages with a cross-encoder is slower than vector search, so it is applied only to the top hits.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
]


def smoke(embedder: str, reranker: str, device: str) -> int:
    """Load both models through the cached loaders and rank a few passages, printing scores."""
    import numpy as np

    from ragkit.loaders import HuggingFaceEmbeddingsLoader, HuggingFaceRerankerLoader
    from ragkit.models import model_revision

    emb = HuggingFaceEmbeddingsLoader(embedder, model_kwargs={"device": device})
    ce = HuggingFaceRerankerLoader(reranker, model_kwargs={"device": device})
    query_vec = np.asarray(emb.embed_query(SMOKE_QUERY))
    doc_vecs = np.asarray(emb.embed_documents(SMOKE_PASSAGES))
    cosine = doc_vecs @ query_vec / (np.linalg.norm(doc_vecs, axis=1) * np.linalg.norm(query_vec))
    scores = np.asarray(list(ce.score([(SMOKE_QUERY, p) for p in SMOKE_PASSAGES])), dtype=float)

    print(f"embedder: {embedder} (revision {model_revision(embedder)})")
    print(f"reranker: {reranker} (revision {model_revision(reranker)})")
    print(f"query:    {SMOKE_QUERY}\n")
    print(f"{'rank':>4}  {'cross-enc':>9}  {'cosine':>6}  passage")
    for rank, i in enumerate(np.argsort(-scores), start=1):
        print(f"{rank:>4}  {scores[i]:>9.4f}  {cosine[i]:>6.3f}  {SMOKE_PASSAGES[i][:70]}")
    return 0


def _check_model(name: str, kind: str) -> str:
    from ragkit.models import check_model

    check_model(name, kind)  # type: ignore[arg-type]
    return name


def _check_reranker(name: str) -> str:
    """A cross-encoder, or a family-prefixed model (``bi-encoder:<model>``), checked to load."""
    from ragkit.registry import reranker_kind

    kind, model = reranker_kind(name)
    _check_model(model, kind.model_kind)  # type: ignore[arg-type]
    return name


def _positive(option: str, values: Sequence[int], *, least: int = 1) -> None:
    for value in values:
        if value < least:
            raise ConfigError(f"{option} must be at least {least}, got {value}.")


def _whole_or_number(option: str, value: str) -> int | None:
    """``none`` (whole documents, the model's own length) or a whole number of at least 1."""
    if value.lower() == "none":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{option} takes whole numbers of at least 1 or 'none', got {value!r}.")
    return int(value)


def _check_device_name(option: str, device: str) -> None:
    """The form of a device name, checked before torch is imported (which devices this machine
    has is asked of torch later)."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", device):
        raise ConfigError(
            f"{option}: unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'."
        )


def _check_chroma_server(host: str, port: int) -> None:
    """That something accepts connections at ``host:port``: a plain socket, so that a wrong
    address is reported before chromadb (seconds to import) is loaded to talk to it."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--chroma-port must be a TCP port (1-65535), got {port!r}.")
    if not host:
        raise ConfigError("--chroma-host is empty: give the server's host name or address.")
    try:
        socket.create_connection((host, port), timeout=CHROMA_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"No Chroma server answers at {host}:{port} (--chroma-host/--chroma-port): {exc.strerror or exc}. "
            f"Start one with `chroma run --path DIR --host {host} --port {port}`, check the address, or leave both "
            "options out to use the embedded index in ragkit's cache."
        ) from None


def _output_width() -> int:
    """The columns the results are written to: the terminal's, at most ``OUTPUT_WIDTH``
    (``OUTPUT_WIDTH`` when the output is not a terminal, or ``$COLUMNS`` when set)."""
    columns = shutil.get_terminal_size((OUTPUT_WIDTH, 24)).columns
    return max(MIN_OUTPUT_WIDTH, min(columns, OUTPUT_WIDTH))


class _Wrapped(logging.Formatter):
    """Log lines wrapped to the output's width (a model folder's path can be long)."""

    def format(self, record: logging.LogRecord) -> str:
        return textwrap.fill(super().format(record), _output_width(), subsequent_indent="  ",
                             break_long_words=False, break_on_hyphens=False)  # a path stays whole  # fmt: skip


def _count(value: str) -> int:
    """A number of queries for ``--queries``/``--subset``: a whole number, or ``all`` (0: no
    reduction, for both options)."""
    if value.strip().lower() in ("all", "none"):
        return 0
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of queries or 'all', got {value!r}") from None


def _note(text: str) -> None:
    """A remark about the options, on standard error: standard output holds only the results."""
    print(textwrap.fill(f"note: {text}", _output_width(), subsequent_indent="      "), file=sys.stderr)


def _check_run_file(path: str) -> None:
    """That ``--run`` names a readable file; its lines and ids are checked once the collection
    is loaded, before any work (``ragkit.runfile.check_run_stage``)."""
    from pathlib import Path

    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ConfigError(
            f"--run {path} {what}: give the path of a TREC run file (lines of '<query id> Q0 <document id> <rank> "
            "<score> <run tag>'), for example a report's runs/<pipeline>.trec."
        )


def _check_options(args: argparse.Namespace) -> None:
    """Every check of the options that needs neither torch, nor chromadb, nor LangChain: they
    take seconds to import, and a mistyped option should fail at once. (Which devices this
    machine has, and whether the Chroma server speaks Chroma, are checked once they are loaded.)"""
    from ragkit.data import locate_collection

    for name in args.dataset:  # a known name or a collection's folder, with judgements for --split
        locate_collection(name, args.split)
    if args.subset < 0:
        raise ConfigError(f"--subset must be 0 (no subset) or a number of queries, got {args.subset}.")
    if args.queries is not None and args.queries < 0:
        raise ConfigError(f"--queries must be 0 (every query) or a number of queries, got {args.queries}.")
    if args.subset and args.queries is not None:
        raise ConfigError("--subset and --queries both choose the queries: give one of them.")
    if args.until_decided:
        for option, given in (("--queries", args.queries is not None), ("--subset", bool(args.subset))):
            if given:
                raise ConfigError(
                    f"--until-decided draws queries a round at a time until the answer is known, and {option} fixes "
                    "them: drop one. To cap a sequential run, use --max-queries or --budget."
                )
        if args.max_queries == 0:  # 'all', as for --queries
            args.max_queries = None
        if args.round_queries is not None:
            _positive("--round-queries", [args.round_queries])  # as --k and the other counts say it
        from ragkit.sequential import check_rounds  # numpy only: no heavy import yet

        check_rounds(args.round_queries, args.max_queries, args.budget)
    else:
        for option, value in (("--max-queries", args.max_queries), ("--round-queries", args.round_queries),
                              ("--budget", args.budget)):  # fmt: skip
            if value is not None:
                raise ConfigError(f"{option} sets how a sequential run stops: add --until-decided, or leave it out.")
    from ragkit.sequential import check_min_effect  # numpy only: no heavy import yet

    check_min_effect(args.min_effect)
    if args.max_added_ms is not None:
        if not (math.isfinite(args.max_added_ms) and args.max_added_ms > 0):
            raise ConfigError(f"--max-added-ms must be a number of milliseconds above 0, got {args.max_added_ms}.")
        if args.latency_queries == 0:
            raise ConfigError("--max-added-ms holds rerankers to their measured latency: --latency-queries 0 "
                              "measures none. Time at least one query, or leave --max-added-ms out.")  # fmt: skip
    _positive("--k", args.k)
    _positive("--top-n", args.top_n or [])
    _positive("--latency-queries", [args.latency_queries], least=0)
    if args.batch_size is not None:
        _positive("--batch-size", [args.batch_size])
    chunk_sizes = [_whole_or_number("--chunk-sizes", v) for v in args.chunk_sizes]
    for size in (s for s in chunk_sizes if s is not None):
        if not 0 <= args.chunk_overlap < size:
            raise ConfigError(
                f"--chunk-overlap ({args.chunk_overlap}) must be at least 0 and less than each --chunk-sizes entry "
                f"({size}): consecutive chunks would share everything. Use a smaller overlap (e.g. {size // 8})."
            )
    for value in args.max_lengths:
        _whole_or_number("--max-lengths", value)
    if args.embedders is None:  # ragkit's dense first stage, unless the first stages are run files
        args.embedders = [] if args.run else [DEFAULT_EMBEDDER]
    embedders = [e for e in args.embedders if e.lower() != "none"]
    if not embedders and not args.bm25 and not args.run:
        raise ConfigError("No first stage: --embedders none needs --bm25 or --run.")
    for path in args.run:
        _check_run_file(path)
    if args.hybrid and not embedders:
        raise ConfigError("--hybrid fuses each embedder's ranking with BM25's: it needs at least one of --embedders.")
    if not all(math.isfinite(w) and w > 0 for w in args.fusion_weights):
        raise ConfigError(
            "Fusion weights must be two positive numbers, dense then BM25 (e.g. --fusion-weights 0.5 0.5), "
            f"got {args.fusion_weights}."
        )
    if args.fusion_weights != list(HYBRID_WEIGHTS) and not args.hybrid:
        raise ConfigError("--fusion-weights weighs the hybrid first stage: add --hybrid, or leave the weights out.")
    if any(r.lower() != "none" for r in args.rerankers):
        top_ns = args.top_n or []
        for k in args.k:
            if top_ns and all(n > k for n in top_ns):
                raise ConfigError(
                    f"No reranked pipeline with --k {k}: every top_n ({', '.join(map(str, top_ns))}) is more than "
                    f"the {k} candidates the reranker sees. Use --top-n values <= --k, or a larger --k."
                )
    _check_device_name("--device", args.device)
    for device in args.devices or []:
        _check_device_name("--devices", device)
    if args.chroma_host is not None and embedders:
        _check_chroma_server(args.chroma_host, args.chroma_port)


def evaluate(args: argparse.Namespace) -> int:
    """Run the grid the options describe on each collection, print the verdict and the table,
    write the report (and, for several collections, one report each plus the pooled one)."""
    # Everything that can be wrong with the options is found here, before any work: first
    # what needs no library at all, then the measures, models and output folder.
    _check_options(args)
    from ragkit.cache import check_writable
    from ragkit.measures import parse_measures
    from ragkit.report import REPORT_LAYOUT

    measures = [str(m) for m in parse_measures(args.measures)]
    if args.until_decided:
        from ragkit.measures import check_bounded

        check_bounded(measures[0])
    embedders = [_check_model(e, "embedder") for e in args.embedders if e.lower() != "none"]
    rerankers = [None if r.lower() == "none" else _check_reranker(r) for r in args.rerankers]
    output = check_writable(args.output, REPORT_LAYOUT)  # fail now, not after minutes of scoring

    # What only torch, chromadb and LangChain can tell.
    from ragkit.evaluate import grid, skipped_combinations
    from ragkit.hybrid import check_weights
    from ragkit.loaders import resolve_device

    chroma_server = None
    if args.chroma_host is not None and embedders:
        from ragkit.retrievers import connect_chroma

        connect_chroma(args.chroma_host, args.chroma_port)  # that it is a Chroma server
        chroma_server = (args.chroma_host, args.chroma_port)
    device = resolve_device(args.device)
    devices = None
    if args.devices is not None:
        from ragkit.loaders import check_devices

        devices = check_devices(args.devices, option="--devices")
    top_ns = args.top_n or [None]
    chunk_sizes = [_whole_or_number("--chunk-sizes", v) for v in args.chunk_sizes]
    max_lengths = [_whole_or_number("--max-lengths", v) for v in args.max_lengths]
    pipelines = grid(embedders, rerankers, args.k, top_ns, bm25=args.bm25, hybrid=args.hybrid,
                     fusion_weights=check_weights(args.fusion_weights), reranker_dtypes=args.reranker_dtypes,
                     truncate=args.truncate, chunk_sizes=chunk_sizes, chunk_overlap=args.chunk_overlap,
                     chunk_unit=args.chunk_unit, passage_score=args.passage_score,
                     max_lengths=max_lengths, runs=args.run)  # fmt: skip
    skipped = skipped_combinations(args.k, top_ns) if any(rerankers) else []

    from ragkit.data import load_beir, make_subset, sample_queries
    from ragkit.evaluate import experiment, pool
    from ragkit.report import write_report

    collections = [load_beir(name, split=args.split) for name in args.dataset]  # every name checked first
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise ConfigError(f"--dataset names a collection twice ({', '.join(names)}): give each one once.")
    if len(collections) > 1:
        for name in names:  # each collection's own report goes in a folder of its name
            check_writable(output / name, REPORT_LAYOUT)
    for k, top_n in skipped:
        _note(f"k={k} with top_n={top_n} is left out: a reranker cannot return more than its k candidates.")
    if args.until_decided:
        return _sequential(args, collections, pipelines, output, measures=measures, device=device,
                           chroma_server=chroma_server, devices=devices)  # fmt: skip
    evaluated = []
    for collection in collections:
        n_queries = args.subset or (DEFAULT_EVAL_QUERIES if args.queries is None else args.queries)
        if n_queries >= len(collection.queries):
            asked = args.subset or args.queries  # the default sample needs no remark: the summary shows the count
            if asked:
                option = "--subset" if args.subset else "--queries"
                _note(f"{option} {n_queries} is at least the {len(collection.queries)} queries "
                      f"{collection.name} ({collection.split}) has, so every query is evaluated.")  # fmt: skip
        elif args.subset:
            collection = make_subset(collection, n_queries, seed=args.seed)
        elif n_queries:
            collection = sample_queries(collection, n_queries, seed=args.seed)
        evaluated.append(collection)
    first_stages = dict.fromkeys(p.own_first_stage() for p in pipelines)
    for collection in evaluated:  # every collection's run files checked before the first one's work
        for p in first_stages:
            p.kind.check_input(collection, p)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ragkit.plan import plan

    width = _output_width()
    options = {"measures": measures, "device": device, "batch_size": args.batch_size,
               "latency_queries": args.latency_queries, "chroma_server": chroma_server, "devices": devices}  # fmt: skip
    # What each collection's run will do and cost, before any of them starts: a long grid says so first.
    plans = [plan(collection, pipelines, use_cache=not args.no_cache, **options) for collection in evaluated]
    for planned in plans:
        print(planned.to_text(width), file=sys.stdout if args.plan else sys.stderr)
    if len(plans) > 1:
        total = sum(p.minutes for p in plans)
        print(f"In all: about {total:,.1f} min.", file=sys.stdout if args.plan else sys.stderr)
    if args.plan:
        return 0
    results = []
    for collection in evaluated:
        print("\n".join(textwrap.fill(line, width) for line in collection.summary().splitlines()))
        with logging_redirect_tqdm():  # log lines written above the progress bars, not through them
            result = experiment(collection, pipelines, use_cache=not args.no_cache, **options)
        results.append(result.asking(min_effect=args.min_effect, max_added_ms=args.max_added_ms))
    if len(results) == 1:
        final = results[0]
        write_report(final, output)
    else:
        for result in results:
            write_report(result, output / result.meta["collection"])
        final = pool(results).asking(min_effect=args.min_effect, max_added_ms=args.max_added_ms)
        write_report(final, output)
        for result in results:
            print(f"\n{result.meta['collection']}:\n{result.verdict(width=width)}")
        print(f"\npooled over {len(results)} collections, {final.meta['n_queries']} queries:")
    where = "" if len(results) == 1 else " and one folder per collection"
    _show(final, width, f"Report written to {output}/{where} (summary.md, results.csv, results.json, per_query.csv, "
                        "runs/, plots)")  # fmt: skip
    return 0


def _show(final, width: int, written: str) -> None:
    """The end of every evaluation's output: the verdict, the table, where the report went."""
    print()
    print(final.verdict(width=width))
    print()
    print(final.format_table(width=width))
    print()
    print(textwrap.fill(written, width))


def _sequential(
    args: argparse.Namespace, collections: list, pipelines: list, output, *, measures: list[str], **options
) -> int:
    """``ragkit eval --until-decided``: rounds of queries until every reranker's change is
    decided (``ragkit.until_decided``), a line per round on standard error, then the verdict,
    the table and the report, as a fixed run prints them."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ragkit.plan import plan
    from ragkit.report import write_report
    from ragkit.until_decided import Round, until_decided

    width = _output_width()
    stream = sys.stdout if args.plan else sys.stderr
    cap = f"at most {args.max_queries} queries" if args.max_queries else "at most every query"
    budget = f", within {args.budget:g} minutes" if args.budget else ""
    rounds = args.round_queries or ROUND_QUERIES
    print(textwrap.fill(f"Sequential: rounds of {rounds} queries until every reranker's change is decided, "
                        f"{cap}{budget}. Every query of each collection would take:", width), file=stream)  # fmt: skip
    common = {"measures": measures, "batch_size": args.batch_size, "latency_queries": args.latency_queries, **options}
    for collection in collections:
        print(plan(collection, pipelines, use_cache=not args.no_cache, **common).to_text(width), file=stream)
    if args.plan:
        return 0
    short = {p.name: f"P{i}" for i, p in enumerate(pipelines, start=1)}

    def report(done: Round) -> None:
        spans = "; ".join(f"{short.get(name, name)} {low:+.3f} to {high:+.3f}" for name, (low, high) in
                          done.bounds.items())  # fmt: skip
        counts = ", ".join(f"{n} {k}" for n, k in done.by_collection.items()) if len(done.by_collection) > 1 else ""
        line = f"round {done.number}: {done.queries} queries" + (f" ({counts})" if counts else "")
        print(textwrap.fill(f"{line}, {done.seconds / 60:.1f} min; sequence {spans}", width, subsequent_indent="  "),
              file=sys.stderr)  # fmt: skip

    with logging_redirect_tqdm():
        result = until_decided(collections, pipelines, min_effect=args.min_effect, round_queries=rounds,
                               max_queries=args.max_queries, budget_minutes=args.budget, seed=args.seed,
                               use_cache=not args.no_cache, on_round=report, **common)  # fmt: skip
    final = result.asking(min_effect=args.min_effect, max_added_ms=args.max_added_ms)
    write_report(final, output)
    _show(final, width, f"Report written to {output}/ (summary.md, sequence.png, results.csv, results.json, "
                        "per_query.csv, runs/, plots)")  # fmt: skip
    return 0


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def cache_command(args: argparse.Namespace) -> int:
    """``ragkit cache``: where the cache is and what it holds; ``clear``; ``verify``."""
    from ragkit.cache import STORES, Cache

    cache = Cache()
    if args.action == "clear":
        removed = cache.clear(args.store)
        print(f"Removed {len(removed)} item(s) from {cache.root}" + (f" ({args.store})" if args.store else "") + ".")
        return 0
    if args.action == "verify":
        from ragkit.retrievers import verify_index

        problems = [(str(path), problem) for path, problem in cache.verify()]
        chroma = cache.path("chroma")
        for folder in sorted(chroma.iterdir()) if chroma.is_dir() else []:
            problems += [(str(folder), problem) for problem in verify_index(folder)]
        if not problems:
            print(f"Every cached file under {cache.root} is sound.")
            return 0
        print(f"{len(problems)} cached item(s) under {cache.root} would be recomputed on the next run:")
        for path, problem in problems:
            print(f"  {path}: {problem}")
        print("They are replaced automatically when next needed; `ragkit cache clear` removes everything now.")
        return 1
    print(f"ragkit cache: {cache.root}")
    for store, (files, size) in cache.sizes().items():
        print(f"  {store:<12} {files:>6} files {_size(size):>10}  {STORES[store]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ragkit import __version__
    from ragkit.cache import STORES
    from ragkit.settings import (
        CHUNK_OVERLAP,
        CHUNK_UNITS,
        DEFAULT_MEASURES,
        DEFAULT_RERANK_K,
        LATENCY_QUERIES,
        PASSAGE_SCORES,
        RERANK_BATCH_SIZE,
        RERANK_DTYPES,
    )

    parser = argparse.ArgumentParser(prog="ragkit", description=USAGE)
    parser.add_argument("--version", action="version", version=f"ragkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{eval,cache,smoke}")
    e = sub.add_parser(
        "eval",
        help="compare retrievers with and without reranking on a BEIR collection",
        description="Compare retrieval pipelines (first stage x reranker x k x top_n) on a BEIR "
        "collection: prints the results table and writes a report folder.",
    )
    e.add_argument(
        "--dataset",
        nargs="+",
        default=["scifact"],
        help="BEIR names (scifact, nfcorpus, ...), 'demo', or folders; several are evaluated one by one and pooled",
    )
    e.add_argument(
        "--split", default="test", help="the split whose queries and judgements are evaluated (default: test)"
    )
    e.add_argument(
        "--queries",
        type=_count,
        default=None,
        help=f"evaluate this many sampled queries over the whole corpus (default {DEFAULT_EVAL_QUERIES}; 'all', or 0, "
        "evaluates every query): scores estimate the full split's",
    )
    e.add_argument(
        "--subset",
        type=_count,
        default=0,
        help="instead, a ragkit subset of this many queries and about 1,000 documents with BM25 hard negatives: "
        "quick, but not comparable with full-split scores, and biased against BM25 (default: none; 0 likewise)",
    )
    e.add_argument("--seed", type=int, default=0, help="query sampling seed")
    e.add_argument(
        "--embedders",
        nargs="+",
        default=None,
        metavar="MODEL",
        help=f"dense first stages (default: {DEFAULT_EMBEDDER}, none with --run); 'none' with --bm25 for BM25 alone",
    )
    e.add_argument(
        "--run",
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE",
        help="a TREC run file another system wrote, as a first stage (repeatable): its rankings are evaluated and "
        "reranked beside ragkit's own",
    )
    e.add_argument(
        "--rerankers",
        nargs="+",
        default=["none", DEFAULT_RERANKER],
        metavar="MODEL",
        help="cross-encoders (Hub ids or folders), or bi-encoder:MODEL to rescore with a second embedder; 'none' "
        f"adds the first stage alone (default: none {DEFAULT_RERANKER})",
    )
    e.add_argument("--bm25", action="store_true", help="add BM25 as a first stage too")
    e.add_argument(
        "--hybrid",
        action="store_true",
        help="add each embedder's ranking fused with BM25's (reciprocal rank fusion) as a first stage too",
    )
    e.add_argument(
        "--fusion-weights",
        nargs=2,
        type=float,
        default=list(HYBRID_WEIGHTS),
        metavar=("DENSE", "BM25"),
        help="the hybrid's weights, both positive (default: equal)",
    )
    e.add_argument(
        "--k",
        nargs="+",
        type=int,
        default=[DEFAULT_RERANK_K],
        help=f"candidates the reranker sees (default: {DEFAULT_RERANK_K})",
    )
    e.add_argument("--top-n", nargs="+", type=int, default=None, help="reranked documents kept (default: k)")
    e.add_argument(
        "--truncate",
        action="store_true",
        help="evaluate reranked runs as LangChain returns them, top_n documents only (default: the reranked top k "
        "followed by the first stage's other candidates, so deep measures compare like with like)",
    )
    e.add_argument(
        "--reranker-dtypes",
        nargs="+",
        default=["float32"],
        choices=RERANK_DTYPES,
        metavar="DTYPE",
        help="cross-encoder weight precision(s), each a pipeline: float32 (default), bfloat16 (faster on "
        "GPUs and on CPUs with bf16 support, slower on others), float16 (GPUs)",
    )
    e.add_argument(
        "--measures",
        nargs="+",
        default=list(DEFAULT_MEASURES),
        help=f"ir-measures names (default: {' '.join(DEFAULT_MEASURES)})",
    )
    e.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu, cuda, cuda:N, mps")
    e.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="embed and score in one worker process per device (e.g. cuda:0 cuda:1, or cpu cpu on a many-core "
        "CPU), with the same scores as one process; default: this process",
    )
    e.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cross-encoder batch size (default: "
        + ", ".join(f"{n} on {kind.upper()}" for kind, n in RERANK_BATCH_SIZE.items())
        + ")",
    )
    e.add_argument(
        "--latency-queries",
        type=int,
        default=LATENCY_QUERIES,
        help="queries timed one at a time, per pipeline (default %(default)s)",
    )
    e.add_argument(
        "--until-decided",
        action="store_true",
        help="evaluate rounds of queries drawn in a random order (--seed) until an anytime-valid confidence "
        "sequence decides each reranker's change of the first measure against its own first stage: a gain, a loss, "
        "or no gain worth having (within --min-effect of 0); instead of a fixed --queries",
    )
    e.add_argument(
        "--round-queries",
        type=int,
        default=None,
        metavar="N",
        help=f"with --until-decided: queries added per round (default {ROUND_QUERIES})",
    )
    e.add_argument(
        "--max-queries",
        type=_count,
        default=None,
        metavar="N",
        help="with --until-decided: stop after this many queries (default: all of them)",
    )
    e.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="with --until-decided: stop before a round that would end past this many minutes (each round is "
        "estimated first)",
    )
    e.add_argument(
        "--min-effect",
        type=float,
        default=MIN_EFFECT,
        help=f"the smallest change of the first measure worth having (default {MIN_EFFECT}): the verdict says "
        "whether each gain is at least that, less, or cannot be told",
    )
    e.add_argument(
        "--max-added-ms",
        type=float,
        default=None,
        metavar="MS",
        help="the milliseconds a reranker may add to a query on this machine: the verdict names the best "
        "pipeline within it, the table marks those over it (default: no limit)",
    )
    e.add_argument(
        "--plan",
        action="store_true",
        help="print what the run would do (documents to embed, pairs to score, queries to time, what is "
        "cached) and about how long it would take on this machine, then exit; every run prints this first",
    )
    e.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute first-stage runs and pair scores and re-measure latency instead of reusing "
        "what an earlier run cached, and overwrite the cached copies (the Chroma index is reused all the "
        "same, once verified)",
    )
    e.add_argument(
        "--chunk-sizes",
        nargs="+",
        default=["none"],
        metavar="SIZE",
        help="dense first stages over passages of at most SIZE characters (tokens with --chunk-unit tokens), "
        "each a pipeline; 'none' (default) for whole documents. The reranker scores the same passages",
    )
    e.add_argument("--chunk-overlap", type=int, default=CHUNK_OVERLAP, help="shared by consecutive passages "
                   "(default %(default)s)")  # fmt: skip
    e.add_argument("--chunk-unit", choices=CHUNK_UNITS, default="chars", help="what --chunk-sizes counts: "
                   "chars (default) or the embedder's tokens")  # fmt: skip
    e.add_argument("--passage-score", choices=PASSAGE_SCORES, default="maxp", help="a document scores as its best "
                   "passage (maxp, default) or as its first (firstp: first passages only)")  # fmt: skip
    e.add_argument(
        "--max-lengths",
        nargs="+",
        default=["none"],
        metavar="TOKENS",
        help="tokens of each (query, passage) pair the cross-encoder reads, each a pipeline; 'none' (default): "
        "the model's maximum. The table shows the share of pairs truncated",
    )
    e.add_argument(
        "--chroma-host",
        default=None,
        help="keep the dense indexes on this Chroma server (`chroma run`) instead of the embedded Chroma in "
        "ragkit's cache: for indexes several evaluators share, or larger than one machine's memory",
    )
    e.add_argument("--chroma-port", type=int, default=8000, help="the Chroma server's port (default %(default)s)")
    e.add_argument("--output", default="results/eval", help="report folder (default: %(default)s)")
    p = sub.add_parser("smoke", help="load the default embedder and reranker and rank a few passages")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    p.add_argument("--reranker", default=DEFAULT_RERANKER)
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu, cuda, cuda:N, mps")
    c = sub.add_parser(
        "cache",
        help="where ragkit's cache is and what it holds; clear or verify it",
        description="Without an action: the cache folder ($RAGKIT_CACHE_DIR) and the size of each store. "
        "'clear' deletes every store, or one; 'verify' checks every cached file and index and lists "
        "what the next run would recompute.",
    )
    c.add_argument("action", nargs="?", choices=["info", "clear", "verify"], default="info")
    c.add_argument("store", nargs="?", choices=list(STORES), help="with clear: only this store")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ragkit`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # ragkit's own INFO lines (loading, cache hits) only: at INFO, sentence-transformers would
    # also draw a progress bar for every tiny encode call.
    # (Where logging is set up already, as when main() is called from Python, that stays as it is.)
    console = logging.StreamHandler()
    console.setFormatter(_Wrapped())
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    logging.getLogger("ragkit").setLevel(logging.INFO)
    try:
        if args.command == "smoke":
            return smoke(args.embedder, args.reranker, args.device)
        if args.command == "eval":
            return evaluate(args)
        if args.command == "cache":
            return cache_command(args)
    except RagkitError as exc:
        print(f"ragkit: error: {exc}", file=sys.stderr)
        return 2
    return 1
