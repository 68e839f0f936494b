"""Data sets the trainer learns and benchmarks on: an IDX reader and the Split-MNIST protocol.

The trainer must not import ``edge`` (see docs/CONTRACTS.md), so it carries its own tiny IDX reader.
The split follows /work/shared/data/mnist/README.md exactly, because benchmark numbers are only
comparable with the reference (Avalanche) numbers when every run sees the same stream and test set.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "SplitMNIST",
    "default_mnist_paths",
    "load_mnist",
    "make_split_mnist",
    "read_idx",
    "split_mnist",
]

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_DIRS = (REPO_ROOT / "data" / "mnist", Path("/work/shared/data/mnist"))
MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "t10k-labels-idx1-ubyte.gz"


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array in an IDX file, gzip-compressed or raw (sniffed by the gzip magic, not the name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: payload is {len(raw) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def default_mnist_paths() -> tuple[Path, Path]:
    """The repo copy (data/mnist) when it is complete, else the shared read-only copy."""
    for d in MNIST_DIRS:
        if (d / MNIST_IMAGES).is_file() and (d / MNIST_LABELS).is_file():
            return d / MNIST_IMAGES, d / MNIST_LABELS
    raise FileNotFoundError(f"MNIST t10k files not found in any of {', '.join(map(str, MNIST_DIRS))}")


def load_mnist(images: str | Path | None = None, labels: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64; default paths from :func:`default_mnist_paths`."""
    if images is None or labels is None:
        di, dl = default_mnist_paths()
        images = images or di
        labels = labels or dl
    x = read_idx(images)
    y = read_idx(labels).astype(np.int64)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"images {x.shape} and labels {y.shape} do not match")
    return x, y


def split_mnist(labels: np.ndarray, fraction: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-digit split of the protocol: one ``default_rng(seed)``, digits 0..9 in order, each digit's
    indices permuted, the first ``floor(fraction * count)`` go to the stream, the rest to the test set.

    Returns (stream_indices_by_digit_concatenated, test_indices); both keep digit order, the stream's
    within-experience order is decided by :func:`make_split_mnist`.
    """
    rng = np.random.default_rng(seed)
    stream, test = [], []
    for digit in range(int(labels.max()) + 1):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        cut = int(np.floor(fraction * len(idx)))
        stream.append(idx[:cut])
        test.append(idx[cut:])
    return np.concatenate(stream), np.concatenate(test)


@dataclass
class SplitMNIST:
    """The class-incremental stream and the test set, as tensors ready for the ConvNet.

    ``experiences[i]`` is a (x, y) pair with x float32 (n, 1, 28, 28) in [0, 1].
    """

    experiences: list[tuple[torch.Tensor, torch.Tensor]]
    classes: list[tuple[int, ...]]
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def stream_size(self) -> int:
        return sum(len(y) for _, y in self.experiences)


def make_split_mnist(
    images: str | Path | None = None,
    labels: str | Path | None = None,
    order_seed: int = 0,
    classes_per_experience: int = 2,
) -> SplitMNIST:
    """Build the Split-MNIST benchmark (README protocol).

    The split itself is fixed (``default_rng(0)``). The protocol does not fix the order of samples
    *inside* an experience; we shuffle each experience with ``default_rng(order_seed)`` (the run's seed),
    as Avalanche's training loop does, so that the minibatches of 10 mix both digits of the experience.
    """
    x_all, y_all = load_mnist(images, labels)
    stream_idx, test_idx = split_mnist(y_all, 0.8, 0)
    n_classes = int(y_all.max()) + 1
    rng = np.random.default_rng(order_seed)
    to_x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    exps, classes = [], []
    stream_y = y_all[stream_idx]
    for start in range(0, n_classes, classes_per_experience):
        cls = tuple(range(start, min(start + classes_per_experience, n_classes)))
        idx = stream_idx[np.isin(stream_y, cls)]
        idx = idx[rng.permutation(len(idx))]
        exps.append((to_x(x_all[idx]), torch.from_numpy(y_all[idx])))
        classes.append(cls)
    return SplitMNIST(exps, classes, to_x(x_all[test_idx]), torch.from_numpy(y_all[test_idx]))
