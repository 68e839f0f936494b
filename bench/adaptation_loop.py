"""The loop's learning path in simulated time: cameras -> selection -> labels -> trainer -> gate -> rollout.

What ``edgeloop bench adaptation`` runs, one (scenario, seed, variant) at a time, without a broker and without
waiting for wall-clock seconds, so that ideas can be compared in minutes and with seeds. Every part that
decides *what is learnt and when* is the shipping code; only transport and waiting are simulated:

* **cameras**: ``sim:`` sources (frame ``i`` is a pure function of scenario, seed and ``i``), each through the
  edge's own :class:`edge.pipeline.Pipeline` -- :class:`edge.model.EdgeModel` preprocessing and ONNX Runtime
  inference, the uncertainty score, :class:`edge.drift.DriftMonitor` and :class:`edge.sampler.Sampler` with
  the demo's budget and ``p_min``, on a simulated clock (the sampler's calendar-minute budget windows too).
  A selected frame's ROI crop is JPEG-encoded as the edge uploads it.
* **labels**: the trainer's :class:`trainer.store.SampleStore` and oracle labeller, with the label delay.
* **trainer**: the real :class:`trainer.service.TrainerService` (buffer cadence, strategy, head growth, the
  two-slice gate, ONNX export, registry) with the demo's update settings, its clock replaced by the
  simulated one (:func:`sim_clock`). While an update, its evaluation and its export would be running, the
  trainer is busy (stage times measured by ``bench freshness``) and the next update waits.
* **deployment**: promoted versions go out like the demo's ``RolloutFeeder`` + controller do it -- one
  rollout at a time, the newest promoted version next, canary waves (5 %, 25 %, 100 %) each soaking for
  the demo's soak time, a wave that adds no camera skipped; a version that only changed weights on the demo's
  weights-only waves, superseded by a newer promotion once every camera runs it -- and each camera swaps its
  model when its wave reaches it. Not simulated: breach
  detection and rollbacks (the demo's runs have none), dropped frames, MQTT.
* **controls**: the frozen bootstrap model on the same frames, and an upper bound: after every trainer update,
  a model trained on the bootstrap set plus *every* label seen so far (see :class:`UpperBound`), deployed with
  the delay a gate-free, uncontended rollout would have.

Everything is recorded per frame (truth, loop / frozen / upper-bound correctness, model version, drift flag),
so the metrics in :mod:`bench.adaptation` are computed afterwards from plain arrays.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import time as _time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deploy.demo.plan import CALIBRATION, soaked_waves, wave_sizes

log = logging.getLogger("edgeloop.bench.adaptation")

__all__ = ["Clock", "LoopSettings", "Hooks", "RunTrace", "busy_s", "run_loop", "sim_clock", "UpperBound"]


# -- simulated time ---------------------------------------------------------------------------------------
class Clock:
    """Simulated stream time ``t`` (seconds) on top of an epoch ``base``: what ``time.time()`` would say."""

    def __init__(self, base: float) -> None:
        self.base = float(base)
        self.t = 0.0

    def time(self) -> float:
        return self.base + self.t

    # the trainer's monotonic and perf_counter readings only ever take differences
    monotonic = time
    perf_counter = time


@contextlib.contextmanager
def sim_clock(clock: Clock) -> Iterator[None]:
    """Point the trainer modules that read the clock (service cadence, oracle delay, store timestamps) at
    ``clock`` for the duration of a run.

    Why a patch: :class:`trainer.service.TrainerService` has no clock parameter yet; the hook it needs is a
    ``clock`` argument (see the benchmark's README section). Each run is one process (bench/jobs.py), so the
    patch never leaks into another run.
    """
    import trainer.labelers
    import trainer.service
    import trainer.store

    shim = types.SimpleNamespace(time=clock.time, monotonic=clock.monotonic, perf_counter=clock.perf_counter,
                                 sleep=lambda s: None)
    mods = [trainer.service, trainer.labelers, trainer.store]
    saved = [m.time for m in mods]  # type: ignore[attr-defined]
    try:
        for m in mods:
            m.time = shim  # type: ignore[attr-defined]
        yield
    finally:
        for m, t in zip(mods, saved):
            m.time = t  # type: ignore[attr-defined]


# -- settings -----------------------------------------------------------------------------------------------
@dataclass
class LoopSettings:
    """Everything that shapes one simulated run. Defaults are the demo's (deploy/demo/plan.py) and the stage times
    ``bench freshness`` measured under demo load (bench/results.json), so the default run is the demo."""

    cameras: int = 4
    fps: float = 15.0
    stream_s: float = 127.0
    budget_per_minute: int = 40
    p_min: float = 0.03
    uncertainty: str = "margin"
    accuracy_window_s: float = 8.0
    calibration: str = CALIBRATION       # the cameras' input calibration (edge/model.py), the demo's
    # trainer (deploy/demo/plan.py's overrides of the trainer config)
    strategy: str = "iw-er"
    update: dict[str, Any] = field(default_factory=lambda: {
        "batch": 32, "steps": 40, "min_batch": 8, "optimizer": "adam", "lr": 1e-3})
    wait_s: float | None = None          # None: the demo's max(5, stream_s / 15)
    eval: dict[str, Any] = field(default_factory=dict)
    strategy_settings: dict[str, Any] = field(default_factory=dict)   # the strategy's own (config `strategy:`)
    hints: dict[str, Any] = field(default_factory=dict)   # overrides of the trainer's `hints:` section (on by
    #                                                       default); its hint reaches the cameras' samplers
    poll_s: float = 0.2
    # latencies (seconds of stream time); see stage_times()
    label_delay_s: float = 0.16
    update_s: float = 1.45
    evaluate_s: float = 0.75
    export_s: float = 1.11
    soak_s: float | None = None          # None: the demo's max(3, stream_s / 25)
    wave_delay_s: float = 0.33           # manifest -> chunks -> verify -> swap on a camera
    direct_delay_s: float | None = None  # the same for a rollout on the weights-only waves (None: wave_delay_s); a
    #                                      canary wave's delay also carries the health watch's excess over the soak
    waves: tuple[float, ...] = (0.05, 0.25, 1.0)
    fast_soak_margin: float | None = None  # soak 1 s when the gate's recent-slice margin is >= this (points)
    fast_soak_s: float = 1.0
    overlap_last_soak: bool = False      # the next rollout may start once the last wave is delivered
    weights_only_waves: tuple[float, ...] | None = None  # waves of a version that is the fleet's graph with other
    #                                                      weights (deploy/model_graph.py; the demo's policy: (1.0,))
    weights_only_take_over: bool = True  # ... and a newer promotion takes over once it is delivered (the feeder's)
    upper_bound: bool = True
    upper_steps: int = 100
    upper_every: int = 2
    upper_augment: str | None = None     # trainer.augment's name for the upper bound's minibatches (None: as drawn)
    frozen: bool = True

    @property
    def wait(self) -> float:
        return self.wait_s if self.wait_s is not None else max(5.0, self.stream_s / 15.0)

    @property
    def soak(self) -> float:
        return self.soak_s if self.soak_s is not None else max(3.0, round(self.stream_s / 25.0, 1))


#: The nets as trainer/nets.py computes them now (channels-last, pooling before the ReLU) over the nets a freshness run
#: that does not record ``nets`` trained: thread CPU of an update step and of a 500-input evaluation, small_cnn at
#: 64x64, one torch thread, medians of 5 interleaved rounds (``python -m bench.step_cost``, 2026-12-02, on a loaded
#: machine). Each stage is scaled whole: the steps dominate an update, the candidate's forward passes an evaluation.
NETS_NOW_OVER_BEFORE = {"update_s": 0.751, "evaluate_s": 0.510}


#: How long after its health watch a canary's report reaches the controller and advances the wave: #61's run of
#: record (canary rollouts only) took 9.215 s from a rollout's start to its last camera, two deliveries of ~0.17 s
#: (#62's direct rollouts: 0.04 s to verified + 0.13 s to the swap) and a 7.2 s health watch: 1.68 s left.
CANARY_REPORT_LAG_S = 1.68


def stage_times(results_json: Path) -> dict[str, float]:
    """Median stage times of ``bench freshness`` (label, update, evaluation, export, per-wave delivery), if
    bench/results.json has them; {} otherwise. ``update_steps`` is the optimiser steps per update that run
    measured (20 for runs before it was recorded): a loop with other steps scales ``update_s`` by them. A run that
    does not record its ``nets`` trained the nets before they went channels-last: its update and evaluation are
    scaled by :data:`NETS_NOW_OVER_BEFORE`. A run that records its ``arch`` and ``frozen_blocks`` is brought back to
    small_cnn at 64x64 with no frozen blocks (bench/net_costs.py), the reference every variant is charged against."""
    import json

    from bench.net_costs import stage_scale

    try:
        doc = json.loads(Path(results_json).read_text())
        fig = next(b for b in doc["benchmarks"] if b["name"] == "freshness")["figures"]
        st = fig["stages"]
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return {}
    out = {"label_delay_s": st["label"]["p50"], "update_s": st["update"]["p50"],
           "evaluate_s": st["evaluation"]["p50"], "export_s": st["export"]["p50"]}
    settings = fig.get("settings", {})
    soak = max(3.0, round(float(settings.get("demo_stream_s", 120.0)) / 25.0, 1))
    # the measured rollout stage is the soaks before the last wave plus two deliveries (the canary's, the last
    # wave's); runs before the controller skipped waves that add no camera soaked twice on 4 cameras. Where the
    # devices' health watch outlasts the soak (the demo's 7.2 s against 4.8 s; the soak runs beside it since
    # c8d50ed) the difference is charged here, as delivery
    soaks = int(settings.get("rollout", {}).get("soaked_waves", 2))
    # since the demo sends a version that only changes weights to every camera at once (#62), the rollouts with
    # the canary are the ones this derivation is about; a run of only direct rollouts (a freshness run: its head
    # never grows) measured one delivery, to which the health watch's excess over the soak is added as above
    by_waves = fig.get("rollout_by_waves") or {}
    if "1" in by_waves:  # a direct rollout: one delivery, then the swap
        out["direct_delay_s"] = max(0.05, by_waves["1"]["p50"] + st.get("swap", {}).get("p50", 0.0))
    if str(soaks + 1) in by_waves:
        out["wave_delay_s"] = max(0.05, (by_waves[str(soaks + 1)]["p50"] - soaks * soak) / 2.0)
    elif "1" in by_waves:
        health = float(settings.get("rollout", {}).get("health_s", soak))
        excess = max(0.0, health + CANARY_REPORT_LAG_S - soak)
        out["wave_delay_s"] = max(0.05, out["direct_delay_s"] + excess / 2.0)
    else:
        out["wave_delay_s"] = max(0.05, (st["rollout"]["p50"] - soaks * soak) / 2.0)
    out["update_steps"] = settings.get("update", {}).get("steps", 20)
    if "nets" not in settings:  # measured on the nets before they went channels-last: charge them as they are now
        for stage, factor in NETS_NOW_OVER_BEFORE.items():
            out[stage] *= factor
    # a run on another net than small_cnn at 64x64, whole (the demo's since #60): back to that reference, which the
    # variants' stage costs are relative to
    scale = stage_scale(settings.get("arch", "small_cnn"), int(settings.get("frozen_blocks", 0)))
    for stage, factor in scale.items():
        out[stage] /= factor
    out["freshness_p50_s"] = fig.get("total_p50_s")
    out["freshness_p95_s"] = fig.get("total_p95_s")
    return {k: float(v) for k, v in out.items() if v is not None}


# -- hooks: where variants change the loop -------------------------------------------------------------------
@dataclass
class Hooks:
    """Optional callbacks a variant uses to change the loop without copying it.

    ``make_strategy(svc)``: return a strategy to use instead of the service's (a new strategy module, or one
    with augmentation). ``on_frame(cam, t, result)``: per camera and frame (e.g. test-time normalisation).
    ``on_tick(run, t)``: once per frame tick, before the trainer (e.g. drift-reactive budget or compute).
    ``on_camera(cam)``: once per camera after it is built (e.g. give its slot an input calibration).
    """

    make_strategy: Callable[[Any], Any] | None = None
    on_frame: Callable[[int, float, Any, Any], None] | None = None
    on_tick: Callable[[Any, float], None] | None = None
    on_camera: Callable[[Any], None] | None = None


# -- trace --------------------------------------------------------------------------------------------------
@dataclass
class RunTrace:
    """Per-camera, per-frame records of one run (index = frame index) and the run's events."""

    fps: float
    labels: list[str]
    truth: list[np.ndarray]            # class index per frame (into ``labels``)
    loop: list[np.ndarray]             # 1 = the camera's model was right
    frozen: list[np.ndarray]
    upper: list[np.ndarray]
    loop_pred: list[np.ndarray]
    drift: list[np.ndarray]            # edge drift signal active
    version: list[list[str]]
    uploads: list[int]
    events: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    freshness: list[float] = field(default_factory=list)   # label -> every camera runs a model trained on it
    seconds: float = 0.0
    # the frozen v0001 behind each camera's own input calibration (when the cameras calibrate): how much of the
    # loop's gain the torch-free edge calibration gets alone, without a single label
    frozen_cal: list[np.ndarray] = field(default_factory=list)


# -- the upper bound ------------------------------------------------------------------------------------------
class UpperBound:
    """A learner without the continual-learning constraints: every label seen so far is kept and trained on
    jointly with the whole bootstrap set, after every ``every``-th trainer update (``steps`` Adam steps on
    minibatches of 32 drawn with the edge's selection correction: an upload weighs min(1/p_select, 10), as in
    the loop, a bootstrap sample 1 -- so the minibatches follow the stream the cameras saw, old and new world). It continues from its previous retraining rather than from random
    weights (a compute saving: its first start, the bootstrap model, *is* a from-scratch training on the first
    part of that data), and nothing it learns is ever thrown away or replayed from a bounded memory.
    """

    def __init__(self, state_dir: Path, steps: int, seed: int, augment: str | None = None) -> None:
        import torch

        from trainer.augment import parse_augment

        from trainer.checkpoint import load_checkpoint

        ck = load_checkpoint(state_dir)
        assert ck is not None
        self.base = ck.build_model()
        ck.restore(self.base)
        self.labels = list(ck.labels)
        # the replay memory written by bootstrap holds the bootstrap training set (class-balanced, 2000 rows)
        mem = ck.replay_state or {}
        self.x0, self.y0 = mem["x"], mem["y"]
        self.steps = steps
        self.seed = seed
        self.augment = parse_augment(augment)  # each minibatch changed as the loop's learner changes its own
        self.model = copy.deepcopy(self.base)
        self.model.eval()
        self.opt: Any = None

    def retrain(self, xs: list[Any], names: list[str], p_select: list[float]) -> Any:
        import torch
        import torch.nn.functional as F

        from trainer.augment import augment
        from trainer.nets import grow_head

        for n in names:
            if n not in self.labels:
                self.labels.append(n)
        model = self.model
        if grow_head(model, len(self.labels)) or self.opt is None:
            self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = self.x0.float() / 255.0 if self.x0.dtype == torch.uint8 else self.x0.float()
        y = self.y0.long()
        w = torch.ones(len(y))
        if xs:
            x = torch.cat([x, torch.stack(xs)])
            y = torch.cat([y, torch.tensor([self.labels.index(n) for n in names])])
            w = torch.cat([w, torch.tensor([min(1.0 / max(p, 1e-6), 10.0) for p in p_select])])
        g = torch.Generator().manual_seed(self.seed + len(y))
        model.train()
        for _ in range(self.steps):
            idx = torch.multinomial(w, 32, replacement=True, generator=g)
            xb = augment(x[idx], self.augment, g) if self.augment is not None else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        model.eval()
        return copy.deepcopy(model)


# -- rollout model ------------------------------------------------------------------------------------------
@dataclass
class _Rollout:
    version: str
    path: Path
    start: float
    swaps: list[tuple[float, list[int]]]   # (time, cameras) in wave order
    end: float
    weights_only: bool = False             # on the weights-only waves: a newer version takes over once delivered


def plan_rollout(version: str, path: Path, start: float, cameras: int, waves: tuple[float, ...], soak: float,
                 delay: float, rng: np.random.Generator, overlap_last_soak: bool = False) -> _Rollout:
    """When each camera gets ``version``: waves take ceil(fraction x cameras) cameras in a random (per rollout)
    order; each wave is delivered after ``delay`` and soaks ``soak`` seconds once every member runs it; a wave
    that adds no camera is skipped, as the controller skips it (deploy/controller.py ``_finish_wave``), unless
    it is the last."""
    order = [int(c) for c in rng.permutation(cameras)]
    have = 0
    t = start
    swaps: list[tuple[float, list[int]]] = []
    for i, k in enumerate(wave_sizes(cameras, waves)):
        new = order[have:k]
        if new:
            t += delay
            swaps.append((t, new))
            have = k
        if i == len(waves) - 1 and overlap_last_soak:
            break
        if new or i == len(waves) - 1:  # the last wave is never skipped
            t += soak
    return _Rollout(version, path, start, swaps, t)


def weights_only(new: Path, old: Path) -> bool:
    """Whether the controller would take ``weights_only_waves`` for ``new`` over the fleet's ``old``: the same
    check (deploy/model_graph.py) on the same files."""
    from deploy.model_graph import weights_only_change
    from deploy.publisher import read_artifact

    a, b = read_artifact(new), read_artifact(old)
    return weights_only_change(a.data, a.compat, b.data, b.compat)[0]


def busy_s(s: LoopSettings, work: dict[str, Any], update_steps: int, promoted: bool) -> float:
    """Stream seconds the trainer is busy after a step that worked: an update is charged the measured update and
    evaluation times; a rehearsal round (``update.rehearse_steps``) its share of the update time by optimiser
    steps, and an evaluation if it made any step; either, the export when it promoted a version."""
    export = s.export_s if promoted else 0.0
    if work.get("kind") != "rehearsal":
        return s.update_s + s.evaluate_s + export
    steps = int(work.get("steps", 0))
    return s.update_s * steps / max(1, update_steps) + (s.evaluate_s if steps else 0.0) + export


# -- the run -----------------------------------------------------------------------------------------------------
def _trainer_config(state_dir: Path, s: LoopSettings, seed: int) -> Any:
    import msgspec

    from protocol.config import load_config
    from trainer.config import TrainerConfig

    over = {"state_dir": str(state_dir), "mqtt.url": None, "labeler.kind": "oracle",
            "labeler.delay_s": s.label_delay_s, "update.strategy": s.strategy, "update.wait_s": s.wait,
            "update.seed": seed, "torch_threads": 1, "log_level": "WARNING", "poll_s": s.poll_s}
    over.update({f"update.{k}": v for k, v in s.update.items()})
    over.update({f"eval.{k}": v for k, v in s.eval.items()})
    over.update({f"strategy.{k}": v for k, v in s.strategy_settings.items()})
    over.update({f"hints.{k}": v for k, v in s.hints.items()})
    cfg = load_config(TrainerConfig, overrides=over)
    # a None override means "not given" to load_config: set the label API off explicitly (as the demo does)
    return msgspec.structs.replace(cfg, labeler=msgspec.structs.replace(cfg.labeler, api_port=None),
                                   mqtt=msgspec.structs.replace(cfg.mqtt, url=None))


class _Camera:
    """One simulated camera: its source, model slot, pipeline and per-frame records."""

    def __init__(self, k: int, url: str, model_path: Path, s: LoopSettings, clock: Clock, hooks: Hooks) -> None:
        from edge.drift import DriftMonitor
        from edge.model import CalibrationConfig, InputCalibration, ModelSlot
        from edge.pipeline import Pipeline
        from edge.sampler import Sampler, SamplerConfig
        from edge.sources.sim import open_sim

        self.k = k
        self.device = f"cam-{k + 1}"
        self.url = url
        self.src = open_sim(url)
        self.hooks = hooks
        cal = InputCalibration(CalibrationConfig(mode=s.calibration)) if s.calibration != "off" else None
        self.slot = ModelSlot(threads=1, calibration=cal)
        self.slot.swap(self.load(model_path))
        seed = int(url.split("seed=")[1].split("&")[0])
        cfg = SamplerConfig(budget_per_minute=s.budget_per_minute, budget_per_hour=None, budget_per_day=None,
                            p_min=s.p_min, seed=seed)
        self.sampler = Sampler(cfg, clock=clock.time)
        self.drift = DriftMonitor()
        self.pipeline = Pipeline(self.slot, self.sampler, self.drift, s.uncertainty)
        self.seq = 0

    def load(self, path: Path) -> Any:
        from edge.model import EdgeModel

        return EdgeModel.load(path, threads=1)


def run_loop(state_src: Path, workdir: Path, urls: list[str], s: LoopSettings, seed: int,
             hooks: Hooks | None = None, progress: Callable[[str], None] | None = None) -> RunTrace:
    """Run the loop on the cameras' ``urls`` from the bootstrapped trainer state ``state_src`` (copied to
    ``workdir``, which is replaced). Returns the per-frame trace."""
    import torch

    from trainer.service import TrainerService
    from trainer.store import IncomingSample

    hooks = hooks or Hooks()
    t_wall = _time.perf_counter()
    state = workdir / "trainer"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(state_src, state)
    rng = np.random.default_rng([seed, 0xADA])
    # a wall-clock-like epoch: the stream starts somewhere inside a calendar minute (budget windows)
    clock = Clock(1_700_000_000.0 + float(rng.uniform(0, 60)))
    boot_path = sorted((state / "models").glob("v0001*.onnx"))[0] if (state / "models").exists() else None
    with sim_clock(clock):
        promoted: list[tuple[str, Path, float]] = []
        svc = TrainerService(_trainer_config(state, s, seed), exporter="torchscript",
                             on_promoted=lambda v, p, m: promoted.append((v, Path(p), clock.t)))
        if hooks.make_strategy is not None:
            svc.strategy = hooks.make_strategy(svc)
        if boot_path is None:
            boot_path = svc.registry.latest_promoted().path
        cams = [_Camera(k, u, boot_path, s, clock, hooks) for k, u in enumerate(urls)]
        if hooks.on_camera is not None:
            for c in cams:
                hooks.on_camera(c)
        labels = list(cams[0].src.labels)
        frozen = cams[0].load(boot_path) if s.frozen else None
        frozen_cal = [c.load(boot_path) for c in cams] if s.frozen and s.calibration != "off" else []
        ub = UpperBound(state, s.upper_steps, seed, s.upper_augment) if s.upper_bound else None
        ub_model = copy.deepcopy(ub.model) if ub else None
        ub_pending: list[tuple[float, Any]] = []
        n_frames = int(round(s.stream_s * s.fps))
        C = len(cams)
        tr = RunTrace(fps=s.fps, labels=labels,
                      truth=[np.zeros(n_frames, np.int16) for _ in cams],
                      loop=[np.zeros(n_frames, np.uint8) for _ in cams],
                      frozen=[np.zeros(n_frames, np.uint8) for _ in cams],
                      upper=[np.zeros(n_frames, np.uint8) for _ in cams],
                      loop_pred=[np.zeros(n_frames, np.int16) for _ in cams],
                      drift=[np.zeros(n_frames, np.uint8) for _ in cams],
                      version=[[] for _ in cams], uploads=[0] * C,
                      frozen_cal=[np.zeros(n_frames, np.uint8) for _ in frozen_cal])
        busy_until = 0.0
        next_poll = 0.0
        active: _Rollout | None = None
        fleet_version, fleet_path = "v0001", boot_path
        runs_version: dict[str, int] = {}        # version -> last label_seq it trained on
        margins: dict[str, float] = {}           # version -> gate margin on the recent slice, points
        cam_version = ["v0001"] * C
        roll_rng = np.random.default_rng([seed, 0x5011])
        uploads: list[tuple[float, IncomingSample]] = []
        for i in range(n_frames):
            t = i / s.fps
            clock.t = t
            # 1. deployment: rollout waves due now
            if active is not None:
                while active.swaps and active.swaps[0][0] <= t:
                    _, members = active.swaps.pop(0)
                    for k in members:
                        cams[k].slot.swap(cams[k].load(active.path))
                        cam_version[k] = active.version
                    tr.events.append({"t": t, "kind": "swap", "version": active.version, "cameras": members})
                # a rollout on the weights-only waves is superseded by a newer promotion once every camera runs
                # it (deploy/rollout_feeder.py ``_free``); any other rollout completes after its last soak
                take_over = active.weights_only and s.weights_only_take_over and any(p[2] <= t for p in promoted)
                if not active.swaps and (t >= active.end or take_over):
                    fleet_version, fleet_path = active.version, active.path
                    tr.events.append({"t": t, "kind": "completed" if t >= active.end else "superseded",
                                      "version": active.version})
                    active = None
            ready = [p for p in promoted if p[2] <= t]
            if active is None and ready:
                v, path, _ = ready[-1]
                promoted = [p for p in promoted if p[2] > t]
                if v != fleet_version:
                    soak = s.soak
                    if s.fast_soak_margin is not None and margins.get(v, -1e9) >= s.fast_soak_margin:
                        soak = s.fast_soak_s
                    fast = s.weights_only_waves is not None and weights_only(path, fleet_path)
                    waves = s.weights_only_waves if fast else s.waves
                    delay = s.direct_delay_s if fast and s.direct_delay_s is not None else s.wave_delay_s
                    active = plan_rollout(v, path, t, C, waves, soak, delay, roll_rng, s.overlap_last_soak)
                    active.weights_only = fast
                    tr.events.append({"t": t, "kind": "rollout", "version": v, "waves": list(waves)})
            while ub_pending and ub_pending[0][0] <= t:
                ub_model = ub_pending.pop(0)[1]
            # 2. frames
            frames = [c.src.frame_at(i) for c in cams]
            for k, (c, f) in enumerate(zip(cams, frames)):
                res = c.pipeline.step(f.image)
                truth = labels.index(str(f.truth))
                pred = res.prediction.label
                tr.truth[k][i] = truth
                tr.loop[k][i] = pred == f.truth
                tr.loop_pred[k][i] = labels.index(pred) if pred in labels else -1
                tr.drift[k][i] = c.drift.active
                tr.version[k].append(cam_version[k])
                if hooks.on_frame is not None:
                    hooks.on_frame(k, t, c, res)
                if res.decision.selected:
                    uploads.append((t + 0.002, _incoming(c, f, res, s)))
                    tr.uploads[k] += 1
            if frozen is not None or ub_model is not None:
                x = (frozen or cams[0].slot.get()).preprocess_batch([f.image for f in frames])
                if frozen is not None:
                    for k, p in enumerate(frozen.predictions(frozen.predict(x))):
                        tr.frozen[k][i] = p.label == frames[k].truth
                for k, fz in enumerate(frozen_cal):
                    cams[k].slot.calibration.apply(fz)  # the camera's map as it stands now (identity until engaged)
                    tr.frozen_cal[k][i] = fz.predictions(fz.predict(fz.preprocess(frames[k].image)))[0].label \
                        == frames[k].truth
                if ub_model is not None:
                    # the upper bound sees what the loop's cameras feed their models: each camera's input
                    # calibration applies (it was trained on calibrated uploads); the frozen control sees raw input
                    xu = np.concatenate([c.slot.get().preprocess(f.image) for c, f in zip(cams, frames)])
                    with torch.no_grad():
                        out = ub_model(torch.from_numpy(xu)).argmax(1).tolist()
                    for k, j in enumerate(out):
                        tr.upper[k][i] = ub.labels[j] == frames[k].truth  # type: ignore[union-attr]
            # 3. uploads reach the store
            due = [u for u in uploads if u[0] <= t]
            if due:
                uploads = [u for u in uploads if u[0] > t]
                svc.store.add_batch([u[1] for u in due])
            if hooks.on_tick is not None:
                hooks.on_tick(svc, t)
            # 4. the trainer, when it is not busy
            if t >= busy_until and t >= next_poll:
                next_poll = t + s.poll_s
                n_before = len(promoted)
                if svc.step():
                    upd = svc.history[-1]
                    dec = svc.last_decision or {}
                    prom = len(promoted) > n_before
                    work = svc.last_work or {"kind": "update"}
                    rehearsal = work["kind"] == "rehearsal"
                    busy = busy_s(s, work, svc.config.update.steps, prom)
                    busy_until = t + busy
                    if prom:  # the announcement happens when evaluation and export are done
                        v, p, _ = promoted[-1]
                        promoted[-1] = (v, p, t + busy)
                        runs_version[v] = upd[2]
                        rec = dec.get("recent") or {}
                        if "candidate_accuracy" in rec:
                            margins[v] = 100 * (rec["candidate_accuracy"] - rec["deployed_accuracy"])
                    tr.updates.append({"t": t, "update": upd[0], "first": upd[1], "last": upd[2], "n": upd[3],
                                       "promoted": dec.get("version") if prom else None,
                                       "reason": dec.get("reason", ""),
                                       **({"rehearsal": int(work.get("steps", 0))} if rehearsal else {})})
                    n_updates = sum("rehearsal" not in u for u in tr.updates)
                    if ub is not None and not rehearsal and n_updates % s.upper_every == 0:
                        rows = svc.store.labelled_after(0, limit=100000, heldout=False)
                        rows = [r for r in rows if r.label_seq <= upd[2]]
                        xs = [svc._tensor(r) for r in rows]  # noqa: SLF001 - the service's own decoding
                        m = ub.retrain(xs, [str(r.label) for r in rows], [float(r.p_select) for r in rows])
                        ub_pending.append((t + s.update_s + s.evaluate_s + s.export_s + s.wave_delay_s
                                           + soaked_waves(C, s.waves) * s.soak, m))
            if svc.config.hints.enabled:
                _deliver_hint(svc, cams, tr, t)
            if progress is not None and i % int(10 * s.fps) == 0:
                progress(f"t={t:5.0f}s fleet {fleet_version} updates {len(tr.updates)} "
                         f"loop {np.mean([tr.loop[k][max(0, i - 120):i + 1].mean() for k in range(C)]):.3f}")
        tr.freshness = _freshness(svc, tr, clock.base, C)
        svc.stop()
    tr.seconds = _time.perf_counter() - t_wall
    return tr


def _deliver_hint(svc: Any, cams: list[_Camera], tr: RunTrace, t: float) -> None:
    """What the trainer's retained ``selection_hint`` and each camera's handler do: the service publishes
    (changes, renewals, withdrawal) and every camera takes it within its own caps (edge.hints.take_hint, as
    ``EdgeNode`` does; MQTT's ~ms ignored)."""
    from edge.hints import take_hint
    from protocol.reports import decode_report

    def publish(_topic: str, payload: bytes, _qos: int, _retain: bool) -> None:
        for c in cams:
            take_hint(c.sampler, payload, now=c.sampler.clock())  # the simulated clock, as the hint's expiry
        h = decode_report(payload, "selection_hint")
        tr.events.append({"t": t, "kind": "hint", "boost": dict(h.boost), "budget": c.sampler.hint.budget_per_minute
                          if c.sampler.hint else 0, "reason": h.reason})

    svc.publish_hint(publish)


def _incoming(cam: _Camera, frame: Any, res: Any, s: LoopSettings) -> Any:
    """What the trainer's store receives for an upload: the edge's Sample fields and its JPEG ROI crop."""
    from trainer.store import IncomingSample

    model = cam.slot.get()
    image, roi = frame.image, None
    if model.roi is not None:
        image, roi = model.crop(frame.image), model.roi
    image = model.calibrate_image(image)  # what the model saw (identity unless input calibration is engaged)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cam.seq += 1
    h, w = frame.image.shape[:2]
    pred, d = res.prediction, res.decision
    return IncomingSample(
        sample_id=f"{cam.device}.1.{cam.seq}", device=cam.device, seq=cam.seq, msg_id=f"{cam.device}-{cam.seq}",
        ts=0.0, model_version=model.version, topk=pred.topk, uncertainty=d.score, uncertainty_kind=s.uncertainty,
        p_select=d.p_select, reason=d.reason, frame_index=frame.index, width=w, height=h,
        roi=tuple(roi) if roi is not None else None, truth=frame.truth, source=cam.url[:200],
        content_type="image/jpeg", image=buf.tobytes())


def _freshness(svc: Any, tr: RunTrace, base: float, cameras: int) -> list[float]:
    """Per training label: seconds from its labelling until every camera runs a version trained on it (what
    ``bench freshness`` measures); labels that never reach the whole fleet are left out."""
    fleet_at: dict[str, float] = {}
    reached: dict[str, set[int]] = {}
    for e in tr.events:
        if e["kind"] == "swap":
            reached.setdefault(e["version"], set()).update(e["cameras"])
            if len(reached[e["version"]]) == cameras:
                fleet_at[e["version"]] = e["t"]
    trained = [(u["promoted"], u["last"]) for u in tr.updates if u["promoted"] and u["promoted"] in fleet_at]
    out = []
    for r in svc.store.labelled_after(0, limit=100000, heldout=False):
        done = [fleet_at[v] for v, last in trained if last >= r.label_seq]
        if done:
            out.append(min(done) - (r.labelled_at - base))
    return out
