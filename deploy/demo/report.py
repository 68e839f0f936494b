"""The demo's report: ``summary.json`` (numbers), ``report.png`` (the picture), ``report.md`` (the story).

Everything is computed from the run's record (:class:`deploy.demo.app.RunRecord`) -- what the devices
published (stats, model status), what the frozen control computed on the same frames, what the trainer
registry and the rollout feeder hold, and the two facts of the demo's plan it needs (the accuracy window in
frames, the sim URL of unseen post-drift frames) -- so the report never imports the demo, and it can be
re-rendered from ``record.json`` without running anything again (``python -m deploy.demo.report OUT_DIR``).

Accuracy windows (all in stream seconds = camera frame index / fps, averaged over cameras):

* ``initial``: the first full rolling window (the bootstrap model on fresh frames);
* ``before_drift``: the window ending at the lighting change (the loop's model at that point);
* ``after_drift_*``: every stats point from ``max(new class + ramp + window, 80 % of the stream)`` to the
  end -- both drifts fully on, and the model has had time to react. ``frozen`` is v0001 on exactly those
  frames (same windows), ``final`` is what the cameras' own rolling accuracy reported.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.demo.goals import format_goals, run_goals

__all__ = ["write_report", "compute_summary", "main"]

CAM_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
LOOP_COLOR = "#d62728"
FROZEN_COLOR = "#555555"
DRIFT_COLOR = "#ff7f0e"


# -- numbers ------------------------------------------------------------------------------------------------
def _get(rec: Any, key: str) -> Any:
    return rec[key] if isinstance(rec, dict) else getattr(rec, key)


def _window_frames(rec: Any) -> int:
    """Frames in the cameras' rolling accuracy window (the control's windows have the same length)."""
    return int(_get(rec, "window_frames"))


def _frozen(correct: list[int], end: int, size: int) -> float | None:
    if end <= 0 or len(correct) < end:
        return None
    seg = correct[max(0, end - size):end]
    return float(sum(seg)) / len(seg) if seg else None


def camera_points(rec: Any) -> dict[str, list[dict[str, Any]]]:
    """Per camera: stats points with stream time, loop accuracy and the frozen control's accuracy (same window)."""
    tl = _get(rec, "timeline")
    fps = float(tl["fps"])
    w = _window_frames(rec)
    out: dict[str, list[dict[str, Any]]] = {}
    for dev, rows in _get(rec, "series").items():
        correct = _get(rec, "frozen_correct").get(dev, [])
        pts = []
        for r in rows:
            if r.get("accuracy") is None or r["index"] <= 0:
                continue
            pts.append({"t": r["index"] / fps, "index": r["index"], "frames": r["frames"], "loop": float(r["accuracy"]),
                        "frozen": _frozen(correct, r["index"], min(w, r["frames"]) if r["frames"] else w),
                        "uploads": r["uploads"], "model": r.get("model"), "wall": r["wall"]})
        out[dev] = pts
    return out


def windows(rec: Any) -> dict[str, tuple[float, float]]:
    """The stream-second ranges the summary averages over (see the module docstring)."""
    tl = _get(rec, "timeline")
    w_s = _window_frames(rec) / float(tl["fps"])
    end = float(tl["stream_s"])
    after = max(tl["newclass_s"] + tl["ramp_s"] + w_s, 0.8 * end)
    return {"initial": (0.0, w_s), "before_drift": (max(0.0, tl["lighting_s"] - w_s), tl["lighting_s"]),
            "after_lighting": (tl["lighting_s"] + tl["ramp_s"] + w_s, tl["newclass_s"]),
            "after_drift": (after, end + 60.0)}


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def accuracy_summary(rec: Any) -> dict[str, Any]:
    pts = camera_points(rec)
    win = windows(rec)
    w = _window_frames(rec)
    init, before, before_f, al, al_f, ad, ad_f = [], [], [], [], [], [], []
    for dev, ps in pts.items():
        full = [p for p in ps if p["frames"] >= w]
        if full:
            init.append(full[0]["loop"])
        pre = [p for p in ps if p["t"] <= win["before_drift"][1] + 1e-6 and p["frames"] >= w]
        if pre:
            before.append(pre[-1]["loop"])
            before_f.append(pre[-1]["frozen"])
        lo, hi = win["after_lighting"]
        mid = [p for p in ps if lo <= p["t"] <= hi]
        al.append(_mean([p["loop"] for p in mid]))
        al_f.append(_mean([p["frozen"] for p in mid]))
        lo, hi = win["after_drift"]
        tail = [p for p in ps if lo <= p["t"] <= hi]
        ad.append(_mean([p["loop"] for p in tail]))
        ad_f.append(_mean([p["frozen"] for p in tail]))
    return {"initial": _mean(init), "before_drift": _mean(before), "before_drift_frozen": _mean(before_f),
            "after_lighting_frozen": _mean(al_f), "after_lighting_final": _mean(al),
            "after_drift_frozen": _mean(ad_f), "after_drift_final": _mean(ad),
            "windows_s": {k: [round(a, 1), round(min(b, float(_get(rec, 'timeline')['stream_s'])), 1)]
                          for k, (a, b) in win.items()}}


def _stream_t(rec: Any, wall: float | None) -> float | None:
    t0 = _get(rec, "t0_stream")
    if wall is None or t0 is None:
        return None
    return round(wall - t0, 1)


def compute_summary(rec: Any, confusion: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json's content."""
    opts = _get(rec, "options")
    series = _get(rec, "series")
    last = {d: rows[-1] for d, rows in series.items() if rows}
    frames = int(sum(r["frames"] for r in last.values()))
    uploaded = int(sum(r["uploads"] for r in last.values()))
    tr = _get(rec, "trainer") or {}
    promo = {p["version"]: p for p in _get(rec, "promotions")}
    versions = []
    for v in _get(rec, "versions"):
        p = promo.get(v["version"])
        versions.append({"version": v["version"], "parent": v["parent"],
                         "promoted_s": _stream_t(rec, p["wall"]) if p else None,
                         "heldout_accuracy": v["accuracy"], "macro_f1": v["macro_f1"], "heldout_n": v["n"],
                         "labels": v["labels"], "samples_seen": v["samples_seen"],
                         "origin": "bootstrap" if v["parent"] is None and not p else "continual update"})
    rollouts = [{"version": r["version"], "previous": r["previous"], "waves": r["waves"],
                 "started_s": _stream_t(rec, r["started_wall"]), "seconds": r["seconds"], "outcome": r["outcome"],
                 "reason": r["reason"]} for r in _get(rec, "rollouts")]
    stream_s = float(_get(rec, "timeline")["stream_s"])
    minutes = math.ceil(stream_s / 60.0) + 1  # calendar-minute windows a run of this length can touch
    per_cam_up = {d: r["uploads"] for d, r in last.items()}
    # uploads the trainer's selection hint took come from a budget of their own (by default the camera's minute
    # budget again, edge/hints.py): each share is checked against its own cap
    per_cam_hint = {d: int((r.get("reasons") or {}).get("hint", 0)) for d, r in last.items()}
    acc = accuracy_summary(rec)
    wall_end = _get(rec, "wall_end")
    final_models = {d: r.get("model") for d, r in last.items()}
    return {
        "duration_s": round((wall_end or 0) - _get(rec, "wall_start"), 1) if wall_end else None,
        "stream_s": round(stream_s, 1),
        "setup_s": _get(rec, "setup_s"),
        "cameras": len(series),
        "scenario": opts["scenario"],
        "fps": opts["fps"],
        "frames": frames,
        "uploaded": uploaded,
        "labels_used": int(tr.get("labelled", 0) or 0),
        "upload_fraction": round(uploaded / frames, 4) if frames else None,
        "upload_budget": {"per_camera_per_minute": opts["budget"], "minute_windows": minutes,
                          "max_per_camera": opts["budget"] * minutes, "per_camera": per_cam_up,
                          "hinted_per_camera": per_cam_hint,
                          "within": all(u - per_cam_hint[d] <= opts["budget"] * minutes
                                        and per_cam_hint[d] <= opts["budget"] * minutes for d, u in per_cam_up.items())},
        "model_versions": versions,
        "rollouts": rollouts,
        "final_models": final_models,
        "accuracy": acc,
        "goals": run_goals(camera_points(rec), _get(rec, "timeline"), acc, confusion),
        "bootstrap": _get(rec, "bootstrap"),
        "timeline": {k: _get(rec, "timeline")[k] for k in ("lighting_s", "newclass_s", "ramp_s", "lighting", "newclass")},
        "broker": _get(rec, "broker"),
        "trainer": {k: tr.get(k) for k in ("counters", "per_class", "heldout", "labels", "degraded", "quarantine",
                                           "last_decision", "config", "settings")},
        "confusion": confusion,
        "warnings": chance_warnings(confusion) + trainer_warnings(tr, stream_s),
        "pids": _get(rec, "pids"),
        "interrupted": _get(rec, "interrupted"),
        "errors": _get(rec, "errors"),
    }


# -- confusion matrices -------------------------------------------------------------------------------------
def confusion_matrices(rec: Any, n: int = 480) -> dict[str, Any] | None:
    """Frozen v0001 and the final fleet model on fresh post-drift frames (an unseen seed), same frames for both.

    Each model sees them as a camera would: through the record's input calibration, fed every frame of the
    unseen stream from its first (the reference) on. A model trained on calibrated uploads scored on raw dark
    frames looked dead (22 % on a run whose cameras were at 78 %) and set off the chance-level warning."""
    try:
        from edge.model import CalibrationConfig, EdgeModel, InputCalibration, ModelSlot
        from edge.sources.sim import open_sim
    except Exception:
        return None
    tl = _get(rec, "timeline")
    versions = {v["version"]: v for v in _get(rec, "versions")}
    if not versions or not _get(rec, "confusion_url"):
        return None
    last = [rows[-1].get("model") for rows in _get(rec, "series").values() if rows]
    final = max(set(last), key=last.count) if last else None
    if final not in versions:
        final = sorted(versions)[-1]
    first = sorted(versions)[0]
    src = open_sim(_get(rec, "confusion_url"))
    labels = list(src.labels)
    start = int((tl["newclass_s"] + tl["ramp_s"]) * tl["fps"]) + 1
    picked = set(range(start, start + 3 * n, 3))
    mode = (rec.get("calibration") if isinstance(rec, dict) else getattr(rec, "calibration", None)) or "off"  # older records: none
    out: dict[str, Any] = {"labels": labels, "frames": n, "seed": _get(rec, "confusion_seed"),
                           "first_index": start, "calibration": mode, "models": {}}
    for name, version in (("frozen", first), ("final", final)):
        cal = InputCalibration(CalibrationConfig(mode=mode)) if mode != "off" else None
        slot = ModelSlot(threads=1, calibration=cal)
        slot.swap(EdgeModel.load(versions[version]["path"]))
        model = slot.get()
        frames, preds = [], []
        for i in range(start + 3 * n):
            f = src.frame_at(i) if (cal is not None or i in picked) else None
            if cal is not None:
                cal.observe(model.resize(f.image))
                if cal.update(False):
                    cal.apply(model)
            if i in picked:
                frames.append(f)
                preds.append(model.infer([f.image])[0].label)
        m = np.zeros((len(labels), len(labels)), int)
        for f, p in zip(frames, preds):
            if p in labels:
                m[labels.index(str(f.truth)), labels.index(p)] += 1
        out["models"][name] = {"version": version, "matrix": m.tolist(),
                               "accuracy": round(float(np.trace(m) / max(1, m.sum())), 4),
                               "calibration_gain": cal.stats()["gain"] if cal is not None else None}
    return out


def chance_warnings(confusion: dict[str, Any] | None) -> list[str]:
    """A loud line for every model of the confusion panel that predicts one class or is at chance level on the
    post-drift frames (:func:`trainer.evaluate.collapse_reason`): a dead model must not look like a result."""
    if not confusion:
        return []
    from trainer.evaluate import collapse_reason

    out = []
    for name, m in confusion["models"].items():
        cm = np.asarray(m["matrix"])
        truth = np.repeat(np.arange(len(cm)), cm.sum(1))
        pred = np.concatenate([np.repeat(np.arange(len(cm)), row) for row in cm]) if cm.sum() else truth
        why = collapse_reason(pred, truth, len(cm))
        if why:
            out.append(f"the {name} model {m['version']} {why} on {cm.sum()} post-drift frames: CHANCE LEVEL")
    return out


def trainer_warnings(tr: dict[str, Any], stream_s: float) -> list[str]:
    """A loud line when the trainer learned nothing the fleet could use, with why: a demo whose cameras ran the
    bootstrap model all along must say so, not look like a loop that converged (issue 16: "nothing warned")."""
    counters = tr.get("counters") or {}
    out = []
    if not counters.get("promotions") and tr.get("labelled"):
        out.append(f"the trainer promoted no version in {stream_s:.0f} s of stream: {tr['labelled']} labels, "
                   f"{counters.get('updates', 0)} updates, {counters.get('quarantined', 0)} quarantined; last gate "
                   f"decision: {tr.get('last_decision') or 'none'}")
    if tr.get("quarantine"):
        out.append(f"the trainer quarantined {len(tr['quarantine'])} batch(es), the first for "
                   f"{tr['quarantine'][0]} (`edgeloop trainer quarantine list`)")
    for part, why in (tr.get("degraded") or {}).items():
        out.append(f"the trainer ended degraded ({part}): {why}")
    return out


# -- the picture --------------------------------------------------------------------------------------------
def _first_activations(rec: Any) -> dict[str, float]:
    """Version -> stream second of its first activation on any camera."""
    first: dict[str, float] = {}
    for e in _get(rec, "events"):
        if e["kind"] == "activated":
            t = _stream_t(rec, e["wall"])
            v = e.get("version")
            if v and t is not None and v not in first:
                first[v] = t
    return first


def render_png(rec: Any, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    tl = _get(rec, "timeline")
    stream_s = float(tl["stream_s"])
    pts = camera_points(rec)
    acc = summary["accuracy"]
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False,
                         "axes.spines.right": False})
    fig = plt.figure(figsize=(15, 11.5), dpi=110)
    gs = GridSpec(3, 3, figure=fig, height_ratios=[2.3, 1.0, 1.7], hspace=0.42, wspace=0.28,
                  left=0.055, right=0.985, top=0.875, bottom=0.065)
    n_prom = sum(1 for v in summary["model_versions"] if v["origin"] != "bootstrap")
    fig.suptitle(f"edgeloop demo - {summary['cameras']} cameras, sim:{summary['scenario']}, "
                 f"{stream_s:.0f} s stream - after drift: loop {_pct(acc['after_drift_final'])} vs frozen "
                 f"{_pct(acc['after_drift_frozen'])}",
                 fontsize=14, fontweight="bold", x=0.055, y=0.985, ha="left")
    fig.text(0.055, 0.952, f"{n_prom} versions promoted, {len(summary['rollouts'])} rollouts, "
             f"{summary['uploaded']} uploads ({_pct(summary['upload_fraction'], 1)} of {summary['frames']} frames), "
             f"broker {summary['broker'].get('kind')}", fontsize=10.5, color="#444444")

    _plot_accuracy(fig.add_subplot(gs[0, :]), rec, summary, pts)
    _plot_uploads(fig.add_subplot(gs[1, :]), rec, summary, len(pts))
    _plot_confusion(fig, gs, summary)
    _plot_numbers(fig.add_subplot(gs[2, 2]), summary, n_prom)
    fig.savefig(path)
    plt.close(fig)


def _plot_accuracy(ax: Any, rec: Any, summary: dict[str, Any], pts: dict[str, list[dict[str, Any]]]) -> None:
    """Panel 1: every camera's rolling accuracy, their mean, and the frozen control on the same frames."""
    stream_s = float(_get(rec, "timeline")["stream_s"])
    grid = np.arange(0.0, stream_s + 0.01, 1.0)
    loops, frozens = [], []
    for k, (dev, ps) in enumerate(sorted(pts.items())):
        if not ps:
            continue
        t = np.array([p["t"] for p in ps])
        ax.plot(t, [p["loop"] for p in ps], color=CAM_COLORS[k % len(CAM_COLORS)], lw=1.0, alpha=0.55,
                label=f"{dev} (loop)")
        loops.append(np.interp(grid, t, [p["loop"] for p in ps], left=np.nan, right=np.nan))
        fz = [(p["t"], p["frozen"]) for p in ps if p["frozen"] is not None]
        if fz:
            ft, fv = zip(*fz)
            frozens.append(np.interp(grid, ft, fv, left=np.nan, right=np.nan))
    if loops:
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=RuntimeWarning)
                ax.plot(grid, np.nanmean(loops, axis=0), color=LOOP_COLOR, lw=2.8, label="loop, mean of cameras")
                if frozens:
                    ax.plot(grid, np.nanmean(frozens, axis=0), color=FROZEN_COLOR, lw=2.4, ls="--",
                            label="frozen v0001 (control), same frames")
    ymin = 0.0
    all_vals = [p["loop"] for ps in pts.values() for p in ps] + [p["frozen"] for ps in pts.values() for p in ps
                                                                  if p["frozen"] is not None]
    if all_vals:
        ymin = max(0.0, math.floor((min(all_vals) - 0.05) * 10) / 10)
    ax.set_ylim(ymin, 1.02)
    ax.set_xlim(0, stream_s)
    _mark_accuracy(ax, rec, summary, pts, ymin)


def _mark_accuracy(ax: Any, rec: Any, summary: dict[str, Any], pts: dict[str, list[dict[str, Any]]],
                   ymin: float) -> None:
    """Panel 1's markers: drifts, first activation of each version, activations per camera; labels."""
    tl = _get(rec, "timeline")
    for t, what in ((tl["lighting_s"], "lighting change"), (tl["newclass_s"], f"new class: {tl['newclass'].split('=')[0]}")):
        ax.axvspan(t, t + tl["ramp_s"], color=DRIFT_COLOR, alpha=0.18, lw=0)
        ax.axvline(t, color=DRIFT_COLOR, lw=1.6)
        ax.text(t + 0.4, 1.0, what, color=DRIFT_COLOR, fontsize=10, fontweight="bold", va="top", ha="left",
                transform=ax.get_xaxis_transform())
    firsts = _first_activations(rec)
    for i, (v, t) in enumerate(sorted(firsts.items(), key=lambda kv: kv[1])):
        ax.axvline(t, color="#1f4e99", lw=1.0, ls=":", alpha=0.9)
        ax.text(t + 0.3, 0.02 + 0.07 * (i % 3), f"{v} active", color="#1f4e99", fontsize=8.5,
                transform=ax.get_xaxis_transform(), ha="left", va="bottom",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    # per-camera activation ticks on the camera's own curve
    act = [e for e in _get(rec, "events") if e["kind"] == "activated"]
    for e in act:
        dev = e.get("device")
        ps = pts.get(dev) or []
        t = _stream_t(rec, e["wall"])
        if not ps or t is None:
            continue
        k = sorted(pts).index(dev)
        y = float(np.interp(t, [p["t"] for p in ps], [p["loop"] for p in ps]))
        ax.plot([t], [y], marker="v", ms=7, color=CAM_COLORS[k % len(CAM_COLORS)], mec="black", mew=0.6, zorder=5)
    aw = summary["accuracy"]["windows_s"]["after_drift"]
    ax.axvspan(aw[0], aw[1], ymin=0, ymax=0.025, color=LOOP_COLOR, alpha=0.5, lw=0)
    ax.text(aw[0], ymin + 0.03 * (1.02 - ymin), " after-drift window", fontsize=8, color=LOOP_COLOR, va="bottom")
    ax.set_ylabel(f"rolling accuracy vs ground truth\n(last {_window_frames(rec)} frames)")
    ax.set_xlabel("stream time (s)   -   markers: drift (orange), first activation of a version (blue dotted), "
                  "activation on a camera (triangle)")
    ax.set_title("Accuracy over time: the loop vs the frozen bootstrap model on the same frames", loc="left",
                 pad=22)
    ax.grid(alpha=0.25)
    ax.legend(loc="lower right", fontsize=8.5, ncol=min(4, len(pts) + 2), frameon=False,
              bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2)


def _plot_uploads(ax2: Any, rec: Any, summary: dict[str, Any], n_cameras: int) -> None:
    """Panel 2: uploads per minute, stacked by camera, against the fleet's budget."""
    tl = _get(rec, "timeline")
    stream_s = float(tl["stream_s"])
    bin_s = 10.0 if stream_s >= 60 else 5.0
    edges = np.arange(0.0, stream_s + bin_s, bin_s)
    total = np.zeros(len(edges) - 1)
    bottoms = np.zeros(len(edges) - 1)
    for k, (dev, rows) in enumerate(sorted(_get(rec, "series").items())):
        if not rows:
            continue
        fps = float(tl["fps"])
        t = np.array([0.0] + [r["index"] / fps for r in rows])
        u = np.array([0.0] + [float(r["uploads"]) for r in rows])
        cum = np.interp(edges, t, u)
        per = np.diff(cum) * (60.0 / bin_s)
        ax2.bar(edges[:-1], per, width=bin_s * 0.9, bottom=bottoms, align="edge",
                color=CAM_COLORS[k % len(CAM_COLORS)], alpha=0.8, label=dev)
        bottoms += per
        total += per
    budget = summary["upload_budget"]["per_camera_per_minute"] * summary["cameras"]
    ax2.axhline(budget, color="black", lw=1.2, ls="--")
    # The budget counts per calendar minute and a minute's budget may be spent in a burst (a drift makes many
    # frames uncertain at once), so a 10 s bin's rate can rise above this line while every minute stays within it.
    hinted = sum(summary["upload_budget"].get("hinted_per_camera", {}).values())
    ax2.text(stream_s, budget, f"fleet budget {budget} per calendar minute, and as many again for the selection hint "
             f"({hinted} uploads); bursts within a minute may rise above",
             va="bottom", ha="right", fontsize=9)
    for t in (tl["lighting_s"], tl["newclass_s"]):
        ax2.axvline(t, color=DRIFT_COLOR, lw=1.4)
    ax2.set_xlim(0, stream_s)
    ax2.set_ylim(0, max(budget * 1.25, float(total.max()) * 1.1 if len(total) else 1))
    ax2.set_ylabel("uploads / min")
    ax2.set_xlabel("stream time (s)")
    ax2.set_title(f"Uploads per minute (rate in {bin_s:.0f} s bins, stacked by camera): uncertain frames sent for "
                  "labelling",
                  loc="left")
    ax2.legend(loc="upper left", fontsize=8, ncol=min(8, n_cameras), frameon=False)
    ax2.grid(axis="y", alpha=0.25)


def _plot_confusion(fig: Any, gs: Any, summary: dict[str, Any]) -> None:
    """Panel 3, left: the frozen and the final model's confusion matrices on unseen post-drift frames."""
    conf = summary.get("confusion")
    for col, name in ((0, "frozen"), (1, "final")):
        axc = fig.add_subplot(gs[2, col])
        if not conf or name not in conf.get("models", {}):
            axc.axis("off")
            continue
        m = np.array(conf["models"][name]["matrix"], float)
        labels = conf["labels"]
        rows = m.sum(axis=1, keepdims=True)
        norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        axc.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if m[i, j] > 0:
                    axc.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8.5,
                             color="white" if norm[i, j] > 0.55 else "black")
        axc.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axc.set_yticks(range(len(labels)), labels)
        axc.set_xlabel("predicted")
        axc.set_ylabel("true")
        info = conf["models"][name]
        axc.set_title(f"{'Frozen' if name == 'frozen' else 'Final'} model {info['version']}: accuracy "
                      f"{_pct(info['accuracy'])}\non {conf['frames']} unseen post-drift frames"
                      + (", calibrated" if conf.get("calibration", "off") != "off" else ""), loc="left",
                      fontsize=10)
        axc.spines[:].set_visible(False)


def _plot_numbers(axt: Any, summary: dict[str, Any], n_prom: int) -> None:
    """Panel 3, right: the summary's headline numbers as a table."""
    acc = summary["accuracy"]
    axt.axis("off")
    lines = [("accuracy (mean of cameras)", ""), ("  initial (bootstrap model)", _pct(acc["initial"])),
             ("  before drift", _pct(acc["before_drift"])),
             ("  after lighting: frozen / loop", f"{_pct(acc['after_lighting_frozen'])} / {_pct(acc['after_lighting_final'])}"),
             ("  after both drifts: frozen", _pct(acc["after_drift_frozen"])),
             ("  after both drifts: loop", _pct(acc["after_drift_final"])),
             ("", ""), ("labels used", f"{summary['labels_used']}"),
             ("uploads / frames", f"{summary['uploaded']} / {summary['frames']} ({_pct(summary['upload_fraction'], 1)})"),
             ("versions promoted", f"{n_prom}"),
             ("rollouts completed", f"{sum(1 for r in summary['rollouts'] if r['outcome'] == 'completed')}"
                                    f" of {len(summary['rollouts'])}"),
             ("final models", ", ".join(sorted(set(str(v) for v in summary["final_models"].values())))),
             ("run time", f"{summary['duration_s']} s (setup {summary['setup_s']} s)")]
    y = 0.98
    for k, v in lines:
        bold = v == "" and k != ""
        axt.text(0.0, y, k, fontsize=10, fontweight="bold" if bold else "normal", va="top", transform=axt.transAxes)
        axt.text(1.0, y, v, fontsize=10, va="top", ha="right", transform=axt.transAxes,
                 fontweight="bold" if "loop" in k and "after both" in k else "normal")
        y -= 0.075
    axt.set_title("Numbers", loc="left")


def _pct(v: Any, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f} %" if isinstance(v, (int, float)) else "-"


# -- the story ----------------------------------------------------------------------------------------------
def render_md(rec: Any, s: dict[str, Any]) -> str:
    acc = s["accuracy"]
    tl = s["timeline"]
    boot = s.get("bootstrap") or {}
    promoted = [v for v in s["model_versions"] if v["origin"] != "bootstrap"]
    done = [r for r in s["rollouts"] if r["outcome"] == "completed"]
    gain = (acc["after_drift_final"] - acc["after_drift_frozen"]
            if acc["after_drift_final"] is not None and acc["after_drift_frozen"] is not None else None)
    newclass = str(tl["newclass"]).split("=")[0]
    lines = [
        "# edgeloop demo report", "",
        "![accuracy, uploads and confusion matrices](report.png)", "",
        "## What happened", "",
        f"{s['cameras']} simulated cameras (`sim:{s['scenario']}`, {s['fps']:g} fps each, their own seeds) streamed "
        f"for {s['stream_s']:.0f} s through a {s['broker'].get('kind')} broker. The first model, "
        f"{boot.get('version', 'v0001')}, was bootstrapped on {boot.get('train', '?')} rendered frames of the initial "
        f"conditions ({', '.join(boot.get('labels', []))}) and reached {_pct(boot.get('accuracy'))} on its held-out "
        f"slice; on the live streams it started at {_pct(acc['initial'])}.", "",
        f"At {tl['lighting_s']:.0f} s the lighting changed on every camera ({tl['lighting']}), and at "
        f"{tl['newclass_s']:.0f} s a new defect class, **{newclass}**, appeared. The frozen bootstrap model, "
        f"evaluated on exactly the frames each camera processed, fell to {_pct(acc['after_lighting_frozen'])} after "
        f"the lighting change and to {_pct(acc['after_drift_frozen'])} once both drifts were on: it cannot name a "
        f"class it has never seen.", "",
        f"The cameras uploaded {s['uploaded']} uncertain frames ({_pct(s['upload_fraction'], 1)} of {s['frames']}, "
        f"within a budget of {s['upload_budget']['per_camera_per_minute']} per camera per minute, and as many "
        f"again for the trainer's selection hint ({sum(s['upload_budget'].get('hinted_per_camera', {}).values())} "
        f"uploads): {'yes' if s['upload_budget']['within'] else 'NO'}); the oracle labelled {s['labels_used']} of "
        f"them. The "
        f"trainer promoted {len(promoted)} versions through its held-out gate and the controller ran "
        f"{len(s['rollouts'])} canary rollouts ({len(done)} completed). With the loop, accuracy after both drifts "
        f"was **{_pct(acc['after_drift_final'])}** against {_pct(acc['after_drift_frozen'])} for the frozen model"
        + (f" ({100 * gain:+.1f} points)." if gain is not None else "."), "",
        "## Accuracy", "",
        "| window (stream s) | frozen v0001 | loop |", "|---|---:|---:|",
        f"| initial ({_w(acc, 'initial')}) | {_pct(acc['initial'])} | {_pct(acc['initial'])} |",
        f"| before drift ({_w(acc, 'before_drift')}) | {_pct(acc['before_drift_frozen'])} | {_pct(acc['before_drift'])} |",
        f"| after lighting ({_w(acc, 'after_lighting')}) | {_pct(acc['after_lighting_frozen'])} | "
        f"{_pct(acc['after_lighting_final'])} |",
        f"| after both drifts ({_w(acc, 'after_drift')}) | {_pct(acc['after_drift_frozen'])} | "
        f"**{_pct(acc['after_drift_final'])}** |", "",
        "Loop figures are the cameras' own rolling accuracy against ground truth (stats messages); frozen figures "
        "are the bootstrap model re-run on the same frame indices (the simulator is deterministic per seed and "
        "frame), over windows of the same length ending at the same frame.", "",
        "## Model versions", "",
        "| version | parent | promoted at (s) | held-out accuracy | macro-F1 | classes |", "|---|---|---:|---:|---:|---|",
    ]
    for v in s["model_versions"]:
        lines.append(f"| {v['version']} | {v['parent'] or '-'} | "
                     f"{v['promoted_s'] if v['promoted_s'] is not None else 'bootstrap'} | {_pct(v['heldout_accuracy'])} | "
                     f"{_pct(v['macro_f1'])} | {', '.join(v['labels'] or [])} |")
    lines += ["", "## Rollouts", "", "| version | rollback target | started (s) | waves | seconds | outcome |",
              "|---|---|---:|---:|---:|---|"]
    for r in s["rollouts"]:
        lines.append(f"| {r['version']} | {r['previous'] or '-'} | {r['started_s']} | {r['waves']} | "
                     f"{r['seconds'] if r['seconds'] is not None else '-'} | {r['outcome']}"
                     f"{' (' + r['reason'] + ')' if r['reason'] else ''} |")
    conf = s.get("confusion")
    if conf:
        f, g = conf["models"].get("frozen", {}), conf["models"].get("final", {})
        lines += ["", "## Confusion matrices", "",
                  f"On {conf['frames']} unseen frames after both drifts (seed {conf['seed']}, from frame "
                  f"{conf['first_index']}): frozen {f.get('version')} {_pct(f.get('accuracy'))}, final "
                  f"{g.get('version')} {_pct(g.get('accuracy'))}. Rows are the true classes, columns the predictions "
                  "(see the picture)."
                  + (f" Both models see the frames through the cameras' input calibration (`{conf['calibration']}`), "
                     "as a camera would run them; the accuracy table's frozen control runs v0001 without it."
                     if conf.get("calibration", "off") != "off" else "")]
    events = [e for e in _get(rec, "events") if e["kind"] not in ("setup",)]
    if events:
        lines += ["", "## Events", "", "```"]
        for e in events:
            t = _stream_t(rec, e["wall"])
            lines.append(f"{t if t is not None else '-':>7} s  {e['kind']:<12} {e['text']}")
        lines += ["```"]
    lines += _goals_md(s)
    if s.get("errors") or s.get("warnings"):
        lines += ["", "## Problems", ""] + [f"- **{w}**" for w in s.get("warnings") or []] + [f"- {e}" for e in s.get("errors") or []]
    lines += ["", f"Run time {s['duration_s']} s (setup {s['setup_s']} s). Numbers: `summary.json`; raw record: "
              "`record.json`; logs: `logs/`.", ""]
    return "\n".join(lines)


def _goals_md(s: dict[str, Any]) -> list[str]:
    """The adaptation goals as this run measured them (deploy/demo/goals.py says how)."""
    g = s.get("goals")
    if not g:
        return []
    return ["", "## Goals", "", f"The adaptation goals on this run ({'all met' if g['met'] else 'not all met'}; "
            f"`new_class_recall` is {g.get('new_class') or 'the new class'} on the confusion panel's frames, "
            "`worst_window` the fleet's loop minus frozen after the lighting change, in points):", "", "```"] \
        + format_goals(g) + ["```"]


def _w(acc: dict[str, Any], key: str) -> str:
    a, b = acc["windows_s"][key]
    return f"{a:.0f}-{b:.0f}"


# -- entry points -------------------------------------------------------------------------------------------
def write_report(out: Path, rec: Any) -> dict[str, Any]:
    """Write record.json, summary.json, report.png and report.md into ``out``; returns the summary."""
    out = Path(out)
    raw = asdict(rec) if is_dataclass(rec) else dict(rec)
    (out / "record.json").write_text(json.dumps(raw, default=str))
    try:
        conf = confusion_matrices(raw)
    except Exception as exc:  # the numbers and the picture matter more than this panel
        conf = None
        raw.setdefault("errors", []).append(f"confusion matrix: {type(exc).__name__}: {exc}")
    summary = compute_summary(raw, conf)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    render_png(raw, summary, out / "report.png")
    (out / "report.md").write_text(render_md(raw, summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Re-render the report of an earlier run from its record.json: ``python -m deploy.demo.report OUT_DIR``."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "./edgeloop-demo")
    rec = json.loads((out / "record.json").read_text())
    missing = [k for k in ("window_frames", "confusion_url", "confusion_seed") if k not in rec]
    if missing:
        print(f"{out / 'record.json'}: written by an older edgeloop (no {', '.join(missing)}); run the demo again",
              file=sys.stderr)
        return 2
    s = write_report(out, rec)
    print(json.dumps(s["accuracy"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
