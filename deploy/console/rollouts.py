"""The console's one adapter to the rollout controller's state (``<deploy state>/rollout.sqlite``).

Everything the console reads about rollouts, and every operator action it takes, goes through this
module (:mod:`deploy.rollout_store`'s typed ``Rollout`` rows, the gate's own ``count_wave``), so a change of
the controller's storage touches only this file. Actions take the same path as ``edgeloop rollout
pause|resume|abort|rollback`` (:mod:`deploy.rollout_cli`): ``RolloutStore.queue_command``, applied by the
running controller within a tick. ``approve(version)``/``reject(version)`` take the path of ``edgeloop rollout
approve|reject``: :meth:`RolloutStore.approve`, applied by the running rollout service (``edgeloop deploy run``
with ``mode: approve`` records each promoted version as a rollout that awaits approval).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec

from protocol.waves import BUCKETS, wave_bucket

from ..controller import rollout_status
from ..fleet import DeviceInfo
from ..rollout_gate import count_wave
from ..rollout_store import TERMINAL, WAITING, RolloutStore, State

__all__ = ["Rollouts", "ACTIONS", "APPROVAL_STATES", "NoControllerState", "gate_numbers"]

#: Operator actions on a rollout that started, as the CLI names them (approve/reject: :meth:`Rollouts.approve`).
ACTIONS = ("pause", "resume", "abort", "rollback")
#: Rollout states in which a rollout waits for an operator's approval.
APPROVAL_STATES = tuple(s.value for s in WAITING)
#: Which actions make sense in which state (the controller ignores the others; the page offers only these).
_ACTION_STATES = {"pause": (State.RUNNING,), "resume": (State.PAUSED,),
                  "abort": (State.RUNNING, State.PAUSED, State.ROLLING_BACK),
                  "rollback": (State.RUNNING, State.PAUSED, State.COMPLETED)}


class NoControllerState(FileNotFoundError):
    """No rollout.sqlite in the deploy state directory (no controller has run there)."""


class Rollouts:
    """Read rollouts and queue operator commands; opens the store lazily and never creates it."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "rollout.sqlite"
        self._store: RolloutStore | None = None
        self._lock = threading.Lock()

    def _db(self) -> RolloutStore:
        with self._lock:
            if self._store is None:
                if not self.path.exists():
                    raise NoControllerState(f"no rollout state at {self.path}: start a controller "
                                            "(`edgeloop rollout run --state-dir ...`) or give --deploy-state")
                self._store = RolloutStore(self.path)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    @property
    def available(self) -> bool:
        return self.path.exists()

    # -- reading ------------------------------------------------------------------------------------------
    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` rollouts, newest first, as plain dicts (for templates)."""
        out = []
        for r in reversed(self._db().rollouts()[-limit:]):
            d = msgspec.to_builtins(r)
            d.update(waves=r.policy.waves, terminal=r.state in TERMINAL)
            out.append(d)
        return out

    def status(self, rid: str | None = None) -> dict[str, Any]:
        """The CLI's ``rollout status`` view plus the current wave's devices and the gate's numbers."""
        db = self._db()
        st = rollout_status(db, rid)
        r = db.rollout(st["id"]) if st else None
        if r is None:
            return {}
        st.update(below=r.below, wave_index=r.wave, actions=[a for a in ACTIONS if r.state in _ACTION_STATES[a]])
        st["members"] = [d for d in db.devices() if _in_wave(r.id, d["device"], r.below)]
        st["gate"] = gate_numbers(r, st["members"])
        return st

    def devices(self) -> list[dict[str, Any]]:
        return self._db().devices()

    def waiting_approval(self) -> list[dict[str, Any]]:
        return [r for r in self.list() if r["state"] in APPROVAL_STATES]

    # -- acting (the CLI's path) -------------------------------------------------------------------------------
    def command(self, rid: str, action: str) -> dict[str, Any]:
        """Queue ``action`` for rollout ``rid`` exactly as ``edgeloop rollout <action> --id rid`` does."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        db = self._db()
        r = db.rollout(rid)
        if r is None:
            raise KeyError(f"no rollout {rid!r}")
        if r.state not in _ACTION_STATES[action]:
            raise ValueError(f"cannot {action} a rollout that is {r.state}")
        db.queue_command(rid, action)
        return {"id": rid, "action": action, "controller_alive": db.controller_alive()}

    def approve(self, version: str, by: str) -> dict[str, Any]:
        """Approve the rollout of ``version`` that waits for an operator, as ``edgeloop rollout approve`` does;
        KeyError (naming what does wait) if none waits for it."""
        db = self._db()
        r = db.approve(version, by)
        return {"id": r.id, "version": version, "controller_alive": db.controller_alive()}

    def reject(self, version: str, by: str, reason: str) -> dict[str, Any]:
        """Refuse the waiting rollout of ``version`` with a reason (``edgeloop rollout reject --reason``)."""
        if not reason.strip():
            raise ValueError("a rejection needs a reason")
        db = self._db()
        r = db.reject(version, by, reason.strip()[:500])
        return {"id": r.id, "version": version, "controller_alive": db.controller_alive()}


def _in_wave(rid: str, device: str, below: int) -> bool:
    try:
        return below >= BUCKETS or wave_bucket(rid, device) < below
    except Exception:  # an id the wave hash refuses cannot be a member
        return False


def _device(row: dict[str, Any]) -> DeviceInfo:
    """A controller snapshot row (``DeviceInfo.to_row``) back into the controller's own type."""
    return DeviceInfo(device=row["device"], online=bool(row.get("online")), last_seen=float(row.get("last_seen") or 0),
                      version=row.get("version"), model_state=row.get("state"), model_version=row.get("status_version"),
                      reason=row.get("reason"), rollout_id=row.get("rollout_id"),
                      status_metrics=dict(row.get("metrics") or {}), fps=row.get("fps"),
                      latency_ms=row.get("latency_ms"), outbox_depth=row.get("outbox_depth"))


def gate_numbers(r: Any, members: list[dict[str, Any]]) -> dict[str, Any]:
    """The wave's figures the gate looks at, counted by the gate's own :func:`count_wave` from the controller's
    device snapshot (written every second), beside the policy's limits."""
    w = count_wave([_device(m) for m in members], r.id, r.version, r.wave_started)
    p = r.policy
    out: dict[str, Any] = {
        "members": len(members), "online": w.online, "active": len(w.active), "failed": len(w.failed),
        "pending": len(w.pending), "failed_fraction": round(len(w.failed) / w.online, 4) if w.online else None,
        "max_failed": p.max_failed, "min_agreement": p.min_agreement,
        "max_confidence_drop": p.shadow_max_confidence_drop, "max_latency_ratio": p.shadow_max_latency_ratio,
        "agreement": None, "confidence_drop": None, "latency_ratio": None, "failures": w.failures,
    }
    if w.shadowed:
        out["agreement"] = round(w.shadow_mean("agreement"), 4)
        new, old = w.shadow_mean("confidence"), w.shadow_mean("active_confidence")
        out["confidence_drop"] = round(1 - new / old, 4) if old > 0 else None
        lat = [(float(d.status_metrics.get("latency_ms", 0)), d.latency_ms) for d in w.shadowed if d.latency_ms]
        if lat:
            out["latency_ratio"] = round(sum(a for a, _ in lat) / max(1e-6, sum(b for _, b in lat)), 3)
    return out
