"""Split-MNIST continual-learning benchmark, run through the strategies' own ``update()`` code.

Protocol: /work/shared/data/mnist/README.md (split with ``default_rng(0)``, five experiences of two
digits, minibatches of 10 in order, one pass, the seed's ConvNet, Adam 1e-3, pixels in [0, 1]). Every
arriving minibatch of 10 is one buffered trainer update: ``strategy.update(batch, steps=K)``.

Reported per (strategy, seed): final accuracy on the 2,000 test images, forgetting (mean over digits
0-7 of best accuracy after any experience − final accuracy), training seconds, replay memory bytes and
samples. ``joint`` trains on the whole stream shuffled, one epoch, same model and optimiser.

The ``--budget`` mode is the label-budget experiment: only a fraction of the stream is labelled,
selected as the edge selects (uncertainty-driven randomised selection with recorded ``p_select``) or
uniformly at random, trained with or without importance weights.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.datasets import SplitMNIST, make_split_mnist
from trainer.evaluate import ForgettingTracker, evaluate_model
from trainer.nets import build_model
from trainer.strategies import STRATEGIES, LabelledBatch, make_strategy

GOAL = "iw-er @ buffer 500: final acc >= 96.0%, forgetting <= 3 points (mean of 3 seeds)"
BUDGET_GOAL = "at 20% labelled: within 2 points of 100% labelled, and better than uniform-random"
ORDER = ["naive", "ewc", "er", "der++", "iw-er"]

# Defaults chosen to reach the goal (see docs in the README section): K optimiser steps per arriving
# minibatch of 10 and a replay minibatch drawn class-balanced from a class-balanced memory.
DEFAULT_STEPS = 3
DEFAULT_REPLAY = 32
DEFAULT_POLICY = "class_balanced"
MINIBATCH = 10
LR = 1e-3

# Strategy settings are the registry's DEFAULT_CONFIGS (trainer/strategies/__init__.py); --set overrides.


def _adam(params):  # type: ignore[no-untyped-def]
    return torch.optim.Adam(params, lr=LR)


def _data(seed: int, images: str | None, labels: str | None, cache: dict[Any, SplitMNIST]) -> SplitMNIST:
    key = (seed, images, labels)
    if key not in cache:
        cache[key] = make_split_mnist(images, labels, order_seed=seed)
    return cache[key]


def _per_class(model: torch.nn.Module, data: SplitMNIST) -> tuple[float, list[float | None]]:
    m = evaluate_model(model, data.test_x, data.test_y, 10)
    return m["accuracy"], m["per_class"]


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
    cfg = {"replay_size": replay_size, "seed": seed, **(overrides or {})}
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
    iw = summary.get("iw-er")
    met = bool(
        iw is not None and buffer == 500 and len(seeds) >= 3 and iw["final_acc"] >= 96.0 and iw["forgetting"] <= 3.0
    )
    return {"rows": rows, "summary": summary, "met": met}


# --------------------------------------------------------------------------- label budget
def _logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def edge_p_select(
    uncertainty: np.ndarray, fraction: float, theta: float = 0.3, tau: float = 0.1, p_min: float = 0.02
) -> np.ndarray:
    """The edge's selection rule p = clip(logistic((u − θ)/τ), p_min, 1), scaled so that its mean over
    the minibatch equals ``fraction`` (bisection on the scale; clipped again to [p_min, 1])."""
    base = _logistic((uncertainty - theta) / tau)
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


def run_budget_one(
    data: SplitMNIST,
    seed: int,
    fraction: float,
    selection: str,
    weighted: bool,
    buffer: int = 500,
    steps: int = DEFAULT_STEPS,
    replay_size: int = DEFAULT_REPLAY,
    w_max: float = 10.0,
) -> dict[str, Any]:
    """iw-er on the stream where only ``fraction`` of each arriving minibatch is labelled.

    ``selection="edge"``: uncertainty (1 − max softmax of the current model) → p_select as the edge
    computes it, one Bernoulli draw per sample; ``"uniform"``: p_select = fraction for everyone.
    ``weighted=False`` trains with p_select forced to 1 (no importance correction).
    Labelled samples are buffered until 10 are available, then one update(batch, K) runs, as in the
    trainer.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(10_000 + seed)
    model = build_model("convnet", 10)
    cfg = {"replay_size": replay_size, "seed": seed, "w_max": w_max}
    strat = make_strategy("iw-er", model, _adam, config=cfg, capacity=buffer, policy=DEFAULT_POLICY, seed=seed)
    tracker = ForgettingTracker()
    pend_x: list[torch.Tensor] = []
    pend_y: list[torch.Tensor] = []
    pend_p: list[torch.Tensor] = []
    labelled = 0
    t0 = time.perf_counter()

    def flush() -> None:
        x, y, p = torch.cat(pend_x), torch.cat(pend_y), torch.cat(pend_p)
        strat.update(LabelledBatch(x, y, p if weighted else None), steps=steps)
        pend_x.clear(), pend_y.clear(), pend_p.clear()

    for x, y in data.experiences:
        for i in range(0, len(y), MINIBATCH):
            xb, yb = x[i : i + MINIBATCH], y[i : i + MINIBATCH]
            if fraction >= 1.0:
                p = np.ones(len(yb))
            elif selection == "edge":
                with torch.no_grad():
                    model.eval()
                    u = 1.0 - torch.softmax(model(xb), 1).max(1).values.numpy()
                    model.train()
                p = edge_p_select(u, fraction)
            else:
                p = np.full(len(yb), fraction)
            keep = rng.random(len(yb)) < p
            if keep.any():
                idx = torch.from_numpy(np.flatnonzero(keep))
                pend_x.append(xb[idx])
                pend_y.append(yb[idx])
                pend_p.append(torch.from_numpy(p[keep].astype(np.float32)))
                labelled += int(keep.sum())
            if sum(len(t) for t in pend_y) >= MINIBATCH:
                flush()
        if pend_y:
            flush()
        _, pc = _per_class(model, data)
        tracker.update(pc)
    secs = time.perf_counter() - t0
    acc, pc = _per_class(model, data)
    return {
        "fraction": fraction, "selection": selection, "weighted": weighted, "seed": seed,
        "labelled": labelled, "labelled_fraction": labelled / data.stream_size,
        "final_acc": 100.0 * acc, "forgetting": 100.0 * tracker.forgetting(pc, classes=range(8)), "seconds": secs,
    }


def run_budget(
    seeds: list[int],
    fractions: tuple[float, ...] = (0.1, 0.2, 0.5),
    images: str | None = None,
    labels: str | None = None,
    steps: int = DEFAULT_STEPS,
    replay_size: int = DEFAULT_REPLAY,
    verbose: bool = True,
) -> dict[str, Any]:
    """Edge-like vs uniform selection, with and without importance weights, at each fraction and 100%."""
    cache: dict[Any, SplitMNIST] = {}
    rows: list[dict[str, Any]] = []
    variants = [("edge", True), ("edge", False), ("uniform", True), ("uniform", False)]
    for seed in seeds:
        data = _data(seed, images, labels, cache)
        rows.append(run_budget_one(data, seed, 1.0, "all", True, steps=steps, replay_size=replay_size))
        if verbose:
            print(f"  100%  seed {seed}: acc {rows[-1]['final_acc']:.2f}%", flush=True)
        for f in fractions:
            for sel, w in variants:
                if sel == "uniform" and w:
                    continue  # uniform p_select is constant: weighting by 1/p is a no-op after self-normalisation
                r = run_budget_one(data, seed, f, sel, w, steps=steps, replay_size=replay_size)
                rows.append(r)
                if verbose:
                    print(f"  {int(f * 100):>3}% {sel:<7} {'iw' if w else 'unweighted':<10} seed {seed}: "
                          f"acc {r['final_acc']:.2f}%  labelled {r['labelled_fraction'] * 100:.1f}%  {r['seconds']:.1f}s", flush=True)
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        key = "100%" if r["selection"] == "all" else f"{int(r['fraction'] * 100)}% {r['selection']} {'iw' if r['weighted'] else 'unweighted'}"
        table.setdefault(key, {"accs": []})["accs"].append(r["final_acc"])  # type: ignore[union-attr]
    for v in table.values():
        a = np.array(v.pop("accs"))
        v["final_acc"], v["final_acc_std"], v["runs"] = float(a.mean()), float(a.std()), float(len(a))
    full = table.get("100%", {}).get("final_acc", math.nan)
    e20 = table.get("20% edge iw", {}).get("final_acc", math.nan)
    u20 = table.get("20% uniform unweighted", {}).get("final_acc", math.nan)
    met = bool(e20 >= full - 2.0 and e20 > u20)
    return {"rows": rows, "table": table, "goal": BUDGET_GOAL, "met": met}


# --------------------------------------------------------------------------- entry points
def run(quick: bool = False) -> dict[str, Any]:
    """The benchmark as ``edgeloop bench learning`` runs it.

    quick: one seed, iw-er only, one step per arriving batch (a smoke run of well under a minute that
    checks the benchmark runs; ``met`` is then False by definition, since the goal is over three seeds).
    """
    torch.set_num_threads(2)
    strategies = ["iw-er"] if quick else list(ORDER)
    seeds = [0] if quick else [0, 1, 2]
    steps = 1 if quick else DEFAULT_STEPS
    res = run_benchmark(strategies, seeds, steps=steps, joint=not quick, verbose=False)
    return {"name": "learning", "figures": {"summary": res["summary"], "rows": res["rows"], "threads": 2,
                                             "steps": steps, "replay_size": DEFAULT_REPLAY, "buffer": 500},
            "goal": GOAL, "met": res["met"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeloop bench learning", description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", action="append", help=f"repeatable, or 'all' ({', '.join(ORDER)}); default all")
    ap.add_argument("--buffer", type=int, default=500, help="replay memory capacity in samples")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimiser steps K per arriving minibatch")
    ap.add_argument("--replay", type=int, default=DEFAULT_REPLAY, help="replay samples per step")
    ap.add_argument("--policy", default=DEFAULT_POLICY, choices=["reservoir", "class_balanced"])
    ap.add_argument("--images", help="t10k images IDX (gz or raw); default data/mnist or /work/shared/data/mnist")
    ap.add_argument("--labels", help="t10k labels IDX")
    ap.add_argument("--no-joint", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="strategy config override")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 seed, naive + iw-er, no joint")
    ap.add_argument("--budget", action="store_true", help="label-budget experiment instead")
    ap.add_argument("--fractions", default="0.1,0.2,0.5")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="print the combined table of earlier --json runs "
                    "(e.g. one process per seed) and exit")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if a.quick:
        seeds = seeds[:1]
    if a.merge:
        rows = [r for f in a.merge for r in json.loads(Path(f).read_text())["rows"]]
        summary = summarise(rows)
        iw = summary.get("iw-er")
        seeds_seen = sorted({r["seed"] for r in rows if r["strategy"] == "iw-er"})
        buffers = {r.get("buffer") for r in rows if r["strategy"] == "iw-er"}
        met = bool(iw and len(seeds_seen) >= 3 and buffers == {500} and iw["final_acc"] >= 96.0 and iw["forgetting"] <= 3.0)
        print(f"merged {len(a.merge)} files, seeds {sorted({r['seed'] for r in rows})}")
        print(format_table(summary))
        print(f"goal: {GOAL} -> {'MET' if met else 'NOT met'}")
        if a.json:
            Path(a.json).write_text(json.dumps({"rows": rows, "summary": summary, "met": met}, indent=2, default=float))
        return 0 if met else 1
    t0 = time.perf_counter()
    if a.budget:
        fr = tuple(float(f) for f in a.fractions.split(","))
        res = run_budget(seeds, fr, a.images, a.labels, a.steps, a.replay)
        print(f"\nlabel budget, iw-er K={a.steps} replay={a.replay} buffer 500, seeds {seeds}, threads {a.threads}")
        for k, v in res["table"].items():
            print(f"  {k:<26} {v['final_acc']:6.2f} ± {v['final_acc_std']:.2f}  ({int(v['runs'])} runs)")
        print(f"goal: {res['goal']} -> {'MET' if res['met'] else 'NOT met'}")
    else:
        names = a.strategy or ["all"]
        strategies = list(ORDER) if "all" in names else names
        if a.quick and not a.strategy:
            strategies = ["naive", "iw-er"]
        for n in strategies:
            if n not in STRATEGIES:
                ap.error(f"unknown strategy {n}; known: {', '.join(STRATEGIES)}")
        overrides = {}
        for kv in a.set:
            k, _, v = kv.partition("=")
            try:
                overrides[k] = json.loads(v)
            except json.JSONDecodeError:
                overrides[k] = v
        res = run_benchmark(strategies, seeds, a.buffer, a.steps, a.replay, a.policy, a.images, a.labels,
                            joint=not a.no_joint and not a.quick, overrides=overrides)
        print(f"\nSplit-MNIST, buffer {a.buffer} ({a.policy}), K={a.steps} steps/minibatch, replay {a.replay}/step, "
              f"seeds {seeds}, torch threads {a.threads}")
        print(format_table(res["summary"]))
        print(f"goal: {GOAL} -> {'MET' if res['met'] else 'NOT met'}")
    total = time.perf_counter() - t0
    print(f"total wall time {total:.0f} s")
    res["total_seconds"] = total
    res["threads"] = a.threads
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=float))
    return 0 if res["met"] or a.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
