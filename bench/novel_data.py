"""Data sets nobody tuned edgeloop for, written as MNIST-format IDX files (what a new user would bring).

The issue behind them: a handwritten-digits set that was not MNIST (same IDX format, 28x28, same value
range) made the demo's bootstrap end at chance. edgeloop's own settings were chosen on MNIST and sim:parts;
these sets check that the learner holds on data that played no part in choosing them:

* ``hershey``: digits drawn with OpenCV's Hershey vector fonts (six faces, italic or not), random stroke
  width, size, rotation, shear and position, light blur and noise -- another stroke rendering altogether;
* ``inverted``: the repo's MNIST t10k digits with inverted polarity (dark ink on white), thickened strokes
  and the class names permuted (label k is digit perm[k]), so nothing about "white strokes on black, label =
  digit" carries over.

    python -m bench.novel_data hershey OUT_DIR [--n 3000] [--seed 0]
"""
from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import cv2
import numpy as np

__all__ = ["hershey_digits", "inverted_mnist", "write_idx", "write_set", "KINDS"]

_FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
          cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX]


def hershey_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 digit images (white on black, like MNIST's value range) and their labels 0-9."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    for i in range(n):
        big = np.zeros((112, 112), np.uint8)
        font = _FONTS[int(rng.integers(len(_FONTS)))] | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
        scale = rng.uniform(2.2, 3.4)
        thick = int(rng.integers(4, 12))
        text = str(int(y[i]))
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        org = (int((112 - tw) / 2 + rng.uniform(-6, 6)), int((112 + th) / 2 + rng.uniform(-6, 6)))
        cv2.putText(big, text, org, font, scale, 255, thick, cv2.LINE_AA)
        m = cv2.getRotationMatrix2D((56, 56), rng.uniform(-15, 15), rng.uniform(0.85, 1.1))
        m[0, 1] += rng.uniform(-0.25, 0.25)  # shear
        big = cv2.warpAffine(big, m, (112, 112))
        small = cv2.resize(big, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = cv2.GaussianBlur(small, (0, 0), rng.uniform(0.3, 0.9))
        small += rng.normal(0, rng.uniform(0, 12), small.shape)
        x[i] = np.clip(small, 0, 255).astype(np.uint8)
    return x, y


def inverted_mnist(n: int, seed: int = 0, mnist_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST t10k digits inverted (255 - x), strokes thickened, labels permuted by a seeded permutation."""
    from trainer.datasets import default_mnist_paths, read_idx

    if mnist_dir is None:
        images, labels = default_mnist_paths()
    else:
        d = Path(mnist_dir)
        images, labels = d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz"
    xs, ys = read_idx(images), read_idx(labels)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ys))[:n]
    perm = rng.permutation(10)
    kernel = np.ones((2, 2), np.uint8)
    x = np.stack([255 - cv2.dilate(xs[i], kernel) for i in idx]).astype(np.uint8)
    y = np.array([int(np.flatnonzero(perm == ys[i])[0]) for i in idx], np.uint8)  # label k shows digit perm[k]
    return x, y


KINDS = {"hershey": hershey_digits, "inverted": inverted_mnist}


def write_idx(path: Path, arr: np.ndarray) -> None:
    """An IDX file (gzip), unsigned-byte data: the format MNIST ships in."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(arr, np.uint8).tobytes()))


def write_set(kind: str, out: str | Path, n: int = 3000, seed: int = 0) -> Path:
    """Write ``kind`` as ``t10k-images-idx3-ubyte.gz`` / ``t10k-labels-idx1-ubyte.gz`` in ``out`` (the names
    ``sim:digits?data=`` and ``edgeloop demo --data`` look for)."""
    x, y = KINDS[kind](n, seed)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    write_idx(d / "t10k-images-idx3-ubyte.gz", x)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", y)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.novel_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(write_set(a.kind, a.out, a.n, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
