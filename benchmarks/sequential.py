"""The default comparison decided sequentially over SciFact and NFCorpus, and what simulations
say of the design.

- ``run``: ``ragkit eval --dataset scifact nfcorpus --until-decided --device cpu`` (the default
  grid: all-MiniLM-L6-v2, alone and reranked by the L-12 cross-encoder at k = 20) in a new
  process and a fresh cache (both indexes built, every pair scored), timed end to end. Its report
  is copied to ``benchmarks/results/sequential/`` (its TREC runs left out: megabytes that the
  per-query scores already summarise).
- ``simulate``: from that run's per-query changes, in the order they were drawn:
  - under no change (the changes centred), rounds of 50 queries up to 300 with a look after
    each (the sequence only narrows, so that is a look after every query): how often a gain
    (or a loss) is declared, with the Clopper-Pearson 95% interval of
    the rate;
  - under the observed change (the changes as they are), rounds of 50 up to 2,000 queries: how
    many queries a decision takes, against the queries the fixed-n design needs for 80% power
    (a paired t-test at the same mean and spread, ``ragkit.stats.queries_needed``).

Both go to ``benchmarks/results/sequential-cpu.json`` (with the machine, versions and date) and
``sequential-cpu.md``. Run it on a quiet machine: the minutes are part of the result.

    python benchmarks/sequential.py                   # about 40 min on 2 CPU cores
    python benchmarks/sequential.py --simulate-only   # the simulations again, from the committed run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import time_eval  # benchmarks/harness.py, in this script's folder
from scipy import stats

from ragkit.provenance import environment
from ragkit.results import markdown_table
from ragkit.sequential import confidence_sequence, decide
from ragkit.settings import DEFAULT_EMBEDDER, DEFAULT_RERANKER, ROUND_QUERIES
from ragkit.stats import queries_needed

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "sequential"
ARGS = ["--dataset", "scifact", "nfcorpus", "--until-decided", "--device", "cpu"]
NULL_SIMULATIONS, NULL_QUERIES = 1000, 300
EFFECT_SIMULATIONS, EFFECT_QUERIES = 500, 2000


def run() -> dict:
    """The real sequential run, end to end in a fresh cache; its report copied beside the results."""
    with tempfile.TemporaryDirectory(prefix="ragkit-sequential-") as tmp:
        out = Path(tmp) / "report"
        printed: list[str] = []
        seconds = time_eval([*ARGS, "--output", str(out)], Path(tmp) / "cache", output=printed)
        if REPORT.exists():
            shutil.rmtree(REPORT)
        shutil.copytree(out, REPORT, ignore=shutil.ignore_patterns("runs"))
    for file in ("summary.md", "results.json"):  # the temporary folder's name, as the default's
        path = REPORT / file
        path.write_text(path.read_text().replace(str(out), "results/eval"))
    return {"command": "ragkit eval " + " ".join(ARGS), "seconds": round(seconds, 1),
            "output": printed[0].replace(str(out), "results/eval")}  # fmt: skip


def _clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = 0.0 if k == 0 else float(stats.beta.ppf(0.025, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(0.975, k + 1, n - k))
    return low, high


def simulate(meta: dict) -> tuple[dict[str, pd.DataFrame], dict]:
    """The two simulations, from the run's per-query changes (one reranked pipeline)."""
    seq = meta["sequential"]
    ((name, deltas),) = seq["deltas"].items()
    x = np.asarray(deltas)
    alpha, effect = seq["alpha"], seq["min_effect"]
    rng = np.random.default_rng(0)
    # The sequence only narrows, so a bound past 0 at any query stays past it at the end of its
    # round: looking after every round sees what looking after every query sees, a round later.
    gains = losses = 0
    for _ in range(NULL_SIMULATIONS):
        low, high = confidence_sequence(rng.choice(x - x.mean(), NULL_QUERIES), alpha=alpha)
        gains += bool(low[-1] >= 0)  # the bounds lie outside the sequence: one at 0 has ruled 0 out
        losses += bool(high[-1] <= 0)
    null = pd.DataFrame([
        {"declared": "a gain", "simulations": NULL_SIMULATIONS, "times": gains, "rate": gains / NULL_SIMULATIONS,
         "95% CI low": _clopper_pearson(gains, NULL_SIMULATIONS)[0],
         "95% CI high": _clopper_pearson(gains, NULL_SIMULATIONS)[1]},
        {"declared": "a gain or a loss", "simulations": NULL_SIMULATIONS, "times": gains + losses,
         "rate": (gains + losses) / NULL_SIMULATIONS,
         "95% CI low": _clopper_pearson(gains + losses, NULL_SIMULATIONS)[0],
         "95% CI high": _clopper_pearson(gains + losses, NULL_SIMULATIONS)[1]},
    ])  # fmt: skip
    outcomes = []
    for _ in range(EFFECT_SIMULATIONS):
        decision = decide(rng.choice(x, EFFECT_QUERIES), min_effect=effect, alpha=alpha)
        # A run stops at the end of the round in which its sequence decided.
        outcomes.append((decision.outcome, int(np.ceil(decision.queries / ROUND_QUERIES) * ROUND_QUERIES)))
    frame = pd.DataFrame(outcomes, columns=["outcome", "queries"])
    gained = frame[frame["outcome"] == "gain"]["queries"]
    needed = queries_needed(float(x.mean()), float(x.std(ddof=1)))
    share = frame["outcome"].value_counts(normalize=True)
    # The queries by which 80% of runs had shown the gain (infinite: fewer than 80% ever did).
    by_80 = np.quantile(frame["queries"].where(frame["outcome"] == "gain", np.inf), 0.8, method="inverted_cdf")
    observed = pd.DataFrame([{
        "mean change": x.mean(), "sd": x.std(ddof=1), "simulations": EFFECT_SIMULATIONS,
        **{f"share {o}": float(share.get(o, 0.0)) for o in ("gain", "no gain worth having", "loss", "undecided")},
        "median queries to a gain": float(gained.median()) if len(gained) else float("nan"),
        "queries by which 80% decided a gain": float(by_80) if np.isfinite(by_80) else f"over {EFFECT_QUERIES}",
        "fixed-n queries for 80% power": needed if needed is not None else float("nan"),
    }])  # fmt: skip
    return {"null": null, "observed": observed}, {"pipeline": name, "queries_drawn_from": len(x)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate-only", action="store_true", help="redo the simulations from the committed run")
    args = parser.parse_args(argv)
    path = RESULTS / "sequential-cpu.json"
    record = json.loads(path.read_text()) if args.simulate_only else {}
    start = time.perf_counter()
    if not args.simulate_only:
        models = [DEFAULT_EMBEDDER, DEFAULT_RERANKER]
        record = {"section": "sequential", "environment": environment("cpu", models=models), "run": run()}
    meta = json.loads((REPORT / "results.json").read_text())["meta"]
    tables, parameters = simulate(meta)
    seq = meta["sequential"]
    record.update(
        parameters={**parameters, "min_effect": seq["min_effect"], "round_queries": seq["round_queries"],
                    "null": {"simulations": NULL_SIMULATIONS, "queries": NULL_QUERIES},
                    "observed": {"simulations": EFFECT_SIMULATIONS, "queries": EFFECT_QUERIES}},
        stopped={"reason": seq["stopped"], "queries": len(seq["order"]), "minutes": seq["minutes"],
                 "by_collection": seq["rounds"][-1]["by_collection"], "decisions": seq["decisions"]},
        tables={k: json.loads(v.to_json(orient="records")) for k, v in tables.items()},
        simulation_seconds=round(time.perf_counter() - start, 1) if args.simulate_only else None,
    )  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# The default comparison, decided sequentially", "",
             f"`{record['run']['command']}` on {record['environment']['machine']}, {record['environment']['date']}: "
             f"stopped ({seq['stopped']}) after {len(seq['order'])} queries, {seq['minutes']:.1f} minutes "
             f"({record['run']['seconds'] / 60:.1f} end to end). Report: [sequential/](sequential/summary.md).", "",
             "## No change (the run's per-query changes centred), a look after every round", "",
             markdown_table(tables["null"].round(4)), "",
             "## The observed change (the run's per-query changes as drawn)", "",
             markdown_table(tables["observed"].round(4)), ""]  # fmt: skip
    (RESULTS / "sequential-cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
