"""What the controller knows about each device, built only from what devices publish.

Sources (all under ``dev/{id}/``, plain-JSON reports, ``protocol.reports``): ``state`` (retained
online/offline + boot counter; also the Will),
``birth`` (retained; active model version), ``stats`` (fps, latency, outbox depth), and
``model/status`` (retained by the updater: the device's model lifecycle state with metrics). Because the
state, birth and model status are retained, a controller that restarts rebuilds the fleet picture from a
single subscribe - no device needs to re-announce anything.

The topic, not the payload, names the device (broker ACLs pin a device to ``dev/{its id}/``), so a device
cannot speak for another one. Malformed payloads, wrong message types and messages whose sender differs
from the topic's device are counted per reason, logged and dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.errors import ProtocolError
from protocol.reports import Birth, ModelStatus, State, Stats, decode_report
from protocol.topics import Topics
from protocol.waves import BUCKETS, wave_bucket

log = logging.getLogger("edgeloop.deploy.fleet")

__all__ = ["DeviceInfo", "Fleet", "wave_bucket", "BUCKETS"]



@dataclass
class DeviceInfo:
    """The controller's view of one device."""

    device: str
    online: bool = False
    boot: int = 0
    last_seen: float = 0.0
    version: str | None = None          # active model version (birth, or status metrics "active")
    model_state: str | None = None      # last model/status state
    model_version: str | None = None    # the version that status is about
    reason: str | None = None
    rollout_id: str | None = None
    status_metrics: dict[str, Any] = field(default_factory=dict)
    status_time: float = 0.0
    fps: float | None = None
    latency_ms: float | None = None
    outbox_depth: int | None = None
    confidence: float | None = None

    @property
    def agreement(self) -> float | None:
        a = self.status_metrics.get("agreement")
        return float(a) if isinstance(a, (int, float)) else None

    def to_row(self) -> dict[str, Any]:
        return {
            "device": self.device, "online": self.online, "version": self.version,
            "state": self.model_state, "status_version": self.model_version, "reason": self.reason,
            "rollout_id": self.rollout_id, "last_seen": self.last_seen, "agreement": self.agreement,
            "fps": self.fps, "latency_ms": self.latency_ms, "outbox_depth": self.outbox_depth,
            "status_time": self.status_time, "metrics": self.status_metrics,
        }


class Fleet:
    """Thread-safe device table fed by ``on_message`` (MQTT thread), read by the controller."""

    def __init__(self, topics: Topics | None = None, clock: Any = time.time) -> None:
        self.topics = topics or Topics()
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceInfo] = {}
        self.dropped = 0
        self.rejected: dict[str, int] = {}  # reason -> count
        self.changed = threading.Event()  # set on every model-status change (wakes the controller)

    def subscriptions(self) -> list[tuple[str, int]]:
        t = self.topics
        return [(t.all_states(), 1), (t.all_births(), 1), (t.all_model_status(), 1), (t.all_stats(), 0)]

    def _get(self, device: str) -> DeviceInfo:
        d = self._devices.get(device)
        if d is None:
            d = self._devices[device] = DeviceInfo(device)
        return d

    def on_message(self, topic: str, payload: bytes) -> None:
        """Apply one device message; cheap (one msgspec decode) so it can run on the MQTT thread."""
        try:
            parsed = self.topics.parse(topic)
        except ProtocolError:
            return
        if parsed.device is None or parsed.kind not in ("state", "birth", "stats", "model_status"):
            return
        if not payload:
            return
        try:
            msg = decode_report(payload, parsed.kind)  # wrong_type when it is not what the topic carries
        except ProtocolError as exc:
            self._reject(topic, exc.reason, str(exc))
            return
        if msg.device != parsed.device:
            # A device's credentials may only write under its own topics; a mismatch is a spoof or a bug.
            self._reject(topic, "device_mismatch", f"sender {msg.device!r} publishing as {parsed.device!r}")
            return
        now = self._clock()
        with self._lock:
            d = self._get(parsed.device)
            if isinstance(msg, State):
                if msg.boot < d.boot and msg.state == "offline":
                    return  # a late Will from an earlier boot must not mark a live device offline
                d.online = msg.state != "offline"  # degraded is still there
                d.boot = max(d.boot, msg.boot)
                d.last_seen = now
            elif isinstance(msg, Birth):
                d.version = msg.model_version or d.version
                d.online = True
                d.last_seen = now
            elif isinstance(msg, Stats):
                d.fps, d.latency_ms, d.outbox_depth = msg.fps, msg.latency_p50_ms, msg.outbox_depth
                conf = msg.extra.get("confidence") if isinstance(msg.extra, dict) else None
                d.confidence = float(conf) if isinstance(conf, (int, float)) else d.confidence
                d.online = True
                d.last_seen = now
            elif isinstance(msg, ModelStatus):
                d.model_state, d.model_version, d.reason = msg.state, msg.version, msg.reason
                d.rollout_id = msg.rollout_id
                d.status_metrics = dict(msg.metrics)
                d.status_time = now
                active = msg.metrics.get("active")
                if isinstance(active, str):
                    d.version = active
                elif msg.state == "active":
                    d.version = msg.version
                d.last_seen = max(d.last_seen, now)
                self.changed.set()

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        """Count and log a bad device message (logged the first time and then every 100th per reason)."""
        with self._lock:
            self.dropped += 1
            n = self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if n == 1 or n % 100 == 0:
            log.warning("rejected message on %s: %s: %s (%d so far for this reason)", topic, reason, detail, n)

    # -- queries -----------------------------------------------------------------------------------------
    def devices(self) -> list[DeviceInfo]:
        """A snapshot (copies) sorted by device id."""
        with self._lock:
            return [DeviceInfo(**{**vars(d), "status_metrics": dict(d.status_metrics)})
                    for _, d in sorted(self._devices.items())]

    def get(self, device: str) -> DeviceInfo | None:
        with self._lock:
            d = self._devices.get(device)
            return DeviceInfo(**vars(d)) if d is not None else None

    def forget(self, device: str) -> bool:
        """Drop a decommissioned device (the controller clears its retained topics first)."""
        with self._lock:
            return self._devices.pop(device, None) is not None

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def seed(self, rows: Iterable[dict[str, Any]]) -> None:
        """Pre-populate from the controller's SQLite snapshot (devices last seen before a restart)."""
        with self._lock:
            for r in rows:
                d = self._get(r["device"])
                if d.last_seen == 0.0:
                    d.version = r.get("version")
                    d.last_seen = float(r.get("last_seen") or 0.0)
                    d.online = False
