"""A real full file system for tests: a small tmpfs mounted for one test (root only, as in CI; skipped with the
reason elsewhere) and a filler that takes its last byte. SQLite, atomic writes and the updater's chunk files
then meet the kernel's own ENOSPC, not a simulation of it."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a ``size`` tmpfs (e.g. "4m") on ``where`` for the block; skips the test where that is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True, timeout=20)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)


def fill_disk(filler: Path) -> Path:
    """Write ``filler`` until its file system has no byte left; returns it (delete it to give the space back)."""
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler
