"""Split-MNIST continual-learning benchmark (``edgeloop bench learning``); the logic is in trainer.learning_bench.

``--peer avalanche`` additionally runs Avalanche's Naive, Replay and DER++ on the identical stream in the
same run (from their own virtualenv, see bench/avalanche_env.py) and prints them beside ours, so the
comparison never rests on remembered numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from typing import Any

from bench.jobs import Job, default_workers, run_jobs
from trainer import learning_bench as lb
from trainer.datasets import SplitMNIST
from trainer.learning_bench import GOAL, format_table, main as trainer_main, summarise

__all__ = ["GOAL", "main", "run"]

_DATA: dict[Any, Any] = {}  # per worker process: the split for (seed, images, labels), built once
QUICK_LIMIT = 300  # samples per experience in quick mode (of ~1,600 in data/mnist): the whole stream took ~100 s of CI
_LAST_ROWS: list[dict[str, Any]] = []  # rows of the last full run() in this process (bench/label_budget.py reuses them)


def strategy_run(strategy: str, seed: int, steps: int = lb.DEFAULT_STEPS, images: str | None = None,
                 labels: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """One (strategy, seed) row of the benchmark, in a worker process (``joint`` = the reference run).
    ``limit``: only the first ``limit`` samples of each experience and every 7th test image (quick mode)."""
    data = lb._data(seed, images, labels, _DATA)
    if limit is not None:
        data = SplitMNIST([(x[:limit], y[:limit]) for x, y in data.experiences], data.classes,
                          data.test_x[::7], data.test_y[::7])
    if strategy == "joint":
        return lb.run_joint(data, seed)
    return lb.run_strategy(strategy, data, seed, steps=steps)


# Relative cost of one run (measured CPU seconds at K=3: naive 32, ewc 83, der++ 79, er 89, iw-er 87,
# joint 11), so the longest runs start first and the two workers finish together.
_COST = {"naive": 32, "ewc": 83, "der++": 79, "er": 89, "iw-er": 87, "joint": 11}


def full_reference_rows(seeds: list[int]) -> list[dict[str, Any]]:
    """The label-budget experiment's 100 % rows, taken from this process's last full run, if it had iw-er
    at the default K on every seed (the same run as ``run_budget_one(fraction=1)``); else []."""
    rows = [r for r in _LAST_ROWS if r["strategy"] == "iw-er" and r["steps"] == lb.DEFAULT_STEPS and r["seed"] in seeds]
    if sorted(r["seed"] for r in rows) != sorted(seeds):
        return []
    return [{"fraction": 1.0, "selection": "all", "weighted": True, "seed": r["seed"], "labelled_fraction": 1.0,
             "final_acc": r["final_acc"], "forgetting": r["forgetting"], "seconds": r["seconds"],
             "from": "learning"} for r in rows]


def run(quick: bool = False) -> dict[str, Any]:
    """The benchmark as ``edgeloop bench learning`` / ``bench all`` runs it: every strategy and joint,
    three seeds, one single-thread process per core (bench/jobs.py).

    quick: one seed, iw-er only, one step per arriving batch, the first QUICK_LIMIT samples of each experience
    (a smoke run that checks the benchmark runs, in seconds; ``met`` is then False by definition, since the
    goal is over three seeds of the whole stream).
    """
    strategies = ["iw-er"] if quick else [*lb.ORDER, "joint"]
    seeds = [0] if quick else [0, 1, 2]
    steps = 1 if quick else lb.DEFAULT_STEPS
    limit = QUICK_LIMIT if quick else None
    jobs = [Job(strategy_run, {"strategy": s, "seed": seed, "steps": steps, "limit": limit},
                label=f"learning {s} seed {seed}", cost=_COST.get(s, 50)) for seed in seeds for s in strategies]
    workers = default_workers()
    t0 = time.perf_counter()
    rows = run_jobs(jobs, workers)
    wall = time.perf_counter() - t0
    summary = summarise(rows)
    met = lb.goal_met(summary, buffer=500, seeds=len(seeds))
    if not quick:
        _LAST_ROWS[:] = rows
    figures = {"summary": summary, "rows": rows, "threads_per_run": 1, "workers": workers, "steps": steps,
               "replay_size": lb.DEFAULT_REPLAY, "buffer": 500, "wall_seconds_all_runs": round(wall, 1)}
    return {"name": "learning", "figures": figures, "goal": GOAL, "met": met}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    peer_parser = argparse.ArgumentParser(add_help=False)
    peer_parser.add_argument("--peer", choices=["avalanche"])
    peer_parser.add_argument("--json")
    peer_parser.add_argument("--seeds", default="0,1,2")
    peer_parser.add_argument("--buffer", type=int, default=500)
    peer_parser.add_argument("--images")
    peer_parser.add_argument("--labels")
    if "--budget" in argv:  # the label-budget experiment: its own module (it runs the edge's selection code)
        from bench import label_budget

        return label_budget.main([a for a in argv if a != "--budget"])
    known, _ = peer_parser.parse_known_args(argv)
    if known.peer is None or "-h" in argv or "--help" in argv:
        if "-h" in argv or "--help" in argv:
            print("  --peer avalanche     also run Avalanche's Naive, Replay and DER++ on the same stream, seed by seed\n"
                  "                       right after ours, and print our wall time over DER++'s per seed\n"
                  "                       (needs: python -m bench.avalanche_env --create)\n"
                  "  --budget             the label-budget experiment instead (edgeloop bench label_budget --help)\n")
        return trainer_main([a for a in argv if a != "--peer" and a != "avalanche"])

    from bench.avalanche_peer import PeerUnavailable, run_peer

    rest = [a for i, a in enumerate(argv) if a != "--peer" and not (i and argv[i - 1] == "--peer")]
    for flag in ("--json", "--seeds"):
        if flag in rest:
            i = rest.index(flag)
            del rest[i:i + 2]
    seeds = [int(s) for s in known.seeds.split(",") if s.strip()]
    ours_rows: list[dict[str, Any]] = []
    peer_rows: list[dict[str, Any]] = []
    rc = 0
    peer_ok = True
    # Seed by seed, ours and then Avalanche's back to back (DER++ first): this VM's speed drifts by ±7 % over
    # minutes, so a block of all our runs followed by a block of theirs measured the drift as much as the code.
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            ours_json = Path(tmp) / "ours.json"
            rc = trainer_main(rest + ["--seeds", str(seed), "--json", str(ours_json)]) or rc
            ours = json.loads(ours_json.read_text())
        ours_rows += ours["rows"]
        if not peer_ok:
            continue
        try:
            peer_rows += run_peer(known.images, known.labels, [seed], known.buffer, strategies=PEER_ORDER, verbose=True)
        except PeerUnavailable as exc:
            print(f"\navalanche peer skipped: {exc}")
            peer_ok = False
    rows = ours_rows + peer_rows
    print("\nours beside Avalanche, same stream, same run:")
    print(format_table(summarise(rows)))
    met = lb.goal_met(summarise(ours_rows), known.buffer, len(seeds))
    print(lb.goal_line(met, len(seeds)))
    rc = 0 if met or len(seeds) < lb.GOAL_SEEDS else 1  # each seed's own run is "not judged" (rc 0)
    ratios = wall_time_ratios(rows)
    for name, per_seed in ratios.items():
        med = statistics.median(per_seed.values())
        print(f"wall time / Avalanche DER++'s, same seed, back to back: {name} "
              + ", ".join(f"{v:.3f}" for v in per_seed.values()) + f" (median {med:.3f}; equal-compute goal <= 1: "
              + ("met" if med <= 1.0 else "NOT met") + ")")
    if known.json:
        Path(known.json).write_text(json.dumps({**ours, "rows": rows, "summary": summarise(rows),
                                                "wall_time_vs_avalanche_der": ratios}, indent=2, default=float))
    return rc


PEER_ORDER = ("der", "naive", "replay")  # DER++ right after ours: the pair the equal-compute goal compares


def wall_time_ratios(rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Per strategy of ours, per seed: its training wall time over Avalanche DER++'s on the same seed."""
    der = {r["seed"]: r["seconds"] for r in rows if r["strategy"] == "avalanche-der" and r["seconds"] > 0}
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if not r["strategy"].startswith("avalanche-") and r["seed"] in der:
            out.setdefault(r["strategy"], {})[r["seed"]] = r["seconds"] / der[r["seed"]]
    return out

if __name__ == "__main__":
    raise SystemExit(main())
