"""``edgeloop deploy run`` (deploy/service.py) over a real mosquitto: the trainer's announcer publishes promoted
versions with their bytes, the service fetches and verifies them and rolls them out to light devices running
the real updater - automatically, or after an operator's approval; a version promoted while the service is
down shows up when it comes back; bad notices and bad bytes are refused and counted."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import wait_for  # tests/deploy/conftest.py
from deploy.rollout_gate import Policy
from deploy.service import DeployService, DeployServiceConfig, MetricsSettings, MqttSettings
from protocol import mqtt
from protocol.promotion import Promotion, encode_promotion
from protocol.topics import Topics

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
FAST = Policy(waves=[0.5, 1.0], soak=0.5, health_seconds=0.5, wave_timeout=30.0)


class Trainer:
    """What `edgeloop trainer run` does when it promotes: register the version, announce it with its bytes."""

    def __init__(self, state: Path, url: str, prefix: str) -> None:
        from trainer.announce import Announcer

        self.state = state
        self.topics = Topics(prefix)
        self.announcer = Announcer(self.topics, state, "digits")
        self.client = mqtt.start(mqtt.make_client(f"trainer-{prefix[-6:]}", url, protocol="3.1.1"))

    def promote(self, version: str, path: Path, parent: str | None) -> None:
        from trainer.registry import Registry

        with Registry(self.state) as reg:
            reg.register(version, path=path, labels=[str(i) for i in range(10)], parent=parent, status="promoted",
                         metrics={"accuracy": 0.9, "n": 40})
        self.announcer.announce(self.publish, version)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def good3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_onnx_model

    return make_onnx_model(tmp_path_factory.mktemp("good3") / "good3.onnx", version="v0006", seed=2, train_steps=40)


@pytest.fixture
def line(mosquitto_broker, topic_prefix, models, keys, tmp_path) -> Iterator[dict[str, Any]]:
    """A trainer (announcer), 4 light devices on v0001 and a factory for the service (stopped at teardown)."""
    from deploy.lightdevice import LightFleet

    trainer = Trainer(tmp_path / "trainer", mosquitto_broker.url, topic_prefix)
    lf = LightFleet(4, mosquitto_broker.url, tmp_path / "devs", [str(keys["pub"])], models["good1"],
                    prefix=topic_prefix, fps=10).start()
    services: list[DeployService] = []

    def service(**kw: Any) -> DeployService:
        cfg = DeployServiceConfig(state_dir=str(tmp_path / "deploy"), signing_key=str(keys["priv"]), rollout=FAST,
                                  mqtt=MqttSettings(url=mosquitto_broker.url, topic_prefix=topic_prefix,
                                                    client_id=f"deploy-{topic_prefix[-6:]}"),
                                  metrics=MetricsSettings(port=0), tick_s=0.05, poll_s=0.05, **kw)
        svc = DeployService(cfg).start()
        services.append(svc)
        return svc

    yield {"trainer": trainer, "fleet": lf, "service": service, "dir": tmp_path, "url": mosquitto_broker.url,
           "prefix": topic_prefix}
    for svc in services:
        svc.stop()
    lf.stop()
    trainer.close()


def _promotion(svc: DeployService, version: str) -> str | None:
    rec = svc.ctl.store.promotion("digits", version)
    return rec.status if rec is not None else None


def _state(svc: DeployService, version: str) -> str | None:
    rows = [r for r in svc.ctl.store.rollouts() if r.version == version]
    return str(rows[-1].state) if rows else None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_promoted_versions_roll_out_by_themselves_and_wait_for_approval_after_a_restart(line, models, good3) -> None:
    trainer, lf = line["trainer"], line["fleet"]
    trainer.promote("v0001", models["good1"], None)  # the bootstrap version: what the devices were provisioned with
    svc = line["service"]()
    wait_for(lambda: _promotion(svc, "v0001") == "baseline", 30, "v0001 taken as the fleet's baseline")
    assert svc.ctl.store.rollouts() == []  # the baseline is never rolled out
    trainer.promote("v0002", models["good2"], "v0001")
    wait_for(lambda: _state(svc, "v0002") == "completed", 90, "v0002 rolled out by itself")
    assert set(lf.versions().values()) == {"v0002"}
    r = svc.ctl.store.rollouts()[-1]
    assert r.prev_version == "v0001" and _promotion(svc, "v0002") == "started"
    fetched = Path(svc.ctl.store.promotion("digits", "v0002").path)
    assert fetched.read_bytes() == models["good2"].read_bytes()  # from the broker, verified; not the trainer's file
    assert fetched.parent.parent == line["dir"] / "deploy" / "models"
    svc.stop()

    # Promoted while the service is down; it comes back in approve mode: the version waits for an operator.
    trainer.promote("v0006", good3, "v0002")
    svc = line["service"](mode="approve")
    wait_for(lambda: _state(svc, "v0006") == "awaiting_approval", 30, "v0006 awaiting approval after the restart")
    time.sleep(1.0)
    assert set(lf.versions().values()) == {"v0002"}  # nothing published before the approval
    bad = _cli("rollout", "approve", "v0009", "--state-dir", str(line["dir"] / "deploy"))
    assert bad.returncode == 1 and "no rollout of v0009 awaits approval (waiting: v0006" in bad.stderr
    ok = _cli("rollout", "approve", "v0006", "--state-dir", str(line["dir"] / "deploy"), "--by", "alice")
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: _state(svc, "v0006") == "completed", 90, "v0006 rolled out after approval")
    assert set(lf.versions().values()) == {"v0006"}
    r = svc.ctl.store.rollouts()[-1]
    assert r.prev_version == "v0002"  # the rollback target: the version the whole fleet reached last
    assert any(e.kind == "approved" and "by alice" in (e.detail or "") for e in svc.ctl.store.events(r.id))

    # Reject: the version never ships, the reason stays with it.
    trainer.promote("v0007", models["untrained"], "v0006")
    wait_for(lambda: _state(svc, "v0007") == "awaiting_approval", 30, "v0007 awaiting approval")
    out = _cli("rollout", "reject", "v0007", "--reason", "agreement too low on line 3", "--state-dir",
               str(line["dir"] / "deploy"), "--by", "bob")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: _state(svc, "v0007") == "rejected", 30, "v0007 rejected")
    assert svc.ctl.store.rollouts()[-1].reason == "by bob: agreement too low on line 3"
    assert set(lf.versions().values()) == {"v0006"}

    # What an outside tool reads: /metrics in Prometheus's format, /healthz in JSON.
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(svc.metrics_url + "/metrics", timeout=10) as resp:
        fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("edgeloop_deploy_rollouts", (("state", "completed"),))] == 2  # the store: v0002 and v0006
    assert samples[("edgeloop_deploy_rollouts", (("state", "rejected"),))] == 1
    assert samples[("edgeloop_deploy_promotions_total", (("outcome", "approved"),))] == 1
    assert samples[("edgeloop_deploy_promotions_total", (("outcome", "rejected"),))] == 1
    assert samples[("edgeloop_deploy_device_versions", (("version", "v0006"),))] == 4
    assert samples[("edgeloop_deploy_gate_decisions_total", (("outcome", "complete"),))] == 1
    assert samples[("edgeloop_deploy_mqtt_connected", ())] == 1
    with urllib.request.urlopen(svc.metrics_url + "/healthz", timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"


def test_bad_notices_and_bad_bytes_are_refused_and_counted(line, models) -> None:
    trainer = line["trainer"]
    t = Topics(line["prefix"])
    trainer.promote("v0001", models["good1"], None)
    svc = line["service"](fetch_timeout_s=0.5)
    wait_for(lambda: _promotion(svc, "v0001") == "baseline", 30, "the baseline")
    trainer.publish(t.trainer_promoted(), b"{not json", retain=False)
    trainer.publish(t.trainer_model("v0004"), b'{"version": "v0004"}', retain=False)
    good = trainer.announcer.notice(_record(trainer, "v0001"))
    too_big = Promotion(**{**_fields(good), "version": "v0010", "seq": 10,
                           "size": 10**12, "chunk_size": 10**9, "chunk_sha256": ["a" * 64] * 1000})
    trainer.publish(t.trainer_model("v0010"), encode_promotion(too_big), retain=False)
    # the notice promises other bytes than the chunks deliver (a wrong whole-file digest): fetched, then refused
    lying = Promotion(**{**_fields(good), "version": "v0011", "seq": 11, "sha256": "0" * 64})
    _copy_chunks(trainer, "v0001", "v0011")
    trainer.publish(t.trainer_model("v0011"), encode_promotion(lying), retain=True)
    wait_for(lambda: _promotion(svc, "v0011") == "failed", 30, "the notice with the wrong digest to fail")
    assert "sha256_mismatch" in svc.ctl.store.promotion("digits", "v0011").detail
    # chunk digests that no chunk matches: never completes, given up after the attempts
    wrong = Promotion(**{**_fields(good), "version": "v0012", "seq": 12,
                         "chunk_sha256": ["f" * 64] * good.chunk_count})
    _copy_chunks(trainer, "v0001", "v0012")
    trainer.publish(t.trainer_model("v0012"), encode_promotion(wrong), retain=True)
    wait_for(lambda: _promotion(svc, "v0012") == "failed", 30, "the notice with wrong chunk digests to fail")
    assert "fetch_timeout" in svc.ctl.store.promotion("digits", "v0012").detail
    c = svc.intake.counters
    assert c["rejected:schema"] == 2 and c["rejected:too_large"] == 1
    assert c["chunk_rejected:chunk_hash"] >= good.chunk_count
    assert svc.ctl.store.promotion("digits", "v0010") is None
    assert not [r for r in svc.ctl.store.rollouts() if r.version in ("v0011", "v0012")]
    assert set(line["fleet"].versions().values()) == {"v0001"}


def _record(trainer: Trainer, version: str) -> Any:
    from trainer.registry import Registry

    with Registry(trainer.state) as reg:
        return reg.get(version)


def _fields(p: Promotion) -> dict[str, Any]:
    return {f: getattr(p, f) for f in p.__struct_fields__}


def _copy_chunks(trainer: Trainer, src: str, dst: str) -> None:
    """Publish ``src``'s chunk bodies as ``dst``'s chunks (a trainer bug or an attacker with trainer rights)."""
    from protocol.chunks import split_chunks
    from protocol.messages import Chunk, encode_message

    data = _record(trainer, src).path.read_bytes()
    pieces = split_chunks(data, trainer.announcer.chunk_size)
    for i, piece, digest in pieces:
        msg = Chunk(model_id="digits", version=dst, index=i, count=len(pieces), sha256=digest)
        trainer.publish(trainer.topics.trainer_chunk(dst, i), encode_message(msg, piece, device="trainer", seq=i),
                        retain=True)
