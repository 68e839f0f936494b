"""The live fleet table: an MQTT subscriber to what devices publish, like any operator tool.

:class:`deploy.fleet.Fleet` (the controller's own device table) validates every message (type on the
topic, sender = topic's device) and keeps online/offline, the model version and the model lifecycle; this
view adds what the console shows beyond the controller's needs: the full last ``stats`` message (fps,
latency, drift, uploads, budget left, outbox, rolling accuracy on simulated cameras), the labels a device
announced, and since when it runs its model version. Every change bumps a revision number, so a page's
server-sent-event stream sends only the devices that changed since the revision it has.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

from protocol.errors import ProtocolError
from protocol.reports import Birth, Stats, decode_report
from protocol.topics import Topics

from ..fleet import Fleet

log = logging.getLogger("edgeloop.console.live")

__all__ = ["FleetView"]


class FleetView:
    """Device records for the console: ``rows()`` (all, sorted) and ``changes(since_rev)``."""

    def __init__(self, topics: Topics | None = None) -> None:
        self.topics = topics or Topics()
        self.fleet = Fleet(self.topics)
        self._lock = threading.Lock()
        self._extra: dict[str, dict[str, Any]] = {}
        self._rev: dict[str, int] = {}
        self.rev = 0
        self._client: Any = None
        self.changed = threading.Condition(self._lock)

    # -- MQTT ------------------------------------------------------------------------------------------------
    def start(self, url: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None,
              timeout: float = 10.0) -> "FleetView":
        """Subscribe (read-only, clean session, a client id of its own) and return once connected."""
        from protocol import mqtt

        client = mqtt.make_client(f"edgeloop-console-{os.getpid()}-{secrets.token_hex(3)}", url, protocol="3.1.1",
                                  ca=ca, cert=cert, key=key)
        subs = self.fleet.subscriptions()
        client.on_connect = lambda c, *a: c.subscribe(subs)
        client.on_message = lambda c, u, msg: self.on_message(msg.topic, msg.payload)
        self._client = client
        mqtt.start(client, timeout=timeout)
        log.info("console subscribed to the fleet at %s", url)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    @property
    def connected(self) -> bool:
        return bool(self._client is not None and self._client.is_connected())

    def on_message(self, topic: str, payload: bytes) -> None:
        self.fleet.on_message(topic, payload)  # validates; keeps state, version, model lifecycle
        try:
            parsed = self.topics.parse(topic)
        except ProtocolError:
            return
        if parsed.device is None or not payload or parsed.kind not in ("state", "birth", "stats", "model_status"):
            return
        extra: dict[str, Any] = {}
        if parsed.kind in ("stats", "birth"):
            try:
                msg = decode_report(payload, parsed.kind)
            except ProtocolError:
                return  # Fleet counted the rejection
            if msg.device != parsed.device:
                return
            if isinstance(msg, Stats):
                extra = _stats_fields(msg)
            elif isinstance(msg, Birth):
                extra = {"labels": list(msg.labels), "source": str(msg.capabilities.get("source", ""))}
        self._touch(parsed.device, extra)

    def _touch(self, device: str, extra: dict[str, Any]) -> None:
        info = self.fleet.get(device)
        with self._lock:
            rec = self._extra.setdefault(device, {})
            rec.update(extra)
            version = info.version if info else None
            if version and rec.get("version") != version:
                rec["version"], rec["version_since"] = version, time.time()
            self.rev += 1
            self._rev[device] = self.rev
            self.changed.notify_all()

    # -- reading -----------------------------------------------------------------------------------------------
    def _row(self, d: Any) -> dict[str, Any]:
        ex = self._extra.get(d.device, {})
        return {"device": d.device, "online": d.online, "last_seen": d.last_seen, "version": d.version,
                "version_since": ex.get("version_since"), "model_state": d.model_state,
                "status_version": d.model_version, "reason": d.reason, "rollout_id": d.rollout_id,
                "agreement": d.agreement, "rev": self._rev.get(d.device, 0),
                **{k: v for k, v in ex.items() if k not in ("version", "version_since")}}

    def rows(self) -> list[dict[str, Any]]:
        devices = self.fleet.devices()
        with self._lock:
            return [self._row(d) for d in devices]

    def row(self, device: str) -> dict[str, Any] | None:
        d = self.fleet.get(device)
        if d is None:
            return None
        with self._lock:
            return self._row(d)

    def changes(self, since: int) -> tuple[int, list[dict[str, Any]]]:
        """(current revision, rows of the devices that changed after ``since``)."""
        with self._lock:
            rev = self.rev
            names = [n for n, r in self._rev.items() if r > since]
        out = []
        for n in sorted(names):
            r = self.row(n)
            if r is not None:
                out.append(r)
        return rev, out

    def wait(self, since: int, timeout: float) -> None:
        """Block until something changed after ``since`` (or ``timeout``)."""
        with self._lock:
            if self.rev <= since:
                self.changed.wait(timeout)


def _stats_fields(m: Stats) -> dict[str, Any]:
    ex = m.extra if isinstance(m.extra, dict) else {}
    budget = [v for v in m.budget_left.values() if isinstance(v, (int, float))]
    return {"fps": m.fps, "latency_p50_ms": m.latency_p50_ms, "latency_p95_ms": m.latency_p95_ms,
            "drift": m.drift, "drift_active": bool(ex.get("drift_active", False)), "uploads": m.uploads,
            "budget_left": dict(m.budget_left), "budget_min_left": min(budget) if budget else None,
            "outbox_depth": m.outbox_depth, "outbox_bytes": m.outbox_bytes, "outbox_dropped": m.outbox_dropped,
            "accuracy": ex.get("accuracy") if isinstance(ex.get("accuracy"), (int, float)) else None,
            "frames": ex.get("frames"), "selected": ex.get("selected"), "stored": ex.get("stored"),
            "reasons": ex.get("sampler") if isinstance(ex.get("sampler"), dict) else {},
            "stats_time": time.time()}
