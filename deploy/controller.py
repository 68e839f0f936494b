"""The rollout controller: canary waves with thresholds, automatic advance, halt and rollback.

State machine of one rollout (persisted in SQLite after every transition, so a restarted controller
continues where the last one stopped)::

    running --(wave healthy for `soak`)--> running (next wave) ... --> completed
       |  ^                                                     
       v  |  pause / resume
     paused
    running --(breach: failed fraction, shadow agreement, confidence drop, latency, wave timeout)
            --> rolling_back --(no online device runs the bad version)--> rolled_back
    any --abort--> aborted (stop publishing; devices keep what they run)
    any --rollback--> rolling_back (operator)

Targeting: one *retained* manifest per fleet (``fleet/{fleet}/manifest``) always carries the fleet's
current target. Wave k's manifest (new seq, signed) has ``compat.rollout = {"salt": rollout_id, "below":
B_k}``; a device is in the wave iff ``wave_bucket(salt, device) < B_k`` (see protocol/waves.py). ``B_k`` is
chosen so that at least ``ceil(fraction_k x known devices)`` known devices fall in, and never shrinks, so
waves are nested; devices unknown to the controller (offline since forever) fall in by hash. The last wave
has ``below = 10000`` (everyone). A rollback is a new manifest (higher seq) for the previous version with
``below = 10000``; devices already running it just confirm.

Sequence numbers: ``max(last + 1, unix time in ms)`` - monotonic across restarts even if the SQLite file
is lost, so devices (which reject seq <= highest accepted) never lock out a rebuilt controller.

Threading: paho's loop thread feeds :class:`deploy.fleet.Fleet`; one controller thread ticks every
``tick_s`` (and immediately when a model status arrives) and owns all SQLite writes and publishes of
manifests. CLI commands (``pause``/``resume``/``abort``/``rollback``) are written to the ``rollouts.command``
column by other processes and picked up on the next tick.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import msgspec

from protocol.chunks import DEFAULT_CHUNK_SIZE
from protocol.signing import load_private_key
from protocol.topics import Topics

from protocol.waves import BUCKETS, wave_bucket

from .fleet import DeviceInfo, Fleet
from .publisher import DEFAULT_EXPIRY_S, ModelArtifact, Publisher, read_artifact

__all__ = ["Policy", "DeployConfig", "Controller", "RolloutStore", "TERMINAL", "parse_duration", "parse_waves"]

log = logging.getLogger("edgeloop.controller")

TERMINAL = ("completed", "rolled_back", "aborted", "superseded")
ACTIVE_STATES = ("running", "paused", "rolling_back")
FAILED_STATES = ("failed", "rolled_back", "rejected")


class Policy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a rollout proceeds and when it stops. Defaults = the automatic policy for promoted versions.

    ``shadow``: frames the candidate runs beside the active model on each device before swapping (0 = no
    shadow); devices refuse to swap below ``min_agreement`` themselves, and the controller halts the wave if
    the wave's mean agreement is below it. ``max_confidence_drop``: halt if candidates' mean top-1
    confidence is this fraction below the active model's (shadow) or the device's health watch reports a
    collapse. ``max_latency_ratio``: halt if candidate latency / active latency exceeds it and the
    candidate is also ``latency_slack_ms`` slower (sub-millisecond models jitter by more than 3x).
    ``wave_timeout``: devices of a wave that neither finish nor fail in time count as failed.
    """

    waves: list[float] = msgspec.field(default_factory=lambda: [0.05, 0.25, 1.0])
    soak: float = 60.0
    max_failed: float = 0.10
    min_agreement: float = 0.90
    shadow: int = 0
    shadow_seconds: float = 60.0
    max_confidence_drop: float = 0.25
    max_latency_ratio: float = 3.0
    latency_slack_ms: float = 5.0
    health_seconds: float = 30.0
    wave_timeout: float = 600.0
    expiry: float = DEFAULT_EXPIRY_S

    def __post_init__(self) -> None:
        if not self.waves or any(not 0 < w <= 1 for w in self.waves) or sorted(self.waves) != self.waves:
            raise ValueError(f"waves must be increasing fractions in (0, 1], got {self.waves}")
        if self.waves[-1] != 1.0:
            self.waves = [*self.waves, 1.0]
        if not 0 <= self.max_failed <= 1:
            raise ValueError("max_failed must be a fraction in [0, 1]")


class DeployConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Deploy settings for callers that hand promoted versions over automatically (trainer, demo); the hand-over
    itself is :class:`deploy.rollout_feeder.RolloutFeeder`, with ``policy``."""

    broker: str = "mqtt://127.0.0.1:1883"
    prefix: str = "edgeloop/v1"
    fleet: str = "default"
    state_dir: str = ".edgeloop/deploy"
    signing_key: str = ".edgeloop/keys/signing.key"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    policy: Policy = msgspec.field(default_factory=Policy)


def parse_duration(text: str | float) -> float:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"250ms"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    t = text.strip().lower()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t)


def parse_fraction(text: str | float) -> float:
    """``"10%"`` or ``0.1``."""
    if isinstance(text, (int, float)):
        return float(text)
    t = text.strip()
    return float(t[:-1]) / 100.0 if t.endswith("%") else float(t)


def parse_waves(text: str) -> list[float]:
    """``"5%,25%,100%"`` -> [0.05, 0.25, 1.0]."""
    return [parse_fraction(p) for p in text.split(",") if p.strip()]


# -- persistence -------------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model_id, version));
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, fleet TEXT NOT NULL, model_id TEXT NOT NULL, version TEXT NOT NULL,
    prev_version TEXT, state TEXT NOT NULL, wave INTEGER NOT NULL DEFAULT 0,
    below INTEGER NOT NULL DEFAULT 0, wave_published INTEGER NOT NULL DEFAULT 0,
    wave_started REAL, soak_started REAL, policy TEXT NOT NULL, reason TEXT,
    command TEXT, created REAL NOT NULL, updated REAL NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS fleets (
    fleet TEXT PRIMARY KEY, rollout_id TEXT, model_id TEXT, version TEXT, wave INTEGER,
    below INTEGER, seq INTEGER, expires REAL, policy TEXT);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL, rollout_id TEXT, kind TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, row TEXT NOT NULL, updated REAL NOT NULL);
"""


class RolloutStore:
    """SQLite (WAL) rollout state; every method is one short transaction, safe across processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def q(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def x(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self.db.execute(sql, args)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.q("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self.x("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
               (key, value))

    def next_seq(self) -> int:
        """Monotonic manifest sequence: max(last + 1, now in ms), persisted before use."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
                seq = max((int(row[0]) + 1) if row else 0, int(time.time() * 1000))
                self.db.execute("INSERT INTO meta(key, value) VALUES('seq', ?) "
                                "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(seq),))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return seq

    def event(self, rollout_id: str | None, kind: str, detail: str = "") -> None:
        self.x("INSERT INTO events(ts, rollout_id, kind, detail) VALUES(?, ?, ?, ?)",
               (time.time(), rollout_id, kind, detail))
        log.info("rollout %s: %s %s", rollout_id, kind, detail)

    def rollout(self, rid: str) -> dict[str, Any] | None:
        rows = self.q("SELECT * FROM rollouts WHERE id=?", (rid,))
        return dict(rows[0]) if rows else None

    def latest(self, fleet: str | None = None) -> dict[str, Any] | None:
        if fleet is None:
            rows = self.q("SELECT * FROM rollouts ORDER BY created DESC LIMIT 1")
        else:
            rows = self.q("SELECT * FROM rollouts WHERE fleet=? ORDER BY created DESC LIMIT 1", (fleet,))
        return dict(rows[0]) if rows else None

    def active(self) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(ACTIVE_STATES))
        return [dict(r) for r in self.q(f"SELECT * FROM rollouts WHERE state IN ({marks}) ORDER BY created",
                                        ACTIVE_STATES)]

    def update(self, rid: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self.x(f"UPDATE rollouts SET {cols} WHERE id=?", (*fields.values(), rid))

    def command(self, rid: str, cmd: str) -> None:
        """Queue an operator command for the running controller (from any process)."""
        self.x("UPDATE rollouts SET command=?, updated=? WHERE id=?", (cmd, time.time(), rid))

    def events(self, rid: str, limit: int = 50) -> list[dict[str, Any]]:
        return [dict(r) for r in self.q("SELECT * FROM events WHERE rollout_id=? ORDER BY ts DESC LIMIT ?",
                                        (rid, limit))][::-1]

    def model(self, model_id: str, version: str) -> dict[str, Any] | None:
        rows = self.q("SELECT * FROM models WHERE model_id=? AND version=?", (model_id, version))
        return dict(rows[0]) if rows else None

    def devices(self) -> list[dict[str, Any]]:
        return [json.loads(r["row"]) for r in self.q("SELECT row FROM devices ORDER BY device")]

    def save_devices(self, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._lock:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO devices(device, row, updated) VALUES(?, ?, ?) "
                "ON CONFLICT(device) DO UPDATE SET row=excluded.row, updated=excluded.updated",
                [(r["device"], json.dumps(r, default=str), now) for r in rows])
            self.db.execute("COMMIT")


# -- the controller ----------------------------------------------------------------------------------------
class Controller:
    """Runs rollouts against one broker. Programmatic API for the trainer/demo::

        ctl = Controller(broker_url, signing_key_path, state_dir)   # or from_config(DeployConfig)
        ctl.start()                                                  # connect + background thread
        rid = ctl.start_rollout("v0007", "registry/v0007.onnx")      # default Policy
        ctl.wait(rid, timeout=600)                                   # -> final state
        ctl.stop()
    """

    def __init__(
        self,
        broker: str,
        signing_key: str | os.PathLike[str] | Any,
        state_dir: str | os.PathLike[str],
        *,
        prefix: str = "edgeloop/v1",
        fleet: str = "default",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        tick_s: float = 0.2,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.key = load_private_key(signing_key) if isinstance(signing_key, (str, os.PathLike)) else signing_key
        self.state_dir = Path(state_dir)
        self.store = RolloutStore(self.state_dir / "rollout.sqlite")
        self.topics = Topics(prefix)
        self.default_fleet = fleet
        self.chunk_size = chunk_size
        self.tick_s = tick_s
        self.fleet = Fleet(self.topics, clock)
        self.fleet.seed(self.store.devices())
        self._clock = clock
        self._client_id = client_id or f"edgeloop-deploy-{uuid.uuid4().hex[:8]}"
        self._client: Any = None
        self.publisher = Publisher(self._publish, self.key, self.topics, chunk_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._artifacts: dict[tuple[str, str], ModelArtifact] = {}
        self._last_snapshot = 0.0
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, cfg: DeployConfig) -> "Controller":
        return cls(cfg.broker, cfg.signing_key, cfg.state_dir, prefix=cfg.prefix, fleet=cfg.fleet,
                   chunk_size=cfg.chunk_size)

    # -- MQTT ------------------------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._client is None:
            raise RuntimeError("controller is not connected (call start())")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            raise RuntimeError(f"publish to {topic} failed: rc={info.rc}")

    def connect(self, timeout: float = 10.0) -> None:
        from protocol import mqtt

        client = mqtt.make_client(self._client_id, self.broker, protocol="3.1.1", max_queued=0)
        subs = self.fleet.subscriptions()

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            c.subscribe(subs)

        client.on_connect = on_connect
        client.on_message = lambda c, u, msg: self.fleet.on_message(msg.topic, msg.payload)
        self._client = client
        mqtt.start(client, timeout)

    def start(self, timeout: float = 10.0) -> "Controller":
        """Connect and run the tick thread in the background."""
        if self._client is None:
            self.connect(timeout)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush: float = 5.0) -> None:
        """Stop ticking, let queued publishes drain, disconnect."""
        self._stop.set()
        self.fleet.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            deadline = time.monotonic() + flush
            while self._client.want_write() and time.monotonic() < deadline:
                time.sleep(0.01)
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.store.close()

    def kill(self) -> None:
        """Tests: vanish without a clean disconnect (as if the process died)."""
        self._stop.set()
        self.fleet.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.loop_stop()
            try:
                self._client.socket().close()
            except Exception:
                pass
            self._client = None
        self.store.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("controller tick failed")
            self.fleet.changed.wait(self.tick_s)
            self.fleet.changed.clear()

    # -- API ------------------------------------------------------------------------------------------------
    def register_model(self, path: str | os.PathLike[str], model_id: str | None = None,
                       version: str | None = None) -> ModelArtifact:
        """Read a model file and remember it (the previous version must be known to roll back to it)."""
        art = read_artifact(path, model_id, version)
        self._artifacts[(art.model_id, art.version)] = art
        self.store.x(
            "INSERT INTO models(model_id, version, sha256, path, size, chunk_size) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT(model_id, version) DO UPDATE SET sha256=excluded.sha256, path=excluded.path, "
            "size=excluded.size",
            (art.model_id, art.version, art.sha256, str(Path(path).resolve()), art.size, self.chunk_size))
        return art

    def artifact(self, model_id: str, version: str) -> ModelArtifact:
        art = self._artifacts.get((model_id, version))
        if art is None:
            row = self.store.model(model_id, version)
            if row is None:
                raise KeyError(f"model {model_id}/{version} is not registered")
            art = self.register_model(row["path"], model_id, version)
            if art.sha256 != row["sha256"]:
                raise ValueError(f"{row['path']} changed since {version} was registered")
        return art

    def start_rollout(self, version: str, model_path: str | os.PathLike[str] | None = None,
                      policy: Policy | None = None, *, fleet: str | None = None, model_id: str | None = None,
                      previous: tuple[str, str | os.PathLike[str]] | None = None) -> str:
        """Begin rolling ``version`` out; returns the rollout id. Any active rollout on the fleet is superseded.

        ``previous`` = (version, path) of what the fleet runs now, the rollback target; defaults to the last
        completed rollout's version (or the previous one's, after a rollback).
        """
        fleet = fleet or self.default_fleet
        policy = policy or Policy()
        with self._lock:
            if model_path is not None:
                art = self.register_model(model_path, model_id, version)
            else:
                rows = self.store.q("SELECT model_id FROM models WHERE version=? ORDER BY rowid DESC", (version,))
                if not rows:
                    raise KeyError(f"version {version} is unknown; pass its model file")
                art = self.artifact(model_id or rows[0]["model_id"], version)
            prev_version = None
            if previous is not None:
                prev_version = self.register_model(previous[1], art.model_id, previous[0]).version
            else:
                row = self.store.q("SELECT version FROM fleets WHERE fleet=?", (fleet,))
                if row and row[0]["version"] != version:
                    prev_version = row[0]["version"]
            for r in self.store.active():
                if r["fleet"] == fleet:
                    self.store.update(r["id"], state="superseded", finished=time.time(),
                                      reason=f"superseded by {version}")
                    self.store.event(r["id"], "superseded", version)
            rid = f"r{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
            now = time.time()
            self.store.x(
                "INSERT INTO rollouts(id, fleet, model_id, version, prev_version, state, policy, created, updated) "
                "VALUES(?,?,?,?,?,?,?,?,?)",
                (rid, fleet, art.model_id, version, prev_version, "running",
                 msgspec.json.encode(policy).decode(), now, now))
            self.store.event(rid, "started", f"{art.model_id}/{version} waves={policy.waves} prev={prev_version}")
        self.fleet.changed.set()
        return rid

    def pause(self, rid: str | None = None) -> None:
        self._command(rid, "pause")

    def resume(self, rid: str | None = None) -> None:
        self._command(rid, "resume")

    def abort(self, rid: str | None = None) -> None:
        self._command(rid, "abort")

    def rollback(self, rid: str | None = None) -> None:
        self._command(rid, "rollback")

    def _command(self, rid: str | None, cmd: str) -> None:
        r = self.store.rollout(rid) if rid else self.store.latest()
        if r is None:
            raise KeyError("no such rollout")
        self.store.command(r["id"], cmd)
        self.fleet.changed.set()

    def status(self, rid: str | None = None) -> dict[str, Any]:
        return rollout_status(self.store, rid, self.fleet.devices())

    def wait(self, rid: str, timeout: float = 600.0, states: tuple[str, ...] = TERMINAL) -> str:
        """Block until the rollout reaches one of ``states``; returns the state (or the current one on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.store.rollout(rid)
            state = r["state"] if r else "unknown"
            if state in states or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    # -- the state machine ------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One evaluation step for every active rollout (+ manifest refresh, + device snapshot)."""
        with self._lock:
            for r in self.store.active():
                self._step(r)
            self._refresh_manifests()
            now = time.time()
            if now - self._last_snapshot > 1.0:
                self._last_snapshot = now
                self.store.save_devices([d.to_row() for d in self.fleet.devices()])
                self.store.set_meta("heartbeat", str(now))

    def _policy(self, r: dict[str, Any]) -> Policy:
        return msgspec.json.decode(r["policy"], type=Policy)

    def _step(self, r: dict[str, Any]) -> None:
        rid, cmd = r["id"], r["command"]
        if cmd:
            self.store.update(rid, command=None)
            self.store.event(rid, f"command:{cmd}")
            if cmd == "pause" and r["state"] == "running":
                self.store.update(rid, state="paused")
                return
            if cmd == "resume" and r["state"] == "paused":
                self.store.update(rid, state="running", soak_started=None)
                r = self.store.rollout(rid) or r
            elif cmd == "abort":
                self.store.update(rid, state="aborted", finished=time.time(), reason="aborted by operator")
                return
            elif cmd == "rollback":
                self._begin_rollback(r, "rollback requested by operator")
                return
        if r["state"] == "running":
            self._step_running(r, self._policy(r))
        elif r["state"] == "rolling_back":
            self._step_rolling_back(r)

    def _members(self, r: dict[str, Any], below: int) -> list[DeviceInfo]:
        return [d for d in self.fleet.devices() if below >= BUCKETS or wave_bucket(r["id"], d.device) < below]

    def _wave_below(self, r: dict[str, Any], fraction: float) -> int:
        """Smallest bucket bound that puts ceil(fraction x known devices) known devices in the wave."""
        if fraction >= 1.0:
            return BUCKETS
        ids = self.fleet.ids()
        if not ids:
            return max(r["below"], int(fraction * BUCKETS))
        buckets = sorted(wave_bucket(r["id"], d) for d in ids)
        k = max(1, math.ceil(fraction * len(buckets)))
        return max(r["below"], min(BUCKETS, buckets[k - 1] + 1))

    def _publish_manifest(self, fleet: str, rid: str, art: ModelArtifact, wave: int, below: int,
                          policy: Policy) -> int:
        row = self.store.model(art.model_id, art.version)
        if row is None or not row["published"]:
            self.publisher.publish_chunks(art)
            self.store.x("UPDATE models SET published=1 WHERE model_id=? AND version=?", (art.model_id, art.version))
        seq = self.store.next_seq()
        targeting: dict[str, Any] = {"salt": rid, "below": below, "health_seconds": policy.health_seconds}
        if policy.shadow > 0:
            targeting.update(shadow_frames=policy.shadow, shadow_seconds=policy.shadow_seconds,
                             min_agreement=policy.min_agreement)
        expires = time.time() + policy.expiry
        m = self.publisher.manifest(art, seq=seq, rollout_id=rid, wave=wave, targeting=targeting, expires=expires)
        self.publisher.publish_manifest(fleet, m)
        self.store.x(
            "INSERT INTO fleets(fleet, rollout_id, model_id, version, wave, below, seq, expires, policy) "
            "VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(fleet) DO UPDATE SET rollout_id=excluded.rollout_id, "
            "model_id=excluded.model_id, version=excluded.version, wave=excluded.wave, below=excluded.below, "
            "seq=excluded.seq, expires=excluded.expires, policy=excluded.policy",
            (fleet, rid, art.model_id, art.version, wave, below, seq, expires, msgspec.json.encode(policy).decode()))
        return seq

    def _step_running(self, r: dict[str, Any], policy: Policy) -> None:
        rid, wave, now = r["id"], r["wave"], time.time()
        if not r["wave_published"]:
            below = self._wave_below(r, policy.waves[wave])
            art = self.artifact(r["model_id"], r["version"])
            seq = self._publish_manifest(r["fleet"], rid, art, wave, below, policy)
            self.store.update(rid, below=below, wave_published=1, wave_started=now, soak_started=None)
            self.store.event(rid, "wave", f"wave {wave + 1}/{len(policy.waves)} {policy.waves[wave]:.0%} "
                                          f"below={below} seq={seq}")
            return
        ev = self.evaluate(r, policy)
        if ev["breach"]:
            self.store.event(rid, "breach", ev["breach"])
            self._begin_rollback(r, ev["breach"])
            return
        if ev["pending"] == 0 and (ev["active"] > 0 or ev["online"] == 0):
            if r["soak_started"] is None:
                self.store.update(rid, soak_started=now)
            elif now - r["soak_started"] >= policy.soak:
                if wave + 1 >= len(policy.waves):
                    self.store.update(rid, state="completed", finished=now, reason=None)
                    self.store.event(rid, "completed", f"{ev['active']} active, {ev['failed']} failed, "
                                                       f"{ev['offline']} offline")
                    self._gc_chunks(keep={(r["model_id"], r["version"]), (r["model_id"], r["prev_version"])})
                else:
                    self.store.update(rid, wave=wave + 1, wave_published=0, soak_started=None)
        elif r["soak_started"] is not None:
            self.store.update(rid, soak_started=None)

    def evaluate(self, r: dict[str, Any], policy: Policy) -> dict[str, Any]:
        """Count the current wave's devices and check the thresholds; ``breach`` is a reason or ''."""
        target = r["version"]
        members = self._members(r, r["below"])
        online = [d for d in members if d.online]
        active, failed, pending = [], [], []
        for d in online:
            mine = d.rollout_id == r["id"] and d.model_version == target
            if mine and d.model_state in FAILED_STATES:
                failed.append(d)
            elif d.version == target:
                active.append(d)
            else:
                pending.append(d)
        out: dict[str, Any] = {"members": len(members), "online": len(online), "offline": len(members) - len(online),
                               "active": len(active), "failed": len(failed), "pending": len(pending), "breach": ""}
        reasons = {}
        for d in failed:
            reasons[d.reason or d.model_state or "?"] = reasons.get(d.reason or d.model_state or "?", 0) + 1
        out["failures"] = reasons
        decided = len(active) + len(failed) + len(pending)
        if failed and len(failed) / max(decided, 1) > policy.max_failed:
            out["breach"] = f"failed {len(failed)}/{decided} > {policy.max_failed:.0%} ({reasons})"
            return out
        # Shadow metrics of devices that finished their shadow run for this rollout.
        shadowed = [d for d in members if d.rollout_id == r["id"] and "agreement" in d.status_metrics
                    and d.model_version == target]
        if policy.shadow > 0 and shadowed:
            agree = sum(float(d.status_metrics["agreement"]) for d in shadowed) / len(shadowed)
            out["agreement"] = round(agree, 4)
            if agree < policy.min_agreement:
                out["breach"] = f"shadow agreement {agree:.3f} < {policy.min_agreement:.3f}"
                return out
            conf = [(float(d.status_metrics.get("confidence", 0)), float(d.status_metrics.get("active_confidence", 0)))
                    for d in shadowed]
            c_new = sum(c for c, _ in conf) / len(conf)
            c_old = sum(a for _, a in conf) / len(conf)
            out["confidence"], out["active_confidence"] = round(c_new, 4), round(c_old, 4)
            if c_old > 0 and c_new < c_old * (1 - policy.max_confidence_drop):
                out["breach"] = f"confidence {c_new:.3f} vs active {c_old:.3f} dropped > {policy.max_confidence_drop:.0%}"
                return out
            lat = [(float(d.status_metrics.get("latency_ms", 0)), d.latency_ms) for d in shadowed if d.latency_ms]
            if lat:
                cand, act = sum(a for a, _ in lat) / len(lat), sum(b for _, b in lat) / len(lat)
                ratio = cand / max(act, 1e-6)
                out["latency_ratio"] = round(ratio, 3)
                if ratio > policy.max_latency_ratio and cand - act > policy.latency_slack_ms:
                    out["breach"] = f"latency ratio {ratio:.2f} > {policy.max_latency_ratio:.2f}"
                    return out
        if pending and r["wave_started"] and time.time() - r["wave_started"] > policy.wave_timeout:
            out["breach"] = f"wave timeout: {len(pending)} devices did not finish in {policy.wave_timeout:.0f}s"
        return out

    def _begin_rollback(self, r: dict[str, Any], reason: str) -> None:
        rid = r["id"]
        prev = r["prev_version"]
        if not prev:
            self.store.update(rid, state="aborted", finished=time.time(),
                              reason=f"{reason}; no previous version known to roll back to")
            self.store.event(rid, "halted", "no previous version")
            return
        art = self.artifact(r["model_id"], prev)
        policy = self._policy(r)
        seq = self._publish_manifest(r["fleet"], rid, art, r["wave"], BUCKETS,
                                     msgspec.structs.replace(policy, shadow=0))
        self.store.update(rid, state="rolling_back", reason=reason, wave_started=time.time())
        self.store.event(rid, "rollback", f"to {prev} seq={seq}: {reason}")

    def _step_rolling_back(self, r: dict[str, Any]) -> None:
        still = [d for d in self.fleet.devices() if d.online and d.version == r["version"]]
        if not still or time.time() - (r["wave_started"] or 0) > self._policy(r).wave_timeout:
            self.store.update(r["id"], state="rolled_back", finished=time.time())
            self.store.event(r["id"], "rolled_back", f"{len(still)} devices still on {r['version']}")
            self._gc_chunks(keep={(r["model_id"], r["prev_version"])})

    def _gc_chunks(self, keep: set[tuple[str, str | None]]) -> None:
        """Clear retained chunks of every published version that neither the fleet target nor a rollback needs."""
        for f in self.store.q("SELECT model_id, version FROM fleets"):
            keep.add((f["model_id"], f["version"]))
        for row in self.store.q("SELECT * FROM models WHERE published=1"):
            if (row["model_id"], row["version"]) in keep:
                continue
            count = -(-row["size"] // row["chunk_size"])
            self.publisher.clear_chunks(row["model_id"], row["version"], count)
            self.store.x("UPDATE models SET published=0 WHERE model_id=? AND version=?",
                         (row["model_id"], row["version"]))
            self.store.event(None, "chunks_cleared", f"{row['model_id']}/{row['version']}")

    def _refresh_manifests(self) -> None:
        """Re-sign a fleet's retained manifest (new seq, same target) when half its lifetime is gone."""
        now = time.time()
        for f in self.store.q("SELECT * FROM fleets"):
            policy = msgspec.json.decode(f["policy"], type=Policy)
            if f["expires"] - now > policy.expiry / 2:
                continue
            try:
                art = self.artifact(f["model_id"], f["version"])
            except (KeyError, OSError, ValueError):
                continue
            self._publish_manifest(f["fleet"], f["rollout_id"], art, f["wave"], f["below"], policy)
            self.store.event(f["rollout_id"], "refreshed", f"fleet {f['fleet']}")


def rollout_status(store: RolloutStore, rid: str | None, devices: list[DeviceInfo] | None = None
                   ) -> dict[str, Any]:
    """Rollout summary for ``status`` (works from any process: SQLite only)."""
    r = store.rollout(rid) if rid else store.latest()
    if r is None:
        return {}
    policy = msgspec.json.decode(r["policy"], type=Policy)
    out = {k: r[k] for k in ("id", "fleet", "model_id", "version", "prev_version", "state", "reason",
                             "created", "finished", "command")}
    out["wave"] = f"{min(r['wave'] + 1, len(policy.waves))}/{len(policy.waves)}"
    out["wave_fraction"] = policy.waves[min(r["wave"], len(policy.waves) - 1)]
    out["policy"] = msgspec.to_builtins(policy)
    rows = [d.to_row() for d in devices] if devices is not None else store.devices()
    counts: dict[str, int] = {}
    for d in rows:
        if d.get("rollout_id") == r["id"] or d.get("version") in (r["version"], r["prev_version"]):
            key = "on_target" if d.get("version") == r["version"] else (d.get("state") or "unknown")
            if not d.get("online"):
                key = "offline"
            counts[key] = counts.get(key, 0) + 1
    out["devices"] = counts
    out["events"] = store.events(r["id"], 20)
    hb = store.get_meta("heartbeat")
    out["controller_alive"] = hb is not None and time.time() - float(hb) < 5.0
    return out
