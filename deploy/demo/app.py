"""``edgeloop demo`` as an application object: start the loop's services one phase at a time, stop them in reverse.

What runs (and why it is wired like this), in the order :meth:`DemoApp.start` starts it
--------------------------------------------------------------------------------------------
* **Broker** (:meth:`~DemoApp.start_broker`): the embedded one, or ``--broker URL``. Everything below talks
  to it over MQTT; nothing is short-circuited in-process. Secure by default, as ``edgeloop broker`` is: a
  fresh PKI in ``{out}/pki`` (a CA, the broker's certificate, the trainer, deploy and monitor identities, one
  device identity per camera) and mosquitto with TLS, client certificates and the generated ACL; every service
  and camera connects with its own identity, and the rollout gate counts only the PKI's devices.
  ``--insecure`` (or no mosquitto: amqtt in a process of its own, which checks nothing) runs an anonymous
  loopback broker and says so.
* **Keys** (:meth:`~DemoApp.init_keys`): a fresh signing key per run; the cameras trust only it.
* **Bootstrap** (:meth:`~DemoApp.init_bootstrap`, before anything else competes for the 2 cores): simulated
  frames of the scenario's *initial* conditions (no drift, other seeds than the cameras) rendered as ROI
  crops (:mod:`deploy.demo.bootstrap`) and handed to :func:`trainer.bootstrap.bootstrap` -> v0001.
* **Plan** (:meth:`~DemoApp.init_plan`): the drift script laid out on the time that is left, and the rollout
  policy and trainer settings derived from it (:mod:`deploy.demo.plan`).
* **Rollout service** (threads of this process): :class:`deploy.service.DeployService`, exactly what
  ``edgeloop deploy run`` runs on a line - the controller, the promotion intake and the feeder in ``auto``
  mode with the demo's policy (one rollout at a time, the newest promoted version next).
* **Trainer** (thread of this process): :class:`trainer.service.TrainerService` with oracle labels (the
  simulator's ground truth travels with each sample), buffered importance-weighted updates, held-out gate,
  ONNX export, registry; it announces each promoted version with its bytes on the broker
  (trainer/announce.py), where the rollout service picks it up - nothing is handed over in-process.
* **Monitor** (:mod:`deploy.demo.monitor`): every device's stats and model status, as an operator's tool
  would see them; the live view and the report are built from these messages only.
* **Frozen control** (:mod:`deploy.demo.frozen_control`): v0001, never updated, on exactly the frames each
  camera saw.
* **Cameras** (:mod:`deploy.demo.cameras`): one ``edgeloop edge`` process each on a real-time
  ``sim:...`` URL with the scripted drift, its own state dir, v0001 and the run's public key.

:meth:`DemoApp.stream` then runs until every camera has streamed the planned seconds; :meth:`DemoApp.stop`
stops everything in reverse order, each step guarded, reading what the report needs from each service as it
goes; :meth:`DemoApp.finish` writes the report (:mod:`deploy.demo.report`). ``bench/freshness.py`` runs the
same phases with its own plan and loop.

Timeline: ``--duration`` is the whole run's wall-clock budget (setup, streaming, report). After the
bootstrap, the streaming phase gets what is left minus a reserve for teardown and the report, and the
drift script is laid out on it: a lighting change at 30 % (darker, colour cast, 4 s ramp), a new defect
class at 55 % (``newclass:crack``). Ctrl-C (or SIGTERM) stops everything started and still writes the
report from what was collected.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from deploy.demo.bootstrap import bootstrap_epochs, min_epochs, render_bootstrap_set
from deploy.demo.cameras import Camera, start_camera, stop_cameras
from deploy.demo.frozen_control import FrozenControl
from deploy.demo.live import CameraRow, View, ViewState, make_view
from deploy.demo.monitor import Monitor
from deploy.demo.plan import (CALIBRATION, FLEET, MIN_STREAM_S, MODEL_ID, PREFIX, SCENARIOS, SLOW_UPDATE_STEPS,
                              TEARDOWN_RESERVE_S, DemoOptions, Timeline, bootstrap_budget, camera_seed,
                              confusion_seed, demo_arch, demo_policy, demo_trainer_settings, learner_boot_epochs,
                              plan_timeline, sim_url)
from deploy.rollout_feeder import RolloutFeeder
from deploy.service import DeployService

log = logging.getLogger("edgeloop.demo")

__all__ = ["DemoApp", "Events", "RunRecord", "run"]


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


# -- the record --------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """Everything the report needs, collected during the run (written as record.json for re-rendering).

    ``window_frames`` and ``confusion_url``/``confusion_seed`` are what the report needs to know of the
    demo's plan (the accuracy window; where unseen post-drift frames come from), so it never imports it.
    """

    options: dict[str, Any]
    broker: dict[str, Any]
    timeline: dict[str, Any]
    cameras: list[dict[str, Any]]
    wall_start: float
    t0_stream: float | None = None
    wall_end: float | None = None
    setup_s: float = 0.0
    window_frames: int = 0
    confusion_url: str = ""
    confusion_seed: int = 0
    calibration: str = "off"  # the cameras' input calibration mode: the confusion frames go through it too
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


# -- the application ---------------------------------------------------------------------------------------
class DemoApp:
    """The loop on one machine: :meth:`start` (one call per phase), :meth:`stream`, :meth:`stop`, :meth:`finish`;
    :meth:`run` does all four and stops everything it started, whatever happens."""

    client_name = "edgeloop-demo"   # MQTT client ids: {client_name}-trainer-{pid}, {client_name}-monitor-{pid}

    def __init__(self, opts: DemoOptions, view: View) -> None:
        self.opts = opts
        self.out = Path(opts.out).resolve()
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.view = view
        self.events = Events(view)
        self.state = ViewState(phase="setup")
        self.t_start = time.monotonic()
        self.deadline = self.t_start + opts.duration
        self.rec = RunRecord(options=asdict(opts), broker={}, timeline={}, cameras=[], wall_start=time.time())
        self.devices = [f"cam-{k + 1}" for k in range(opts.cameras)]
        self.model0 = self.out / "v0001.onnx"   # what the cameras are provisioned with
        self.stop_requested = threading.Event()
        self.broker: Any = None
        self.broker_url = ""
        self.pki: Any = None  # deploy.pki.PKI of a secure run
        self.signing_key = self.public_key = Path()
        self.boot: Any = None
        self.timeline: Timeline | None = None
        self.settings_stream_s = 0.0
        self.slow = False  # the bootstrap found this machine slow or busy: the trainer's updates take fewer steps
        self.trainer_settings: dict[str, Any] = {}  # what the demo set in the trainer's config (dotted keys)
        self.policy: Any = None
        self.deploy: DeployService | None = None
        self.ctl: Any = None
        self.feeder: RolloutFeeder | None = None
        self.trainer: Any = None
        self.monitor: Monitor | None = None
        self.control: FrozenControl | None = None
        self.cams: list[Camera] = []

    # -- the whole run -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start, stream, stop, finish; returns :meth:`finish`'s result (the demo: summary.json's content)."""
        with self._sigterm_raises():
            self.view.start()
            try:
                self.start()
                self.stream()
            except (KeyboardInterrupt, _Stop):
                self.rec.interrupted = True
                self.events.add("stopped", "interrupted: stopping everything the demo started")
            except Exception as exc:  # still tear down and report what we have
                if self.stop_requested.is_set():  # SIGTERM inside a component that wrapped it (the ONNX exporter)
                    self.rec.interrupted = True
                    self.events.add("stopped", "terminated: stopping everything the demo started")
                else:
                    log.exception("demo failed")
                    self.rec.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                    self.events.add("failed", self.rec.errors[-1])
            finally:
                self.stop()
                self.view.stop()
        self.rec.wall_end = time.time()
        return self.finish()

    @contextlib.contextmanager
    def _sigterm_raises(self) -> Iterator[None]:
        """SIGTERM raises :class:`_Stop` in the main thread while the run lasts (signals only reach that one)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_term(*_: Any) -> None:
            self.stop_requested.set()
            raise _Stop()

        old = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old)

    # -- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bring the loop up in dependency order; :meth:`stop` takes it down in reverse."""
        self.start_broker()
        self.init_keys()
        self.init_bootstrap()
        self.init_plan()
        self.start_deploy()
        self.start_trainer()
        self.start_monitor()
        self.start_control()
        self.start_cameras()
        self.state.phase = "streaming"

    def start_broker(self) -> None:
        """``--broker``; else mosquitto with this run's PKI (TLS, client certificates, ACL); ``--insecure`` or no
        mosquitto: an anonymous loopback broker (mosquitto, else amqtt in its own process), with a warning."""
        if self.opts.broker:
            self.rec.broker = {"kind": "external", "url": self.opts.broker}
            self.broker_url = self.opts.broker
        else:
            from deploy.broker import find_mosquitto, start_amqtt_process, start_broker

            mosquitto = find_mosquitto() is not None
            if mosquitto and not self.opts.insecure:
                self.pki = self.init_pki()
                self.broker = start_broker(kind="mosquitto", workdir=self.out / "broker", pki=self.pki.root,
                                           prefix=PREFIX)
            else:
                why = ("--insecure" if self.opts.insecure else
                       "mosquitto is not installed and amqtt cannot check certificates or ACLs")
                log.warning("INSECURE demo broker (%s): anonymous clients on loopback may publish anything, "
                            "forge device reports and manifests", why)
                self.events.add("setup", f"INSECURE: anonymous loopback broker ({why})")
                self.broker = (start_broker(kind="mosquitto", workdir=self.out / "broker") if mosquitto
                               else start_amqtt_process())
            self.rec.broker = {"kind": self.broker.kind, "url": self.broker.url, "secure": self.pki is not None}
            self.broker_url = self.broker.url
        self.state.broker = f"{self.rec.broker['kind']} {self.broker_url}"
        self.events.add("setup", f"broker: {self.rec.broker['kind']} at {self.broker_url}"
                                 + (" (TLS, client certificates, ACL)" if self.pki is not None else ""))

    def init_pki(self) -> Any:
        """A fresh PKI per run (like the signing key): the services' identities and one per camera."""
        import shutil

        from deploy.pki import init_pki

        shutil.rmtree(self.out / "pki", ignore_errors=True)
        pki = init_pki(self.out / "pki")
        for d in self.devices:
            pki.issue(d, "device", fleet=FLEET)
        return pki

    def identity(self, name: str) -> dict[str, str]:
        """``{"ca_file", "cert_file", "key_file"}`` of a PKI identity ({} on an insecure or external broker)."""
        if self.pki is None:
            return {}
        from protocol.mqtt import identity_files

        return dict(zip(("ca_file", "cert_file", "key_file"), identity_files(self.pki.identity_dir(name))))

    def init_keys(self) -> None:
        """Fresh signing keys per run: the demo's fleet trusts only this run's controller."""
        from deploy.keys import generate

        keydir = self.out / "keys"
        for p in (keydir / "signing.key", keydir / "signing.pub"):
            p.unlink(missing_ok=True)
        self.signing_key, self.public_key = generate(keydir)

    def init_bootstrap(self) -> None:
        """v0001 on the scenario's initial conditions, trained for what is left of the bootstrap budget."""
        import shutil

        opts, size = self.opts, SCENARIOS[self.opts.scenario]["input_size"]
        arch = demo_arch(opts)
        for sub in ("trainer", "deploy", "cameras", "bootstrap"):
            shutil.rmtree(self.out / sub, ignore_errors=True)
        t_b = time.monotonic()
        labels, roi = render_bootstrap_set(opts, self.out / "bootstrap" / "images")
        self.state.phase = "bootstrap"
        self.view.update(self.state)
        self.events.add("setup", f"rendered {opts.bootstrap_frames} initial-condition frames ({', '.join(labels)}); "
                                 f"bootstrapping {arch}")
        from trainer.bootstrap import bootstrap  # after rendering: importing torch is part of the budget

        epochs = opts.bootstrap_epochs or self._bootstrap_epochs(arch, time.monotonic() - t_b, size)
        boot = bootstrap(self.out / "trainer", self.out / "bootstrap" / "images", arch=arch, epochs=epochs,
                         labels=labels, roi=list(roi), input_size=size, progress=False, seed=opts.seed,
                         torch_threads=2, lr=3e-3, batch_size=32)
        self.boot = boot
        self.rec.bootstrap = {"version": boot.version, "accuracy": boot.metrics.get("accuracy"),
                              "macro_f1": boot.metrics.get("macro_f1"), "train": boot.train_size,
                              "heldout": boot.heldout_size, "seconds": round(time.monotonic() - t_b, 1),
                              "epochs": epochs, "labels": labels, "arch": arch}
        self.events.add("setup", f"bootstrap {boot.version}: held-out accuracy {boot.metrics.get('accuracy', 0):.3f} "
                                 f"on {boot.heldout_size} ({self.rec.bootstrap['seconds']:.0f}s)")
        shutil.copyfile(boot.path, self.model0)

    def _bootstrap_epochs(self, arch: str, render_s: float, input_size: int | None = None) -> int:
        budget_s = bootstrap_budget(self.opts, render_s)
        n_train = int(0.8 * self.opts.bootstrap_frames)
        epochs, per_sample = bootstrap_epochs(arch, n_train, budget_s, input_size=input_size)
        log.info("bootstrap: %.2f ms per sample step measured -> %d epochs in %.0fs", per_sample * 1e3, epochs,
                 budget_s)
        if epochs == min_epochs(n_train) and epochs * n_train * per_sample * 1.15 > budget_s * 1.2:
            normal = demo_trainer_settings(self.opts, 127.0)["update.steps"]
            self.slow = True
            fewer = (f", and the trainer's updates take {SLOW_UPDATE_STEPS} optimiser steps instead of {normal}"
                     if normal > SLOW_UPDATE_STEPS else "")
            self.events.add("setup", f"this machine is slow or busy ({per_sample * 1e3:.1f} ms per sample step): the "
                                     f"bootstrap takes its minimum of {epochs} epochs, ~{epochs * n_train * per_sample * 1.15:.0f} s "
                                     f"instead of {budget_s:.0f} s, and the demo runs late{fewer}")
        floor = learner_boot_epochs(self.opts)
        if floor is not None and epochs < floor:
            self.events.add("setup", f"the bootstrap takes {floor} epochs, ~{floor * n_train * per_sample * 1.15:.0f} s, "
                                     f"where the {budget_s:.0f} s budget gives {epochs}: the scenario's learner keeps "
                                     f"v0001's first blocks and was measured with {floor}; the stream is that much "
                                     "shorter (a longer --duration gives it back)")
            epochs = floor
        return epochs

    def init_plan(self) -> None:
        """Lay the drift script out on the time that is left (minus the teardown reserve)."""
        stream_s = max(MIN_STREAM_S, (self.deadline - time.monotonic()) - TEARDOWN_RESERVE_S - 4.0)
        self.use_timeline(plan_timeline(stream_s, self.opts.fps, self.opts.scenario))

    def use_timeline(self, timeline: Timeline, settings_stream_s: float | None = None) -> None:
        """Adopt a stream plan; the rollout policy and the trainer's settings are derived from
        ``settings_stream_s`` seconds of stream (default: the plan's own length)."""
        self.timeline = timeline
        self.settings_stream_s = settings_stream_s or timeline.stream_s
        self.policy = demo_policy(self.settings_stream_s)
        self.rec.timeline = asdict(timeline)
        self.rec.window_frames = timeline.window_frames
        self.rec.confusion_seed = confusion_seed(self.opts.seed)
        self.rec.confusion_url = sim_url(self.opts, self.rec.confusion_seed, timeline, realtime=False)
        self.rec.calibration = CALIBRATION
        self.state.stream_len = timeline.stream_s
        self.state.timeline = timeline.events()

    def start_deploy(self) -> None:
        """The rollout service: promoted versions (announced by the trainer over MQTT) -> rollouts, one at a
        time, rollback target the last version the whole fleet ran (at first v0001, the trainer's bootstrap)."""
        from deploy.service import DeployServiceConfig, MetricsSettings, MqttSettings

        cfg = DeployServiceConfig(state_dir=str(self.out / "deploy"), signing_key=str(self.signing_key), fleet=FLEET,
                                  mode="auto", model_id=MODEL_ID, rollout=self.policy, tick_s=0.2,
                                  pki_dir=str(self.pki.root) if self.pki is not None else None,
                                  mqtt=MqttSettings(url=self.broker_url, topic_prefix=PREFIX,
                                                    client_id=f"{self.client_name}-deploy-{os.getpid()}",
                                                    **self.identity("deploy")),
                                  metrics=MetricsSettings(enabled=False))
        self.deploy = DeployService(cfg, notify=self.events.add).start()
        self.ctl, self.feeder = self.deploy.ctl, self.deploy.feeder

    def start_trainer(self) -> None:
        from protocol.config import load_config
        from trainer.config import TrainerConfig
        from trainer.service import TrainerService

        self.trainer_settings = demo_trainer_settings(self.opts, self.settings_stream_s, slow=self.slow)
        cfg = load_config(TrainerConfig, self.opts.trainer_config, overrides={
            "state_dir": str(self.out / "trainer"), "model_id": MODEL_ID, "mqtt.url": self.broker_url,
            "mqtt.topic_prefix": PREFIX, "mqtt.client_id": f"{self.client_name}-trainer-{os.getpid()}",
            **{f"mqtt.{k}": v for k, v in self.identity("trainer").items()}, **self.trainer_settings})
        self.trainer = TrainerService(cfg).start()

    def start_monitor(self) -> None:
        url = self.broker.client_url("monitor") if self.pki is not None else self.broker_url
        self.monitor = Monitor(url, self.devices, self.events.add,
                               client_id=f"{self.client_name}-monitor-{os.getpid()}").start()

    def start_control(self) -> None:
        """The frozen v0001 on the frames the cameras reach (same URLs, without real-time pacing)."""
        assert self.monitor is not None
        urls = {d: sim_url(self.opts, camera_seed(self.opts.seed, k), self.timeline, realtime=False)
                for k, d in enumerate(self.devices)}
        self.control = FrozenControl(self.model0, urls, self.monitor).start()

    def start_cameras(self) -> None:
        assert self.timeline is not None
        for k, d in enumerate(self.devices):
            seed = camera_seed(self.opts.seed, k)
            self.cams.append(Camera(d, seed, sim_url(self.opts, seed, self.timeline, realtime=True),
                                    self.out / "cameras" / d, self.out / "logs" / f"{d}.log"))
        self.rec.cameras = [{"device": c.device, "seed": c.seed, "url": c.url} for c in self.cams]
        for c in self.cams:
            start_camera(c, self.broker_url, self.model0, self.public_key, self.opts, self.timeline.window_frames,
                         identity=self.pki.identity_dir(c.device) if self.pki is not None else None)
            self.rec.pids[c.device] = c.pid  # type: ignore[assignment]
        self.rec.setup_s = round(time.monotonic() - self.t_start, 1)
        self.events.add("setup", f"{len(self.cams)} cameras started ({self.opts.fps:g} fps, budget "
                                 f"{self.opts.budget}/min each); streaming {self.timeline.stream_s:.0f}s")

    # -- stream --------------------------------------------------------------------------------------------
    def stream(self) -> None:
        """Until every camera has streamed the planned seconds, the hard deadline, or every camera exited."""
        hard_end = self.deadline - TEARDOWN_RESERVE_S
        fired: set[str] = set()
        while True:
            snap = self.monitor.snapshot() if self.monitor is not None else {}
            self._mark_drifts(snap, fired)
            self._check_cameras(fired)
            self._refresh_view(snap)
            if self._streamed_all(snap) or time.monotonic() >= hard_end or self._all_exited():
                break
            time.sleep(0.25)
        self.state.phase = "stopping"
        self.view.update(self.state)

    def _mark_drifts(self, snap: dict[str, dict[str, Any]], fired: set[str]) -> None:
        """Fix stream second 0 (the first camera's frame 0) and log each scripted drift when it starts."""
        ev = self.events
        if ev.t0_stream is None and snap:
            ev.t0_stream = min(r["wall"] - r["index"] / self.opts.fps for r in snap.values())
            self.rec.t0_stream = ev.t0_stream
        self.state.stream_t = ev.stream_t(time.time()) if ev.t0_stream else 0.0
        for t, what in self.timeline.events():  # type: ignore[union-attr]
            if self.state.stream_t >= t and what not in fired:
                fired.add(what)
                ev.add("drift", f"{what} on every camera", ev.t0_stream + t if ev.t0_stream else None)

    def _check_cameras(self, fired: set[str]) -> None:
        for c in self.cams:
            if c.proc is not None and c.proc.poll() is not None and f"exit:{c.device}" not in fired:
                fired.add(f"exit:{c.device}")
                self.rec.errors.append(f"{c.device} exited with code {c.proc.returncode} (see logs/{c.device}.log)")
                self.events.add("failed", self.rec.errors[-1])

    def _refresh_view(self, snap: dict[str, dict[str, Any]]) -> None:
        self.state.elapsed = time.monotonic() - self.t_start
        self.state.cameras = self._camera_rows(snap)
        st = self.trainer.status()
        self.state.trainer = {"labels": st["store"]["labelled"], "updates": st["counters"]["updates"],
                              "buffered": st["buffered"], "promoted": st["promoted"], "classes": st["labels"]}
        self.state.rollout = self.feeder.describe()  # type: ignore[union-attr]
        self.view.update(self.state)

    def _camera_rows(self, snap: dict[str, dict[str, Any]]) -> list[CameraRow]:
        rows = []
        w = self.timeline.window_frames  # type: ignore[union-attr]
        control, status = self.control, (self.monitor.status if self.monitor is not None else {})
        for d in self.devices:
            r = snap.get(d)
            st = status.get(d)
            roll = f"{st['version']} {st['state']}" if st is not None else ""
            if r is None:
                rows.append(CameraRow(d, online=False, rollout=roll))
                continue
            frozen = control.window(d, r["index"], w) if control is not None else None
            if frozen is None and control is not None and control.correct.get(d):
                c = control.correct[d]
                frozen = sum(c[-w:]) / len(c[-w:])
            rows.append(CameraRow(d, True, r["accuracy"], frozen, r["frames"], r["uploads"], r["fps"],
                                  r["model"] or "-", roll))
        return rows

    def _streamed_all(self, snap: dict[str, dict[str, Any]]) -> bool:
        if len(snap) < len(self.devices):
            return False
        return min(snap[d]["index"] for d in self.devices) >= self.timeline.stream_s * self.opts.fps  # type: ignore[union-attr]

    def _all_exited(self) -> bool:
        return all(c.proc is not None and c.proc.poll() is not None for c in self.cams)

    # -- stop ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop in reverse order of :meth:`start` (the cameras first: everything else consumes what they send),
        each step guarded so that one failure, or a second Ctrl-C, cannot leave the others running."""
        for what, step in (("cameras", self.stop_cameras), ("frozen control", self.stop_control),
                           ("monitor", self.stop_monitor), ("trainer", self.stop_trainer),
                           ("rollout service", self.stop_deploy), ("broker", self.stop_broker)):
            self._guard(what, step)
        self.rec.events = list(self.events.items)
        for c in self.cams:
            if c.proc is not None and c.proc.poll() is None:
                self.rec.errors.append(f"{c.device} (pid {c.pid}) still running after stop")

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - a second Ctrl-C here must not skip the rest
            self.rec.errors.append(f"stopping {what}: {type(exc).__name__}: {exc}")
            log.exception("stopping %s", what)

    def stop_cameras(self) -> None:
        """SIGTERM the cameras (they flush stats and close their outbox); keep every stats row they sent."""
        try:
            stop_cameras(self.cams)
        finally:
            if self.monitor is not None:
                time.sleep(0.3)  # the cameras' final stats messages
                self.rec.series = self.monitor.series()

    def stop_control(self) -> None:
        """Finish the frozen control up to each camera's last frame; keep its per-frame verdicts."""
        if self.control is None:
            return
        targets = {d: rows[-1]["index"] for d, rows in self.rec.series.items() if rows}
        try:
            self.control.finish(targets)
        finally:
            self.rec.frozen_correct = {d: list(c) for d, c in self.control.correct.items()}
            self.rec.models_dir = str(Path(self.control.model_path).parent)

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def stop_trainer(self) -> None:
        """Keep the trainer's figures and version list, then stop it (after the update in progress)."""
        if self.trainer is None:
            return
        self._guard("trainer status", self.record_trainer)
        self.trainer.stop()

    def record_trainer(self) -> None:
        st = self.trainer.status()
        self.rec.trainer = {"labelled": st["store"]["labelled"], "samples": st["store"]["samples"],
                            "heldout": st["store"]["heldout"], "per_class": st["store"]["per_class"],
                            "counters": st["counters"], "labels": st["labels"], "promoted": st["promoted"],
                            "ingest": st.get("ingest", {}), "degraded": st.get("degraded") or {},
                            "quarantine": [q["reason"] for q in st.get("quarantine") or []],
                            "last_decision": (st.get("last_decision") or {}).get("reason"),
                            "config": self.opts.trainer_config, "settings": self.trainer_settings}
        for r in self.trainer.registry.list():
            self.rec.versions.append({"version": r.version, "parent": r.parent, "status": r.status,
                                      "path": str(r.path), "labels": r.labels, "samples_seen": r.samples_seen,
                                      "created": r.created, "accuracy": r.metrics.get("accuracy"),
                                      "macro_f1": r.metrics.get("macro_f1"), "n": r.metrics.get("n")})

    def stop_deploy(self) -> None:
        """Stop the rollout service (its feeder reports the last events first); keep promotions and rollouts."""
        if self.deploy is None:
            return
        try:
            self.deploy.close_feeder()
            if self.feeder is not None:
                self.rec.promotions = [p for p in self.feeder.promotions if p["status"] != "baseline"]
                self.rec.rollouts = self.feeder.records()
        finally:
            self.deploy.stop()

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    # -- finish --------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Write the report (record.json, summary.json, report.png, report.md); returns the summary."""
        summary: dict[str, Any] = {}
        if self.rec.series and any(self.rec.series.values()):
            from deploy.demo.report import write_report

            try:
                summary = write_report(self.out, self.rec)
            except Exception as exc:
                log.exception("report failed")
                self.rec.errors.append(f"report: {type(exc).__name__}: {exc}")
        if not summary:
            summary = {"duration_s": round((self.rec.wall_end or time.time()) - self.rec.wall_start, 1),
                       "errors": self.rec.errors, "interrupted": self.rec.interrupted, "broker": self.rec.broker}
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary


def run(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo with its live view (plain lines when not on a terminal); returns summary.json's content."""
    out = Path(opts.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    _setup_logging(out / "logs" / "demo.log")
    return DemoApp(opts, make_view(force_plain=opts.plain)).run()


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
