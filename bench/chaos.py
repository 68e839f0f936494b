"""``edgeloop bench chaos``: break the running line on purpose, then account for every sample and every camera.

Why: "nothing selected is lost" and "no camera is left on a broken model" are claims about crashes, partitions
and full disks, not about a quiet run. The outbox deletes a row only on the broker's PUBACK, the broker persists
the trainer's queued samples, the trainer acknowledges a sample only once it is stored in SQLite, a redelivered
sample has the same id, the rollout controller keeps everything in one SQLite file and a camera swaps models
only after verifying them. This benchmark breaks each link of those chains while sim cameras stream, with every
part a separate process on loopback as on a line (``edgeloop broker`` = mosquitto with TLS, client certificates,
ACL and persistence; ``edgeloop trainer run``; ``edgeloop deploy run --mode auto``; ``edgeloop edge`` cameras).

Faults, at seeded random moments of the stream (``--quick`` / full):

* **broker** restarted (SIGTERM: mosquitto saves its persistence file), 2 / 3 times;
* **trainer** ``kill -9`` and restarted, 2 / 3 times;
* **camera** ``kill -9`` and restarted, 1 / 2 times (never the partitioned one);
* **controller** ``kill -9`` and restarted, twice: once at a random moment, once while a rollout has a wave out
  (at least 10 s after the other; when no rollout had one before the stream ended, the settle waits for one);
* **partition**: one camera reaches the broker through a loopback TCP proxy (``bench/netfault.py``) that stops
  forwarding for 35 / 60 s, then resets the connections it froze. TLS passes through it unchanged.
* **disk full**: that camera's state directory is a small tmpfs (needs root), filled to the last byte during its
  partition and emptied again before the partition heals. During the partition, because a full disk only bites
  while the outbox must grow: once its WAL has cycled, SQLite reuses the pages acknowledged rows freed, so a
  connected camera whose uploads keep up goes on spooling on a full disk (tests/edge/test_outbox_faults.py).

Then the trainer stops (no new promotions) and the fleet settles: every rollout must end (completed, rolled back
or superseded), the fleet's target must be everyone, every camera must run it, from the file its ``active.json``
names, hashing to what the controller registered. The controller stops and its SQLite file must pass
``integrity_check``. Last the trainer restarts, the cameras stop and their outboxes are drained by the same link
code a camera runs at its next boot, and every sample is accounted for by id:

    selected (committed to a camera's outbox) = stored by the trainer + dropped by the outbox policy (counted)

Each fault has its own line in the result (what was injected, when, what was checked, pass or fail); ``met``
needs every line to pass, 0 lost, 0 trained twice, 0 left in outboxes and the fleet converged. A fault that
cannot be injected here (the tmpfs without root) is listed under ``skipped``, not counted as passed.
Timings are never checked: the deadlines are generous waits on conditions, so a slow shared box cannot fail it.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import chaos_checks as cc
from bench.netfault import PartitionProxy
from bench.procs import Procs

ROOT = Path(__file__).resolve().parent.parent
ROI = "96,56,128,128"  # sim:digits' label card at 320x240
SETTLE_S = 420.0       # for the fleet to converge after the stream (generous: a shared 2-core box)

Result = dict[str, Any]


@dataclass
class Plan:
    """How big the run is and when each fault happens (seconds into the stream)."""

    cameras: int
    stream_s: float
    partition_s: float
    events: list[tuple[float, str]]   # (at, kind) for broker, trainer, camera, controller, controller_mid
    partition_at: float

    @classmethod
    def make(cls, quick: bool, seed: int) -> "Plan":
        rng = random.Random(seed)
        cameras, stream_s, partition_s = (2, 60.0, 30.0) if quick else (4, 300.0, 60.0)
        n = {"broker": 2, "trainer": 2, "camera": 1} if quick else {"broker": 3, "trainer": 3, "camera": 2}
        events = [(rng.uniform(0.1, 0.85) * stream_s, kind) for kind, k in n.items() for _ in range(k)]
        events.append((rng.uniform(0.1, 0.85) * stream_s, "controller"))
        events.append((rng.uniform(0.1, 0.5) * stream_s, "controller_mid"))  # armed then; fires mid-rollout
        partition_at = rng.uniform(0.1 * stream_s, stream_s - partition_s - 10.0)
        return cls(cameras, stream_s, partition_s, sorted(events), partition_at)


@dataclass
class Line:
    """One fault's line in the result."""

    fault: str
    target: str
    at_s: float | None = None
    injected: str = ""
    checked: str = ""
    passed: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def label(self, k: int) -> str:
        return f"{k}. {self.fault} {self.target}"

    def row(self) -> dict[str, Any]:
        """Scalars only: BENCHMARKS.md shows the lines as one table."""
        return {"at_s": self.at_s, "injected": self.injected, "checked": self.checked, "pass": self.passed}

    def details(self) -> dict[str, Any]:
        out = {k: v for k, v in self.info.items() if not k.startswith("_")}
        r = out.pop("rollout", None)
        if r:
            out.update({"rollout": r["id"], "version": r["version"], "wave": r["wave"] + 1, "state": r["state"]})
        return out


def _bootstrap(d: Path) -> None:
    """A convnet on sim:digits label cards from seeds no camera uses (an operator's labelled set)."""
    import cv2

    from edge.sources.sim import open_sim
    from trainer.bootstrap import bootstrap

    folder = d / "labelled"
    src = open_sim("sim:digits?seed=901")
    x, y, w, h = src.roi
    for i in range(300):
        f = src.frame_at(i * 3)
        (folder / str(f.truth)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / str(f.truth) / f"{i}.png"), f.image[y:y + h, x:x + w])
    roi = tuple(int(v) for v in ROI.split(","))
    bootstrap(d / "trainer", folder, arch="convnet", epochs=10, roi=roi, exporter="torchscript",  # type: ignore[arg-type]
              progress=False, torch_threads=1)


def _provision(d: Path, devices: list[str]) -> None:
    """The fleet's PKI (CA, broker and service identities), a signing key and one identity per camera."""
    from contextlib import redirect_stdout

    from deploy.cli import main as cli

    with open(d / "logs" / "provision.log", "a") as quiet, redirect_stdout(quiet):
        steps = [["keys", "generate", "--out", str(d / "keys")], ["pki", "init", "--dir", str(d / "pki")]]
        steps += [["pki", "device", dev, "--dir", str(d / "pki"), "--fleet", "default", "--signing-key",
                   str(d / "keys" / "signing.pub")] for dev in devices]
        for args in steps:
            if cli(args) != 0:
                raise RuntimeError(f"edgeloop {' '.join(args)} failed (see {d / 'logs' / 'provision.log'})")


def _drain(device: str, state: Path, broker: str, identity: Path) -> int:
    """What a camera does at its next boot: its link sends what is still in the outbox. Returns what is left."""
    from edge.link import Link
    from edge.outbox import Outbox
    from protocol.topics import Topics

    with Outbox(state / "outbox.sqlite") as box:
        if box.depth == 0:
            return 0
        link = Link(device_id=device, url=broker, topics=Topics(), outbox=box, boot=10**6, birth=lambda: b"",
                    ca_file=str(identity / "ca.pem"), cert_file=str(identity / "cert.pem"),
                    key_file=str(identity / "key.pem"))
        link.start()
        try:
            cc.wait(lambda: box.depth == 0, 60, f"{device}'s outbox to drain")
        except TimeoutError:
            pass
        link.stop()
        return box.depth


class Chaos:
    """One run: the line's processes, the proxy, the fault lines and the figures."""

    def __init__(self, d: Path, plan: Plan, seed: int) -> None:
        from deploy.broker import free_port

        self.d, self.plan, self.rng = d, plan, random.Random(seed + 1)
        self.procs = Procs(d / "logs")
        self.port = free_port()
        self.broker = f"mqtts://127.0.0.1:{self.port}"
        self.devices = [f"cam-{k}" for k in range(1, plan.cameras + 1)]
        self.cut_off = self.devices[0]  # the partitioned camera, whose disk also fills
        self.metrics = {dev: free_port() for dev in self.devices}
        self.model = d / "trainer" / "models" / "v0001.onnx"
        self.lines: list[Line] = []
        self.skipped: list[str] = []
        self.proxy = PartitionProxy(self.port)
        self.fs_error: str | None = None
        self.t0 = 0.0
        self.last_controller_kill = -1e9
        self.mid_pending = False

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def log(self, name: str) -> str:
        path = self.d / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the line --------------------------------------------------------------------------------------------
    def start(self) -> None:
        d, svc = self.d, self.d / "pki" / "services"
        self.fs_error = cc.mount_small_fs(d / self.cut_off)
        self.proxy.start()
        self.procs.start("broker", "broker", "--port", str(self.port), "--kind", "mosquitto", "--workdir",
                         str(d / "broker"), "--pki", str(d / "pki"))
        cc.wait(lambda: "listening" in self.log("broker"), 60, "the broker")
        self.start_trainer()
        # The broker keeps samples only for a session that exists: on a line the trainer's first start creates
        # it once (persistent, never expiring); samples published before that have no subscriber.
        cc.wait(lambda: "subscribed to" in self.log("trainer"), 180, "the trainer's subscription")
        self.procs.start("controller", "deploy", "run", "--mode", "auto", "--state-dir", str(d / "deploy"),
                         "--key", str(d / "keys" / "signing.key"), "--broker", self.broker, "--pki", str(d / "pki"),
                         "--waves", "50%,100%", "--soak", "3s", "--health-seconds", "2", "--wave-timeout", "120s",
                         "--metrics-port", "0", "--ca-file", str(d / "pki" / "ca.pem"),
                         "--cert-file", str(svc / "deploy" / "cert.pem"), "--key-file", str(svc / "deploy" / "key.pem"))
        for k, dev in enumerate(self.devices, 1):
            port = self.proxy.port if dev == self.cut_off else self.port
            self.procs.start(dev, "edge", "--device-id", dev, "--source", f"sim:digits?seed={k}&realtime=1&fps=10",
                             "--model", str(self.model), "--broker", f"mqtts://127.0.0.1:{port}",
                             "--identity", str(d / "pki" / "devices" / dev), "--trusted-key",
                             str(d / "keys" / "signing.pub"), "--state-dir", str(d / dev), "--p-min", "0.5",
                             "--budget-minute", "600", "--budget-hour", "none", "--budget-day", "none",
                             "--seed", str(k), "--stats-interval", "1", "--metrics-port", str(self.metrics[dev]),
                             "--log-level", "WARNING")
        cc.wait(lambda: all(cc.scrape(self.metrics[dev]) for dev in self.devices), 120, "the cameras' /metrics")

    def start_trainer(self) -> None:
        d = self.d
        # Every update is promoted (as tests/integration/test_line.py does): rollouts follow one another, so
        # the controller is killed in the middle of one and the fleet has to converge at the end.
        self.procs.start("trainer", "trainer", "run", "--state-dir", str(d / "trainer"), "--broker", self.broker,
                         "--identity", str(d / "pki" / "services" / "trainer"), "--labeller", "oracle", "-B", "32",
                         "-T", "5", "-K", "5", "--max-regression", "1.0", "--no-api", "--metrics-port", "0",
                         "--exporter", "torchscript", "--log-level", "INFO",
                         env={"EDGELOOP_TRAINER__EVAL__MAX_FORGETTING": "1.0"})

    # -- faults ------------------------------------------------------------------------------------------------
    def restart(self, kind: str) -> None:
        """broker (SIGTERM), trainer, a camera (not the partitioned one) or the controller (SIGKILL)."""
        if kind == "camera":
            name = self.rng.choice([dev for dev in self.devices if dev != self.cut_off])
        else:
            name = "controller" if kind.startswith("controller") else kind
        line = Line(kind.replace("_mid", " (mid-rollout)"), name, at_s=self.now())
        sig = signal.SIGTERM if kind == "broker" else signal.SIGKILL
        if kind.startswith("controller"):
            line.info["rollout"] = cc.active_rollout(self.d / "deploy")
        self.procs.restart(name, sig)
        line.injected = f"{'SIGTERM' if sig == signal.SIGTERM else 'kill -9'}, then started again"
        line.info["_wall"] = time.time()
        if name == "controller":
            self.last_controller_kill = time.monotonic()
        if line.info.get("rollout"):
            r = line.info["rollout"]
            line.injected += f" while rollout {r['id'][:8]} ({r['version']}) had wave {r['wave'] + 1} out"
        self.lines.append(line)

    def partition(self) -> None:
        """Cut the camera off; fill its disk; empty it once the camera has counted rejections; heal."""
        p, dev, state = self.plan, self.cut_off, self.d / self.cut_off
        part = Line("partition", dev, at_s=self.now())
        self.proxy.cut()
        before = cc.outbox_counts(state)
        part.injected = f"TCP proxy between {dev} and the broker stops forwarding for {p.partition_s:g} s"
        self.lines.append(part)
        heal_at = time.monotonic() + p.partition_s
        # The disk fills 2 s in: the time until the growing outbox meets it depends on where SQLite's WAL is in
        # its cycle (seconds in every run so far), and the rest of the partition is the margin for a slow box.
        self.sleep_until(time.monotonic() + 2.0)
        disk = Line("disk_full", dev) if self.fs_error is None else None
        if disk is None:
            self.skipped.append(f"disk_full: {self.fs_error}")
        else:
            self.fill_disk(disk, heal_at - 8.0)
        self.sleep_until(heal_at)
        at_heal = cc.outbox_counts(state)
        held = cc.outbox_ids(state)
        self.proxy.heal()
        part.info = {"put_during": at_heal["put"] - before["put"], "acked_during": at_heal["acked"] - before["acked"],
                     "held_at_heal": len(held), "healed_at_s": self.now()}
        part.info["_held_ids"] = held

    def fill_disk(self, disk: Line, free_by: float) -> None:
        state = self.d / self.cut_off
        m0 = cc.scrape(self.metrics[self.cut_off]) or {}
        disk.at_s = self.now()
        filled = cc.fill(state / "filler")
        disk.injected = f"its state directory's tmpfs filled to the last byte ({filled / 2**20:.1f} MiB written)"
        self.lines.append(disk)
        rejected = "edgeloop_edge_samples_not_stored_total{reason=outbox_error}"

        def hit() -> bool:
            m = cc.scrape(self.metrics[self.cut_off]) or {}
            return m.get(rejected, 0) > m0.get(rejected, 0) and m.get("edgeloop_edge_outbox_paused", 0) == 1

        try:
            cc.wait(hit, max(1.0, free_by - time.monotonic()), "the camera to hit the full disk")
            self.sleep_until(min(free_by, time.monotonic() + 5.0))  # a few seconds of a full disk
        except TimeoutError:
            pass
        m1 = cc.scrape(self.metrics[self.cut_off]) or {}
        (state / "filler").unlink()
        disk.info = {"freed_at_s": self.now()}
        stored = "edgeloop_edge_samples_stored_total"

        def spooling() -> dict[str, float] | None:
            m = cc.scrape(self.metrics[self.cut_off]) or {}
            return m if m.get(stored, 0) > m1.get(stored, 0) and m.get("edgeloop_edge_outbox_paused") == 0 else None

        try:
            m2 = cc.wait(spooling, max(1.0, free_by + 6.0 - time.monotonic()), "spooling to resume")
        except TimeoutError:
            m2 = cc.scrape(self.metrics[self.cut_off]) or {}
        disk.info["_metrics"] = (m0, m1, m2)

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - time.monotonic()))

    def stream(self) -> None:
        """The stream with its faults. The mid-rollout controller kill, once due, waits for a rollout with a
        wave out (the other faults go on meanwhile); none before the stream's last 5 s: a failed line."""
        import threading

        self.t0 = time.monotonic()
        cutter = threading.Thread(target=self._partition_at, name="partition", daemon=True)
        cutter.start()
        pending = list(self.plan.events)
        end = self.t0 + self.plan.stream_s
        while pending and time.monotonic() < end - 5.0:
            for at, kind in list(pending):
                if time.monotonic() < self.t0 + at:
                    continue
                if kind == "controller_mid" and not self._mid_rollout():
                    continue
                pending.remove((at, kind))
                self.restart(kind)
            time.sleep(0.5)
        for _, kind in pending:
            if kind == "controller_mid":
                self.mid_pending = True  # the settle waits for the next rollout (a slow box may have none yet)
            else:
                self.lines.append(Line(kind, kind, passed=False, injected="not injected before the stream ended"))
        self.sleep_until(end)
        cutter.join(self.plan.partition_s + 120)

    def _mid_rollout(self) -> bool:
        """A rollout has a wave out, and the other controller kill is 10 s away (two separate interruptions)."""
        return (time.monotonic() - self.last_controller_kill > 10.0
                and cc.active_rollout(self.d / "deploy") is not None)

    def _partition_at(self) -> None:
        self.sleep_until(self.t0 + self.plan.partition_at)
        self.partition()

    # -- after the stream ----------------------------------------------------------------------------------------
    def settle(self) -> dict[str, Any]:
        """Stop the trainer (no new promotions), wait for every rollout to end and every camera to run the fleet's
        target, check each camera's model on disk, stop the controller and check its SQLite file."""
        from protocol.waves import BUCKETS

        deploy = self.d / "deploy"
        if self.mid_pending:
            try:
                cc.wait(self._mid_rollout, SETTLE_S, "a rollout in progress")
                self.restart("controller_mid")
            except TimeoutError:
                self.lines.append(Line("controller (mid-rollout)", "controller", passed=False,
                                       injected="not injected: no rollout had a wave out"))
        t = time.monotonic()
        trainer_exit = self.procs.stop("trainer", timeout=120)

        def converged() -> tuple[dict[str, Any], dict[str, str | None]] | None:
            try:
                h = cc.store_health(deploy)
            except Exception:  # noqa: BLE001 - not there yet, or busy: look again
                return None
            running = {dev: cc.model_running(cc.scrape(self.metrics[dev])) for dev in self.devices}
            done = not any(st in cc.ACTIVE for st in h["states"]) and h["target_below"] == BUCKETS
            return (h, running) if done and all(v == h["target"] for v in running.values()) else None

        try:
            health, running = cc.wait(converged, SETTLE_S, "the fleet to converge", step=2.0)
            ok = True
        except TimeoutError:
            health = cc.store_health(deploy)
            running = {dev: cc.model_running(cc.scrape(self.metrics[dev])) for dev in self.devices}
            ok = False
        seconds = round(time.monotonic() - t, 1)
        target = health["target"]
        want = health["models"].get(target) or self._trainer_sha(target)
        on_disk = {dev: cc.camera_model(self.d / dev, self.model) for dev in self.devices}
        broken = [dev for dev, m in on_disk.items() if not m["pointer_ok"] or m["sha256"] != want]
        controller_exit = self.procs.stop("controller", timeout=120)
        after = cc.store_health(deploy)
        return {"converged": ok and not broken, "settle_s": seconds, "target": target,
                "rollouts": after["states"], "running": running,
                "on_disk": {dev: m["version"] or "provisioned" for dev, m in on_disk.items()},
                "devices_on_broken_model": broken, "rollout_store_integrity": after["integrity"],
                "exit_codes": {"trainer": trainer_exit, "controller": controller_exit}}

    def _trainer_sha(self, version: str | None) -> str | None:
        from protocol.durable import sha256_file

        path = self.d / "trainer" / "models" / f"{version}.onnx"
        return sha256_file(path) if version and path.exists() else None

    def account(self) -> dict[str, Any]:
        """Restart the trainer, stop the cameras, drain their outboxes, and count every sample by id."""
        d = self.d
        self.start_trainer()
        identity = {dev: d / "pki" / "devices" / dev for dev in self.devices}
        self.procs.stop_many(self.devices)  # SIGTERM: the link drains for a few seconds, the rest stays in the outbox
        left = {dev: _drain(dev, d / dev, self.broker, identity[dev]) for dev in self.devices}
        edges = {dev: cc.outbox_counts(d / dev) for dev in self.devices}
        expected = {dev: c["put"] - c["dropped"] - c["left"] for dev, c in edges.items()}
        try:
            cc.wait(lambda: all(cc.trainer_view(d / "trainer")[0].get(dev, 0) >= n for dev, n in expected.items()),
                    180, "the trainer to store every selected sample")
        except TimeoutError:
            pass
        time.sleep(2.0)
        self.procs.stop("trainer", timeout=120)
        stored, twice = cc.trainer_view(d / "trainer")
        return {"selected": sum(c["put"] for c in edges.values()),
                "stored": sum(stored.get(dev, 0) for dev in self.devices),
                "dropped_by_outbox_policy": sum(c["dropped"] for c in edges.values()),
                "left_in_outboxes": sum(left.values()),
                "lost": sum(max(0, expected[dev] - stored.get(dev, 0)) for dev in self.devices),
                "trained_twice": twice,
                "per_device": {dev: {**edges[dev], "stored": stored.get(dev, 0)} for dev in self.devices}}

    def stop(self) -> None:
        self.procs.stop_all()
        self.proxy.stop()
        if self.fs_error is None:
            cc.umount(self.d / self.cut_off)

    # -- judging -------------------------------------------------------------------------------------------------
    def judge(self, crashed: list[str], fleet: dict[str, Any], acc: dict[str, Any]) -> None:
        """Fill in what each fault's line checked and whether it passed."""
        counts_ok = acc["lost"] == 0 and acc["trained_twice"] == 0 and acc["left_in_outboxes"] == 0
        rollouts = {r["id"]: r for r in cc.rollouts(self.d / "deploy")}
        for line in self.lines:
            if line.passed is False:
                continue  # not injected
            if line.fault == "partition":
                self._judge_partition(line, acc)
            elif line.fault == "disk_full":
                self._judge_disk(line)
            elif line.fault.startswith("controller"):
                r = line.info.get("rollout")
                end = rollouts.get(r["id"], {}).get("state") if r else None
                if r:
                    line.info["events_after_restart"] = cc.events_after(self.d / "deploy", r["id"],
                                                                        line.info["_wall"])
                line.checked = ("the restarted controller carried on: the fleet converged and the rollout store "
                                "passed integrity_check" + (f"; the interrupted rollout ended {end}, "
                                                            "with events recorded after the restart" if r else ""))
                line.passed = (line.target not in crashed and fleet["converged"]
                               and fleet["rollout_store_integrity"] == "ok"
                               and (r is None or (end in ("completed", "rolled_back", "superseded")
                                                  and line.info["events_after_restart"] > 0)))
            else:
                line.checked = "back up (running when the stream ended); 0 lost, 0 trained twice over the run"
                line.passed = line.target not in crashed and counts_ok

    def _judge_partition(self, line: Line, acc: dict[str, Any]) -> None:
        held = line.info.pop("_held_ids", [])
        copies = cc.stored_copies(self.d / "trainer", held)
        line.info["held_stored_once"] = sum(1 for n in copies.values() if n == 1)
        dev = acc["per_device"][line.target]
        line.checked = ("the camera went on selecting (put_during > 0), its outbox held all of it at the heal "
                        "(held_at_heal >= put_during), each held sample was stored exactly once afterwards, and the "
                        "camera lost nothing")
        line.passed = (line.info["put_during"] > 0 and line.info["held_at_heal"] >= line.info["put_during"]
                       and line.info["held_stored_once"] == len(held)
                       and dev["put"] - dev["dropped"] - dev["left"] == dev["stored"])

    def _judge_disk(self, line: Line) -> None:
        m0, m1, m2 = line.info.pop("_metrics", ({}, {}, {}))
        p = "edgeloop_edge_"

        def delta(a: dict[str, float], b: dict[str, float], *names: str) -> int:
            return int(sum(b.get(p + n, 0) - a.get(p + n, 0) for n in names))

        text = self.log(line.target)
        line.info.update({
            "frames_while_full": delta(m0, m1, "frames_total"),
            "verdicts_while_full": delta(m0, m1, "predictions_published_total",
                                         "predictions_dropped_total{reason=offline}"),
            "rejected_while_full": delta(m0, m1, "samples_not_stored_total{reason=outbox_error}"),
            "paused_flag": m1.get(p + "outbox_paused"),
            "stored_after_free": delta(m1, m2, "samples_stored_total"),
            # the first failed write names the error: SQLite's (the outbox) or the OS's (the sequence lease)
            "logged": "spooling paused" in text and ("disk is full" in text or "No space left" in text),
            "resumed_logged": "spooling resumed" in text})
        i = line.info
        line.checked = ("while full the camera went on classifying and producing verdicts (offline ones counted: it "
                        "was cut off), counted the samples it could not store (samples_not_stored{reason="
                        "outbox_error}), showed outbox_paused = 1 and logged the disk-full error; once emptied it stored "
                        "samples again")
        line.passed = (i["frames_while_full"] > 0 and i["verdicts_while_full"] > 0 and i["rejected_while_full"] > 0
                       and i["paused_flag"] == 1 and i["stored_after_free"] > 0 and i["logged"]
                       and i["resumed_logged"])


def chaos(quick: bool = True, seed: int = 0, workdir: Path | None = None) -> Result:
    """Run the stream with faults; the figures (see :func:`run`)."""
    plan = Plan.make(quick, seed)
    tmp = tempfile.TemporaryDirectory(prefix="edgeloop-chaos-") if workdir is None else None
    d = Path(tmp.name) if tmp is not None else workdir
    assert d is not None
    (d / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    _bootstrap(d)
    run = Chaos(d, plan, seed)
    _provision(d, run.devices)
    try:
        run.start()
        run.stream()
        crashed = [f"{n} exited with {run.procs.procs[n].returncode}" for n in run.procs.dead()]
        fleet = run.settle()
        acc = run.account()
        run.judge([c.split()[0] for c in crashed], fleet, acc)
    finally:
        run.stop()
    lines = sorted(run.lines, key=lambda x: x.at_s if x.at_s is not None else 1e9)
    figures = {"cameras": plan.cameras, "stream_s": plan.stream_s, "partition_s": plan.partition_s,
               "faults": {x.label(k): x.row() for k, x in enumerate(lines, 1)},
               "fault_figures": {x.label(k): x.details() for k, x in enumerate(lines, 1) if x.details()},
               "skipped": run.skipped,
               "faults_passed": sum(1 for x in lines if x.passed), "faults_failed": sum(1 for x in lines if not x.passed),
               **{k: v for k, v in acc.items() if k != "per_device"}, "crashed_processes": crashed,
               "fleet": fleet, "per_device": acc["per_device"], "seconds": round(time.monotonic() - t_start, 1)}
    if tmp is not None:
        tmp.cleanup()
    return figures


def met(fig: Result) -> bool:
    return (fig["lost"] == 0 and fig["trained_twice"] == 0 and fig["selected"] > 0 and fig["left_in_outboxes"] == 0
            and fig["faults_failed"] == 0 and fig["fleet"]["converged"] and not fig["crashed_processes"]
            and fig["fleet"]["rollout_store_integrity"] == "ok")


def run(quick: bool = False) -> Result:
    fig = chaos(quick)
    return {"name": "chaos", "figures": fig, "met": met(fig), "headline": "lost",
            "goal": "0 selected samples lost, 0 trained twice, every fault's check passed and the fleet converged "
                    "on a verified model, while the broker restarts, the trainer, a camera and the rollout "
                    "controller (once mid-rollout) are killed (-9), a camera is cut off and its disk fills",
            "units": {"stream_s": "s", "partition_s": "s", "seconds": "s"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeloop bench chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 cameras, a 60 s stream, a 30 s partition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="keep the state and logs here (default: a temporary directory)")
    args = ap.parse_args(argv)
    fig = chaos(args.quick, args.seed, args.workdir)
    print(json.dumps(fig, indent=2))
    return 0 if met(fig) else 1


if __name__ == "__main__":
    sys.exit(main())
