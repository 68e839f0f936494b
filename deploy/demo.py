"""``edgeloop demo``: the whole loop in one command, on the real components, with a report.

What runs (and why it is wired like this)
-----------------------------------------
* **Broker**: the embedded one (:func:`deploy.broker.start_broker`: mosquitto if installed, else amqtt), or
  ``--broker URL``. Everything below talks to it over MQTT; nothing is short-circuited in-process.
* **Bootstrap** (this process, before anything else competes for the 2 cores): simulated frames of the
  scenario's *initial* conditions (no drift, other seeds than the cameras) are rendered as ROI crops into an
  ImageFolder under ``--out`` and handed to :func:`trainer.bootstrap.bootstrap` -> trainer state with v0001.
  The trainer never imports ``edge``; the demo (deploy) may, to launch it, so the rendering happens here.
* **Trainer** (thread of this process): :class:`trainer.service.TrainerService` ingesting samples from MQTT,
  oracle labeller (the simulator's ground truth travels with each sample), buffered importance-weighted
  updates, held-out gate, ONNX export, registry.
* **Rollout controller** (thread of this process): :class:`deploy.controller.Controller`. Every promoted
  version goes to it with the default wave plan (5 %, 25 %, 100 %) and demo-sized timings (see
  :func:`demo_policy`). A version promoted while a rollout is still in progress waits and is coalesced
  with later ones (:class:`RolloutFeeder`): starting a rollout per promotion would supersede each one in its
  canary wave and the fleet's tail would never get anything.
* **Cameras** (one subprocess each): ``python -m deploy.cli edge`` on ``sim:parts?seed=..&realtime=1``
  with a scripted drift, its own state dir (outbox, models) under ``--out``, the provisioned v0001, and the
  demo's public key as the only trusted key. Subprocesses because that is what a camera is: its own
  process with its own outbox, updater and MQTT session; a crash or a slow frame in one cannot stall
  another, and the demo can prove it stopped them (pids). They run in their own session (Ctrl-C in the
  terminal reaches only the demo, which stops them in order) with a parent-death signal as a backstop.
* **Monitor** (paho thread of this process): subscribes to every device's stats and model status; the
  live view and the report are built from these messages only, as an operator's tooling would be.
* **Frozen control** (thread of this process): a *shadow evaluation* of the frozen v0001 on exactly the
  frames each camera saw. Sim frames are a pure function of (scenario, seed, index) and every stats message
  carries the camera's capture position, so the control re-renders the camera's frame indices with
  ``frame_at`` and classifies them with onnxruntime. Why not frozen edge nodes: four more camera processes
  would double the edge CPU on a 2-core box, their frame indices would differ from the live cameras'
  anyway (own start time, own drops), and they would have to stay off the broker to not perturb the
  trainer. The shadow costs ~1.5 ms per frame and compares like with like: the same pixels, the same
  windows (the same number of frames the edge's rolling accuracy covers, ending at the same index).

Timeline: ``--duration`` is the whole run's wall-clock budget (setup, streaming, report). After the
bootstrap, the streaming phase gets what is left minus a reserve for teardown and the report, and the
drift script is laid out on it: a lighting change at 30 % (darker, colour cast, 4 s ramp), a new defect
class at 55 % (``newclass:crack``). Ctrl-C (or SIGTERM) stops everything started and still writes the
report from what was collected.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from deploy.children import die_with_parent

log = logging.getLogger("edgeloop.demo")

__all__ = ["DemoOptions", "Timeline", "plan_timeline", "demo_policy", "run", "main"]

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "edgeloop/v1"
FLEET = "default"
MODEL_ID = "edgeloop"
TEARDOWN_RESERVE_S = 14.0      # stop cameras + trainer + controller, finish the control, write the report
MIN_STREAM_S = 20.0
BOOTSTRAP_SHARE = 0.25         # of --duration: training v0001 (the only phase with both cores to itself)
STATS_INTERVAL_S = 2.0
P_MIN = 0.03                   # every frame's upload chance: labels keep flowing even when the model is sure
ACCURACY_WINDOW_S = 8.0        # rolling accuracy window of the edge (and the control), in stream seconds


# -- options and plan ---------------------------------------------------------------------------------------
@dataclass
class DemoOptions:
    """The command line, typed."""

    cameras: int = 4
    duration: float = 180.0
    scenario: str = "parts"
    data: str | None = None
    broker: str | None = None
    seed: int = 0
    out: str = "./edgeloop-demo"
    fps: float = 15.0
    budget: int = 40              # uploads per minute per camera (the edge's minute budget)
    plain: bool = False
    bootstrap_frames: int = 1600
    bootstrap_epochs: int | None = None


@dataclass
class Timeline:
    """When things happen, in *stream seconds* (a camera's frame index / fps) -- the x axis of the report."""

    stream_s: float
    fps: float
    lighting_s: float
    newclass_s: float
    ramp_s: float
    newclass: str
    lighting: str

    def drift_items(self) -> str:
        """The ``drift=`` value of the cameras' sim URLs (times in seconds at the nominal fps)."""
        return ",".join([f"{item}@{self.lighting_s:.1f}s~{self.ramp_s:.0f}s" for item in self.lighting.split("+")]
                        + [f"newclass:{self.newclass}@{self.newclass_s:.1f}s~{self.ramp_s:.0f}s"])

    def events(self) -> list[tuple[float, str]]:
        return [(self.lighting_s, "lighting change"), (self.newclass_s, f"new class {self.newclass.split('=')[0]}")]


SCENARIOS: dict[str, dict[str, Any]] = {
    # darker + warmer light (a lamp failed, the other one is a warm one), then a new defect type
    "parts": {"arch": "small_cnn", "lighting": "brightness:-0.45+cast:0.8/1.0/1.25", "newclass": "crack=0.2",
              "extra": ""},
    # digits: dimmer and lower-contrast labels, then digit 5 appears on the line
    "digits": {"arch": "convnet", "lighting": "brightness:-0.5+contrast:0.6", "newclass": "5=0.2",
               "extra": "classes=0-4"},
}


def plan_timeline(stream_s: float, fps: float, scenario: str) -> Timeline:
    """Lighting at 30 % of the stream, the new class at 55 %: early enough that recovery shows."""
    sc = SCENARIOS[scenario]
    return Timeline(stream_s=stream_s, fps=fps, lighting_s=round(0.30 * stream_s, 1),
                    newclass_s=round(0.55 * stream_s, 1), ramp_s=4.0 if stream_s >= 60 else 2.0,
                    newclass=sc["newclass"], lighting=sc["lighting"])


def camera_seed(base: int, k: int) -> int:
    return base * 100 + k + 1


def sim_url(opts: DemoOptions, seed: int, timeline: Timeline | None, realtime: bool) -> str:
    """The camera's source URL; the frozen control uses the same URL without real-time pacing."""
    parts = [f"seed={seed}"]
    sc = SCENARIOS[opts.scenario]
    if sc["extra"]:
        parts.append(sc["extra"])
    if opts.scenario == "digits" and opts.data:
        parts.append(f"data={Path(opts.data).resolve()}")
    if realtime:
        parts += ["realtime=1", f"fps={opts.fps:g}"]
    else:
        parts.append(f"fps={opts.fps:g}")
    if timeline is not None:
        parts.append(f"drift={timeline.drift_items()}")
    return f"sim:{opts.scenario}?" + "&".join(parts)


def demo_policy(stream_s: float) -> Any:
    """The default policy (waves 5 %, 25 %, 100 %; failure, agreement, confidence and latency thresholds) with
    timings scaled to a demo: a 60 s soak per wave would leave one rollout unfinished in a 3-minute run."""
    from deploy.controller import Policy

    soak = max(3.0, round(stream_s / 25.0, 1))
    return Policy(soak=soak, health_seconds=max(5.0, soak * 1.5), wave_timeout=max(30.0, stream_s * 0.3))


# -- event log ---------------------------------------------------------------------------------------------
class Events:
    """Timestamped demo events (wall clock); the view prints them, the report plots and lists them."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.t0_stream: float | None = None   # wall time of stream second 0
        self.t_start = time.time()

    def stream_t(self, wall: float) -> float:
        return wall - (self.t0_stream if self.t0_stream is not None else self.t_start)

    def add(self, kind: str, text: str, wall: float | None = None, **data: Any) -> None:
        wall = time.time() if wall is None else wall
        with self._lock:
            self.items.append({"wall": wall, "kind": kind, "text": text, **data})
        try:
            self.view.event(self.stream_t(wall), kind, text)
        except Exception:  # a display problem must never stop the loop
            log.exception("view failed")


# -- monitor ------------------------------------------------------------------------------------------------
class Monitor:
    """Everything devices publish that the demo shows: stats (accuracy, frames, uploads, model) and model status.

    A plain MQTT subscriber, like any operator tool; the time series it keeps is what the report plots.
    """

    def __init__(self, url: str, devices: list[str], events: Events) -> None:
        from protocol.topics import Topics

        self.url = url
        self.topics = Topics(PREFIX)
        self.devices = devices
        self.events = events
        self.stats: dict[str, list[dict[str, Any]]] = {d: [] for d in devices}
        self.latest: dict[str, dict[str, Any]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.activations: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client: Any = None

    def start(self) -> "Monitor":
        from protocol import mqtt

        client = mqtt.make_client(f"edgeloop-demo-monitor-{os.getpid()}", self.url, protocol="3.1.1")
        subs = [(self.topics.all_stats(), 0), (self.topics.all_model_status(), 1)]
        client.on_connect = lambda c, *a: c.subscribe(subs)
        client.on_message = lambda c, u, msg: self._on_message(msg.topic, msg.payload)
        self._client = client
        mqtt.start(client)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_message(self, topic: str, payload: bytes) -> None:
        from protocol.reports import ModelStatus, Stats, decode_report

        try:
            parsed = self.topics.parse(topic)
            if parsed.device not in self.stats or not payload:
                return
            msg = decode_report(payload, parsed.kind)
        except Exception:
            return
        now = time.time()
        dev = parsed.device
        if isinstance(msg, Stats):
            ex = msg.extra if isinstance(msg.extra, dict) else {}
            cap = ex.get("capture") or {}
            row = {"wall": now, "index": int(cap.get("frames", ex.get("frames", 0)) or 0),
                   "frames": int(ex.get("frames", 0) or 0), "accuracy": ex.get("accuracy"),
                   "uploads": int(msg.uploads), "model": ex.get("model_version"), "fps": float(msg.fps),
                   "dropped": int(cap.get("dropped", 0) or 0), "outbox": int(msg.outbox_depth),
                   "stored": int(ex.get("stored", 0) or 0), "reasons": ex.get("sampler")}
            with self._lock:
                prev = self.latest.get(dev)
                self.stats[dev].append(row)
                self.latest[dev] = row
            if prev is not None and prev.get("model") != row["model"] and row["model"]:
                # the model/status message says the same; stats confirm frames are now classified by it
                pass
        elif isinstance(msg, ModelStatus):
            with self._lock:
                before = self.status.get(dev)
                self.status[dev] = {"wall": now, "state": msg.state, "version": msg.version, "reason": msg.reason,
                                    "rollout": msg.rollout_id}
            if before and before["state"] == msg.state and before["version"] == msg.version:
                return
            if msg.state == "active" and msg.metrics.get("health") != "ok":
                with self._lock:
                    self.activations.append({"wall": now, "device": dev, "version": msg.version})
                self.events.add("activated", f"{dev} now runs {msg.version}", now, device=dev, version=msg.version)
            elif msg.state in ("rolled_back", "failed", "rejected"):
                self.events.add("rolled_back" if msg.state == "rolled_back" else "failed",
                                f"{dev}: {msg.version} {msg.state} ({msg.reason})", now, device=dev,
                                version=msg.version)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {d: dict(r) for d, r in self.latest.items()}

    def series(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {d: [dict(r) for r in rows] for d, rows in self.stats.items()}


# -- frozen control -----------------------------------------------------------------------------------------
class FrozenControl:
    """Shadow evaluation of the frozen bootstrap model on the frame indices each camera reached.

    ``correct[device]`` holds one byte per frame index (1 = the frozen model was right). It follows the
    cameras' capture positions from the monitor, so at any stats point the control's accuracy over the same
    window is available; :meth:`finish` completes it after the cameras stopped.
    """

    def __init__(self, model_path: Path, urls: dict[str, str], monitor: Monitor, threads: int = 1) -> None:
        self.model_path = model_path
        self.urls = urls
        self.monitor = monitor
        self.correct: dict[str, bytearray] = {d: bytearray() for d in urls}
        self.truth_pred: dict[str, list[tuple[str, str]]] = {d: [] for d in urls}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._model: Any = None
        self._sources: dict[str, Any] = {}
        self.threads = threads

    def _setup(self) -> None:
        import cv2

        from edge.model import EdgeModel
        from edge.sources.sim import open_sim

        cv2.setNumThreads(1)
        self._model = EdgeModel.load(self.model_path, threads=self.threads)
        for d, url in self.urls.items():
            self._sources[d] = open_sim(url)

    def start(self) -> "FrozenControl":
        self._setup()
        self._thread = threading.Thread(target=self._run, name="demo-frozen-control", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            worked = False
            for d, row in self.monitor.snapshot().items():
                if d in self.correct and self._advance(d, int(row["index"]), budget=32):
                    worked = True
            if not worked:
                self._stop.wait(0.2)

    def _advance(self, device: str, upto: int, budget: int) -> bool:
        """Evaluate up to ``budget`` more frames of ``device`` below index ``upto``; False if nothing to do."""
        done = len(self.correct[device])
        if done >= upto:
            return False
        src = self._sources[device]
        idx = range(done, min(upto, done + budget))
        frames = [src.frame_at(i) for i in idx]
        preds = self._model.infer([f.image for f in frames])
        with self._lock:
            for f, p in zip(frames, preds):
                self.correct[device].append(1 if p.label == f.truth else 0)
                self.truth_pred[device].append((str(f.truth), p.label))
        return True

    def finish(self, targets: dict[str, int]) -> None:
        """Stop the thread and evaluate what is left up to each camera's last index."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for d, upto in targets.items():
            while d in self.correct and self._advance(d, upto, budget=256):
                pass

    def window(self, device: str, end: int, size: int) -> float | None:
        """Accuracy over frame indices [end - size, end) if all of them were evaluated."""
        c = self.correct.get(device)
        if c is None or end <= 0 or len(c) < end:
            return None
        lo = max(0, end - size)
        seg = c[lo:end]
        return sum(seg) / len(seg) if seg else None


# -- rollouts -----------------------------------------------------------------------------------------------
class RolloutFeeder:
    """Hands promoted versions to the controller: one rollout at a time, newest promoted version next.

    ``on_promoted`` runs on the trainer's thread and only records; ``poll`` (demo main loop) starts rollouts
    and turns the controller's event table into demo events. The rollback target of each rollout is the
    last version that reached the whole fleet (initially the provisioned v0001), passed explicitly: the
    controller's own default is the fleet manifest's last target, which may be a version that never got
    past its canary.
    """

    def __init__(self, controller: Any, policy: Any, baseline: tuple[str, Path], events: Events) -> None:
        self.ctl = controller
        self.policy = policy
        self.fleet_version = baseline
        self.events = events
        self.pending: tuple[str, Path] | None = None
        self.active: str | None = None
        self.active_version: str | None = None
        self.promotions: list[dict[str, Any]] = []
        self._seen_events = 0.0
        self._lock = threading.Lock()

    def on_promoted(self, version: str, path: Path, metrics: dict[str, Any]) -> None:
        acc = metrics.get("accuracy")
        now = time.time()
        with self._lock:
            self.promotions.append({"version": version, "wall": now, "path": str(path), "accuracy": acc,
                                    "macro_f1": metrics.get("macro_f1"), "n": metrics.get("n")})
            self.pending = (version, Path(path))
        self.events.add("promoted", f"{version} (held-out accuracy {acc:.3f} on {metrics.get('n', '?')})"
                        if isinstance(acc, (int, float)) else version, now, version=version)

    def poll(self) -> None:
        from deploy.controller import TERMINAL

        if self.active is not None:
            r = self.ctl.store.rollout(self.active)
            if r is not None and r.state in TERMINAL:
                if r.state == "completed":
                    self.fleet_version = (r.version, Path(self.ctl.store.model(r.model_id, r.version).path))
                self.active, self.active_version = None, None
        with self._lock:
            nxt, self.pending = (self.pending, None) if self.active is None else (None, self.pending)
        if nxt is not None:
            version, path = nxt
            self.active = self.ctl.start_rollout(version, path, self.policy, fleet=FLEET, model_id=MODEL_ID,
                                                 previous=self.fleet_version)
            self.active_version = version
        self._drain_events()

    def _drain_events(self) -> None:
        for row in self.ctl.store.events_since(self._seen_events):
            self._seen_events = max(self._seen_events, row.ts)
            kind, detail, version = row.kind, row.detail or "", row.version or "-"
            if kind == "started":
                self.events.add("rollout", f"{version} rollout started (rollback target {self.fleet_version[0]})",
                                row.ts, version=version)
            elif kind == "wave":
                self.events.add("wave", f"{version} {detail.split(' below=')[0]}", row.ts, version=version)
            elif kind == "completed":
                self.events.add("completed", f"{version} on the whole fleet ({detail})", row.ts, version=version)
            elif kind in ("breach", "rollback", "rolled_back", "halted"):
                self.events.add("rollback", f"{version} {kind}: {detail}", row.ts, version=version)
            elif kind == "superseded":
                self.events.add("rollout", f"{version} superseded by {detail}", row.ts, version=version)

    def describe(self) -> str:
        if self.active is None:
            return f"idle; fleet baseline {self.fleet_version[0]}" + (f", next {self.pending[0]}" if self.pending else "")
        st = self.ctl.status(self.active)
        devs = ", ".join(f"{k} {v}" for k, v in sorted(st.get("devices", {}).items()))
        return f"{st.get('version')} wave {st.get('wave')} ({st.get('wave_fraction', 0):.0%}) {st.get('state')}; {devs}"

    def records(self) -> list[dict[str, Any]]:
        """One row per rollout, for summary.json."""
        out = []
        for r in self.ctl.store.rollouts():
            waves = sum(1 for e in self.ctl.store.events(r.id, 200) if e.kind == "wave")
            done = r.finished
            out.append({"id": r.id, "version": r.version, "previous": r.prev_version, "waves": waves,
                        "outcome": str(r.state), "reason": r.reason, "started_wall": r.created,
                        "finished_wall": done, "seconds": round(done - r.created, 2) if done else None})
        return out


# -- cameras ------------------------------------------------------------------------------------------------
@dataclass
class Camera:
    device: str
    seed: int
    url: str
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def start_camera(cam: Camera, broker_url: str, model: Path, trusted_key: Path, opts: DemoOptions) -> None:
    """Launch ``edgeloop edge`` for one camera (its own process, session and state dir)."""
    cmd = [sys.executable, "-m", "deploy.cli", "edge", "--device-id", cam.device, "--fleet", FLEET,
           "--state-dir", str(cam.state_dir), "--source", cam.url, "--model", str(model),
           "--broker", broker_url, "--trusted-key", str(trusted_key), "--stats-interval", f"{STATS_INTERVAL_S:g}",
           "--budget-minute", str(opts.budget), "--p-min", f"{P_MIN:g}",
           # the hour/day defaults (600, 5000) would pace a 3-minute demo down to ~3 uploads a minute
           "--budget-hour", "none", "--budget-day", "none", "--seed", str(cam.seed), "--threads", "1", "--log-level", "WARNING"]
    env = dict(os.environ)
    env["EDGELOOP_EDGE__ACCURACY_WINDOW"] = str(int(round(ACCURACY_WINDOW_S * opts.fps)))
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cam.state_dir.mkdir(parents=True, exist_ok=True)
    with open(cam.log_path, "ab") as logf:
        cam.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())


def stop_cameras(cams: list[Camera], timeout: float = 8.0) -> None:
    """SIGTERM all (they flush stats and close the outbox), then SIGKILL whatever is still there."""
    for c in cams:
        if c.proc is not None and c.proc.poll() is None:
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for c in cams:
        if c.proc is None:
            continue
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(5)


# -- bootstrap ----------------------------------------------------------------------------------------------
def bootstrap_epochs(arch: str, n_train: int, budget_s: float, threads: int = 2) -> tuple[int, float]:
    """Epochs that fit ``budget_s`` of training on *this* machine, measured, not assumed.

    A few timed optimiser steps of ``arch`` give the cost of one sample's forward+backward pass; the epoch
    count follows. A busy or slow box gets fewer epochs instead of breaking the demo's time promise.
    Returns (epochs, measured seconds per sample)."""
    import torch
    import torch.nn.functional as F

    from trainer.nets import ARCH_INPUT, build_model

    torch.set_num_threads(threads)
    spec = ARCH_INPUT[arch]
    net = build_model(arch, 4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(32, spec.channels, spec.height, spec.width)
    y = torch.randint(0, 4, (32,))
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_sample = float(sorted(times[1:])[1]) / 32.0  # median of the warm steps
    epochs = int(budget_s / max(1e-6, per_sample * 1.15 * n_train))  # +15 %: data shuffling, BN, eval
    return max(2, min(40, epochs)), per_sample


def render_bootstrap_set(opts: DemoOptions, folder: Path) -> tuple[list[str], tuple[int, int, int, int]]:
    """Render the scenario's initial conditions (no drift) as ROI crops into ``folder/<class>/*.png``.

    Seeds differ from every camera's, so the cameras' streams are never training data."""
    import cv2

    from edge.sources.sim import open_sim

    n_seeds = 4
    per_seed = max(1, opts.bootstrap_frames // n_seeds)
    labels: list[str] = []
    roi = (0, 0, 0, 0)
    for j in range(n_seeds):
        src = open_sim(sim_url(opts, opts.seed * 100 + 50 + j, None, realtime=False))
        if not labels:
            labels, roi = src.labels, tuple(src.roi)  # type: ignore[assignment]
        x, y, w, h = src.roi
        for i in range(per_seed):
            f = src.frame_at(i * 7)  # spread over the stream (positions on the belt, sprite choices)
            d = folder / str(f.truth)
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"s{j}_{i:05d}.png"), f.image[y:y + h, x:x + w])
    return labels, roi  # type: ignore[return-value]


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """Everything the report needs, collected during the run (written as record.json for re-rendering)."""

    options: dict[str, Any]
    broker: dict[str, Any]
    timeline: dict[str, Any]
    cameras: list[dict[str, Any]]
    wall_start: float
    t0_stream: float | None = None
    wall_end: float | None = None
    setup_s: float = 0.0
    bootstrap: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    frozen_correct: dict[str, list[int]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    trainer: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    final_model: str | None = None
    models_dir: str = ""


class _Stop(Exception):
    """SIGTERM, turned into an exception so the same cleanup path runs as for Ctrl-C."""


def run(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns summary.json's content. Stops everything it started, whatever happens."""
    from deploy.demo_live import CameraRow, ViewState, make_view

    wall_start = time.time()
    t_start = time.monotonic()
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    _setup_logging(out / "logs" / "demo.log")
    view = make_view(force_plain=opts.plain)
    events = Events(view)
    deadline = t_start + opts.duration

    broker = None
    trainer = None
    ctl = None
    monitor = None
    control = None
    feeder = None
    cams: list[Camera] = []
    rec = RunRecord(options=asdict(opts), broker={}, timeline={}, cameras=[], wall_start=wall_start)
    old_term = signal.getsignal(signal.SIGTERM)

    stop_requested = threading.Event()

    def on_term(*_: Any) -> None:
        stop_requested.set()
        raise _Stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    state = ViewState(phase="setup")
    view.start()
    try:
        # 1. broker
        if opts.broker:
            rec.broker = {"kind": "external", "url": opts.broker}
            broker_url = opts.broker
        else:
            from deploy.broker import find_mosquitto, start_amqtt_process, start_broker

            # mosquitto when installed; else amqtt in its own process, away from the trainer's GIL.
            broker = (start_broker(kind="mosquitto", workdir=out / "broker") if find_mosquitto()
                      else start_amqtt_process())
            rec.broker = {"kind": broker.kind, "url": broker.url}
            broker_url = broker.url
        state.broker = f"{rec.broker['kind']} {broker_url}"
        events.add("setup", f"broker: {rec.broker['kind']} at {broker_url}")

        # 2. signing keys (fresh per run: the demo's fleet trusts only this run's controller)
        from deploy.keys import generate

        keydir = out / "keys"
        for p in (keydir / "signing.key", keydir / "signing.pub"):
            p.unlink(missing_ok=True)
        priv, pub = generate(keydir)

        # 3. bootstrap v0001 on the initial conditions
        import shutil

        for sub in ("trainer", "deploy", "cameras", "bootstrap"):
            shutil.rmtree(out / sub, ignore_errors=True)
        t_b = time.monotonic()
        labels, roi = render_bootstrap_set(opts, out / "bootstrap" / "images")
        state.phase = "bootstrap"
        view.update(state)
        events.add("setup", f"rendered {opts.bootstrap_frames} initial-condition frames ({', '.join(labels)}); "
                            f"bootstrapping {SCENARIOS[opts.scenario]['arch']}")
        from trainer.bootstrap import bootstrap

        n_train = int(0.8 * opts.bootstrap_frames)
        # what is left of the bootstrap share after rendering, minus loading the images, evaluation and export
        budget_s = max(8.0, BOOTSTRAP_SHARE * opts.duration - (time.monotonic() - t_b) - 6.0)
        if opts.bootstrap_epochs:
            epochs = opts.bootstrap_epochs
        else:
            epochs, per_sample = bootstrap_epochs(SCENARIOS[opts.scenario]["arch"], n_train, budget_s)
            log.info("bootstrap: %.2f ms per sample step measured -> %d epochs in %.0fs", per_sample * 1e3, epochs,
                     budget_s)
        boot = bootstrap(out / "trainer", out / "bootstrap" / "images", arch=SCENARIOS[opts.scenario]["arch"],
                         epochs=epochs, labels=labels, roi=list(roi), progress=False, seed=opts.seed,
                         torch_threads=2, lr=3e-3, batch_size=32)
        rec.bootstrap = {"version": boot.version, "accuracy": boot.metrics.get("accuracy"),
                         "macro_f1": boot.metrics.get("macro_f1"), "train": boot.train_size,
                         "heldout": boot.heldout_size, "seconds": round(time.monotonic() - t_b, 1),
                         "epochs": epochs, "labels": labels}
        events.add("setup", f"bootstrap {boot.version}: held-out accuracy {boot.metrics.get('accuracy', 0):.3f} "
                            f"on {boot.heldout_size} ({rec.bootstrap['seconds']:.0f}s)")
        model0 = out / "v0001.onnx"
        shutil.copyfile(boot.path, model0)  # what the cameras are provisioned with

        # 4. plan the stream on the time that is left
        stream_s = max(MIN_STREAM_S, (deadline - time.monotonic()) - TEARDOWN_RESERVE_S - 4.0)
        timeline = plan_timeline(stream_s, opts.fps, opts.scenario)
        rec.timeline = asdict(timeline)
        state.stream_len = stream_s
        state.timeline = timeline.events()
        policy = demo_policy(stream_s)

        # 5. controller + trainer (threads of this process)
        from deploy.controller import Controller
        from protocol.config import load_config
        from trainer.config import TrainerConfig
        from trainer.service import TrainerService

        ctl = Controller(broker_url, priv, out / "deploy", prefix=PREFIX, fleet=FLEET, tick_s=0.2).start()
        feeder = RolloutFeeder(ctl, policy, (boot.version, boot.path), events)
        cfg = load_config(TrainerConfig, overrides={
            "state_dir": str(out / "trainer"), "model_id": MODEL_ID, "mqtt.url": broker_url,
            "mqtt.topic_prefix": PREFIX, "mqtt.client_id": f"edgeloop-demo-trainer-{os.getpid()}",
            "labeler.kind": "oracle", "labeler.api_port": None, "update.batch": 32, "update.steps": 20,
            "update.wait_s": max(5.0, stream_s / 15.0), "update.min_batch": 8,
            # Adam: a few hundred steps in a short demo; SGD+momentum (the continual default) barely moves.
            "update.optimizer": "adam", "update.lr": 1e-3,
            "torch_threads": 1, "log_level": "WARNING"})
        # No HTTP label API (the oracle labels): a None override means "not given" to load_config, so set it here.
        import msgspec

        cfg = msgspec.structs.replace(cfg, labeler=msgspec.structs.replace(cfg.labeler, api_port=None))
        trainer = TrainerService(cfg, on_promoted=feeder.on_promoted).start()

        # 6. cameras
        devices = [f"cam-{k + 1}" for k in range(opts.cameras)]
        for k, d in enumerate(devices):
            seed = camera_seed(opts.seed, k)
            cams.append(Camera(d, seed, sim_url(opts, seed, timeline, realtime=True), out / "cameras" / d,
                               out / "logs" / f"{d}.log"))
        rec.cameras = [{"device": c.device, "seed": c.seed, "url": c.url} for c in cams]
        monitor = Monitor(broker_url, devices, events).start()
        for c in cams:
            start_camera(c, broker_url, model0, pub, opts)
            rec.pids[c.device] = c.pid  # type: ignore[assignment]
        control = FrozenControl(model0, {c.device: sim_url(opts, c.seed, timeline, realtime=False) for c in cams},
                                monitor).start()
        rec.setup_s = round(time.monotonic() - t_start, 1)
        events.add("setup", f"{len(cams)} cameras started ({opts.fps:g} fps, budget {opts.budget}/min each); "
                            f"streaming {stream_s:.0f}s")
        state.phase = "streaming"

        # 7. stream until every camera has streamed stream_s seconds (or the hard deadline, or Ctrl-C)
        fired: set[str] = set()
        hard_end = deadline - TEARDOWN_RESERVE_S
        while True:
            now = time.monotonic()
            snap = monitor.snapshot()
            if events.t0_stream is None and snap:
                # stream second 0 = wall time at which the first camera read frame 0 (stats: index / fps)
                events.t0_stream = min(r["wall"] - r["index"] / opts.fps for r in snap.values())
                rec.t0_stream = events.t0_stream
            stream_t = events.stream_t(time.time()) if events.t0_stream else 0.0
            for t, what in timeline.events():
                if stream_t >= t and what not in fired:
                    fired.add(what)
                    events.add("drift", f"{what} on every camera", events.t0_stream + t if events.t0_stream else None)
            feeder.poll()
            for c in cams:
                if c.proc is not None and c.proc.poll() is not None and f"exit:{c.device}" not in fired:
                    fired.add(f"exit:{c.device}")
                    rec.errors.append(f"{c.device} exited with code {c.proc.returncode} (see logs/{c.device}.log)")
                    events.add("failed", rec.errors[-1])
            state.elapsed, state.stream_t = now - t_start, stream_t
            state.cameras = _rows(devices, snap, monitor, control, feeder, opts, CameraRow)
            st = trainer.status()
            state.trainer = {"labels": st["store"]["labelled"], "updates": st["counters"]["updates"],
                             "buffered": st["buffered"], "promoted": st["promoted"], "classes": st["labels"]}
            state.rollout = feeder.describe()
            view.update(state)
            min_idx = min((snap[d]["index"] for d in devices if d in snap), default=0) if len(snap) == len(devices) else 0
            if min_idx >= stream_s * opts.fps or now >= hard_end:
                break
            if all(c.proc is not None and c.proc.poll() is not None for c in cams):
                break
            time.sleep(0.25)
        state.phase = "stopping"
        view.update(state)
    except (KeyboardInterrupt, _Stop):
        rec.interrupted = True
        events.add("stopped", "interrupted: stopping everything the demo started")
    except Exception as exc:  # still tear down and report what we have
        if stop_requested.is_set():  # SIGTERM landed inside a component that wrapped it (e.g. the ONNX exporter)
            rec.interrupted = True
            events.add("stopped", "terminated: stopping everything the demo started")
        else:
            log.exception("demo failed")
            rec.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            events.add("failed", rec.errors[-1])
    finally:
        _teardown(rec, cams, monitor, control, feeder, trainer, ctl, broker, events)
        view.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old_term)
    rec.wall_end = time.time()
    summary: dict[str, Any] = {}
    if rec.series and any(rec.series.values()):
        from deploy.report import write_report

        try:
            summary = write_report(out, rec)
        except Exception as exc:
            log.exception("report failed")
            rec.errors.append(f"report: {type(exc).__name__}: {exc}")
    if not summary:
        summary = {"duration_s": round(rec.wall_end - wall_start, 1), "errors": rec.errors,
                   "interrupted": rec.interrupted, "broker": rec.broker}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _rows(devices: list[str], snap: dict[str, dict[str, Any]], monitor: Monitor, control: FrozenControl | None,
          feeder: RolloutFeeder, opts: DemoOptions, CameraRow: Any) -> list[Any]:
    rows = []
    w = int(round(ACCURACY_WINDOW_S * opts.fps))
    for d in devices:
        r = snap.get(d)
        st = monitor.status.get(d)
        roll = ""
        if st is not None:
            roll = f"{st['version']} {st['state']}"
        if r is None:
            rows.append(CameraRow(d, online=False, rollout=roll))
            continue
        frozen = control.window(d, r["index"], w) if control is not None else None
        if frozen is None and control is not None and control.correct.get(d):
            c = control.correct[d]
            frozen = sum(c[-w:]) / len(c[-w:])
        rows.append(CameraRow(d, True, r["accuracy"], frozen, r["frames"], r["uploads"], r["fps"], r["model"] or "-",
                              roll))
    return rows


def _teardown(rec: RunRecord, cams: list[Camera], monitor: Monitor | None, control: FrozenControl | None,
              feeder: RolloutFeeder | None, trainer: Any, ctl: Any, broker: Any, events: Events) -> None:
    """Stop in dependency order; every step guarded so one failure cannot leave the others running."""
    def guard(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - a second Ctrl-C here must not skip the rest
            rec.errors.append(f"stopping {what}: {type(exc).__name__}: {exc}")
            log.exception("stopping %s", what)

    guard("cameras", lambda: stop_cameras(cams))
    if monitor is not None:
        time.sleep(0.3)  # the cameras' final stats messages
        rec.series = monitor.series()
        guard("monitor", monitor.stop)
    if control is not None:
        targets = {d: rows[-1]["index"] for d, rows in rec.series.items() if rows}
        guard("frozen control", lambda: control.finish(targets))
        rec.frozen_correct = {d: list(c) for d, c in control.correct.items()}
        rec.models_dir = str(Path(control.model_path).parent)
    if feeder is not None:
        guard("rollout feeder", feeder.poll)
        rec.promotions = list(feeder.promotions)
        guard("rollout records", lambda: rec.rollouts.extend(feeder.records()))
    if trainer is not None:
        def trainer_facts() -> None:
            st = trainer.status()
            rec.trainer = {"labelled": st["store"]["labelled"], "samples": st["store"]["samples"],
                           "heldout": st["store"]["heldout"], "per_class": st["store"]["per_class"],
                           "counters": st["counters"], "labels": st["labels"], "promoted": st["promoted"],
                           "ingest": st.get("ingest", {})}
            for r in trainer.registry.list():
                rec.versions.append({"version": r.version, "parent": r.parent, "status": r.status, "path": str(r.path),
                                     "labels": r.labels, "samples_seen": r.samples_seen, "created": r.created,
                                     "accuracy": r.metrics.get("accuracy"), "macro_f1": r.metrics.get("macro_f1"),
                                     "n": r.metrics.get("n")})
        guard("trainer status", trainer_facts)
        guard("trainer", trainer.stop)
    if ctl is not None:
        guard("controller", ctl.stop)
    if broker is not None:
        guard("broker", broker.stop)
    rec.events = list(events.items)
    for c in cams:
        if c.proc is not None and c.proc.poll() is None:
            rec.errors.append(f"{c.device} (pid {c.pid}) still running after stop")


def _setup_logging(path: Path) -> None:
    """Component logs go to logs/demo.log (the terminal belongs to the live view)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_edgeloop_demo", False):
            root.removeHandler(h)
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h._edgeloop_demo = True  # type: ignore[attr-defined]
    root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("torch", "onnxscript", "onnx_ir", "amqtt", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- CLI ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeloop demo",
        description="The whole loop in one command: embedded broker, bootstrap model, trainer (oracle labels, "
                    "automatic canary rollouts) and simulated cameras with scripted drift (a lighting change, then "
                    "a new defect class); a live view while it runs and a report (report.png, report.md, "
                    "summary.json) at the end, with a frozen-model control computed on the same frames.")
    p.add_argument("--cameras", type=int, default=4, help="simulated cameras, one process each (default 4)")
    p.add_argument("--duration", type=float, default=180.0,
                   help="wall-clock budget of the whole run in seconds, setup and report included (default 180)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="parts", help="sim scenario (default parts)")
    p.add_argument("--data", help="digits: directory with MNIST IDX files (default: the repo's data/mnist)")
    p.add_argument("--broker", help="use this broker URL instead of starting the embedded one")
    p.add_argument("--seed", type=int, default=0, help="base seed of the cameras and the bootstrap set (default 0)")
    p.add_argument("--out", default="./edgeloop-demo", help="output directory (default ./edgeloop-demo)")
    p.add_argument("--fps", type=float, default=15.0, help="frames per second of each camera (default 15)")
    p.add_argument("--budget", type=int, default=40, help="uploads per minute per camera (default 40)")
    p.add_argument("--plain", action="store_true", help="plain event lines even on a terminal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cameras < 1:
        print("edgeloop demo: --cameras must be >= 1", file=sys.stderr)
        return 2
    if args.duration < 45:
        print("edgeloop demo: --duration must be >= 45 s (bootstrap + a stream long enough to show drift)",
              file=sys.stderr)
        return 2
    opts = DemoOptions(cameras=args.cameras, duration=args.duration, scenario=args.scenario, data=args.data,
                       broker=args.broker, seed=args.seed, out=args.out, fps=args.fps, budget=args.budget,
                       plain=args.plain)
    if opts.duration < 120:
        opts.bootstrap_frames = 1000
    summary = run(opts)
    out = Path(opts.out).resolve()
    acc = summary.get("accuracy") or {}
    print()
    if acc:
        print(f"accuracy: initial {_f(acc.get('initial'))}, before drift {_f(acc.get('before_drift'))}, "
              f"after drift frozen {_f(acc.get('after_drift_frozen'))} vs loop {_f(acc.get('after_drift_final'))}")
        print(f"models promoted: {len(summary.get('model_versions', [])) - 1}, rollouts: "
              f"{len(summary.get('rollouts', []))}, uploads {summary.get('uploaded')} "
              f"({100 * (summary.get('upload_fraction') or 0):.1f} % of {summary.get('frames')} frames)")
    for e in summary.get("errors", []) or []:
        print(f"problem: {e}", file=sys.stderr)
    print(f"report: {out / 'report.md'}  picture: {out / 'report.png'}  numbers: {out / 'summary.json'}")
    if summary.get("interrupted"):
        return 130
    return 0 if acc else 1


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


if __name__ == "__main__":
    sys.exit(main())
