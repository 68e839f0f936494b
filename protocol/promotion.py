"""The trainer's notice of a promoted version: plain JSON that the rollout controller (and anyone else) reads.

Why a notice and the bytes travel over the broker: the trainer and the rollout controller may run on different
hosts, and the controller must never need the trainer's disk. The trainer publishes, retained:

* ``trainer/promoted``: the notice of the newest promoted version (what a dashboard or script reads);
* ``trainer/models/{version}``: the same notice per version it keeps on the broker (the newest few and the
  bootstrap version, which is what cameras are provisioned with: the first rollback target);
* ``trainer/models/{version}/chunk/{i}``: the ONNX bytes in ``Chunk`` envelopes.

The notice carries the sha256 and size of the whole file and the digest of every chunk, so the controller
verifies each chunk as it lands and the assembled file before it registers it; a notice is a promise the
bytes must keep. ``seq`` is the registry's ordinal: "newest" means highest ``seq``, never the latest to
arrive (retained messages come back in any order after a reconnect).
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from .errors import ProtocolError
from .topics import ID_PATTERN

__all__ = ["Promotion", "encode_promotion", "decode_promotion", "PROMOTION_SCHEMA", "MAX_NOTICE_BYTES",
           "MAX_CHUNKS"]

PROMOTION_SCHEMA = 1
#: A notice is a few KiB (labels, metrics, one digest per chunk); anything bigger is refused unread.
MAX_NOTICE_BYTES = 1024 * 1024
#: Enough chunks for a 16 GiB model at the default chunk size; bounds the digest list.
MAX_CHUNKS = 65536

_Id = Annotated[str, Meta(pattern=ID_PATTERN)]
_Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
_Pos = Annotated[int, Meta(ge=1, le=2**63 - 1)]


class Promotion(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """One promoted version. Unknown keys are ignored (newer trainers may add some); known ones are checked."""

    schema: int = PROMOTION_SCHEMA
    model_id: _Id
    version: _Id
    seq: _Pos                                  # the trainer registry's ordinal (v0007 -> 7)
    parent: _Id | None = None                  # None: the bootstrap version (what cameras are provisioned with)
    sha256: _Hex64
    size: _Pos
    chunk_size: _Pos
    chunk_sha256: list[_Hex64]
    labels: list[str] = msgspec.field(default_factory=list)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    time: float = 0.0                          # when the trainer promoted it (unix seconds)
    path: str | None = None                    # where the trainer keeps it (informative; never read by deploy)

    def __post_init__(self) -> None:
        count = -(-self.size // self.chunk_size)
        if len(self.chunk_sha256) != count:
            raise ValueError(f"{len(self.chunk_sha256)} chunk digests for {self.size} bytes in chunks of "
                             f"{self.chunk_size} (want {count})")
        if count > MAX_CHUNKS:
            raise ValueError(f"{count} chunks is more than {MAX_CHUNKS}")
        if not math.isfinite(self.time):
            raise ValueError("time must be finite")

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sha256)

    @property
    def bootstrap(self) -> bool:
        return self.parent is None


def encode_promotion(p: Promotion) -> bytes:
    return msgspec.json.encode(p)


def decode_promotion(payload: bytes) -> Promotion:
    """Parse and check a notice; any problem is a ``ProtocolError`` (``too_large`` or ``schema``)."""
    if len(payload) > MAX_NOTICE_BYTES:
        raise ProtocolError("too_large", f"promotion notice of {len(payload)} bytes > {MAX_NOTICE_BYTES}")
    try:
        p = msgspec.json.decode(payload, type=Promotion)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as e:
        raise ProtocolError("schema", f"promotion notice: {e}") from None
    if p.schema != PROMOTION_SCHEMA:
        raise ProtocolError("bad_version", f"promotion notice schema {p.schema}; this edgeloop reads "
                                           f"{PROMOTION_SCHEMA}")
    return p
