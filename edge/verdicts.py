"""Verdicts: the device's per-frame result on ``dev/{id}/predictions``, as plain JSON a line can act on.

A PLC gateway, Node-RED or Home Assistant subscribes to the topic and rejects the part or raises the alarm;
the payload is ``protocol.reports.PredictionReport`` (label, confidence, ``ok``, top-k, model version, frame
index and time, ROI, latency). Which frames publish is the ``mode``:

* ``defects`` (default) - frames whose label is outside the configured ``ok_labels``;
* ``changes`` - frames whose label differs from the last one published;
* ``all`` - every frame; ``off`` - none.

A token bucket caps the rate (``max_per_s``, bursts of one second's worth), so a model gone wrong cannot
flood the broker with a defect per frame from every camera. QoS 0 by default: a verdict is live information,
and a stale one is worse than none to a machine acting on it, so a link that is down drops verdicts and
counts them instead of queueing them for later.

Never blocks the frame loop: paho's QoS 0 ``publish`` only appends the packet to its queue and wakes its own
network thread. Frames that publish nothing (most of them, in ``defects`` mode) cost a set lookup; a published
verdict costs one msgspec encode and that ``publish`` (``bench/edge_path.py`` measures both).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Callable, Literal, Protocol, Sequence

import msgspec

from protocol.reports import PredictionReport, TopK, encode_report

if TYPE_CHECKING:  # the config loader imports this module; keep onnxruntime out of it
    from edge.model import Prediction

__all__ = ["PredictionsConfig", "Verdicts", "VerdictLink"]


class PredictionsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mode: Literal["all", "defects", "changes", "off"] = "defects"
    ok_labels: list[str] = msgspec.field(default_factory=lambda: ["ok"])  # labels that are not a defect
    max_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = 10.0  # at most (token bucket); null = no limit
    qos: Literal[0, 1] = 0                   # 0: a verdict is live information; never queued while offline
    topk: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3  # classes listed in each verdict's top-k


class VerdictLink(Protocol):
    """What ``Verdicts`` needs from the device's MQTT link (``edge.link.Link``)."""

    @property
    def is_connected(self) -> bool: ...
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool: ...


class Verdicts:
    """Decides, per frame, whether to publish its verdict, and counts what happened to each."""

    def __init__(self, config: PredictionsConfig, device_id: str, topic: str, link: VerdictLink,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if config.max_per_s is not None and not config.max_per_s > 0:
            raise ValueError(f"predictions.max_per_s must be > 0 or null, got {config.max_per_s}")
        self.config = config
        self.device_id = device_id
        self.topic = topic
        self.link = link
        self._clock = clock
        self._mode = config.mode
        self._ok = frozenset(config.ok_labels)
        self._qos = int(config.qos)
        self._topk = max(1, int(config.topk))
        self._rate = config.max_per_s
        self._burst = max(1.0, float(config.max_per_s or 1.0))
        self._tokens = self._burst
        self._refilled = clock()
        self._last_label: str | None = None  # last label *published* (``changes``)
        self.frames = 0          # frames offered
        self.defects = 0         # of which outside ok_labels
        self.published = 0
        self.rate_limited = 0
        self.offline = 0         # dropped: link down
        self._interval = (0, 0)  # (frames, defects) at the last ``defect_rate()`` call

    def offer(self, pred: "Prediction", *, frame_index: int, frame_time: float, model_version: str,
              roi: Sequence[int] | None, latency_ms: float) -> bool:
        """Frame loop, once per classified frame: publish its verdict if the mode wants it. True if published."""
        self.frames += 1
        ok = pred.label in self._ok
        if not ok:
            self.defects += 1
        mode = self._mode
        if mode == "defects":
            if ok:
                return False
        elif mode == "changes":
            if pred.label == self._last_label:
                return False
        elif mode == "off":
            return False
        if not self.link.is_connected:
            self.offline += 1
            return False
        if self._rate is not None and not self._take():
            self.rate_limited += 1
            return False
        topk = pred.topk[: self._topk]  # probabilities rounded: float32 digits beyond 6 are noise to a reader
        report = PredictionReport(
            device=self.device_id, label=pred.label, confidence=round(topk[0][1], 6), ok=ok,
            topk=[TopK(label, round(p, 6)) for label, p in topk], model_version=model_version,
            frame_index=frame_index, frame_time=float(frame_time), roi=tuple(roi) if roi is not None else None,
            latency_ms=round(latency_ms, 3),
        )
        if self.link.publish(self.topic, encode_report(report, validate=False), qos=self._qos):
            self.published += 1
            self._last_label = pred.label
            return True
        self.offline += 1
        return False

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)  # type: ignore[operator]
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def defect_rate(self) -> float | None:
        """Fraction of the frames since the previous call that were defects (None if there were none)."""
        frames, defects = self.frames - self._interval[0], self.defects - self._interval[1]
        self._interval = (self.frames, self.defects)
        return defects / frames if frames else None

    def stats(self) -> dict[str, int | str]:
        return {"mode": self._mode, "frames": self.frames, "defects": self.defects, "published": self.published,
                "rate_limited": self.rate_limited, "offline": self.offline}
