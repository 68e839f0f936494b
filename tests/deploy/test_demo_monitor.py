"""deploy/demo/monitor.py over a real mosquitto: stats rows, the model-status log with arrival times, one
notification per status change, and malformed or foreign messages ignored without stopping it."""
from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from conftest import wait_for  # tests/deploy/conftest.py
from deploy.demo.monitor import Monitor
from protocol import mqtt
from protocol.reports import ModelStatus, Stats, encode_report
from protocol.topics import Topics

pytestmark = pytest.mark.timeout(60)


def _stats(frames: int, uploads: int, model: str) -> Stats:
    return Stats(device="cam-1", fps=15.0, latency_p50_ms=2.0, latency_p95_ms=3.0, outbox_depth=1, outbox_bytes=10, outbox_dropped=0,
                 uploads=uploads, extra={"frames": frames, "accuracy": 0.9, "model_version": model,
                                         "capture": {"frames": frames + 2, "dropped": 1}})


def test_monitor_keeps_stats_and_every_status_and_ignores_bad_messages(mosquitto_broker, topic_prefix) -> None:
    notes: list[tuple[str, str, dict[str, Any]]] = []
    mon = Monitor(mosquitto_broker.url, ["cam-1", "cam-2"], lambda kind, text, wall=None, **d: notes.append((kind, text, d)),
                  prefix=topic_prefix, client_id="test-monitor").start()
    topics = Topics(topic_prefix)
    pub = mqtt.make_client("test-monitor-pub", mosquitto_broker.url, protocol="3.1.1")
    mqtt.start(pub)

    def send(device: str, topic: str, msg: Any) -> None:
        pub.publish(topic, encode_report(msgspec.structs.replace(msg, device=device)), qos=1).wait_for_publish(5)

    try:
        time.sleep(0.5)  # the monitor's subscription
        send("cam-1", topics.stats("cam-1"), _stats(100, 3, "v0001"))
        pub.publish(topics.stats("cam-1"), b"not json", qos=1).wait_for_publish(5)  # malformed
        pub.publish(topics.model_status("cam-2"), b"", qos=1).wait_for_publish(5)            # empty (retained clear)
        send("cam-9", topics.stats("cam-9"), _stats(5, 0, "v0001"))                           # not one of ours
        active = ModelStatus(device="cam-1", model_id="m", version="v0002", state="active", rollout_id="r1",
                             metrics={"active": "v0002"})
        send("cam-1", topics.model_status("cam-1"), ModelStatus(device="cam-1", model_id="m", version="v0002",
                                                                state="verified", rollout_id="r1",
                                                                metrics={"active": "v0001"}))
        send("cam-1", topics.model_status("cam-1"), active)
        send("cam-1", topics.model_status("cam-1"), active)   # repeated: logged, not notified twice
        send("cam-2", topics.model_status("cam-2"), ModelStatus(device="cam-2", model_id="m", version="v0003",
                                                                state="rolled_back", reason="low_agreement",
                                                                metrics={"active": "v0001"}))
        send("cam-1", topics.stats("cam-1"), _stats(130, 4, "v0002"))
        wait_for(lambda: len(mon.statuses()) == 4 and len(mon.series()["cam-1"]) == 2, 10, "messages")
    finally:
        pub.disconnect()
        pub.loop_stop()
        mon.stop()
    series = mon.series()
    assert series["cam-2"] == [] and "cam-9" not in series
    first = series["cam-1"][0]
    assert (first["index"], first["frames"], first["uploads"], first["model"], first["dropped"]) == (102, 100, 3, "v0001", 1)
    assert mon.snapshot()["cam-1"]["model"] == "v0002"
    log = mon.statuses()
    assert [(s["device"], s["state"], s["version"], s["active"]) for s in log] == [
        ("cam-1", "verified", "v0002", "v0001"), ("cam-1", "active", "v0002", "v0002"),
        ("cam-1", "active", "v0002", "v0002"), ("cam-2", "rolled_back", "v0003", "v0001")]
    assert all(s["wall"] > 0 for s in log) and log[-1]["reason"] == "low_agreement"
    assert [(k, d.get("device")) for k, _, d in notes] == [("activated", "cam-1"), ("rolled_back", "cam-2")]
    assert mon.status["cam-1"]["state"] == "active"


def test_the_trainer_s_selection_hint_is_an_event_and_a_malformed_one_is_ignored(mosquitto_broker,
                                                                                  topic_prefix) -> None:
    from protocol.reports import SelectionHint

    notes: list[tuple[str, str, dict[str, Any]]] = []
    mon = Monitor(mosquitto_broker.url, ["cam-1"], lambda kind, text, wall=None, **d: notes.append((kind, text, d)),
                  prefix=topic_prefix, client_id="test-monitor-hint").start()
    topics = Topics(topic_prefix)
    pub = mqtt.make_client("test-monitor-hint-pub", mosquitto_broker.url, protocol="3.1.1")
    mqtt.start(pub)
    try:
        time.sleep(0.5)
        hint = SelectionHint(device="trainer", boost={"scratch": 10.0}, budget_per_minute=40, expires=time.time() + 60,
                             reason="crack: 6 of 8 labels predicted as scratch (~55 % of its frames)")
        pub.publish(topics.selection_hint(), b"not json", qos=1).wait_for_publish(5)
        pub.publish(topics.selection_hint(), encode_report(hint), qos=1).wait_for_publish(5)
        pub.publish(topics.selection_hint(), encode_report(msgspec.structs.replace(hint, boost={})),
                    qos=1).wait_for_publish(5)
        wait_for(lambda: len(notes) == 2, 10, "hint events")
    finally:
        pub.disconnect()
        pub.loop_stop()
        mon.stop()
    assert notes[0][0] == "hint" and "predicted scratch (crack: 6 of 8" in notes[0][1]
    assert notes[0][2] == {"boost": {"scratch": 10.0}}
    assert notes[1] == ("hint", "trainer withdrew its selection hint", {"boost": {}})
