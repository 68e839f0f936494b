"""The trainer's promotion notice (protocol/promotion.py) and its topics: round trip, and every bad input a
``ProtocolError`` with a reason."""
from __future__ import annotations

import hashlib

import msgspec
import pytest

from protocol.chunks import split_chunks
from protocol.errors import ProtocolError
from protocol.promotion import MAX_NOTICE_BYTES, Promotion, decode_promotion, encode_promotion
from protocol.topics import ParsedTopic, Topics

DATA = bytes(range(256)) * 40  # 10 KiB


def _notice(**kw: object) -> Promotion:
    pieces = split_chunks(DATA, 4096)
    base = dict(model_id="parts", version="v0007", seq=7, parent="v0006", sha256=hashlib.sha256(DATA).hexdigest(),
                size=len(DATA), chunk_size=4096, chunk_sha256=[h for _, _, h in pieces], labels=["ok", "dent"],
                metrics={"accuracy": 0.91}, time=1.7e9)
    return Promotion(**{**base, **kw})  # type: ignore[arg-type]


def test_round_trip_and_readable_json() -> None:
    n = _notice()
    raw = encode_promotion(n)
    assert decode_promotion(raw) == n and n.chunk_count == 3 and not n.bootstrap
    doc = msgspec.json.decode(raw)  # plain JSON for any tool
    assert doc["version"] == "v0007" and doc["size"] == len(DATA) and doc["schema"] == 1
    assert _notice(parent=None).bootstrap
    assert decode_promotion(raw[:-1] + b', "from_a_newer_trainer": 1}').version == "v0007"  # unknown keys ignored


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(chunk_sha256=d["chunk_sha256"][:2]), "schema"),       # digests do not cover the size
    (lambda d: d.update(sha256="XYZ"), "schema"),
    (lambda d: d.update(version="../v1"), "schema"),
    (lambda d: d.update(size=0), "schema"),
    (lambda d: d.pop("sha256"), "schema"),
    (lambda d: d.update(seq="7"), "schema"),
    (lambda d: d.update(schema=2), "bad_version"),
])
def test_bad_notices_are_protocol_errors(mutate, reason) -> None:
    d = msgspec.to_builtins(_notice())
    mutate(d)
    with pytest.raises(ProtocolError) as e:
        decode_promotion(msgspec.json.encode(d))
    assert e.value.reason == reason


@pytest.mark.parametrize("payload, reason", [(b"{not json", "schema"), (b"[]", "schema"), (b"", "schema"),
                                             (b" " * (MAX_NOTICE_BYTES + 1), "too_large")])
def test_garbage_is_refused_before_use(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_promotion(payload)
    assert e.value.reason == reason


def test_trainer_topics_build_and_parse() -> None:
    t = Topics()
    assert t.trainer_promoted() == "edgeloop/v1/trainer/promoted"
    assert t.trainer_model("v0007") == "edgeloop/v1/trainer/models/v0007"
    assert t.trainer_chunk("v0007", 3) == "edgeloop/v1/trainer/models/v0007/chunk/3"
    assert t.trainer_chunks_wildcard("v0007") == "edgeloop/v1/trainer/models/v0007/chunk/+"
    assert t.all_trainer_models() == "edgeloop/v1/trainer/models/+"
    assert t.parse(t.trainer_promoted()) == ParsedTopic("trainer_promoted")
    assert t.parse(t.trainer_model("v0007")) == ParsedTopic("trainer_model", version="v0007")
    assert t.parse(t.trainer_chunk("v0007", 3)) == ParsedTopic("trainer_chunk", version="v0007", index=3)
    for bad in ("edgeloop/v1/trainer/models/v0007/chunk/03", "edgeloop/v1/trainer/models/a+b"):
        with pytest.raises(ProtocolError):
            t.parse(bad)
    with pytest.raises(ProtocolError):
        t.trainer_model("a/b")
