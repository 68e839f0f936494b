"""Read back a version's retained chunks from the broker and say which are missing or wrong.

Why: paho accepting a publish says nothing about what the broker holds later. A broker restarted without
persistence, a retained message evicted by a broker limit, or a chunk that a device found corrupt all leave a
download that can never finish, and nothing in MQTT tells the publisher. So the controller checks: it
subscribes to the version's chunk topics (the broker sends every retained chunk at once), verifies each one
against the digest it expects, and after a quiet period reports the indices that did not come back intact.
The controller republishes those and checks again.

One audit at a time, holding only the set of indices seen (never the bytes): bounded whatever the model size.
Driving: :meth:`request` (any thread) queues a version, :meth:`on_message` (MQTT thread) records what comes
back, :meth:`poll` (controller thread) starts the next audit and returns the finished one's result.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from protocol.errors import ProtocolError
from protocol.messages import Chunk, decode_message
from protocol.topics import Topics

__all__ = ["ChunkAudit", "AuditResult", "SETTLE_S", "TIMEOUT_S"]

log = logging.getLogger("edgeloop.controller")

#: An audit ends this long after the last chunk came back (retained messages arrive in one burst) ...
SETTLE_S = 2.0
#: ... or after this long in any case.
TIMEOUT_S = 30.0


@dataclass
class AuditResult:
    model_id: str
    version: str
    count: int
    missing: list[int]          # absent, empty (cleared) or not matching the expected digest
    reason: str                 # why it was audited (for logs and metrics)


@dataclass
class _Audit:
    model_id: str
    version: str
    digests: list[str]
    chunk_size: int
    reason: str
    topic: str = ""
    seen: set[int] = field(default_factory=set)
    started: float = 0.0
    last: float = 0.0


class ChunkAudit:
    """Queue of read-backs; ``subscribe(topic)``/``unsubscribe(topic)`` are the controller's MQTT calls."""

    def __init__(self, topics: Topics, subscribe: Callable[[str], None], unsubscribe: Callable[[str], None],
                 settle_s: float = SETTLE_S, timeout_s: float = TIMEOUT_S, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.topics = topics
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._queue: deque[_Audit] = deque()
        self._current: _Audit | None = None
        self._lock = threading.Lock()
        self.bad_chunks = 0            # chunks that came back but did not match (counted, then republished)

    def request(self, model_id: str, version: str, digests: list[str], chunk_size: int, reason: str) -> None:
        """Queue an audit of one version (ignored if that version is queued or being audited already)."""
        with self._lock:
            queued = [self._current, *self._queue]
            if any(a is not None and (a.model_id, a.version) == (model_id, version) for a in queued):
                return
            self._queue.append(_Audit(model_id, version, list(digests), chunk_size, reason))

    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or bool(self._queue)

    def on_message(self, topic: str, payload: bytes) -> None:
        """MQTT thread: a chunk came back; count it if it is intact."""
        with self._lock:
            a = self._current
        if a is None:
            return
        try:
            t = self.topics.parse(topic)
        except ProtocolError:
            return
        if t.kind != "chunk" or (t.model, t.version) != (a.model_id, a.version) or t.index is None:
            return
        i = t.index
        if not payload or i >= len(a.digests):
            return
        try:
            d = decode_message(payload, max_size=a.chunk_size + 65536, max_body={"chunk": a.chunk_size})
            ok = isinstance(d.msg, Chunk) and d.msg.index == i and d.msg.sha256 == a.digests[i]
        except ProtocolError:
            ok = False
        with self._lock:
            if self._current is not a:
                return
            a.last = self._clock()
            if ok:
                a.seen.add(i)
            else:
                a.seen.discard(i)
                self.bad_chunks += 1

    def poll(self) -> AuditResult | None:
        """Controller thread: finish the current audit if it is done, else start the next one."""
        now = self._clock()
        with self._lock:
            a = self._current
            starting = a is None
            if starting:
                if not self._queue:
                    return None
                a = self._current = self._queue.popleft()
                a.started = a.last = now
                a.topic = self.topics.chunks_wildcard(a.model_id, a.version)
            elif len(a.seen) < len(a.digests) and now - a.last < self.settle_s and now - a.started < self.timeout_s:
                return None
            else:
                self._current = None
        if starting:
            self._subscribe(a.topic)  # the broker answers with every retained chunk of the version
            return None
        self._unsubscribe(a.topic)
        missing = [i for i in range(len(a.digests)) if i not in a.seen]
        if missing:
            log.warning("read-back of %s/%s (%s): %d of %d chunks missing or wrong on the broker: %s",
                        a.model_id, a.version, a.reason, len(missing), len(a.digests), missing[:10])
        return AuditResult(a.model_id, a.version, len(a.digests), missing, a.reason)
