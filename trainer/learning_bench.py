"""Split-MNIST continual-learning benchmark, run through the strategies' own ``update()`` code.

Protocol: /work/shared/data/mnist/README.md (split with ``default_rng(0)``, five experiences of two
digits, minibatches of 10 in order, one pass, the seed's ConvNet, Adam 1e-3, pixels in [0, 1]). Every
arriving minibatch of 10 is one buffered trainer update: ``strategy.update(batch, steps=K)``.

Reported per (strategy, seed): final accuracy on the 2,000 test images, forgetting (mean over digits
0-7 of best accuracy after any experience − final accuracy), training seconds, replay memory bytes and
samples. ``joint`` trains on the whole stream shuffled, one epoch, same model and optimiser.

The label-budget experiment (only a fraction of the stream labelled, selected as the edge selects) runs
the same protocol with the edge's own selection code, so it lives in bench/label_budget.py
(``edgeloop bench label_budget``, or ``edgeloop bench learning --budget``): the trainer may not import edge.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import torch_cpu
from trainer.datasets import SplitMNIST, make_split_mnist
from trainer.evaluate import ForgettingTracker, evaluate_model
from trainer.nets import build_model
from trainer.strategies import STRATEGIES, LabelledBatch, make_strategy, strategy_settings

GOAL = "iw-er @ buffer 500: final acc >= 96.0%, forgetting <= 3 points (mean of 3 seeds)"
ORDER = ["naive", "ewc", "er", "der++", "iw-er"]

# Defaults chosen to reach the goal (see docs in the README section): K optimiser steps per arriving
# minibatch of 10 and a replay minibatch drawn class-balanced from a class-balanced memory.
DEFAULT_STEPS = 3
DEFAULT_REPLAY = 32
DEFAULT_POLICY = "class_balanced"
MINIBATCH = 10
LR = 1e-3

# Strategy settings are each strategy's own defaults (its Config, in trainer/strategies/<name>.py); --set
# overrides them, for every strategy of the run that has the setting.


def _adam(params):  # type: ignore[no-untyped-def]
    return torch_cpu.adam(params, LR)


def _data(seed: int, images: str | None, labels: str | None, cache: dict[Any, SplitMNIST]) -> SplitMNIST:
    key = (seed, images, labels)
    if key not in cache:
        cache[key] = make_split_mnist(images, labels, order_seed=seed)
    return cache[key]


def _per_class(model: torch.nn.Module, data: SplitMNIST) -> tuple[float, list[float | None]]:
    m = evaluate_model(model, data.test_x, data.test_y, 10)
    return m["accuracy"], m["per_class"]


def own_settings(name: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The overrides that are settings of strategy ``name`` (a ``--set`` applies to the strategies that have it)."""
    return {k: v for k, v in (overrides or {}).items() if k in STRATEGIES[name].Config.__struct_fields__}


def run_strategy(
    name: str,
    data: SplitMNIST,
    seed: int,
    buffer: int = 500,
    steps: int = DEFAULT_STEPS,
    replay_size: int = DEFAULT_REPLAY,
    policy: str = DEFAULT_POLICY,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One (strategy, seed) run over the stream; returns the report row."""
    torch.manual_seed(seed)
    model = build_model("convnet", 10)
    cfg = {"replay_batch_size": replay_size, **own_settings(name, overrides)}
    strat = make_strategy(name, model, _adam, config=cfg, capacity=buffer, policy=policy, seed=seed)
    tracker = ForgettingTracker()
    train_s = eval_s = cpu_s = 0.0
    per_exp: list[float] = []
    for x, y in data.experiences:
        t0 = time.perf_counter()
        c0 = time.process_time()
        for i in range(0, len(y), MINIBATCH):
            strat.update(LabelledBatch(x[i : i + MINIBATCH], y[i : i + MINIBATCH]), steps=steps)
        t1 = time.perf_counter()
        cpu_s += time.process_time() - c0
        acc, pc = _per_class(model, data)
        tracker.update(pc)
        per_exp.append(acc)
        eval_s += time.perf_counter() - t1
        train_s += t1 - t0
    final_acc, final_pc = acc, pc  # the evaluation after the last experience
    mem = strat.memory
    return {
        "strategy": name,
        "seed": seed,
        "final_acc": 100.0 * final_acc,
        "forgetting": 100.0 * tracker.forgetting(final_pc, classes=range(8)),
        "seconds": train_s,
        "cpu_seconds": cpu_s,
        "eval_seconds": eval_s,
        "memory_bytes": 0 if mem is None else mem.nbytes,
        "memory_samples": 0 if mem is None else len(mem),
        "acc_after_experience": [100.0 * a for a in per_exp],
        "per_class_final": final_pc,
        "steps": steps,
        "replay_size": replay_size if name not in ("naive", "ewc") else 0,
        "buffer": buffer if mem is not None else 0,
    }


def run_joint(data: SplitMNIST, seed: int) -> dict[str, Any]:
    """Upper reference: the whole stream shuffled, one epoch, minibatches of 10, one step each."""
    torch.manual_seed(seed)
    model = build_model("convnet", 10)
    opt = _adam(model.parameters())
    x = torch.cat([e[0] for e in data.experiences])
    y = torch.cat([e[1] for e in data.experiences])
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    x, y = x[perm], y[perm]
    model.train()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(0, len(y), MINIBATCH):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + MINIBATCH]), y[i : i + MINIBATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    acc, _ = _per_class(model, data)
    return {"strategy": "joint", "seed": seed, "final_acc": 100.0 * acc, "forgetting": 0.0, "seconds": secs, "cpu_seconds": cpu,
            "eval_seconds": 0.0, "memory_bytes": 0, "memory_samples": 0, "steps": 1, "replay_size": 0}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std (population, over seeds) per strategy of the numeric figures."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == name]
        s: dict[str, float] = {"runs": float(len(rs))}
        for k in ("final_acc", "forgetting", "seconds", "cpu_seconds", "memory_bytes", "memory_samples"):
            v = np.array([r[k] for r in rs], dtype=float)
            s[k] = float(v.mean())
            s[k + "_std"] = float(v.std())
        out[name] = s
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    head = (f"{'strategy':<18} {'final acc %':>15} {'forgetting pts':>15} {'train wall s':>13} {'train cpu s':>13}"
            f" {'memory':>16} {'runs':>4}")
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        mem = f"{int(s['memory_samples'])} / {s['memory_bytes'] / 1024:.0f} KiB" if s["memory_samples"] else "-"
        lines.append(
            f"{name:<18} {s['final_acc']:>8.2f} ± {s['final_acc_std']:<4.2f} {s['forgetting']:>8.2f} ± {s['forgetting_std']:<4.2f}"
            f" {s['seconds']:>7.1f} ± {s['seconds_std']:<3.1f} {s['cpu_seconds']:>7.1f} ± {s['cpu_seconds_std']:<3.1f}"
            f" {mem:>16} {int(s['runs']):>4}"
        )
    return "\n".join(lines)


def run_benchmark(
    strategies: list[str],
    seeds: list[int],
    buffer: int = 500,
    steps: int = DEFAULT_STEPS,
    replay_size: int = DEFAULT_REPLAY,
    policy: str = DEFAULT_POLICY,
    images: str | None = None,
    labels: str | None = None,
    joint: bool = True,
    overrides: dict[str, Any] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Every (strategy, seed) run plus ``joint``; returns rows, summary and whether the goal is met."""
    cache: dict[Any, SplitMNIST] = {}
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        data = _data(seed, images, labels, cache)
        for name in strategies:
            row = run_strategy(name, data, seed, buffer, steps, replay_size, policy, overrides)
            rows.append(row)
            if verbose:
                print(f"  {name:<6} seed {seed}: acc {row['final_acc']:.2f}%  forgetting {row['forgetting']:.2f}  "
                      f"{row['seconds']:.1f}s wall {row['cpu_seconds']:.1f}s cpu  mem {row['memory_samples']} ({row['memory_bytes']} B)", flush=True)
        if joint:
            row = run_joint(data, seed)
            rows.append(row)
            if verbose:
                print(f"  joint  seed {seed}: acc {row['final_acc']:.2f}%  {row['seconds']:.1f}s", flush=True)
    summary = summarise(rows)
    return {"rows": rows, "summary": summary, "met": goal_met(summary, buffer, len(seeds))}


GOAL_SEEDS = 3


def goal_met(summary: dict[str, dict[str, float]], buffer: int, seeds: int) -> bool:
    """The issue's goal: iw-er at buffer 500, mean of >= 3 seeds, final accuracy >= 96 %, forgetting <= 3."""
    iw = summary.get("iw-er")
    return bool(iw is not None and buffer == 500 and seeds >= GOAL_SEEDS and iw["final_acc"] >= 96.0 and iw["forgetting"] <= 3.0)


def goal_line(met: bool, seeds: int) -> str:
    """The goal's verdict as printed. The goal is a mean over >= 3 seeds, so a run of fewer (each seed of a paired
    ``--peer`` run is one) says "not judged" rather than a "NOT met" that reads like a failure."""
    if seeds < GOAL_SEEDS:
        return f"goal: {GOAL} -> not judged ({seeds} seed(s); the goal needs >= {GOAL_SEEDS})"
    return f"goal: {GOAL} -> {'MET' if met else 'NOT met'}"


# --------------------------------------------------------------------------- entry points
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgeloop bench learning", description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", action="append", help=f"repeatable, or 'all' ({', '.join(ORDER)}); default all")
    ap.add_argument("--buffer", type=int, default=500, help="replay memory capacity in samples")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimiser steps K per arriving minibatch")
    ap.add_argument("--replay", type=int, default=DEFAULT_REPLAY, help="replayed samples per step")
    ap.add_argument("--policy", default=DEFAULT_POLICY, choices=["reservoir", "class_balanced"])
    ap.add_argument("--images", help="t10k images IDX (gz or raw); default data/mnist or /work/shared/data/mnist")
    ap.add_argument("--labels", help="t10k labels IDX")
    ap.add_argument("--no-joint", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a strategy setting (trainer/strategies/<name>.py), for the strategies of the run that have it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 seed, naive + iw-er, no joint")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="print the combined table of earlier --json runs "
                    "(e.g. one process per seed) and exit")
    return ap


def _overrides(ap: argparse.ArgumentParser, pairs: list[str], strategies: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs (values parsed as JSON where they are), checked against the strategies' settings."""
    overrides: dict[str, Any] = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
        if not any(k in STRATEGIES[n].Config.__struct_fields__ for n in strategies):
            ap.error(f"--set {k}: not a setting of {', '.join(strategies)}")
    for n in strategies:
        try:
            strategy_settings(n, own_settings(n, overrides))
        except ValueError as e:
            ap.error(f"--set {e}")
    return overrides


def _merge(files: list[str], out: str | None) -> int:
    """Print the combined table of earlier ``--json`` runs (e.g. one process per seed)."""
    rows = [r for f in files for r in json.loads(Path(f).read_text())["rows"]]
    summary = summarise(rows)
    seeds_seen = {r["seed"] for r in rows if r["strategy"] == "iw-er"}
    buffers = {r.get("buffer") for r in rows if r["strategy"] == "iw-er"}
    met = goal_met(summary, buffers.pop() if len(buffers) == 1 else -1, len(seeds_seen))
    print(f"merged {len(files)} files, seeds {sorted({r['seed'] for r in rows})}")
    print(format_table(summary))
    print(goal_line(met, len(seeds_seen)))
    if out:
        Path(out).write_text(json.dumps({"rows": rows, "summary": summary, "met": met}, indent=2, default=float))
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    """``edgeloop bench learning [options]`` (the label-budget experiment is bench/label_budget.py)."""
    ap = _parser()
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if a.quick:
        seeds = seeds[:1]
    if a.merge:
        return _merge(a.merge, a.json)
    t0 = time.perf_counter()
    names = a.strategy or ["all"]
    strategies = list(ORDER) if "all" in names else names
    if a.quick and not a.strategy:
        strategies = ["naive", "iw-er"]
    for n in strategies:
        if n not in STRATEGIES:
            ap.error(f"unknown strategy {n}; known: {', '.join(STRATEGIES)}")
    overrides = _overrides(ap, a.set, strategies)
    res = run_benchmark(strategies, seeds, a.buffer, a.steps, a.replay, a.policy, a.images, a.labels,
                        joint=not a.no_joint and not a.quick, overrides=overrides)
    print(f"\nSplit-MNIST, buffer {a.buffer} ({a.policy}), K={a.steps} steps/minibatch, replay {a.replay}/step, "
          f"seeds {seeds}, torch threads {a.threads}")
    print(format_table(res["summary"]))
    judged = len(seeds) >= GOAL_SEEDS
    print(goal_line(res["met"], len(seeds)))
    total = time.perf_counter() - t0
    print(f"total wall time {total:.0f} s")
    res["total_seconds"] = total
    res["threads"] = a.threads
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=float))
    return 0 if res["met"] or a.quick or not judged else 1


if __name__ == "__main__":
    raise SystemExit(main())
