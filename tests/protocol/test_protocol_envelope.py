import struct

import pytest

from protocol import envelope
from protocol.errors import ProtocolError


def reason(fn, *a, **kw) -> str:
    with pytest.raises(ProtocolError) as e:
        fn(*a, **kw)
    return e.value.reason


def test_round_trip():
    hdr = {"type": "x", "n": 1, "s": "ü", "l": [1, 2.5]}
    body = bytes(range(256))
    data = envelope.encode(hdr, body)
    assert data[:4] == b"ELP\x01"
    assert envelope.decode(data) == (hdr, body)
    assert envelope.decode(bytearray(data)) == (hdr, body)
    assert envelope.decode(memoryview(data)) == (hdr, body)
    assert envelope.encode(hdr, memoryview(body)) == data


def test_empty_body():
    assert envelope.decode(envelope.encode({}, b"")) == ({}, b"")


def test_too_large_total_checked_first():
    data = envelope.encode({"a": 1}, b"x" * 100)
    assert reason(envelope.decode, data, max_size=50) == "too_large"
    assert envelope.decode(data, max_size=len(data))[1] == b"x" * 100


def test_header_length_limit_before_parsing():
    # claims a 1 MiB header but the bytes are not even JSON: size check must win
    data = b"ELP\x01" + struct.pack(">I", 1 << 20) + b"\xff" * 10
    assert reason(envelope.decode, data) == "too_large"
    data = envelope.encode({"k": "v" * 100})
    assert reason(envelope.decode, data, max_header=50) == "too_large"
    assert reason(envelope.encode, {"k": "v" * 100}, max_header=50) == "too_large"


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 7, 8, 12])
def test_truncated(cut):
    data = envelope.encode({"type": "sample", "x": 1}, b"body")
    assert reason(envelope.decode, data[:cut]) in ("truncated", "bad_header")


def test_truncated_header():
    data = envelope.encode({"type": "sample"}, b"")
    assert reason(envelope.decode, data[:-1]) == "truncated"


def test_bad_magic_and_version():
    data = envelope.encode({"a": 1}, b"")
    assert reason(envelope.decode, b"XLP" + data[3:]) == "bad_magic"
    assert reason(envelope.decode, b"{}") == "bad_magic"
    assert reason(envelope.decode, b"ELP\x02" + data[4:]) == "bad_version"
    assert reason(envelope.decode, b"ELP\x00" + data[4:]) == "bad_version"


@pytest.mark.parametrize("hdr", [b"[]", b"1", b'"s"', b"{", b"\xff\xfe", b"{'a':1}", b"", b"[" * 5000])
def test_bad_header(hdr):
    data = b"ELP\x01" + struct.pack(">I", len(hdr)) + hdr
    assert reason(envelope.decode, data) == "bad_header"


def test_not_bytes():
    assert reason(envelope.decode, "ELP") == "bad_header"


def test_error_str():
    e = ProtocolError("too_large", "payload is 9 bytes > 8")
    assert str(e) == "too_large: payload is 9 bytes > 8"
    assert isinstance(e, ValueError) and e.reason == "too_large" and e.detail.startswith("payload")
