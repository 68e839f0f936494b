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
are acknowledged too (redelivering garbage helps nobody), counted per reason (in memory and in the store)
and logged with their reason, rate-limited per reason.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from protocol.errors import ProtocolError
from protocol.messages import Sample, decode_message
from protocol.mqtt import certificate_identity, make_client, parse_url, resolve_tls
from protocol.topics import Topics

from .store import IncomingSample, SampleStore

log = logging.getLogger(__name__)

__all__ = ["Ingestor", "IngestStats", "sample_from_decoded"]


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received, "stored": self.stored, "duplicates": self.duplicates,
            "rejected": dict(self.rejected), "rejected_total": sum(self.rejected.values()),
            "batches": self.batches, "acked": self.acked, "write_errors": self.write_errors,
        }


@dataclass(slots=True)
class _Pending:
    mid: int
    qos: int
    generation: int
    item: IncomingSample | None
    reason: str | None


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
        on_connect: Callable[["Ingestor"], None] | None = None,
        on_stored: Callable[[int], None] | None = None,
        subscribe: bool = True,
    ) -> None:
        self.store = store
        self.topics = topics or Topics()
        self.max_message_bytes = int(max_message_bytes)
        self.max_body = {"sample": int(max_image_bytes)}
        self.batch_max = max(1, int(batch_max))
        self.linger_s = max(0.0, float(linger_ms) / 1000.0)
        self.max_delay_s = max(0.0, float(max_delay_ms) / 1000.0)
        self.stats = IngestStats()
        self._on_connect_cb = on_connect
        self._on_stored = on_stored
        self._subscribe_samples = subscribe
        self._pending: list[_Pending] = []
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
            ca=ca, cert=cert, key=key,
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
        item: IncomingSample | None = None
        reason: str | None = None
        detail = ""
        try:
            item = self._validate(msg)
        except ProtocolError as e:
            reason, detail = e.reason, e.detail
        except Exception as e:  # a bug in validation must not kill the network thread
            reason, detail = "internal", repr(e)
            log.exception("unexpected error validating a message")
        if reason is not None:
            self._log_rejection(reason, detail, msg)
        with self._cond:
            self._pending.append(_Pending(msg.mid, msg.qos, self._generation, item, reason))
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
            raise ProtocolError("bad_topic", f"header device {decoded.header.device!r} on topic of {parsed.device!r}")
        return sample_from_decoded(decoded.msg, decoded.header, decoded.body)

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
            self._busy = True
            return batch

    def _write_loop(self) -> None:
        backoff = 0.05
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            items = [p.item for p in batch if p.item is not None]
            rejections = Counter(p.reason for p in batch if p.reason is not None)
            while True:
                try:
                    result = self.store.add_batch(items, rejections)
                    backoff = 0.05
                    break
                except Exception:
                    # Disk full, I/O error...: keep the batch (unacked) and retry; the broker holds the rest.
                    self.stats.write_errors += 1
                    log.exception("storing a batch of %d samples failed; retrying in %.2fs", len(items), backoff)
                    if self._stop.wait(backoff):
                        with self._cond:
                            self._busy = False
                            self._cond.notify_all()
                        return
                    backoff = min(backoff * 2, 5.0)
            self._ack(batch)
            with self._cond:
                self.stats.stored += result.stored
                self.stats.duplicates += result.duplicates
                self.stats.rejected.update(rejections)
                self.stats.batches += 1
                self._busy = False
                self._cond.notify_all()
            if result.duplicates:
                log.debug("%d duplicate samples (already stored) acknowledged", result.duplicates)
            if self._on_stored is not None and result.stored:
                try:
                    self._on_stored(result.stored)
                except Exception:
                    log.exception("on_stored callback failed")

    def _ack(self, batch: list[_Pending]) -> None:
        """PUBACK in arrival order, only for messages of the current connection (old mids are stale)."""
        gen = self._generation
        acked = 0
        for p in batch:
            if p.qos > 0 and p.generation == gen:
                self.client.ack(p.mid, p.qos)
                acked += 1
        self.stats.acked += acked
