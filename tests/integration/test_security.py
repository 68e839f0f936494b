"""The trust boundary against a real mosquitto with the generated TLS + ACL config (issue 12's attacks).

A denied QoS 1 publish still "succeeds" for the publisher (MQTT 3.1.1 has no way to say no), so every denial
is asserted with a subscriber that has the right to read the topic. To make "nothing arrived" a proof rather
than a timeout, the attacker then publishes a control message on a topic it may write: the broker forwards one
connection's messages in order, so once the control message is in, a leaked message would be in too.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
import pytest

from deploy import pki_cli
from deploy.broker import Broker, BrokerError, find_mosquitto, start_broker
from deploy.pki import PKI, init_pki
from protocol.messages import Sample, encode_message
from protocol.mqtt import make_client, start
from protocol.topics import Topics

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (CI installs it)")]

ROOT = Path(__file__).resolve().parents[2]
T = Topics()
P = T.prefix


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    p = init_pki(tmp_path_factory.mktemp("pki") / "pki")
    p.issue("cam-a", "device", fleet="A")
    p.issue("cam-b", "device", fleet="B")
    return p


@pytest.fixture(scope="module")
def secure(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with start_broker(kind="mosquitto", workdir=tmp_path_factory.mktemp("broker"), pki=pki.root) as b:
        yield b


class Collector:
    """A connected client that records what it receives."""

    def __init__(self, broker: Broker, identity: str, *subs: str, client_id: str | None = None,
                 clean: bool = True) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.c = make_client(client_id or f"t-{identity}", broker.client_url(identity), protocol="3.1.1",
                             clean_start=clean)
        self.c.on_message = self._on_message
        self.disconnects = 0
        self.c.on_disconnect = lambda *a: setattr(self, "disconnects", self.disconnects + 1)
        start(self.c)
        for topic in subs:
            self.subscribe(topic)

    def _on_message(self, c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        with self.cond:
            self.got.append((m.topic, m.payload, bool(m.retain)))
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        ok = threading.Event()
        self.c.on_subscribe = lambda *a: ok.set()
        self.c.subscribe(topic, qos=1)
        assert ok.wait(5), "no SUBACK"

    def wait_for(self, payload: bytes, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: any(p == payload for _, p, _ in self.got), timeout), \
                f"{payload!r} never arrived; got {self.got}"

    def payloads(self) -> set[bytes]:
        with self.cond:
            return {p for _, p, _ in self.got}

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _control(dev: Collector, reader: Collector, device: str) -> None:
    """Publish a marker on the device's own topic and wait until the reader has it (see module docstring)."""
    marker = f"control-{time.monotonic_ns()}".encode()
    dev.publish(T.stats(device), marker)
    reader.wait_for(marker)


# ---------------------------------------------------------------------------------------------- authentication

def test_anonymous_and_foreign_clients_are_refused(secure: Broker, tmp_path: Path) -> None:
    host, port = "127.0.0.1", secure.port
    assert _refused(f"mqtts://{host}:{port}?ca={secure.pki_dir}/ca.pem")  # the right CA, no client certificate
    assert _refused(f"mqtt://{host}:{port}")  # plain MQTT on the TLS port
    other = init_pki(tmp_path / "other")  # a certificate from somebody else's CA, even named "trainer"
    d = other.root / "services" / "trainer"
    assert _refused(f"mqtts://{host}:{port}?ca={secure.pki_dir}/ca.pem&cert={d}/cert.pem&key={d}/key.pem")
    assert not _refused(secure.client_url("trainer"))  # and the same checks accept the real thing


def test_the_broker_prefers_aes_128_gcm_and_still_accepts_the_other_tls13_suites(secure: Broker) -> None:
    """AES-128-GCM first (cheaper per sample, see deploy/broker.py); a peer offering it gets it."""
    d = secure.pki_dir / "services" / "trainer"
    ctx = ssl.create_default_context(cafile=str(secure.pki_dir / "ca.pem"))
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", secure.port), timeout=5),
                         server_hostname="localhost") as s:
        assert s.version() == "TLSv1.3"
        assert s.cipher()[0] == "TLS_AES_128_GCM_SHA256"
    assert "TLS_AES_256_GCM_SHA384" in (secure.workdir / "mosquitto.conf").read_text()


# ---------------------------------------------------------------------------------------------- authorisation

@pytest.mark.parametrize("topic", [
    f"{P}/dev/cam-b/samples", f"{P}/dev/cam-b/model/status", f"{P}/dev/cam-b/state",
    f"{P}/fleet/A/manifest", f"{P}/fleet/B/manifest", f"{P}/models/m/v9/chunk/0",
    f"{P}/trainer/promoted", f"{P}/trainer/state", f"{P}/trainer/selection_hint",
])
def test_a_device_writes_only_its_own_topics(secure: Broker, topic: str) -> None:
    reader = Collector(secure, "monitor", f"{P}/#")  # monitor reads everything under the prefix
    dev = Collector(secure, "cam-a")
    try:
        _control(dev, reader, "cam-a")  # the reader sees cam-a's own topics
        dev.publish(topic, b"forged", retain=True)
        _control(dev, reader, "cam-a")
        assert b"forged" not in reader.payloads()
        late = Collector(secure, "monitor", f"{P}/#")  # and nothing was retained for later subscribers
        time.sleep(0.3)
        assert b"forged" not in late.payloads()
        late.close()
    finally:
        dev.close()
        reader.close()


def test_a_device_reads_only_its_fleet_manifest_models_the_trainer_state_and_hint(secure: Broker) -> None:
    deploy = Collector(secure, "deploy")
    trainer = Collector(secure, "trainer")
    cam = Collector(secure, "cam-a", f"{P}/fleet/+/manifest", f"{P}/models/#", f"{P}/dev/+/samples",
                    f"{P}/trainer/#")
    other = Collector(secure, "cam-b")
    try:
        trainer.publish(T.trainer_promoted(), b"promoted-1")  # not for devices
        trainer.publish(T.trainer_state(), b"trainer-online")  # a trainer topic a device reads (the hold)
        trainer.publish(T.selection_hint(), b"hint-1")  # and the other: what to upload more of
        # publish() waits for the PUBACK, which mosquitto sends after queueing the message to every subscriber:
        # anything leaked to cam-a is queued before the last chunk, which cam-a may read.
        deploy.publish(T.manifest("B"), b"manifest-B", retain=True)
        deploy.publish(T.manifest("A"), b"manifest-A", retain=True)
        other.publish(T.samples("cam-b"), b"b-sample")
        deploy.publish(T.chunk("m", "v1", 0), b"chunk-0", retain=True)
        cam.wait_for(b"chunk-0")
        # not fleet B's manifest, not cam-b's samples, not the trainer's promotion notice
        assert cam.payloads() == {b"manifest-A", b"chunk-0", b"trainer-online", b"hint-1"}
    finally:
        for c in (deploy, trainer, cam, other):
            c.close()


def test_service_rights(secure: Broker) -> None:
    reader = Collector(secure, "monitor", f"{P}/#")
    trainer = Collector(secure, "trainer", f"{P}/dev/+/samples", f"{P}/fleet/#", f"{P}/dev/+/model/status")
    deploy = Collector(secure, "deploy", f"{P}/trainer/#", f"{P}/dev/+/model/status")
    cam = Collector(secure, "cam-a")
    try:
        cam.publish(T.samples("cam-a"), b"sample-1")
        trainer.wait_for(b"sample-1")                          # the trainer reads samples
        trainer.publish(f"{P}/trainer/promoted", b"promoted-1")
        deploy.wait_for(b"promoted-1")                         # deploy reads the trainer's topics
        trainer.publish(T.manifest("A"), b"trainer-manifest")  # the trainer may not publish manifests,
        deploy.publish(T.model_status("cam-a"), b"forged-status")    # deploy may not speak for a device,
        trainer.publish(T.model_status("cam-a"), b"forged-status-2")  # nor may the trainer
        deploy.publish(T.manifest("A"), b"deploy-manifest")    # deploy may publish manifests
        cam.publish(T.model_status("cam-a"), b"real-status")
        reader.wait_for(b"deploy-manifest")
        deploy.wait_for(b"real-status")
        assert not {b"trainer-manifest", b"forged-status", b"forged-status-2"} & reader.payloads()
        assert b"deploy-manifest" not in trainer.payloads() and b"real-status" not in trainer.payloads()
    finally:
        for c in (reader, trainer, deploy, cam):
            c.close()


def _cli_tls(broker: Broker, identity: str) -> list[str]:
    d = PKI(broker.pki_dir).identity_dir(identity)  # type: ignore[arg-type]
    return ["-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(d / "ca.pem"), "--cert", str(d / "cert.pem"),
            "--key", str(d / "key.pem")]


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_acls_with_the_mosquitto_command_line_clients(secure: Broker) -> None:
    """The same checks as an outside client would make them: mosquitto_sub as monitor, mosquitto_pub as cam-a."""
    sub = subprocess.Popen(["mosquitto_sub", *_cli_tls(secure, "monitor"), "-t", f"{P}/#", "-v", "-q", "1"],
                           stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def pub(identity: str, topic: str, payload: str, *extra: str) -> int:
        return subprocess.run(["mosquitto_pub", *_cli_tls(secure, identity), "-t", topic, "-m", payload, "-q", "1",
                               *extra], capture_output=True, timeout=20).returncode

    def read_until(payload: str) -> None:
        for line in sub.stdout:  # type: ignore[union-attr]
            lines.append(line.strip())
            if line.strip().endswith(" " + payload):
                return

    try:
        ready = threading.Thread(target=read_until, args=("ready",), daemon=True)
        ready.start()
        while ready.is_alive():  # mosquitto_sub has no "subscribed" signal: publish until it sees one
            assert pub("cam-a", T.stats("cam-a"), "ready") == 0
            ready.join(0.3)
        for topic in (T.samples("cam-b"), T.manifest("A"), T.chunk("m", "v1", 0), f"{P}/trainer/promoted"):
            pub("cam-a", topic, "cli-forged", "-r")
        assert pub("cam-a", T.stats("cam-a"), "cli-end") == 0
        read_until("cli-end")
        assert not [line for line in lines if "cli-forged" in line], lines
        anon = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(secure.port), "--cafile",
                               str(secure.pki_dir / "ca.pem"), "-t", T.stats("cam-a"), "-m", "anon"],
                              capture_output=True, timeout=20)
        assert anon.returncode != 0
    finally:
        sub.terminate()
        sub.wait(5)


# ---------------------------------------------------------------------------------------------- sessions

def test_the_trainer_session_cannot_be_taken_over(secure: Broker) -> None:
    """Client id = certificate CN on this broker: another identity asking for "trainer" gets its own session."""
    topic = T.samples("cam-a")
    trainer = Collector(secure, "trainer", topic, client_id="trainer", clean=False)
    trainer.close()  # offline: the broker queues QoS 1 samples for the persistent session
    cam = Collector(secure, "cam-a")
    for i in range(3):
        cam.publish(topic, b"queued-%d" % i)
    # The attack of issue 12: connect with the trainer's client id and a clean session, which on a broker that
    # lets clients pick their ids takes the session over and discards the queued samples.
    thief = Collector(secure, "cam-b", topic, client_id="trainer", clean=True)
    thief.close()
    trainer = Collector(secure, "trainer", client_id="whatever", clean=False)  # id is the CN, whatever is asked
    for i in range(3):
        trainer.wait_for(b"queued-%d" % i)
    # and while the trainer is online, someone using its id does not disconnect it
    thief = Collector(secure, "deploy", client_id="trainer")
    cam.publish(topic, b"after")
    trainer.wait_for(b"after")
    assert trainer.disconnects == 0
    for c in (thief, trainer, cam):
        c.close()


# ---------------------------------------------------------------------------------------------- provisioning

def _refused(url: str, timeout: float = 20.0) -> bool:
    """Try one connection: False once the broker accepted it, True as soon as the attempt failed (TLS
    handshake or CONNACK refused). The timeout is generous for a loaded machine; a refusal returns at once."""
    c = make_client("probe", url, protocol="3.1.1")
    outcome: list[bool] = []
    ev = threading.Event()

    def settle(refused: bool) -> None:
        if not outcome:
            outcome.append(refused)
        ev.set()

    c.on_connect = lambda cl, u, f, rc, p=None: settle(rc.is_failure)
    c.on_connect_fail = lambda *a: settle(True)
    c.on_disconnect = lambda *a: settle(True)
    c.loop_start()
    try:
        assert ev.wait(timeout), f"no answer from {url} within {timeout} s"
        return outcome[0]
    finally:
        c.disconnect()
        c.loop_stop()


def _reloads(broker: Broker) -> int:
    return (broker.log_path.read_text(errors="replace") if broker.log_path else "").count("Reloading config")


def test_provision_and_revoke_reload_the_running_broker(secure: Broker, pki: PKI) -> None:
    """`edgeloop pki device` and `revoke` regenerate the ACL and SIGHUP the broker edgeloop started."""
    key = pki.root.parent / "keys"
    subprocess.run([sys.executable, "-m", "deploy.cli", "keys", "generate", "--out", str(key)], check=True, cwd=ROOT,
                   capture_output=True)
    assert pki_cli.main(["device", "cam-new", "--dir", str(pki.root), "--fleet", "A",
                         "--signing-key", str(key / "signing.pub")]) == 0
    reader = Collector(secure, "monitor", f"{P}/#")
    cam = Collector(secure, "cam-new")
    try:
        _control(cam, reader, "cam-new")  # the new device may publish at once (the ACL was reloaded)
        reloads = _reloads(secure)
        assert pki_cli.main(["revoke", "cam-new", "--dir", str(pki.root)]) == 0
        assert _reloads(secure) > reloads  # the command returns once the broker has reloaded
        cam.publish(T.stats("cam-new"), b"after-revoke")  # its open connection has lost its rights
        other = Collector(secure, "cam-a")
        _control(other, reader, "cam-a")
        other.close()
        assert b"after-revoke" not in reader.payloads()
        # and a new connection with its certificate is refused at the handshake (checked last: with client
        # id = CN, an accepted probe would have replaced the connection above)
        assert _refused(secure.client_url("cam-new"))
        assert not _refused(secure.client_url("cam-a"))  # everyone else is unaffected
    finally:
        cam.close()
        reader.close()


# ---------------------------------------------------------------------------------------------- persistence

def test_queued_and_retained_messages_survive_a_broker_restart(pki: PKI, tmp_path: Path) -> None:
    wd = tmp_path / "broker"
    b = start_broker(kind="mosquitto", workdir=wd, pki=pki.root)
    port = b.port
    try:
        trainer = Collector(b, "trainer", T.samples("cam-a"), clean=False)
        trainer.close()
        cam = Collector(b, "cam-a")
        cam.publish(T.samples("cam-a"), b"queued-sample")
        deploy = Collector(b, "deploy")
        deploy.publish(T.chunk("m", "v1", 0), b"retained-chunk", retain=True)
        cam.close()
        deploy.close()
    finally:
        b.stop()  # SIGTERM: mosquitto writes its persistence file
    assert (wd / "mosquitto.db").exists()
    b = start_broker(kind="mosquitto", port=port, workdir=wd, pki=pki.root)
    try:
        trainer = Collector(b, "trainer", clean=False)
        trainer.wait_for(b"queued-sample")
        fresh = Collector(b, "cam-b", f"{P}/models/#")
        fresh.wait_for(b"retained-chunk")
        trainer.close()
        fresh.close()
    finally:
        b.stop()


# ---------------------------------------------------------------------------------------------- services over TLS

def test_trainer_ingests_an_edge_link_over_tls(secure: Broker, tmp_path: Path) -> None:
    """The real client paths: the edge's Link as cam-a, the trainer's Ingestor as "trainer" (id from the CN)."""
    from edge.link import Link
    from edge.outbox import Outbox
    from trainer.ingest import Ingestor
    from trainer.store import SampleStore

    d = secure.pki_dir
    url = secure.url
    with SampleStore(tmp_path / "store") as store:
        ing = Ingestor(store, url, ca=f"{d}/services/trainer/ca.pem", cert=f"{d}/services/trainer/cert.pem",
                       key=f"{d}/services/trainer/key.pem").start()
        assert ing.client_id == "trainer"
        # What TrainerService does on connect: its retained state, which the device may read and waits for.
        ing.publish(T.trainer_state(), b'{"device": "trainer", "state": "online"}', 1, True)
        outbox = Outbox(tmp_path / "outbox.sqlite")
        sample = Sample(sample_id="cam-a.1.1", model_version="v1", topk=[("ok", 0.6), ("bad", 0.4)],
                        uncertainty=0.2, uncertainty_kind="margin", p_select=0.5, reason="uncertain", frame_index=1,
                        width=8, height=8)
        outbox.put("cam-a.1.1", T.samples("cam-a"), encode_message(sample, b"\x89PNG", device="cam-a", seq=1,
                                                                   content_type="image/png"))
        link = Link(device_id="cam-a", url=url, topics=T, outbox=outbox, boot=1, birth=lambda: b"{}",
                    ca_file=f"{d}/devices/cam-a/ca.pem", cert_file=f"{d}/devices/cam-a/cert.pem",
                    key_file=f"{d}/devices/cam-a/key.pem")
        link.start()
        try:
            deadline = time.monotonic() + 40  # generous: TLS handshakes on a loaded 2-core machine
            while ing.stats.received < 1:
                assert time.monotonic() < deadline, (f"sample never reached the trainer: link connects "
                                                     f"{link.connects}, uploads {link.uploads}, outbox "
                                                     f"{outbox.stats()}; broker log:\n{secure.log_tail(30)}")
                time.sleep(0.05)
        finally:
            link.stop()
            ing.stop()
            outbox.close()


def test_environment_identity_for_commands_with_only_a_broker_flag(secure: Broker, monkeypatch) -> None:
    """The rollout controller takes only --broker: EDGELOOP_MQTT_IDENTITY gives it its certificate."""
    monkeypatch.setenv("EDGELOOP_MQTT_IDENTITY", str(secure.pki_dir / "services" / "deploy"))
    assert not _refused(secure.url)


def test_a_device_certificate_must_match_the_device_id(pki: PKI, tmp_path: Path) -> None:
    from edge.link import Link
    from edge.outbox import Outbox

    d = pki.root / "devices" / "cam-a"
    with pytest.raises(ValueError, match="does not match"):
        Link(device_id="cam-b", url="mqtts://127.0.0.1:1", topics=T, outbox=Outbox(tmp_path / "o.sqlite"), boot=1,
             birth=lambda: b"", ca_file=str(d / "ca.pem"), cert_file=str(d / "cert.pem"), key_file=str(d / "key.pem"))


# ---------------------------------------------------------------------------------------------- `edgeloop broker`

def test_edgeloop_broker_is_secure_by_default(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "deploy.broker", "--port", "0", "--state-dir", str(state)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("mqtts://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() is not None else "")
        conf = (state / "mosquitto.conf").read_text()
        for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                     "allow_anonymous false", "persistence true", f"crlfile {state.resolve()}/pki/crl.pem"):
            assert line in conf
        ident = state / "pki" / "services" / "trainer"
        assert not _refused(f"{url}?ca={ident}/ca.pem&cert={ident}/cert.pem&key={ident}/key.pem")
        assert _refused(f"{url}?ca={ident}/ca.pem")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not list((state / "pki" / "brokers").glob("*.json"))  # unregistered on a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("argv,message", [
    (["--kind", "amqtt"], "amqtt cannot check client certificates"),
    (["--insecure", "--host", "0.0.0.0"], "loopback only"),
    (["--insecure", "--pki", "x"], "contradict"),
])
def test_edgeloop_broker_refuses_insecure_combinations(argv: list[str], message: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "deploy.broker", "--port", "0", "--state-dir", str(tmp_path), *argv],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_insecure_mode_warns(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "deploy.broker", "--port", "0", "--insecure", "--state-dir",
                             str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("mqtt://127.0.0.1:")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert "WARNING: --insecure" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_broker_refuses_an_anonymous_broker_off_loopback() -> None:
    with pytest.raises(BrokerError, match="loopback"):
        start_broker(host="0.0.0.0", kind="mosquitto")


def test_the_mqtt5_probe_does_not_touch_the_identity_s_session(secure: Broker) -> None:
    """make_client(protocol="auto") probes the broker first, with the caller's certificate: on this broker the
    probe's client id is the CN, so a probe that connected would replace the trainer's session and lose the
    samples queued in it. It must be refused before any session is touched."""
    from protocol.mqtt import detect_mqtt5

    topic = T.samples("cam-a")
    trainer = Collector(secure, "trainer", topic, clean=False)
    trainer.close()
    cam = Collector(secure, "cam-a")
    cam.publish(topic, b"queued-before-probe")
    assert detect_mqtt5(secure.client_url("trainer"), refresh=True, timeout=20) is True
    trainer = Collector(secure, "trainer", clean=False)
    trainer.wait_for(b"queued-before-probe")
    trainer.close()
    cam.close()


def test_the_broker_survives_reloads_with_offline_sessions(pki: PKI, tmp_path: Path) -> None:
    """mosquitto 2.0.11 puts an offline session on its expiry list again at every SIGHUP when the listener
    takes identities from certificates; if the session was on the list already (persistent_client_expiration,
    or an MQTT 5 session with a finite expiry), a later resume leaves a freed session on the list and the
    broker wedges or crashes (docs/NOTES.md 19; seen here as "Expiring client <garbage>"). The generated config
    sets no persistent_client_expiration and make_client's MQTT 5 sessions never expire: reload after reload
    with sessions going offline and coming back, the broker must keep answering."""
    from deploy.broker import mosquitto_config

    conf = mosquitto_config("127.0.0.1", 1, tmp_path, True, pki_dir=pki.root)
    assert not [line for line in conf.splitlines() if line.startswith("persistent_client_expiration")]
    with start_broker(kind="mosquitto", workdir=tmp_path / "broker", pki=pki.root) as b:
        for _ in range(8):
            for identity, protocol in (("trainer", "5"), ("monitor", "3.1.1")):  # make_client's defaults
                c = start(make_client("x", b.client_url(identity), protocol=protocol, clean_start=False), 20)
                c.subscribe(f"{P}/dev/+/state", 1)
                c.disconnect()
                c.loop_stop()
            for _ in range(2):
                assert b.reload(), b.log_tail()  # type: ignore[attr-defined]
        time.sleep(2.5)  # mosquitto walks its expiry list once a second
        assert b.alive() and not _refused(b.client_url("deploy")), b.log_tail()
        assert "Expiring client" not in b.log_path.read_text(errors="replace")  # type: ignore[union-attr]
