"""Promoted versions -> rollouts: one rollout at a time, the newest promoted version next.

Why this is needed: the trainer may promote a version every few seconds, while a canary rollout (waves,
soaks, downloads) takes tens of seconds. Starting a rollout per promotion would supersede each one in its
canary wave, and the fleet's tail would never get anything. The feeder keeps at most one rollout in
progress; when it ends, it starts the newest version promoted meanwhile. Versions in between are skipped
on purpose: the learner is cumulative, so the newest version contains what they learned.

The rollback target of each rollout is the last version that reached the whole fleet (at first the
provisioned baseline), passed explicitly: the controller's own default is the fleet manifest's last target,
which may be a version that never got past its canary.

How it is driven::

    feeder = RolloutFeeder(controller, baseline=("v0001", "v0001.onnx"), policy=Policy(...))
    trainer = TrainerService(cfg, on_promoted=feeder.on_promoted)   # any thread: records only
    while running:
        feeder.poll()        # one thread: start the next rollout when none is in progress, report events
    feeder.close()           # report the last events; no rollout is started after this

``on_promoted(version, model, metrics)`` takes the model as an ONNX file path or as its bytes (written to
``model_dir``), so a service that receives promotions over MQTT can use it as the trainer's hook does.
What happens is reported through ``notify(kind, text, wall, **data)`` (the demo's event log; default: the
log), with the controller's own events (wave advanced, completed, rollback) turned into readable lines.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deploy.controller import TERMINAL, Controller, Policy
from deploy.rollout_store import Event

__all__ = ["RolloutFeeder", "Notify"]

log = logging.getLogger("edgeloop.rollout_feeder")

#: ``notify(kind, text, wall=None, **data)``: one readable event (kind: promoted, rollout, wave, completed,
#: rollback, failed); ``wall`` is the time it happened, ``data`` carries e.g. ``version``.
Notify = Callable[..., None]

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EVENT_LIMIT = 500        # events read per rollout and poll (a rollout has a handful: started, waves, outcome)
ENDED_GRACE_S = 2.0      # keep reading a finished rollout's events this long (its last event follows its state)


def _log_notify(kind: str, text: str, wall: float | None = None, **data: Any) -> None:
    log.info("%s: %s", kind, text)


@dataclass
class _Active:
    rid: str
    version: str
    path: Path


class RolloutFeeder:
    """Hands promoted versions to a :class:`deploy.controller.Controller`, one rollout at a time.

    ``baseline`` = (version, model path) of what the fleet runs before the first rollout. ``history`` bounds
    the promotions and rollout ids kept for :meth:`records` (a long-running service must not grow forever).
    """

    def __init__(self, controller: Controller, baseline: tuple[str, str | os.PathLike[str]],
                 policy: Policy | None = None, *, fleet: str | None = None, model_id: str | None = None,
                 notify: Notify | None = None, model_dir: str | os.PathLike[str] | None = None,
                 history: int = 10_000) -> None:
        self.ctl = controller
        self.policy = policy or Policy()
        self.fleet = fleet or controller.default_fleet
        self.model_id = model_id
        self.notify = notify or _log_notify
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.fleet_version: tuple[str, Path] = (baseline[0], Path(baseline[1]))
        self.pending: tuple[str, Path] | None = None
        self.promotions: deque[dict[str, Any]] = deque(maxlen=history)
        self.rejected = 0                        # promotions that could not be rolled out (bad input, bad file)
        self._active: _Active | None = None
        self._started: deque[tuple[str, str]] = deque(maxlen=history)   # (rollout id, version), oldest first
        self._watch: dict[str, tuple[str, float | None]] = {}           # rid -> (version, first seen ended)
        self._seen: dict[str, float] = {}                                # rid -> ts of the last event reported
        self._closed = False
        self._lock = threading.Lock()

    # -- input (any thread) ---------------------------------------------------------------------------------
    def on_promoted(self, version: str, model: str | os.PathLike[str] | bytes, metrics: dict[str, Any]) -> None:
        """Record a promoted version; the next :meth:`poll` rolls it out unless a newer one arrives first.

        Raises ValueError for a version that is not a plain name or model bytes without a ``model_dir``.
        """
        path = self._model_file(version, model)
        acc = metrics.get("accuracy")
        now = time.time()
        with self._lock:
            self.promotions.append({"version": version, "wall": now, "path": str(path), "accuracy": acc,
                                    "macro_f1": metrics.get("macro_f1"), "n": metrics.get("n")})
            self.pending = (version, path)
        self.notify("promoted", f"{version} (held-out accuracy {acc:.3f} on {metrics.get('n', '?')})"
                    if isinstance(acc, (int, float)) else version, now, version=version)

    def _model_file(self, version: str, model: str | os.PathLike[str] | bytes) -> Path:
        if not isinstance(version, str) or not _VERSION.match(version):
            self.rejected += 1
            raise ValueError(f"promoted version {version!r} is not a plain name (letters, digits, . _ -)")
        if not isinstance(model, (bytes, bytearray)):
            return Path(model).resolve()
        if self.model_dir is None:
            self.rejected += 1
            raise ValueError(f"model bytes for {version} but the feeder has no model_dir to keep them in")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        path = self.model_dir / f"{version}.onnx"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(bytes(model))
        os.replace(tmp, path)  # a reader never sees half a model
        return path.resolve()

    # -- driving (one thread) -------------------------------------------------------------------------------
    def poll(self) -> None:
        """Start the newest pending version if no rollout is in progress; report the controller's new events."""
        self._check_active()
        with self._lock:
            nxt = None
            if self._active is None and not self._closed:
                nxt, self.pending = self.pending, None
        if nxt is not None:
            self._start(*nxt)
        self._report_events()

    def close(self) -> None:
        """Report what is left to report; from now on promotions are recorded but never rolled out."""
        with self._lock:
            self._closed = True
        self._check_active()
        self._report_events()

    def _check_active(self) -> None:
        if self._active is None:
            return
        r = self.ctl.store.rollout(self._active.rid)
        if r is not None and r.state in TERMINAL:
            if r.state == "completed":
                self.fleet_version = (self._active.version, self._active.path)
            self._active = None

    def _start(self, version: str, path: Path) -> None:
        try:
            rid = self.ctl.start_rollout(version, path, self.policy, fleet=self.fleet, model_id=self.model_id,
                                         previous=self.fleet_version)
        except Exception as exc:  # a bad model file must not stop later versions from shipping
            self.rejected += 1
            log.exception("rollout of %s not started", version)
            self.notify("failed", f"{version}: rollout not started: {type(exc).__name__}: {exc}", version=version)
            return
        self._active = _Active(rid, version, path)
        self._started.append((rid, version))
        self._watch[rid] = (version, None)

    def _report_events(self) -> None:
        """Turn the controller's new events of the rollouts started here into notifications, oldest first."""
        now = time.time()
        rows: list[tuple[Event, str]] = []
        for rid, (version, ended) in list(self._watch.items()):
            r = self.ctl.store.rollout(rid)
            for e in self.ctl.store.events(rid, EVENT_LIMIT):
                if e.ts > self._seen.get(rid, 0.0):
                    rows.append((e, version))
                    self._seen[rid] = e.ts
            if r is None or r.state in TERMINAL:
                if ended is None:
                    self._watch[rid] = (version, now)
                elif now - ended > ENDED_GRACE_S:
                    del self._watch[rid]
                    self._seen.pop(rid, None)
        for e, version in sorted(rows, key=lambda row: row[0].ts):
            self._notify_event(e.kind, e.detail or "", e.ts, version)

    def _notify_event(self, kind: str, detail: str, ts: float, version: str) -> None:
        if kind == "started":
            self.notify("rollout", f"{version} rollout started (rollback target {self.fleet_version[0]})", ts,
                        version=version)
        elif kind == "wave":
            self.notify("wave", f"{version} {detail.split(' below=')[0]}", ts, version=version)
        elif kind == "completed":
            self.notify("completed", f"{version} on the whole fleet ({detail})", ts, version=version)
        elif kind in ("breach", "rollback", "rolled_back", "halted"):
            self.notify("rollback", f"{version} {kind}: {detail}", ts, version=version)
        elif kind == "superseded":
            self.notify("rollout", f"{version} superseded by {detail}", ts, version=version)

    # -- reading --------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for a status display: the rollout in progress and its devices, or what comes next."""
        active = self._active
        if active is None:
            nxt = self.pending
            return f"idle; fleet baseline {self.fleet_version[0]}" + (f", next {nxt[0]}" if nxt else "")
        st = self.ctl.status(active.rid)
        devs = ", ".join(f"{k} {v}" for k, v in sorted(st.get("devices", {}).items()))
        return f"{st.get('version')} wave {st.get('wave')} ({st.get('wave_fraction', 0):.0%}) {st.get('state')}; {devs}"

    def records(self) -> list[dict[str, Any]]:
        """One row per rollout started here, oldest first: version, rollback target, waves, outcome, timing."""
        out = []
        for rid, _ in list(self._started):
            r = self.ctl.store.rollout(rid)
            if r is None:
                continue
            waves = sum(1 for e in self.ctl.store.events(rid, EVENT_LIMIT) if e.kind == "wave")
            done = r.finished
            out.append({"id": r.id, "version": r.version, "previous": r.prev_version, "waves": waves,
                        "outcome": str(r.state), "reason": r.reason, "started_wall": r.created,
                        "finished_wall": done, "seconds": round(done - r.created, 2) if done else None})
        return out
