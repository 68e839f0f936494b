"""Where a new class's frames go, frame by frame: one ``bench adaptation`` run traced per camera frame.

The benchmark's rows say how well the loop ended; they do not say why a new class is learnt slowly. This
runs one (scenario, seed, variant) exactly as ``bench.adaptation.run_one`` does, records for every camera
frame its true class, the camera's top-1 and whether (and why) it was uploaded, and answers the question the
selection hint is about (README, Adaptation #47): between the new class's arrival and ``--until`` seconds,
what do the cameras call its frames, how much of each predicted label is it, and how many of its frames
were uploaded (and for which reason) by then, against the other classes' uploads in the same seconds.

    python -m bench.adaptation_trace --scenario default --seed 0 --variant demo --until 100
    python -m bench.adaptation_trace --scenario default --seed 0 --variant no-hint --until 100 --json out.json

One run takes what one ``bench adaptation`` run takes (~3 min for ``demo``); nothing is cached or saved to
``bench/results.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.adaptation import FPS, STREAM_S, bootstrap_state, run_one_settings, scenarios, variants
from bench.adaptation_loop import Hooks

__all__ = ["FrameLog", "trace", "summarise", "main"]


class FrameLog:
    """An ``on_frame`` hook that keeps (camera, frame index, t, top-1, uploaded, reason) for every frame, and
    passes each call on to the variant's own hook."""

    def __init__(self, inner: Hooks | None) -> None:
        self.inner = inner or Hooks()
        self.rows: list[tuple[int, int, float, str, bool, str | None]] = []
        self._i: Counter[int] = Counter()

    def hooks(self) -> Hooks:
        return Hooks(make_strategy=self.inner.make_strategy, on_frame=self.on_frame, on_tick=self.inner.on_tick,
                     on_camera=self.inner.on_camera)

    def on_frame(self, k: int, t: float, cam: Any, res: Any) -> None:
        d = res.decision
        self.rows.append((k, self._i[k], t, res.prediction.label, bool(d.selected), d.reason if d.selected else None))
        self._i[k] += 1
        if self.inner.on_frame is not None:
            self.inner.on_frame(k, t, cam, res)


def trace(scenario: str, seed: int, variant: str, stream_s: float = STREAM_S, cameras: int = 4) -> dict[str, Any]:
    """Run the loop once with a :class:`FrameLog`; returns the frames (with their true class), the events and
    the new class's name and arrival time."""
    from bench.adaptation_loop import run_loop
    from deploy.demo.plan import camera_seed

    sc = scenarios(stream_s)[scenario]
    var = variants()[variant]
    s, (kind, boot_opts) = run_one_settings(scenario, seed, variant, False, stream_s, cameras)
    state = bootstrap_state(kind, seed, boot_opts)
    log = FrameLog(var.hooks() if var.hooks else None)
    with tempfile.TemporaryDirectory(prefix="edgeloop-trace-") as tmp:
        tr = run_loop(state, Path(tmp) / "run", [sc.url(camera_seed(seed, k), FPS) for k in range(cameras)], s,
                      seed, log.hooks())
    frames = [{"camera": k, "t": round(t, 3), "truth": tr.labels[int(tr.truth[k][i])], "predicted": pred,
               "uploaded": up, "reason": why} for k, i, t, pred, up, why in log.rows]
    arrival = min((start for item, start, _ in sc.drifts if item.startswith("newclass:")), default=None)
    before = {f["truth"] for f in frames if arrival is None or f["t"] < arrival}
    new = sorted({f["truth"] for f in frames} - before)  # classes no camera saw before the arrival
    return {"scenario": scenario, "seed": seed, "variant": variant, "frames": frames,
            "hints": [e for e in tr.events if e["kind"] == "hint"], "new_classes": new, "arrival_s": arrival}


def summarise(run: dict[str, Any], until: float) -> dict[str, Any]:
    """The new classes (together) between their arrival and ``until``: their frames by predicted label and
    their share of each predicted label; their uploads by then (by reason) and by the end; the other classes'
    uploads in the same seconds."""
    new, t0 = set(run["new_classes"]), run["arrival_s"]
    if t0 is None or not new:
        raise ValueError(f"scenario {run['scenario']!r} brings no new class")
    span = [f for f in run["frames"] if t0 <= f["t"] < until]
    seen = [f for f in span if f["truth"] in new]
    called = Counter(f["predicted"] for f in seen)
    per_pred = Counter(f["predicted"] for f in span)
    mine = [f for f in run["frames"] if f["truth"] in new and f["uploaded"]]
    return {
        "new_classes": sorted(new), "arrival_s": t0, "until_s": until,
        "frames_seen": len(seen),
        "called": dict(called.most_common()),
        "share_of_predicted": {p: round(n / per_pred[p], 3) for p, n in called.most_common() if p not in new},
        "uploads_by_until": sum(1 for f in mine if f["t"] < until),
        "uploads_by_until_reason": dict(Counter(f["reason"] for f in mine if f["t"] < until).most_common()),
        "uploads_by_end": len(mine),
        "other_uploads_in_span": sum(1 for f in span if f["uploaded"] and f["truth"] not in new),
        "first_hint_s": min((h["t"] for h in run["hints"] if h.get("boost")), default=None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.adaptation_trace", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="default", help="a bench adaptation scenario with a new class "
                    "(default, newclass, digits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="demo", help="a loop variant (edgeloop bench adaptation --list-variants)")
    ap.add_argument("--until", type=float, default=100.0, help="count up to this stream second (default 100)")
    ap.add_argument("--stream", type=float, default=STREAM_S, help="stream seconds (default the demo's 127)")
    ap.add_argument("--json", type=Path, help="also write every frame and the summary here")
    a = ap.parse_args(argv)
    if a.scenario not in scenarios(a.stream):
        ap.error(f"unknown scenario {a.scenario!r} (known: {', '.join(scenarios(a.stream))})")
    if a.variant not in variants():
        ap.error(f"unknown variant {a.variant!r} (edgeloop bench adaptation --list-variants)")
    run = trace(a.scenario, a.seed, a.variant, a.stream)
    summary = summarise(run, a.until)
    print(json.dumps(summary, indent=2))
    if a.json:
        a.json.write_text(json.dumps({**run, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
