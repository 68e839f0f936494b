"""One light device (real updater) against crafted manifests/chunks over a real mosquitto: every rejection
has its own reason on dev/{id}/model/status, downloads resume without refetching, and a device killed
mid-download or mid-swap comes back on a complete, verified model."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import pytest

from conftest import wait_for
from deploy.lightdevice import LightFleet
from deploy.publisher import Publisher, read_artifact
from edge.updater import PowerLoss, select_boot_model
from protocol import mqtt
from protocol.chunks import split_chunks
from protocol.messages import Chunk, encode_message
from protocol.reports import ModelStatus, decode_report
from protocol.signing import load_private_key
from protocol.topics import Topics

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024  # 4.8 MB model -> 74 chunks: room to kill a download half-way


class Env:
    def __init__(self, broker, prefix, keys, models, root: Path) -> None:
        self.topics = Topics(prefix)
        self.models = models
        self.statuses: list[ModelStatus] = []
        self.client = mqtt.make_client(f"test-{prefix.split('/')[-1]}", broker.url, protocol="3.1.1")
        self.client.on_message = self._on_message
        mqtt.start(self.client)
        self.client.subscribe(self.topics.all_model_status(), 1)
        self.pub = Publisher(self._publish, load_private_key(keys["priv"]), self.topics, CHUNK)
        self.other = Publisher(self._publish, load_private_key(keys["other_priv"]), self.topics, CHUNK)
        self.fleet = LightFleet(0, broker.url, root, [str(keys["pub"])], models["good1"], prefix=prefix, fps=20)
        self.seq = int(time.time() * 1000)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def _on_message(self, c, u, msg) -> None:
        if msg.payload:
            self.statuses.append(decode_report(msg.payload, "model_status"))

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def manifest(self, art, pub=None, **kw):
        kw.setdefault("seq", self.next_seq())
        kw.setdefault("rollout_id", "rtest")
        kw.setdefault("fleet", "default")
        kw.setdefault("wave", 0)
        return (pub or self.pub).manifest(art, **kw)

    def wait_status(self, state: str, reason: str | None = None, version: str | None = None, timeout=30.0):
        def found():
            return next((s for s in self.statuses if s.state == state and (reason is None or s.reason == reason)
                         and (version is None or s.version == version)), None)
        wait_for(lambda: found() is not None, timeout, f"status {state}/{reason}")
        return found()

    def close(self) -> None:
        self.fleet.stop()
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def env(mosquitto_broker, topic_prefix, keys, models, tmp_path):
    e = Env(mosquitto_broker, topic_prefix, keys, models, tmp_path / "devs")
    yield e
    e.close()


def _device(env: Env, name: str = "dev0", fault=None):
    d = env.fleet.add(name, fault).start()
    env.fleet.start() if env.fleet._thread is None else None
    wait_for(d.connected, 10, "device connected")
    return d


def test_rejections_have_distinct_reasons(env) -> None:
    d = _device(env)
    art = read_artifact(env.models["good2"])
    env.pub.publish_chunks(art)
    topic = env.topics.manifest("default")

    good = env.manifest(art)
    tampered = msgspec.structs.replace(good, size=good.size, version="v0099")  # signature no longer matches
    env.pub.publish_manifest("default", tampered)
    env.wait_status("rejected", "bad_signature")

    env.other.publish_manifest("default", env.manifest(art, pub=env.other))
    env.wait_status("rejected", "unknown_key")

    env.pub.publish_manifest("default", env.manifest(art, expires=time.time() - 1))
    env.wait_status("rejected", "expired")

    old = env.manifest(art)          # signed earlier, lower seq
    newer = env.manifest(art)
    env.pub.publish_manifest("default", newer)
    env.wait_status("active", version="v0002")
    assert d.updater.active_version == "v0002"
    env.pub.publish_manifest("default", old)  # replay / downgrade attempt
    env.wait_status("rejected", "replayed")

    big = read_artifact(env.models["good1"], version="v0001")
    limits_size = d.updater.limits.max_model_bytes
    d.updater.limits.max_model_bytes = 1000
    env.pub.publish_chunks(big)
    env.pub.publish_manifest("default", env.manifest(big))
    env.wait_status("rejected", "too_large")
    d.updater.limits.max_model_bytes = limits_size

    d.updater.limits.channels = (3,)  # a colour camera cannot feed the 1-channel convnet
    env.pub.publish_manifest("default", env.manifest(big))
    env.wait_status("rejected", "incompatible")
    assert d.updater.active_version == "v0002"
    reasons = {s.reason for s in env.statuses if s.state == "rejected"}
    assert {"bad_signature", "unknown_key", "expired", "replayed", "too_large", "incompatible"} <= reasons
    del topic


def test_tampered_chunk_is_rejected_then_a_good_copy_completes(env) -> None:
    d = _device(env)
    art = read_artifact(env.models["good2"])
    env.pub.publish_chunks(art)
    pieces = split_chunks(art.data, CHUNK)
    i, piece, digest = pieces[3]
    evil = bytes([piece[0] ^ 0xFF]) + piece[1:]
    import hashlib
    forged = Chunk(model_id=art.model_id, version=art.version, index=i, count=len(pieces),
                   sha256=hashlib.sha256(evil).hexdigest())  # self-consistent, but not what was signed
    env._publish(env.topics.chunk(art.model_id, art.version, i), encode_message(forged, evil, device="x", seq=1),
                 1, True)
    env.pub.publish_manifest("default", env.manifest(art))
    env.wait_status("failed", "chunk_hash")
    assert d.updater.active_version == "v0001"
    env.pub.publish_chunks(art)  # the controller re-publishes the genuine chunk
    env.wait_status("active", version="v0002")
    assert d.updater.active_version == "v0002"


def test_killed_mid_download_resumes_without_refetching(env) -> None:
    art = read_artifact(env.models["good2"])
    n = -(-art.size // CHUNK)
    got = {"n": 0}

    def fault(point: str) -> None:
        if point == "chunk":
            got["n"] += 1
            if got["n"] == n // 2:
                threading.Thread(target=env.fleet.devices["dev0"].kill).start()
                raise PowerLoss()

    d = _device(env, fault=fault)
    env.pub.publish_chunks(art)
    env.pub.publish_manifest("default", env.manifest(art))
    wait_for(lambda: not d.alive, 30, "device killed mid-download")
    kept = len(list((d.state_dir / "download" / art.sha256).iterdir()))
    assert n // 2 <= kept < n
    assert select_boot_model(d.state_dir, env.models["good1"])[0] == Path(env.models["good1"])
    stored = {"n": 0}

    def count(point: str) -> None:
        stored["n"] += point == "chunk"  # the updater's hook after it stored a chunk it did not have

    d2 = env.fleet.restart("dev0", fault=count)
    wait_for(lambda: d2.updater.active_version == "v0002", 30, "resumed download finished")
    # It stored exactly what was missing. (Counting chunk *messages* instead failed under CI's load: a reconnect or
    # a dropped-queue recovery re-subscribes the in-flight window and the broker re-sends those retained chunks,
    # 53 messages for 37 missing; none of them was a chunk kept on disk, which it never subscribes to.)
    assert stored["n"] == n - kept
    resumed = [s for s in env.statuses if s.state == "downloading" and s.metrics.get("resumed")]
    assert resumed and resumed[-1].metrics["chunks"] == kept


def test_killed_mid_swap_comes_back_on_a_good_model(env) -> None:
    art = read_artifact(env.models["good2"])

    def fault(point: str) -> None:
        if point == "swapped":
            threading.Thread(target=env.fleet.devices["dev0"].kill).start()
            raise PowerLoss()

    d = _device(env, fault=fault)
    env.pub.publish_chunks(art)
    env.pub.publish_manifest("default", env.manifest(art))
    wait_for(lambda: not d.alive, 30, "device killed mid-swap")
    # The pointer was not written: a reboot loads the old, verified model...
    path, _ = select_boot_model(d.state_dir, env.models["good1"])
    assert path == Path(env.models["good1"])
    d2 = env.fleet.restart("dev0")
    # ... and then finishes the pending update from the model file it already verified (no download).
    wait_for(lambda: d2.updater.active_version == "v0002", 30, "pending update finished after reboot")
    assert d2.updater.chunks_received == 0
    wait_for(lambda: select_boot_model(d2.state_dir, env.models["good1"])[1] == "v0002", 10, "pointer written")
    assert select_boot_model(d2.state_dir, env.models["good1"])[0].name == f"{art.sha256}.onnx"
