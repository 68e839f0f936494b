"""What binds the new class ``crack``: the model's input size or the number of its labels? (offline, minutes)

For each input size, the demo's v0001 is bootstrapped at that size (:func:`bench.adaptation.bootstrap_state`
with ``input_size``; the default scenario's 320x240 frames carry a 128x128 ROI, so 64 is half the native
resolution and 128 is native). The test set is the default scenario's final window (after both drifts,
:func:`bench.adaptation_replay.final_window_set`: every 3rd frame of the seed's 4 cameras, through each camera's
input calibration as it stood). The labels come from the same window of 4 *other* cameras (other seeds, every
frame): the first frames of a shuffled pool that hold ``N`` ``crack`` frames, with the stream's own class mix
around them -- what a fully labelled stream gives by the time it has shown ``N`` cracks.

From v0001, each (size, N) trains jointly on the bootstrap set and those frames, with class-balanced minibatches
of 32 (``crack`` about a fifth of each: the most oversampling can give), batch norm in inference mode (as the
loop's updates), Adam 1e-3 -- README row #18's recipe -- and is scored on the test set after each of ``--steps``;
``--augment`` changes every minibatch (README row #35: ``dihedral``).

    python -m bench.newclass_learnability --sizes 64,128 --crack 25,60,120,240 --seeds 0 --json OUT.json
    python -m bench.newclass_learnability --sizes small_cnn128@128 --crack 25,60 --seeds 0
    python -m bench.newclass_learnability --sizes 64 --crack 25,60 --augment none,dihedral --steps 200,400,800
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["labelled_pool", "learn_newclass"]

POOL_BASE = 1000  # pool cameras' seed base: camera_seed(1000 + seed, k), far from the test's and bootstrap's


def _state(seed: int, size: int, arch: str | None = None) -> Path:
    from bench.adaptation import bootstrap_state, run_one_settings

    _, (kind, opts) = run_one_settings("default", seed, "demo")
    return bootstrap_state(kind, seed, {**opts, "input_size": size, **({"arch": arch} if arch else {})})


def _v0001(state: Path) -> Path:
    return sorted((state / "models").glob("v0001*.onnx"))[0]


def labelled_pool(state: Path, seed: int, cameras: int = 4) -> tuple[np.ndarray, list[str]]:
    """The final window of ``cameras`` cameras no test or bootstrap frame comes from, every frame."""
    from bench.adaptation_replay import final_window_set

    return final_window_set("default", POOL_BASE + seed, cameras=cameras, every=1, boot_model=_v0001(state))


def _first_with(names: list[str], n_crack: int, seed: int) -> np.ndarray:
    """Indices of the shortest prefix of a seeded shuffle of the pool that holds ``n_crack`` crack frames."""
    order = np.random.default_rng(seed).permutation(len(names))
    crack_seen = np.cumsum([names[i] == "crack" for i in order])
    if crack_seen[-1] < n_crack:
        raise ValueError(f"the pool holds {crack_seen[-1]} crack frames, fewer than {n_crack}")
    return order[: int(np.searchsorted(crack_seen, n_crack)) + 1]


def learn_newclass(state: Path, pool: tuple[np.ndarray, list[str]], test: tuple[np.ndarray, list[str]],
                   n_crack: int, steps: list[int], seed: int, augment: str = "none",
                   train: str = "all", align: bool = False, scope: str = "all",
                   ema: float | None = None, probe: bool = False) -> list[dict[str, Any]]:
    """v0001 trained on the bootstrap set + the pool frames holding ``n_crack`` cracks; test scores per step.
    ``augment`` (trainer.augment's names) changes every minibatch, e.g. ``dihedral``: each label of a surface
    defect stands for its eight turns and mirror images. ``train``: ``all`` parameters, the ``head`` only, or the
    head and the ``last`` block of ``features`` (the rest frozen: does the new class cost the old ones less?).
    ``align`` also scores each checkpoint with the new row weight-aligned (:func:`_aligned_scores`). ``scope``:
    ``augment`` changes every sample (``all``) or only the new class's (``new``: does turning the old classes'
    thousands of samples cost them what the few gain?). ``ema``: also score the exponential moving average of the
    weights with this decay per step (does averaging steady a learner whose checkpoints swing?). ``probe``: also
    score each checkpoint with test-time dihedral averaging and with the best bias on the new class's logit
    (:func:`_probe_scores`: how much of the new class's trade is the operating point, not the features?)."""
    if train not in ("all", "head", "last"):
        raise ValueError(f"train {train!r}: use all, head or last")
    if scope not in ("all", "new"):
        raise ValueError(f"scope {scope!r}: use all or new")
    import torch
    import torch.nn.functional as F

    from bench.adaptation_loop import UpperBound
    from trainer.augment import parse_augment
    from trainer.evaluate import evaluate_model
    from trainer.nets import grow_head

    aug = parse_augment(augment)  # an unknown name fails here, before any training

    torch.manual_seed(seed)
    base = UpperBound(state, 0, seed)  # v0001, its labels and the bootstrap set, as the upper bound loads them
    labels = base.labels + ["crack"]
    model = base.model
    grow_head(model, len(labels))
    pick = _first_with(pool[1], n_crack, seed)
    x = torch.cat([base.x0.float() / 255.0, torch.from_numpy(pool[0][pick])])
    y = torch.cat([base.y0.long(), torch.tensor([labels.index(pool[1][i]) for i in pick])])
    w = 1.0 / torch.bincount(y, minlength=len(labels)).float().clamp(min=1)[y]
    x_test, y_test = torch.from_numpy(test[0]), np.array([labels.index(t) for t in test[1]])
    if train != "all":
        blocks = [m for m in model.features if any(True for _ in m.parameters())]
        keep = set(model.head.parameters()) | (set(blocks[-1].parameters()) if train == "last" else set())
        for prm in model.parameters():
            prm.requires_grad_(prm in keep)
    opt = torch.optim.Adam([prm for prm in model.parameters() if prm.requires_grad], lr=1e-3)
    avg = None
    if ema is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema))
    g = torch.Generator().manual_seed(seed)
    rows, t0 = [], time.process_time()
    for k in range(1, max(steps) + 1):
        model.train()
        for m in model.modules():  # batch norm in inference mode, as the loop's updates (strategy.freeze_bn)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        idx = torch.multinomial(w, 32, replacement=True, generator=g)
        xb = x[idx]
        if aug is not None and scope == "all":
            xb = aug(xb, g)
        elif aug is not None:
            new = y[idx] == labels.index("crack")
            xb = xb.clone()
            if bool(new.any()):
                xb[new] = aug(xb[new], g)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if avg is not None:
            avg.update_parameters(model)
        if k in steps:
            m = evaluate_model(model, x_test, y_test, len(labels))
            rows.append({"steps": k, "accuracy": round(100 * m["accuracy"], 1),
                         "crack": round(100 * m["per_class"][labels.index("crack")], 1),
                         "recall": {c: round(100 * v, 1) for c, v in zip(labels, m["per_class"]) if v is not None},
                         "frames": int(len(pick)), "cpu_s": round(time.process_time() - t0, 1)})
            if probe:
                rows[-1]["probe"] = _probe_scores(model, x_test, y_test, labels)
            if align:
                rows[-1]["aligned"] = _aligned_scores(model, x_test, y_test, labels)
            if avg is not None:
                me = evaluate_model(avg.module, x_test, y_test, len(labels))
                rows[-1]["ema"] = {"accuracy": round(100 * me["accuracy"], 1),
                                   "crack": round(100 * me["per_class"][labels.index("crack")], 1),
                                   "recall": {c: round(100 * v, 1) for c, v in zip(labels, me["per_class"])
                                              if v is not None}}
    return rows


def _aligned_scores(model: Any, x_test: Any, y_test: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The scores with the new row's weight norm scaled to the old rows' mean (weight aligning, Zhao et al.
    2020): a row trained on a few oversampled samples grows long and claims the old classes' samples."""
    import copy

    import torch

    from trainer.evaluate import evaluate_model

    m2 = copy.deepcopy(model)
    with torch.no_grad():
        w = m2.head.weight
        norms = w.norm(dim=1)
        factor = norms[:-1].mean() / norms[-1]
        w[-1] *= factor
        m2.head.bias[-1] *= factor
    m = evaluate_model(m2, x_test, y_test, len(labels))
    return {"factor": round(float(factor), 3), "accuracy": round(100 * m["accuracy"], 1),
            "crack": round(100 * m["per_class"][labels.index("crack")], 1),
            "recall": {c: round(100 * v, 1) for c, v in zip(labels, m["per_class"]) if v is not None}}


def _probe_scores(model: Any, x_test: Any, y_test: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Two upper bounds of post-hoc fixes for the new class's trade, on the test set itself: ``tta``, the softmax
    averaged over the input's eight turns and mirror images (what an exported model could do at 8x the edge's
    compute); ``bias``, the accuracy at the best constant added to the new class's logit (what a bias correction
    fitted on held-out uploads could reach at most, BiC, Wu et al. 2019)."""
    import torch

    new = labels.index("crack")
    y = torch.from_numpy(y_test)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x_test[i:i + 256]) for i in range(0, len(x_test), 256)])
        views = [torch.flip(torch.rot90(x_test, k, dims=(2, 3)), dims=(3,)) if f else torch.rot90(x_test, k, dims=(2, 3))
                 for k in range(4) for f in (0, 1)]
        tta = sum(torch.cat([model(v[i:i + 256]).softmax(1) for i in range(0, len(v), 256)]) for v in views)

    def score(pred: torch.Tensor) -> dict[str, float]:
        return {"accuracy": round(100 * float((pred == y).float().mean()), 1),
                "crack": round(100 * float((pred[y == new] == new).float().mean()), 1)}

    best = None
    for b in np.linspace(-4, 4, 33):
        shifted = logits.clone()
        shifted[:, new] += float(b)
        s = score(shifted.argmax(1))
        if best is None or s["accuracy"] > best["accuracy"]:
            best = {**s, "b": round(float(b), 2)}
    return {"tta": score(tta.argmax(1)), "bias": best}


def _cached(path: Path, make: Any) -> tuple[np.ndarray, list[str]]:
    """Rendered sets beside the bootstrap state they were preprocessed for (parallel runs share them)."""
    if not path.exists():
        x, y = make()
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=np.array(y))
        tmp.rename(path)
    z = np.load(path)
    return z["x"], [str(v) for v in z["y"]]


Frames = tuple[np.ndarray, list[str]]  # model inputs (N, C, H, W) and their truths


def _sets(seed: int, size: int, arch: str | None = None) -> tuple[Path, dict[str, Any], Frames, Frames]:
    """The bootstrap state at ``size`` (of ``arch``; None: the scenario's), v0001's metrics, the test set and the
    labelled pool."""
    from bench.adaptation_replay import final_window_set
    from edge.model import EdgeModel

    state = _state(seed, size, arch)
    boot = EdgeModel.load(_v0001(state), threads=1).meta.metrics or {}
    test = _cached(state.parent / "newclass-test.npz",
                   lambda: final_window_set("default", seed, boot_model=_v0001(state)))
    pool = _cached(state.parent / "newclass-pool.npz", lambda: labelled_pool(state, seed))
    return state, boot, test, pool


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.newclass_learnability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,128", help="model input sizes (square), comma-separated; ARCH@SIZE for "
                                                      "another architecture than the scenario's (small_cnn128@128)")
    ap.add_argument("--crack", default="25,60,120,240", help="crack training frames, comma-separated (empty: only "
                                                              "render and cache the sets)")
    ap.add_argument("--seeds", default="0", help="comma-separated")
    ap.add_argument("--steps", default="200,400", help="score after these optimiser steps")
    ap.add_argument("--augment", default="none", help="augment every minibatch (trainer.augment: none, photometric, "
                                                      "geometric, both, dihedral, all); comma-separated to compare")
    ap.add_argument("--train", default="all", help="what learns: all, head, last (head + the last feature block); "
                                                   "comma-separated to compare")
    ap.add_argument("--scope", default="all", help="which samples --augment changes: all, or new (the crack samples "
                                                   "only); comma-separated to compare")
    ap.add_argument("--ema", type=float, help="also score the weights' exponential moving average with this decay "
                                            "per step (e.g. 0.99)")
    ap.add_argument("--align", action="store_true", help="also score with the new row's norm aligned to the old rows'")
    ap.add_argument("--probe", action="store_true", help="also score with test-time dihedral averaging and with the "
                                                         "best bias on the new class's logit (upper bounds)")
    ap.add_argument("--json", help="append one JSON line per (seed, size, N) here")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    steps = sorted(int(v) for v in a.steps.split(","))
    for seed in (int(v) for v in a.seeds.split(",")):
        for spec in a.sizes.split(","):
            arch, _, size_s = spec.strip().rpartition("@")
            size = int(size_s)
            state, boot, test, pool = _sets(seed, size, arch or None)
            print(f"seed {seed} size {size}: test {len(test[1])} frames ({test[1].count('crack')} crack), pool "
                  f"{len(pool[1])} ({pool[1].count('crack')} crack); v0001 held-out {boot.get('accuracy', 0):.3f}",
                  flush=True)
            for n, aug, tr, sc in ((int(v), g, t, c) for v in a.crack.split(",") if v.strip()
                                   for g in a.augment.split(",") for t in a.train.split(",") for c in a.scope.split(",")):
                for r in learn_newclass(state, pool, test, n, steps, seed, aug, tr, a.align, sc, a.ema,
                                            a.probe):
                    row = {"seed": seed, "size": size, "arch": arch or None, "n_crack": n, "augment": aug, "train": tr,
                           "scope": sc, **r, "v0001_heldout": boot.get("accuracy")}
                    print(f"  size {size} crack {n:>3} aug {aug}/{sc} train {tr} ({r['frames']:>4} frames) {r['steps']:>4} steps: accuracy "
                          f"{r['accuracy']:5.1f}  crack {r['crack']:5.1f}  "
                          f"[{' '.join(f'{c}:{v:.0f}' for c, v in r['recall'].items())}]  {r['cpu_s']}s", flush=True)
                    if "aligned" in r:
                        al = r["aligned"]
                        print(f"    weight-aligned (x{al['factor']}): accuracy {al['accuracy']:5.1f}  crack {al['crack']:5.1f}  "
                              f"[{' '.join(f'{c}:{v:.0f}' for c, v in al['recall'].items())}]", flush=True)
                    if "probe" in r:
                        pr = r["probe"]
                        print(f"    dihedral-averaged: accuracy {pr['tta']['accuracy']:5.1f}  crack {pr['tta']['crack']:5.1f}"
                              f"   best new-class bias {pr['bias']['b']:+.2f}: accuracy {pr['bias']['accuracy']:5.1f}  "
                              f"crack {pr['bias']['crack']:5.1f}", flush=True)
                    if "ema" in r:
                        e = r["ema"]
                        print(f"    weight average (decay {a.ema}): accuracy {e['accuracy']:5.1f}  crack {e['crack']:5.1f}  "
                              f"[{' '.join(f'{c}:{v:.0f}' for c, v in e['recall'].items())}]", flush=True)
                    if a.json:
                        with open(a.json, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
