"""Property tests: decoding arbitrary or corrupted input yields a valid message or ProtocolError, nothing else."""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import envelope
from protocol.errors import ProtocolError
from protocol.messages import Message, decode_message, encode_message
from protocol.model_meta import ModelMeta
from protocol.topics import Topics

from _proto_helpers import examples

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [encode_message(m, b, device="cam-1", seq=i, ts=1.7e9, msg_id=f"m{i}") for i, (m, b) in enumerate(examples())]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def check_decode(data: bytes) -> None:
    """The contract: a valid, re-encodable message, or ProtocolError."""
    try:
        d = decode_message(data)
    except ProtocolError as e:
        assert e.reason and isinstance(e.detail, str)
        return
    assert isinstance(d.msg, Message) and isinstance(d.body, bytes)
    # Whatever a receiver accepts, a sender could have produced: re-encoding with full validation works
    again = encode_message(d.msg, d.body, device=d.header.device, seq=d.header.seq, ts=d.header.ts,
                           msg_id=d.header.id, content_type=d.header.content_type)
    assert decode_message(again) == d


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    check_decode(data)
    try:
        envelope.decode(data)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=2048), st.binary(max_size=64))
def test_arbitrary_header_in_valid_frame(header, body):
    check_decode(b"ELP\x01" + struct.pack(">I", len(header)) + header + body)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from(b'"{}[],:0-9.eE\\\x00\xff '))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_envelopes(data):
    check_decode(data)


KNOWN_KEYS = ["type", "schema", "id", "device", "seq", "ts", "content_type", "msg"]
MSG_KEYS = sorted({k for m, _ in examples() for k in m.__struct_fields__})


@st.composite
def header_edits(draw):
    """Structured JSON edits: set/delete known or random keys at top level or in msg, re-frame."""
    data = draw(st.sampled_from(VALID))
    hdr, body = envelope.decode(data)
    for _ in range(draw(st.integers(1, 3))):
        target = hdr
        keys = KNOWN_KEYS
        if isinstance(hdr.get("msg"), dict) and draw(st.booleans()):
            target, keys = hdr["msg"], MSG_KEYS
        key = draw(st.sampled_from(keys) | st.text(max_size=6))
        if draw(st.integers(0, 3)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    if draw(st.booleans()):
        body = draw(st.binary(max_size=64))
    return envelope.encode(hdr, body)


@FUZZ
@given(header_edits())
def test_header_json_edits(data):
    check_decode(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_topic_parse_total(topic):
    t = Topics()
    try:
        p = t.parse(topic)
    except ProtocolError as e:
        assert e.reason == "bad_topic"
        return
    assert p.kind


ids = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(ids, ids, st.integers(0, 10**9 - 1))
def test_topic_round_trip(a, b, i):
    t = Topics()
    assert t.parse(t.samples(a)).device == a
    assert t.parse(t.manifest(a)).fleet == a
    p = t.parse(t.chunk(a, b, i))
    assert (p.model, p.version, p.index) == (a, b, i)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(ModelMeta(version="v", labels=["a"], width=1, height=1).to_props())),
                       st.text(max_size=30)))
def test_model_meta_from_props_total(overrides):
    props = ModelMeta(version="v", labels=["a"], width=1, height=1).to_props()
    props.update(overrides)
    try:
        ModelMeta.from_props(props)
    except ProtocolError as e:
        assert e.reason == "bad_metadata"
