"""trainer/announce.py over a real mosquitto: promoted versions go on the broker with their bytes (chunks, then
the notice), the broker keeps only the kept set (newest 3 promoted + the bootstrap version), and a broker that
lost everything gets it back on the trainer's next connection."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from protocol import mqtt
from protocol.messages import Chunk, decode_message
from protocol.promotion import decode_promotion
from protocol.topics import Topics
from trainer.announce import ANNOUNCED_FILE, Announcer
from trainer.registry import Registry

pytestmark = pytest.mark.timeout(120)


def _retained(url: str, topic_filter: str) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    lock = threading.Lock()
    c = mqtt.make_client(f"peek-{time.monotonic_ns()}", url, protocol="3.1.1")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain and msg.payload:
            with lock:
                got[msg.topic] = bytes(msg.payload)

    c.on_message = on_message
    mqtt.start(c)
    c.subscribe(topic_filter, 1)
    time.sleep(0.8)
    c.disconnect()
    c.loop_stop()
    return got


def _register(state: Path, version: str, parent: str | None, status: str = "promoted", size: int = 70_000) -> bytes:
    data = hashlib.sha256(version.encode()).digest() * (size // 32)  # any bytes: the announcer does not parse ONNX
    src = state / f"src-{version}.onnx"
    src.write_bytes(data)
    with Registry(state) as reg:
        reg.register(version, path=src, labels=["ok", "dent"], parent=parent, status=status,
                     metrics={"accuracy": 0.8, "n": 30, "confusion": [[1]]})
    return data


def test_the_broker_holds_the_kept_set_with_verifiable_bytes(mosquitto_broker, topic_prefix, tmp_path) -> None:
    state = tmp_path / "trainer"
    state.mkdir()
    t = Topics(topic_prefix)
    client = mqtt.start(mqtt.make_client(f"trainer-{topic_prefix[-6:]}", mosquitto_broker.url, protocol="3.1.1"))

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    ann = Announcer(t, state, "parts", chunk_size=16_384)
    data = {"v0001": _register(state, "v0001", None)}
    ann.announce(publish, "v0001")
    for k, parent in ((2, "v0001"), (3, "v0002"), (4, "v0003"), (5, "v0004"), (6, "v0005")):
        data[f"v000{k}"] = _register(state, f"v000{k}", parent, status="rejected" if k == 5 else "promoted")
        if k != 5:
            ann.announce(publish, f"v000{k}")
    notices = _retained(mosquitto_broker.url, t.all_trainer_models())
    assert sorted(notices) == [t.trainer_model(v) for v in ("v0001", "v0003", "v0004", "v0006")]
    newest = decode_promotion(_retained(mosquitto_broker.url, t.trainer_promoted())[t.trainer_promoted()])
    assert (newest.version, newest.parent, newest.seq, newest.metrics) == ("v0006", "v0005", 6,
                                                                          {"accuracy": 0.8, "n": 30})
    # the bytes on the broker are the registered file, chunk by chunk as the notice says
    chunks = _retained(mosquitto_broker.url, t.trainer_chunks_wildcard("v0006"))
    assert len(chunks) == newest.chunk_count == 5
    body = b""
    for i in range(newest.chunk_count):
        d = decode_message(chunks[t.trainer_chunk("v0006", i)])
        assert isinstance(d.msg, Chunk) and d.msg.sha256 == newest.chunk_sha256[i] and d.header.device == "trainer"
        body += d.body
    assert body == data["v0006"] and hashlib.sha256(body).hexdigest() == newest.sha256
    assert _retained(mosquitto_broker.url, t.trainer_chunks_wildcard("v0002")) == {}  # left the kept set: cleared
    assert (state / ANNOUNCED_FILE).exists()

    # a broker restarted without persistence lost everything: the next connection puts the kept set back
    for topic in list(notices) + [t.trainer_promoted()] + [t.trainer_chunk(v, i) for v in ("v0001", "v0003", "v0004",
                                                                                           "v0006") for i in range(5)]:
        publish(topic, b"", 1, True)
    assert _retained(mosquitto_broker.url, t.all_trainer_models()) == {}
    Announcer(t, state, "parts", chunk_size=16_384).republish_soon(publish).join(30)  # a restarted trainer
    assert sorted(_retained(mosquitto_broker.url, t.all_trainer_models())) == sorted(notices)
    assert decode_promotion(_retained(mosquitto_broker.url, t.trainer_promoted())[t.trainer_promoted()]).version \
        == "v0006"
    client.disconnect()
    client.loop_stop()
