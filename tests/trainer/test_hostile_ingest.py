"""Hostile input through real ingestion (mosquitto): each class of bad input gets a clear, counted rejection,
nothing wedges, and an honest device's sample cannot be suppressed by another device."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest

from protocol.envelope import decode as envelope_decode, encode as envelope_encode
from protocol.messages import Sample, encode_message
from protocol.mqtt import make_client, start
from protocol.topics import Topics
from trainer.ingest import Ingestor, TokenBuckets
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import png  # noqa: E402
from test_hostile_images import png_bomb  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def _sample(sid: str, seq: int = 0, p_select: float = 0.4, width: int = 16, height: int = 16) -> Sample:
    return Sample(sample_id=sid, model_version="v0001", topk=[("red", 0.55), ("green", 0.45)], uncertainty=0.1,
                  uncertainty_kind="margin", p_select=p_select, reason="uncertain", frame_index=seq, width=width,
                  height=height, truth="red")


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture()
def rig(mosquitto_broker, topic_prefix: str, tmp_path: Path):
    t = Topics(topic_prefix)
    store = SampleStore(tmp_path / "store")
    made: list = []

    def ingestor(**kw) -> Ingestor:
        ing = Ingestor(store, mosquitto_broker.url, topics=t, client_id=f"tr-{topic_prefix[-8:]}-{len(made)}", **kw)
        made.append(ing.start())
        return ing

    pub = make_client(f"pub-{topic_prefix[-8:]}", mosquitto_broker.url)
    start(pub)
    yield t, store, ingestor, pub
    pub.disconnect()
    pub.loop_stop()
    for ing in made:
        ing.stop()
    store.close()


def test_poison_p_select_is_a_schema_rejection(rig) -> None:
    """p_select = 1e-50 passed "> 0" and wedged training; it is below the schema's floor now."""
    t, store, ingestor, pub = rig
    ing = ingestor()
    good = encode_message(_sample("ok1"), png("red", np.random.default_rng(0)), device="cam1", seq=1,
                          content_type="image/png")
    header, body = envelope_decode(good)
    header["msg"]["p_select"] = 1e-50  # what a hostile or broken sender writes (encode_message refuses it)
    poisoned = envelope_encode(header, body)
    pub.publish(t.samples("cam1"), poisoned, qos=1)
    pub.publish(t.samples("cam1"), good, qos=1)
    _wait(lambda: store.count() == 1 and ing.stats.received == 2)
    assert ing.stats.rejected == {"schema": 1}
    assert store.device_rejections() == {}  # a schema failure's sender is only the topic's claim: counted overall


def test_png_bomb_is_rejected_before_it_is_stored(rig) -> None:
    t, store, ingestor, pub = rig
    ing = ingestor(max_image_size=(4096, 4096))
    bomb = png_bomb()
    pub.publish(t.samples("cam1"), encode_message(_sample("bomb", width=13_000, height=13_000), bomb, device="cam1",
                                                  seq=1, content_type="image/png"), qos=1)
    pub.publish(t.samples("cam1"), encode_message(_sample("junk", seq=2), b"not an image at all", device="cam1",
                                                  seq=2, content_type="image/png"), qos=1)
    _wait(lambda: ing.stats.received == 2 and ing.flush())
    assert store.count() == 0
    assert ing.stats.rejected == {"image_too_large": 1, "bad_image": 1}
    assert store.device_rejections() == {"cam1": {"bad_image": 1, "image_too_large": 1}}
    assert ing.stats.acked == 2  # acknowledged: the broker does not redeliver them


def test_a_device_cannot_suppress_another_devices_sample(rig) -> None:
    """Device A squats device B's next id (cam-b.1.7) on its own topic; B's real sample is still stored, and
    the id alone (label API, CSV import) names B's sample."""
    t, store, ingestor, pub = rig
    ing = ingestor()
    rng = np.random.default_rng(1)
    pub.publish(t.samples("cam-a"), encode_message(_sample("cam-b.1.7"), png("green", rng), device="cam-a", seq=1,
                                                   content_type="image/png"), qos=1)
    _wait(lambda: store.count() == 1)
    real = png("red", rng)
    pub.publish(t.samples("cam-b"), encode_message(_sample("cam-b.1.7"), real, device="cam-b", seq=7,
                                                   content_type="image/png"), qos=1)
    _wait(lambda: store.count() == 2)
    assert ing.stats.duplicates == 0
    assert store.get("cam-b.1.7").device == "cam-b" and store.image("cam-b.1.7")[0] == real
    assert store.get("cam-b.1.7", device="cam-a").device == "cam-a"
    assert store.set_label("cam-b.1.7", "red", "test")
    assert store.get("cam-b.1.7", device="cam-b").label == "red" and store.get("cam-b.1.7", device="cam-a").label is None
    # the same device sending the same id again is a duplicate (a QoS 1 redelivery)
    pub.publish(t.samples("cam-b"), encode_message(_sample("cam-b.1.7"), real, device="cam-b", seq=7,
                                                   content_type="image/png"), qos=1)
    _wait(lambda: ing.stats.duplicates == 1)


def test_header_device_must_match_the_topic(rig) -> None:
    t, store, ingestor, pub = rig
    ing = ingestor()
    pub.publish(t.samples("cam-a"), encode_message(_sample("cam-b.1.1"), png("red", np.random.default_rng(2)),
                                                   device="cam-b", seq=1, content_type="image/png"), qos=1)
    _wait(lambda: ing.stats.received == 1 and ing.flush())
    assert store.count() == 0 and ing.stats.rejected == {"bad_topic": 1}
    assert store.device_rejections() == {"cam-a": {"bad_topic": 1}}  # counted against the topic's device


def test_over_quota_samples_are_rejected_counted_per_device_and_acknowledged(rig) -> None:
    t, store, ingestor, pub = rig
    ing = ingestor(device_rate=0.001, device_burst=3)
    rng = np.random.default_rng(3)
    img = png("red", rng)
    for i in range(6):
        pub.publish(t.samples("noisy"), encode_message(_sample(f"noisy.1.{i}", seq=i), img, device="noisy", seq=i,
                                                       content_type="image/png"), qos=1)
    pub.publish(t.samples("quiet"), encode_message(_sample("quiet.1.0"), img, device="quiet", seq=0,
                                                   content_type="image/png"), qos=1)
    _wait(lambda: ing.stats.received == 7 and ing.flush())
    assert store.count() == 4  # 3 of noisy (its burst), 1 of quiet
    assert ing.stats.rejected == {"quota": 3} and ing.stats.quota_by_device == {"noisy": 3}
    assert store.device_rejections() == {"noisy": {"quota": 3}}
    assert ing.stats.acked == 7  # acknowledged, so the broker does not hand them back for ever


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    b = TokenBuckets(rate=2.0, burst=2, clock=lambda: now[0])
    assert [b.take("d") for _ in range(3)] == [True, True, False]
    now[0] += 0.5  # one token back
    assert [b.take("d") for _ in range(2)] == [True, False]
    assert b.take("other")  # every device has its own bucket
    assert TokenBuckets(rate=None, burst=1).take("d")  # None = no limit


def _msg(topic: str, payload: bytes, qos: int, mid: int) -> paho.MQTTMessage:
    m = paho.MQTTMessage(mid=mid, topic=topic.encode())
    m.payload, m.qos = payload, qos
    return m


def test_ingest_queue_is_bounded_for_qos0_floods(tmp_path: Path) -> None:
    """With the writer stuck (a full disk, say), a QoS 0 flood stops at queue_max and the rest is counted as
    queue_full; QoS 1 is bounded by the receive maximum announced to the broker."""
    t = Topics("bound/test")
    with SampleStore(tmp_path / "store") as store:
        blocked = threading.Event()
        real = store.add_batch

        def stuck(items, rejections=None, *args):
            blocked.wait(30)
            return real(items, rejections, *args)

        store.add_batch = stuck  # type: ignore[method-assign]
        ing = Ingestor(store, "mqtt://127.0.0.1:1", topics=t, protocol="5", queue_max=50, client_id="bound")
        assert ing.client._connect_properties.ReceiveMaximum == 50  # QoS 1 window = queue bound
        ing._writer.start()  # no network: feed the callback directly
        payload = encode_message(_sample("d.1.0"), png("red", np.random.default_rng(4)), device="d", seq=0,
                                 content_type="image/png")
        for i in range(500):
            ing._on_message(ing.client, None, _msg(t.samples("d"), payload, 0, i))
            assert ing.queue_depth()[0] <= 50
        assert ing.stats.received == 500
        blocked.set()
        assert ing.flush(20)
        ing.stop(disconnect=False)
        dropped = ing.stats.rejected["queue_full"]
        assert dropped >= 500 - 2 * 50  # at most one full queue in the stuck writer and one waiting
        assert store.rejections()["queue_full"] == dropped
        assert store.count() == 1  # the rest were the same sample: duplicates


def test_garbage_never_wedges_ingestion(rig) -> None:
    """A mix of every rejection class, then a good sample: it still arrives."""
    t, store, ingestor, pub = rig
    ing = ingestor()
    img = png("red", np.random.default_rng(5))
    junk = [b"", b"\x00" * 100, b"ELP\x01\xff\xff\xff\xff", envelope_encode({"type": "sample"}, b""),
            envelope_encode({"type": "sample", "schema": 1, "id": "x", "device": "cam1", "seq": 0, "ts": 0,
                             "content_type": "image/png", "msg": {"sample_id": "a" * 10_000}}, img)]
    for payload in junk:
        pub.publish(t.samples("cam1"), payload, qos=1)
    pub.publish(t.samples("cam1"), encode_message(_sample("cam1.1.1"), img, device="cam1", seq=1,
                                                  content_type="image/png"), qos=1)
    _wait(lambda: store.get("cam1.1.1") is not None)
    assert sum(ing.stats.rejected.values()) == len(junk)
