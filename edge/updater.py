"""Device side of a model rollout: signed manifest -> chunk download -> verify -> smoke test -> shadow
-> swap between frames -> health watch -> automatic rollback.

Why it is shaped like this
--------------------------
* **Nothing heavy on the MQTT thread or the frame loop.** ``on_message`` only appends to a per-device
  serial work queue (bounded in messages and bytes: ``queue_max_messages``, ``queue_max_bytes``; what a
  full queue drops is retained on the broker and fetched again once the worker has caught up); decoding, hashing, disk writes, ORT loading and shadow inference run on a worker
  (a private single thread by default, or a shared pool when many simulated devices live in one
  process). ``on_frame`` costs a few attribute reads unless a swap is due, and the swap itself is one
  ``ModelSlot.swap`` of an already loaded and smoke-tested model - so it lands between two frames.
* **Crash safety by construction.** Every file the device trusts is written atomically (temp file,
  fsync, rename): the highest accepted manifest sequence and the pending manifest (``updater.json``),
  each verified chunk (``download/<sha>/<i>``), the assembled model (``models/<sha256>.onnx``, written
  only after the whole sha256 and size match the signed manifest), and the active-model pointer
  (``active.json``), which is written only *after* a swap succeeded. A device killed anywhere boots from
  the pointer (``select_boot_model``), which always names a complete, verified file; a pending update
  then simply resumes (chunks already on disk are re-hashed, not re-fetched).
* **Resume without refetching.** Chunks are retained on the broker; the device subscribes to the
  individual topics of the chunks it is *missing*, a few at a time (a sliding window: bounded memory and
  broker queue even for big models), and unsubscribes each as it lands.
* **Distinct reasons.** Every state change is published (retained, QoS 1) on ``dev/{id}/model/status``:
  ``downloading``, ``verified``, ``shadow``, ``active``, ``failed``, ``rolled_back``, ``rejected``, with a
  short reason (``bad_signature``, ``unknown_key``, ``expired``, ``wrong_fleet``, ``replayed``, ``too_large``,
  ``incompatible``, ``chunk_hash``, ``sha256_mismatch``, ``smoke_test``, ``low_agreement``,
  ``health_errors``, ``confidence_collapse``, ``latency`` ...). Retained because it is the device's
  current lifecycle *state*: a restarted controller or ``edgeloop rollout devices`` sees it at once.

Wave targeting (decided by the controller, checked here): ``Manifest.compat["rollout"]`` (signed) may
carry ``{"salt": str, "below": int}``; the device is in the wave iff
``wave_bucket(salt, device_id) < below`` (buckets 0..9999). Buckets are stable per rollout, so growing
waves are nested: a device in the 5 % canary is also in the 25 % wave, and a device that was offline
during its wave still finds the right target in the retained fleet manifest when it returns. Devices
outside the wave still record the sequence (no downgrade by replay) and otherwise ignore it. The same
dict may carry the device-side policy: ``shadow_frames``, ``shadow_seconds``, ``min_agreement``,
``health_seconds``.

This module must not import torch, trainer or deploy (the edge runs without them).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Mapping, Protocol

import msgspec
import numpy as np

from protocol.durable import atomic_write, sha256_file as _sha256_file
from protocol.errors import ProtocolError
from protocol.memory import trim_heap
from protocol.messages import Chunk, Manifest, decode_message
from protocol.model_meta import COLOR_ORDERS, LAYOUTS
from protocol.reports import ModelStatus, encode_report
from protocol.signing import verify_manifest
from protocol.waves import BUCKETS, in_wave, wave_bucket  # noqa: F401 (re-exported for tests)
from protocol.topics import Topics

__all__ = [
    "Updater", "UpdaterLimits", "UpdaterLink", "select_boot_model", "wave_bucket", "in_wave",
    "check_compat", "atomic_write", "BUCKETS", "PowerLoss",
]

log = logging.getLogger("edgeloop.updater")

_STATE_FILE = "updater.json"
_POINTER_FILE = "active.json"


# -- small helpers shared with tests ------------------------------------------------------------------------
def select_boot_model(state_dir: str | os.PathLike[str], fallback: str | os.PathLike[str] | None = None
                      ) -> tuple[Path | None, str | None]:
    """The model file a (re)booting device should load, and its version.

    Reads ``active.json`` (written only after a successful swap) and re-hashes the file it names; if that
    is missing or corrupt, tries the previous model it records, then ``fallback`` (the model the device
    was provisioned with). So a device killed mid-download or mid-swap always comes back on a complete,
    verified model.
    """
    d = Path(state_dir)
    try:
        pointer = json.loads((d / _POINTER_FILE).read_text())
    except (OSError, ValueError):
        pointer = {}
    for entry in (pointer.get("active"), pointer.get("previous")):
        if not isinstance(entry, dict):
            continue
        p = d / "models" / f"{entry.get('sha256', '')}.onnx"
        try:
            if p.is_file() and _sha256_file(p) == entry.get("sha256"):
                return p, entry.get("version")
        except OSError:
            continue
    return (Path(fallback), None) if fallback is not None else (None, None)


def check_compat(compat: Mapping[str, Any], limits: "UpdaterLimits") -> str | None:
    """Why this device cannot feed a model with this (signed) compatibility block, or None if it can."""
    inp = compat.get("input")
    if not isinstance(inp, Mapping):
        return "manifest has no input spec"
    try:
        w, h, c = int(inp["width"]), int(inp["height"]), int(inp["channels"])
    except (KeyError, TypeError, ValueError):
        return f"input spec {dict(inp)!r} lacks width/height/channels"
    if c not in limits.channels:
        return f"input channels {c} not supported (device: {list(limits.channels)})"
    if inp.get("color_order", "RGB") not in COLOR_ORDERS:
        return f"colour order {inp.get('color_order')!r} unknown"
    if inp.get("layout", "NCHW") not in limits.layouts:
        return f"layout {inp.get('layout')!r} not supported (device: {list(limits.layouts)})"
    if w < 1 or h < 1 or w * h > limits.max_input_pixels:
        return f"input {w}x{h} outside the device's limit of {limits.max_input_pixels} pixels"
    opset = compat.get("opset", 0)
    if not isinstance(opset, int) or opset > limits.max_opset:
        return f"opset {opset} above the runtime's {limits.max_opset}"
    roi = inp.get("roi")
    if roi is not None and limits.frame_size is not None:
        fw, fh = limits.frame_size
        if not (isinstance(roi, list) and len(roi) == 4 and roi[0] + roi[2] <= fw and roi[1] + roi[3] <= fh):
            return f"roi {roi} outside the camera's {fw}x{fh} frame"
    labels = compat.get("labels")
    if not isinstance(labels, list) or not labels:
        return "manifest has no labels"
    return None


def _finite(x: float, default: float = 0.0) -> float:
    return float(x) if math.isfinite(x) else default


# -- configuration -------------------------------------------------------------------------------------------
@dataclass
class UpdaterLimits:
    """Device-side limits and default policy (the manifest's ``compat.rollout`` may tighten the policy).

    Health watch after a swap (``health_*``): the new model is rolled back by the device itself if, within
    ``health_seconds``, it raises/returns non-finite output ``health_max_errors`` times, or its mean top-1
    confidence over at least ``health_min_frames`` frames falls below ``(1 - health_max_confidence_drop)``
    x the old model's, or its median latency exceeds ``health_max_latency_ratio`` x the old model's (and by
    more than ``health_latency_slack_ms``). These are one device's last-resort triggers on live frames, so
    they are looser than the fleet gate's ``shadow_*`` thresholds (``deploy.rollout_gate.Policy``), which
    judge a whole wave's shadow runs before anyone swaps.
    """

    #: Keys of earlier releases -> their names now (a config file using an old key fails naming the new one).
    renamed_keys: ClassVar[dict[str, str]] = {
        "max_errors": "health_max_errors",
        "max_confidence_drop": "health_max_confidence_drop",
        "max_latency_ratio": "health_max_latency_ratio",
        "latency_slack_ms": "health_latency_slack_ms",
    }

    max_model_bytes: int = 64 * 1024 * 1024
    max_chunk_bytes: int = 4 * 1024 * 1024
    channels: tuple[int, ...] = (1, 3)
    layouts: tuple[str, ...] = LAYOUTS
    max_input_pixels: int = 1024 * 1024
    max_opset: int = 21
    frame_size: tuple[int, int] | None = None
    chunk_window: int = 16
    shadow_frames: int = 0
    shadow_seconds: float = 30.0
    min_agreement: float = 0.0
    health_seconds: float = 30.0
    health_min_frames: int = 20
    health_max_errors: int = 3
    health_max_confidence_drop: float = 0.5
    health_max_latency_ratio: float = 4.0
    health_latency_slack_ms: float = 20.0
    status_retain: bool = True
    queue_max_messages: Annotated[int, msgspec.Meta(ge=1)] = 64          # network messages waiting for the worker
    queue_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024 * 1024  # and their bytes


class UpdaterLink(Protocol):
    """What the updater needs from the device's MQTT client (edge/link.py implements it).

    ``publish`` must be safe from any thread and must not block on the network (queue it).
    ``subscribe``/``unsubscribe`` take lists so a window of chunk topics costs one packet.
    """

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...
    def subscribe(self, subs: list[tuple[str, int]]) -> None: ...
    def unsubscribe(self, topics: list[str]) -> None: ...


class _Serial:
    """Run submitted callables one at a time, in order, on a (possibly shared) executor.

    Lets a thousand simulated devices share a small pool while each device's work stays strictly
    ordered, exactly as on a real device with its own worker thread.

    Bounded: a submission that carries a ``size`` (a message from the network) is refused when
    ``max_items`` steps are waiting or its bytes would pass ``max_bytes`` (a flood, or a worker stuck in a
    slow step, cannot grow memory without bound); ``submit`` then returns False and counts it in
    ``dropped``. The updater's own follow-up steps carry no size and are always queued: there are a few
    per message at most.
    """

    def __init__(self, executor: Executor, max_items: int | None = None, max_bytes: int | None = None) -> None:
        self._executor = executor
        self._q: deque[tuple[Callable[..., None], tuple[Any, ...], int]] = deque()
        self._lock = threading.Lock()
        self._running = False
        self._bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.dropped = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._q)

    def submit(self, fn: Callable[..., None], *args: Any, size: int = 0) -> bool:
        with self._lock:
            if self.closed:
                return False
            if size and ((self.max_items is not None and len(self._q) >= self.max_items)
                         or (self.max_bytes is not None and self._bytes + size > self.max_bytes)):
                self.dropped += 1
                return False
            self._q.append((fn, args, size))
            self._bytes += size
            if self._running:
                return True
            self._running = True
        try:
            self._executor.submit(self._drain)
        except RuntimeError:  # executor shut down
            with self._lock:
                self._running = False
        return True

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._q or self.closed:
                    self._running = False
                    return
                fn, args, size = self._q.popleft()
                self._bytes -= size
            try:
                fn(*args)
            except PowerLoss:
                with self._lock:
                    self.closed = True
                    self._q.clear()
                    self._bytes = 0
                    self._running = False
                return
            except Exception:  # a bug in one step must not kill the worker for good
                log.exception("updater step %s failed", getattr(fn, "__name__", fn))


class PowerLoss(BaseException):
    """Raised by a test fault hook to emulate power loss at a named point (no cleanup runs)."""


STORAGE_RETRY_S = 5.0  # after the disk refused a chunk or the model file: the next try


@dataclass
class _Shadow:
    model: Any
    started: float
    frames_target: int
    seconds: float
    n: int = 0
    agree: int = 0
    conf_sum: float = 0.0
    entropy_sum: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # one per shadow frame (bounded by frames_target)
    active_conf_sum: float = 0.0
    busy: bool = False

    def metrics(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "shadow_frames": self.n,
            "agreement": round(self.agree / n, 4),
            "confidence": round(_finite(self.conf_sum / n), 4),
            "active_confidence": round(_finite(self.active_conf_sum / n), 4),
            "entropy": round(_finite(self.entropy_sum / n), 4),
            # the median, as the stats' latency_p50_ms the gate compares it with: a mean would let one
            # scheduling hiccup on a busy device read as a slow model (it rolled back healthy versions)
            "latency_ms": round(_finite(float(np.median(self.latencies_ms)) if self.latencies_ms else 0.0), 3),
        }


@dataclass
class _Health:
    started: float
    seconds: float
    base_conf: float | None
    base_lat: float | None
    errors: int = 0
    frames: int = 0
    conf_sum: float = 0.0
    lats: list[float] = field(default_factory=list)


# -- the updater ------------------------------------------------------------------------------------------
class Updater:
    """Turns signed manifests into a safely swapped model on one device.

    Wiring (edge/node.py):
      * on every (re)connect: ``link.subscribe(updater.subscriptions())``; route messages whose topic is in
        ``updater.wants(topic)`` to ``updater.on_message(topic, payload)`` (MQTT thread; it only queues);
      * once per frame, after inference with the active model: ``updater.on_frame(frame, probs, latency_ms)``
        (``probs``: the active model's probability row for that frame, or None); report an inference
        exception with ``updater.on_error(exc)``;
      * the loop keeps calling ``slot.observe(frame)`` (recent frames for the smoke test) and reading
        ``slot.active``; ``updater.active_version`` is what birth/stats report.
      * at boot, load ``select_boot_model(state_dir, provisioned_model)`` into the slot before creating the
        updater.
    """

    def __init__(
        self,
        device_id: str,
        fleet: str,
        state_dir: str | os.PathLike[str],
        trusted_keys: Mapping[str, Any],
        slot: Any,
        link: UpdaterLink,
        topics: Topics | None = None,
        limits: UpdaterLimits | None = None,
        *,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
        fault: Callable[[str], None] | None = None,
        min_seq: int = 0,
    ) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.state_dir = Path(state_dir)
        self.trusted_keys = dict(trusted_keys)
        self.slot = slot
        self.link = link
        self.topics = topics or Topics()
        self.limits = limits or UpdaterLimits()
        self._clock = clock
        self._fault = fault
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"updater-{device_id}")
        self._serial = _Serial(self._executor, self.limits.queue_max_messages, self.limits.queue_max_bytes)
        self._dropped_topics: set[str] = set()  # messages refused by the full queue, fetched again afterwards
        self._recovery_queued = False
        self.rejections: dict[str, int] = {}  # reason -> models refused or given up (metrics)
        self._lock = threading.Lock()  # guards the fields the frame loop and the worker both touch
        (self.state_dir / "models").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "download").mkdir(parents=True, exist_ok=True)
        self._manifest_topic = self.topics.manifest(fleet)

        # Persistent state: highest accepted seq, the manifest being installed (or done), failed shas.
        st = self._load_state()
        self.highest_seq: int | None = st.get("highest_seq")
        # ``min_seq``: the provisioning floor (updater.min_manifest_seq, the sequence the fleet ran when the device
        # was provisioned). A factory-reset device has no state file; without the floor it would take any signed,
        # unexpired manifest, an older model too. Manifests below it are ``replayed``; the floor itself passes.
        if min_seq > 0 and (self.highest_seq is None or self.highest_seq < min_seq - 1):
            self.highest_seq = min_seq - 1
        self._pending: Manifest | None = None
        if st.get("pending"):
            try:
                self._pending = msgspec.json.decode(json.dumps(st["pending"]).encode(), type=Manifest)
            except (msgspec.ValidationError, ValueError, TypeError):
                self._pending = None
        self._phase: str = st.get("phase", "idle")  # idle | downloading | done | failed
        self._last_manifest_sig: str = st.get("last_sig", "")
        self._failed: dict[str, str] = dict(st.get("failed", {}))  # sha256 -> rollout id it failed in
        self.shadow_metrics: dict[str, Any] | None = None

        # Worker-only download state.
        self._have: set[int] = set()
        self._mem: dict[int, bytes] = {}
        self._inflight: set[int] = set()
        self._chunk_dir: Path | None = None
        self.chunks_received = 0  # chunk messages of the pending download that arrived, redeliveries included
        self.storage_errors = 0  # chunk or model writes the disk refused (full, read-only): /metrics
        self._storage_retry_at = 0.0  # monotonic time of the next try after such a refusal (0: none due)
        self._assemble_due = False  # the refused write was the assembled model's (its chunks are in _mem)
        self._state_dirty = False  # the last state could not be written (full disk): written on the next try
        self._download_stalled = False  # a chunk or the model file was refused and none written since

        # Shared with the frame loop (under self._lock).
        self._ready: tuple[Manifest, Any] | None = None  # loaded model waiting for a between-frames swap
        self._shadow: _Shadow | None = None
        self._health: _Health | None = None
        self._conf_hist: deque[float] = deque(maxlen=200)
        self._lat_hist: deque[float] = deque(maxlen=200)
        self.state = "idle"
        self.last_status: dict[str, Any] = {}

        if self._pending is not None and self._phase == "downloading":
            self._serial.submit(self._resume)

    # -- interface for the link / frame loop -------------------------------------------------------------
    @property
    def active_version(self) -> str | None:
        m = getattr(self.slot, "active", None)
        return getattr(m, "version", None) if m is not None else None

    def subscriptions(self) -> list[tuple[str, int]]:
        """Everything to (re)subscribe after a connect: the fleet manifest plus chunks still missing."""
        subs = [(self._manifest_topic, 1)]
        with self._lock:
            m, inflight = self._pending, sorted(self._inflight)
        if m is not None and self._phase == "downloading":
            subs += [(self.topics.chunk(m.model_id, m.version, i), 1) for i in inflight]
        return subs

    def wants(self, topic: str) -> bool:
        """Whether ``topic`` is for the updater (cheap string test, for the link's dispatcher)."""
        return topic == self._manifest_topic or topic.startswith(f"{self.topics.prefix}/models/")

    def on_message(self, topic: str, payload: bytes) -> None:
        """MQTT thread: queue and return (all parsing/verification happens on the worker).

        When the queue is full the message is dropped and counted; manifests and chunks are retained on the
        broker, so once the worker has caught up it subscribes to the dropped topics again and gets them.
        """
        if not payload:
            return  # an empty retained payload is a cleared chunk/manifest, not a message
        if topic == self._manifest_topic:
            queued = self._serial.submit(self._handle_manifest, bytes(payload), size=len(payload))
        else:
            queued = self._serial.submit(self._handle_chunk, topic, bytes(payload), size=len(payload))
        if queued or self._serial.closed:
            return
        with self._lock:
            self._dropped_topics.add(topic)
            schedule, self._recovery_queued = not self._recovery_queued, True
        if self._serial.dropped == 1 or self._serial.dropped % 100 == 0:
            log.warning("updater queue full (%d messages, %d bytes at most): dropped a message on %s (%d so far); "
                        "it is fetched again when the worker has caught up", self.limits.queue_max_messages,
                        self.limits.queue_max_bytes, topic, self._serial.dropped)
        if schedule:
            self._serial.submit(self._refetch_dropped)

    @property
    def queue_depth(self) -> int:
        return len(self._serial)

    @property
    def queue_dropped(self) -> int:
        return self._serial.dropped

    def _refetch_dropped(self) -> None:
        """Worker, behind the backlog: subscribe again to dropped topics still wanted (the broker re-sends
        their retained messages); a chunk of a superseded download is not wanted any more."""
        with self._lock:
            dropped, self._dropped_topics, self._recovery_queued = self._dropped_topics, set(), False
            m, inflight = self._pending, set(self._inflight)
        chunks = ({self.topics.chunk(m.model_id, m.version, i) for i in inflight}
                  if m is not None and self._phase == "downloading" else set())
        wanted = [t for t in sorted(dropped) if t == self._manifest_topic or t in chunks]
        if wanted:
            self.link.unsubscribe(wanted)
            self.link.subscribe([(t, 1) for t in wanted])

    def on_frame(self, frame: np.ndarray | None, active_probs: np.ndarray | None,
                 latency_ms: float | None = None) -> None:
        """Frame loop, between frames: feed shadow/health statistics and perform a pending swap.

        Cheap unless something is happening: a couple of attribute reads on the idle path.
        """
        if active_probs is not None:
            p = np.asarray(active_probs).reshape(-1)
            conf = float(p.max()) if p.size else float("nan")
            finite = bool(np.isfinite(p).all()) and p.size > 0
        else:
            conf, finite = float("nan"), True
        health = self._health
        if health is not None:
            self._watch(health, conf, finite, active_probs is not None, latency_ms)
        elif active_probs is not None and finite:
            self._conf_hist.append(conf)
            if latency_ms is not None:
                self._lat_hist.append(float(latency_ms))
        if self._storage_retry_at and time.monotonic() >= self._storage_retry_at:
            self._storage_retry_at = 0.0
            self._serial.submit(self._storage_retry)
        shadow = self._shadow
        if shadow is not None and frame is not None and not shadow.busy:
            shadow.busy = True
            self._serial.submit(self._shadow_step, shadow, frame, active_probs)
        if self._ready is not None:
            self._swap()

    def on_error(self, exc: BaseException | None = None) -> None:
        """Frame loop: inference with the active model raised; counts against a freshly swapped model."""
        health = self._health
        if health is not None:
            self._watch(health, float("nan"), False, True, None)

    def close(self, wait: bool = True) -> None:
        """Stop the worker (pending work is dropped; state on disk is consistent at every step)."""
        self._serial.closed = True
        if self._own_executor:
            self._executor.shutdown(wait=wait, cancel_futures=True)

    def kill(self) -> None:
        """Tests: stop as if the power went out (no status, no cleanup)."""
        self.close(wait=False)

    # -- status ------------------------------------------------------------------------------------------
    def _status(self, m: Manifest | None, state: str, reason: str | None = None,
                **metrics: Any) -> None:
        self.state = state
        if state in ("rejected", "failed", "rolled_back"):
            key = (reason or state).split("/")[0][:64]
            self.rejections[key] = self.rejections.get(key, 0) + 1
        model_id = m.model_id if m is not None else "unknown"
        version = m.version if m is not None else (self.active_version or "unknown")
        clean = {k: (_finite(v) if isinstance(v, float) else v) for k, v in metrics.items()}
        if m is not None:
            clean.setdefault("seq", m.seq)
            clean.setdefault("wave", m.wave)
        clean.setdefault("active", self.active_version)
        msg = ModelStatus(device=self.device_id, model_id=model_id, version=version, state=state,  # type: ignore[arg-type]
                          reason=(reason or None) and reason[:1000],
                          rollout_id=m.rollout_id if m is not None else None,
                          seq=m.seq if m is not None else None, metrics=clean)
        self.last_status = {"state": state, "version": version, "reason": reason, "metrics": clean,
                            "rollout_id": msg.rollout_id}
        try:
            payload = encode_report(msg)
            self.link.publish(self.topics.model_status(self.device_id), payload, 1, self.limits.status_retain)
        except Exception:  # reporting must never break the update itself
            log.exception("cannot publish model status")

    # -- persistence -------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        data = {
            "highest_seq": self.highest_seq,
            "phase": self._phase,
            "pending": msgspec.to_builtins(self._pending) if self._pending is not None else None,
            "last_sig": self._last_manifest_sig,
            "failed": dict(list(self._failed.items())[-16:]),
        }
        try:
            atomic_write(self.state_dir / _STATE_FILE, json.dumps(data).encode())
        except OSError as e:
            # The memory copy stays authoritative and is written on the next try; until then a restart would
            # start from the last state that was written (a consistent, older one).
            if not self._state_dirty:
                self.storage_errors += 1
                log.warning("cannot save the updater state (%s); trying again in %.0f s", e.strerror or e,
                            STORAGE_RETRY_S)
            self._state_dirty = True
            self._storage_retry_at = self._storage_retry_at or time.monotonic() + STORAGE_RETRY_S
            return
        self._state_dirty = False

    def _write_pointer(self, m: Manifest) -> None:
        try:
            old = json.loads((self.state_dir / _POINTER_FILE).read_text())
        except (OSError, ValueError):
            old = {}
        prev = old.get("active") if isinstance(old.get("active"), dict) else None
        if prev is not None and prev.get("sha256") == m.sha256:
            prev = old.get("previous")
        data = {"active": {"version": m.version, "sha256": m.sha256, "model_id": m.model_id,
                           "seq": m.seq, "rollout_id": m.rollout_id},
                "previous": prev, "written": time.time()}
        atomic_write(self.state_dir / _POINTER_FILE, json.dumps(data).encode())

    def _rollback_pointer(self) -> None:
        try:
            old = json.loads((self.state_dir / _POINTER_FILE).read_text())
        except (OSError, ValueError):
            return
        data = {"active": old.get("previous"), "previous": old.get("active"), "written": time.time()}
        if data["active"] is None:
            (self.state_dir / _POINTER_FILE).unlink(missing_ok=True)  # back to the provisioned model
        else:
            atomic_write(self.state_dir / _POINTER_FILE, json.dumps(data).encode())

    def _model_path(self, sha256: str) -> Path:
        return self.state_dir / "models" / f"{sha256}.onnx"

    def _hit(self, point: str) -> None:
        if self._fault is not None:
            self._fault(point)

    # -- manifests (worker) ---------------------------------------------------------------------------------
    def _handle_manifest(self, payload: bytes) -> None:
        try:
            m = decode_message(payload).msg
            if not isinstance(m, Manifest):
                raise ProtocolError("unknown_type", f"{type(m).__name__} on the manifest topic")
        except ProtocolError as e:
            self._status(None, "rejected", e.reason, detail=e.detail[:300])
            return
        if m.signature and m.signature == self._last_manifest_sig:
            return  # retained redelivery after a reconnect: already handled
        try:
            verify_manifest(m, self.trusted_keys, now=self._clock(), highest_seq=self.highest_seq, fleet=self.fleet)
        except ProtocolError as e:
            self._status(m, "rejected", e.reason, detail=e.detail[:300])
            return
        # Authentic and newer: record it first, so neither a replay nor a crash can go below it.
        self.highest_seq = m.seq
        self._last_manifest_sig = m.signature
        if not in_wave(m.compat, self.device_id):
            self._save_state()
            return
        reason = None
        if m.size > self.limits.max_model_bytes:
            reason, detail = "too_large", f"model is {m.size} bytes > limit {self.limits.max_model_bytes}"
        elif m.chunk_size > self.limits.max_chunk_bytes:
            reason, detail = "too_large", f"chunk size {m.chunk_size} > limit {self.limits.max_chunk_bytes}"
        else:
            why = check_compat(m.compat, self.limits)
            if why is not None:
                reason, detail = "incompatible", why
        if reason is not None:
            self._save_state()
            self._status(m, "rejected", reason, detail=detail)
            return
        self._abandon_download()
        active = getattr(self.slot, "active", None)
        if active is not None and getattr(active, "sha256", None) == m.sha256:
            # Already running it (a later wave, a re-signed refresh, or a rollback to what we run).
            self._pending, self._phase = m, "done"
            self._save_state()
            self._write_pointer_if_needed(m)
            self._status(m, "active", None, already=True, **(self.shadow_metrics or {}))
            return
        if self._failed.get(m.sha256) == m.rollout_id:
            # Failed (or rolled back) here already in this rollout: a later wave must not retry it.
            self._pending, self._phase = m, "failed"
            self._save_state()
            self._status(m, "failed", "previously_failed")
            return
        self._pending, self._phase = m, "downloading"
        self.shadow_metrics = None
        self._save_state()
        self._start_download(m)

    def _write_pointer_if_needed(self, m: Manifest) -> None:
        if self._model_path(m.sha256).exists():
            self._write_pointer(m)

    def _abandon_download(self) -> None:
        """A newer manifest supersedes whatever was in progress (shadow/ready too)."""
        with self._lock:
            old_inflight = [self.topics.chunk(self._pending.model_id, self._pending.version, i)
                            for i in self._inflight] if self._pending is not None else []
            self._inflight.clear()
            self._shadow = None
            self._ready = None
        self._mem.clear()
        self._assemble_due = self._download_stalled = False  # a stall belonged to the superseded download
        if old_inflight:
            self.link.unsubscribe(old_inflight)
        self._have.clear()

    # -- download (worker) ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self._pending is not None and self._phase == "downloading":
            self._start_download(self._pending)

    def _start_download(self, m: Manifest) -> None:
        final = self._model_path(m.sha256)
        if final.exists() and _sha256_file(final) == m.sha256:
            self._install(m, final)  # a model we kept (rollback target) or assembled before a crash
            return
        self._chunk_dir = self.state_dir / "download" / m.sha256
        self._chunk_dir.mkdir(parents=True, exist_ok=True)
        for other in (self.state_dir / "download").iterdir():
            if other.name != m.sha256:
                shutil.rmtree(other, ignore_errors=True)
        self._have = set()
        for p in self._chunk_dir.iterdir():
            if p.name.isdigit():
                i = int(p.name)
                if i < m.chunk_count and hashlib.sha256(p.read_bytes()).hexdigest() == m.chunk_sha256[i]:
                    self._have.add(i)
                else:
                    p.unlink(missing_ok=True)
        self._status(m, "downloading", None, chunks=len(self._have), of=m.chunk_count, resumed=bool(self._have))
        self._fill_window(m)
        if len(self._have) == m.chunk_count:
            self._assemble(m)

    def _fill_window(self, m: Manifest) -> None:
        with self._lock:
            want = [i for i in range(m.chunk_count) if i not in self._have and i not in self._inflight]
            new = want[: max(0, self.limits.chunk_window - len(self._inflight))]
            self._inflight.update(new)
        if new:
            self.link.subscribe([(self.topics.chunk(m.model_id, m.version, i), 1) for i in new])

    def _handle_chunk(self, topic: str, payload: bytes) -> None:
        m = self._pending
        if m is None or self._phase != "downloading":
            return
        try:
            t = self.topics.parse(topic)
        except ProtocolError:
            return
        if t.kind != "chunk" or t.model != m.model_id or t.version != m.version:
            return  # a late chunk of a superseded download
        i = t.index
        assert i is not None
        self.chunks_received += 1
        if i in self._have or i >= m.chunk_count:
            return
        try:
            d = decode_message(payload, max_size=self.limits.max_chunk_bytes + 65536,
                               max_body={"chunk": self.limits.max_chunk_bytes})
            c = d.msg
            if not isinstance(c, Chunk) or c.index != i or c.count != m.chunk_count:
                raise ProtocolError("chunk_range", f"chunk message does not match topic index {i}")
            # decode_message already checked body == c.sha256; the signed digest must be that same value.
            if c.sha256 != m.chunk_sha256[i]:
                raise ProtocolError("chunk_hash", f"chunk {i} does not match the signed manifest")
            expected_len = m.chunk_size if i < m.chunk_count - 1 else m.size - m.chunk_size * (m.chunk_count - 1)
            if len(d.body) != expected_len:
                raise ProtocolError("chunk_range", f"chunk {i} is {len(d.body)} bytes, want {expected_len}")
        except ProtocolError as e:
            # Keep listening on this index: a correct (re)publish of the chunk still completes the download.
            self._status(m, "failed", e.reason, chunk=i, detail=e.detail[:300])
            return
        assert self._chunk_dir is not None
        try:
            atomic_write(self._chunk_dir / str(i), d.body, fsync=False)  # re-hashed on resume, so no fsync
        except OSError as e:
            self._storage_stall(m, f"chunk {i}", e, topic)
            return
        self._download_stalled = False
        self._mem[i] = d.body  # assembly joins from memory; the files are only for resuming after a restart
        self._have.add(i)
        with self._lock:
            self._inflight.discard(i)
        self.link.unsubscribe([topic])
        self._hit("chunk")
        if len(self._have) == m.chunk_count:
            self._assemble(m)
        else:
            self._fill_window(m)

    def _assemble(self, m: Manifest) -> None:
        assert self._chunk_dir is not None
        data = b"".join(self._mem[i] if i in self._mem else (self._chunk_dir / str(i)).read_bytes()
                        for i in range(m.chunk_count))
        if len(data) != m.size or hashlib.sha256(data).hexdigest() != m.sha256:
            self._mem.clear()
            reason = "size_mismatch" if len(data) != m.size else "sha256_mismatch"
            shutil.rmtree(self._chunk_dir, ignore_errors=True)
            self._phase = "failed"
            self._save_state()
            self._status(m, "failed", reason)
            return
        final = self._model_path(m.sha256)
        try:
            atomic_write(final, data)
        except OSError as e:
            self._assemble_due = True  # the chunks stay in memory (or on disk) for the next try
            self._storage_stall(m, "the assembled model", e)
            return
        self._mem.clear()
        self._assemble_due = self._download_stalled = False  # a later stall logs and reports again
        shutil.rmtree(self._chunk_dir, ignore_errors=True)
        self._install(m, final)

    def _storage_stall(self, m: Manifest, what: str, e: OSError, topic: str | None = None) -> None:
        """The disk refused a verified write (full, read-only). Nothing is wrong with the model, so nothing fails
        and the rollout is not told "failed": the download waits and tries again in ``STORAGE_RETRY_S`` (a
        chunk is fetched again from the broker, which retains it). Logged, counted, visible in the status."""
        self.storage_errors += 1
        with self._lock:
            if topic is not None:
                self._dropped_topics.add(topic)
        if not self._storage_retry_at:
            self._storage_retry_at = time.monotonic() + STORAGE_RETRY_S
        if self._download_stalled:
            return  # one log line and one status per stall, not one per chunk and try
        self._download_stalled = True
        log.warning("cannot store %s of %s/%s (%s); trying again in %.0f s", what, m.model_id, m.version,
                    e.strerror or e, STORAGE_RETRY_S)
        self._status(m, "downloading", "storage", detail=f"cannot store {what}: {e.strerror or e}"[:300],
                     chunks=len(self._have), of=m.chunk_count)

    def _storage_retry(self) -> None:
        """Worker: the next try after :meth:`_storage_stall` (or a state the disk refused), if that download is
        still the one wanted."""
        if self._state_dirty:
            self._save_state()
        m = self._pending
        if m is None or self._phase != "downloading":
            self._assemble_due = False
            return
        if self._assemble_due:
            self._assemble(m)
        else:
            self._refetch_dropped()

    # -- install: load, smoke test, shadow (worker) -------------------------------------------------------
    def _install(self, m: Manifest, path: Path) -> None:
        self._status(m, "verified", None, size=m.size)
        self._hit("verified")
        try:
            model = self.slot.load(path)  # ORT load + graph/metadata check + smoke test on recent frames
        except Exception as e:
            self._fail(m, getattr(e, "reason", "load_failed"), str(e))
            return
        meta_compat = model.meta.compat() if hasattr(model, "meta") else None
        signed = {k: v for k, v in m.compat.items() if k != "rollout"}
        if meta_compat is not None and signed and any(
                json.dumps(meta_compat.get(k), sort_keys=True) != json.dumps(v, sort_keys=True)
                for k, v in signed.items() if k in meta_compat):
            self._fail(m, "compat_mismatch", "model metadata differs from the signed manifest's compat")
            return
        policy = m.compat.get("rollout") if isinstance(m.compat.get("rollout"), Mapping) else {}
        frames = int(policy.get("shadow_frames", self.limits.shadow_frames) or 0)
        if frames > 0 and getattr(self.slot, "active", None) is not None:
            seconds = float(policy.get("shadow_seconds", self.limits.shadow_seconds))
            with self._lock:
                self._shadow = _Shadow(model, time.monotonic(), frames, seconds)
            self._status(m, "shadow", None, frames=frames, seconds=seconds)
            return
        with self._lock:
            self._ready = (m, model)

    def _fail(self, m: Manifest, reason: str, detail: str, **metrics: Any) -> None:
        """Give up on this manifest's model (recorded, so the same rollout does not retry it forever)."""
        self._phase = "failed"
        self._failed[m.sha256] = m.rollout_id
        self._save_state()
        self._status(m, "failed", reason, detail=detail[:300], **metrics)

    def _shadow_step(self, shadow: _Shadow, frame: np.ndarray, active_probs: np.ndarray | None) -> None:
        try:
            if self._shadow is not shadow:
                return
            t0 = time.perf_counter()
            try:
                pred = shadow.model.infer(frame)[0]
            except Exception as e:
                with self._lock:
                    self._shadow = None
                self._fail(self._pending, "shadow_error", f"{type(e).__name__}: {e}")  # type: ignore[arg-type]
                return
            shadow.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            p = np.asarray(pred.probs, dtype=np.float64)
            if not np.isfinite(p).all():
                with self._lock:
                    self._shadow = None
                self._fail(self._pending, "smoke_test", "non-finite outputs in shadow")  # type: ignore[arg-type]
                return
            shadow.n += 1
            shadow.conf_sum += float(pred.confidence)
            shadow.entropy_sum += float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum())
            active = getattr(self.slot, "active", None)
            if active_probs is not None and active is not None:
                a = np.asarray(active_probs).reshape(-1)
                shadow.active_conf_sum += float(a.max())
                shadow.agree += int(active.labels[int(a.argmax())] == pred.label)
            elapsed = time.monotonic() - shadow.started
            if shadow.n >= shadow.frames_target or elapsed >= shadow.seconds:
                self._finish_shadow(shadow)
        finally:
            shadow.busy = False

    def _finish_shadow(self, shadow: _Shadow) -> None:
        m = self._pending
        assert m is not None
        metrics = shadow.metrics()
        policy = m.compat.get("rollout") if isinstance(m.compat.get("rollout"), Mapping) else {}
        min_agree = float(policy.get("min_agreement", self.limits.min_agreement) or 0.0)
        with self._lock:
            self._shadow = None
        if shadow.n == 0 or metrics["agreement"] < min_agree:
            self._fail(m, "low_agreement", f"shadow agreement {metrics['agreement']:.3f} < {min_agree:.3f} "
                       f"over {shadow.n} frames", **metrics)
            return
        self._status(m, "shadow", None, done=True, **metrics)
        with self._lock:
            self._ready = (m, shadow.model)
        self.shadow_metrics = metrics

    # -- swap + health (frame loop) ------------------------------------------------------------------------
    def _swap(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return
        m, model = ready
        base_conf = float(np.mean(self._conf_hist)) if len(self._conf_hist) >= 5 else None
        base_lat = float(np.median(self._lat_hist)) if len(self._lat_hist) >= 5 else None
        try:
            self.slot.swap(model)
        except Exception as e:
            self._serial.submit(self._fail, m, getattr(e, "reason", "swap_failed"), str(e))
            return
        try:
            self._hit("swapped")  # power loss here: pointer still names the old model
        except PowerLoss:
            self._serial.closed = True
            raise
        self._conf_hist.clear()
        self._lat_hist.clear()
        policy = m.compat.get("rollout") if isinstance(m.compat.get("rollout"), Mapping) else {}
        seconds = float(policy.get("health_seconds", self.limits.health_seconds))
        self._health = _Health(time.monotonic(), seconds, base_conf, base_lat)
        self._serial.submit(self._after_swap, m)

    def _after_swap(self, m: Manifest) -> None:
        self._write_pointer(m)
        self._phase = "done"
        self._save_state()
        self._gc_models(keep={m.sha256, self._pointer_previous_sha()})
        trim_heap()  # the swap dropped the model before last: give its pages back (protocol/memory.py says why)
        extra = getattr(self, "shadow_metrics", None) or {}
        self._status(m, "active", None, health="watching", **extra)

    def _pointer_previous_sha(self) -> str | None:
        try:
            prev = json.loads((self.state_dir / _POINTER_FILE).read_text()).get("previous")
        except (OSError, ValueError):
            return None
        return prev.get("sha256") if isinstance(prev, dict) else None

    def _gc_models(self, keep: set[str | None]) -> None:
        for p in (self.state_dir / "models").glob("*.onnx"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)

    def _watch(self, h: _Health, conf: float, finite: bool, had_output: bool, latency_ms: float | None) -> None:
        lim = self.limits
        if not finite:
            h.errors += 1
        elif had_output:
            h.frames += 1
            h.conf_sum += conf
            if latency_ms is not None:
                h.lats.append(float(latency_ms))
        reason = None
        if h.errors >= lim.health_max_errors:
            reason = "health_errors"
        elif h.frames >= lim.health_min_frames:
            mean_conf = h.conf_sum / h.frames
            if h.base_conf is not None and mean_conf < h.base_conf * (1.0 - lim.health_max_confidence_drop):
                reason = "confidence_collapse"
            elif h.base_lat is not None and len(h.lats) >= lim.health_min_frames:
                med = float(np.median(h.lats[-lim.health_min_frames:]))
                if med > h.base_lat * lim.health_max_latency_ratio and med > h.base_lat + lim.health_latency_slack_ms:
                    reason = "latency"
        if reason is not None:
            self._health = None
            metrics = {"errors": h.errors, "frames": h.frames,
                       "confidence": round(h.conf_sum / h.frames, 4) if h.frames else 0.0,
                       "baseline_confidence": round(h.base_conf or 0.0, 4)}
            try:
                self.slot.rollback()
            except Exception as e:  # no previous model: nothing better to run; report it
                self._serial.submit(self._status, self._pending, "failed", f"{reason}/no_previous: {e}")
                return
            self._serial.submit(self._after_rollback, self._pending, reason, metrics)
            return
        if time.monotonic() - h.started >= h.seconds and h.frames >= min(lim.health_min_frames, 1):
            self._health = None
            metrics = {"health_frames": h.frames, "health_errors": h.errors,
                       "health_confidence": round(h.conf_sum / max(h.frames, 1), 4)}
            if h.lats:
                metrics["health_latency_ms"] = round(float(np.median(h.lats)), 3)
            metrics = {**(self.shadow_metrics or {}), **metrics}  # the controller keeps judging the shadow run
            self._serial.submit(functools.partial(self._status, self._pending, "active", None, health="ok",
                                                  **metrics))

    def _after_rollback(self, m: Manifest, reason: str, metrics: dict[str, Any]) -> None:
        self._rollback_pointer()
        self._phase = "failed"
        self._failed[m.sha256] = m.rollout_id
        self._save_state()
        self._status(m, "rolled_back", reason, **metrics)
