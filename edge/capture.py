"""The capture thread: keeps a camera read at its own pace, so slow inference never backs frames up.

Frames go into a small bounded queue that drops the *oldest* frame when inference falls behind: the edge
always classifies what the camera sees now, and memory stays flat. Recorded sources (a video file, a
simulator that is not paced to real time) instead wait for the consumer, so no frame is skipped. A watchdog reopens a source that fails
or stalls (no frame for ``stall_timeout_s``), with exponential backoff, and counts reconnects and stalls.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from edge.sources.base import Frame, Source

log = logging.getLogger("edgeloop.edge.capture")


@dataclass
class CaptureStats:
    frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    stalls: int = 0
    ended: bool = False


class Capture:
    """Reads ``source`` in a background thread at up to ``target_fps``.

    ``get(timeout)`` returns the oldest queued frame or None. ``open()`` opens the source once in the
    caller's thread so that a source that cannot be opened at start fails loudly there, not in a thread.
    A finite source (a file without loop, a ``sim:`` source with ``limit``) ends the capture at its end.
    """

    def __init__(self, source: Source, *, target_fps: float | None = None, queue_size: int = 2,
                 stall_timeout_s: float = 5.0, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 finite: bool | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.source = source
        self.target_fps = target_fps
        self.stats = CaptureStats()
        self._queue: collections.deque[Frame] = collections.deque(maxlen=max(1, queue_size))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._stall_timeout_s = stall_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._finite = finite
        self._sleep = sleep
        self._thread: threading.Thread | None = None
        # Live sources (cameras, streams, paced simulators) drop the oldest frame when inference falls behind;
        # recorded ones (files, unpaced simulators) apply back-pressure instead.
        self._live = bool(getattr(source, "live", True))

    def open(self) -> None:
        self.source.open()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgeloop-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.close()

    @property
    def ended(self) -> bool:
        return self.stats.ended

    def get(self, timeout: float = 1.0) -> Frame | None:
        with self._cond:
            if not self._queue and not self.stats.ended:
                self._cond.wait(timeout)
            frame = self._queue.popleft() if self._queue else None
            self._cond.notify_all()
            return frame

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                if not self._live:
                    # A file or an unpaced simulator waits for the consumer: nothing is lost by waiting.
                    while len(self._queue) == self._queue.maxlen and not self._stop.is_set():
                        self._cond.wait(0.1)
                else:
                    self.stats.dropped += 1  # drop-oldest: the deque discards the left end
            self._queue.append(frame)
            self.stats.frames += 1
            self._cond.notify()

    def _is_finite(self) -> bool:
        if self._finite is not None:
            return self._finite
        return bool(getattr(self.source, "finite", False))

    def _reopen(self) -> bool:
        delay, max_delay = self._backoff
        while not self._stop.is_set():
            try:
                self.source.close()
                self.source.open()
                self.stats.reconnects += 1
                log.info("source reopened (reconnect #%d)", self.stats.reconnects)
                return True
            except Exception as exc:  # a camera that is gone raises all sorts of things
                log.warning("source reopen failed: %s; retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, max_delay)
        return False

    def _run(self) -> None:
        period = 1.0 / self.target_fps if self.target_fps else 0.0
        next_due = time.monotonic()
        last_frame = time.monotonic()
        try:
            while not self._stop.is_set():
                frame = self._read_with_watchdog()
                now = time.monotonic()
                if frame is None:
                    if self._is_finite():
                        log.info("source ended after %d frames", self.stats.frames)
                        break
                    if now - last_frame >= self._stall_timeout_s:
                        self.stats.stalls += 1
                        log.warning("no frame for %.1fs: reopening source", now - last_frame)
                    if not self._reopen():
                        break
                    last_frame = time.monotonic()
                    continue
                last_frame = now
                self._put(frame)
                if period:
                    next_due = max(next_due + period, now - period)
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
        finally:
            with self._cond:
                self.stats.ended = True
                self._cond.notify_all()

    def _read_with_watchdog(self) -> Frame | None:
        """One read. A read that blocks is bounded by the source itself (OpenCV's read timeout, set by
        OpenCVSource), so it comes back as None and counts as a stall; a read that raises counts likewise."""
        try:
            return self.source.read()
        except Exception as exc:  # a camera that is gone raises all sorts of things
            log.warning("source read failed: %s", exc)
            return None
