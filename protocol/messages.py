"""Typed message schemas and the message codec on top of the envelope.

Why msgspec: one C pass decodes JSON straight into validated, typed structs
(types, ranges, enums, unknown fields) — ~10x faster than pydantic/json+checks,
so validation costs microseconds on the sample hot path.

Wire layout: the envelope's JSON header is a "wire" object holding the common
header fields (``type, schema, id, device, seq, ts, content_type``) plus the
typed payload under ``msg``; the body (image, model chunk) is raw bytes. The
payload is nested, not flattened, so a Manifest's own ``seq`` (rollout order,
signed) cannot collide with the transport ``seq`` (per-sender gap detection),
and the signed manifest never includes per-publish transport fields.

Decoding validates at the trust boundary: types/ranges via msgspec annotations,
finiteness and cross-field rules in ``__post_init__`` (which also runs when a
sender constructs a message, so most mistakes fail at the sender).
Unknown fields are rejected (``schema``); the extension point is ``Manifest.compat``.
An incompatible change bumps ``SCHEMA`` and older receivers say ``bad_version``.

Only samples, manifests and chunks travel in the envelope. State, birth, stats, model status and
predictions are plain-JSON reports (``protocol.reports``; their classes are re-exported here so that
imports keep working, but ``encode_message`` refuses them and says where they went).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import msgspec
from msgspec import Meta, Struct

from . import envelope
from .errors import ProtocolError
from .fields import Dim, Hex64, Id, Label, NonNegFloat, NonNegInt, PosInt, Prob, Text, check_finite
from .reports import MODEL_STATES, Birth, ModelStatus, Report, State, Stats

__all__ = [
    "SCHEMA", "Message", "Sample", "Birth", "State", "Stats", "ModelStatus", "Manifest", "Chunk",
    "Header", "Decoded", "MESSAGE_TYPES", "encode_message", "decode_message", "new_message_id",
    "UNCERTAINTY_KINDS", "MODEL_STATES", "P_SELECT_MIN",
]

SCHEMA = 1

UncertaintyKind = Literal["least_confidence", "margin", "entropy"]
UNCERTAINTY_KINDS: tuple[str, ...] = ("least_confidence", "margin", "entropy")

MIB = 1024 * 1024

#: The smallest ``p_select`` a sample may carry. The trainer weighs a sample by ``min(1 / p_select, w_max)``;
#: a probability of 1e-50 passes "> 0" but is 0 in float32 and infinite as a weight. An edge's own floor
#: (``sampler.p_min``, 0.01 by default) is ten thousand times above this one, so no honest sample meets it.
P_SELECT_MIN = 1e-6


class Message(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of all payload structs. Class vars describe the body each type carries."""

    TYPE: ClassVar[str] = ""
    CONTENT_TYPES: ClassVar[tuple[str, ...]] = ("none",)  # first is the default
    MAX_BODY: ClassVar[int] = 0  # bytes; 0 = this type carries no body

    _FLOATS: ClassVar[tuple[str, ...]] = ()  # float fields that must be finite

    def __post_init__(self) -> None:
        # JSON cannot carry NaN/inf (msgspec would write null), so a decoded float
        # is always finite; this catches them at the sender.
        check_finite(self, self._FLOATS)


class Sample(Message, frozen=True, kw_only=True):
    """One uncertain frame selected by an edge; body is the encoded image (or ROI crop).

    ``width``/``height`` are the source frame's size and ``roi`` is in those
    pixels. ``truth`` is set only by simulated sources (for evaluation).
    """

    TYPE: ClassVar[str] = "sample"
    CONTENT_TYPES: ClassVar[tuple[str, ...]] = ("image/jpeg", "image/png")
    MAX_BODY: ClassVar[int] = 2 * MIB
    _FLOATS: ClassVar[tuple[str, ...]] = ("uncertainty", "p_select")

    sample_id: Id
    model_version: Id
    topk: Annotated[list[tuple[Label, Prob]], Meta(min_length=1, max_length=1000)]
    uncertainty: NonNegFloat
    uncertainty_kind: UncertaintyKind
    p_select: Annotated[float, Meta(ge=P_SELECT_MIN, le=1)]
    reason: Text
    frame_index: NonNegInt
    width: Dim
    height: Dim
    roi: Optional[tuple[NonNegInt, NonNegInt, Dim, Dim]] = None
    truth: Optional[Label] = None
    source: Text = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        # p_select feeds w = 1/p_select in the trainer: below the floor or >1 would be a bug.
        if not (P_SELECT_MIN <= self.p_select <= 1.0):
            raise ValueError(f"p_select must be in [{P_SELECT_MIN:g}, 1], got {self.p_select}")
        for item in self.topk:
            if not (0.0 <= item[1] <= 1.0):  # also rejects NaN
                raise ValueError(f"topk probability for {item[0]!r} must be in [0, 1], got {item[1]}")
        if self.roi is not None:
            x, y, w, h = self.roi
            if x + w > self.width or y + h > self.height:
                raise ValueError(f"roi {self.roi} exceeds frame {self.width}x{self.height}")


class Manifest(Message, frozen=True, kw_only=True):
    """Signed description of the model a fleet (wave) should run.

    ``fleet`` is the fleet it is for: signed with the rest, so a manifest cannot be carried to another
    fleet's topic (devices reject it as ``wrong_fleet``). ``seq`` is the rollout order (devices reject
    seq <= highest accepted as ``replayed``); ``chunk_sha256`` is signed so every chunk is verified on
    arrival and a download can resume. ``key_id``/``signature`` are filled by ``signing``.
    """

    TYPE: ClassVar[str] = "manifest"
    _FLOATS: ClassVar[tuple[str, ...]] = ("expires",)

    fleet: Id
    model_id: Id
    version: Id
    seq: NonNegInt
    sha256: Hex64
    size: PosInt
    chunk_size: Annotated[int, Meta(ge=1, le=16 * MIB)]
    chunk_count: Annotated[int, Meta(ge=1, le=1_000_000)]
    chunk_sha256: list[Hex64]
    compat: dict[str, Any] = {}
    rollout_id: Id
    wave: NonNegInt = 0
    expires: NonNegFloat
    key_id: Annotated[str, Meta(max_length=64)] = ""
    signature: Annotated[str, Meta(max_length=256)] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        want = -(-self.size // self.chunk_size) if self.chunk_size > 0 else -1
        if self.chunk_count != want:
            raise ValueError(
                f"chunk_count {self.chunk_count} != ceil(size {self.size} / chunk_size {self.chunk_size})"
            )
        if len(self.chunk_sha256) != self.chunk_count:
            raise ValueError(f"chunk_sha256 has {len(self.chunk_sha256)} digests, chunk_count is {self.chunk_count}")


class Chunk(Message, frozen=True, kw_only=True):
    """One piece of a model; body is the chunk bytes, ``sha256`` their digest."""

    TYPE: ClassVar[str] = "chunk"
    CONTENT_TYPES: ClassVar[tuple[str, ...]] = ("application/octet-stream",)
    MAX_BODY: ClassVar[int] = 4 * MIB

    model_id: Id
    version: Id
    index: NonNegInt
    count: PosInt
    sha256: Hex64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.index >= self.count:
            raise ValueError(f"index {self.index} must be < count {self.count}")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Sample, Manifest, Chunk)
}


# -- wire objects ---------------------------------------------------------------
class _Wire(Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    schema: int
    id: Annotated[str, Meta(min_length=1, max_length=128)]  # opaque; no regex (~1 µs each)
    device: Id
    seq: NonNegInt
    ts: NonNegFloat
    content_type: Annotated[str, Meta(max_length=128)]


# One tagged wire struct per type, so msgspec dispatches on "type" and validates
# header + payload in a single pass.
_WIRE: dict[str, type[_Wire]] = {
    t: msgspec.defstruct(f"_{cls.__name__}Wire", [("msg", cls)], bases=(_Wire,), tag=t,
                         frozen=True, forbid_unknown_fields=True)
    for t, cls in MESSAGE_TYPES.items()
}
_wire_decoder = msgspec.json.Decoder(Union[tuple(_WIRE.values())])  # type: ignore[misc]
_encode = msgspec.json.Encoder().encode


class Header(Struct, frozen=True):
    """Transport fields common to every message."""

    type: str
    schema: int
    id: str
    device: str
    seq: int
    ts: float
    content_type: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded, validated message: typed ``msg``, transport ``header``, raw ``body``."""

    msg: Message
    header: Header
    body: bytes


def new_message_id() -> str:
    """Random 64-bit hex id: unique enough to deduplicate QoS-1 redeliveries."""
    return os.urandom(8).hex()


def encode_message(
    msg: Message,
    body: bytes | bytearray | memoryview = b"",
    *,
    device: str,
    seq: int,
    ts: float | None = None,
    msg_id: str | None = None,
    content_type: str | None = None,
    validate: bool = True,
) -> bytes:
    """Encode ``msg`` + ``body`` into an envelope.

    ``device`` is the sender id (edge device, "deploy", "trainer"), ``seq`` its
    per-sender counter. With ``validate`` (default) the header is decoded back
    through the receiver's checks, so a sender can never publish something
    receivers reject (costs a few µs).
    """
    cls = type(msg)
    if isinstance(msg, Report):
        raise ProtocolError("unknown_type", f"{cls.__name__} is a plain-JSON report since report schema 2: "
                                            "encode it with protocol.reports.encode_report")
    wire_cls = _WIRE.get(getattr(cls, "TYPE", ""))
    if wire_cls is None or not isinstance(msg, Message):
        raise ProtocolError("unknown_type", f"cannot encode {cls.__name__}")
    ct = cls.CONTENT_TYPES[0] if content_type is None else content_type
    if len(body) > cls.MAX_BODY:
        raise ProtocolError("too_large", f"{cls.TYPE} body is {len(body)} bytes > {cls.MAX_BODY}")
    wire = wire_cls(
        schema=SCHEMA, id=new_message_id() if msg_id is None else msg_id, device=device,
        seq=seq, ts=time.time() if ts is None else ts, content_type=ct, msg=msg,
    )
    try:
        header_json = _encode(wire)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("schema", f"{cls.TYPE} not encodable: {e}") from None
    data = envelope.frame(header_json, body)
    if validate:
        _check(header_json, body, len(body), None)
    return data


def decode_message(
    data: bytes | bytearray | memoryview,
    max_size: int = envelope.DEFAULT_MAX,
    *,
    max_header: int = envelope.DEFAULT_MAX_HEADER,
    max_body: dict[str, int] | None = None,
) -> Decoded:
    """Decode and validate a payload; any defect raises ProtocolError (never another error).

    ``max_body`` overrides per-type body limits (e.g. ``{"sample": 512 * 1024}``).
    """
    if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:1]) == b"{":
        raise ProtocolError("bad_magic", "a plain-JSON report, not an envelope: decode it with "
                                         "protocol.reports.decode_report")
    hdr, body = envelope.split(data, max_size, max_header)
    wire = _check(hdr, body, len(body), max_body)
    header = Header(
        type=wire.msg.TYPE, schema=wire.schema, id=wire.id, device=wire.device,
        seq=wire.seq, ts=wire.ts, content_type=wire.content_type,
    )
    return Decoded(msg=wire.msg, header=header, body=bytes(body))


def _check(hdr: bytes | memoryview, body: bytes | bytearray | memoryview, body_len: int,
           max_body: dict[str, int] | None) -> Any:
    """Parse + validate a wire header against its body; returns the wire struct."""
    try:
        wire = _wire_decoder.decode(hdr)
    except msgspec.ValidationError as e:
        raise _classify(hdr, e) from None
    except (msgspec.DecodeError, RecursionError, UnicodeError) as e:  # msgspec raises UnicodeDecodeError for bad UTF-8 in a tag
        raise ProtocolError("bad_header", f"header is not valid JSON: {e}") from None
    cls = type(wire.msg)
    if wire.schema != SCHEMA:
        raise ProtocolError("bad_version", f"{cls.TYPE} schema {wire.schema} unsupported (want {SCHEMA})")
    limit = cls.MAX_BODY if max_body is None else max_body.get(cls.TYPE, cls.MAX_BODY)
    if body_len > limit:
        raise ProtocolError("too_large", f"{cls.TYPE} body is {body_len} bytes > {limit}")
    if wire.content_type not in cls.CONTENT_TYPES:
        raise ProtocolError(
            "schema", f"content_type {wire.content_type!r} not allowed for {cls.TYPE} (want one of {cls.CONTENT_TYPES})"
        )
    if cls.MAX_BODY and body_len == 0:
        raise ProtocolError("schema", f"{cls.TYPE} needs a body")
    if cls is Chunk and hashlib.sha256(body).hexdigest() != wire.msg.sha256:
        raise ProtocolError("chunk_hash", f"chunk {wire.msg.index} body does not match its sha256")
    return wire


def _classify(hdr: bytes | memoryview, err: msgspec.ValidationError) -> ProtocolError:
    """Turn a msgspec ValidationError into the most specific reason (error path only)."""
    header = envelope.parse_header(hdr)  # raises bad_header if not a JSON object
    t = header.get("type")
    if not isinstance(t, str) or t not in MESSAGE_TYPES:  # missing, non-str or unknown
        return ProtocolError("unknown_type", f"message type {t!r} is not one of {sorted(MESSAGE_TYPES)}")
    schema = header.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema != SCHEMA:
        return ProtocolError("bad_version", f"{t} schema {schema} unsupported (want {SCHEMA})")
    return ProtocolError("schema", f"{t}: {err}")
