"""The controller against faults and growth (issue 13), over a real mosquitto with light devices running the real
updater: chunks the broker lost are republished (found by read-back when a device's download stalls, and after
a broker restart), a corrupt chunk makes a device fetch again instead of failing the rollout, superseded
versions' chunks are cleared, a decommissioned device's retained topics are cleared, the model cache is
bounded and the device table is written only where it changed."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import wait_for  # tests/deploy/conftest.py
from deploy.controller import Controller, Policy
from deploy.fleet import DeviceInfo
from deploy.rollout_gate import count_wave
from deploy.rollout_store import RolloutStore
from protocol import mqtt
from protocol.messages import Chunk, encode_message
from protocol.topics import Topics

pytestmark = pytest.mark.timeout(180)
FAST = Policy(waves=[0.5, 1.0], soak=0.5, health_seconds=0.5, wave_timeout=30.0)


def retained(url: str, topic_filter: str, settle: float = 1.0) -> dict[str, bytes]:
    """Every non-empty retained message under ``topic_filter``, as a fresh subscriber sees them."""
    got: dict[str, bytes] = {}
    lock = threading.Lock()
    c = mqtt.make_client(f"peek-{time.monotonic_ns()}", url, protocol="3.1.1")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = bytes(msg.payload)

    c.on_message = on_message
    mqtt.start(c)
    c.subscribe(topic_filter, 1)
    time.sleep(settle)
    c.disconnect()
    c.loop_stop()
    return {t: p for t, p in got.items() if p}


def publish(url: str, topic: str, payload: bytes) -> None:
    c = mqtt.start(mqtt.make_client(f"pub-{time.monotonic_ns()}", url, protocol="3.1.1"))
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def env(mosquitto_broker, topic_prefix, models, keys, tmp_path) -> Iterator[Any]:
    """Factory: ``make(n, broker=None, **controller_kw)`` -> (controller, light fleet); stopped at teardown."""
    from deploy.lightdevice import LightFleet

    made: list[Any] = []

    def make(n: int, broker: Any = None, **kw: Any) -> tuple[Controller, Any]:
        url = (broker or mosquitto_broker).url
        lf = LightFleet(n, url, tmp_path / "devs", [str(keys["pub"])], models["good1"], prefix=topic_prefix,
                        fps=10).start()
        ctl = Controller(url, keys["priv"], tmp_path / "ctl", prefix=topic_prefix, tick_s=0.05, **kw).start()
        made.extend([lf, ctl])
        wait_for(lambda: len([d for d in ctl.fleet.devices() if d.online]) == n, 20, "devices online")
        return ctl, lf

    yield make
    for obj in reversed(made):
        try:
            obj.stop()
        except Exception:
            pass


def test_a_chunk_lost_on_the_broker_is_republished_when_a_late_device_stalls(env, models, mosquitto_broker,
                                                                           topic_prefix) -> None:
    ctl, lf = env(3, stall_s=1.0, stall_audit_every_s=1.0)
    rid = ctl.start_rollout("v0002", models["good2"], FAST, previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 60) == "completed"
    t = Topics(topic_prefix)
    art = ctl.artifact(ctl.store.rollout(rid).model_id, "v0002")
    lost = t.chunk(art.model_id, "v0002", 3)
    publish(mosquitto_broker.url, lost, b"")  # the broker lost it (an eviction, a restart without persistence)
    assert lost not in retained(mosquitto_broker.url, t.chunks_wildcard(art.model_id, "v0002"))
    late = lf.add("late").start()  # a camera installed after the rollout: the retained manifest sends it to v0002
    wait_for(lambda: late.updater.active_version == "v0002", 60, "the late device to finish its download")
    assert ctl.counters["republish:readback"] >= 1
    assert lost in retained(mosquitto_broker.url, t.chunks_wildcard(art.model_id, "v0002"))
    assert any(e.kind == "chunks_republished" and "stalled download on late" in (e.detail or "")
               for e in ctl.store.events_since(0))


def test_a_corrupt_chunk_makes_the_device_fetch_again_and_does_not_fail_the_rollout(env, models, mosquitto_broker,
                                                                                    topic_prefix) -> None:
    ctl, lf = env(4)
    art = ctl.register_model(models["good2"], version="v0002")
    ctl.publisher.publish_chunks(art)
    ctl.store.set_published(art.model_id, "v0002", True)
    junk = bytes(reversed(art.data[:ctl.chunk_size]))  # the right length, the wrong bytes
    bad = encode_message(Chunk(model_id=art.model_id, version="v0002", index=0, count=-(-art.size // ctl.chunk_size),
                               sha256=__import__("hashlib").sha256(junk).hexdigest()), junk, device="deploy", seq=1)
    publish(mosquitto_broker.url, Topics(topic_prefix).chunk(art.model_id, "v0002", 0), bad)
    rid = ctl.start_rollout("v0002", policy=Policy(waves=[1.0], soak=0.5, health_seconds=0.5, wave_timeout=30.0,
                                                   max_failed=0.0),
                            model_id=art.model_id, previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 60) == "completed", ctl.store.rollout(rid).reason
    assert set(lf.versions().values()) == {"v0002"}
    assert ctl.counters["republish:device"] >= 1  # a device said chunk 0 was corrupt; it got it again
    assert not [e for e in ctl.store.events(rid) if e.kind in ("breach", "rollback")]


def test_a_chunk_hash_report_is_pending_not_failed() -> None:
    def dev(name: str, reason: str) -> DeviceInfo:
        return DeviceInfo(name, online=True, version="v0001", model_state="failed", model_version="v0002",
                          reason=reason, rollout_id="r1", status_metrics={"chunk": 0})

    w = count_wave([dev("a", "chunk_hash"), dev("b", "chunk_range"), dev("c", "smoke_test")], "r1", "v0002")
    assert [d.device for d in w.pending] == ["a", "b"] and [d.device for d in w.failed] == ["c"]


def test_after_a_broker_restart_the_manifest_and_chunks_come_back(env, models, tmp_path) -> None:
    from deploy.broker import free_port, start_broker

    port = free_port()
    broker = start_broker(kind="mosquitto", port=port)  # no workdir: nothing survives its restart
    try:
        ctl, lf = env(2, broker=broker)
        rid = ctl.start_rollout("v0002", models["good2"], FAST, previous=("v0001", models["good1"]))
        assert ctl.wait(rid, 60) == "completed"
        broker.stop()
        broker = start_broker(kind="mosquitto", port=port)
        t = ctl.topics
        art = ctl.artifact(ctl.store.rollout(rid).model_id, "v0002")
        want = {t.chunk(art.model_id, "v0002", i) for i in range(-(-art.size // ctl.chunk_size))}
        wait_for(lambda: set(retained(broker.url, t.chunks_wildcard(art.model_id, "v0002"), 0.5)) == want, 60,
                 "every chunk back on the restarted broker")
        assert t.manifest("default") in retained(broker.url, t.manifest("default"), 0.5)
        assert ctl.counters["republish:readback"] >= len(want)
        late = lf.add("late").start()
        wait_for(lambda: late.updater.active_version == "v0002", 60, "a device that boots now to get v0002")
    finally:
        broker.stop()


def test_a_superseded_versions_chunks_are_cleared(env, models, mosquitto_broker, topic_prefix, tmp_path) -> None:
    from model_factory import make_onnx_model

    good3 = make_onnx_model(tmp_path / "good3.onnx", version="v0006", seed=2, train_steps=40)
    ctl, lf = env(2)
    slow = Policy(waves=[0.5, 1.0], soak=600, health_seconds=0.5, wave_timeout=300)
    old = ctl.start_rollout("v0002", models["good2"], slow, previous=("v0001", models["good1"]))
    wait_for(lambda: ctl.store.rollout(old).wave_published, 20, "v0002's first wave")
    t = Topics(topic_prefix)
    mid = ctl.store.rollout(old).model_id
    assert retained(mosquitto_broker.url, t.chunks_wildcard(mid, "v0002"))
    new = ctl.start_rollout("v0006", good3, FAST, previous="v0001")
    assert ctl.store.rollout(old).state == "superseded"
    assert ctl.wait(new, 60) == "completed"
    assert retained(mosquitto_broker.url, t.chunks_wildcard(mid, "v0002")) == {}  # neither completed nor rolled back
    assert retained(mosquitto_broker.url, t.chunks_wildcard(mid, "v0006"))        # the fleet's target stays
    assert any(e.kind == "chunks_cleared" and e.detail == f"{mid}/v0002" for e in ctl.store.events_since(0))


def test_forgetting_a_decommissioned_device_clears_its_retained_topics(env, mosquitto_broker, topic_prefix,
                                                                       tmp_path) -> None:
    from deploy.rollout_cli import main as rollout_cli

    ctl, lf = env(3)
    gone = "dev0001"
    t = Topics(topic_prefix)
    wait_for(lambda: t.birth(gone) in retained(mosquitto_broker.url, t.birth(gone), 0.3), 10, "its birth retained")
    lf.devices[gone].stop()  # decommissioned: switched off (its certificate revoked, in a secured plant)
    assert rollout_cli(["devices", "--forget", gone, "--state-dir", str(tmp_path / "ctl")]) == 0
    wait_for(lambda: ctl.fleet.get(gone) is None, 10, "the controller to forget it")
    for topic in (t.state(gone), t.birth(gone), t.model_status(gone)):
        assert retained(mosquitto_broker.url, topic, 0.3) == {}, topic
    assert gone not in {d["device"] for d in RolloutStore(tmp_path / "ctl" / "rollout.sqlite").devices()}
    assert ctl.fleet.get("dev0002") is not None and ctl.counters["devices_forgotten"] == 1


def test_the_model_cache_is_bounded_and_reads_evicted_versions_again(models, keys, tmp_path) -> None:
    ctl = Controller("mqtt://127.0.0.1:1", keys["priv"], tmp_path / "ctl", cache_items=2)  # never connected
    try:
        arts = [ctl.register_model(models[k]) for k in ("good1", "good2", "nan", "untrained")]
        assert len(ctl.cache) == 2 and ctl.cache.evictions == 2
        assert ctl.cache.bytes <= 2 * max(a.size for a in arts)
        again = ctl.artifact(arts[0].model_id, "v0001")  # evicted: read from its file, checked against the store
        assert again.data == Path(models["good1"]).read_bytes() and len(ctl.cache) == 2
    finally:
        ctl.store.close()


def test_the_device_table_is_written_only_where_it_changed(tmp_path) -> None:
    store = RolloutStore(tmp_path / "rollout.sqlite")
    rows = [DeviceInfo(f"d{i}", online=True, version="v1", last_seen=100.0, fps=10.0).to_row() for i in range(50)]
    assert store.save_devices(rows) == 50
    assert store.save_devices(rows) == 0  # nothing changed: nothing written
    rows[3] = {**rows[3], "fps": 9.5, "last_seen": 101.0}
    assert store.save_devices(rows) == 0  # telemetry only: written at the next refresh
    assert store.save_devices(rows, refresh_s=0.0) == 50  # the refresh (every 30 s by default) writes all
    rows[7] = {**rows[7], "state": "downloading"}
    assert store.save_devices(rows) == 1
    assert {r["device"]: r for r in store.devices()}["d7"]["state"] == "downloading"
    store.close()


def test_the_loop_gives_freed_heap_back_once_a_minute(keys, tmp_path, monkeypatch) -> None:
    from deploy import controller as controller_mod
    from protocol import memory

    ctl = Controller("mqtt://127.0.0.1:1", keys["priv"], tmp_path / "ctl")  # never connected: tick() is local
    try:
        before = memory.trims
        ctl.tick()
        assert memory.trims == before  # not yet: once a minute
        monkeypatch.setattr(controller_mod, "TRIM_EVERY_S", 0.0)
        ctl.tick()
        assert memory.trims == before + 1
    finally:
        ctl.store.close()


def test_an_approval_stands_when_a_newer_version_is_promoted_before_the_controller_takes_it(models, keys,
                                                                                            tmp_path) -> None:
    """`edgeloop rollout approve v0002` queues the approval; a newer promotion that arrives before the next tick
    must not supersede what the operator released (CI saw exactly this in test_line's approve mode). The newer
    version waits its turn, and the approval, once taken, does not supersede it either."""
    ctl = Controller("mqtt://127.0.0.1:1", keys["priv"], tmp_path / "ctl")  # never connected: no tick runs
    try:
        ctl.register_model(models["good1"])
        a = ctl.start_rollout("v0002", models["good2"], previous="v0001", await_approval=True)
        ctl.store.approve("v0002", "operator")
        b = ctl.start_rollout("v0005", models["untrained"], previous="v0001", await_approval=True)
        assert ctl.store.rollout(a).state == "awaiting_approval" and ctl.store.rollout(a).command == "approve"
        assert ctl._approve(ctl.store.rollout(a), "by operator") is not None  # what the next tick does with it
        assert ctl.store.rollout(a).state == "running"
        assert ctl.store.rollout(b).state == "awaiting_approval"
        c = ctl.start_rollout("v0003", models["nan"], previous="v0001", await_approval=True)
        assert ctl.store.rollout(b).state == "superseded"  # an unapproved wait is still replaced by a newer one
        assert ctl.store.rollout(a).state == "running" and ctl.store.rollout(c).state == "awaiting_approval"
    finally:
        ctl.store.close()


def test_an_approval_stops_the_rollout_it_supersedes_in_the_same_tick(env, models, tmp_path) -> None:
    """The tick lists what is waiting and what runs, then steps each. An approval stepped first supersedes the
    running rollout; stepping that rollout's stale row afterwards published its next wave over the approved one
    (a higher seq, so the devices took it), and the approved version never reached a device (CI, test_line's
    approve mode: v0020's last wave after v0022's approval). The superseded rollout must publish nothing."""
    from model_factory import make_onnx_model

    ctl, lf = env(2)
    newer = make_onnx_model(tmp_path / "v0006.onnx", version="v0006", seed=3, train_steps=40)
    with ctl._lock:  # the controller's own tick waits: this test's tick is the one that matters
        old = ctl.start_rollout("v0002", models["good2"], FAST, previous=("v0001", models["good1"]))
        ctl.store.mark_wave_published(old, 5000)
        ctl.store.next_wave(old, to=1)  # wave 1 soaked: its last wave goes out on the next tick
        new = ctl.start_rollout("v0006", newer, FAST, previous="v0001", await_approval=True)
        ctl.store.approve("v0006", "operator")
        ctl.tick()
        assert ctl.store.rollout(old).state == "superseded"
        assert ctl.store.rollout(new).state == "running"
        assert ctl.store.target("default").rollout_id == new  # the retained manifest is the approved version's
        assert not [e for e in ctl.store.events(old) if e.kind == "wave" and "2/2" in (e.detail or "")]
    assert ctl.wait(new, 60) == "completed", ctl.store.rollout(new).reason
    assert set(lf.versions().values()) == {"v0006"}
