"""The edge node: camera -> ONNX inference -> verdict + uncertainty -> budgeted sampling -> durable outbox -> MQTT.

One frame loop thread does the per-frame work (nothing in it waits on the network: verdicts go out with
QoS 0, which paho only queues); a capture thread keeps the camera read at its pace; paho's thread and the
link's pump move samples from the outbox to the broker; the updater's worker downloads and verifies new
models, which the loop swaps in between frames; the metrics server answers /metrics and /healthz from its
own thread.

Faults: when the outbox cannot be written (a full disk) the loop keeps classifying and publishing verdicts,
pauses spooling (counted: ``outbox_errors``; the cause in ``outbox_error`` and one log line naming SQLite's
error) and tries again every ``outbox.retry_s`` until it works.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path

import cv2
import numpy as np

from edge.capture import Capture
from edge.config import EdgeConfig
from edge.counters import SequenceLease, next_boot
from edge.drift import DriftMonitor
from edge.hints import take_hint
from edge.homeassistant import discovery_messages
from edge.link import Link
from edge.metrics import LatencyHistogram, metrics_server
from edge.model import EdgeModel, InputCalibration, ModelError, ModelSlot, Prediction
from edge.outbox import Outbox, OutboxWriteError
from edge.pipeline import Pipeline
from edge.sampler import Decision, Sampler
from edge.sources import open_source
from edge.sources.base import Frame
from edge.updater import Updater, select_boot_model
from edge.verdicts import Verdicts
from protocol.config import config_digest
from protocol.errors import ProtocolError
from protocol.memory import trim_heap
from protocol.messages import Sample, encode_message
from protocol.reports import Birth, Stats, encode_report
from protocol.signing import load_trusted_keys
from protocol.topics import Topics

log = logging.getLogger("edgeloop.edge")


def _public_url(url: str) -> str:
    """A source URL fit for retained topics and samples: ``rtsp://user:secret@cam/...`` loses its credentials."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)[:200]


def _software() -> str:
    try:
        return f"edgeloop {package_version('edgeloop')}"
    except PackageNotFoundError:
        return "edgeloop (source)"


@dataclass
class LoopStats:
    """Figures of the frame loop since start; latencies are a rolling window."""

    frames: int = 0
    selected: int = 0
    stored: int = 0
    refused: int = 0         # selected, refused by the outbox bound
    unspooled: int = 0       # selected, not stored because the outbox could not be written (disk full)
    outbox_errors: int = 0   # failed attempts to write a sample to the outbox
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # since start, for /metrics
    correct: deque[int] = field(default_factory=lambda: deque(maxlen=200))
    hints: dict[str, int] = field(default_factory=dict)  # selection hints received, by outcome (edge/hints.py)
    started: float = field(default_factory=time.monotonic)
    last_frame: float = field(default_factory=time.monotonic)  # when a frame was last classified


class EdgeNode:
    """Owns every edge component; ``run()`` blocks until ``stop()``, a signal, or the source's end."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.topics = Topics(config.mqtt.topic_prefix)
        self.device_id = config.device_id
        self._stop = threading.Event()
        self.stats = LoopStats(correct=deque(maxlen=max(1, config.accuracy_window)))

        # Model: what the updater last installed (verified), else the provisioned file.
        cal = InputCalibration(config.calibration) if config.calibration.mode != "off" else None
        self.slot = ModelSlot(threads=config.model.threads, roi=config.model.roi, calibration=cal)
        path, _ = select_boot_model(self.state_dir, config.model.path)
        if path is None:
            raise ModelError("no_model", "no model: give --model PATH (an ONNX file exported by the trainer)")
        self.slot.swap(EdgeModel.load(path, threads=config.model.threads, roi=config.model.roi))
        log.info("model %s loaded from %s", self.slot.get(), path)

        self.source = open_source(config.source.url)
        self._source_url = _public_url(config.source.url)
        self.capture = Capture(self.source, target_fps=config.source.target_fps, queue_size=config.source.queue,
                               stall_timeout_s=config.source.stall_timeout_s)
        self.sampler = Sampler(config.sampler)
        self.drift = DriftMonitor(config.drift)
        self.outbox = Outbox(self.state_dir / "outbox.sqlite", max_bytes=config.outbox.max_bytes,
                             policy=config.outbox.policy, synchronous=config.outbox.synchronous)
        self.boot = next_boot(self.state_dir)
        self.seq = SequenceLease(self.state_dir / "sample.seq")
        self.link = Link(device_id=self.device_id, url=config.mqtt.url, topics=self.topics, outbox=self.outbox,
                         boot=self.boot, birth=self._birth_payload, window=config.mqtt.window,
                         keepalive=config.mqtt.keepalive_s, username=config.mqtt.username,
                         password=config.mqtt.password, ca_file=config.mqtt.ca_file,
                         cert_file=config.mqtt.cert_file, key_file=config.mqtt.key_file,
                         wait_for_trainer=config.upload.wait_for_trainer)
        self.updater: Updater | None = None
        if config.updater.enabled:
            trusted = load_trusted_keys(config.updater.trusted_keys) if config.updater.trusted_keys else {}
            self.updater = Updater(self.device_id, config.fleet, self.state_dir, trusted, self.slot, self.link,
                                   self.topics, config.updater.limits,
                                   min_seq=config.updater.min_manifest_seq)  # a reset device accepts nothing older
            self.link.on_connected.append(lambda: self.link.subscribe(self.updater.subscriptions()))
        self.link.on_message = self._route
        if config.sampler.hints:
            self.link.on_connected.append(lambda: self.link.subscribe([(self.topics.selection_hint(), 1)]))
        self.pipeline = Pipeline(self.slot, self.sampler, self.drift, config.uncertainty)
        self.verdicts = Verdicts(config.predictions, self.device_id, self.topics.predictions(self.device_id),
                                 self.link)
        if config.homeassistant.enabled:
            self.link.on_connected.append(self._announce_to_homeassistant)
        self.outbox_error: str | None = None  # why spooling is paused (a full disk), None while it works
        self._spool_retry_at = 0.0
        self._digest = config_digest(config)
        self._birth_generation = self.slot.generation
        self._next_stats = time.monotonic() + config.stats_interval_s
        self._fps_mark = (time.monotonic(), 0)
        self.recent_fps = 0.0
        self.last_snapshot: dict = {}
        self.metrics_server = metrics_server(self, config.metrics) if config.metrics.enabled else None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        """Open the source (fails loudly if it cannot), connect, and process frames until stopped."""
        self.capture.open()
        self.capture.start()
        self.link.start()
        self._start_metrics()
        log.info("edge %s (boot %d) running: source %s, broker %s, outbox %d samples waiting",
                 self.device_id, self.boot, self._source_url, self.config.mqtt.url, self.outbox.depth)
        try:
            self._loop()
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    def _start_metrics(self) -> None:
        """Serve /metrics and /healthz; a port that is taken costs the endpoint, never the camera."""
        if self.metrics_server is None:
            return
        try:
            log.info("metrics on %s/metrics, health on %s/healthz", self.metrics_server.start(),
                     self.metrics_server.url)
        except OSError as exc:
            log.warning("metrics endpoint not started: cannot listen on %s:%d (%s); set metrics.port (0 = any free "
                        "port) or metrics.enabled: false", self.config.metrics.host, self.config.metrics.port, exc)
            self.metrics_server = None

    def close(self) -> None:
        self.capture.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self._publish_stats()  # also keeps the final figures in self.last_snapshot
        if self.updater is not None:
            self.updater.close(wait=False)
        self.link.stop()
        self.outbox.close()
        log.info("edge %s stopped after %d frames, %d samples stored, %d uploaded", self.device_id,
                 self.stats.frames, self.stats.stored, self.link.uploads)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM stop cleanly; SIGHUP reloads the ``--model`` file (copy a new model over it first)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_model())

    def reload_model(self, path: str | os.PathLike[str] | None = None) -> threading.Thread:
        """Swap in a model file without stopping the frame loop.

        Loading, validation against its metadata and the smoke test run in a helper thread; the loop keeps
        classifying with the current model and picks the new one up between frames. A model that fails is
        refused with the reason in the log, and the current one stays active (the previous is kept for
        rollback either way).
        """
        target = path or self.config.model.path
        if target is None:
            log.warning("reload requested but no model path is configured")

        def work() -> None:
            try:
                model = self.slot.swap(target)
                trim_heap()  # off the frame loop; returns the dropped model's pages (protocol/memory.py)
                log.info("model reloaded from %s: now %s (previous %s kept)", target, model,
                         self.slot.previous.version if self.slot.previous else None)
            except (ModelError, OSError) as exc:
                log.error("model reload from %s refused: %s; still running %s", target, exc,
                          self.slot.get().version)

        thread = threading.Thread(target=work, name="edgeloop-reload", daemon=True)
        if target is not None:
            thread.start()
        return thread

    # -- the frame loop ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        batch_size = max(1, self.config.model.batch)
        max_frames = self.config.max_frames
        while not self._stop.is_set():
            frame = self.capture.get(timeout=0.5)
            if frame is None:
                if self.capture.ended:
                    break
                self._tick()
                continue
            frames = [frame]
            while len(frames) < batch_size:
                more = self.capture.get(timeout=0)
                if more is None:
                    break
                frames.append(more)
            self.process(frames)
            self._tick()
            if max_frames is not None and self.stats.frames >= max_frames:
                break

    def process(self, frames: list[Frame]) -> list[Decision]:
        """Classify a micro-batch, decide uploads and spool the chosen ones."""
        model = self.slot.get()  # the pipeline reads the same object: a swap lands between batches
        t0 = time.perf_counter()
        try:
            results = self.pipeline.step_batch([f.image for f in frames])
        except Exception as exc:
            self.stats.errors += 1
            log.warning("inference failed on model %s: %s", model.version, exc)
            if self.updater is not None:
                self.updater.on_error(exc)
            return []
        latency_ms = (time.perf_counter() - t0) * 1000.0 / len(frames)
        self.stats.last_frame = time.monotonic()
        for frame, result in zip(frames, results):
            self.stats.frames += 1
            self.stats.latencies_ms.append(latency_ms)
            self.stats.latency.observe(latency_ms)
            self.verdicts.offer(result.prediction, frame_index=frame.index, frame_time=frame.t,
                                model_version=model.version, roi=model.roi, latency_ms=latency_ms)
            self.slot.observe(frame.image)
            if frame.truth is not None:
                self.stats.correct.append(int(result.prediction.label == frame.truth))
            if result.decision.selected:
                self.stats.selected += 1
                self._spool(frame, model, result.prediction, result.decision)
            if self.updater is not None:
                self.updater.on_frame(frame.image, result.prediction.probs, latency_ms)
        return [r.decision for r in results]

    def _spool(self, frame: Frame, model: EdgeModel, pred: Prediction, decision: Decision) -> None:
        if self.outbox_error is not None and time.monotonic() < self._spool_retry_at:
            self.stats.unspooled += 1  # paused: the disk is full (see _outbox_failed)
            return
        image, roi = frame.image, None
        if self.config.upload.crop_roi and model.roi is not None:
            image, roi = model.crop(frame.image), model.roi
        image = model.calibrate_image(image)  # the trainer learns what the model saw (identity when not engaged)
        if self.config.upload.image_format == "png":
            ok, buf = cv2.imencode(".png", image)
            content_type = "image/png"
        else:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(self.config.upload.jpeg_quality)])
            content_type = "image/jpeg"
        if not ok:
            log.warning("could not encode frame %d; not uploaded", frame.index)
            return
        try:
            seq = self.seq.next()
        except OSError as exc:  # the sequence lease could not be extended: the disk is full too
            self._outbox_failed(exc)
            return
        sample_id = f"{self.device_id}.{self.boot}.{seq}"
        height, width = frame.image.shape[:2]
        sample = Sample(
            sample_id=sample_id, model_version=model.version, topk=pred.topk,
            uncertainty=decision.score, uncertainty_kind=self.config.uncertainty, p_select=decision.p_select,
            reason=decision.reason, frame_index=frame.index, width=width, height=height,
            roi=tuple(roi) if roi is not None else None, truth=frame.truth, source=self._source_url,
        )
        payload = encode_message(sample, buf.tobytes(), device=self.device_id, seq=seq, content_type=content_type)
        try:
            stored = self.outbox.put(sample_id, self.topics.samples(self.device_id), payload, priority=decision.score)
        except OutboxWriteError as exc:
            self.seq.give_back(seq)  # never stored: no gap in the sequence the trainer watches
            self._outbox_failed(exc)
            return
        if self.outbox_error is not None:
            log.warning("outbox writable again: spooling resumed (%d selected samples were not stored while it "
                        "was paused)", self.stats.unspooled)
            self.outbox_error = None
        if stored:
            self.stats.stored += 1
            self.link.notify()
        else:
            self.stats.refused += 1

    def _outbox_failed(self, exc: Exception) -> None:
        """Pause spooling for ``outbox.retry_s``; inference and verdicts go on. Logged once per pause."""
        self.stats.outbox_errors += 1
        self.stats.unspooled += 1
        self._spool_retry_at = time.monotonic() + self.config.outbox.retry_s
        if self.outbox_error is None:
            log.error("%s; spooling paused (inference and verdicts go on), retrying every %g s", exc,
                      self.config.outbox.retry_s)
        self.outbox_error = str(exc)[:1000]

    # -- periodic work ----------------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval_s
            self._publish_stats()
        if self.slot.generation != self._birth_generation:
            self._birth_generation = self.slot.generation
            self.link.announce()  # the retained birth names the model now running

    def last_frame_age(self) -> float:
        return time.monotonic() - self.stats.last_frame

    def health(self) -> tuple[bool, dict]:
        """For /healthz: unhealthy when no frame was classified for ``metrics.stall_s`` (a wedged frame loop or
        a source that stays down beyond its reconnects)."""
        age, limit = self.last_frame_age(), self.config.metrics.stall_s
        details = {"device": self.device_id, "frames": self.stats.frames, "last_frame_age_s": round(age, 3),
                   "stall_s": limit, "model_version": self.slot.get().version,
                   "mqtt_connected": self.link.is_connected, "outbox_error": self.outbox_error,
                   "waiting_for_trainer": self.link.held}
        if age > limit:
            details["reason"] = f"no frame classified for {age:.1f} s (limit {limit:g} s)"
        return age <= limit, details

    def snapshot(self) -> dict:
        """Everything the stats message carries, as a dict (also logged and used by tests)."""
        lat = np.asarray(self.stats.latencies_ms, dtype=np.float64)
        now = time.monotonic()
        since, frames_then = self._fps_mark
        self._fps_mark = (now, self.stats.frames)
        self.recent_fps = (self.stats.frames - frames_then) / max(1e-9, now - since)
        ob = self.outbox.stats()
        cap = self.capture.stats
        budget = {k: float(v) for k, v in self.sampler.budget_left().items() if v is not None}
        correct = self.stats.correct
        return {
            "fps": round(self.recent_fps, 3),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else 0.0,
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 3) if lat.size else 0.0,
            "outbox_depth": int(ob["depth"]), "outbox_bytes": int(ob["bytes"]), "outbox_dropped": int(ob["dropped"]),
            "outbox_errors": self.stats.outbox_errors + self.link.outbox_write_errors,
            "outbox_error": self.outbox_error, "uploads": self.link.uploads,
            "defect_rate": self.verdicts.defect_rate(), "budget_left": budget, "drift": float(self.drift.score),
            "extra": {
                "frames": self.stats.frames, "selected": self.stats.selected, "stored": self.stats.stored,
                "refused": self.stats.refused, "unspooled": self.stats.unspooled, "errors": self.stats.errors,
                "waiting_for_trainer": self.link.held, "model_version": self.slot.get().version, "boot": self.boot,
                "capture": {"frames": cap.frames, "dropped": cap.dropped, "reconnects": cap.reconnects,
                            "stalls": cap.stalls},
                "outbox": ob, "sampler": self.sampler.stats()["reasons"],
                "hint": self._hint_stats(), "drift_active": bool(self.drift.active),
                "accuracy": (sum(correct) / len(correct)) if correct else None,
                "updater": getattr(self.updater, "state", None), "predictions": self.verdicts.stats(),
                "calibration": self.slot.calibration.stats() if self.slot.calibration is not None else None,
            },
        }

    def _publish_stats(self) -> None:
        snap = self.last_snapshot = self.snapshot()
        try:
            payload = encode_report(Stats(device=self.device_id, **snap))
        except Exception:
            log.exception("could not encode stats")
            return
        self.link.publish(self.topics.stats(self.device_id), payload, qos=0)
        log.info("frames %d (%.1f fps), p50 %.2f ms, stored %d, uploaded %d, outbox %d (%d dropped), drift %.2f%s",
                 snap["extra"]["frames"], snap["fps"], snap["latency_p50_ms"], snap["extra"]["stored"],
                 snap["uploads"], snap["outbox_depth"], snap["outbox_dropped"], snap["drift"],
                 f", accuracy {snap['extra']['accuracy']:.3f}" if snap["extra"]["accuracy"] is not None else "")

    def _birth_payload(self) -> bytes:
        model = self.slot.get()
        birth = Birth(
            device=self.device_id, capabilities={"threads": self.config.model.threads, "batch": self.config.model.batch,
                          "uncertainty": self.config.uncertainty, "source": self._source_url,
                          "input": [model.size[0], model.size[1], model.channels], "pid": os.getpid()},
            model_version=model.version, config_digest=self._digest, boot=self.boot, software=_software(),
            labels=list(model.labels),
        )
        return encode_report(birth)

    def _announce_to_homeassistant(self) -> None:
        """Link callback on every connect: retained discovery configs (``homeassistant.enabled``)."""
        for topic, payload in discovery_messages(self.device_id, self.topics, self.config.homeassistant.prefix,
                                                 _software()):
            self.link.publish(topic, payload, qos=1, retain=True)

    def _route(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.selection_hint():
            self._take_hint(payload)
        elif self.updater is not None and self.updater.wants(topic):
            self.updater.on_message(topic, payload)

    def _hint_stats(self) -> dict | None:
        """The selection hint in force (labels, budget, uploads it took, until when) and the hints received."""
        h = self.sampler.hint
        if h is None and not self.stats.hints:
            return None
        return {"boost": dict(h.boost) if h else {}, "budget_per_minute": h.budget_per_minute if h else 0,
                "expires": h.expires if h else None, "uploads": self.sampler.hinted, "received": dict(self.stats.hints)}

    def _take_hint(self, payload: bytes) -> None:
        """The trainer's selection hint (edge/hints.py): applied within this device's caps; a malformed one is
        logged, counted (``rejected``) and changes nothing."""
        try:
            outcome = take_hint(self.sampler, payload)
        except ProtocolError as e:
            log.warning("selection hint rejected (%s): %s", e.reason, e.detail)
            outcome = "rejected"
        # a new dict, not an update in place: the stats thread copies it while paho's thread counts
        self.stats.hints = {**self.stats.hints, outcome: self.stats.hints.get(outcome, 0) + 1}
