"""The device's MQTT link: drains the durable outbox to the broker and carries the device's presence.

Samples are never handed to paho straight from the frame loop: the loop writes them to the SQLite outbox
(committed) and this link publishes them with QoS 1 from a pump thread, keeping at most ``window`` in flight,
and deletes a row only from paho's ``on_publish`` (the broker's PUBACK). Within one process paho itself
re-sends un-acknowledged QoS 1 messages after a reconnect; across a crash or ``kill -9`` the rows are still
in the outbox and go out again at the next start. A redelivered sample carries the same sample id, so the
trainer stores it once.

Presence follows Sparkplug's idea: the MQTT Will publishes ``state = offline`` (retained, plain JSON) with the
boot counter, and every (re)connect publishes ``state = online`` and the retained birth message again.

The hold (``wait_for_trainer``): a broker acknowledges a QoS 1 sample and then discards it when nobody
subscribes to it yet, and the PUBACK already deleted the row. On a fresh site whose cameras start before the
trainer ever connected, those samples would be lost silently. The trainer's persistent session (clean session
off) queues samples for it from its first connection on, and every connection publishes the retained
``trainer/state`` (and leaves a retained Will), so any retained trainer state on the broker proves the session
exists. Until the link has seen one, the pump sends nothing and samples wait in the (bounded) outbox; stats,
state, birth and verdicts are not held.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import paho.mqtt.client as paho

from edge.outbox import Outbox, OutboxWriteError
from protocol.mqtt import certificate_identity, make_client, parse_url, resolve_tls
from protocol.reports import State, encode_report
from protocol.topics import Topics

log = logging.getLogger("edgeloop.edge.link")

Handler = Callable[[str, bytes], None]


class Link:
    """One paho client per device. Thread model: paho's loop thread + one pump thread; both are daemons.

    ``birth`` is called on every connect and returns the encoded birth payload (it changes when the model
    does). Handlers registered with ``subscribe`` run on paho's thread and must return quickly.
    """

    def __init__(self, *, device_id: str, url: str, topics: Topics, outbox: Outbox, boot: int,
                 birth: Callable[[], bytes], window: int = 32, keepalive: int = 30,
                 username: str | None = None, password: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, wait_for_trainer: bool = True) -> None:
        self.device_id = device_id
        self.topics = topics
        self.outbox = outbox
        self.boot = boot
        self._birth = birth
        self._window = max(1, window)
        self._subs: dict[str, int] = {}
        self.on_message: Handler | None = None            # set by the node: routes incoming messages
        self.on_connected: list[Callable[[], None]] = []   # run after every (re)connect (resubscriptions)
        self._lock = threading.Lock()
        # Samples handed to paho and not yet acknowledged. paho marks an info as published when the PUBACK
        # arrives; matching on the info object (not on mids) has no race with publish() and no mid reuse.
        self._inflight_items: list[tuple[paho.MQTTMessageInfo, int]] = []
        self._unacked: list[int] = []     # acknowledged by the broker, row not yet deleted (the disk was full)
        self._unmarked: set[int] = set()  # in flight, but the outbox could not record it (the disk was full)
        self.outbox_write_errors = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._seq = 0
        self.uploads = 0
        self.connects = 0
        self.disconnects = 0
        self._trainer_seen = threading.Event()  # a retained trainer state arrived: its session queues samples
        self._released = False
        self._connected_at = 0.0
        if wait_for_trainer:
            self._subs[topics.trainer_state()] = 1
        else:
            self._trainer_seen.set()

        u = parse_url(url)
        if username is not None:
            u = type(u)(**{**u.__dict__, "username": username, "password": password})
        ca_file, cert_file, key_file = resolve_tls(u, ca_file, cert_file, key_file)
        if cert_file and certificate_identity(cert_file) != device_id:
            # The broker knows the device by its certificate's CN and lets it write only dev/<CN>/#: with another
            # device_id every upload would be silently dropped by the ACL.
            raise ValueError(f"device_id {device_id!r} does not match the identity in {cert_file} "
                             f"({certificate_identity(cert_file)!r}); set device_id to the certificate's CN")
        will = (topics.state(device_id), self._state_payload("offline"), 1, True)
        self.client = make_client(device_id, u, will=will, protocol="3.1.1", keepalive=keepalive,
                                  ca=ca_file, cert=cert_file, key=key_file, max_inflight=self._window)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._pump = threading.Thread(target=self._pump_loop, name=f"edgeloop-link-{device_id}", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (in the background: a device may boot before its network) and draining."""
        if self.held:
            log.info("holding uploads until the trainer has connected to this broker once: a broker acknowledges "
                     "and discards samples nobody has subscribed to yet; samples wait in the outbox until a "
                     "retained %s appears (upload.wait_for_trainer: false turns this off)", self.topics.trainer_state())
        self.client.loop_start()
        self._pump.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Drain the outbox for up to ``timeout`` seconds, then publish ``offline`` and disconnect cleanly (a
        clean DISCONNECT suppresses the Will). What is left stays in the outbox for the next start."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self.is_connected and self._worth_draining() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        if self.is_connected:
            info = self.client.publish(self.topics.state(self.device_id), self._state_payload("offline"), qos=1,
                                       retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self._wake.set()
        self.client.disconnect()
        self.client.loop_stop()
        self._pump.join(timeout=2)

    def _worth_draining(self) -> bool:
        if self._inflight():
            return True
        if not self.outbox.stats()["pending"]:
            return False
        # Held: the retained trainer state arrives just after the SUBACK, so a fresh connection gets a moment.
        return not self.held or time.monotonic() - self._connected_at < 1.0

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def held(self) -> bool:
        """True while samples wait for the first sign of the trainer on this broker (see the module doc)."""
        return not self._trainer_seen.is_set()

    # -- API for the node and the updater --------------------------------------------------------------------
    def notify(self) -> None:
        """The outbox has new rows: wake the pump."""
        self._wake.set()

    def subscribe(self, subs: list[tuple[str, int]]) -> None:
        """Subscribe now (if connected) and again after every reconnect; one SUBSCRIBE packet for the list."""
        new = [(t, q) for t, q in subs if self._subs.get(t) != q]
        self._subs.update(dict(subs))
        if new and self.is_connected:
            self.client.subscribe(new)

    def unsubscribe(self, topics: list[str]) -> None:
        gone = [t for t in topics if self._subs.pop(t, None) is not None]
        if gone and self.is_connected:
            self.client.unsubscribe(gone)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Publish a non-durable message (stats, model status). Never blocks on the network: QoS 1 messages
        published while offline wait in paho's bounded queue; QoS 0 ones are dropped."""
        if not self.is_connected and qos == 0:
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)

    def announce(self) -> None:
        """Publish the retained birth again now (it names the model, which changed); connects do it anyway."""
        if self.is_connected:
            try:
                self.client.publish(self.topics.birth(self.device_id), self._birth(), qos=1, retain=True)
            except Exception:
                log.exception("could not publish birth message")

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def stats(self) -> dict[str, int | bool]:
        return {"connected": self.is_connected, "uploads": self.uploads, "connects": self.connects,
                "disconnects": self.disconnects, "inflight": self._inflight(), "waiting_for_trainer": self.held}

    # -- internals --------------------------------------------------------------------------------------------
    def _state_payload(self, state: str) -> bytes:
        return encode_report(State(device=self.device_id, state=state, boot=self.boot))

    def _inflight(self) -> int:
        with self._lock:
            return len(self._inflight_items)

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason_code: object,
                    properties: object = None) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("broker refused the connection: %s", reason_code)
            return
        self.connects += 1
        self._connected_at = time.monotonic()
        log.info("connected to broker (connect #%d)", self.connects)
        client.publish(self.topics.state(self.device_id), self._state_payload("online"), qos=1, retain=True)
        try:
            client.publish(self.topics.birth(self.device_id), self._birth(), qos=1, retain=True)
        except Exception:  # a birth that cannot be built must not stop the samples
            log.exception("could not publish birth message")
        if self._subs:
            client.subscribe(list(self._subs.items()))
        self._connected.set()
        for callback in self.on_connected:
            try:
                callback()
            except Exception:
                log.exception("on-connect callback failed")
        self._wake.set()

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason_code: object,
                       properties: object = None) -> None:
        self._connected.clear()
        self.disconnects += 1
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); paho reconnects with backoff, the outbox keeps samples",
                        reason_code)

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason_code: object = None,
                    properties: object = None) -> None:
        if self._inflight_items:  # a sample's PUBACK (QoS 0 verdicts and stats end here too: nothing to do)
            self._wake.set()  # the pump deletes acknowledged rows; SQLite work stays off paho's thread

    def _collect_acks(self) -> None:
        # One look at each info: paho marks it published on its own thread (after on_publish has woken this
        # pump), so asking twice could see "not yet" for the done list and "published" for the keep list, and
        # drop an acknowledged sample from both: its row would stay in the outbox and never count as uploaded.
        done: list[int] = []
        with self._lock:
            keep = []
            for info, item_id in self._inflight_items:
                if info.is_published():
                    done.append(item_id)
                else:
                    keep.append((info, item_id))
            self._inflight_items = keep
        done, self._unacked = self._unacked + done, []
        for n, item_id in enumerate(done):
            try:
                deleted = self.outbox.ack(item_id)
            except OutboxWriteError as exc:
                # Delivered, but the row cannot be deleted yet: retry on the next round (kept in memory; after a
                # restart it would go out once more, which the sample id makes harmless).
                self._unacked = done[n:]
                self._write_failed(exc)
                return
            self._unmarked.discard(item_id)
            if deleted:
                self.uploads += 1

    def _write_failed(self, exc: Exception) -> None:
        self.outbox_write_errors += 1
        if self.outbox_write_errors == 1 or self.outbox_write_errors % 100 == 0:
            log.error("%s (%d outbox write errors so far); uploads continue, acknowledged rows are deleted when "
                      "the disk has room again", exc, self.outbox_write_errors)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic == self.topics.trainer_state():
            self._trainer_state(message.payload)
            return
        handler = self.on_message
        if handler is None:
            return
        try:
            handler(message.topic, message.payload)
        except Exception:  # bad input from the network never kills the link
            log.exception("handler failed on a message for %s", message.topic)

    def _trainer_state(self, payload: bytes) -> None:
        """Any non-empty trainer state (online, offline, degraded) proves the session; an empty retained
        message only clears the topic."""
        if payload and self.held:
            self._trainer_seen.set()
            self._released = True  # logged by the pump: SQLite work stays off paho's thread
            self._wake.set()

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception:  # the pump must outlive any one failure; what it did not send stays in the outbox
                log.exception("outbox pump failed; retrying in 1 s")
                self._stop.wait(1.0)
        try:
            self._collect_acks()
        except Exception:
            log.exception("could not record the last acknowledgements; those samples go out again at next start")

    def _pump_once(self) -> None:
        self._collect_acks()
        if not self.is_connected or self.held:
            return
        if self._released:
            self._released = False
            log.info("trainer seen on the broker (%s): uploads released, %d samples waiting in the outbox",
                     self.topics.trainer_state(), self.outbox.depth)
        room = self._window - self._inflight()
        if room <= 0:
            return
        for item in self.outbox.peek_batch(room + len(self._unmarked)):
            if self._stop.is_set() or not self.is_connected or room <= 0:
                break
            if item.id in self._unmarked:
                continue  # already in flight; only its mark is missing
            info = self.client.publish(item.topic, item.payload, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                log.warning("publish of sample %s failed (rc=%s); it stays in the outbox", item.sample_id, info.rc)
                break
            if info.rc == paho.MQTT_ERR_NO_CONN:
                # paho keeps the QoS 1 message and sends it after the reconnect, so it is in flight; but the info
                # keeps rc NO_CONN, and is_published() raises on it even after the PUBACK: record that it is queued.
                info.rc = paho.MQTT_ERR_SUCCESS
            with self._lock:
                self._inflight_items.append((info, item.id))
            room -= 1
            try:
                self.outbox.mark_inflight(item.id, info.mid)
            except OutboxWriteError as exc:
                self._unmarked.add(item.id)
                self._write_failed(exc)
