import hashlib
import os

import pytest

from protocol.chunks import Reassembler, split_chunks
from protocol.errors import ProtocolError

DATA = os.urandom(10_000)


def make(data=DATA, chunk_size=4096):
    chunks = split_chunks(data, chunk_size)
    r = Reassembler(len(chunks), len(data), hashlib.sha256(data).hexdigest(), [c[2] for c in chunks])
    return chunks, r


def test_split_shapes():
    chunks = split_chunks(DATA, 4096)
    assert [i for i, _, _ in chunks] == [0, 1, 2]
    assert [len(b) for _, b, _ in chunks] == [4096, 4096, 10_000 - 8192]
    assert all(hashlib.sha256(b).hexdigest() == h for _, b, h in chunks)
    assert b"".join(b for _, b, _ in chunks) == DATA
    assert len(split_chunks(b"x" * 8192, 4096)) == 2
    assert split_chunks(b"", 10) == []
    assert len(split_chunks(DATA)) == 1  # default 256 KiB
    with pytest.raises(ValueError):
        split_chunks(DATA, 0)


def test_out_of_order_and_missing():
    chunks, r = make()
    assert r.missing() == [0, 1, 2] and not r.complete
    assert r.add(2, chunks[2][1]) is True
    assert r.missing() == [0, 1]
    with pytest.raises(ProtocolError) as e:
        r.assemble()
    assert e.value.reason == "chunk_missing"
    r.add(0, chunks[0][1])
    r.add(1, chunks[1][1])
    assert r.complete and r.missing() == []
    assert r.assemble() == DATA


def test_duplicate_is_reported_not_fatal():
    chunks, r = make()
    assert r.add(1, chunks[1][1]) is True
    assert r.add(1, chunks[1][1]) is False  # QoS-1 redelivery
    assert r.received_bytes == len(chunks[1][1])
    with pytest.raises(ProtocolError) as e:  # same index, different bytes
        r.add(1, chunks[0][1])
    assert e.value.reason == "chunk_hash"


@pytest.mark.parametrize("index", [-1, 3, 100, True, "1"])
def test_out_of_range(index):
    chunks, r = make()
    with pytest.raises(ProtocolError) as e:
        r.add(index, chunks[0][1])
    assert e.value.reason == "chunk_range"


def test_tampered_chunk():
    chunks, r = make()
    tampered = bytearray(chunks[0][1])
    tampered[5] ^= 1
    with pytest.raises(ProtocolError) as e:
        r.add(0, bytes(tampered))
    assert e.value.reason == "chunk_hash"
    assert r.missing() == [0, 1, 2]


def test_manifest_size_or_digest_lies():
    chunks = split_chunks(DATA, 4096)
    digests = [c[2] for c in chunks]
    r = Reassembler(3, len(DATA) + 1, hashlib.sha256(DATA).hexdigest(), digests)
    for i, b, _ in chunks:
        r.add(i, b)
    with pytest.raises(ProtocolError) as e:
        r.assemble()
    assert e.value.reason == "size_mismatch"
    r = Reassembler(3, len(DATA), "0" * 64, digests)
    for i, b, _ in chunks:
        r.add(i, b)
    with pytest.raises(ProtocolError) as e:
        r.assemble()
    assert e.value.reason == "sha256_mismatch"


def test_bad_construction():
    with pytest.raises(ProtocolError):
        Reassembler(2, 10, "0" * 64, ["0" * 64])
    with pytest.raises(ProtocolError):
        Reassembler(0, 10, "0" * 64, [])


def test_for_manifest():
    from _proto_helpers import manifest
    m = manifest()
    data = b"x" * 1000
    r = Reassembler.for_manifest(m)
    for i, b, _ in split_chunks(data, m.chunk_size):
        r.add(i, b)
    assert r.assemble() == data
