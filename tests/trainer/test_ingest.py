"""Ingestion against a real mosquitto: validation, rejection reasons, dedup, durable-then-ack, session resume."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.envelope import encode as envelope_encode
from protocol.messages import Sample, encode_message
from protocol.mqtt import make_client, start
from protocol.topics import Topics
from trainer.ingest import Ingestor
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import png  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _sample(sid: str, truth: str = "red", seq: int = 0) -> Sample:
    return Sample(sample_id=sid, model_version="v0001", topk=[("red", 0.55), ("green", 0.45)], uncertainty=0.1,
                  uncertainty_kind="margin", p_select=0.4, reason="uncertain", frame_index=seq, width=16, height=16,
                  truth=truth)


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _publisher(url: str, name: str):
    c = make_client(name, url)
    start(c)
    return c


def test_valid_bad_and_duplicate_samples(mosquitto_broker, topic_prefix: str, tmp_path: Path) -> None:
    t = Topics(topic_prefix)
    rng = np.random.default_rng(0)
    with SampleStore(tmp_path) as st:
        ing = Ingestor(st, mosquitto_broker.url, topics=t, client_id=f"tr-{topic_prefix[-6:]}",
                       max_image_bytes=64 * 1024).start()
        assert ing.mqtt5 and ing.subscription.startswith("$share/trainers/")
        pub = _publisher(mosquitto_broker.url, f"pub-{topic_prefix[-6:]}")
        img = png("red", rng)
        good = encode_message(_sample("s1"), img, device="cam1", seq=1, content_type="image/png")
        msgs = [
            (t.samples("cam1"), good),
            (t.samples("cam1"), good),  # QoS 1 redelivery / edge retry: stored once
            (t.samples("cam1"), encode_message(_sample("s2", "green", 2), png("green", rng), device="cam1", seq=2,
                                               content_type="image/png")),
            (t.samples("cam1"), b"not an envelope at all"),  # malformed
            (t.samples("cam1"), encode_message(_sample("s3", seq=3), b"\x89PNG" + b"x" * 70_000, device="cam1",
                                               seq=3, content_type="image/png")),  # oversized image
            (t.samples("cam1"), envelope_encode({"type": "sample", "schema": 1, "id": "ab", "device": "cam1",
                                                 "seq": 4, "ts": 1.0, "content_type": "image/png",
                                                 "msg": {"sample_id": "s4"}}, img)),  # wrong schema
            (t.samples("cam1"), envelope_encode({"type": "state", "schema": 1, "id": "ac", "device": "cam1",
                                                 "seq": 5, "ts": 1.0, "content_type": "none",
                                                 "msg": {"state": "online", "boot": 1}})),  # wrong type
            (t.samples("cam2"), encode_message(_sample("s6", seq=6), img, device="cam1", seq=6,
                                               content_type="image/png")),  # forged device
        ]
        for topic, payload in msgs:
            pub.publish(topic, payload, qos=1)
        _wait(lambda: ing.stats.received >= len(msgs))
        assert ing.flush()
        assert st.count() == 2 and st.get("s1").p_select == pytest.approx(0.4)
        assert st.image("s1")[0] == img
        assert ing.stats.duplicates == 1 and ing.stats.stored == 2
        assert ing.stats.rejected == {"bad_magic": 1, "too_large": 1, "schema": 1, "unknown_type": 1, "bad_topic": 1}
        assert st.rejections() == dict(ing.stats.rejected)  # persisted with the batch
        assert ing.stats.acked == len(msgs)  # rejected ones are acknowledged too: redelivering garbage helps nobody
        assert st.devices()["cam1"]["duplicates"] == 1
        # still alive and ingesting after all that
        pub.publish(t.samples("cam1"), encode_message(_sample("s7", seq=7), img, device="cam1", seq=7,
                                                      content_type="image/png"), qos=1)
        _wait(lambda: st.get("s7") is not None)
        pub.disconnect()
        pub.loop_stop()
        ing.stop()


def test_samples_published_while_trainer_is_away_arrive_after_restart(mosquitto_broker, topic_prefix: str,
                                                                       tmp_path: Path) -> None:
    """A fixed client id + persistent session: the broker keeps QoS 1 samples for the trainer."""
    t = Topics(topic_prefix)
    rng = np.random.default_rng(1)
    cid = f"tr2-{topic_prefix[-6:]}"
    with SampleStore(tmp_path) as st:
        Ingestor(st, mosquitto_broker.url, topics=t, client_id=cid).start().stop()
        pub = _publisher(mosquitto_broker.url, f"pub2-{topic_prefix[-6:]}")
        for i in range(5):
            pub.publish(t.samples("cam9"), encode_message(_sample(f"w{i}", seq=i), png("red", rng), device="cam9",
                                                          seq=i, content_type="image/png"), qos=1).wait_for_publish(5)
        ing = Ingestor(st, mosquitto_broker.url, topics=t, client_id=cid).start()
        _wait(lambda: st.count() == 5)
        assert st.devices()["cam9"]["gaps"] == 0
        pub.disconnect()
        pub.loop_stop()
        ing.stop()


def test_store_failure_is_retried_and_nothing_is_acked_before_it_is_stored(mosquitto_broker, topic_prefix: str,
                                                                            tmp_path: Path) -> None:
    t = Topics(topic_prefix)
    rng = np.random.default_rng(2)
    with SampleStore(tmp_path) as st:
        real = st.add_batch
        calls = {"n": 0}

        def flaky(items, rejections=None):
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("disk full (simulated)")
            return real(items, rejections)

        st.add_batch = flaky  # type: ignore[method-assign]
        ing = Ingestor(st, mosquitto_broker.url, topics=t, client_id=f"tr3-{topic_prefix[-6:]}").start()
        acks = []
        from trainer import ingest as ingest_mod
        real_ack_many = ingest_mod.ack_many
        ingest_mod.ack_many = lambda client, mids: (acks.extend((m, st.count()) for m in mids),  # type: ignore
                                                    real_ack_many(client, mids))[1]
        pub = _publisher(mosquitto_broker.url, f"pub3-{topic_prefix[-6:]}")
        pub.publish(t.samples("cam1"), encode_message(_sample("f1"), png("red", rng), device="cam1", seq=0,
                                                      content_type="image/png"), qos=1)
        _wait(lambda: st.get("f1") is not None and acks)
        assert ing.stats.write_errors == 1
        assert acks[0][1] == 1  # the ack went out when the sample was already in the store
        ingest_mod.ack_many = real_ack_many
        pub.disconnect()
        pub.loop_stop()
        ing.stop()


def test_ack_many_acknowledges_a_batch_in_one_write_and_the_broker_forgets_exactly_those(
        mosquitto_broker, topic_prefix: str) -> None:
    """Five QoS 1 messages, the first three PUBACKed with ack_many: after a reconnect to the same session the
    broker redelivers the other two, and only those (a wrong byte would also have cost the connection)."""
    import threading

    from protocol.mqtt import ack_many

    topic = f"{topic_prefix}/ack-many"
    got: list[tuple[int, bytes, bool]] = []
    cond = threading.Condition()

    def subscriber(cid: str):
        c = make_client(cid, mosquitto_broker.url, clean_start=False)
        c.manual_ack_set(True)

        def on_message(client, userdata, m):
            with cond:
                got.append((m.mid, m.payload, bool(m.dup)))
                cond.notify_all()

        c.on_message = on_message
        c.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
        start(c)
        return c

    cid = f"ackmany-{topic_prefix[-6:]}"
    sub = subscriber(cid)
    time.sleep(0.3)  # the subscription is in place
    pub = _publisher(mosquitto_broker.url, f"pubam-{topic_prefix[-6:]}")
    for i in range(5):
        pub.publish(topic, f"m{i}".encode(), qos=1).wait_for_publish(5)
    with cond:
        assert cond.wait_for(lambda: len(got) == 5, 10), got
    ack_many(sub, [mid for mid, _, _ in got[:3]])
    time.sleep(0.5)  # the PUBACKs reach the broker
    assert sub.is_connected()
    sub.disconnect()
    sub.loop_stop()
    got.clear()
    sub = subscriber(cid)
    with cond:
        assert cond.wait_for(lambda: len(got) >= 2, 10), got
    time.sleep(0.5)
    assert sorted(p for _, p, _ in got) == [b"m3", b"m4"]
    sub.disconnect()
    sub.loop_stop()
    pub.disconnect()
    pub.loop_stop()


def test_mqtt311_broker_plain_subscription(amqtt_broker, topic_prefix: str, tmp_path: Path) -> None:
    """The pure-Python fallback broker speaks 3.1.1 only: no shared subscription, same behaviour."""
    t = Topics(topic_prefix)
    with SampleStore(tmp_path) as st:
        ing = Ingestor(st, amqtt_broker.url, topics=t, client_id=f"tr4-{topic_prefix[-6:]}").start()
        assert not ing.mqtt5 and ing.subscription == t.all_samples()
        pub = _publisher(amqtt_broker.url, f"pub4-{topic_prefix[-6:]}")
        pub.publish(t.samples("cam1"), encode_message(_sample("a1"), png("red", np.random.default_rng(3)),
                                                      device="cam1", seq=0, content_type="image/png"), qos=1)
        pub.publish(t.samples("cam1"), b"junk", qos=1)
        _wait(lambda: ing.stats.received >= 2)
        assert ing.flush() and st.count() == 1 and st.rejections() == {"bad_magic": 1}
        pub.disconnect()
        pub.loop_stop()
        ing.stop()
