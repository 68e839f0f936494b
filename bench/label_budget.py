"""Label-budget experiment (``edgeloop bench label_budget``); the experiment itself is in trainer.learning_bench.

Split-MNIST where only a fraction of the stream is labelled: chosen the way the edge chooses (its margin
score, logistic g, p_min, with ``p_select`` recorded and used for importance weights) or uniformly at
random, every run with the same trainer compute (K optimiser steps per arriving minibatch of 10; ticks
without a full labelled batch rehearse replay). Goal: at 20 % labelled, within 2 points of 100 % and
better than uniform.

In ``bench all`` it runs what the goal compares - 20 % edge-iw and 20 % uniform, three seeds - on the
workers of bench/jobs.py, and takes the 100 % reference from the ``learning`` benchmark's iw-er runs of
the same invocation when there are any (the identical run: same seed, K, replay and code path; a test
checks they agree). The whole sweep (10/20/50 %, with and without weights) is
``edgeloop bench label_budget [--seeds ...]``, passed to ``python -m trainer.learning_bench --budget``.
"""
from __future__ import annotations

import time
from typing import Any

from bench import learning
from bench.jobs import Job, default_workers, run_jobs
from trainer import learning_bench as lb

GOAL = lb.BUDGET_GOAL
SEEDS = [0, 1, 2]
FRACTION = 0.2
_DATA: dict[Any, Any] = {}  # per worker process


def budget_run(seed: int, fraction: float, selection: str, weighted: bool) -> dict[str, Any]:
    """One run of the experiment with the benchmark's default settings, in a worker process."""
    data = lb._data(seed, None, None, _DATA)
    return lb.run_budget_one(data, seed, fraction, selection, weighted)


def run(quick: bool = False) -> dict[str, Any]:
    """The harness entry point (see the module doc). Quick mode is skipped: even one seed is three
    minute-long training runs, and learning's quick run already exercises the same iw-er code."""
    if quick:
        return {"name": "label_budget", "status": "skipped (quick)", "figures": {}, "met": None, "goal": GOAL,
                "notes": "3 training runs even for one seed; run without --quick, or "
                         "`edgeloop bench label_budget --seeds 0 --fractions 0.2` for a one-seed look"}
    reused = learning.full_reference_rows(SEEDS)
    plan = lb.budget_plan(SEEDS, (FRACTION,), variants=lb.GOAL_VARIANTS, full=not reused)
    jobs = [Job(budget_run, run, label=f"label budget {lb.budget_key(run)} seed {run['seed']}",
                cost=2.0 if run["fraction"] >= 1.0 else 1.0) for run in plan]
    workers = default_workers()
    t0 = time.perf_counter()
    rows = run_jobs(jobs, workers) + reused
    wall = time.perf_counter() - t0
    table, met = lb.budget_table(rows)
    figures: dict[str, Any] = {}
    for key, row in table.items():
        slug = key.replace("%", "pct").replace(" ", "_")
        figures[f"acc_{slug}_pct"] = round(row["final_acc"], 2)
        figures[f"acc_{slug}_std_pct"] = round(row["final_acc_std"], 2)
    figures["gap_20pct_edge_iw_vs_full_pct"] = round(table["100%"]["final_acc"] - table["20% edge iw"]["final_acc"], 2)
    figures["margin_20pct_edge_iw_vs_uniform_pct"] = round(
        table["20% edge iw"]["final_acc"] - table["20% uniform unweighted"]["final_acc"], 2)
    figures.update(seeds=len(SEEDS), workers=workers, wall_seconds_all_runs=round(wall, 1),
                   full_reference="learning benchmark's iw-er runs, same invocation" if reused else "own 100% runs",
                   settings={"compute": lb.BUDGET_COMPUTE, "steps": lb.DEFAULT_STEPS, "replay": lb.DEFAULT_REPLAY,
                             "score": lb.BUDGET_SCORE, "theta": lb.BUDGET_THETA, "tau": lb.BUDGET_TAU,
                             "p_min": lb.BUDGET_P_MIN, "w_max": lb.BUDGET_W_MAX, "buffer": 500},
                   rows=rows)
    return {"name": "label_budget", "figures": figures, "goal": GOAL, "met": met, "headline": "acc_20pct_edge_iw_pct",
            "notes": "iw-er, buffer 500, K=3 steps per arriving minibatch of 10; 20% labelled by the edge's rule "
                     "or uniformly. Full sweep: edgeloop bench label_budget"}


def main(argv: list[str] | None = None) -> int:
    """``edgeloop bench label_budget [options]`` = ``python -m trainer.learning_bench --budget [options]``."""
    return lb.main(["--budget", *(argv or [])])
