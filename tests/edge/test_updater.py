"""Updater unit tests without a broker: a fake link delivers retained chunks as the broker would."""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("EDGELOOP_MODEL_CACHE", str(Path.home() / ".cache" / "edgeloop-test-models"))

from edge.model import EdgeModel, ModelSlot  # noqa: E402
from edge.updater import (BUCKETS, Updater, UpdaterLimits, in_wave, select_boot_model,  # noqa: E402
                          wave_bucket)
from protocol import memory  # noqa: E402
from protocol.reports import decode_report  # noqa: E402
from protocol.signing import generate_keypair, key_id, private_key_from_pem, public_key_from_pem  # noqa: E402
from protocol.topics import Topics  # noqa: E402


class FakeBroker:
    """Retained store + per-subscriber delivery, enough for one device."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.status: list = []
        self.updater: Updater | None = None
        self.subs: set[str] = set()

    # UpdaterLink
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if "/model/status" in topic:
            self.status.append(decode_report(payload, "model_status"))
            return
        if retain:
            self.retained[topic] = payload
        if topic in self.subs and self.updater is not None:
            self.updater.on_message(topic, payload)

    def subscribe(self, subs: list[tuple[str, int]]) -> None:
        for t, _ in subs:
            self.subs.add(t)
            if t in self.retained and self.updater is not None:
                self.updater.on_message(t, self.retained[t])

    def unsubscribe(self, topics: list[str]) -> None:
        self.subs.difference_update(topics)


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timeout"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from model_factory import make_onnx_model

    d = tmp_path_factory.mktemp("m")
    return {"v1": make_onnx_model(d / "v1.onnx", version="v0001"),
            "v2": make_onnx_model(d / "v2.onnx", version="v0002", seed=1, train_steps=40)}


@pytest.fixture
def setup(models, tmp_path):
    from deploy.publisher import Publisher, read_artifact  # test-only use of the deploy side

    priv, pub = generate_keypair()
    key = private_key_from_pem(priv)
    broker = FakeBroker()
    topics = Topics("t")
    publisher = Publisher(broker.publish, key, topics, chunk_size=256 * 1024)
    slot = ModelSlot(EdgeModel.load(models["v1"]))
    limits = UpdaterLimits(health_seconds=5.0, health_min_frames=5, health_max_errors=3)
    up = Updater("d1", "f", tmp_path / "state", {key_id(key): public_key_from_pem(pub)}, slot, broker, topics, limits)
    broker.updater = up
    for t, q in up.subscriptions():
        broker.subscribe([(t, q)])
    yield up, broker, publisher, read_artifact(models["v2"]), slot, tmp_path
    up.close()


def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)


def test_install_then_health_watch_rolls_back(setup) -> None:
    up, broker, publisher, art, slot, tmp = setup
    good = np.full(10, 0.1, dtype=np.float32)
    good[3] = 0.91
    for _ in range(10):
        up.on_frame(frame(), good, 1.0)
    publisher.publish_chunks(art)
    publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=5, rollout_id="r1", wave=0))
    wait_for(lambda: up._ready is not None)
    trims = memory.trims
    up.on_frame(frame(), good, 1.0)  # the swap happens here, between frames
    assert up.active_version == "v0002"
    wait_for(lambda: any(s.state == "active" for s in broker.status))
    assert select_boot_model(tmp / "state", None)[1] == "v0002"
    assert memory.trims > trims, "the worker gives the dropped model's heap back after a swap"
    bad = np.full(10, np.nan, dtype=np.float32)
    for _ in range(3):
        up.on_frame(frame(), bad, 1.0)
    assert up.active_version == "v0001"
    wait_for(lambda: any(s.state == "rolled_back" for s in broker.status))
    rb = [s for s in broker.status if s.state == "rolled_back"][-1]
    assert rb.reason == "health_errors"
    assert select_boot_model(tmp / "state", "/provisioned.onnx")[0] == Path("/provisioned.onnx")


def test_confidence_collapse_rolls_back(setup) -> None:
    up, broker, publisher, art, slot, tmp = setup
    sure = np.zeros(10, dtype=np.float32)
    sure[1] = 1.0
    for _ in range(10):
        up.on_frame(frame(), sure, 1.0)
    publisher.publish_chunks(art)
    publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=5, rollout_id="r1", wave=0))
    wait_for(lambda: up._ready is not None)
    up.on_frame(frame(), sure, 1.0)
    flat = np.full(10, 0.1, dtype=np.float32)
    for _ in range(6):
        up.on_frame(frame(), flat, 1.0)
    wait_for(lambda: any(s.state == "rolled_back" for s in broker.status))
    assert [s for s in broker.status if s.state == "rolled_back"][-1].reason == "confidence_collapse"


def test_device_outside_the_wave_ignores_but_records_sequence(setup) -> None:
    up, broker, publisher, art, slot, tmp = setup
    salt = next(s for s in (f"r{i}" for i in range(1000)) if wave_bucket(s, "d1") > 100)
    publisher.publish_chunks(art)
    publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=7, rollout_id=salt, wave=0,
                                                       targeting={"salt": salt, "below": 100}))
    wait_for(lambda: up.highest_seq == 7)
    time.sleep(0.1)
    assert up.active_version == "v0001" and not broker.status
    publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=6, rollout_id=salt, wave=0,
                                                       targeting={"salt": salt, "below": BUCKETS}))
    wait_for(lambda: any(s.reason == "replayed" for s in broker.status))


def test_in_wave_rule() -> None:
    assert in_wave({}, "x")
    assert in_wave({"rollout": {"salt": "s", "below": BUCKETS}}, "x")
    assert not in_wave({"rollout": {"salt": "s", "below": 0}}, "x")
    b = wave_bucket("s", "x")
    assert in_wave({"rollout": {"salt": "s", "below": b + 1}}, "x")
    assert not in_wave({"rollout": {"salt": "s", "below": b}}, "x")


def test_boot_model_skips_a_corrupt_file(tmp_path, models) -> None:
    import json

    sha = hashlib.sha256(Path(models["v2"]).read_bytes()).hexdigest()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{sha}.onnx").write_bytes(b"torn")
    (tmp_path / "active.json").write_text(json.dumps({"active": {"version": "v0002", "sha256": sha}}))
    assert select_boot_model(tmp_path, models["v1"]) == (Path(models["v1"]), None)


def test_work_queue_is_bounded_and_refetches_what_it_dropped(models, tmp_path) -> None:
    """A stuck worker or a flood cannot grow the queue past its bound; a dropped chunk is fetched again
    (it is retained on the broker), so the download still completes."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from deploy.publisher import Publisher, read_artifact

    priv, pub = generate_keypair()
    key = private_key_from_pem(priv)
    broker = FakeBroker()
    topics = Topics("t")
    publisher = Publisher(broker.publish, key, topics, chunk_size=64 * 1024)  # dozens of chunks
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    pool.submit(gate.wait)  # the worker is busy until the gate opens
    limits = UpdaterLimits(queue_max_messages=8, chunk_window=32)
    up = Updater("d1", "f", tmp_path / "state", {key_id(key): public_key_from_pem(pub)},
                 ModelSlot(EdgeModel.load(models["v1"])), broker, topics, limits, executor=pool)
    broker.updater = up
    depths: list[int] = []
    subscribe = broker.subscribe

    def watching_subscribe(subs):
        subscribe(subs)
        depths.append(up.queue_depth)

    broker.subscribe = watching_subscribe
    try:
        for t, q in up.subscriptions():
            broker.subscribe([(t, q)])
        # a flood while the worker is stuck: the queue stops at its bound and counts the rest
        for i in range(1000):
            up.on_message(topics.chunk("junk", "v9", i), b"x" * 100)
        assert up.queue_depth <= 8 + 1 and up.queue_dropped >= 990  # +1: the refetch step (no payload)
        art = read_artifact(models["v2"])
        assert art.size // (64 * 1024) > 2 * 8  # more chunks than the queue holds: some must be dropped and refetched
        publisher.publish_chunks(art)
        publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=5, rollout_id="r1", wave=0))
        dropped_before = up.queue_dropped
        gate.set()
        wait_for(lambda: up._ready is not None, 60)
        assert up.queue_dropped > dropped_before  # the window of 32 chunks overflowed the queue of 8...
        assert max(depths) <= 8 + 2                # ...which never grew past its bound...
        assert any(s.state == "verified" for s in broker.status)  # ...and the model still arrived whole
    finally:
        gate.set()
        up.close()
        pool.shutdown()


def test_a_provisioning_floor_survives_a_reset_but_never_lowers_the_state(models, tmp_path) -> None:
    """``min_seq`` (the edge config's updater.min_manifest_seq): a device without state starts just below it; a
    device whose persisted highest sequence is above it keeps its own; the floor itself is accepted."""
    slot = ModelSlot(EdgeModel.load(models["v1"]))
    fresh = Updater("d1", "f", tmp_path / "reset", {}, slot, FakeBroker(), Topics("t"), min_seq=100)
    assert fresh.highest_seq == 99
    fresh.highest_seq = 250
    fresh._save_state()
    fresh.close()
    again = Updater("d1", "f", tmp_path / "reset", {}, slot, FakeBroker(), Topics("t"), min_seq=100)
    assert again.highest_seq == 250
    again.close()
    assert Updater("d2", "f", tmp_path / "none", {}, slot, FakeBroker(), Topics("t")).highest_seq is None


def test_a_full_disk_stalls_the_download_and_it_resumes_when_space_returns(models, tmp_path, monkeypatch) -> None:
    """A chunk the disk refuses is not a broken model: the device says "downloading (storage)", counts it, does
    not fail the rollout, and fetches the chunk again once there is room (a real full tmpfs)."""
    from deploy.publisher import Publisher, read_artifact
    from edge import updater as updater_mod
    from full_disk import fill_disk, tmpfs

    monkeypatch.setattr(updater_mod, "STORAGE_RETRY_S", 0.2)
    with tmpfs(tmp_path / "fs", "16m") as fs:
        priv, pub = generate_keypair()
        key = private_key_from_pem(priv)
        broker, topics = FakeBroker(), Topics("t")
        publisher = Publisher(broker.publish, key, topics, chunk_size=256 * 1024)
        slot = ModelSlot(EdgeModel.load(models["v1"]))
        up = Updater("d1", "f", fs / "state", {key_id(key): public_key_from_pem(pub)}, slot, broker, topics,
                     UpdaterLimits(shadow_frames=0))
        broker.updater = up
        try:
            for t, q in up.subscriptions():
                broker.subscribe([(t, q)])
            filler = fill_disk(fs / "filler")
            art = read_artifact(models["v2"])
            publisher.publish_chunks(art)
            publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=5, rollout_id="r1", wave=0))
            wait_for(lambda: up.storage_errors > 0)
            wait_for(lambda: any(s.state == "downloading" and s.reason == "storage" for s in broker.status))
            for _ in range(5):
                up.on_frame(frame(), None)  # retries (every 0.2 s here) while the disk stays full
                time.sleep(0.25)
            assert up._ready is None and not any(s.state == "failed" for s in broker.status)
            filler.unlink()  # space is back
            deadline = time.monotonic() + 20
            while up._ready is None:
                assert time.monotonic() < deadline, [(s.state, s.reason) for s in broker.status][-5:]
                up.on_frame(frame(), None)
                time.sleep(0.05)
            up.on_frame(frame(), None)  # the swap, between frames
            assert up.active_version == "v0002"
            assert not any(s.state == "failed" for s in broker.status)
        finally:
            up.close()


def test_a_refused_model_file_is_assembled_again_and_the_stall_ends(setup, monkeypatch) -> None:
    """The disk refuses the assembled model once (ENOSPC): the device reports "downloading (storage)", assembles
    again from the chunks it kept, installs, and is no longer marked stalled (a later stall is reported again)."""
    import errno

    from edge import updater as updater_mod

    up, broker, publisher, art, slot, tmp = setup
    real, refused = updater_mod.atomic_write, []
    monkeypatch.setattr(updater_mod, "STORAGE_RETRY_S", 0.1)

    def flaky(path, data, **kw):
        if str(path).endswith(".onnx") and not refused:
            refused.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(updater_mod, "atomic_write", flaky)
    publisher.publish_chunks(art)
    publisher.publish_manifest("f", publisher.manifest(art, fleet="f", seq=5, rollout_id="r1", wave=0))
    wait_for(lambda: any(s.state == "downloading" and s.reason == "storage" for s in broker.status))
    assert up._download_stalled
    deadline = time.monotonic() + 20
    while up._ready is None:
        assert time.monotonic() < deadline, [(s.state, s.reason) for s in broker.status][-5:]
        up.on_frame(frame(), None)  # the frame loop schedules the retry
        time.sleep(0.05)
    assert refused and not up._download_stalled
    assert not any(s.state == "failed" for s in broker.status)
