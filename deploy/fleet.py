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

The registry (issue 12): with one (``{device id: fleet}`` of the provisioned devices, deploy/pki.py, or a
configured list), messages under ids it does not hold are dropped as ``unknown_device`` - made-up ids cannot
join a wave - and a device counts only in its own fleet. Without one, every id that publishes counts (the
controller warns about that at start).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from protocol.errors import ProtocolError
from protocol.reports import Birth, ModelStatus, State, Stats, decode_report
from protocol.topics import Topics
from protocol.waves import BUCKETS, wave_bucket

log = logging.getLogger("edgeloop.deploy.fleet")

__all__ = ["DeviceInfo", "Fleet", "Registry", "registry_source", "wave_bucket", "BUCKETS"]

#: Reads ``{device id: fleet}`` of the devices that exist, again whenever it is called (new provisions, revocations).
Registry = Callable[[], Mapping[str, str]]



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
    status_seq: int | None = None       # the manifest sequence that status names
    stats_time: float = 0.0             # when its last stats arrived
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
            "status_time": self.status_time, "status_seq": self.status_seq, "stats_time": self.stats_time,
            "metrics": self.status_metrics,
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
        self._registry: dict[str, str] | None = None  # device id -> fleet; None: anyone who publishes counts

    def set_registry(self, registry: Mapping[str, str] | None) -> list[str]:
        """Use ``{device id: fleet}`` as the devices that exist (None: any id). Devices no longer in it
        (revoked) are dropped; returns the ids that are new, whose retained messages were dropped before."""
        with self._lock:
            old = self._registry
            self._registry = dict(registry) if registry is not None else None
            if self._registry is None:
                return []
            for gone in [d for d in self._devices if d not in self._registry]:
                del self._devices[gone]
            return sorted(set(self._registry) - set(old or ()))

    @property
    def registry(self) -> dict[str, str] | None:
        with self._lock:
            return dict(self._registry) if self._registry is not None else None

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
        with self._lock:
            unknown = self._registry is not None and parsed.device not in self._registry
        if unknown:
            self._reject(topic, "unknown_device", f"{parsed.device!r} is not a provisioned device")
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
                d.last_seen = d.stats_time = now
            elif isinstance(msg, ModelStatus):
                d.model_state, d.model_version, d.reason = msg.state, msg.version, msg.reason
                d.rollout_id, d.status_seq = msg.rollout_id, msg.seq
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
    def devices(self, fleet: str | None = None) -> list[DeviceInfo]:
        """A snapshot (copies) sorted by device id; with ``fleet`` and a registry, that fleet's devices only.
        Registered devices never heard from are in it too, offline: a wave's size counts them."""
        with self._lock:
            names = set(self._devices) | set(self._registry or ())
            return [DeviceInfo(**{**vars(d), "status_metrics": dict(d.status_metrics)}) if d is not None
                    else DeviceInfo(name)
                    for name in sorted(names) if self._in(name, fleet)
                    for d in (self._devices.get(name),)]

    def _in(self, device: str, fleet: str | None) -> bool:
        return fleet is None or self._registry is None or self._registry.get(device) == fleet

    def get(self, device: str) -> DeviceInfo | None:
        with self._lock:
            d = self._devices.get(device)
            return DeviceInfo(**vars(d)) if d is not None else None

    def forget(self, device: str) -> bool:
        """Drop a decommissioned device (the controller clears its retained topics first)."""
        with self._lock:
            return self._devices.pop(device, None) is not None

    def ids(self, fleet: str | None = None) -> list[str]:
        """Known device ids: the registry's (of ``fleet``), heard from or not; without one, those heard from."""
        with self._lock:
            if self._registry is not None:
                return sorted(d for d, f in self._registry.items() if fleet is None or f == fleet)
            return sorted(self._devices)

    def seed(self, rows: Iterable[dict[str, Any]]) -> None:
        """Pre-populate from the controller's SQLite snapshot (devices last seen before a restart)."""
        with self._lock:
            for r in rows:
                if self._registry is not None and r["device"] not in self._registry:
                    continue
                d = self._get(r["device"])
                if d.last_seen == 0.0:
                    d.version = r.get("version")
                    d.last_seen = float(r.get("last_seen") or 0.0)
                    d.online = False


def registry_source(pki_dir: str | None = None, devices: Iterable[str] | None = None,
                    fleet: str = "default") -> Registry | None:
    """The controller's device registry: the PKI's provisioned, unrevoked devices (read again on every call),
    or a fixed list of ``devices`` in ``fleet``; both: their union. None when neither is given."""
    fixed = {d: fleet for d in devices or ()}
    if pki_dir is None:
        return (lambda: fixed) if devices is not None else None

    def read() -> Mapping[str, str]:
        from .pki import provisioned_devices

        return {**provisioned_devices(pki_dir), **fixed}

    return read

