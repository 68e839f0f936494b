"""One trainer per state directory: an OS file lock held for the life of the service.

Why: two trainers on one state would each keep their own model, version numbers and buffer while sharing
the store and the registry, and overwrite each other's retained topics. ``fcntl.flock`` on
``STATE/trainer.lock`` is released by the kernel when the process ends, however it ends (``kill -9``
included), so a crash never leaves a stale lock behind; the file only records who holds it, for the error.
Read-only tools (``trainer status``, ``trainer versions``) and labelling tools do not take it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

__all__ = ["StateLocked", "StateLock", "LOCK_FILE", "held"]

LOCK_FILE = "trainer.lock"


class StateLocked(RuntimeError):
    """Another trainer holds this state directory."""


def held(state_dir: str | os.PathLike[str]) -> bool:
    """Does a trainer hold ``state_dir`` now? (A shared probe for a microsecond; writes nothing.)"""
    try:
        fh = open(Path(state_dir) / LOCK_FILE, encoding="utf-8")
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


class StateLock:
    """``with StateLock(state_dir): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> "StateLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StateLocked(f"{self.path.parent} is in use by another trainer ({holder}); one trainer per state "
                              "directory -- stop it first, or give this one its own --state-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
