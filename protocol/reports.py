"""Plain-JSON reports: what devices (and the trainer) publish for anyone to read.

State, birth, stats, model status and predictions are UTF-8 JSON objects (DESIGN.md "Topic encodings"), so
Home Assistant, Node-RED, Telegraf or a PLC gateway read them with nothing but a JSON parser; samples,
manifests and model chunks keep the binary envelope (``protocol.messages``), where raw image and model bytes
pay for it. Each report is one flat object: the common fields ``type`` (what it is), ``schema``
(``REPORT_SCHEMA``), ``device`` (the sender: a device id, or ``trainer``) and ``ts`` (Unix seconds when it
was built), then the type's own fields. README "Topics and their JSON" documents each with an example.

Validation is the envelope's: msgspec Structs with ranges, patterns and forbidden unknown fields, checked
in one C pass when decoding. Every defect raises ``ProtocolError`` with a short reason: ``too_large``,
``bad_json`` (not a UTF-8 JSON object), ``bad_version`` (another report schema, or a binary envelope from a
sender older than schema 2), ``unknown_type``, ``schema`` (fields missing, mistyped or out of range) and
``wrong_type`` (a valid report of another kind than its topic carries).

Schema history: 1 = these messages inside the binary envelope (edgeloop before plain JSON); 2 = plain JSON.
"""

from __future__ import annotations

import time
import math
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import msgspec
from msgspec import Meta, Struct

from .errors import ProtocolError
from .fields import Id, Label, NonNegFloat, NonNegInt, Prob, Text, check_finite

__all__ = [
    "REPORT_SCHEMA", "MAX_REPORT_BYTES", "Report", "State", "Birth", "Stats", "ModelStatus", "TopK",
    "PredictionReport", "SelectionHint", "REPORT_TYPES", "KIND_TYPES", "MODEL_STATES", "encode_report", "decode_report",
]

REPORT_SCHEMA = 2
#: Largest report a receiver parses by default (a birth with a thousand long labels fits).
MAX_REPORT_BYTES = 256 * 1024

ModelState = Literal["downloading", "verified", "shadow", "active", "failed", "rolled_back", "rejected"]
MODEL_STATES: tuple[str, ...] = (
    "downloading", "verified", "shadow", "active", "failed", "rolled_back", "rejected",
)


class Report(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of every report: the common fields. ``ts`` defaults to now."""

    TYPE: ClassVar[str] = ""
    _FLOATS: ClassVar[tuple[str, ...]] = ()  # float fields that must be finite

    schema: int = REPORT_SCHEMA
    device: Id
    ts: NonNegFloat = msgspec.field(default_factory=time.time)

    def __post_init__(self) -> None:
        check_finite(self, ("ts",) + self._FLOATS)


class State(Report, frozen=True, kw_only=True, tag="state"):
    """Retained presence of a device (also its MQTT Will) or of the trainer.

    ``boot`` orders restarts like Sparkplug's bdSeq, so a late Will of an earlier life cannot mark a live
    device offline. ``degraded`` means running but impaired, with the reason (the trainer uses it).
    """

    TYPE: ClassVar[str] = "state"

    state: Literal["online", "offline", "degraded"]
    boot: NonNegInt
    reason: Optional[Text] = None


class Birth(Report, frozen=True, kw_only=True, tag="birth"):
    """Retained device announcement: what it can do and the model it runs (re-sent when the model changes)."""

    TYPE: ClassVar[str] = "birth"

    capabilities: dict[str, Any]
    model_version: Optional[Id] = None
    config_digest: Annotated[str, Meta(max_length=128)]
    boot: NonNegInt
    software: Text
    labels: list[Label] = []


class Stats(Report, frozen=True, kw_only=True, tag="stats"):
    """Periodic device health. ``extra`` is the free-form extension (frames, capture, sampler, updater ...).

    ``fps`` is over the last stats interval. ``outbox_error`` is the error that keeps the device from
    spooling samples right now (a full disk), None while spooling works; ``outbox_errors`` counts failed
    writes since start. ``defect_rate`` is the fraction of the interval's frames classified outside the
    device's ``ok`` labels (None before the first frame).
    """

    TYPE: ClassVar[str] = "stats"
    _FLOATS: ClassVar[tuple[str, ...]] = ("fps", "latency_p50_ms", "latency_p95_ms", "drift")

    fps: NonNegFloat
    latency_p50_ms: NonNegFloat
    latency_p95_ms: NonNegFloat
    outbox_depth: NonNegInt
    outbox_bytes: NonNegInt
    outbox_dropped: NonNegInt
    outbox_errors: NonNegInt = 0
    outbox_error: Optional[Text] = None
    uploads: NonNegInt
    defect_rate: Optional[Prob] = None
    budget_left: dict[str, float] = {}
    drift: float = 0.0
    extra: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        for k, v in self.budget_left.items():
            if not math.isfinite(v):
                raise ValueError(f"budget_left[{k!r}] must be finite, got {v}")


class ModelStatus(Report, frozen=True, kw_only=True, tag="model_status"):
    """A device's model lifecycle event for the rollout controller (retained: it is the device's current
    model state). ``metrics`` carries shadow-run and health figures and ``active``, the version it runs.

    ``rollout_id`` and ``seq`` name the manifest the status answers (None when the manifest could not be
    read at all): the rollout gate counts only statuses about its current rollout and manifest sequence,
    so a status left over from an earlier wave or rollout cannot advance a wave.
    """

    TYPE: ClassVar[str] = "model_status"

    model_id: Id
    version: Id
    state: ModelState
    reason: Optional[Text] = None
    rollout_id: Optional[Id] = None
    seq: Optional[NonNegInt] = None
    metrics: dict[str, Any] = {}


class TopK(Struct, frozen=True, forbid_unknown_fields=True):
    """One of a prediction's most probable classes."""

    label: Label
    probability: Prob


class PredictionReport(Report, frozen=True, kw_only=True, tag="prediction"):
    """A device's verdict on one frame, on ``dev/{id}/predictions``.

    ``ok`` says whether ``label`` is one of the device's configured ``ok`` labels (what a line acts on:
    false = reject the part / raise the alarm). ``frame_time`` is the source's timestamp of the frame
    (capture wall-clock time for cameras and streams, stream time for files and simulators); ``ts`` is when
    the verdict was published. ``roi`` is the (x, y, w, h) crop the model saw, in frame pixels.
    """

    TYPE: ClassVar[str] = "prediction"
    _FLOATS: ClassVar[tuple[str, ...]] = ("confidence", "frame_time", "latency_ms")

    label: Label
    confidence: Prob
    ok: bool
    topk: Annotated[list[TopK], Meta(max_length=1000)]
    model_version: Id
    frame_index: NonNegInt
    frame_time: float
    roi: Optional[tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt]] = None
    latency_ms: NonNegFloat


class SelectionHint(Report, frozen=True, kw_only=True, tag="selection_hint"):
    """The trainer's request for more frames of the kinds a class the fleet misses hides in, retained on
    ``trainer/selection_hint`` (``device`` is ``trainer``).

    ``boost`` maps a label the cameras *predict* to a multiplier on such a frame's selection probability;
    the extra uploads come from ``budget_per_minute`` of their own per camera, until ``expires`` (Unix
    seconds). An empty ``boost`` withdraws the hint. A camera applies at most its own caps
    (``hints.max_boost``, ``hints.max_budget_per_minute``) and the probability it used travels with every
    sample as always, so the trainer's weights stay exact. ``reason`` says which labels asked for it.
    """

    TYPE: ClassVar[str] = "selection_hint"
    _FLOATS: ClassVar[tuple[str, ...]] = ("expires",)

    boost: Annotated[dict[Label, Annotated[float, Meta(ge=1.0, le=1000.0)]], Meta(max_length=64)] = {}
    budget_per_minute: Annotated[int, Meta(ge=0, le=100_000)] = 0
    expires: NonNegFloat
    reason: Text = ""


REPORT_TYPES: dict[str, type[Report]] = {
    cls.TYPE: cls for cls in (State, Birth, Stats, ModelStatus, PredictionReport, SelectionHint)
}
#: Which report each topic kind (``protocol.topics.ParsedTopic.kind``) carries.
KIND_TYPES: dict[str, type[Report]] = {
    "state": State, "trainer_state": State, "birth": Birth, "stats": Stats, "model_status": ModelStatus,
    "predictions": PredictionReport, "selection_hint": SelectionHint,
}

_decoder = msgspec.json.Decoder(Union[tuple(REPORT_TYPES.values())])  # type: ignore[misc]
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder().encode


def encode_report(msg: Report, *, validate: bool = True) -> bytes:
    """The UTF-8 JSON bytes of ``msg``.

    With ``validate`` (default) the bytes are decoded back through the receivers' checks, so a sender can
    never publish what receivers reject (a few µs; the per-frame verdict path skips it, its fields come
    from the model).
    """
    if not isinstance(msg, Report):
        raise ProtocolError("unknown_type", f"{type(msg).__name__} is not a plain-JSON report")
    try:
        data = _encode(msg)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("schema", f"{msg.TYPE} not encodable: {e}") from None
    if validate:
        decode_report(data)
    return data


def decode_report(payload: bytes | bytearray | memoryview, kind: str | None = None, *,
                  max_size: int = MAX_REPORT_BYTES) -> Report:
    """Decode and validate one report; any defect raises ProtocolError (never another error).

    ``kind`` is the topic's kind (``Topics.parse(topic).kind``: ``state``, ``birth``, ``stats``,
    ``model_status``, ``predictions``, ``trainer_state``); a valid report of another type is ``wrong_type``.
    The caller compares ``report.device`` with the topic's device (the topic is authoritative).
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_json", f"payload must be bytes, got {type(payload).__name__}")
    n = len(payload)
    if n > max_size:
        raise ProtocolError("too_large", f"report is {n} bytes > {max_size}")
    if bytes(payload[:3]) == b"ELP":
        raise ProtocolError("bad_version", "a binary envelope where plain JSON belongs: the sender predates "
                                           f"report schema {REPORT_SCHEMA}; upgrade it")
    try:
        msg = _decoder.decode(payload)
    except msgspec.ValidationError as e:
        raise _classify(payload, e) from None
    except (msgspec.DecodeError, RecursionError, UnicodeError) as e:
        raise ProtocolError("bad_json", f"not UTF-8 JSON: {e}") from None
    if msg.schema != REPORT_SCHEMA:
        raise ProtocolError("bad_version", f"{msg.TYPE} schema {msg.schema} unsupported (want {REPORT_SCHEMA})")
    if kind is not None:
        want = KIND_TYPES.get(kind)
        if want is None:
            raise ProtocolError("bad_topic", f"{kind!r} topics carry no plain-JSON report")
        if type(msg) is not want:
            raise ProtocolError("wrong_type", f"a {msg.TYPE} report on a {kind} topic (want {want.TYPE})")
    return msg


def _classify(payload: bytes | bytearray | memoryview, err: msgspec.ValidationError) -> ProtocolError:
    """The most specific reason for a report msgspec refused (error path only)."""
    try:
        obj = _dict_decoder.decode(payload)
    except msgspec.ValidationError:
        return ProtocolError("bad_json", "not a JSON object")
    except (msgspec.DecodeError, RecursionError, UnicodeError) as e:
        return ProtocolError("bad_json", f"not UTF-8 JSON: {e}")
    t = obj.get("type")
    if not isinstance(t, str) or t not in REPORT_TYPES:
        return ProtocolError("unknown_type", f"report type {t!r} is not one of {sorted(REPORT_TYPES)}")
    schema = obj.get("schema", REPORT_SCHEMA)
    if isinstance(schema, int) and not isinstance(schema, bool) and schema != REPORT_SCHEMA:
        return ProtocolError("bad_version", f"{t} schema {schema} unsupported (want {REPORT_SCHEMA})")
    return ProtocolError("schema", f"{t}: {err}")
