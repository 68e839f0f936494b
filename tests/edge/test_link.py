"""edge.link.Link's bookkeeping of acknowledged samples: every PUBACK deletes its outbox row and counts as an
upload, whichever thread wins the race, and a sample handed to paho while the connection was down counts too.

Both used to leave a delivered sample's row in the outbox for good (it went out again only at the next start):
the transport benchmark's edge-link phase then waited for uploads that never counted (issue 12).
"""
from __future__ import annotations

import time
from pathlib import Path

from deploy.broker import Broker
from edge.link import Link
from edge.outbox import Outbox
from protocol.topics import Topics


def _link(url: str, outbox: Outbox, prefix: str) -> Link:
    return Link(device_id="cam-1", url=url, topics=Topics(prefix), outbox=outbox, boot=1, birth=lambda: b"{}",
                wait_for_trainer=False)


class _PublishedOnSecondLook:
    """A paho message info whose PUBACK lands while the pump is looking at it: paho calls ``on_publish`` (which
    wakes the pump) before it marks the info published, so the pump's first look says "not yet"."""

    def __init__(self) -> None:
        self.looks = 0

    def is_published(self) -> bool:
        self.looks += 1
        return self.looks > 1


def test_an_ack_that_lands_while_the_pump_collects_is_not_lost(tmp_path: Path, topic_prefix: str) -> None:
    with Outbox(tmp_path / "outbox.db") as outbox:
        link = _link("mqtt://127.0.0.1:1", outbox, topic_prefix)  # never started: no network
        outbox.put("s-1", f"{topic_prefix}/dev/cam-1/samples", b"x")
        item = outbox.peek_batch(1)[0]
        outbox.mark_inflight(item.id, 7)
        link._inflight_items.append((_PublishedOnSecondLook(), item.id))  # type: ignore[arg-type]
        link._collect_acks()  # first look: not yet published, stays in flight
        assert link.uploads == 0 and link._inflight() == 1
        link._collect_acks()  # second look: published -> row deleted, counted
        assert link.uploads == 1 and link._inflight() == 0
        assert outbox.depth == 0


def test_a_sample_published_while_disconnected_counts_once_paho_resends_it(
        mosquitto_broker: Broker, tmp_path: Path, topic_prefix: str) -> None:
    """The pump checked "connected", then the connection dropped before its publish: paho returns NO_CONN, keeps
    the message and sends it after the reconnect. Its info keeps rc NO_CONN, on which ``is_published()`` raises;
    the pump must still see the PUBACK, delete the row and count the upload (not fail on every round)."""
    with Outbox(tmp_path / "outbox.db") as outbox:
        link = _link(mosquitto_broker.url, outbox, topic_prefix)
        outbox.put("s-1", f"{topic_prefix}/dev/cam-1/samples", b"x")
        link._connected.set()  # what the pump saw just before the connection dropped
        link._pump_once()      # paho has no socket yet: NO_CONN, queued by paho
        assert link._inflight() == 1 and outbox.stats()["inflight"] == 1
        link._connected.clear()
        link.start()  # connects; paho re-sends the queued QoS 1 message
        try:
            deadline = time.monotonic() + 10
            while link.uploads < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert link.uploads == 1
            assert outbox.depth == 0
        finally:
            link.stop(timeout=1)
