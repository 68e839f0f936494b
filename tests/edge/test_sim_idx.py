"""IDX reader: gz and raw, type codes, and clear errors on bad files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from edge.sources.idx import read_idx
from edge.sources.sim.digits import default_mnist_dir


def _idx(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def test_raw_and_gz_uint8(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx(arr, 0x08))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx(arr, 0x08)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), arr)


def test_int32_big_endian(tmp_path):
    arr = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "b.idx").write_bytes(_idx(arr, 0x0C))
    out = read_idx(tmp_path / "b.idx")
    assert out.tolist() == [1, -2, 70000] and out.dtype.isnative


def test_bad_magic(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad IDX magic"):
        read_idx(tmp_path / "bad.idx")


def test_truncated_body(tmp_path):
    arr = np.zeros((4, 4), np.uint8)
    (tmp_path / "t.idx").write_bytes(_idx(arr, 0x08)[:-3])
    with pytest.raises(ValueError, match="needs 16"):
        read_idx(tmp_path / "t.idx")


def test_repo_mnist_files():
    d = default_mnist_dir()
    images = read_idx(d / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
