"""Replay a kept ``bench adaptation`` run's trainer updates offline, with another strategy or gate: minutes -> seconds.

A loop run (``bench.adaptation.run_one(..., keep=DIR)``) leaves its trainer state: the sample store (every upload
and its label, which ones were held out) and ``timeline.jsonl`` (which samples each update trained on). Learning
ideas that change neither selection nor timing can be screened on exactly those batches: the bootstrap state is
copied, the kept store put under it, and the real :class:`trainer.service.TrainerService` runs the same updates in
the same order (its gate sees only the held-out samples labelled up to each update, as it did live). Each update's
candidate is also scored on a fixed test set: frames of the final window of the scenario (after both drifts),
rendered from the cameras' own ``sim:`` sources and preprocessed as the cameras fed them (each camera's input
calibration followed the light from the stream's start).

What it cannot say: anything that depends on when a model reached the cameras (uploads were selected by the
deployed models of the live run, and the rollout calendar is not replayed). A variant that wins here is then run
through the whole loop.

    python -m bench.adaptation_replay KEPT_DIR --seed 0 --variant demo,fewshot
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["final_window_set", "fit_new_class_bias", "replay"]


def final_window_set(scenario: str, seed: int, cameras: int = 4, every: int = 3, boot_model: Path | None = None,
                     calibration: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Model inputs and truths of the default scenario's final window (every ``every``-th frame per camera),
    preprocessed through each camera's input calibration as it stood at that frame."""
    from bench.adaptation import FPS, STREAM_S, scenarios
    from bench.adaptation_loop import LoopSettings
    from deploy.demo.plan import camera_seed
    from edge.model import CalibrationConfig, EdgeModel, InputCalibration, ModelSlot
    from edge.sources.sim import open_sim

    sc = scenarios()[scenario]
    mode = calibration or LoopSettings().calibration
    lo = max(sc.events()[-1][0] + sc.ramp_s + LoopSettings().accuracy_window_s, 0.8 * STREAM_S)
    n = int(round(STREAM_S * FPS))
    xs, ys = [], []
    for k in range(cameras):
        src = open_sim(sc.url(camera_seed(seed, k), FPS))
        cal = InputCalibration(CalibrationConfig(mode=mode)) if mode != "off" else None
        slot = ModelSlot(threads=1, calibration=cal)
        slot.swap(EdgeModel.load(boot_model, threads=1))
        for i in range(n):
            f = src.frame_at(i)
            m = slot.get()
            if cal is not None:
                cal.observe(m.resize(f.image))
                if cal.update(False):
                    cal.apply(m)
            if i >= lo * FPS and i % every == 0:
                xs.append(m.preprocess(f.image))
                ys.append(str(f.truth))
    return np.concatenate(xs), ys


def _recall(pred: list[str], truth: list[str]) -> dict[str, float]:
    out = {}
    for c in sorted(set(truth)):
        idx = [i for i, t in enumerate(truth) if t == c]
        out[c] = round(100 * sum(pred[i] == c for i in idx) / len(idx), 1)
    return out


def fit_new_class_bias(logits: Any, targets: Any, new: list[int], weights: Any, limit: float = 4.0,
                       step: float = 0.1, min_new: int = 3) -> float:
    """BiC's idea (Wu et al. 2019) as one number: the offset ``b`` in ``[-limit, limit]`` (grid ``step``) added to the
    ``new`` classes' logits that minimises ``sum w_i * CE(logits_i + b * 1[new], y_i) / sum w_i`` on held-out samples.

    0 when nothing is new or fewer than ``min_new`` samples belong to a new class: without them the loss only says
    "never answer the new class". Ties resolve to the offset nearest 0. Measured in the loop and not kept (README,
    Adaptation #49): fitted on the held-out uploads it silences the class it corrects.
    """
    import torch

    if not new or int(torch.isin(targets, torch.tensor(new)).sum()) < min_new:
        return 0.0
    mask = torch.zeros(logits.shape[1])
    mask[new] = 1.0
    n = int(round(limit / step))
    grid = torch.arange(-n, n + 1, dtype=torch.float32) * step
    with torch.no_grad():
        shifted = logits.float().unsqueeze(0) + grid.view(-1, 1, 1) * mask  # [G, N, C]
        ce = torch.nn.functional.cross_entropy(shifted.reshape(-1, logits.shape[1]), targets.repeat(len(grid)),
                                               reduction="none").view(len(grid), -1)
        w = weights.float()
        loss = (ce * w).sum(1) / w.sum()
    ok = (loss <= float(loss.min()) + 1e-6).nonzero().flatten()
    return round(float(grid[ok[grid[ok].abs().argmin()]]), 6)


def _bias_probe(svc: Any, n_boot: int, x_test: Any, y_test: list[str]) -> dict[str, Any]:
    """The candidate with a new-class logit offset (:func:`fit_new_class_bias`): fitted on the held-out uploads
    the gate sees, and the best offset for the final-window frames themselves (the most any fit could give)."""
    import torch

    from trainer.evaluate import predict_logits
    from trainer.weighting import selection_weights

    new = list(range(n_boot, len(svc.labels)))
    if not new:
        return {}
    model = svc.strategy.candidate()
    rows = [r for r in svc.store.heldout() if r.label in svc.labels]
    xh = torch.stack([svc._tensor(r) for r in rows])  # noqa: SLF001
    yh = torch.tensor([svc.labels.index(r.label) for r in rows])
    b = fit_new_class_bias(predict_logits(model, xh), yh, new, selection_weights([r.p_select for r in rows]))
    lt = predict_logits(model, x_test)
    yt = torch.tensor([svc.labels.index(t) if t in svc.labels else -1 for t in y_test])
    mask = torch.zeros(lt.shape[1])
    mask[new] = 1.0

    def score(off: float) -> tuple[float, float]:
        p = (lt + off * mask).argmax(1)
        nc = yt == new[0]
        return round(100 * float((p == yt).float().mean()), 1), round(100 * float((p[nc] == yt[nc]).float().mean()), 1)
    grid = [i / 10 for i in range(-40, 41)]
    best = max(grid, key=lambda o: score(o)[0])
    return {"fit": b, "fit_acc": score(b), "none_acc": score(0.0), "oracle": best, "oracle_acc": score(best),
            "n_heldout": len(rows)}


def replay(kept: Path, seed: int, variant: str, test: tuple[np.ndarray, list[str]], scenario: str = "default",
           verbose: bool = True, bias_probe: bool = False) -> dict[str, Any]:
    """Run the kept run's updates again from the bootstrap state with ``variant``'s trainer settings and hooks."""
    import torch

    from bench.adaptation import bootstrap_state, run_one_settings, variants
    from bench.adaptation_loop import Clock, _trainer_config, sim_clock
    from trainer.evaluate import predict
    from trainer.service import TrainerService

    var = variants()[variant]
    s, boot = run_one_settings(scenario, seed, variant)
    src_state = bootstrap_state(boot[0], seed, boot[1])
    timeline = [json.loads(line) for line in (kept / "run" / "trainer" / "timeline.jsonl").read_text().splitlines() if line]
    x_test, y_test = torch.from_numpy(test[0]), test[1]
    out: dict[str, Any] = {"variant": variant, "updates": []}
    with tempfile.TemporaryDirectory(prefix="edgeloop-replay-", dir="/dev/shm") as tmp:
        state = Path(tmp) / "trainer"
        shutil.copytree(src_state, state)
        shutil.copytree(kept / "run" / "trainer" / "samples", state / "samples")
        clock = Clock(1_700_000_000.0)
        with sim_clock(clock):
            svc = TrainerService(_trainer_config(state, s, seed), exporter="torchscript")
            if var.hooks is not None:
                hooks = var.hooks()
                if hooks.make_strategy is not None:
                    svc.strategy = hooks.make_strategy(svc)
            upto = [0]
            every_heldout = svc.store.heldout

            def heldout(newest: int | None = None) -> list[Any]:
                rows = [r for r in every_heldout() if (r.label_seq or 0) <= upto[0]]
                return rows[-newest:] if newest else rows
            svc.store.heldout = heldout  # type: ignore[method-assign]
            deployed_pred: list[str] | None = None
            n_boot = len(svc.labels)
            for u in timeline:
                rows = [svc.store.get(sid) for sid in u["samples"]]
                rows = [r for r in rows if r is not None]
                if not rows:
                    continue
                upto[0] = max(int(r.label_seq or 0) for r in rows)
                rec = svc._update(rows)  # noqa: SLF001 - the service's own update, batch as it was live
                dec = rec.get("decision") or {}
                pred = [svc.labels[i] for i in predict(svc.model, x_test)]
                acc = 100 * float(np.mean([p == t for p, t in zip(pred, y_test)]))
                if dec.get("promote"):
                    deployed_pred = pred
                row = {"update": rec["update"], "n": rec["n"], "promoted": dec.get("version"),
                       "cand_test_acc": round(acc, 1), "cand_crack": _recall(pred, y_test).get("crack"),
                       "cand_recall": _recall(pred, y_test),
                       "recent": dec.get("recent"), "reason": (dec.get("reason") or "")[-160:]}
                if bias_probe:
                    row["bias"] = _bias_probe(svc, n_boot, x_test, y_test)
                out["updates"].append(row)
                if verbose:
                    r = row["recent"] or {}
                    print(f"  {variant:<14} u{row['update']:>2} n={row['n']:>2} test {acc:5.1f} crack "
                          f"{row['cand_crack']}  recent {r.get('candidate_accuracy', float('nan')):.3f} vs "
                          f"{r.get('deployed_accuracy', float('nan')):.3f}  {'PROMOTED ' + row['promoted'] if row['promoted'] else ''}"
                          f"  [{' '.join(f'{k}:{v:.0f}' for k, v in row['cand_recall'].items())}]",
                          flush=True)
                    if bias_probe:
                        print(f"  {'':<14}     bias {row['bias']}", flush=True)
            svc.stop()
    last = out["updates"][-1] if out["updates"] else {}
    out["last_candidate"] = {"acc": last.get("cand_test_acc"), "crack": last.get("cand_crack")}
    if deployed_pred is not None:
        out["last_promoted"] = {"acc": round(100 * float(np.mean([p == t for p, t in zip(deployed_pred, y_test)])), 1),
                                "recall": _recall(deployed_pred, y_test)}
    out["promoted"] = sum(1 for u in out["updates"] if u["promoted"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.adaptation_replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("kept", help="the directory given as run_one(keep=...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--variant", default="demo", help="comma-separated (bench/adaptation_variants.py)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--bias-probe", action="store_true",
                    help="also score each candidate with a new-class logit offset fitted on the held-out uploads")
    a = ap.parse_args(argv)
    from bench.adaptation import bootstrap_state, run_one_settings

    _, boot = run_one_settings(a.scenario, a.seed, "demo")
    state = bootstrap_state(boot[0], a.seed, boot[1])
    cached = Path(a.kept) / "final_window.npz"
    if cached.exists():
        z = np.load(cached)
        test = (z["x"], [str(v) for v in z["y"]])
    else:
        test = final_window_set(a.scenario, a.seed, boot_model=sorted((state / "models").glob("v0001*.onnx"))[0])
        np.savez(cached, x=test[0], y=np.array(test[1]))
    print(f"test set: {len(test[1])} final-window frames, {test[1].count('crack')} crack", flush=True)
    res = []
    for v in a.variant.split(","):
        r = replay(Path(a.kept), a.seed, v, test, a.scenario, bias_probe=a.bias_probe)
        print(f"{v}: {r['promoted']} promoted; last candidate {r['last_candidate']}; last promoted "
              f"{r.get('last_promoted')}", flush=True)
        res.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
