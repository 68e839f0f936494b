"""Issue 12's rollout attacks against a real mosquitto with the generated TLS + ACL config.

The broker pins every device to ``dev/{its certificate's CN}/``; the controller counts only provisioned devices
of the rollout's fleet (the PKI is its registry) and only statuses naming its rollout and a manifest sequence it
issued; devices check the fleet signed into the manifest and keep a sequence floor after a factory reset.
Denials are asserted with a subscriber that may read the topic (a denied QoS 1 publish still "succeeds" for the
publisher), after a control message on the attacker's own topic: one connection's messages arrive in order.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from deploy.broker import Broker, find_mosquitto, start_broker
from deploy.controller import Controller, Policy
from deploy.fleet import registry_source
from deploy.lightdevice import LightFleet
from deploy.pki import PKI, init_pki
from deploy.publisher import Publisher, read_artifact
from protocol.messages import encode_message
from protocol.mqtt import make_client, start
from protocol.reports import Birth, ModelStatus, State, Stats, decode_report, encode_report
from protocol.signing import load_private_key
from protocol.topics import Topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for model_factory
os.environ.setdefault("EDGELOOP_MODEL_CACHE", str(Path.home() / ".cache" / "edgeloop-test-models"))

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (CI installs it)")]

T = Topics()
P = T.prefix
FAST = dict(soak=0.5, health_seconds=0.5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    p = init_pki(tmp_path_factory.mktemp("pki") / "pki")
    for name, fleet in [("cam-1", "A"), ("cam-2", "A"), ("cam-3", "A"), ("cam-b", "B"), ("cam-c1", "C"),
                        ("cam-c2", "C"), ("cam-r", "R")]:
        p.issue(name, "device", fleet=fleet)
    p.issue("replayer", "deploy")  # a second publisher of manifests (its own client id: CN = client id)
    return p


@pytest.fixture(scope="module")
def secure(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with start_broker(kind="mosquitto", workdir=tmp_path_factory.mktemp("broker"), pki=pki.root) as b:
        yield b


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from model_factory import make_onnx_model

    d = tmp_path_factory.mktemp("models")
    return {"v0001": make_onnx_model(d / "good1.onnx", version="v0001"),
            "v0002": make_onnx_model(d / "good2.onnx", version="v0002", seed=1, train_steps=40)}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from deploy.keys import generate

    priv, pub = generate(tmp_path_factory.mktemp("keys"))
    return {"priv": priv, "pub": pub}


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Client:
    """A connected client with one PKI identity that records what it receives."""

    def __init__(self, broker: Broker, identity: str, *subs: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.c = make_client(f"t-{identity}", broker.client_url(identity), protocol="3.1.1")
        self.c.on_message = lambda c, u, m: self._got(m.topic, m.payload)
        start(self.c)
        for topic in subs:
            ok = threading.Event()
            self.c.on_subscribe = lambda *a: ok.set()
            self.c.subscribe(topic, qos=1)
            assert ok.wait(5), "no SUBACK"

    def _got(self, topic: str, payload: bytes) -> None:
        with self.cond:
            self.got.append((topic, payload))
            self.cond.notify_all()

    def wait_for(self, test: Callable[[str, bytes], bool], timeout: float = 20.0, what: str = "message") -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: any(test(t, p) for t, p in self.got), timeout), f"no {what}"

    def topics(self) -> set[str]:
        with self.cond:
            return {t for t, _ in self.got}

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _status(device: str, rid: str, seq: int | None, **metrics: object) -> bytes:
    return encode_report(ModelStatus(device=device, model_id="mnist", version="v0002", state="active",
                                     rollout_id=rid, seq=seq, metrics={"active": "v0002", **metrics}))


def _stats(device: str) -> bytes:
    return encode_report(Stats(device=device, fps=10.0, latency_p50_ms=1.0, latency_p95_ms=2.0, outbox_depth=0,
                               outbox_bytes=0, outbox_dropped=0, uploads=0))


def _controller(secure: Broker, pki: PKI, keys: dict[str, Path], tmp: Path, fleet: str) -> Controller:
    return Controller(secure.client_url("deploy"), keys["priv"], tmp / "ctl", fleet=fleet, tick_s=0.05,
                      registry=registry_source(str(pki.root))).start()


def _halted(ctl: Controller, rid: str, timeout: float = 30.0) -> str:
    """Wait until the gate halted the rollout; returns the reason."""
    assert ctl.wait(rid, timeout, states=("rolling_back", "rolled_back", "aborted", "completed")) != "completed", \
        "the wave advanced to completion"
    r = ctl.store.rollout(rid)
    assert r is not None and r.state != "completed"
    return r.reason or ""


def test_forged_status_forged_offline_and_fake_ids_do_not_move_a_wave(secure: Broker, pki: PKI, models, keys,
                                                                       tmp_path: Path) -> None:
    """A stolen device (cam-1) forges statuses and "offline" for its canary peers and 200 made-up ids, and lies
    about itself; a device of another fleet reports the rollout healthy. None of it passes a wave that needs
    two devices: the broker drops the forgeries, the gate ignores the stale/foreign and other-fleet reports,
    and the wave halts with no_reports instead of advancing."""
    ctl = _controller(secure, pki, keys, tmp_path, "A")
    reader = Client(secure, "monitor", f"{P}/dev/#")
    thief, other = Client(secure, "cam-1"), Client(secure, "cam-b")
    try:
        assert ctl.fleet.ids("A") == ["cam-1", "cam-2", "cam-3"]
        rid = ctl.start_rollout("v0002", models["v0002"], Policy(waves=[1.0], min_reporting=2, wave_timeout=6, **FAST),
                                previous=("v0001", models["v0001"]), model_id="mnist")
        wait_for(lambda: ctl.store.rollout(rid).wave_published, 10, "the wave's manifest")
        seq = ctl.store.target("A").seq
        for d in ("cam-2", "cam-3"):  # forged status and forged offline for the peers
            thief.publish(T.model_status(d), _status(d, rid, seq, health="ok"), retain=True)
            thief.publish(T.state(d), encode_report(State(device=d, state="offline", boot=1)), retain=True)
        for i in range(200):  # made-up device ids
            thief.publish(T.model_status(f"ghost-{i}"), _status(f"ghost-{i}", rid, seq, health="ok"), retain=True)
        # Its own topics it may write: first a status naming a sequence never issued (foreign) ...
        thief.publish(T.state("cam-1"), encode_report(State(device="cam-1", state="online", boot=1)), retain=True)
        thief.publish(T.model_status("cam-1"), _status("cam-1", rid, seq + 10_000, health="ok"), retain=True)
        thief.publish(T.stats("cam-1"), _stats("cam-1"))
        wait_for(lambda: ctl.counters["gate:ignored:foreign"] >= 1, 10, "the foreign status counted")
        # ... then a well-formed lie about itself: one device, and the wave needs two.
        thief.publish(T.model_status("cam-1"), _status("cam-1", rid, seq, health="ok"), retain=True)
        thief.publish(T.stats("cam-1"), _stats("cam-1"))
        other.publish(T.model_status("cam-b"), _status("cam-b", rid, seq, health="ok"), retain=True)
        other.publish(T.stats("cam-b"), _stats("cam-b"))
        reader.wait_for(lambda t, p: t == T.model_status("cam-b"), what="cam-b's status")
        reader.wait_for(lambda t, p: t == T.stats("cam-1"), what="cam-1's stats")

        reason = _halted(ctl, rid)
        assert reason.startswith("no_reports: 1 of the 2 devices needed"), reason
        assert not any(e.kind == "completed" for e in ctl.store.events(rid))
        forged = {T.model_status("cam-2"), T.model_status("cam-3"), T.state("cam-2"), T.state("cam-3")}
        assert not forged & reader.topics() and not any("ghost" in t for t in reader.topics())
        assert {d.device for d in ctl.fleet.devices()} == set(pki.devices())  # no ghost among them
        assert [d.device for d in ctl.fleet.devices("A") if d.online] == ["cam-1"]
        assert ctl.fleet.rejected.get("unknown_device", 0) == 0  # the broker stopped the ghosts already
    finally:
        for d in ("cam-1",):  # clear the thief's retained lies for later tests
            thief.publish(T.model_status(d), b"", retain=True)
            thief.publish(T.state(d), b"", retain=True)
        other.publish(T.model_status("cam-b"), b"", retain=True)
        for c in (thief, other, reader):
            c.close()
        ctl.stop()


def test_an_all_offline_canary_waits_then_halts_with_no_reports(secure: Broker, pki: PKI, models, keys,
                                                                tmp_path: Path) -> None:
    ctl = _controller(secure, pki, keys, tmp_path, "C")
    devs = [Client(secure, d) for d in ("cam-c1", "cam-c2")]
    try:
        for c, d in zip(devs, ("cam-c1", "cam-c2")):  # both report, truthfully, that they are offline
            c.publish(T.state(d), encode_report(State(device=d, state="offline", boot=1)), retain=True)
        wait_for(lambda: len(ctl.fleet.devices("C")) == 2, 10, "the devices' states")
        rid = ctl.start_rollout("v0002", models["v0002"], Policy(waves=[0.5, 1.0], wave_timeout=3, **FAST),
                                previous=("v0001", models["v0001"]), model_id="mnist")
        time.sleep(2.0)
        assert ctl.store.rollout(rid).state == "running" and ctl.store.rollout(rid).wave == 0  # it waits
        reason = _halted(ctl, rid)
        assert reason.startswith("no_reports: 0 of the 1 devices needed"), reason
        assert ctl.store.rollout(rid).wave == 0
        assert [e.kind for e in ctl.store.events(rid)].count("wave") == 1  # never published wave 2
        assert ctl.counters["gate:halt:no_reports"] == 1
    finally:
        for c, d in zip(devs, ("cam-c1", "cam-c2")):
            c.publish(T.state(d), b"", retain=True)
            c.close()
        ctl.stop()


@pytest.fixture
def publisher(secure: Broker, keys) -> Iterator[tuple[Publisher, Client]]:
    """A publisher of signed manifests and chunks with the deploy role (the ``replayer`` identity)."""
    client = Client(secure, "replayer")
    pub = Publisher(lambda topic, payload, qos, retain: client.publish(topic, payload, retain),
                    load_private_key(keys["priv"]), T)
    yield pub, client
    client.close()


def _lightdevice(secure: Broker, keys, models, tmp: Path, device: str, fleet: str, min_seq: int = 0) -> LightFleet:
    lf = LightFleet(0, secure.url, tmp / "devs", [str(keys["pub"])], models["v0001"], fleet=fleet, fps=10,
                    url_for=secure.client_url)
    lf.add(device, min_seq=min_seq)
    return lf.start()


def _device_status(reader: Client, device: str, state: str, reason: str | None = None) -> Callable[[str, bytes], bool]:
    def match(topic: str, payload: bytes) -> bool:
        if topic != T.model_status(device) or not payload:
            return False
        s = decode_report(payload, "model_status")
        return s.state == state and (reason is None or s.reason == reason)
    return match


def test_a_manifest_for_fleet_a_is_rejected_on_fleet_b(secure: Broker, publisher, models, keys,
                                                       tmp_path: Path) -> None:
    pub, client = publisher
    art = read_artifact(models["v0002"], "mnist", "v0002")
    pub.publish_chunks(art)
    reader = Client(secure, "monitor", f"{P}/dev/cam-b/model/status")
    lf = _lightdevice(secure, keys, models, tmp_path, "cam-b", "B")
    try:
        seq = int(time.time() * 1000)
        for_a = pub.manifest(art, fleet="A", seq=seq, rollout_id="r-a", wave=0, targeting=FAST)
        client.publish(T.manifest("B"), encode_message(for_a, device="deploy", seq=1), retain=True)  # carried over
        reader.wait_for(_device_status(reader, "cam-b", "rejected", "wrong_fleet"), what="wrong_fleet")
        assert lf.versions() == {"cam-b": "v0001"}
        # The same model signed for fleet B (a later sequence) installs: the refusal was the fleet, nothing else.
        pub.publish_manifest("B", pub.manifest(art, fleet="B", seq=seq + 1, rollout_id="r-b", wave=0, targeting=FAST))
        wait_for(lambda: lf.versions() == {"cam-b": "v0002"}, 30, "the fleet-B manifest installed")
    finally:
        client.publish(T.manifest("B"), b"", retain=True)
        pub.clear_chunks(art.model_id, art.version, -(-art.size // pub.chunk_size))
        lf.stop()
        reader.close()


def test_a_factory_reset_device_rejects_a_downgrade(secure: Broker, pki: PKI, publisher, models, keys,
                                                    tmp_path: Path) -> None:
    """cam-r was provisioned when the fleet's manifest had sequence ``floor`` (its config's
    ``updater.min_manifest_seq``), then reset (no state). A captured older manifest, still unexpired and
    correctly signed, is ``replayed``; the fleet's current one installs."""
    from deploy.provision import load_signing_keys, write_device_config
    from edge.config import EdgeConfig
    from protocol.config import load_config

    pub, client = publisher
    art = read_artifact(models["v0002"], "mnist", "v0002")
    pub.publish_chunks(art)
    floor = int(time.time() * 1000)
    old = pub.manifest(art, fleet="R", seq=floor - 500, rollout_id="r-old", wave=0, targeting=FAST)
    current = pub.manifest(art, fleet="R", seq=floor, rollout_id="r-now", wave=0, targeting=FAST)
    cfg_path = write_device_config(pki, "cam-r", broker=secure.url, signing_keys=load_signing_keys([keys["pub"]]),
                                   min_seq=floor)
    min_seq = load_config(EdgeConfig, cfg_path).updater.min_manifest_seq
    assert min_seq == floor
    reader = Client(secure, "monitor", f"{P}/dev/cam-r/model/status")
    client.publish(T.manifest("R"), encode_message(old, device="deploy", seq=1), retain=True)
    lf = _lightdevice(secure, keys, models, tmp_path, "cam-r", "R", min_seq=min_seq)
    try:
        reader.wait_for(_device_status(reader, "cam-r", "rejected", "replayed"), what="replayed")
        assert lf.versions() == {"cam-r": "v0001"}
        pub.publish_manifest("R", current)
        wait_for(lambda: lf.versions() == {"cam-r": "v0002"}, 30, "the current manifest installed")
    finally:
        client.publish(T.manifest("R"), b"", retain=True)
        pub.clear_chunks(art.model_id, art.version, -(-art.size // pub.chunk_size))
        lf.stop()
        reader.close()
