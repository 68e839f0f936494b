"""Sample ingestion: MQTT ``dev/+/samples`` -> validate -> dedup -> durable store -> PUBACK.

Why manual acknowledgement: with paho's default, PUBACK leaves as soon as ``on_message`` returns, so a
crash between that and the disk write loses a sample the edge already deleted from its outbox. Here the
client runs with ``manual_ack`` and a PUBACK is sent only after the batch holding that message has been
fsynced and committed (:meth:`SampleStore.add_batch`). Together with a persistent session
(``clean_start=False``, fixed client id) the broker redelivers anything we had not acknowledged when we
died; dedup by ``sample_id`` makes that redelivery harmless.

Why a writer thread and group commit: paho's network thread only decodes and queues (microseconds per
message); the writer takes everything queued so far (up to ``batch_max``), writes it with one image fsync
and one SQLite commit, then acknowledges the whole batch in arrival order (MQTT requires PUBACKs in the
order the PUBLISHes arrived). Under load batches grow by themselves, so the cost per message falls as the
rate rises; at low rates a message waits for nothing but its own commit.

Bad input never crashes the process: every message is validated with ``decode_message``; rejected ones
are acknowledged too (redelivering garbage helps nobody), counted per reason (in memory and in the store,
and per device when the sender is known) and logged with their reason, rate-limited per reason. Besides the
protocol's reasons (``protocol.errors.REASONS``) ingestion has its own (:data:`INGEST_REASONS`).

Bounded: the queue between the network thread and the writer holds at most ``queue_max`` messages /
``queue_max_bytes``. QoS 1 never overflows it, because the broker sends no more unacknowledged messages than
the MQTT 5 receive maximum we announce (= ``queue_max``; a 3.1.1 broker applies its own in-flight limit,
mosquitto's is 20); QoS 0 samples beyond it are dropped and counted (``queue_full``). Each device has a token
bucket (``device_rate`` per second, ``device_burst`` at once): samples over it are rejected (``quota``) and
acknowledged, so the broker does not redeliver them for ever.

Faults: when the store cannot be written (a full disk), the writer keeps the batch, acknowledges nothing
(the broker keeps the samples), reports ``degraded`` with the reason through ``on_degraded`` and retries
with backoff; it reports recovery the same way when a write succeeds again.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from protocol.errors import ProtocolError
from protocol.messages import Sample, decode_message
from protocol.mqtt import ack_many, certificate_identity, make_client, parse_url, resolve_tls
from protocol.topics import Topics

from .images import ImageRejected, image_size
from .store import IncomingSample, SampleStore

log = logging.getLogger(__name__)

__all__ = ["Ingestor", "IngestStats", "TokenBuckets", "sample_from_decoded", "INGEST_REASONS", "describe_write_error"]

#: Rejection reasons of ingestion itself (the rest are ``ProtocolError`` reasons).
INGEST_REASONS = {
    "image_too_large": "the image header declares more pixels than this model can use (ingest.max_image_side)",
    "bad_image": "the body is not a PNG or JPEG, or not the content type the sample claims",
    "quota": "the sending device is over its token bucket (ingest.device_rate / device_burst)",
    "queue_full": "a QoS 0 sample arrived while the ingest queue was full (ingest.queue_max)",
    "internal": "validation itself failed (a bug; logged with its traceback)",
}
#: Buckets kept per device at most; full (idle) buckets are forgotten first, as if new.
_MAX_BUCKETS = 10_000


@dataclass
class IngestStats:
    """Counters since this ingestor started (the store keeps the all-time rejection counts)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    acked: int = 0
    write_errors: int = 0
    quota_by_device: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received, "stored": self.stored, "duplicates": self.duplicates,
            "rejected": dict(self.rejected), "rejected_total": sum(self.rejected.values()),
            "batches": self.batches, "acked": self.acked, "write_errors": self.write_errors,
            "quota_by_device": dict(self.quota_by_device),
        }


class TokenBuckets:
    """One token bucket per device: ``burst`` tokens at most, ``rate`` tokens a second refilled.

    In memory (a restart starts every device with a full bucket); at most ``_MAX_BUCKETS`` devices are tracked,
    forgetting full buckets first (a forgotten device is simply new again).
    """

    def __init__(self, rate: float | None, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # device -> [tokens, last refill time]

    def take(self, device: str) -> bool:
        """Spend one token of ``device``; False when its bucket is empty."""
        if self.rate is None:
            return True
        now = self.clock()
        b = self._buckets.get(device)
        if b is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget(now)
            b = self._buckets[device] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True

    def _forget(self, now: float) -> None:
        full = [d for d, (tokens, t) in self._buckets.items() if tokens + (now - t) * self.rate >= self.burst]  # type: ignore[operator]
        for d in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[d]


def describe_write_error(exc: BaseException) -> str:
    """The reason a store write failed, as an operator reads it (``disk full: ...`` when it is that)."""
    text = f"{type(exc).__name__}: {exc}"
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, sqlite3.Error) and "full" in str(exc).lower())
    return f"disk full ({text})" if full else text


@dataclass(slots=True)
class _Pending:
    mid: int
    qos: int
    generation: int
    item: IncomingSample | None
    reason: str | None
    device: str | None = None
    size: int = 0
    received: float = 0.0


def sample_from_decoded(msg: Sample, header: Any, body: bytes) -> IncomingSample:
    """Flatten a decoded Sample + transport header + image into what the store keeps."""
    return IncomingSample(
        sample_id=msg.sample_id, device=header.device, seq=header.seq, msg_id=header.id, ts=header.ts,
        model_version=msg.model_version, topk=[(str(n), float(p)) for n, p in msg.topk],
        uncertainty=float(msg.uncertainty), uncertainty_kind=msg.uncertainty_kind, p_select=float(msg.p_select),
        reason=msg.reason, frame_index=msg.frame_index, width=msg.width, height=msg.height,
        roi=tuple(msg.roi) if msg.roi is not None else None, truth=msg.truth, source=msg.source,
        content_type=header.content_type, image=body,
    )


class Ingestor:
    """Subscribe to every device's samples and store them durably before acknowledging.

    Also the trainer's one MQTT connection: :meth:`publish` sends trainer/state and promotion notices,
    and ``will`` becomes the connection's Will (``trainer/state`` = offline).

    ``on_connect`` (optional) runs on every (re)connection, e.g. to re-publish ``online``;
    ``on_stored`` (optional) is called from the writer thread with the number of new samples.
    """

    # long: 30 keyword parameters (one per ingest config key) and their plain assignments
    def __init__(
        self,
        store: SampleStore,
        url: str,
        *,
        topics: Topics | None = None,
        client_id: str | None = None,
        shared_group: str | None = "trainers",
        protocol: str = "auto",
        will: tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        max_message_bytes: int = 8 * 1024 * 1024,
        max_image_bytes: int = 2 * 1024 * 1024,
        batch_max: int = 512,
        linger_ms: float = 0.0,
        max_delay_ms: float = 20.0,
        max_image_size: tuple[int, int] | None = (4096, 4096),
        queue_max: int = 2048,
        queue_max_bytes: int = 256 * 1024 * 1024,
        device_rate: float | None = None,
        device_burst: int = 10_000,
        on_connect: Callable[["Ingestor"], None] | None = None,
        on_stored: Callable[[int], None] | None = None,
        on_degraded: Callable[[str | None], None] | None = None,
        subscribe: bool = True,
    ) -> None:
        self.store = store
        self.topics = topics or Topics()
        self.max_message_bytes = int(max_message_bytes)
        self.max_body = {"sample": int(max_image_bytes)}
        self.batch_max = max(1, int(batch_max))
        self.linger_s = max(0.0, float(linger_ms) / 1000.0)
        self.max_delay_s = max(0.0, float(max_delay_ms) / 1000.0)
        self.max_image_size = max_image_size
        self.queue_max = max(1, int(queue_max))
        self.queue_max_bytes = int(queue_max_bytes)
        self.buckets = TokenBuckets(device_rate, device_burst)
        self.stats = IngestStats()
        self._on_connect_cb = on_connect
        self._on_stored = on_stored
        self._on_degraded = on_degraded
        self.degraded: str | None = None
        self._subscribe_samples = subscribe
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._dropped = Counter()  # type: Counter[tuple[str | None, str]]  # QoS 0 dropped on a full queue
        self._writing_since: float | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._busy = False
        self._generation = 0
        self._log_counts: Counter[str] = Counter()
        self.connected = threading.Event()
        self.subscribed = threading.Event()

        u = parse_url(url)
        if username is not None:
            u = dataclasses.replace(u, username=username, password=password)
        self.url = u
        ca, cert, key = resolve_tls(u, ca, cert, key)
        # A persistent session needs a stable id; the certificate's CN is one per trainer identity, and the
        # edgeloop broker enforces it (client id = CN), so no other client can take the session over.
        self.client_id = client_id or (certificate_identity(cert) if cert else "edgeloop-trainer")
        self.client: paho.Client = make_client(
            self.client_id, u, will=will, protocol=protocol, clean_start=False, keepalive=keepalive,
            ca=ca, cert=cert, key=key, receive_maximum=self.queue_max,
        )
        self.client.manual_ack_set(True)
        self.mqtt5 = self.client.protocol == paho.MQTTv5
        self.sample_topic = self.topics.all_samples()
        self.shared = bool(shared_group) and self.mqtt5
        self.subscription = f"$share/{shared_group}/{self.sample_topic}" if self.shared else self.sample_topic
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, wait: float | None = 10.0) -> "Ingestor":
        """Start the writer and the network loop; with ``wait``, block until subscribed (or raise)."""
        self._writer.start()
        self.client.loop_start()
        if wait is not None:
            target = self.subscribed if self._subscribe_samples else self.connected
            if not target.wait(wait):
                raise ConnectionError(f"not connected/subscribed to {self.url} within {wait:g} s")
        return self

    def stop(self, timeout: float = 5.0, disconnect: bool = True) -> None:
        """Flush what is queued (stored + acked), then disconnect (the Will is not sent on a clean stop)."""
        self.flush(timeout)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._writer.is_alive():
            self._writer.join(timeout)
        if disconnect:
            try:
                self.client.disconnect()
            except Exception:  # pragma: no cover - already gone
                pass
        self.client.loop_stop()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything received so far is stored and acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._writer.is_alive():
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on the trainer's connection (queued by paho while offline)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    # -- paho callbacks (network thread) ------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("broker %s refused the connection: %s", self.url, rc)
            return
        with self._cond:
            # Message ids of the previous connection mean nothing on this one: never ack them here.
            self._generation += 1
        session = bool(getattr(flags, "session_present", False))
        log.info("connected to %s (MQTT %s, session present: %s)", self.url, "5" if self.mqtt5 else "3.1.1", session)
        self.connected.set()
        if self._subscribe_samples:
            client.subscribe(self.subscription, qos=1)
        if self._on_connect_cb is not None:
            try:
                self._on_connect_cb(self)
            except Exception:
                log.exception("on_connect callback failed")

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, props: Any = None) -> None:
        codes = list(reason_codes) if isinstance(reason_codes, (list, tuple)) else [reason_codes]
        if any(getattr(c, "is_failure", False) for c in codes):
            log.error("subscription to %s refused: %s", self.subscription, codes)
            return
        log.info("subscribed to %s", self.subscription)
        self.subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from %s (%s); paho reconnects, unacked samples will be redelivered", self.url, rc)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        size = len(msg.payload)
        if msg.qos == 0 and (len(self._pending) >= self.queue_max or self._pending_bytes + size > self.queue_max_bytes):
            # A QoS 0 flood: the broker does not hold these for us, and keeping them would be unbounded.
            self._log_rejection("queue_full", f"{len(self._pending)} messages waiting", msg)
            with self._cond:
                self.stats.received += 1
                self._dropped[(None, "queue_full")] += 1
            return
        item: IncomingSample | None = None
        reason: str | None = None
        detail = ""
        device: str | None = None
        try:
            item = self._validate(msg)
            device = item.device
            if not self.buckets.take(device):
                item, reason, detail = None, "quota", f"device {device} is over its rate limit"
        except ProtocolError as e:
            reason, detail, device = e.reason, e.detail, getattr(e, "device", None)
        except Exception as e:  # a bug in validation must not kill the network thread
            reason, detail = "internal", repr(e)
            log.exception("unexpected error validating a message")
        if reason is not None:
            self._log_rejection(reason, detail, msg)
        with self._cond:
            self._pending.append(_Pending(msg.mid, msg.qos, self._generation, item, reason, device, size,
                                          time.monotonic()))
            self._pending_bytes += size
            self.stats.received += 1
            self._cond.notify()

    def _validate(self, msg: paho.MQTTMessage) -> IncomingSample:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            raise ProtocolError("bad_topic", "topic is not UTF-8") from None
        parsed = self.topics.parse(topic)
        if parsed.kind != "samples":
            raise ProtocolError("bad_topic", f"{topic!r} is not a samples topic")
        payload = msg.payload
        if len(payload) > self.max_message_bytes:
            raise ProtocolError("too_large", f"{len(payload)} bytes > {self.max_message_bytes}")
        decoded = decode_message(payload, self.max_message_bytes, max_body=self.max_body)
        if not isinstance(decoded.msg, Sample):
            raise ProtocolError("unknown_type", f"{decoded.header.type} on a samples topic")
        if decoded.header.device != parsed.device:
            # The topic is what broker ACLs pin to a device's credentials; a header that disagrees is forged.
            raise _from(parsed.device, "bad_topic", f"header device {decoded.header.device!r} on topic of "
                        f"{parsed.device!r}")
        if self.max_image_size is not None:
            try:
                w, h = image_size(decoded.body, decoded.header.content_type)
            except ImageRejected as e:
                raise _from(parsed.device, e.reason, e.detail) from None
            max_w, max_h = self.max_image_size
            if w > max_w or h > max_h:
                raise _from(parsed.device, "image_too_large", f"{w}x{h} pixels; at most {max_w}x{max_h}")
        return sample_from_decoded(decoded.msg, decoded.header, decoded.body)

    def queue_depth(self) -> tuple[int, int]:
        """(messages, bytes) received and not yet stored + acknowledged."""
        return len(self._pending), self._pending_bytes

    def oldest_wait(self) -> float:
        """Seconds the oldest message not yet stored + acknowledged has waited (0 when none waits)."""
        with self._cond:
            t = self._writing_since if self._writing_since is not None else None
            if self._pending:
                t = self._pending[0].received if t is None else min(t, self._pending[0].received)
        return 0.0 if t is None else time.monotonic() - t

    def _log_rejection(self, reason: str, detail: str, msg: paho.MQTTMessage) -> None:
        n = self._log_counts[reason] = self._log_counts[reason] + 1
        if n <= 10 or n % 1000 == 0:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = "<non-UTF-8 topic>"
            log.warning("rejected message on %s (%d bytes): %s: %s%s", topic, len(msg.payload), reason, detail[:300],
                        f" [{n} so far]" if n > 1 else "")

    # -- writer thread -------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._pending and not self._stop.is_set():
                self._cond.wait(0.1)
            if not self._pending:
                return None
            if self.linger_s > 0 and len(self._pending) < self.batch_max:
                deadline = time.monotonic() + min(self.linger_s, self.max_delay_s or self.linger_s)
                while len(self._pending) < self.batch_max and not self._stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = self._pending[: self.batch_max]
            del self._pending[: self.batch_max]
            self._pending_bytes -= sum(p.size for p in batch)
            self._writing_since = batch[0].received
            self._busy = True
            return batch

    def _write_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            items = [p.item for p in batch if p.item is not None]
            with self._cond:
                dropped, self._dropped = self._dropped, Counter()
            by_device: Counter[tuple[str, str]] = Counter(
                (p.device, p.reason) for p in batch if p.reason is not None and p.device is not None)
            rejections = Counter(p.reason for p in batch if p.reason is not None)
            for (_, reason), n in dropped.items():
                rejections[reason] += n
            result = self._store(items, rejections, by_device)
            if result is None:  # stopping while the store could not be written: nothing acked, nothing lost
                with self._cond:
                    self._busy = False
                    self._writing_since = None
                    self._cond.notify_all()
                return
            self._ack(batch)
            with self._cond:
                self.stats.stored += result.stored
                self.stats.duplicates += result.duplicates
                self.stats.rejected.update(rejections)
                self.stats.quota_by_device.update({d: n for (d, r), n in by_device.items() if r == "quota"})
                self.stats.batches += 1
                self._busy = False
                self._writing_since = None
                self._cond.notify_all()
            if result.duplicates:
                log.debug("%d duplicate samples (already stored) acknowledged", result.duplicates)
            if self._on_stored is not None and result.stored:
                try:
                    self._on_stored(result.stored)
                except Exception:
                    log.exception("on_stored callback failed")

    def _store(self, items: list[IncomingSample], rejections: Counter[str],
               by_device: Counter[tuple[str, str]]) -> Any:
        """``store.add_batch`` until it succeeds (None if stopped first). While it fails (a full disk, an I/O
        error) nothing is acknowledged, so the broker keeps the samples; ``degraded`` says why, and clears
        when a write succeeds again."""
        backoff = 0.05
        while True:
            try:
                result = self.store.add_batch(items, rejections, by_device) if by_device else \
                    self.store.add_batch(items, rejections)
            except Exception as e:
                self.stats.write_errors += 1
                reason = describe_write_error(e)
                if reason != self.degraded:
                    log.error("cannot store %d samples: %s; not acknowledging them (the broker keeps them), "
                              "retrying", len(items), reason)
                    self._set_degraded(reason)
                if self._stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, 5.0)
                continue
            if self.degraded is not None:
                log.warning("storing samples again after %d failed writes (%s)", self.stats.write_errors, self.degraded)
                self._set_degraded(None)
            return result

    def _set_degraded(self, reason: str | None) -> None:
        self.degraded = reason
        if self._on_degraded is not None:
            try:
                self._on_degraded(reason)
            except Exception:
                log.exception("on_degraded callback failed")

    def _ack(self, batch: list[_Pending]) -> None:
        """PUBACK in arrival order, only for messages of the current connection (old mids are stale)."""
        gen = self._generation
        current = [p for p in batch if p.qos > 0 and p.generation == gen]
        ack_many(self.client, [p.mid for p in current if p.qos == 1])  # one write for the batch
        for p in current:
            if p.qos == 2:  # PUBCOMP: the trainer subscribes at QoS 1, a QoS 2 grant is not expected
                self.client.ack(p.mid, p.qos)
        self.stats.acked += len(current)


def _from(device: str | None, reason: str, detail: str) -> ProtocolError:
    """A rejection that knows its sender (the topic's device), so it is also counted per device."""
    e = ProtocolError(reason, detail)
    e.device = device  # type: ignore[attr-defined]
    return e
