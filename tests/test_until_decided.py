"""A sequential evaluation (``ragkit.until_decided``): its rounds extend one random order, each
evaluates only its new queries, and put together they are what one evaluation of the same
queries gives; it stops where the confidence sequence decides, at the query limit or before a
round that would overrun the budget; a re-run computes nothing; bad input is refused before
any work."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ragkit.errors import ConfigError
from ragkit.evaluate import experiment
from ragkit.sequential import decide
from ragkit.until_decided import query_order, until_decided

FAST = {"latency_queries": 2, "n_resamples": 200, "show_progress": False}


def _deltas_by_hand(result, names, order, measure="nDCG@10"):
    """Per query, in the order given, each reranked pipeline's change against its first stage,
    read from an ordinary evaluation of the same queries."""
    wide = result.per_query_table(measure)
    return {name: [float(wide.loc[q, name] - wide.loc[q, first]) for q in order] for name, first in names.items()}


def test_rounds_put_together_are_one_evaluation_of_their_queries_and_a_rerun_computes_nothing(
    cache, demo, reranked, scored_pairs
):
    result = until_decided(demo, reranked, round_queries=3, min_effect=0.01, **FAST)
    seq = result.meta["sequential"]
    order = [q for _, q in query_order([demo])]
    assert [q for _, q in seq["order"]] == order  # 8 queries, none decided: every query evaluated
    assert seq["stopped"] == "every query evaluated"
    assert [r["queries"] for r in seq["rounds"]] == [3, 6, 8]
    pairs_first_time = sum(scored_pairs)
    # Each query's ten candidates scored once, in its own round; and the two queries timed (in
    # the first round only) score theirs again, uncached, as serving them would.
    assert pairs_first_time == 8 * 10 + 2 * 10

    whole = experiment(demo, reranked, use_cache=False, **FAST)  # the same queries, in one go
    reranked_name, first = reranked[1].name, reranked[0].name
    for name in (first, reranked_name):
        assert result.table.loc[name, "nDCG@10"] == pytest.approx(whole.table.loc[name, "nDCG@10"], abs=1e-12)
        for q, hits in whole.runs[name].items():  # the same ranking; scores to float noise of batching
            assert list(result.runs[name][q]) == list(hits)
            assert list(result.runs[name][q].values()) == pytest.approx(list(hits.values()), abs=1e-5)
    by_hand = _deltas_by_hand(whole, {reranked_name: first}, order)
    assert seq["deltas"].keys() == by_hand.keys()
    assert seq["deltas"][reranked_name] == pytest.approx(by_hand[reranked_name], abs=1e-12)
    expected = decide(by_hand[reranked_name], min_effect=0.01, alpha=0.05)
    assert seq["decisions"][reranked_name] == {**expected.__dict__}
    # Latency timed once, on the first round's queries, not in every round.
    assert len(result.timings[result.timings["pipeline"] == reranked_name]) == 2

    scored_pairs.clear()
    again = until_decided(demo, reranked, round_queries=3, min_effect=0.01, **FAST)
    assert sum(scored_pairs) == 0 and again.meta["reused_result"]
    assert again.meta["sequential"]["deltas"] == seq["deltas"]


def test_a_longer_run_extends_a_shorter_one_and_scores_only_its_new_queries(cache, demo, reranked, scored_pairs):
    short = until_decided(demo, reranked, round_queries=3, max_queries=3, **FAST)
    assert short.meta["sequential"]["stopped"] == "max queries" and short.meta["n_queries"] == 3
    scored_pairs.clear()
    longer = until_decided(demo, reranked, round_queries=3, max_queries=6, **FAST)
    assert longer.meta["sequential"]["order"][:3] == short.meta["sequential"]["order"]
    assert sum(scored_pairs) == 3 * 10  # the first round (and its timings) came from the cache


def test_it_stops_at_the_first_round_the_sequence_decides(cache, demo, reranked):
    # On three queries a sequence on [-1, 1] is still about +-0.9 wide: within 0.99 of 0 it rules
    # out a change that large ("no gain worth having") unless the three changes are large.
    result = until_decided(demo, reranked, round_queries=3, min_effect=0.99, **FAST)
    seq = result.meta["sequential"]
    name = reranked[1].name
    first = decide(seq["deltas"][name][:3], min_effect=0.99)
    assert first.outcome != "undecided"
    assert seq["stopped"] == "decided" and len(seq["rounds"]) == 1 and result.meta["n_queries"] == 3
    assert seq["decisions"][name]["outcome"] == first.outcome
    assert "stopped after 1 round, 3 of 8 queries" in result.verdict()
    assert "because every comparison was decided" in result.verdict()


def test_several_collections_are_drawn_in_one_order_and_pooled(cache, demo, reranked):
    other = replace(demo, name="demo-copy")
    result = until_decided([demo, other], reranked, round_queries=4, max_queries=12, **FAST)
    seq = result.meta["sequential"]
    drawn = [c for c, _ in seq["order"]]
    assert len(drawn) == 12 and {"demo", "demo-copy"} == set(drawn)
    assert seq["rounds"][-1]["by_collection"] == {"demo": drawn.count("demo"), "demo-copy": drawn.count("demo-copy")}
    assert result.meta["n_queries"] == 12 and "(pooled)" in result.meta["collection"]
    pooled_ids = {f"{c}/{q}" for c, q in seq["order"]}
    assert set(result.per_query["query_id"]) == pooled_ids
    # The same query of the two copies has the same change: each was evaluated on its collection.
    name = reranked[1].name
    deltas = dict(zip(map(tuple, seq["order"]), seq["deltas"][name]))
    for (c, q), value in deltas.items():
        twin = ("demo-copy" if c == "demo" else "demo", q)
        if twin in deltas:
            assert deltas[twin] == pytest.approx(value, abs=1e-12)


def test_it_stops_before_a_round_that_would_overrun_the_budget(cache, demo, reranked, monkeypatch):
    import importlib

    module = importlib.import_module("ragkit.until_decided")  # not ragkit.until_decided, the function

    class Clock:  # every reading ten minutes later: the first round "takes" far more than 15
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 600.0
            return cls.now

    monkeypatch.setattr(module, "time", Clock)
    result = until_decided(demo, reranked, round_queries=3, budget_minutes=15, **FAST)
    seq = result.meta["sequential"]
    assert seq["stopped"] == "budget" and len(seq["rounds"]) == 1 and result.meta["n_queries"] == 3
    assert "the next round would have overrun the budget of 15 minutes" in " ".join(result.verdict().split())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"min_effect": 0}, "--min-effect must be above 0 and below 1"),
        ({"min_effect": 1.0}, "--min-effect must be above 0 and below 1"),
        ({"measures": ["NumRet", "nDCG@10"]}, "NumRet has no known bounds"),
        ({"round_queries": 0}, "--round-queries must be a whole number of at least 1"),
        ({"max_queries": 0}, "--max-queries must be a whole number of at least 1"),
        ({"budget_minutes": 0}, "--budget must be a number of minutes above 0"),
        ({"budget_minutes": 1e-9}, "is less than the first round's estimated"),
    ],
)
def test_bad_input_is_refused_before_any_work(cache, demo, reranked, scored_pairs, options, says):
    with pytest.raises(ConfigError, match=says):
        until_decided(demo, reranked, **{**FAST, **options})
    assert not (cache / "results").exists()  # nothing evaluated
    if "budget_minutes" not in options:  # (a budget is checked against rates measured for the plan)
        assert scored_pairs == []


def test_a_grid_without_a_reranker_has_nothing_to_decide(cache, demo, reranked):
    with pytest.raises(ConfigError, match="give at least one reranker"):
        until_decided(demo, reranked[:1], **FAST)


def test_the_order_is_one_permutation_per_seed_over_every_collection(demo):
    other = replace(demo, name="demo-copy")
    order = query_order([demo, other], seed=3)
    assert sorted(order) == sorted([(c.name, q) for c in (demo, other) for q in demo.queries])
    assert order == query_order([demo, other], seed=3) and order != query_order([demo, other], seed=4)
    assert np.unique([c for c, _ in order[:8]]).size == 2  # the collections are mixed, not one after the other


def test_the_command_runs_until_decided_and_writes_a_report_with_its_sequence(
    tiny_embedder_path, spread_cross_encoder_path, cache, tmp_path, capsys
):
    from ragkit.cli import main

    out = tmp_path / "out"
    code = main(["eval", "--dataset", "demo", "--embedders", tiny_embedder_path, "--rerankers", "none",
                 spread_cross_encoder_path, "--k", "10", "--latency-queries", "2", "--until-decided",
                 "--round-queries", "3", "--min-effect", "0.99", "--max-added-ms", "100000",
                 "--output", str(out)])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "round 1: 3 queries" in printed.err  # a line per round, beside the progress, not in the results
    text = " ".join(printed.out.split())
    assert "Evaluated in rounds of 3 queries" in text and "a gain worth having is one of at least 0.99" in text
    assert "Within 100000 ms a query on" in text  # the budget sentence, and the table's mark
    assert "<= 100000" in printed.out
    assert (out / "sequence.png").stat().st_size > 0 and "sequence.png" in (out / "summary.md").read_text()
    from ragkit.report import REPORT_LAYOUT

    assert {p.name: p.is_dir() for p in out.iterdir()} == REPORT_LAYOUT  # what a report may hold, all of it
    stored = json.loads((out / "results.json").read_text())["meta"]
    assert stored["sequential"]["stopped"] in ("decided", "every query evaluated")
    assert stored["question"] == {"min_effect": 0.99, "max_added_ms": 100000.0}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--until-decided", "--queries", "20"], "--until-decided draws queries a round at a time"),
        (["--until-decided", "--subset", "20"], "and --subset fixes them"),
        (["--max-queries", "100"], "--max-queries sets how a sequential run stops: add --until-decided"),
        (["--budget", "5"], "--budget sets how a sequential run stops"),
        (["--until-decided", "--budget", "0"], "--budget must be a number of minutes above 0"),
        (["--until-decided", "--round-queries", "0"], "--round-queries must be at least 1"),
        (["--min-effect", "0"], "--min-effect must be above 0 and below 1"),
        (["--min-effect", "1"], "--min-effect must be above 0 and below 1"),
        (["--max-added-ms", "-5"], "--max-added-ms must be a number of milliseconds above 0"),
        (["--max-added-ms", "200", "--latency-queries", "0"], "--latency-queries 0 measures none"),
        (["--until-decided", "--measures", "NumRet"], "NumRet has no known bounds"),
    ],
)
def test_the_command_refuses_bad_sequential_options_before_any_work(args, says, tmp_path, capsys, cache):
    from ragkit.cli import main

    code = main(["eval", "--dataset", "demo", "--output", str(tmp_path / "new" / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ragkit: error:") and says in " ".join(err.split())
    assert not (tmp_path / "new").exists() and not cache.exists()


ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks" / "results" / "sequential"


def test_what_the_readme_and_docs_say_of_the_committed_sequential_run_is_what_it_stored():
    """``benchmarks/sequential.py`` ran the default comparison sequentially over SciFact and
    NFCorpus; the README quotes where it stopped, and its decision recomputes from the per-query
    changes it stored, in the order it drew them."""
    meta = json.loads((COMMITTED / "results.json").read_text())["meta"]
    seq = meta["sequential"]
    ((name, deltas),) = seq["deltas"].items()
    decision = seq["decisions"][name]
    assert decide(deltas, min_effect=seq["min_effect"], alpha=seq["level"]).__dict__ == decision
    assert len(deltas) == len(seq["order"]) == meta["n_queries"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"a {decision['outcome']} after {decision['queries']} queries" in readme
    assert f"between {decision['low']:+.3f} and {decision['high']:+.3f}" in readme
    assert f"stopped after {len(seq['order'])} of the {seq['available_queries']} queries" in readme
    assert f"{seq['minutes']:.0f} minutes on 2 CPU cores" in readme
    design = json.loads((ROOT / "benchmarks" / "results" / "sequential-cpu.json").read_text())
    assert design["stopped"]["queries"] == len(seq["order"]) and design["stopped"]["decisions"] == seq["decisions"]
    (null,) = [row for row in design["tables"]["null"] if row["declared"] == "a gain"]
    assert null["95% CI high"] < 0.05  # the design's false gains, simulated on these changes


def test_the_methodology_page_quotes_the_committed_simulations():
    design = json.loads((ROOT / "benchmarks" / "results" / "sequential-cpu.json").read_text())
    page = " ".join((ROOT / "docs" / "methodology.md").read_text().split())
    (null,) = [row for row in design["tables"]["null"] if row["declared"] == "a gain"]
    (observed,) = design["tables"]["observed"]
    assert f"{null['simulations']:,} runs" in page and f"{null['times']} declared a gain" in page
    assert f"0.0% to {null['95% CI high']:.1%}" in page
    assert f"half by {observed['median queries to a gain']:.0f} queries" in page
    assert f"80% by {observed['queries by which 80% decided a gain']:.0f}" in page
    assert f"against {observed['fixed-n queries for 80% power']:.0f} for a fixed-n" in page
    stopped = design["stopped"]
    assert f"{stopped['queries']} of the 623 queries" in page and f"{stopped['minutes']:.1f} minutes" in page
