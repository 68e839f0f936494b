"""The edge node end to end against real brokers: valid samples within budget, nothing lost through a
broker outage or a SIGKILL, the outbox bound applied and reported, and clear errors at start."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from deploy.broker import find_mosquitto, start_broker
from edge.config import EdgeConfig
from edge.model import ModelError
from edge.node import EdgeNode
from protocol.config import load_config
from protocol.messages import Sample, decode_message
from protocol.mqtt import make_client, start
from protocol.topics import Topics
from tests.model_factory import make_broken_model, make_onnx_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS_ROI = [96, 56, 128, 128]  # sim:digits' fixed ROI at 320x240


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("model") / "m.onnx", arch="convnet", data="digits",
                           roi=DIGITS_ROI, train_steps=30)


class Collector:
    """A trainer stand-in: subscribes to every device's samples and decodes each one, and (like the trainer)
    then publishes a retained trainer state, which releases the edges' uploads (``announce=False``: it does not)."""

    def __init__(self, url: str, prefix: str, *, client_id: str | None = None, persistent: bool = False,
                 announce: bool = True) -> None:
        self.samples: list[Sample] = []
        self.headers: list = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self.client = make_client(client_id or f"collector-{os.getpid()}-{time.monotonic_ns()}", url,
                                  protocol="3.1.1", clean_start=not persistent)
        topics = Topics(prefix)

        def on_connect(client, *args) -> None:
            client.subscribe(topics.all_samples(), 1)
            if announce:  # after the SUBSCRIBE, as the trainer does: the broker handles them in that order
                client.publish(topics.trainer_state(), b'{"device": "trainer", "state": "online"}', 1, retain=True)

        self.client.on_connect = on_connect
        self.client.on_message = self._on_message
        start(self.client)
        time.sleep(0.2)  # SUBACK

    def _on_message(self, client, userdata, message) -> None:
        try:
            decoded = decode_message(message.payload)
        except Exception as exc:  # the test asserts there are none
            self.errors.append(exc)
            return
        with self._lock:
            self.samples.append(decoded.msg)
            self.headers.append(decoded.header)

    def ids(self) -> list[str]:
        with self._lock:
            return [s.sample_id for s in self.samples]

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(set(self.ids())) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def node_config(tmp_path: Path, url: str, prefix: str, model: Path, **overrides) -> EdgeConfig:
    base = {
        "device_id": "cam1", "state_dir": str(tmp_path / "edge"), "model.path": str(model),
        "source.url": "sim:digits?seed=3&limit=1200", "mqtt.url": url, "mqtt.topic_prefix": prefix,
        "sampler.seed": 1, "sampler.threshold": 0.3, "sampler.budget_per_minute": 25,
        "sampler.budget_per_hour": "none", "sampler.budget_per_day": "none", "updater.enabled": False,
        "stats_interval_s": 0.5,
    }
    base.update(overrides)
    return load_config(EdgeConfig, overrides=base)


def run_node(config: EdgeConfig) -> EdgeNode:
    node = EdgeNode(config)
    node.run()
    return node


def test_samples_arrive_valid_and_within_budget(broker, topic_prefix, tmp_path, edge_model) -> None:
    collector = Collector(broker.url, topic_prefix)
    try:
        # Budget pacing spreads 25/minute over the rest of the minute, so a short run at a real-time
        # camera pace expects a handful of uploads; the cap itself is tested over hours in test_sampler.
        node = run_node(node_config(tmp_path, broker.url, topic_prefix, edge_model,
                                    **{"source.url": "sim:digits?seed=3&limit=900&realtime=1&fps=150",
                                       "sampler.threshold": 0.0}))
        collector.wait_for(node.stats.stored)
        ids = collector.ids()
        assert not collector.errors
        assert node.stats.frames + node.capture.stats.dropped == 900  # a live source may drop under load
        assert node.stats.stored >= 1
        assert set(ids) == {f"cam1.1.{i}" for i in range(node.stats.stored)}
        for sample in collector.samples:
            assert 0.0 < sample.p_select <= 1.0
            assert sample.truth is not None and sample.roi == tuple(DIGITS_ROI)
        per_minute = Counter(int(h.ts // 60) for h in collector.headers)
        assert max(per_minute.values()) <= 25, per_minute
    finally:
        collector.close()


@pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto (CI installs it)")
def test_broker_outage_loses_nothing(topic_prefix, tmp_path, edge_model) -> None:
    """Stop the broker mid-run and restart it: every sample selected meanwhile arrives afterwards."""
    workdir = tmp_path / "broker"
    broker = start_broker(kind="mosquitto", workdir=workdir)
    port = broker.port
    # The collector's session (persistent, QoS 1) survives the restart in mosquitto's persistence file.
    collector = Collector(broker.url, topic_prefix, client_id="outage-collector", persistent=True)
    config = node_config(tmp_path, broker.url, topic_prefix, edge_model,
                         **{"source.url": "sim:digits?seed=5&limit=900&realtime=1&fps=150",
                            "sampler.budget_per_minute": "none", "sampler.threshold": 0.2})
    node = EdgeNode(config)
    thread = threading.Thread(target=node.run)
    thread.start()
    try:
        time.sleep(1.5)
        broker.stop()
        stored_at_stop = node.stats.stored
        time.sleep(2.5)
        stored_during_outage = node.stats.stored - stored_at_stop
        broker = start_broker(kind="mosquitto", port=port, workdir=workdir)
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert stored_during_outage > 0, "the outage test needs samples selected while the broker was down"
        collector.wait_for(node.stats.stored, timeout=40)
        ids = collector.ids()
        assert set(ids) == {f"cam1.1.{i}" for i in range(node.stats.stored)}
        assert node.link.disconnects >= 1 and node.link.connects >= 2
    finally:
        node.stop()
        thread.join(timeout=10)
        collector.close()
        broker.stop()


def _spooled_ids(state_dir: Path) -> set[str]:
    db = sqlite3.connect(state_dir / "outbox.sqlite")
    try:
        return {row[0] for row in db.execute("SELECT sample_id FROM outbox")}
    finally:
        db.close()


def test_sigkill_then_restart_delivers_spooled_samples(broker, topic_prefix, tmp_path, edge_model) -> None:
    state = tmp_path / "edge"
    dead_port = broker.port + 1 if broker.port < 65000 else broker.port - 1
    cmd = [sys.executable, "-m", "deploy.cli", "edge", "--device-id", "cam1", "--state-dir", str(state),
           "--model", str(edge_model), "--topic-prefix", topic_prefix, "--seed", "2", "--threshold", "0.2",
           "--no-updater", "--stats-interval", "0.5"]
    env = {**os.environ, "EDGELOOP_EDGE__SAMPLER__BUDGET_PER_MINUTE": "none",
           "EDGELOOP_EDGE__SAMPLER__BUDGET_PER_HOUR": "none", "EDGELOOP_EDGE__SAMPLER__BUDGET_PER_DAY": "none"}
    # First life: no broker reachable, so every selected sample waits in the outbox; then kill -9.
    first = subprocess.Popen(cmd + ["--broker", f"mqtt://127.0.0.1:{dead_port}",
                                    "--source", "sim:digits?seed=7&realtime=1&fps=200"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        spooled: set[str] = set()
        while time.monotonic() < deadline and len(spooled) < 5:
            time.sleep(0.5)
            if (state / "outbox.sqlite").exists():
                try:
                    spooled = _spooled_ids(state)
                except sqlite3.OperationalError:
                    pass
        assert len(spooled) >= 5, first.stderr.read().decode() if first.poll() is not None else "too few samples"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    spooled = _spooled_ids(state)
    collector = Collector(broker.url, topic_prefix)
    try:
        second = subprocess.run(cmd + ["--broker", broker.url, "--source", "sim:digits?seed=8&limit=50"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        collector.wait_for(len(spooled))
        assert spooled <= set(collector.ids())
        assert not _spooled_ids(state), "acknowledged samples must leave the outbox"
    finally:
        collector.close()


def test_outbox_bound_applies_policy_and_reports_it(tmp_path, topic_prefix, edge_model) -> None:
    config = node_config(tmp_path, "mqtt://127.0.0.1:9", topic_prefix, edge_model,
                         **{"outbox.max_bytes": 30_000, "sampler.budget_per_minute": "none",
                            "sampler.threshold": 0.0, "source.url": "sim:digits?seed=9&limit=400"})
    node = run_node(config)
    snap = node.last_snapshot  # the stats message published at shutdown
    assert node.stats.stored > 10
    assert snap["outbox_dropped"] > 0
    assert snap["outbox_bytes"] <= 30_000
    assert snap["extra"]["outbox"]["policy"] == "drop_oldest"


def test_corrupt_model_fails_clearly(tmp_path, topic_prefix) -> None:
    bad = make_broken_model(tmp_path, "truncated")
    with pytest.raises(ModelError) as err:
        EdgeNode(node_config(tmp_path, "mqtt://127.0.0.1:9", topic_prefix, bad))
    assert str(bad) in str(err.value) or "corrupt" in str(err.value)


def test_mismatched_metadata_fails_clearly(tmp_path, topic_prefix) -> None:
    bad = make_broken_model(tmp_path, "wrong_input_size")
    with pytest.raises(ModelError) as err:
        EdgeNode(node_config(tmp_path, "mqtt://127.0.0.1:9", topic_prefix, bad))
    assert err.value.reason in ("input_mismatch", "bad_metadata")


def test_unopenable_source_fails_clearly(tmp_path, edge_model) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "edge", "--model", str(edge_model), "--state-dir", str(tmp_path / "e"),
         "--source", str(tmp_path / "missing.mp4"), "--broker", "mqtt://127.0.0.1:9", "--no-updater"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "video file not found" in result.stderr and "missing.mp4" in result.stderr


def test_config_error_names_the_key(tmp_path) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("sampler:\n  p_min: lots\n")
    result = subprocess.run([sys.executable, "-m", "deploy.cli", "edge", "--config", str(cfg)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sampler.p_min" in result.stderr


def test_reload_swaps_between_frames_and_refuses_a_bad_model(tmp_path, topic_prefix, edge_model) -> None:
    """A local model swap while frames flow: a good model goes in, a mismatched one is refused."""
    good2 = make_onnx_model(tmp_path / "v2.onnx", arch="convnet", data="digits", roi=DIGITS_ROI, train_steps=5,
                            version="v0002", seed=1)
    bad = make_broken_model(tmp_path, "wrong_labels")
    config = node_config(tmp_path, "mqtt://127.0.0.1:9", topic_prefix, edge_model,
                         **{"source.url": "sim:digits?seed=11&realtime=1&fps=100&limit=600"})
    node = EdgeNode(config)
    thread = threading.Thread(target=node.run)
    thread.start()
    try:
        time.sleep(1.0)
        frames_before = node.stats.frames
        node.reload_model(good2).join(timeout=30)
        assert node.slot.get().version == "v0002" and node.slot.previous.version == "v0001"
        node.reload_model(bad).join(timeout=30)
        assert node.slot.get().version == "v0002"  # refused: still running the good one
        time.sleep(0.5)
        assert node.stats.frames > frames_before  # the loop never stopped
        assert node.stats.errors == 0
    finally:
        node.stop()
        thread.join(timeout=30)


def test_input_calibration_engages_on_a_lighting_change_and_shows_in_stats(tmp_path, topic_prefix, edge_model) -> None:
    """With calibration always on, a darker light is mapped back (gain > 1 in stats) and the uploads carry the
    calibrated crop: its mean brightness is back near the pre-drift level, not at the darkened one."""
    config = node_config(tmp_path, "mqtt://127.0.0.1:9", topic_prefix, edge_model,
                         **{"source.url": "sim:digits?seed=5&limit=700&drift=brightness:-0.5@300",
                            "calibration.mode": "always", "calibration.reference": 200,
                            "sampler.budget_per_minute": "none", "sampler.threshold": 0.0})
    node = run_node(config)
    cal = node.last_snapshot["extra"]["calibration"]
    assert cal["mode"] == "always" and cal["engaged"] and cal["engagements"] >= 1
    assert cal["gain"][0] > 1.5  # half the light: about twice the gain
    con = sqlite3.connect(tmp_path / "edge" / "outbox.sqlite")
    rows = con.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    con.close()
    import cv2
    import numpy as np

    means = []
    for (payload,) in rows:
        d = decode_message(payload)
        img = cv2.imdecode(np.frombuffer(d.body, np.uint8), cv2.IMREAD_COLOR)
        means.append((d.msg.frame_index, float(img.mean())))
    before = [m for i, m in means if i < 300]
    after = [m for i, m in means if i >= 400]
    assert before and after
    assert abs(np.mean(after) - np.mean(before)) < 0.15 * np.mean(before)  # darkened by half without calibration


def test_a_provisioned_camera_uploads_to_the_secure_broker(tmp_path, edge_model) -> None:
    """`edgeloop pki device` -> edge.yaml -> EdgeNode over TLS with its certificate; the floor is applied."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    from deploy import pki_cli
    from deploy.keys import generate
    from deploy.pki import init_pki

    pki = init_pki(tmp_path / "pki")
    pub = generate(tmp_path / "keys")[1]
    with start_broker(kind="mosquitto", workdir=tmp_path / "broker", pki=pki.root) as broker:
        assert pki_cli.main(["device", "cam1", "--dir", str(pki.root), "--signing-key", str(pub), "--min-seq", "77",
                             "--broker", broker.url]) == 0
        collector = Collector(broker.client_url("trainer"), "edgeloop/v1", client_id="trainer")
        try:
            config = load_config(EdgeConfig, pki.root / "devices" / "cam1" / "edge.yaml", overrides={
                "state_dir": str(tmp_path / "edge"), "model.path": str(edge_model),
                "source.url": "sim:digits?seed=3&limit=600", "sampler.seed": 1, "sampler.threshold": 0.3,
                "sampler.budget_per_minute": "none", "sampler.budget_per_hour": "none",
                "sampler.budget_per_day": "none"})
            node = EdgeNode(config)
            assert node.updater is not None and node.updater.highest_seq == 76  # accepts seq 77, nothing older
            node.run()
            assert node.stats.stored >= 1
            collector.wait_for(node.stats.stored)
            assert set(collector.ids()) == {f"cam1.1.{i}" for i in range(node.stats.stored)}  # every one arrived
            assert not collector.errors and {h.device for h in collector.headers} == {"cam1"}
        finally:
            collector.close()


def test_samples_wait_for_the_trainer_on_a_fresh_broker(mosquitto_broker, topic_prefix, tmp_path, edge_model) -> None:
    """A fresh site: the camera starts before the trainer ever connected. mosquitto would acknowledge and discard
    its samples (nobody subscribes yet), so the edge holds them in the outbox until a retained trainer state is
    on the broker; then every one arrives at the trainer's session. 0 lost."""
    config = node_config(tmp_path, mosquitto_broker.url, topic_prefix, edge_model,
                         **{"source.url": "sim:digits?seed=13&realtime=1&fps=100&limit=1500",
                            "sampler.budget_per_minute": "none", "sampler.threshold": 0.2})
    node = EdgeNode(config)
    thread = threading.Thread(target=node.run)
    thread.start()
    collector = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (node.link.is_connected and node.stats.stored >= 5):
            time.sleep(0.1)
        time.sleep(1.0)  # connected for a while: a retained trainer state would have arrived by now
        assert node.stats.stored >= 5 and node.link.is_connected
        assert node.link.held and node.link.uploads == 0  # nothing handed to a broker that would discard it
        assert node.outbox.depth == node.stats.stored
        assert node.health()[1]["waiting_for_trainer"] is True
        # The trainer connects: subscribes (its session now queues samples), then publishes its retained state.
        collector = Collector(mosquitto_broker.url, topic_prefix, client_id=f"trainer-{topic_prefix[-8:]}",
                              persistent=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and node.link.held:
            time.sleep(0.05)
        assert not node.link.held
        thread.join(timeout=60)
        assert not thread.is_alive()
        collector.wait_for(node.stats.stored, timeout=30)
        assert set(collector.ids()) == {f"cam1.1.{i}" for i in range(node.stats.stored)}  # 0 lost
        assert node.link.uploads == node.stats.stored and not _spooled_ids(tmp_path / "edge")
        assert node.last_snapshot["extra"]["waiting_for_trainer"] is False
    finally:
        node.stop()
        thread.join(timeout=10)
        if collector is not None:
            collector.close()


def test_wait_for_trainer_off_uploads_at_once(mosquitto_broker, topic_prefix, tmp_path, edge_model) -> None:
    """``upload.wait_for_trainer: false``: no hold (the subscriber here announces no trainer state)."""
    collector = Collector(mosquitto_broker.url, topic_prefix, announce=False)
    try:
        node = run_node(node_config(tmp_path, mosquitto_broker.url, topic_prefix, edge_model,
                                    **{"upload.wait_for_trainer": False, "source.url": "sim:digits?seed=3&limit=600",
                                       "sampler.budget_per_minute": "none"}))
        assert node.stats.stored >= 1 and not node.link.held
        collector.wait_for(node.stats.stored)
        assert set(collector.ids()) == {f"cam1.1.{i}" for i in range(node.stats.stored)}
    finally:
        collector.close()


def test_the_hold_is_on_by_default_and_a_flag_turns_it_off(tmp_path) -> None:
    base = [sys.executable, "-m", "deploy.cli", "edge", "--state-dir", str(tmp_path / "e"), "--print-config"]
    on = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=60)
    off = subprocess.run(base + ["--no-wait-for-trainer"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "wait_for_trainer: true" in on.stdout and "wait_for_trainer: false" in off.stdout


def test_the_trainer_s_selection_hint_reaches_the_sampler_within_the_device_s_caps(mosquitto_broker, topic_prefix,
                                                                                    tmp_path, edge_model) -> None:
    """A retained ``selection_hint`` (the trainer's) is in force on the camera's sampler, clamped to the camera's
    own caps; the hinted uploads carry the probability they were drawn with and say ``hint``; a malformed hint
    is refused, counted and changes nothing; an empty one withdraws it."""
    from protocol.reports import SelectionHint, encode_report

    topics = Topics(topic_prefix)
    trainer = make_client(f"hinter-{topic_prefix[-8:]}", mosquitto_broker.url, protocol="3.1.1")
    start(trainer)
    hint = SelectionHint(device="trainer", boost={str(d): 50.0 for d in range(10)}, budget_per_minute=500,
                         expires=time.time() + 3600, reason="test: every digit")
    trainer.publish(topics.selection_hint(), encode_report(hint), 1, retain=True).wait_for_publish(5)
    collector = Collector(mosquitto_broker.url, topic_prefix)
    config = node_config(tmp_path, mosquitto_broker.url, topic_prefix, edge_model,
                         **{"source.url": "sim:digits?seed=5&realtime=1&fps=60&limit=100000",
                            "sampler.threshold": 5.0, "sampler.p_min": 0.01, "sampler.budget_per_minute": 5,
                            "sampler.hint_max_budget_per_minute": 20, "sampler.hint_max_boost": 8})
    node = EdgeNode(config)
    thread = threading.Thread(target=node.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and node.sampler.hint is None:
            time.sleep(0.05)
        h = node.sampler.hint
        assert h is not None and h.budget_per_minute == 20 and set(h.boost.values()) == {8.0}  # capped
        assert h.expires <= time.time() + 600  # the device's own limit on how long a hint lives
        assert node.stats.hints == {"capped": 1}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and node.sampler.hinted < 3:
            time.sleep(0.1)
        assert node.sampler.hinted >= 3
        trainer.publish(topics.selection_hint(), b'{"type": "selection_hint", "boost": {"0": 0.5}}', 1,
                        retain=True).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "rejected" not in node.stats.hints:
            time.sleep(0.05)
        assert node.stats.hints.get("rejected") == 1 and node.sampler.hint is h  # refused; the hint stands
        withdraw = SelectionHint(device="trainer", boost={}, expires=time.time(), reason="nothing missed")
        trainer.publish(topics.selection_hint(), encode_report(withdraw), 1, retain=True).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and node.sampler.hint is not None:
            time.sleep(0.05)
        assert node.sampler.hint is None and node.stats.hints.get("withdrawn") == 1
        time.sleep(0.6)  # a stats interval
        assert node.last_snapshot["extra"]["hint"]["received"] == {"capped": 1, "rejected": 1, "withdrawn": 1}
    finally:
        node.stop()
        thread.join(timeout=20)
        trainer.publish(topics.selection_hint(), b"", 1, retain=True).wait_for_publish(5)
        trainer.disconnect()
        trainer.loop_stop()
    collector.wait_for(node.stats.stored)
    hinted = [s for s in collector.samples if s.reason == "hint"]
    collector.close()
    assert len(hinted) >= 3
    assert all(0.0 < s.p_select <= 1.0 for s in hinted)
