"""Counters that must survive restarts: the boot counter and the sample sequence number.

The boot counter orders a device's lives (Sparkplug's bdSeq idea): receivers tell a restart from a replay.
The sequence number lets the trainer spot gaps and duplicates; writing it on every sample would cost an
fsync per frame selected, so it is leased in blocks: the file holds the first number *not yet handed
out*, advanced a block at a time. A crash skips at most one block (a visible, explained gap: the boot
counter changed), never reuses a number.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from protocol.durable import atomic_write


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_int(path: Path, value: int) -> None:
    atomic_write(path, str(value).encode())


def next_boot(state_dir: str | os.PathLike[str]) -> int:
    """Increment and return the device's boot counter (1 on the first start)."""
    path = Path(state_dir) / "boot"
    path.parent.mkdir(parents=True, exist_ok=True)
    boot = _read_int(path) + 1
    _write_int(path, boot)
    return boot


class SequenceLease:
    """Monotonic sequence numbers, durable across restarts, one fsync per ``block`` numbers."""

    def __init__(self, path: str | os.PathLike[str], block: int = 1024) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.block = block
        self._lock = threading.Lock()
        self._next = _read_int(self.path)
        self._limit = self._next
        self._extend()

    def _extend(self) -> None:
        limit = self._next + self.block
        _write_int(self.path, limit)  # may raise OSError (disk full): then nothing was handed out
        self._limit = limit

    def next(self) -> int:
        with self._lock:
            if self._next >= self._limit:
                self._extend()
            value = self._next
            self._next += 1
            return value

    def give_back(self, value: int) -> None:
        """Return the number just taken, when what it numbered was never stored (no gap for the receiver)."""
        with self._lock:
            if value == self._next - 1:
                self._next = value
