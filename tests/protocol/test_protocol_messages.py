import json
import struct

import pytest

from protocol import envelope
from protocol.errors import ProtocolError
from protocol.messages import MESSAGE_TYPES, Chunk, Header, decode_message, encode_message
from protocol.reports import State

from _proto_helpers import CHUNK, IMAGE, examples, manifest, sample


def reason(fn, *a, **kw) -> str:
    with pytest.raises(ProtocolError) as e:
        fn(*a, **kw)
    return e.value.reason


def rewrite(data: bytes, edit) -> bytes:
    """Decode the JSON header, let ``edit`` change the dict, re-frame with the same body."""
    hdr, body = envelope.decode(data)
    edit(hdr)
    return envelope.encode(hdr, body)


@pytest.mark.parametrize("msg, body", examples(), ids=lambda x: getattr(x, "TYPE", ""))
def test_round_trip(msg, body):
    data = encode_message(msg, body, device="cam-1", seq=5, ts=1700000000.5, msg_id="m1")
    d = decode_message(data)
    assert d.msg == msg and type(d.msg) is type(msg)
    assert d.body == body
    assert d.header == Header(type=msg.TYPE, schema=1, id="m1", device="cam-1", seq=5,
                              ts=1700000000.5, content_type=type(msg).CONTENT_TYPES[0])


def test_all_types_covered():
    assert {type(m).TYPE for m, _ in examples()} == set(MESSAGE_TYPES)


def test_defaults_fill_header():
    d = decode_message(encode_message(manifest(), device="deploy", seq=0))
    assert d.header.id and d.header.ts > 1.6e9 and d.header.device == "deploy"


def test_reports_are_not_envelopes():
    """State, birth, stats, model status and predictions are plain JSON now: the envelope codec says so."""
    with pytest.raises(ProtocolError, match="encode_report") as e:
        encode_message(State(device="d", state="online", boot=1), device="d", seq=1)
    assert e.value.reason == "unknown_type"
    assert reason(decode_message, b'{"type": "state"}') == "bad_magic"


def test_png_sample_and_optional_fields():
    s = sample(roi=None, truth=None)
    d = decode_message(encode_message(s, IMAGE, device="d", seq=1, content_type="image/png"))
    assert d.header.content_type == "image/png" and d.msg.roi is None and d.msg.truth is None


# -- schema violations --------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("p_select", 0.0), ("p_select", 1.5), ("p_select", -0.1), ("p_select", "0.5"), ("p_select", None),
        ("uncertainty_kind", "vibes"), ("uncertainty", -1.0), ("frame_index", -1), ("width", 0),
        ("topk", []), ("topk", [["a", 1.5]]), ("topk", [["a"]]), ("topk", [[1, 0.5]]),
        ("roi", [0, 0, 0, 10]), ("roi", [600, 0, 100, 10]), ("roi", [1, 2, 3]),
        ("sample_id", "a/b"), ("sample_id", ""), ("model_version", "v#1"), ("truth", ""),
        ("frame_index", 2**64), ("frame_index", 1.5), ("frame_index", True),
    ],
)
def test_sample_field_violations_name_the_field(field, value):
    data = encode_message(sample(), IMAGE, device="d", seq=1)
    bad = rewrite(data, lambda h: h["msg"].__setitem__(field, value))
    with pytest.raises(ProtocolError) as e:
        decode_message(bad)
    assert e.value.reason == "schema"
    assert field in str(e.value)


def test_missing_and_unknown_fields():
    data = encode_message(sample(), IMAGE, device="d", seq=1)
    assert reason(decode_message, rewrite(data, lambda h: h["msg"].pop("p_select"))) == "schema"
    assert reason(decode_message, rewrite(data, lambda h: h["msg"].update(extra=1))) == "schema"
    assert reason(decode_message, rewrite(data, lambda h: h.update(extra=1))) == "schema"
    assert reason(decode_message, rewrite(data, lambda h: h.pop("msg"))) == "schema"
    assert reason(decode_message, rewrite(data, lambda h: h.pop("seq"))) == "schema"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda h: h.update(type="telemetry"), "unknown_type"),
        (lambda h: h.pop("type"), "unknown_type"),
        (lambda h: h.update(type=["sample"]), "unknown_type"),
        (lambda h: h.update(type=None), "unknown_type"),
        (lambda h: h.update(schema=2), "bad_version"),
        (lambda h: h.update(schema=2, msg={"new": "layout"}), "bad_version"),
        (lambda h: h.update(seq=-1), "schema"),
        (lambda h: h.update(seq="1"), "schema"),
        (lambda h: h.update(ts=-5), "schema"),
        (lambda h: h.update(device="a/b"), "schema"),
        (lambda h: h.update(id=""), "schema"),
        (lambda h: h.update(content_type="text/html"), "schema"),
        (lambda h: h.update(msg=[]), "schema"),
    ],
)
def test_header_violations(edit, expected):
    data = encode_message(sample(), IMAGE, device="d", seq=1)
    assert reason(decode_message, rewrite(data, edit)) == expected


def test_type_confusion_is_schema_error():
    data = encode_message(manifest(), device="d", seq=1)
    assert reason(decode_message, rewrite(data, lambda h: h.update(type="sample"))) == "schema"


@pytest.mark.parametrize(
    "msg, body, edit",
    [
        (manifest(), b"", lambda m: m.update(chunk_count=4)),
        (manifest(), b"", lambda m: m.update(chunk_sha256=m["chunk_sha256"][:2])),
        (manifest(), b"", lambda m: m.update(sha256="XYZ")),
        (manifest(), b"", lambda m: m.update(seq=-3)),
        (examples()[2][0], CHUNK, lambda m: m.update(index=3)),
        (examples()[2][0], CHUNK, lambda m: m.update(count=0)),
    ],
)
def test_payload_violations(msg, body, edit):
    data = encode_message(msg, body, device="d", seq=1)
    assert reason(decode_message, rewrite(data, lambda h: edit(h["msg"]))) == "schema"


def test_construction_checks_fail_fast():
    with pytest.raises(ValueError, match="p_select"):
        sample(p_select=0.0)
    with pytest.raises(ValueError, match="finite"):
        sample(uncertainty=float("nan"))
    with pytest.raises(ValueError, match="index"):
        Chunk(model_id="m", version="v", index=3, count=3, sha256="0" * 64)
    with pytest.raises(ValueError, match="chunk_count"):
        manifest(chunk_count=2)


def test_encode_validates_by_default():
    bad = sample(uncertainty_kind="vibes")  # Literal not checked at construction...
    with pytest.raises(ProtocolError) as e:
        encode_message(bad, IMAGE, device="d", seq=1)  # ...but the sender's encode catches it
    assert e.value.reason == "schema" and "uncertainty_kind" in str(e.value)
    assert reason(encode_message, sample(), IMAGE, device="bad/dev", seq=1) == "schema"
    assert reason(encode_message, sample(), IMAGE, device="d", seq=-1) == "schema"
    assert reason(encode_message, "not a message", device="d", seq=1) == "unknown_type"


# -- bodies -------------------------------------------------------------------
def test_body_limits():
    big = b"\0" * (2 * 1024 * 1024 + 1)
    assert reason(encode_message, sample(), big, device="d", seq=1) == "too_large"
    data = encode_message(sample(), IMAGE, device="d", seq=1)
    assert reason(decode_message, data, max_body={"sample": 100}) == "too_large"
    assert decode_message(data, max_body={"chunk": 1}).body == IMAGE
    # a bodiless type must not smuggle a body
    st = encode_message(manifest(), device="d", seq=1)
    hdr, _ = envelope.split(st)
    smuggled = envelope.frame(bytes(hdr), b"payload")
    assert reason(decode_message, smuggled) == "too_large"
    assert reason(decode_message, data, max_size=100) == "too_large"


def test_sample_needs_image():
    data = encode_message(sample(), IMAGE, device="d", seq=1)
    hdr, _ = envelope.split(data)
    assert reason(decode_message, envelope.frame(bytes(hdr), b"")) == "schema"


def test_chunk_body_hash_checked():
    msg, body = examples()[2]
    data = encode_message(msg, body, device="deploy", seq=1)
    hdr, _ = envelope.split(data)
    assert reason(decode_message, envelope.frame(bytes(hdr), body[:-1] + b"!")) == "chunk_hash"


def test_manifest_seq_does_not_collide_with_transport_seq():
    m = manifest(seq=42)
    d = decode_message(encode_message(m, device="deploy", seq=3))
    assert d.msg.seq == 42 and d.header.seq == 3


def test_header_is_plain_json():
    data = encode_message(manifest(), device="d", seq=9)
    (hlen,) = struct.unpack(">I", data[4:8])
    doc = json.loads(data[8:8 + hlen])
    assert doc["type"] == "manifest" and doc["msg"]["version"] == "v4" and doc["msg"]["seq"] == 7
