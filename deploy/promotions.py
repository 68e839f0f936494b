"""Promotion notices from the trainer -> verified model files on the controller's disk.

The trainer announces each promoted version on the broker with its bytes (trainer/announce.py; the notice:
protocol/promotion.py). This module listens (through the controller's MQTT connection), records every new
notice in the rollout store (``promotions``: durable, so a restarted controller knows what it has seen), and
fetches the bytes of the versions the feeder asks for: it subscribes to that version's retained chunks,
checks each against the notice's digest as it lands, checks the assembled file's size and sha256, writes it
atomically to ``model_dir/{model_id}/{version}.onnx``, reads its ONNX metadata (a file the edge could not
load is refused here, not on every camera) and registers it with the controller. Nothing of the trainer's
disk is ever needed.

Faults and bounds: a notice that does not parse, names another model, or promises more than
``max_model_bytes`` is counted by reason and dropped. One fetch at a time holds at most one model in memory;
a fetch without progress for ``fetch_timeout_s`` is retried (``FETCH_ATTEMPTS`` in all), then the
promotion is marked ``failed`` with the reason. A notice for a version already recorded with *other* bytes is
refused (versions are immutable names). Threads: ``on_*`` run on the MQTT thread and only queue;
:meth:`PromotionIntake.poll` (the feeder's thread) does the rest.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from protocol.chunks import Reassembler
from protocol.durable import atomic_write
from protocol.errors import ProtocolError
from protocol.messages import Chunk, decode_message
from protocol.promotion import Promotion, decode_promotion, encode_promotion

from .rollout_store import PromotionRecord

if TYPE_CHECKING:
    from .controller import Controller

__all__ = ["PromotionIntake", "FETCH_ATTEMPTS", "MAX_MODEL_BYTES"]

log = logging.getLogger("edgeloop.deploy.promotions")

MAX_MODEL_BYTES = 512 * 1024 * 1024
FETCH_TIMEOUT_S = 30.0
FETCH_ATTEMPTS = 3
_QUEUE = 256   # notices waiting for poll(); retained notices repeat, so a flood beyond this loses nothing


@dataclass
class _Fetch:
    notice: Promotion
    asm: Reassembler
    topic: str
    last: float
    attempt: int


class PromotionIntake:
    """Records promotion notices and fetches the bytes the feeder wants. ``model_id``: accept only this model."""

    def __init__(self, ctl: "Controller", model_dir: str | os.PathLike[str], *, model_id: str | None = None,
                 max_model_bytes: int = MAX_MODEL_BYTES, fetch_timeout_s: float = FETCH_TIMEOUT_S,
                 on_new: Callable[[PromotionRecord], None] | None = None) -> None:
        self.ctl = ctl
        self.store = ctl.store
        self.topics = ctl.topics
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.max_model_bytes = int(max_model_bytes)
        self.fetch_timeout_s = float(fetch_timeout_s)
        self.on_new = on_new
        self.counters: Counter[str] = Counter()   # received, rejected:<reason>, fetched, failed:<reason>
        self._notices: deque[Promotion] = deque(maxlen=_QUEUE)
        self._fetch: _Fetch | None = None
        self._wanted: list[tuple[str, str]] = []            # (model_id, version), in the order asked
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def attach(self) -> "PromotionIntake":
        """Listen on the controller's connection: the newest notice, every kept version's notice, and chunks
        (delivered only while a fetch has subscribed to them)."""
        t = self.topics
        self.ctl.route(t.trainer_promoted(), 1, self.on_notice)
        self.ctl.route(t.all_trainer_models(), 1, self.on_notice)
        self.ctl.route(f"{t.prefix}/trainer/models/+/chunk/+", 1, self.on_chunk, subscribe=False)
        return self

    # -- MQTT thread --------------------------------------------------------------------------------------------
    def on_notice(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # the trainer cleared a version it no longer keeps
        try:
            notice = decode_promotion(payload)
            parsed = self.topics.parse(topic)
            if parsed.kind == "trainer_model" and parsed.version != notice.version:
                raise ProtocolError("schema", f"notice of {notice.version} on the topic of {parsed.version}")
        except ProtocolError as e:
            self._reject(e.reason, f"{topic}: {e.detail}")
            return
        if self.model_id is not None and notice.model_id != self.model_id:
            self._reject("other_model", f"{notice.model_id}/{notice.version} (this controller ships {self.model_id})")
            return
        if notice.size > self.max_model_bytes:
            self._reject("too_large", f"{notice.version}: {notice.size} bytes > {self.max_model_bytes}")
            return
        self._notices.append(notice)

    def on_chunk(self, topic: str, payload: bytes) -> None:
        with self._lock:
            f = self._fetch
        if f is None or not payload:
            return
        try:
            t = self.topics.parse(topic)
            if t.kind != "trainer_chunk" or t.version != f.notice.version or t.index is None:
                return
            d = decode_message(payload, max_size=f.notice.chunk_size + 65536, max_body={"chunk": f.notice.chunk_size})
            if not isinstance(d.msg, Chunk) or d.msg.index != t.index:
                raise ProtocolError("chunk_range", f"chunk message does not match topic index {t.index}")
            with self._lock:
                if self._fetch is f and f.asm.add(t.index, d.body):
                    f.last = time.monotonic()
        except ProtocolError as e:
            self.counters[f"chunk_rejected:{e.reason}"] += 1
            log.warning("chunk of %s refused: %s", f.notice.version, e)

    def _reject(self, reason: str, detail: str) -> None:
        self.counters[f"rejected:{reason}"] += 1
        n = self.counters[f"rejected:{reason}"]
        if n == 1 or n % 100 == 0:
            log.warning("promotion notice refused (%s): %s (%d so far)", reason, detail, n)

    # -- the feeder's thread --------------------------------------------------------------------------------------
    def want(self, rec: PromotionRecord) -> None:
        """Fetch this announced version's bytes (deduplicated; fetched one at a time, in the order asked)."""
        key = (rec.model_id, rec.version)
        with self._lock:
            busy = self._fetch is not None and (self._fetch.notice.model_id, self._fetch.notice.version) == key
            if not busy and key not in self._wanted:
                self._wanted.append(key)

    def fetching(self) -> str | None:
        with self._lock:
            return self._fetch.notice.version if self._fetch is not None else None

    def poll(self) -> list[PromotionRecord]:
        """Record queued notices; advance the fetch. Returns the promotions recorded for the first time."""
        new = []
        while self._notices:
            rec = self._record(self._notices.popleft())
            if rec is not None:
                new.append(rec)
        self._advance()
        return new

    def _record(self, n: Promotion) -> PromotionRecord | None:
        known = self.store.promotion(n.model_id, n.version)
        if known is not None:
            if known.sha256 != n.sha256:
                self._reject("conflict", f"{n.version} announced again with other bytes ({n.sha256[:12]} != "
                                         f"{known.sha256[:12]}): versions are immutable; ignored")
            return None
        if not self.store.record_promotion(n.model_id, n.version, n.seq, n.parent, n.sha256, n.size, n.time,
                                           encode_promotion(n).decode()):
            return None
        self.counters["received"] += 1
        rec = self.store.promotion(n.model_id, n.version)
        if rec is not None and self.on_new is not None:
            self.on_new(rec)
        return rec

    def _advance(self) -> None:
        with self._lock:
            f = self._fetch
        if f is None:
            self._start_next()
            return
        if f.asm.complete:
            self._finish(f)
        elif time.monotonic() - f.last > self.fetch_timeout_s:
            self._end(f)
            key = (f.notice.model_id, f.notice.version)
            self._attempts[key] += 1
            have = f.asm.count - len(f.asm.missing())
            if self._attempts[key] >= FETCH_ATTEMPTS:
                self._fail(f.notice, "fetch_timeout", f"{have} of {f.asm.count} chunks arrived in {FETCH_ATTEMPTS} "
                                                      "attempts (the trainer no longer keeps this version?)")
            else:
                log.warning("fetching %s: %d of %d chunks after %.0fs without progress; trying again", f.notice.version,
                            have, f.asm.count, self.fetch_timeout_s)
                with self._lock:
                    self._wanted.append(key)

    def _start_next(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    return
                model_id, version = self._wanted.pop(0)
            rec = self.store.promotion(model_id, version)
            if rec is None or rec.status != "announced":
                continue
            try:
                n = decode_promotion(rec.notice.encode())
                asm = Reassembler(n.chunk_count, n.size, n.sha256, n.chunk_sha256)
            except ProtocolError as e:
                self._fail(None, "schema", str(e), rec)
                continue
            topic = self.topics.trainer_chunks_wildcard(version)
            f = _Fetch(n, asm, topic, time.monotonic(), self._attempts[(model_id, version)] + 1)
            with self._lock:
                self._fetch = f
            self.ctl.subscribe(topic, 1)  # the broker answers with every retained chunk of the version
            log.info("fetching %s/%s from the broker (%d bytes, %d chunks, attempt %d)", model_id, version, n.size,
                     n.chunk_count, f.attempt)
            return

    def _end(self, f: _Fetch) -> None:
        with self._lock:
            if self._fetch is f:
                self._fetch = None
        self.ctl.unsubscribe(f.topic)

    def _finish(self, f: _Fetch) -> None:
        self._end(f)
        n = f.notice
        try:
            data = f.asm.assemble()  # size and sha256 against the notice
        except ProtocolError as e:
            self._fail(n, e.reason, e.detail)
            return
        path = self.model_dir / n.model_id / f"{n.version}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        try:
            art = self.ctl.register_model(path, n.model_id, n.version)  # reads the ONNX metadata: a file edges can load
        except Exception as e:  # onnxruntime raises its own types for a file it cannot parse
            path.unlink(missing_ok=True)
            self._fail(n, "bad_model", f"{type(e).__name__}: {e}")
            return
        self.store.set_promotion(n.model_id, n.version, "ready", path=str(path))
        self._attempts.pop((n.model_id, n.version), None)
        self.counters["fetched"] += 1
        log.info("%s/%s fetched and verified (sha256 %s..., %d bytes) -> %s", n.model_id, n.version, art.sha256[:12],
                 art.size, path)

    def _fail(self, n: Promotion | None, reason: str, detail: str, rec: PromotionRecord | None = None) -> None:
        model_id, version = (n.model_id, n.version) if n is not None else (rec.model_id, rec.version)  # type: ignore[union-attr]
        self.counters[f"failed:{reason}"] += 1
        self._attempts.pop((model_id, version), None)
        self.store.set_promotion(model_id, version, "failed", detail=f"{reason}: {detail}")
        log.error("promotion %s/%s cannot be rolled out: %s: %s", model_id, version, reason, detail)
