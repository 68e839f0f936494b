"""Benchmark: model freshness -- from a drifted frame to every camera running a model trained on it.

    python -m bench.freshness [--quick] [--duration 150] [--cameras 4] [--json]
    edgeloop bench freshness [...]        # same, through the harness (bench/run_all.py)

Writes bench/results/freshness.json. Why this benchmark: the loop's promise is that the fleet adapts to
drift, and how fast it does is the sum of many small waits spread over three programs (edge outbox, trainer
buffer/update/gate/export, controller waves, device swap). Only a per-sample timeline across all of them says
which wait matters; tuning any stage without it is guesswork.

What runs -- ``edgeloop demo``'s own phases (:class:`deploy.demo.app.DemoApp`, subclassed here, not
copied), with the demo's *default* timing-relevant settings (:mod:`deploy.demo.plan`):

* the embedded broker (mosquitto if installed);
* a bootstrap of the scenario's net (``small_cnn128`` on ``sim:parts`` ROI crops, or ``--arch``; the demo's
  bootstrap phase), before anything else competes for the CPU;
* :class:`trainer.service.TrainerService` in this process: oracle labeller, the demo's update settings
  (``deploy.demo.plan.trainer_settings``: B=32, min batch 8, K=40 Adam steps (20 on a machine the
  bootstrap finds slow), T = max(5 s, stream/15),
  1 torch thread) and the scenario's learner (``deploy.demo.plan.demo_learner``: frozen blocks, rehearsal
  rounds, dihedral, paired and weighted gate), gate on every update, dynamo ONNX export;
* :class:`deploy.service.DeployService` (``edgeloop deploy run``'s controller, promotion intake and
  :class:`deploy.rollout_feeder.RolloutFeeder`, fed by the trainer's announcements over MQTT; one rollout at
  a time, newer promotions coalesced while one is in progress) with ``deploy.demo.plan.demo_policy``:
  waves 5 %, 25 %, 100 %, soak max(3 s, stream/25);
* ``--cameras`` real ``edgeloop edge`` processes (the demo's camera phase: 15 fps realtime sim:parts,
  40 uploads/min, p_min 0.03), each with the demo's lighting drift (darker + colour cast, 2 s ramp) a few
  seconds into its stream and no new class;
* the demo's monitor, whose model-status log gives the delivery times.

What differs from the demo, on purpose: no frozen control (nothing here is compared with v0001, and its CPU
would be measured as load), its own drift plan, a loop that ends once every counted sample has reached the
whole fleet, the trainer's store and timeline read instead of a report, and a bootstrap set of 2400 frames
(the demo's default is 4800, 1600 until 2026-12-01; BENCHMARKS.md's figures were measured with 2400).

"Default demo settings" means the settings ``edgeloop demo`` derives for its default 180 s run, whose stream
is about 120 s (``DEMO_STREAM_S``); they do not shrink with this benchmark's ``--duration``, so quick and
full runs measure the same configuration.

Per-sample timeline (wall clock, one machine): selected (the sample's header ``ts``, set when the edge
spools it) -> stored (the store's ``received``) -> labelled (``labelled_at``) -> start / end of training of
the first update that trained on it, gate decision, export + registration + announcement (the trainer's
``timeline.jsonl``) -> start of the rollout that delivered it (controller SQLite) -> the last camera's
``verified`` and ``active`` status on ``dev/+/model/status`` (arrival times at a subscriber here). A model
is "trained on" a sample if it comes from that update or a later one (the learner is cumulative); the sample
is delivered at the first moment every camera simultaneously runs such a model (statuses carry the version
each device runs, so a rollback counts as not running it). Stages, which add up to the total:

``upload``  selected -> stored;  ``label``  stored -> labelled;  ``buffer_wait``  labelled -> its update starts;
``update``  decoding + optimiser steps;  ``gate_retry``  (0 unless the gate kept that update's candidate) until
the first promoted update containing it finished training;  ``evaluation``  that update's gate;
``export``  ONNX export + registry + announcement;  ``rollout_wait``  promoted -> start of the rollout that
delivered it (the feeder waits for the rollout in progress);  ``rollout``  rollout start -> the last camera
has the model verified (waves, soaks, download);  ``swap``  that camera's load + smoke test + swap.

Only *drifted* frames count (frame index at or after the drift start) that went to training (held-out
samples are never trained on), selected before a cut-off; after the cut-off the run continues until all of
them are delivered (or the time is up), so late samples are not censored away. ``total`` is selected -> every
camera; ``total_p50_s``/``total_p95_s`` are over *every* counted sample, one never delivered (the gate kept its
update and every later one until the end, or the run ended) counting as infinitely late -- ``None`` when the
percentile falls among those. ``delivered_*``, ``labelled_to_fleet_*`` and the stage split are over the
delivered samples; ``delivered_fraction`` says how many that is. Machine load is sampled during the run.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from deploy.demo.app import DemoApp
from deploy.demo.plan import (P_MIN, SCENARIOS, DemoOptions, Timeline, demo_arch, demo_learner, demo_policy,
                              demo_trainer_settings, soaked_waves, trainer_settings)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "freshness.json"

GOAL_S = 30.0
GOAL = "drifted frame labelled -> every camera runs a model trained on it: p50 <= 30 s (default demo settings)"
STAGES: tuple[str, ...] = ("upload", "label", "buffer_wait", "update", "gate_retry", "evaluation", "export",
                           "rollout_wait", "rollout", "swap")
DEMO_STREAM_S = 120.0   # stream seconds of a default `edgeloop demo` (180 s budget - bootstrap - reserves)
DEFAULT_DURATION_S = 150.0
QUICK_DURATION_S = 45.0
DEFAULT_CAMERAS = 4     # the demo's default
QUICK_CAMERAS = 4       # fewer cameras = fewer uploads = the first update comes later than a quick run lasts
DEMO_DURATION_S = 180.0  # `edgeloop demo`'s default budget, from which its bootstrap budget follows
DRIFT_AT_S = 5.0        # stream seconds (per camera) when the lighting starts to change
QUICK_DRIFT_AT_S = 3.0
DRIFT_RAMP_S = 2.0

log = logging.getLogger("edgeloop.bench.freshness")


# =========================================================================== statistics
def pcts(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/max in seconds (nearest rank, as bench/transport.py), mean, and the count."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    v = sorted(values)

    def q(p: float) -> float:
        rank = math.ceil(p * len(v) - 1e-9)
        return round(v[min(len(v), max(1, rank)) - 1], 3)

    return {"n": len(v), "p50": q(0.50), "p95": q(0.95), "max": round(v[-1], 3),
            "mean": round(statistics.fmean(v), 3)}


# =========================================================================== analysis (pure)
def fleet_steps(statuses: list[dict[str, Any]], cameras: Sequence[str], ver_update: dict[str, int],
                baseline: str) -> list[dict[str, Any]]:
    """When the fleet's freshness level changed: ``level`` = the oldest update any camera's model includes.

    Each status message names the version the device runs *now* (``active``: after a swap the new one,
    after a rollback the old one). Every camera starts on ``baseline``. A step is recorded whenever the
    minimum over cameras changes, with the camera and version whose message changed it.
    """
    running = {c: baseline for c in cameras}
    level = min(ver_update.get(v, -1) for v in running.values()) if running else -1
    steps: list[dict[str, Any]] = []
    for st in sorted(statuses, key=lambda s: s["wall"]):
        dev = st["device"]
        if dev not in running:
            continue
        now_runs = st.get("active") or (st["version"] if st["state"] == "active" else None)
        if not now_runs or now_runs == running[dev]:
            continue
        running[dev] = now_runs
        new_level = min(ver_update.get(v, -1) for v in running.values())
        if new_level != level:
            level = new_level
            steps.append({"wall": st["wall"], "level": level, "device": dev, "version": now_runs,
                          "rollout": st.get("rollout")})
    return steps


def analyze(raw: dict[str, Any]) -> dict[str, Any]:
    """Per-sample timelines and the figures, from what a run collected (see :func:`collect_raw`).

    Pure (no I/O, no clock), so it runs on partial data during the run (to stop once every eligible sample
    is delivered) and in tests on synthetic data.
    """
    cameras: list[str] = list(raw["cameras"])
    baseline: str = raw["baseline"]
    updates = sorted(raw["updates"], key=lambda u: u["update"])
    # a rehearsal round's line carries the last update before it: the version it promoted holds that update
    ver_update = {baseline: 0, **{u["version"]: int(u["update"]) for u in updates if u.get("version")}}
    first_update: dict[str, dict[str, Any]] = {}
    for u in updates:
        for sid in u.get("samples") or []:
            first_update.setdefault(sid, u)
    promoted = [u for u in updates if u.get("version") and u.get("announced")]
    rollouts = {r["id"]: r for r in raw["rollouts"]}
    steps = fleet_steps(raw["statuses"], cameras, ver_update, baseline)
    by_dev: dict[str, list[dict[str, Any]]] = {}
    for st in raw["statuses"]:
        by_dev.setdefault(st["device"], []).append(st)
    for rows in by_dev.values():
        rows.sort(key=lambda s: s["wall"])

    rows_out: list[dict[str, Any]] = []
    eligible = pending = 0
    for s in raw["samples"]:
        if s.get("heldout") or s.get("frame_index", -1) < raw["drift_index"] or s["ts"] > raw["cutoff_wall"]:
            continue
        if s.get("device") not in cameras:
            continue
        eligible += 1
        u = first_update.get(s["id"])
        step = None
        if u is not None:
            step = next((st for st in steps if st["level"] >= int(u["update"])), None)
        p = next((x for x in promoted if x["update"] >= int(u["update"])), None) if u is not None else None
        if u is None or step is None or p is None or s.get("labelled_at") is None:
            pending += 1
            continue
        r = rollouts.get(step.get("rollout") or "")
        t_active = step["wall"]
        verified = [x["wall"] for x in by_dev.get(step["device"], [])
                    if x["state"] == "verified" and x["version"] == step["version"] and x["wall"] <= t_active]
        t_verified = verified[-1] if verified else t_active
        t_roll = r["created"] if r is not None else t_verified
        # Clamp the sequence so the stages partition [selected, delivered] even if two clocks read a hair apart.
        pts = [s["ts"], s["received"], s["labelled_at"], u["start"], u["trained"]]
        if p["update"] == u["update"]:
            pts += [u["trained"], p.get("evaluated", p["trained"]), p["announced"]]
        else:
            pts += [p["trained"], p.get("evaluated", p["trained"]), p["announced"]]
        pts += [t_roll, t_verified, t_active]
        for i in range(1, len(pts)):
            pts[i] = max(pts[i], pts[i - 1])
        stages = {name: round(pts[i + 1] - pts[i], 4) for i, name in enumerate(STAGES)}
        rows_out.append({"id": s["id"], "device": s["device"], "update": int(u["update"]),
                         "promoted_update": int(p["update"]), "version": step["version"],
                         "last_camera": step["device"], "rollout": step.get("rollout"),
                         "rollout_waves": r.get("waves") if r is not None else None,
                         "selected": s["ts"], "delivered": t_active, "total": round(t_active - s["ts"], 4),
                         "labelled_to_fleet": round(t_active - max(s["labelled_at"], s["ts"]), 4),
                         "stages": stages})

    totals = [r["total"] for r in rows_out]
    first_try = pcts([r["total"] for r in rows_out if r["promoted_update"] == r["update"]])
    stage_stats = {name: pcts([r["stages"][name] for r in rows_out]) for name in STAGES}
    total_sum = sum(totals)
    shares = {name: (round(sum(r["stages"][name] for r in rows_out) / total_sum, 4) if total_sum > 0 else None)
              for name in STAGES}
    dominant = max(STAGES, key=lambda n: shares[n] or 0.0) if rows_out else None
    tot = pcts(totals)
    # Over *every* eligible sample, an undelivered one counting as "longer than anything": a p50 over the
    # delivered ones alone would look good exactly when the gate keeps most updates from ever shipping.
    everyone = pcts(totals + [math.inf] * pending)
    l2f = pcts([r["labelled_to_fleet"] for r in rows_out])
    delivering = sorted({r["version"] for r in rows_out}, key=lambda v: ver_update.get(v, 0))
    def finite(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and math.isinf(v)) else v

    return {
        "total_p50_s": finite(everyone["p50"]), "total_p95_s": finite(everyone["p95"]),
        "delivered_p50_s": tot["p50"], "delivered_p95_s": tot["p95"], "delivered_max_s": tot["max"],
        "delivered_fraction": round(len(rows_out) / eligible, 4) if eligible else None,
        "labelled_to_fleet_p50_s": l2f["p50"], "labelled_to_fleet_p95_s": l2f["p95"],
        "stages": {n: {"p50": st["p50"], "p95": st["p95"], "mean": st["mean"], "share": shares[n]}
                   for n, st in stage_stats.items()},
        "dominant_stage": dominant,
        # the rollout stage by how many waves the delivering rollout published: on the demo's 4 cameras 2 with the
        # canary, 1 for a version that only changed weights (Policy.weights_only_waves)
        "rollout_by_waves": {str(n): pcts([r["stages"]["rollout"] for r in rows_out if r["rollout_waves"] == n])
                             for n in sorted({r["rollout_waves"] for r in rows_out if r["rollout_waves"]})},
        # samples whose own update was promoted: the pipeline's latency without the gate's verdicts
        "first_try_total_p50_s": first_try["p50"], "first_try_total_p95_s": first_try["p95"],
        "first_try_samples": first_try["n"],
        "dominant_share": shares[dominant] if dominant else None,
        "samples_measured": len(rows_out), "samples_eligible": eligible, "samples_pending": pending,
        "updates": sum(1 for u in updates if "rehearsal" not in u),
        "updates_kept_by_gate": sum(1 for u in updates if u.get("promote") is False and "rehearsal" not in u),
        "rehearsals": sum(1 for u in updates if "rehearsal" in u),
        "versions_promoted": len(promoted),
        "versions_rolled_out": sum(1 for r in raw["rollouts"] if r.get("state") == "completed"),
        # rollouts on the weights-only waves that a newer version took over once every camera ran them
        "rollouts_taken_over": sum(1 for r in raw["rollouts"] if r.get("state") == "superseded"),
        "versions_delivering": delivering,
        "fleet_steps": [{"t": round(st["wall"] - raw.get("t0", st["wall"]), 2), "level": st["level"],
                         "version": st["version"], "device": st["device"]} for st in steps],
        "per_sample": rows_out,
    }


# =========================================================================== collection (I/O)
class LoadSampler:
    """Machine load while the benchmark runs: 1-min load average, and busy cores *not* ours.

    ``other_load_cores`` = system-wide busy CPU minus this process, the cameras and the broker, in cores,
    per 2-s interval (the same idea as bench/transport.py): the 2-core box is shared with other jobs,
    and a freshness number without the load it was measured under is not comparable.
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = 2.0) -> None:
        self.pids = pids
        self.interval = interval
        self.loadavg: list[float] = []
        self.other: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freshness-load", daemon=True)

    def start(self) -> "LoadSampler":
        self._thread.start()
        return self

    def _ours(self) -> float:
        import psutil

        total = 0.0
        for pid in [os.getpid(), *self.pids()]:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            psutil = None  # type: ignore[assignment]
        prev = None
        while not self._stop.is_set():
            self.loadavg.append(os.getloadavg()[0])
            if psutil is not None:
                ct = psutil.cpu_times()
                busy = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
                cur = (time.monotonic(), busy, self._ours())
                if prev is not None and cur[0] > prev[0]:
                    self.other.append(max(0.0, ((cur[1] - prev[1]) - (cur[2] - prev[2])) / (cur[0] - prev[0])))
                prev = cur
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        la, ot = self.loadavg, self.other
        return {"loadavg_1m_min": round(min(la), 2) if la else None,
                "loadavg_1m_median": round(statistics.median(la), 2) if la else None,
                "loadavg_1m_max": round(max(la), 2) if la else None,
                "other_load_cores_median": round(statistics.median(ot), 2) if ot else None,
                "other_load_cores_max": round(max(ot), 2) if ot else None,
                "cpu_count": os.cpu_count()}


def read_timeline(state_dir: Path) -> list[dict[str, Any]]:
    """The trainer's timeline.jsonl (one line per update); a torn last line (still being written) is skipped."""
    from trainer.service import TIMELINE_FILE

    out = []
    try:
        text = (state_dir / TIMELINE_FILE).read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_samples(store: Any) -> list[dict[str, Any]]:
    """Every stored sample's timeline fields (no images)."""
    return [{"id": r.sample_id, "device": r.device, "ts": r.ts, "received": r.received, "labelled_at": r.labelled_at,
             "label_seq": r.label_seq, "heldout": r.heldout, "frame_index": r.frame_index}
            for r in store.query("1", limit=1_000_000)]


def rollout_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feeder's rollout records as :func:`analyze` reads them."""
    return [{"id": r["id"], "version": r["version"], "created": r["started_wall"], "finished": r["finished_wall"],
             "state": r["outcome"], "waves": r.get("waves")} for r in records]


# =========================================================================== the run
class _SayView:
    """The benchmark's live view: the demo's setup, promotion and rollout events as progress lines."""

    KINDS = ("setup", "promoted", "completed", "rollback", "failed", "stopped")

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def start(self) -> None:
        pass

    def event(self, t: float, kind: str, text: str) -> None:
        if kind in self.KINDS:
            self.say(f"{kind}: {text}")

    def update(self, state: Any) -> None:
        pass

    def stop(self) -> None:
        pass


class FreshnessRun(DemoApp):
    """``edgeloop demo``'s phases with this benchmark's plan, loop and readings (see the module docstring)."""

    client_name = "edgeloop-bench-freshness"

    def __init__(self, opts: DemoOptions, *, duration: float, tail: float, drift_at: float, demo_stream_s: float,
                 say: Callable[[str], None]) -> None:
        super().__init__(opts, _SayView(say))
        self.say = say
        self.duration, self.tail, self.drift_at, self.demo_stream_s = duration, tail, drift_at, demo_stream_s
        self.sampler: LoadSampler | None = None
        self.load: dict[str, Any] = {}
        self.samples: list[dict[str, Any]] = []
        self.raw: dict[str, Any] = {}
        self.stream_t0 = self.t_stop = time.time()
        self.ended_early = False

    # -- the demo's phases, where this benchmark differs ---------------------------------------------------
    def init_plan(self) -> None:
        """The demo's lighting drift ``drift_at`` seconds into the stream, no new class; the trainer and
        rollout settings of a default demo (``demo_stream_s``), whatever this run's length."""
        lighting = SCENARIOS[self.opts.scenario]["lighting"]
        self.use_timeline(Timeline(stream_s=self.duration, fps=self.opts.fps, lighting_s=self.drift_at,
                                   newclass_s=0.0, ramp_s=DRIFT_RAMP_S, newclass="", lighting=lighting),
                          settings_stream_s=self.demo_stream_s)

    def start_control(self) -> None:
        """No frozen control: nothing here is compared with v0001, and its CPU would be measured as load."""

    def start_cameras(self) -> None:
        broker_pid = getattr(getattr(self.broker, "proc", None), "pid", None)
        self.sampler = LoadSampler(lambda: [p for p in [broker_pid, *(c.pid for c in self.cams)] if p]).start()
        self.stream_t0 = time.time()
        super().start_cameras()
        self.say(f"{len(self.cams)} cameras (pids {[c.pid for c in self.cams]}), drift at {self.drift_at:g} s, "
                 f"counting samples selected in the first {self.duration - self.tail:.0f} s, run <= "
                 f"{self.duration:.0f} s; policy waves {self.policy.waves} soak {self.policy.soak:g} s; update "
                 f"wait {trainer_settings(self.demo_stream_s, self.slow)['update.wait_s']:g} s, "
                 f"{demo_trainer_settings(self.opts, self.demo_stream_s, self.slow)['update.steps']} steps per update")

    def stream(self) -> None:
        """Until ``duration`` seconds of stream, or until every counted sample has reached every camera."""
        deadline = self.stream_t0 + self.duration
        cutoff = deadline - self.tail
        self.raw = {"cameras": self.devices, "baseline": self.boot.version,
                    "drift_index": int(self.drift_at * self.opts.fps), "cutoff_wall": cutoff, "t0": self.stream_t0}
        next_check = time.time() + 2.0
        while True:
            now = time.time()
            for c in self.cams:
                if c.proc is not None and c.proc.poll() is not None:
                    raise RuntimeError(f"{c.device} exited with code {c.proc.returncode} (see {c.log_path})")
            if now >= deadline:
                break
            if now >= cutoff and now >= next_check:
                next_check = now + 2.0
                if self._all_delivered():
                    self.ended_early = True
                    break
            time.sleep(0.25)

    def _all_delivered(self) -> bool:
        part = analyze({**self.raw, "samples": read_samples(self.trainer.store),
                        "updates": read_timeline(self.out / "trainer"),
                        "rollouts": rollout_rows(self.feeder.records()),  # type: ignore[union-attr]
                        "statuses": self.monitor.statuses()})  # type: ignore[union-attr]
        return part["samples_eligible"] > 0 and part["samples_pending"] == 0

    # -- what this benchmark reads as the services stop ----------------------------------------------------
    def stop(self) -> None:
        self.t_stop = time.time()
        super().stop()

    def stop_cameras(self) -> None:
        try:
            super().stop_cameras()
        finally:
            if self.sampler is not None:
                self.load = self.sampler.stop()

    def record_trainer(self) -> None:
        self.samples = read_samples(self.trainer.store)

    def finish(self) -> dict[str, Any]:
        """The figures (:func:`analyze`) and the result entry; per-sample data kept only with --workdir or errors."""
        raw = self.raw
        raw["updates"] = read_timeline(self.out / "trainer")
        figures: dict[str, Any] = {}
        if "cameras" in raw:
            raw.update(statuses=self.monitor.statuses() if self.monitor is not None else [],
                       rollouts=rollout_rows(self.rec.rollouts), samples=self.samples)
            figures = analyze(raw)
        per_sample = figures.pop("per_sample", [])
        figures.update(self._facts(len(raw.get("samples", []))))
        kind = self.rec.broker.get("kind", "?")
        broker = f"{kind} (TLS, client certificates, ACL)" if self.rec.broker.get("secure") else f"{kind} (anonymous)"
        result = _result(figures, broker, self.drift_at, self.duration - self.tail)
        if self.rec.interrupted:
            result["status"] = "interrupted"
        if self.rec.errors:
            result["errors"] = list(self.rec.errors)
        return {"result": result, "per_sample": per_sample, "raw": raw}

    def _frozen_blocks(self) -> int:
        """The trainer's ``strategy.frozen_blocks`` (from the scenario's learner or --trainer-config): with the net, what
        the adaptation benchmark needs to charge this run's stage times back to small_cnn's."""
        return int(self.trainer.config.strategy.get("frozen_blocks", 0)) if self.trainer is not None else 0

    def _facts(self, uploaded: int) -> dict[str, Any]:
        """Run facts beside the figures: lengths, settings, bootstrap, machine load."""
        from trainer.nets import NETS_LAYOUT

        policy = self.policy or demo_policy(self.demo_stream_s)
        update = demo_trainer_settings(self.opts, self.demo_stream_s, self.slow)
        return {
            "cameras": len(self.devices), "stream_s": round(self.t_stop - self.stream_t0, 1),
            "duration_limit_s": self.duration, "count_window_s": round(self.duration - self.tail, 1),
            "ended_early": self.ended_early, "drift_at_s": self.drift_at, "samples_uploaded": uploaded,
            "settings": {"demo_stream_s": self.demo_stream_s, "fps": self.opts.fps, "budget_per_min": self.opts.budget,
                         "p_min": P_MIN, "update": {k.split(".", 1)[1]: v for k, v in update.items()
                                                    if k.startswith("update.")},
                         "rollout": {"feeder": "deploy.service.DeployService, mode auto (one at a time, coalesced)",
                                     "waves": policy.waves, "soak_s": policy.soak, "health_s": policy.health_seconds,
                                     "shadow": policy.shadow,
                                     "soaked_waves": soaked_waves(len(self.devices), tuple(policy.waves))},
                         "bootstrap_frames": self.opts.bootstrap_frames, "nets": NETS_LAYOUT,
                         "arch": demo_arch(self.opts), "learner": demo_learner(self.opts),
                         "trainer_config": self.opts.trainer_config, "frozen_blocks": self._frozen_blocks()},
            "bootstrap": {k: self.rec.bootstrap.get(k) for k in ("version", "epochs", "accuracy", "macro_f1", "seconds")}
            if self.rec.bootstrap else {},
            "load": self.load,
            "wall_s": round(time.monotonic() - self.t_start, 1),
        }


def _result(figures: dict[str, Any], broker: str, drift_at: float, count_window_s: float) -> dict[str, Any]:
    met = figures.get("total_p50_s") is not None and figures["total_p50_s"] <= GOAL_S
    load = figures.get("load") or {}
    notes = (f"{figures.get('cameras')} edge processes (15 fps realtime sim:parts, lighting drift at {drift_at:g} s), "
             f"trainer + rollout service (demo policy, mode auto) in-process, {broker} broker. "
             f"total = selected -> every camera active; stages add up to it; dominant = largest share of the "
             f"summed totals ({figures.get('dominant_stage')}). Samples counted: drifted, training split, selected in "
             f"the first {count_window_s:.0f} s; {figures.get('samples_pending')} of {figures.get('samples_eligible')} "
             f"never reached every camera (count as infinitely late in total_*); delivered ones: p50 "
             f"{figures.get('delivered_p50_s')} s, p95 {figures.get('delivered_p95_s')} s. Samples whose own update "
             f"was promoted (no gate rejection): p50 "
             f"{figures.get('first_try_total_p50_s')} s over {figures.get('first_try_samples')}; updates kept by the "
             f"gate {figures.get('updates_kept_by_gate')}/{figures.get('updates')}. "
             f"Load: 1-min loadavg median {load.get('loadavg_1m_median')}, other jobs "
             f"{load.get('other_load_cores_median')} cores (median) on {os.cpu_count()} cores.")
    return {"name": "freshness", "figures": figures, "goal": GOAL, "met": bool(met), "headline": "total_p50_s",
            "units": {"total_p50_s": "s", "total_p95_s": "s"}, "notes": notes}


def bench(duration: float = DEFAULT_DURATION_S, cameras: int = DEFAULT_CAMERAS, quick: bool = False, *,
          demo_stream_s: float = DEMO_STREAM_S, drift_at_s: float | None = None, bootstrap_frames: int | None = None,
          bootstrap_budget_s: float | None = None, tail_s: float | None = None, workdir: str | Path | None = None,
          keep: bool = False, say: Callable[[str], None] | None = None, insecure: bool = False,
          arch: str | None = None, trainer_config: str | None = None) -> dict[str, Any]:
    """Run the loop for at most ``duration`` stream seconds and measure freshness; stops everything it started.

    ``tail_s``: samples selected in the last ``tail_s`` seconds do not count (they would have no time to be
    delivered); the run ends as soon as every counted sample has reached the whole fleet after that point.
    ``insecure``: an anonymous broker instead of the demo's default (TLS, client certificates, ACL).
    ``arch``: another net than the scenario's, as ``edgeloop demo --arch`` runs it; ``trainer_config``: a trainer YAML
    for the keys the demo does not set, as ``edgeloop demo --trainer-config`` takes it (checked the same way).
    """
    say = say or (lambda m: print(f"[freshness] {m}", file=sys.stderr, flush=True))
    out = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeloop-freshness-"))
    # The bootstrap of a default demo run (a budget of the bootstrap share of 180 s, minus rendering): the
    # quality of v0001 decides how often the gate promotes, so it is part of "default demo settings".
    if trainer_config is not None:
        from deploy.demo.plan import check_trainer_config

        why = check_trainer_config(trainer_config)
        if why:
            raise ValueError(f"--trainer-config: {why}")
    opts = DemoOptions(cameras=cameras, duration=DEMO_DURATION_S, out=str(out), insecure=insecure, arch=arch,
                       trainer_config=trainer_config,
                       bootstrap_frames=bootstrap_frames or (400 if quick else 2400),
                       bootstrap_budget_s=bootstrap_budget_s if bootstrap_budget_s is not None else (20.0 if quick else None))
    run_ = FreshnessRun(opts, duration=duration, tail=tail_s if tail_s is not None else min(60.0, 0.45 * duration),
                        drift_at=drift_at_s if drift_at_s is not None else (QUICK_DRIFT_AT_S if quick else DRIFT_AT_S),
                        demo_stream_s=demo_stream_s, say=say)
    say(f"work dir {out}")
    done = run_.run()
    result = done["result"]
    if keep or result.get("errors"):
        (out / "per_sample.json").write_text(json.dumps(done["per_sample"], indent=1))
        (out / "raw.json").write_text(json.dumps(done["raw"]))  # analyze(json.load(...)) re-derives the figures
        result["workdir"] = str(out)
    else:
        shutil.rmtree(out, ignore_errors=True)
    if run_.rec.interrupted:
        raise KeyboardInterrupt
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Harness entry point: full = 4 cameras, <= 150 s of streaming; quick = 4 cameras, <= 45 s, small bootstrap
    (often too short for a version to reach every camera: then samples_measured is 0 and met is False)."""
    if quick:
        return bench(QUICK_DURATION_S, QUICK_CAMERAS, quick=True)
    return bench()


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    """CLI; writes bench/results/freshness.json unless --no-write."""
    ap = argparse.ArgumentParser(prog="edgeloop bench freshness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, help=f"max stream seconds (default {DEFAULT_DURATION_S:g}, quick "
                                                   f"{QUICK_DURATION_S:g})")
    ap.add_argument("--cameras", type=int, help=f"edge processes (default {DEFAULT_CAMERAS}, quick {QUICK_CAMERAS})")
    ap.add_argument("--quick", action="store_true", help="45 s, small bootstrap (a smoke run)")
    ap.add_argument("--tail", type=float, help="seconds at the end whose samples are not counted "
                                               "(default min(60, 0.45 x duration))")
    ap.add_argument("--drift-at", type=float, help="stream second of the lighting change (default 5, quick 3)")
    ap.add_argument("--demo-stream", type=float, default=DEMO_STREAM_S,
                    help=f"stream seconds the demo settings are derived from (default {DEMO_STREAM_S:g})")
    ap.add_argument("--bootstrap-frames", type=int, help="bootstrap set size (default 2400 as the demo, quick 400)")
    ap.add_argument("--workdir", help="keep everything (logs, stores, per_sample.json) here")
    ap.add_argument("--insecure", action="store_true", help="anonymous loopback broker instead of the demo's default "
                                                            "TLS broker with client certificates and ACLs")
    ap.add_argument("--arch", help="the camera net, as `edgeloop demo --arch` (default: the scenario's, small_cnn128); "
                                   "the adaptation benchmark charges a run of record on another net back to small_cnn's")
    ap.add_argument("--trainer-config", metavar="YAML", help="trainer settings the demo does not set itself, as "
                                                             "`edgeloop demo --trainer-config` (e.g. "
                                                             "deploy/configs/trainer-surface-defects-128.yaml)")
    ap.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    ap.add_argument("--out", type=Path, default=RESULTS, help="result file (default bench/results/freshness.json)")
    ap.add_argument("--no-write", action="store_true", help="do not write the result file")
    args = ap.parse_args(argv)
    if args.cameras is not None and args.cameras < 1:
        ap.error("--cameras must be >= 1")
    duration = args.duration or (QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    if args.trainer_config is not None:  # before anything starts, as the demo checks it
        from deploy.demo.plan import check_trainer_config

        why = check_trainer_config(args.trainer_config)
        if why:
            print(f"edgeloop bench freshness: --trainer-config: {why}", file=sys.stderr)
            return 2
    try:
        result = bench(duration, args.cameras or (QUICK_CAMERAS if args.quick else DEFAULT_CAMERAS), args.quick,
                       demo_stream_s=args.demo_stream, drift_at_s=args.drift_at, tail_s=args.tail,
                       bootstrap_frames=args.bootstrap_frames, workdir=args.workdir, keep=bool(args.workdir),
                       insecure=args.insecure, arch=args.arch, trainer_config=args.trainer_config)
    except KeyboardInterrupt:
        print("edgeloop bench freshness: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    text = json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        f = result["figures"]
        print(f"freshness: met={result['met']}  total p50 {_fmt(f.get('total_p50_s'))} s  p95 "
              f"{_fmt(f.get('total_p95_s'))} s over {f.get('samples_eligible')} drifted samples, "
              f"{f.get('samples_measured')} delivered (p50 {_fmt(f.get('delivered_p50_s'))} s, p95 "
              f"{_fmt(f.get('delivered_p95_s'))} s); dominant: {f.get('dominant_stage')}")
        for name, st in (f.get("stages") or {}).items():
            share = "-" if st["share"] is None else f"{100 * st['share']:.0f} %"
            print(f"  {name:<13} p50 {_fmt(st['p50']):>6} s  p95 {_fmt(st['p95']):>6} s  share {share}")
        for n, st in (f.get("rollout_by_waves") or {}).items():
            print(f"  rollout of {n} wave{'s' if n != '1' else ''}: p50 {_fmt(st['p50'])} s over {st['n']} samples")
        print(f"  rollouts: {f.get('versions_rolled_out')} completed, {f.get('rollouts_taken_over')} taken over once "
              f"delivered; load: {f.get('load')}")
    return 0 if not result.get("errors") else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
