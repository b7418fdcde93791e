"""Evaluate in rounds of queries until the answer is known: a sequential evaluation.

A fixed sample of queries may be too small to tell a reranker's change from zero (and every
second look at a fixed-n p-value raises the chance of a false gain), or larger than the answer
needed. :func:`until_decided` draws the queries of one or several collections in one random
order (a seed), evaluates them a round at a time, and after each round updates an
anytime-valid confidence sequence (``ragkit.sequential``) for the mean per-query change of the
leading measure of each reranked pipeline against its own first stage. It stops as soon as every
comparison is decided:

- **gain** or **loss**: the sequence excludes 0;
- **no gain worth having**: the sequence lies within ``min_effect`` of 0 on both sides;

or when the queries run out (every query, or ``max_queries``), or when the next round would
overrun ``budget_minutes`` (estimated by ``ragkit.plan`` before it starts).

Each round is an ordinary :func:`ragkit.experiment` on the round's new queries only, so nothing
evaluated before is evaluated again, and a re-run reads every round from the result cache. The
rounds are put together (``ragkit.evaluate.concatenate``; several collections are then pooled,
query-weighted) into one :class:`~ragkit.results.EvaluationResult` whose ``meta["sequential"]``
holds the order, the sequence after every round and the decisions; its verdict leads with them.

Several collections are drawn in one random order over all their queries, so every query is a
draw from the pooled population and each round holds the collections in proportion to their
queries, on average. The sequence is for the pooled (query-weighted) mean change, and it is
valid whatever the change is in each collection (tested under a null whose collections move in
opposite directions). With several reranked pipelines, each sequence is at ``alpha`` divided by
their number (Bonferroni), so that all hold together.

Queries are treated as draws from the population of queries like them, as the fixed-n tests
treat them; the decision is about the mean change over such queries.

Example::

    result = until_decided([load_beir("scifact"), load_beir("nfcorpus")],
                           grid(rerankers=[None, "cross-encoder/ms-marco-MiniLM-L-12-v2"]))
    print(result.verdict())
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ragkit.data import BeirCollection, QuerySample
from ragkit.errors import ConfigError
from ragkit.evaluate import Pipeline, _prepared, concatenate, experiment, pool
from ragkit.measures import check_bounded
from ragkit.plan import plan
from ragkit.results import EvaluationResult
from ragkit.sequential import Decision, check_min_effect, check_rounds, confidence_sequence, decision
from ragkit.settings import (
    DEFAULT_MEASURES,
    LATENCY_QUERIES,
    MIN_EFFECT,
    N_RESAMPLES,
    ROUND_QUERIES,
    SIGNIFICANCE_LEVEL,
)


@dataclass(frozen=True)
class Round:
    """One round of a sequential evaluation.

    Attributes:
        number: 1, 2, ...
        queries: the queries evaluated so far, this round's included.
        by_collection: of those, how many from each collection.
        seconds: how long the round took.
        bounds: per reranked pipeline, the confidence sequence ``(low, high)`` after it.
    """

    number: int
    queries: int
    by_collection: dict[str, int]
    seconds: float
    bounds: dict[str, tuple[float, float]]


def query_order(collections: Sequence[BeirCollection], *, seed: int = 0) -> list[tuple[str, str]]:
    """Every query of ``collections`` as ``(collection name, query id)``, in one random order
    fixed by ``seed``: a round takes the next queries of it, so each round extends the last and
    the first ``n`` are the same whatever is asked after them.

    Example:
        >>> from ragkit.data import load_beir
        >>> order = query_order([load_beir("demo")], seed=0)
        >>> len(order), order[:2] == query_order([load_beir("demo")], seed=0)[:2]
        (8, True)
    """
    everything = [(c.name, q) for c in collections for q in sorted(c.queries)]
    random.Random(seed).shuffle(everything)
    return everything


def until_decided(
    collections: BeirCollection | Sequence[BeirCollection],
    pipelines: Sequence[Pipeline],
    *,
    min_effect: float = MIN_EFFECT,
    round_queries: int = ROUND_QUERIES,
    max_queries: int | None = None,
    budget_minutes: float | None = None,
    alpha: float = SIGNIFICANCE_LEVEL,
    seed: int = 0,
    measures: Sequence[str] = DEFAULT_MEASURES,
    latency_queries: int = LATENCY_QUERIES,
    n_resamples: int = N_RESAMPLES,
    use_cache: bool = True,
    show_progress: bool = True,
    on_round: Callable[[Round], None] | None = None,
    **options: Any,
) -> EvaluationResult:
    """Evaluate ``pipelines`` on rounds of ``round_queries`` queries drawn from ``collections``
    until every reranked pipeline's change of the leading measure (the first of ``measures``)
    against its own first stage is decided, the queries or the budget run out.

    Args:
        collections: one collection or several (their queries drawn in one order).
        pipelines: as :func:`ragkit.experiment` takes them; at least one reranked.
        min_effect: the smallest change worth having: the sequence within it of 0 on both
            sides decides "no gain worth having".
        round_queries: queries added per round.
        max_queries: stop after this many queries (default: every query).
        budget_minutes: stop before a round that would end past this many minutes from the
            start (each round is estimated by ``ragkit.plan`` before it starts).
        alpha: the chance that any of the sequences ever misses its mean.
        seed: the order the queries are drawn in.
        measures, latency_queries, n_resamples, use_cache, show_progress, options: as
            :func:`ragkit.experiment` takes them; latency is timed on the first round's queries
            of each collection.
        on_round: called after each round with its :class:`Round` (the command line prints it).

    Raises:
        ConfigError: before any work, for a ``min_effect`` outside (0, 1), a leading measure
            not in [0, 1], no reranked pipeline, a round or query limit under 1, or a budget
            smaller than the first round's estimate.
    """
    collections = [collections] if isinstance(collections, BeirCollection) else list(collections)
    names = [c.name for c in collections]
    if not collections or len(set(names)) != len(names):
        raise ConfigError(f"until_decided() needs one or more collections, each once; got {names}.")
    check_min_effect(min_effect)
    if measures:  # (none given: _prepared below says so)
        check_bounded(str(list(measures)[0]))
    check_rounds(round_queries, max_queries, budget_minutes)
    run_options = {"measures": measures, "n_resamples": n_resamples, **options}
    # Everything the rounds would refuse, refused now: the grid, its models and run files, on
    # every collection whole.
    prepared = [_prepared(c, pipelines, latency_queries=latency_queries, **run_options) for c in collections]
    compared = [p.name for p in prepared[0].pipelines if p.reranker]
    if not compared:
        raise ConfigError("A sequential evaluation decides whether reranking helps: give at least one reranker.")
    first_stage = {p.name: p.own_first_stage().name for p in prepared[0].pipelines if p.reranker}
    measure = prepared[0].settings.measures[0]
    order = query_order(collections, seed=seed)
    available = len(order)
    order = order[:max_queries]
    by_name = dict(zip(names, collections))
    rounds = [order[i : i + round_queries] for i in range(0, len(order), round_queries)]
    level = alpha / len(compared)

    def chunks(number: int) -> list[BeirCollection]:
        return [_chunk(by_name[name], [q for c, q in rounds[number - 1] if c == name], seed=seed, number=number)
                for name in names if any(c == name for c, _ in rounds[number - 1])]  # fmt: skip

    timed: set[str] = set()  # collections whose latency is timed (on their first round's queries)

    def latency_for(chunk: BeirCollection) -> int:
        return 0 if chunk.sample.parent in timed else latency_queries  # type: ignore[union-attr]

    def estimate(number: int) -> float:
        return sum(plan(c, pipelines, use_cache=use_cache, latency_queries=latency_for(c), **run_options).minutes
                   for c in chunks(number))  # fmt: skip

    if budget_minutes is not None:
        first = estimate(1)
        if first > budget_minutes:
            raise ConfigError(
                f"--budget {budget_minutes:g} minutes is less than the first round's estimated {first:.1f} (its "
                f"{len(rounds[0])} queries on this machine): give a budget of at least {np.ceil(first):.0f}, or "
                "fewer --round-queries."
            )
    start = time.perf_counter()
    results: dict[str, list[EvaluationResult]] = {name: [] for name in names}
    deltas: dict[str, list[float]] = {name: [] for name in compared}
    done: list[Round] = []
    decisions: dict[str, Decision] = {}
    stopped = "every query evaluated" if available == len(order) else "max queries"
    for number in range(1, len(rounds) + 1):
        elapsed = (time.perf_counter() - start) / 60
        if budget_minutes is not None and number > 1 and elapsed + estimate(number) > budget_minutes:
            stopped = "budget"
            break
        began = time.perf_counter()
        evaluated = {}
        for chunk in chunks(number):
            evaluated[chunk.sample.parent] = experiment(  # type: ignore[union-attr]
                chunk, pipelines, latency_queries=latency_for(chunk), use_cache=use_cache,
                show_progress=show_progress, **run_options,
            )  # fmt: skip
            timed.add(chunk.sample.parent)  # type: ignore[union-attr]
        for name, result in evaluated.items():
            results[name].append(result)
        wide = {name: r.per_query_table(measure) for name, r in evaluated.items()}
        for name in compared:
            deltas[name] += [float(wide[c].loc[q, name] - wide[c].loc[q, first_stage[name]])
                             for c, q in rounds[number - 1]]  # fmt: skip
        bounds, decisions = {}, {}
        for name in compared:  # the sequence once per round: its last bounds, and where it decided
            low, high = confidence_sequence(deltas[name], alpha=level)
            bounds[name] = (float(low[-1]), float(high[-1]))
            decisions[name] = decision(low, high, min_effect=min_effect)
        evaluated_so_far = [q for r in rounds[:number] for q in r]
        done.append(Round(
            number=number,
            queries=len(evaluated_so_far),
            by_collection={n: sum(c == n for c, _ in evaluated_so_far) for n in names},
            seconds=time.perf_counter() - began,
            bounds=bounds,
        ))  # fmt: skip
        if on_round is not None:
            on_round(done[-1])
        if all(d.outcome != "undecided" for d in decisions.values()):
            stopped = "decided"
            break
    used = [q for r in rounds[: len(done)] for q in r]
    joined = []
    for name, collection in by_name.items():
        if results[name]:
            n = sum(c == name for c, _ in used)
            joined.append(concatenate(results[name], collection=name, summary=_summary(collection, n, seed),
                                      n_resamples=n_resamples, seed=0))  # fmt: skip
    final = joined[0] if len(joined) == 1 else pool(joined, n_resamples=n_resamples)
    final.meta["sequential"] = {
        "measure": measure,
        "min_effect": min_effect,
        "alpha": alpha,
        "level": level,
        "seed": seed,
        "round_queries": round_queries,
        "max_queries": max_queries,
        "budget_minutes": budget_minutes,
        "available_queries": available,
        "stopped": stopped,
        "minutes": (time.perf_counter() - start) / 60,
        "order": [[c, q] for c, q in used],
        "deltas": deltas,
        "first_stage": first_stage,
        "decisions": {name: asdict(d) for name, d in decisions.items()},
        "rounds": [asdict(r) for r in done],
    }
    return final


def _chunk(collection: BeirCollection, query_ids: list[str], *, seed: int, number: int) -> BeirCollection:
    """The queries of one round of ``collection``, over its whole corpus."""
    return replace(
        collection,
        name=f"{collection.name}-seq{seed}-r{number}",
        queries={q: collection.queries[q] for q in sorted(query_ids)},
        qrels={q: dict(collection.qrels[q]) for q in sorted(query_ids)},
        sample=QuerySample(
            parent=collection.name, seed=seed, n_queries=len(query_ids), parent_queries=len(collection.queries)
        ),  # fmt: skip
    )


def _summary(collection: BeirCollection, n: int, seed: int) -> str:
    """What the queries of a sequential evaluation of ``collection`` were, as a collection's
    summary says it (a subset's warning kept)."""
    lines = collection.summary().split("\n")
    head = (
        f"{collection.name} ({collection.split} split): {len(collection.corpus):,} docs, {n:,} of its "
        f"{len(collection.queries):,} queries"
    )
    sequential = (
        f"sequential: {n} of the split's {len(collection.queries)} queries, drawn in a random order (seed {seed}) "
        "over the whole corpus, a round at a time until the answer was known."
    )
    return "\n".join([head, sequential, *(line for line in lines[1:] if not line.startswith("query sample"))])


__all__ = ["Round", "query_order", "until_decided"]
