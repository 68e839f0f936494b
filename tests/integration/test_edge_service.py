"""The edge as a service on a line, read the way outside tools read it.

* every plain-JSON topic (state, birth, stats, model status, predictions, the MQTT Will, Home Assistant
  discovery) read with the ``mosquitto_sub`` command-line client and ``json.loads`` only;
* ``/metrics`` scraped over HTTP and parsed with ``prometheus_client``'s parser, ``/healthz`` failing when
  the frame loop wedges;
* a full disk under the state directory: the camera keeps classifying and publishing verdicts, reports
  the outbox error, and spools again when space returns.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import EdgeConfig
from edge.node import EdgeNode
from protocol.config import load_config
from protocol.mqtt import make_client, start
from protocol.topics import Topics
from tests.full_disk import fill_disk, tmpfs
from tests.model_factory import make_onnx_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS_ROI = [96, 56, 128, 128]
DIGITS = [str(i) for i in range(10)]

needs_clients = pytest.mark.skipif(shutil.which("mosquitto_sub") is None or shutil.which("mosquitto_pub") is None,
                                   reason="needs mosquitto-clients (apt-get install mosquitto-clients; CI installs it)")


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("model") / "m.onnx", arch="convnet", data="digits",
                           roi=DIGITS_ROI, train_steps=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Sub:
    """``mosquitto_sub -v`` in the background: what an outside tool receives, line by line."""

    def __init__(self, port: int, *topics: str) -> None:
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-v", "-q", "1"]
        for t in topics:
            args += ["-t", t]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.lines: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.5)  # subscribed

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic, _, payload = line.rstrip("\n").partition(" ")
            self.lines.append((topic, payload))

    def json(self, topic_end: str) -> list[dict]:
        """Every payload on a topic ending with ``topic_end``, parsed by json.loads alone."""
        return [json.loads(p) for t, p in list(self.lines) if t.endswith(topic_end)]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@needs_clients
def test_every_topic_is_plain_json_to_mosquitto_sub(mosquitto_broker, topic_prefix, tmp_path, edge_model) -> None:
    port, metrics_port = mosquitto_broker.port, free_port()
    ha_prefix = f"ha-{topic_prefix.replace('/', '-')}"
    sub = Sub(port, f"{topic_prefix}/#", f"{ha_prefix}/#")
    cmd = [sys.executable, "-m", "deploy.cli", "edge", "--device-id", "line3-cam1", "--state-dir",
           str(tmp_path / "edge"), "--model", str(edge_model), "--topic-prefix", topic_prefix,
           "--broker", mosquitto_broker.url, "--source", "sim:digits?seed=3&realtime=1&fps=30",
           "--stats-interval", "1", "--predictions", "all", "--homeassistant", "--metrics-port", str(metrics_port)]
    env = {**os.environ, "EDGELOOP_EDGE__HOMEASSISTANT__PREFIX": ha_prefix,
           "EDGELOOP_EDGE__PREDICTIONS__MAX_PER_S": "none"}
    edge = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sub.json("/stats") and len(sub.json("/predictions")) >= 10 or edge.poll() is not None,
                   60, "stats and verdicts")
        assert edge.poll() is None, edge.communicate()[1][-3000:]
        # model/status: the updater rejects a manifest that is not one, and says why, in JSON
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t",
                        Topics(topic_prefix).manifest("default"), "-m", "not a manifest"], check=True, timeout=10)
        wait_until(lambda: sub.json("/model/status"), 20, "model status")
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        health, health_text = http_get(f"http://127.0.0.1:{metrics_port}/healthz")
    finally:
        edge.send_signal(signal.SIGKILL)  # no goodbye: the broker publishes the Will
        edge.wait(timeout=30)
    will = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-C", "1", "-W", "10", "-t",
                           Topics(topic_prefix).state("line3-cam1")], capture_output=True, text=True, timeout=20)
    sub.close()

    state = sub.json("/state")[0]
    assert state["type"] == "state" and state["state"] == "online" and state["device"] == "line3-cam1"
    assert json.loads(will.stdout)["state"] == "offline"  # the MQTT Will, retained, JSON too
    birth = sub.json("/birth")[0]
    assert birth["model_version"] == "v0001" and birth["labels"] == DIGITS and birth["boot"] == state["boot"]
    stats = sub.json("/stats")[-1]
    assert stats["fps"] > 0 and stats["extra"]["frames"] > 0 and stats["outbox_errors"] == 0
    assert 0.0 <= stats["defect_rate"] <= 1.0  # digits: every label is outside ok_labels
    verdicts = sub.json("/predictions")
    v = verdicts[-1]
    assert v["type"] == "prediction" and v["label"] in DIGITS and v["ok"] is False and v["model_version"] == "v0001"
    assert v["roi"] == DIGITS_ROI and len(v["topk"]) == 3 and v["latency_ms"] > 0
    frames = [x["frame_index"] for x in verdicts]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # one verdict per frame, in order
    rejected = sub.json("/model/status")[-1]
    assert rejected["state"] == "rejected" and rejected["reason"] == "bad_magic"
    configs = {t: json.loads(p) for t, p in sub.lines if t.startswith(ha_prefix)}
    assert {t.split("/")[1] for t in configs} == {"binary_sensor", "sensor"} and len(configs) == 4
    online = next(c for t, c in configs.items() if t.endswith("_online/config"))
    assert online["state_topic"].endswith("/dev/line3-cam1/state") and online["payload_on"] == "online"
    assert all(c["unique_id"] in t and c["device"]["identifiers"] == ["edgeloop_line3-cam1"]
               for t, c in configs.items())

    assert status == 200 and health == 200, health_text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("edgeloop_edge_frames", "edgeloop_edge_fps", "edgeloop_edge_inference_latency_seconds",
                 "edgeloop_edge_uploads", "edgeloop_edge_outbox_depth", "edgeloop_edge_outbox_dropped",
                 "edgeloop_edge_errors", "edgeloop_edge_model_info", "edgeloop_edge_drift_score",
                 "edgeloop_edge_predictions_published", "edgeloop_edge_model_rejections",
                 "edgeloop_edge_samples_hinted", "edgeloop_edge_selection_hint_active",
                 "process_resident_memory_bytes"):
        assert name in families, name
    value = metric_values(text)
    assert value[("edgeloop_edge_frames_total", ())] > 0
    assert value[("edgeloop_edge_inference_latency_seconds_count", ())] > 0
    assert value[("edgeloop_edge_model_info", (("version", "v0001"),))] == 1
    assert value[("edgeloop_edge_selection_hint_active", ())] == 0  # no trainer asked
    assert json.loads(health_text)["status"] == "ok"


def _node(tmp_path: Path, url: str, prefix: str, model: Path, state_dir: Path, **overrides) -> EdgeNode:
    base = {"device_id": "cam1", "state_dir": str(state_dir), "model.path": str(model),
            "source.url": "sim:digits?seed=4&realtime=1&fps=60", "mqtt.url": url, "mqtt.topic_prefix": prefix,
            "updater.enabled": False, "stats_interval_s": 0.3, "metrics.port": free_port()}
    base.update(overrides)
    return EdgeNode(load_config(EdgeConfig, overrides=base))


def test_metrics_endpoint_and_healthz_when_the_loop_wedges(tmp_path, topic_prefix, edge_model) -> None:
    node = _node(tmp_path, "mqtt://127.0.0.1:9", topic_prefix, edge_model, tmp_path / "edge",
                 **{"metrics.stall_s": 1.0})
    wedge, wedged = threading.Event(), threading.Event()
    step = node.pipeline.step_batch

    def maybe_stuck(images):
        if wedge.is_set():
            wedged.set()
            time.sleep(3.0)  # inference hangs (a driver, a deadlock)
        return step(images)

    node.pipeline.step_batch = maybe_stuck
    thread = threading.Thread(target=node.run)
    thread.start()
    try:
        wait_until(lambda: node.metrics_server is not None and node.stats.frames > 20, 30, "frames")
        base = node.metrics_server.url
        code, body = http_get(base + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, text = http_get(base + "/metrics")
        assert code == 200
        value = metric_values(text)
        assert value[("edgeloop_edge_frames_total", ())] > 20
        assert value[("edgeloop_edge_mqtt_connected", ())] == 0  # nothing listens on port 9...
        assert value[("edgeloop_edge_predictions_dropped_total", (("reason", "offline"),))] > 0  # ...so verdicts drop
        assert http_get(base + "/nothing")[0] == 404
        post = urllib.request.Request(base + "/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(post, timeout=10)
        assert err.value.code == 405  # read-only
        wedge.set()
        wedged.wait(10)
        time.sleep(1.5)
        code, body = http_get(base + "/healthz")
        assert code == 503 and "no frame classified" in json.loads(body)["reason"]
        wedge.clear()
        wait_until(lambda: http_get(base + "/healthz")[0] == 200, 15, "healthy again")
    finally:
        node.stop()
        thread.join(timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path):
    with tmpfs(tmp_path / "fs", "16m") as fs:
        yield fs


def test_disk_full_keeps_inferring_and_publishing_then_resumes(mosquitto_broker, topic_prefix, tmp_path, edge_model,
                                                               small_fs, caplog) -> None:

    topics = Topics(topic_prefix)
    verdicts: list[bytes] = []
    listener = make_client(f"verdicts-{os.getpid()}", mosquitto_broker.url, protocol="3.1.1")
    listener.on_connect = lambda c, *a: c.subscribe(topics.predictions("cam1"), 0)
    listener.on_message = lambda c, u, m: verdicts.append(m.payload)
    start(listener)
    node = _node(tmp_path, mosquitto_broker.url, topic_prefix, edge_model, small_fs / "edge",
                 **{"predictions.mode": "all", "predictions.max_per_s": "none", "sampler.threshold": 0.0,
                    "sampler.budget_per_minute": "none", "sampler.budget_per_hour": "none",
                    "sampler.budget_per_day": "none", "outbox.retry_s": 0.5, "upload.image_format": "png"})
    thread = threading.Thread(target=node.run)
    thread.start()
    try:
        wait_until(lambda: node.stats.stored > 5 and len(verdicts) > 5, 30, "spooling and verdicts")
        fill_disk(small_fs / "filler")
        wait_until(lambda: node.stats.outbox_errors > 0, 60, "the outbox to hit the full disk")
        frames, sent, stored = node.stats.frames, len(verdicts), node.stats.stored
        time.sleep(2.0)
        assert thread.is_alive()
        assert node.stats.frames > frames + 30          # still classifying...
        assert len(verdicts) > sent + 30                # ...and publishing verdicts...
        assert node.stats.stored == stored              # ...but not spooling
        node._publish_stats()
        snap = node.last_snapshot
        assert snap["outbox_errors"] > 0 and "database or disk is full" in snap["outbox_error"]
        assert any("database or disk is full" in r.getMessage() and "spooling paused" in r.getMessage()
                   for r in caplog.records)
        assert not any("cannot rollback" in r.getMessage() for r in caplog.records)
        (small_fs / "filler").unlink()                  # space is back
        wait_until(lambda: node.stats.stored > stored + 5, 30, "spooling to resume")
        assert node.outbox_error is None
    finally:
        node.stop()
        thread.join(timeout=30)
        listener.disconnect()
        listener.loop_stop()
