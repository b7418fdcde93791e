"""The plan before a run: what it will embed, score and time, what the cache already holds
(indexes, pairs and timings, for every kind of first stage), an estimate from rates measured on
this machine (measured once, then remembered), the same refusals as the run, and
`ragkit eval --plan`, which prints it and writes nothing."""

from __future__ import annotations

import pytest
from test_stages import bm25_run_file

from ragkit import Fusion, Pipeline, Rerank, experiment
from ragkit.cli import main
from ragkit.errors import ConfigError
from ragkit.plan import plan


@pytest.fixture()
def grid(tiny_embedder_path, tiny_cross_encoder_path):
    dense = Pipeline(embedder=tiny_embedder_path)
    return [dense, dense >> tiny_cross_encoder_path, Pipeline(embedder=tiny_embedder_path, chunk_size=150)]


@pytest.fixture()
def first_stages(tiny_embedder_path, demo, tmp_path):
    """A first stage of each kind besides dense over whole documents: passages, BM25, the
    hybrid, a run file, and a fusion of a passage stage, BM25 and the run file."""
    passages = Pipeline(embedder=tiny_embedder_path, chunk_size=150)
    bm25 = Pipeline(retriever="bm25")
    run = Pipeline(retriever="run", run_file=bm25_run_file(demo, tmp_path / "bm25.trec", depth=100))
    return {"passages": passages, "bm25": bm25, "hybrid": Pipeline(retriever="hybrid", embedder=tiny_embedder_path),
            "run": run, "fusion": Pipeline(retriever=Fusion(passages, bm25, run))}  # fmt: skip


def _scoring(planned):
    return [s for s in planned.steps if s.what.startswith("score")]


def _to_score(step) -> int:
    return int(step.what.split()[1].replace(",", ""))


def test_a_fresh_cache_plans_every_index_pair_and_timing(grid, demo, cache):
    planned = plan(demo, grid, latency_queries=3)
    whats = [s.what for s in planned.steps]
    assert not planned.result_cached
    assert whats[0] == f"embed {len(demo.corpus)} documents with model"
    passages = int(whats[1].split()[1])
    assert whats[1] == f"embed {passages} passages with model" and passages > len(demo.corpus)
    k = grid[1].k
    assert whats[2].startswith(f"score at most {len(demo.queries) * k:,} pairs with tiny-cross-encoder0 ")
    assert whats[3].startswith("time 3 queries one at a time in each of 3 pipelines")
    # Each estimate is the work over the rate measured here (the rate is in the step's words).
    embed = planned.steps[0]
    rate = float(embed.rate.split()[0].replace(",", ""))
    assert rate > 0 and embed.seconds >= len(demo.corpus) / rate
    assert planned.minutes == pytest.approx(sum(s.seconds for s in planned.steps) / 60)


def test_what_a_run_cached_is_planned_as_cached(grid, demo, cache):
    experiment(demo, grid[:2], latency_queries=2, show_progress=False, n_resamples=50)
    again = plan(demo, grid[:2], latency_queries=2, n_resamples=50)
    assert again.result_cached and again.steps == []
    assert "the whole result is cached" in again.to_text()
    # Another grid over the same index: the index is planned as cached, the rest is not.
    other = plan(demo, grid[:2], latency_queries=3)
    assert not other.result_cached
    assert other.steps[0].cached and other.steps[0].seconds == 0
    assert "none, it is in the cache" in other.to_text().splitlines()[1]


def test_once_the_first_stage_has_run_the_plan_knows_which_pairs_are_cached(grid, demo, cache):
    experiment(demo, grid[:2], latency_queries=0, show_progress=False, n_resamples=50)
    k = grid[1].k
    # Another grid, the same candidates: every pair is in the pair-score cache.
    same = plan(demo, grid[:2], latency_queries=1)
    scoring = next(s for s in same.steps if s.what.startswith("score"))
    n = len(demo.queries) * k
    assert scoring.what.startswith(f"score 0 pairs with tiny-cross-encoder0 ({n:,} of its {n:,} are in")
    assert scoring.cached and scoring.seconds == 0
    # Deeper candidates over the same first-stage run (depth 100): only the new pairs are scored.
    deeper = grid[0] >> Rerank(grid[1].reranker, k=k + 5)
    more = plan(demo, [grid[0], deeper], latency_queries=0)
    scoring = next(s for s in more.steps if s.what.startswith("score"))
    total = len(demo.queries) * (k + 5)
    assert scoring.what.startswith(f"score {total - n:,} pairs with tiny-cross-encoder0 ({n:,} of its {total:,}")
    assert scoring.seconds > 0


@pytest.mark.parametrize("kind", ["passages", "bm25", "hybrid", "run", "fusion"])
def test_once_any_first_stage_has_run_the_plan_counts_the_pairs_it_scores(
    kind, first_stages, demo, cache, tiny_cross_encoder_path, scored_pairs
):
    first = first_stages[kind]
    reranked = first >> tiny_cross_encoder_path
    # Before the first stage has run, its candidates are not known.
    assert _scoring(plan(demo, [reranked], latency_queries=0))[0].what.startswith("score at most ")
    experiment(demo, [first], latency_queries=0, show_progress=False, n_resamples=50)
    [step] = _scoring(plan(demo, [reranked], latency_queries=0))
    pairs = _to_score(step)
    assert step.what.startswith(f"score {pairs:,} pairs with tiny-cross-encoder0 (0 of its {pairs:,} are in")
    scored_pairs.clear()  # what the plan's calibration scored
    experiment(demo, [reranked], latency_queries=0, show_progress=False, n_resamples=50)
    assert pairs > 0 and sum(scored_pairs) == pairs
    # Now every one of them is in the pair-score cache.
    [again] = _scoring(plan(demo, [reranked], latency_queries=0))
    assert again.what.startswith(f"score 0 pairs with tiny-cross-encoder0 ({pairs:,} of its {pairs:,} are in")
    assert again.cached and again.seconds == 0


def test_a_pair_two_first_stages_share_is_planned_once(first_stages, demo, cache, tiny_cross_encoder_path,
                                                       scored_pairs):  # fmt: skip
    firsts = [first_stages[kind] for kind in ("bm25", "hybrid", "run", "fusion")]
    reranked = [first >> tiny_cross_encoder_path for first in firsts]
    experiment(demo, firsts, latency_queries=0, show_progress=False, n_resamples=50)
    steps = _scoring(plan(demo, reranked, latency_queries=0))
    assert len(steps) == 4 and not any("at most" in s.what for s in steps)
    # The run file holds BM25's rankings: its pairs are all BM25's, scored once.
    assert any("are scored first for another pipeline" in s.what for s in steps)
    scored_pairs.clear()
    experiment(demo, reranked, latency_queries=0, show_progress=False, n_resamples=50)
    assert sum(scored_pairs) == sum(_to_score(s) for s in steps)


def test_timings_made_before_are_planned_as_cached(grid, first_stages, demo, cache, tiny_cross_encoder_path):
    pipelines = grid[:2] + [first >> Rerank(tiny_cross_encoder_path, k=5) for first in first_stages.values()]
    pipelines += [first_stages["hybrid"], first_stages["run"]]
    result = experiment(demo, pipelines, latency_queries=2, show_progress=False, n_resamples=50)
    # The pipelines the run timed: not a run file alone, nor a fusion with one (their systems ran elsewhere).
    served = result.timings["pipeline"].nunique()
    assert served < len(result.table)
    # Another result (other resamples) over the same pipelines: every timing is reused.
    again = plan(demo, pipelines, latency_queries=2)
    timing = again.steps[-1]
    assert timing.what == f"time 2 queries one at a time in each of {served} pipelines"
    assert timing.cached and timing.seconds == 0
    assert again.to_text().splitlines()[-1].endswith(": none, it is in the cache")
    # One more query timed: nothing of it is cached.
    more = plan(demo, pipelines, latency_queries=3).steps[-1]
    assert more.what == f"time 3 queries one at a time in each of {served} pipelines"
    assert not more.cached and more.seconds > 0
    # One more pipeline: only it is timed.
    deeper = grid[0] >> Rerank(tiny_cross_encoder_path, k=7)
    one = plan(demo, [*pipelines, deeper], latency_queries=2).steps[-1]
    assert one.what == (
        f"time 2 queries one at a time in 1 pipeline (the timings of the other {served}, made before on this "
        "machine, are reused)"
    )
    assert not one.cached and one.seconds > 0


def test_rates_are_measured_once_per_machine_and_model(grid, demo, cache):
    first = plan(demo, grid[:2], latency_queries=0)
    assert (cache / "rates").is_dir() and len(list((cache / "rates").iterdir())) == 2  # the embedder, the reranker
    # Remembered: without calibrating, the same rates come back from the cache.
    remembered = plan(demo, grid[:2], latency_queries=0, calibrate=False)
    assert [s.rate for s in remembered.steps] == [s.rate for s in first.steps]
    # Nothing measured and no calibration: the plan says the rate is not known.
    (cache / "rates").rename(cache / "rates-moved")
    unknown = plan(demo, grid[:2], latency_queries=0, calibrate=False)
    assert all(s.rate == "rate not measured" and s.seconds == 0 for s in unknown.steps)


def test_a_long_run_says_so_and_what_shortens_it(grid, demo, cache, monkeypatch):
    import ragkit.plan

    monkeypatch.setattr(ragkit.plan, "LONG_RUN_MINUTES", 0)
    planned = plan(demo, grid, latency_queries=0)
    assert planned.long and "over 0 minutes: fewer queries (--queries)" in planned.headline()


def test_the_plan_refuses_what_the_run_refuses(grid, demo, cache):
    with pytest.raises(ConfigError, match="Unknown measure|measure"):
        plan(demo, grid, measures=["nDCG@ten"])
    with pytest.raises(ConfigError, match="Baseline"):
        plan(demo, grid, baseline="nope")


def test_cli_plan_prints_the_plan_and_writes_nothing(tiny_embedder_path, tiny_cross_encoder_path, cache, tmp_path,
                                                     capsys):  # fmt: skip
    out = tmp_path / "report"
    code = main(["eval", "--dataset", "demo", "--embedders", tiny_embedder_path, "--rerankers", "none",
                 tiny_cross_encoder_path, "--plan", "--output", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.startswith("demo: about ") and "- embed 40 documents with model" in printed
    assert "score at most 160 pairs with tiny-cross-encoder0" in printed
    assert not out.exists() and not (cache / "results").exists()


def test_the_langchain_engine_is_planned_to_score_every_pipelines_pairs(grid, demo, cache, monkeypatch):
    # LangChain's retrievers rerank query by query, each pipeline on its own, and read no
    # pair-score cache: what a batched run cached before does not count, nor does a k sweep share.
    dense, reranked = grid[0], grid[1]
    shallow = dense >> Rerank(reranked.reranker, k=5)
    experiment(demo, [dense, reranked, shallow], latency_queries=0, show_progress=False, n_resamples=50)
    steps = _scoring(plan(demo, [dense, reranked, shallow], engine="langchain", latency_queries=0))
    assert [_to_score(s) for s in steps] == [len(demo.queries) * reranked.k, len(demo.queries) * 5]
    assert all("reads no pair-score cache" in s.what and not s.cached for s in steps)
    # What LangChain's cross-encoder scores: every pair goes through sentence-transformers' predict.
    from sentence_transformers import CrossEncoder

    scored, predict = [], CrossEncoder.predict

    def counted(self, pairs, *args, **kwargs):
        scored.append(len(pairs))
        return predict(self, pairs, *args, **kwargs)

    monkeypatch.setattr(CrossEncoder, "predict", counted)
    experiment(demo, [dense, reranked, shallow], engine="langchain", latency_queries=0, show_progress=False,
               n_resamples=50, use_cache=False)  # fmt: skip
    assert sum(scored) == sum(_to_score(s) for s in steps)
