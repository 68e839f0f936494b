"""The console's one adapter to the rollout controller's state (``<deploy state>/rollout.sqlite``).

Everything the console reads about rollouts, and every operator action it takes, goes through this
module, so that when the controller's store moves (``deploy/rollout_store.py``, a typed ``Rollout``) only
this file changes. Actions take the same path as ``edgeloop rollout pause|resume|abort|rollback``
(:mod:`deploy.rollout_cli`): the command is written into the rollout's row and the running controller
applies it within a tick. ``approve(version)`` is the hook for the approval step the controller does not
have yet: it raises :class:`ApprovalUnavailable` until it is wired to the controller's approve path.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from protocol.waves import BUCKETS, wave_bucket

from ..controller import TERMINAL, Policy, RolloutStore, rollout_status

__all__ = ["Rollouts", "ACTIONS", "ApprovalUnavailable", "APPROVAL_STATES", "NoControllerState"]

#: Operator actions, as the CLI names them.
ACTIONS = ("pause", "resume", "abort", "rollback")
#: Rollout states in which a rollout waits for an operator's approval (none exist yet; see approve()).
APPROVAL_STATES = ("awaiting_approval",)
_ACTION_STATES = {"pause": ("running",), "resume": ("paused",), "abort": ("running", "paused", "rolling_back"),
                  "rollback": ("running", "paused", "completed")}


class ApprovalUnavailable(RuntimeError):
    """This controller has no approval step yet."""


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
        rows = self._db().q("SELECT * FROM rollouts ORDER BY created DESC LIMIT ?", (limit,))
        out = []
        for r in rows:
            d = dict(r)
            policy = msgspec.json.decode(d["policy"], type=Policy)
            d["waves"] = policy.waves
            d["terminal"] = d["state"] in TERMINAL
            out.append(d)
        return out

    def status(self, rid: str | None = None) -> dict[str, Any]:
        """The CLI's ``rollout status`` view plus the current wave's devices and the gate's numbers."""
        db = self._db()
        st = rollout_status(db, rid)
        if not st:
            return {}
        row = db.rollout(st["id"]) or {}
        devices = db.devices()
        st["below"] = row.get("below", 0)
        st["wave_index"] = row.get("wave", 0)
        st["members"] = [d for d in devices if _in_wave(st["id"], d["device"], st["below"])]
        st["gate"] = gate_numbers(st, st["members"])
        st["controller_heartbeat"] = float(db.get_meta("heartbeat") or 0.0)
        st["actions"] = [a for a in ACTIONS if st["state"] in _ACTION_STATES[a]]
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
        if r["state"] not in _ACTION_STATES[action]:
            raise ValueError(f"cannot {action} a rollout that is {r['state']}")
        db.command(rid, action)
        hb = db.get_meta("heartbeat")
        alive = hb is not None and time.time() - float(hb) < 5.0
        return {"id": rid, "action": action, "controller_alive": alive}

    def approve(self, version: str) -> dict[str, Any]:
        """Approve the rollout of ``version`` that waits for an operator (``edgeloop rollout approve vNNNN``).

        The hook for the controller's approval step: replace this body with a call to its approve path.
        """
        raise ApprovalUnavailable("this controller has no approval step yet: rollouts start without approval")


def _in_wave(rid: str, device: str, below: int) -> bool:
    try:
        return below >= BUCKETS or wave_bucket(rid, device) < below
    except Exception:  # an id the wave hash refuses cannot be a member
        return False


def gate_numbers(st: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    """The wave's figures the gate looks at, from the controller's device snapshot (updated every second).

    Failed fraction among the wave's online devices that reported for this rollout; mean shadow agreement,
    candidate vs active confidence and latency where devices ran a shadow; thresholds from the policy.
    """
    target, rid = st["version"], st["id"]
    online = [d for d in members if d.get("online")]
    mine = [d for d in online if d.get("rollout_id") == rid and d.get("status_version") == target]
    failed = [d for d in mine if d.get("state") in ("failed", "rolled_back", "rejected")]
    active = [d for d in online if d.get("version") == target]
    shadow = [d.get("metrics") or {} for d in mine if isinstance((d.get("metrics") or {}).get("agreement"), (int, float))]

    def mean(key: str) -> float | None:
        vals = [float(m[key]) for m in shadow if isinstance(m.get(key), (int, float))]
        return round(sum(vals) / len(vals), 4) if vals else None

    lat = [(float(d["metrics"]["latency_ms"]), float(d["latency_ms"])) for d in mine
           if isinstance((d.get("metrics") or {}).get("latency_ms"), (int, float)) and d.get("latency_ms")]
    conf, aconf = mean("confidence"), mean("active_confidence")
    policy = st.get("policy", {})
    return {
        "members": len(members), "online": len(online), "active": len(active), "failed": len(failed),
        "failed_fraction": round(len(failed) / len(online), 4) if online else None,
        "max_failed": policy.get("max_failed"),
        "agreement": mean("agreement"), "min_agreement": policy.get("min_agreement"),
        "confidence_drop": round(1 - conf / aconf, 4) if conf is not None and aconf else None,
        "max_confidence_drop": policy.get("max_confidence_drop"),
        "latency_ratio": round(sum(a for a, _ in lat) / max(1e-6, sum(b for _, b in lat)), 3) if lat else None,
        "max_latency_ratio": policy.get("max_latency_ratio"),
    }

