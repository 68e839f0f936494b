"""What devices publish, as an operator's tool sees it: stats and model status, with their arrival times.

A plain MQTT subscriber, like any operator tool: the demo's live view, its report and the freshness
benchmark are built from these messages only. It keeps

* per device, every stats message as a row (accuracy, frames, capture index, uploads, model, ...):
  :meth:`series` (the report's time series) and :meth:`snapshot` (the latest row per device);
* every model status message with its arrival time (:meth:`statuses`; the benchmark's delivery times)
  and the latest one per device (``status``).

Device activations, rollbacks and failures, and the trainer's selection hints, go to ``notify(kind, text,
wall, **data)`` (the demo's event log). Rows are kept for the run: this is a tool for runs of minutes, not a long-running service.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Sequence

from deploy.demo.plan import PREFIX

__all__ = ["Monitor"]


def _ignore(kind: str, text: str, wall: float | None = None, **data: Any) -> None:
    pass


class Monitor:
    """Stats and model status of ``devices`` on the broker at ``url``."""

    def __init__(self, url: str, devices: Sequence[str], notify: Callable[..., None] | None = None, *,
                 prefix: str = PREFIX, client_id: str | None = None) -> None:
        from protocol.topics import Topics

        self.url = url
        self.topics = Topics(prefix)
        self.devices = list(devices)
        self.notify = notify or _ignore
        self.client_id = client_id or f"edgeloop-demo-monitor-{os.getpid()}"
        self.stats: dict[str, list[dict[str, Any]]] = {d: [] for d in devices}
        self.latest: dict[str, dict[str, Any]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self._status_log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client: Any = None

    def start(self) -> "Monitor":
        from protocol import mqtt

        client = mqtt.make_client(self.client_id, self.url, protocol="3.1.1")
        subs = [(self.topics.all_stats(), 0), (self.topics.all_model_status(), 1), (self.topics.selection_hint(), 1)]
        client.on_connect = lambda c, *a: c.subscribe(subs)
        client.on_message = lambda c, u, msg: self._on_message(msg.topic, msg.payload)
        self._client = client
        mqtt.start(client)
        return self

    def stop(self) -> None:
        """Disconnect; what was collected stays readable."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_message(self, topic: str, payload: bytes) -> None:
        from protocol.reports import ModelStatus, Stats, decode_report

        try:
            parsed = self.topics.parse(topic)
            if parsed.kind == "selection_hint" and payload:
                self._on_hint(decode_report(payload, parsed.kind), time.time())
                return
            if parsed.device not in self.stats or not payload:
                return
            msg = decode_report(payload, parsed.kind)
        except Exception:  # noqa: BLE001 - a malformed message is the device's problem, not the monitor's
            return
        if isinstance(msg, Stats):
            self._on_stats(parsed.device, msg, time.time())
        elif isinstance(msg, ModelStatus):
            self._on_status(parsed.device, msg, time.time())

    def _on_hint(self, msg: Any, now: float) -> None:
        """The trainer's selection hint (trainer/hints.py), as an event line."""
        if msg.boost:
            asked = ", ".join(sorted(msg.boost))
            self.notify("hint", f"trainer asks for more frames predicted {asked} ({msg.reason})", now,
                        boost=dict(msg.boost))
        else:
            self.notify("hint", "trainer withdrew its selection hint", now, boost={})

    def _on_stats(self, dev: str, msg: Any, now: float) -> None:
        ex = msg.extra if isinstance(msg.extra, dict) else {}
        cap = ex.get("capture") or {}
        row = {"wall": now, "index": int(cap.get("frames", ex.get("frames", 0)) or 0),
               "frames": int(ex.get("frames", 0) or 0), "accuracy": ex.get("accuracy"),
               "uploads": int(msg.uploads), "model": ex.get("model_version"), "fps": float(msg.fps),
               "dropped": int(cap.get("dropped", 0) or 0), "outbox": int(msg.outbox_depth),
               "stored": int(ex.get("stored", 0) or 0), "reasons": ex.get("sampler")}
        with self._lock:
            self.stats[dev].append(row)
            self.latest[dev] = row

    def _on_status(self, dev: str, msg: Any, now: float) -> None:
        m = msg.metrics if isinstance(msg.metrics, dict) else {}
        row = {"wall": now, "device": dev, "state": msg.state, "version": msg.version, "rollout": msg.rollout_id,
               "active": m.get("active"), "health": m.get("health"), "reason": msg.reason}
        with self._lock:
            before = self.status.get(dev)
            self.status[dev] = row
            self._status_log.append(row)
        if before and before["state"] == msg.state and before["version"] == msg.version:
            return
        if msg.state == "active" and m.get("health") != "ok":
            self.notify("activated", f"{dev} now runs {msg.version}", now, device=dev, version=msg.version)
        elif msg.state in ("rolled_back", "failed", "rejected"):
            self.notify("rolled_back" if msg.state == "rolled_back" else "failed",
                        f"{dev}: {msg.version} {msg.state} ({msg.reason})", now, device=dev, version=msg.version)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The latest stats row of each device that has published one."""
        with self._lock:
            return {d: dict(r) for d, r in self.latest.items()}

    def series(self) -> dict[str, list[dict[str, Any]]]:
        """Every stats row, per device, in arrival order."""
        with self._lock:
            return {d: [dict(r) for r in rows] for d, rows in self.stats.items()}

    def statuses(self) -> list[dict[str, Any]]:
        """Every model status message, in arrival order (``wall`` = arrival time here)."""
        with self._lock:
            return [dict(r) for r in self._status_log]
