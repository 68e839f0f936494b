"""Label-budget experiment (``edgeloop bench label_budget``, or ``edgeloop bench learning --budget``).

Split-MNIST (the protocol of trainer/learning_bench.py) where only a fraction of the stream is labelled:
chosen the way the edge chooses (its uncertainty score and selection curve, with ``p_select`` recorded
and used for importance weights) or uniformly at random, trained with or without the weights. Every run
gets the same trainer compute: K optimiser steps per arriving minibatch of 10 (``--compute time``): the
tick on which 10 labelled samples are complete runs ``update(batch, K)``, every other tick K replay-only
steps. ``--compute label`` (K steps per labelled update only) is the older protocol, in which 20 %
labelled also meant 5x fewer optimiser steps. Goal: at 20 % labelled, within 2 points of 100 % and
better than uniform.

Why in bench/ and not beside the learning benchmark in trainer/: the experiment selects samples with
the edge's own code, :func:`edge.sampler.selection_curve` (the one implementation of the curve g, the
one every device runs per frame) and :func:`edge.uncertainty.score`, and the trainer may not import edge.
Restating them in the trainer (as it did) lets the benchmark drift from what ships; bench/ may import both.

In ``bench all`` it runs what the goal compares - 20 % edge-iw and 20 % uniform, three seeds - on the
workers of bench/jobs.py, and takes the 100 % reference from the ``learning`` benchmark's iw-er runs of
the same invocation when there are any (the identical run: same seed, K, replay and code path; a test
checks they agree). The whole sweep (10/20/50 %, with and without weights) is
``edgeloop bench label_budget [--seeds ...]``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import learning
from bench.jobs import Job, default_workers, run_jobs
from edge import uncertainty as edge_uncertainty
from edge.config import EdgeConfig
from edge.sampler import selection_curve
from trainer import learning_bench as lb
from trainer.datasets import SplitMNIST
from trainer.evaluate import ForgettingTracker
from trainer.nets import build_model
from trainer.strategies import LabelledBatch, Strategy, make_strategy, strategy_settings

GOAL = "at 20% labelled: within 2 points of 100% labelled, and better than uniform-random"
SEEDS = [0, 1, 2]
FRACTION = 0.2
_DATA: dict[Any, Any] = {}  # per worker process

# The edge's selection rule as a device runs it by default (edge/config.py): its uncertainty score and the
# sampler's curve (logistic g around 0.5, temperature 0.1, p_min 0.01); the trainer's iw-er weight cap.
_EDGE = EdgeConfig()
BUDGET_SCORE = _EDGE.uncertainty
BUDGET_THETA = _EDGE.sampler.threshold
BUDGET_TAU = _EDGE.sampler.temperature
BUDGET_P_MIN = _EDGE.sampler.p_min
BUDGET_W_MAX = strategy_settings("iw-er").w_max
# How the trainer's compute is spent: "time" = K optimiser steps per arriving stream minibatch of 10
# (the trainer's throughput is fixed, whatever share of the stream gets labelled): the tick on which B
# labelled samples are complete runs update(batch, K), every other tick K replay-only steps.
# "label" = K steps per update of B labelled samples only (compute ∝ labels: 5x fewer steps at 20 %).
# Why not "label" with K/f steps per update (same total steps): every one of those steps carries the
# same B new samples, and iw-er's ACE trains a new sample only against the classes present in its batch,
# so K/f ACE steps on one batch make its logits confidently wrong on the old-vs-new axis (seed 0, 20 %,
# K=15: stored logits of classes 2-9 in memory point at the right class 6-42 % of the time, |logit|
# ~16; K=3: 50-100 %, |logit| ~4). Those logits are stored as distillation targets when the batch enters
# memory, and distill (0.3) then pins every replayed sample of the new classes to "looks like 0/1":
# final accuracy 69.7 %, forgetting under 1 point, test 8s and 9s mostly called 0 or 1. ACE off: 92.5 %;
# distill off: 93.8 %. Spending the extra steps on replay only ("time") keeps K steps per new sample.
BUDGET_COMPUTE = "time"
COMPUTE_POLICIES = ("time", "label")
SCORES = (*edge_uncertainty.KINDS, "raw_least_confidence")
# Every (selection, weighted) pair worth running below 100 %: uniform p_select is constant, so weighting by
# 1/p is a no-op after self-normalisation and "uniform iw" is not run.
BUDGET_VARIANTS: tuple[tuple[str, bool], ...] = (("edge", True), ("edge", False), ("uniform", False))
GOAL_VARIANTS: tuple[tuple[str, bool], ...] = (("edge", True), ("uniform", False))  # what the goal compares


@dataclass(frozen=True)
class BudgetSettings:
    """What every run of the experiment shares: the trainer's compute and the edge's selection rule."""

    steps: int = lb.DEFAULT_STEPS       # K optimiser steps per arriving minibatch (or per labelled update)
    replay_size: int = lb.DEFAULT_REPLAY  # replayed samples per step
    compute: str = BUDGET_COMPUTE       # "time" or "label" (see BUDGET_COMPUTE)
    score: str = BUDGET_SCORE           # the edge's uncertainty score
    theta: float = BUDGET_THETA         # threshold of the logistic g
    tau: float = BUDGET_TAU             # temperature of the logistic g
    p_min: float = BUDGET_P_MIN         # floor of p_select
    w_max: float = BUDGET_W_MAX         # cap of the 1/p_select weight

    def __post_init__(self) -> None:
        if self.compute not in COMPUTE_POLICIES:
            raise ValueError(f"compute must be one of {COMPUTE_POLICIES}")


def uncertainty_score(probs: np.ndarray, kind: str = BUDGET_SCORE) -> np.ndarray:
    """The edge's uncertainty score of probability rows (N, K) (:func:`edge.uncertainty.score`), or
    ``raw_least_confidence``, the unscaled 1 − max p this benchmark used before (not an edge option)."""
    if kind == "raw_least_confidence":
        return 1.0 - np.asarray(probs, dtype=np.float64).max(1)
    return edge_uncertainty.score(probs, kind)


def edge_p_select(
    uncertainty: np.ndarray,
    fraction: float,
    theta: float = BUDGET_THETA,
    tau: float = BUDGET_TAU,
    p_min: float = BUDGET_P_MIN,
) -> np.ndarray:
    """The edge's selection rule p = clip(g(u), p_min, 1) with the edge's logistic g, scaled so that its mean
    over the minibatch equals ``fraction`` (bisection on the scale; clipped again to [p_min, 1]). The scale
    stands in for the edge's budget factor, which lowers or raises every frame's chance evenly."""
    g = selection_curve("logistic", theta, tau)
    base = np.array([g(u) for u in np.asarray(uncertainty, dtype=np.float64).tolist()])
    if fraction >= 1.0:
        return np.ones_like(base)
    lo, hi = 0.0, 1.0 / max(fraction, 1e-6) * 100
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.clip(base * mid, p_min, 1.0).mean() > fraction:
            hi = mid
        else:
            lo = mid
    return np.clip(base * lo, p_min, 1.0)


class _Labelling:
    """Labelled samples waiting for an update: buffered until B = 10 are there (or the experience ends)."""

    def __init__(self, strategy: Strategy, steps: int, weighted: bool) -> None:
        self.strategy, self.steps, self.weighted = strategy, steps, weighted
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.p: list[torch.Tensor] = []
        self.labelled = self.updates = self.replay_steps = 0

    def add(self, xb: torch.Tensor, yb: torch.Tensor, p: np.ndarray, keep: np.ndarray) -> None:
        if keep.any():
            idx = torch.from_numpy(np.flatnonzero(keep))
            self.x.append(xb[idx])
            self.y.append(yb[idx])
            self.p.append(torch.from_numpy(p[keep].astype(np.float32)))
            self.labelled += int(keep.sum())

    def tick(self, last: bool, compute: str) -> None:
        """One arriving minibatch's compute: an update if a batch is complete, else maybe rehearsal."""
        n = sum(len(t) for t in self.y)
        if n >= lb.MINIBATCH or (last and n):
            x, y, p = torch.cat(self.x), torch.cat(self.y), torch.cat(self.p)
            self.strategy.update(LabelledBatch(x, y, p if self.weighted else None), steps=self.steps)
            self.x.clear(), self.y.clear(), self.p.clear()
            self.updates += 1
        elif compute == "time":
            self.replay_steps += int(self.strategy.rehearse(self.steps)["steps"])


def run_budget_one(data: SplitMNIST, seed: int, fraction: float, selection: str, weighted: bool,
                   buffer: int = 500, settings: BudgetSettings = BudgetSettings()) -> dict[str, Any]:
    """iw-er on the stream where only ``fraction`` of each arriving minibatch is labelled.

    ``selection="edge"``: uncertainty (``score`` of the current model's softmax) → p_select as the edge
    computes it, one Bernoulli draw per sample; ``"uniform"``: p_select = fraction for everyone.
    ``weighted=False`` trains with p_select forced to 1 (no importance correction; memory weights 1 too).
    Labelled samples are buffered until B = 10 are available (or the experience ends), then one
    ``update(batch, K)`` runs, as in the trainer. ``compute="time"``: every other arriving minibatch
    costs K replay-only steps, so every run, whatever the fraction, takes K steps per 10 stream samples
    and every labelled sample is a new sample in exactly K steps; ``"label"``: no replay-only steps.
    At fraction 1 both policies are the same run as ``run_strategy("iw-er", ...)``.
    """
    st = settings
    torch.manual_seed(seed)
    rng = np.random.default_rng(10_000 + seed)
    model = build_model("convnet", 10)
    cfg = {"replay_batch_size": st.replay_size, "w_max": st.w_max}
    strat = make_strategy("iw-er", model, lb._adam, config=cfg, capacity=buffer, policy=lb.DEFAULT_POLICY, seed=seed)
    tracker = ForgettingTracker()
    pending = _Labelling(strat, st.steps, weighted)
    t0 = time.perf_counter()
    for x, y in data.experiences:
        for i in range(0, len(y), lb.MINIBATCH):
            xb, yb = x[i : i + lb.MINIBATCH], y[i : i + lb.MINIBATCH]
            if fraction >= 1.0:
                p = np.ones(len(yb))
            elif selection == "edge":
                with torch.no_grad():
                    model.eval()
                    probs = torch.softmax(model(xb), 1).numpy()
                    model.train()
                p = edge_p_select(uncertainty_score(probs, st.score), fraction, st.theta, st.tau, st.p_min)
            else:
                p = np.full(len(yb), fraction)
            pending.add(xb, yb, p, rng.random(len(yb)) < p)
            pending.tick(i + lb.MINIBATCH >= len(y), st.compute)
        tracker.update(lb._per_class(model, data)[1])
    secs = time.perf_counter() - t0
    acc, pc = lb._per_class(model, data)
    return {
        "fraction": fraction, "selection": selection, "weighted": weighted, "seed": seed,
        "labelled": pending.labelled, "labelled_fraction": pending.labelled / data.stream_size,
        "final_acc": 100.0 * acc, "forgetting": 100.0 * tracker.forgetting(pc, classes=range(8)), "seconds": secs,
        "updates": pending.updates, "optimizer_steps": pending.updates * st.steps + pending.replay_steps,
        "replay_only_steps": pending.replay_steps, "compute": st.compute, "steps": st.steps,
        "score": st.score if selection == "edge" else None,
    }


def run_budget(seeds: list[int], fractions: tuple[float, ...] = (0.1, 0.2, 0.5), images: str | None = None,
               labels: str | None = None, settings: BudgetSettings = BudgetSettings(),
               verbose: bool = True) -> dict[str, Any]:
    """Edge-like vs uniform selection, with and without importance weights, at each fraction and 100%.

    Every run gets the same trainer settings (K, replay, buffer, compute policy); only the selection
    (and whether p_select is used for weights) differs.
    """
    cache: dict[Any, SplitMNIST] = {}
    rows: list[dict[str, Any]] = []
    for run in budget_plan(seeds, fractions):
        data = lb._data(run["seed"], images, labels, cache)
        r = run_budget_one(data, **run, settings=settings)
        rows.append(r)
        if verbose:
            print(f"  {budget_key(r):<26} seed {r['seed']}: acc {r['final_acc']:.2f}%  labelled "
                  f"{r['labelled_fraction'] * 100:.1f}%  {r['optimizer_steps']} steps  {r['seconds']:.1f}s", flush=True)
    table, met = budget_table(rows)
    return {"rows": rows, "table": table, "goal": GOAL, "met": met, "settings": {**asdict(settings), "buffer": 500}}


def budget_plan(seeds: list[int], fractions: tuple[float, ...],
                variants: tuple[tuple[str, bool], ...] = BUDGET_VARIANTS, full: bool = True) -> list[dict[str, Any]]:
    """The runs of the experiment as ``run_budget_one`` keyword sets: per seed the 100 % run (``full``)
    and every variant at every fraction. Independent of each other, so they may run in parallel."""
    plan: list[dict[str, Any]] = []
    for seed in seeds:
        if full:
            plan.append({"seed": seed, "fraction": 1.0, "selection": "all", "weighted": True})
        plan += [{"seed": seed, "fraction": f, "selection": sel, "weighted": w} for f in fractions for sel, w in variants]
    return plan


def budget_key(row: dict[str, Any]) -> str:
    """The table row a run belongs to: "100%" or e.g. "20% edge iw"."""
    if row["selection"] == "all":
        return "100%"
    return f"{int(round(row['fraction'] * 100))}% {row['selection']} {'iw' if row['weighted'] else 'unweighted'}"


def budget_table(rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], bool]:
    """Mean and std of final accuracy per table row, and whether the goal is met (20 % edge iw within 2
    points of 100 % and above 20 % uniform)."""
    accs: dict[str, list[float]] = {}
    for r in rows:
        accs.setdefault(budget_key(r), []).append(r["final_acc"])
    table = {k: {"final_acc": float(np.mean(v)), "final_acc_std": float(np.std(v)), "runs": float(len(v))}
             for k, v in accs.items()}
    full = table.get("100%", {}).get("final_acc", math.nan)
    e20 = table.get("20% edge iw", {}).get("final_acc", math.nan)
    u20 = table.get("20% uniform unweighted", {}).get("final_acc", math.nan)
    return table, bool(e20 >= full - 2.0 and e20 > u20)


# --------------------------------------------------------------------------- entry points
def budget_run(seed: int, fraction: float, selection: str, weighted: bool) -> dict[str, Any]:
    """One run of the experiment with the benchmark's default settings, in a worker process."""
    data = lb._data(seed, None, None, _DATA)
    return run_budget_one(data, seed, fraction, selection, weighted)


def run(quick: bool = False) -> dict[str, Any]:
    """The harness entry point (see the module doc). Quick mode is skipped: even one seed is three
    minute-long training runs, and learning's quick run already exercises the same iw-er code."""
    if quick:
        return {"name": "label_budget", "status": "skipped (quick)", "figures": {}, "met": None, "goal": GOAL,
                "notes": "3 training runs even for one seed; run without --quick, or "
                         "`edgeloop bench label_budget --seeds 0 --fractions 0.2` for a one-seed look"}
    reused = learning.full_reference_rows(SEEDS)
    plan = budget_plan(SEEDS, (FRACTION,), variants=GOAL_VARIANTS, full=not reused)
    jobs = [Job(budget_run, run, label=f"label budget {budget_key(run)} seed {run['seed']}",
                cost=2.0 if run["fraction"] >= 1.0 else 1.0) for run in plan]
    workers = default_workers()
    t0 = time.perf_counter()
    rows = run_jobs(jobs, workers) + reused
    wall = time.perf_counter() - t0
    table, met = budget_table(rows)
    d = BudgetSettings()
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
                   settings={"compute": d.compute, "steps": d.steps, "replay": d.replay_size, "score": d.score,
                             "theta": d.theta, "tau": d.tau, "p_min": d.p_min, "w_max": d.w_max, "buffer": 500},
                   rows=rows)
    return {"name": "label_budget", "figures": figures, "goal": GOAL, "met": met, "headline": "acc_20pct_edge_iw_pct",
            "notes": "iw-er, buffer 500, K=3 steps per arriving minibatch of 10; 20% labelled by the edge's rule "
                     "or uniformly. Full sweep: edgeloop bench label_budget"}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgeloop bench label_budget", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="the first seed only")
    ap.add_argument("--fractions", default="0.1,0.2,0.5")
    ap.add_argument("--steps", type=int, default=lb.DEFAULT_STEPS, help="optimiser steps K per arriving minibatch")
    ap.add_argument("--replay", type=int, default=lb.DEFAULT_REPLAY, help="replayed samples per step")
    ap.add_argument("--images", help="t10k images IDX (gz or raw); default data/mnist or /work/shared/data/mnist")
    ap.add_argument("--labels", help="t10k labels IDX")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute", default=BUDGET_COMPUTE, choices=COMPUTE_POLICIES,
                    help="K steps per arriving minibatch ('time', replay-only while waiting for labels) "
                    "or per labelled update only ('label')")
    ap.add_argument("--score", default=BUDGET_SCORE, choices=SCORES, help="the edge's uncertainty score")
    ap.add_argument("--theta", type=float, default=BUDGET_THETA, help="logistic threshold of g(score)")
    ap.add_argument("--tau", type=float, default=BUDGET_TAU, help="logistic temperature of g(score)")
    ap.add_argument("--p-min", type=float, default=BUDGET_P_MIN, help="floor of p_select")
    ap.add_argument("--w-max", type=float, default=BUDGET_W_MAX, help="cap of the 1/p_select weight")
    ap.add_argument("--json", help="write the results here")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``edgeloop bench label_budget [options]``: the whole sweep, in this process."""
    a = _parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()][: 1 if a.quick else None]
    t0 = time.perf_counter()
    settings = BudgetSettings(steps=a.steps, replay_size=a.replay, compute=a.compute, score=a.score, theta=a.theta,
                              tau=a.tau, p_min=a.p_min, w_max=a.w_max)
    res = run_budget(seeds, tuple(float(f) for f in a.fractions.split(",")), a.images, a.labels, settings)
    print(f"\nlabel budget, iw-er K={a.steps} steps per {'arriving minibatch' if a.compute == 'time' else 'labelled update'}"
          f" replay={a.replay} buffer 500; edge score {a.score} theta={a.theta} tau={a.tau} p_min={a.p_min}"
          f" w_max={a.w_max}; seeds {seeds}, threads {a.threads}")
    for k, v in res["table"].items():
        print(f"  {k:<26} {v['final_acc']:6.2f} ± {v['final_acc_std']:.2f}  ({int(v['runs'])} runs)")
    print(f"goal: {res['goal']} -> {'MET' if res['met'] else 'NOT met'}")
    res["total_seconds"], res["threads"] = time.perf_counter() - t0, a.threads
    print(f"total wall time {res['total_seconds']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=float))
    return 0 if res["met"] or a.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
