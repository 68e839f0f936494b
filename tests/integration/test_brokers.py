"""Brokers (deploy.broker) and the shared client factory (protocol.mqtt) against real brokers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from deploy.broker import BrokerError, find_mosquitto, mosquitto_config, start_broker
from protocol.mqtt import (
    MQTTURLError,
    detect_mqtt5,
    make_client,
    parse_url,
    round_trip_probe,
    start,
    NAGLE_SUSPECT_S,
)

ROOT = Path(__file__).resolve().parents[2]


def _collect(client: paho.Client) -> tuple[list[paho.MQTTMessage], threading.Event]:
    got: list[paho.MQTTMessage] = []
    ev = threading.Event()

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        got.append(m)
        ev.set()

    client.on_message = on_message
    return got, ev


def _subscribe(client: paho.Client, topic: str, qos: int = 1) -> None:
    ok = threading.Event()
    client.on_subscribe = lambda *a: ok.set()
    client.subscribe(topic, qos=qos)
    assert ok.wait(5), "no SUBACK"


def _stop(*clients: paho.Client) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


# ---------------------------------------------------------------- URL parsing (no broker)


def test_parse_plain_url_defaults() -> None:
    u = parse_url("mqtt://broker.local")
    assert (u.scheme, u.host, u.port, u.username, u.password, u.tls) == ("mqtt", "broker.local", 1883, None, None, False)
    assert str(u) == "mqtt://broker.local:1883"


def test_parse_auth_port_and_redaction() -> None:
    u = parse_url("mqtt://cam%2F1:s3cr%40t@10.0.0.5:11883")
    assert (u.username, u.password, u.host, u.port) == ("cam/1", "s3cr@t", "10.0.0.5", 11883)
    assert "s3cr" not in str(u) and "***" in str(u)


def test_parse_tls_and_ws() -> None:
    u = parse_url("mqtts://h?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem")
    assert u.tls and u.port == 8883 and (u.ca, u.cert, u.key) == ("/etc/ca.pem", "/c.pem", "/k.pem")
    w = parse_url("ws://h:9001/mqtt")
    assert w.transport == "websockets" and w.port == 9001 and w.path == "/mqtt" and not w.tls
    assert parse_url("wss://h").port == 443
    assert parse_url("mqtt://[::1]:1884").host == "::1"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "localhost:1883",  # no scheme
        "http://h",  # wrong scheme
        "mqtt://",  # no host
        "mqtt://h:notaport",
        "mqtt://h:70000",
        "mqtt://h:0",
        "mqtt://h/some/path",
        "mqtt://h?ca=/x.pem",  # TLS option on plain mqtt
        "mqtts://h?cert=/c.pem",  # cert without key
        "mqtts://h?colour=blue",
    ],
)
def test_parse_bad_urls(bad: str) -> None:
    with pytest.raises(MQTTURLError) as ei:
        parse_url(bad)
    assert isinstance(ei.value, ValueError) and str(ei.value)


def test_make_client_rejects_bad_protocol() -> None:
    with pytest.raises(ValueError):
        make_client("x", "mqtt://127.0.0.1:1", protocol="4")  # type: ignore[arg-type]


def test_auto_protocol_falls_back_when_unreachable() -> None:
    port = _closed_port()
    assert detect_mqtt5(f"mqtt://127.0.0.1:{port}", timeout=1) is False
    c = make_client("offline", f"mqtt://127.0.0.1:{port}")  # must not raise: connects later
    assert c.protocol == paho.MQTTv311


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- broker lifecycle


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_start_stop(kind: str) -> None:
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    b = start_broker(kind=kind)  # type: ignore[arg-type]
    try:
        assert b.kind == kind and b.port > 0 and b.url == f"mqtt://127.0.0.1:{b.port}"
        assert b.supports_mqtt5 is (kind == "mosquitto")
        socket.create_connection(("127.0.0.1", b.port), timeout=1).close()
    finally:
        b.stop()
    b.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", b.port), timeout=1).close()


def test_mosquitto_config_has_the_settings_that_matter(tmp_path: Path) -> None:
    conf = mosquitto_config("127.0.0.1", 1234, tmp_path)
    for line in ("listener 1234 127.0.0.1", "allow_anonymous true", "set_tcp_nodelay true", "persistence false"):
        assert line in conf
    size = int(next(l.split()[1] for l in conf.splitlines() if l.startswith("max_packet_size")))
    assert size >= 256 * 1024 + 64 * 1024
    queued = int(next(l.split()[1] for l in conf.splitlines() if l.startswith("max_queued_messages")))
    assert queued >= 10_000


def test_mosquitto_start_failure_reports_log(mosquitto_broker) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BrokerError) as ei:
        start_broker(kind="mosquitto", port=mosquitto_broker.port)  # port taken
    assert "Address already in use" in str(ei.value)


def test_bad_kind() -> None:
    with pytest.raises(ValueError):
        start_broker(kind="rabbit")  # type: ignore[arg-type]


# ---------------------------------------------------------------- MQTT behaviour on both brokers


def test_qos1_round_trip(broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    pub = make_client(f"{topic_prefix}-pub", broker.url)
    sub = make_client(f"{topic_prefix}-sub", broker.url)
    got, ev = _collect(sub)
    try:
        start(pub), start(sub)
        _subscribe(sub, f"{topic_prefix}/#")
        payload = os.urandom(300 * 1024)  # a model chunk plus envelope must pass
        info = pub.publish(f"{topic_prefix}/x", payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
        assert ev.wait(5)
        assert got[0].payload == payload and got[0].qos == 1
    finally:
        _stop(pub, sub)


def test_will_delivered_on_abrupt_disconnect(broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    state = f"{topic_prefix}/dev/cam1/state"
    watcher = make_client(f"{topic_prefix}-watch", broker.url)
    got, ev = _collect(watcher)
    dev = make_client(f"{topic_prefix}-dev", broker.url, will=(state, b"offline", 1, True), keepalive=5)
    try:
        start(watcher), start(dev)
        _subscribe(watcher, state)
        # Abrupt: close the TCP socket without DISCONNECT, as a crash or power loss would.
        dev.loop_stop()
        dev.socket().close()  # type: ignore[union-attr]
        assert ev.wait(10), "Will not delivered"
        assert got[0].payload == b"offline"
    finally:
        _stop(watcher)


def test_retained_message(broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    topic = f"{topic_prefix}/fleet/a/manifest"
    pub = make_client(f"{topic_prefix}-pub", broker.url)
    try:
        start(pub)
        pub.publish(topic, b"manifest-v1", qos=1, retain=True).wait_for_publish(5)
    finally:
        _stop(pub)
    late = make_client(f"{topic_prefix}-late", broker.url)
    got, ev = _collect(late)
    try:
        start(late)
        _subscribe(late, topic)
        deadline = time.monotonic() + 5
        while not any(m.topic == topic for m in got) and time.monotonic() < deadline:
            time.sleep(0.01)
        mine = [m for m in got if m.topic == topic]  # see test_amqtt_retained_will_leak
        assert mine and mine[0].payload == b"manifest-v1" and mine[0].retain
    finally:
        _stop(late)


@pytest.mark.xfail(reason="amqtt 0.12.1 bug: after a retained Will fires, later subscribers get "
                   "retained messages of other topics / duplicates. Receivers must check the topic.",
                   strict=False)
def test_amqtt_retained_will_leak(topic_prefix: str) -> None:
    with start_broker(kind="amqtt") as b:
        watcher = make_client(f"{topic_prefix}-watch", b.url)
        start(watcher)
        _subscribe(watcher, f"{topic_prefix}/state")
        dev = make_client(f"{topic_prefix}-dev", b.url, will=(f"{topic_prefix}/state", b"offline", 1, True))
        start(dev)
        dev.loop_stop()
        dev.socket().close()  # type: ignore[union-attr]
        time.sleep(0.5)
        _stop(watcher)
        late = make_client(f"{topic_prefix}-late", b.url)
        got, _ = _collect(late)
        start(late)
        _subscribe(late, f"{topic_prefix}/other")
        time.sleep(0.3)
        _stop(late)
        assert got == []


def test_supports_mqtt5_detection(broker) -> None:  # type: ignore[no-untyped-def]
    assert detect_mqtt5(broker.url, refresh=True) is broker.supports_mqtt5
    c = make_client("auto-proto", broker.url, protocol="auto")
    assert c.protocol == (paho.MQTTv5 if broker.supports_mqtt5 else paho.MQTTv311)


def test_mqtt5_session_survives_reconnect(mosquitto_broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """clean_start=False on MQTT 5 must keep the session (SessionExpiryInterval is set)."""
    topic = f"{topic_prefix}/samples"
    cid = f"{topic_prefix}-trainer"
    t = make_client(cid, mosquitto_broker.url, protocol="5", clean_start=False)
    start(t)
    _subscribe(t, topic)
    _stop(t)
    pub = make_client(f"{topic_prefix}-pub", mosquitto_broker.url)
    start(pub)
    pub.publish(topic, b"while-away", qos=1).wait_for_publish(5)
    _stop(pub)
    t2 = make_client(cid, mosquitto_broker.url, protocol="5", clean_start=False)
    got, ev = _collect(t2)
    try:
        start(t2)
        assert ev.wait(5) and got[0].payload == b"while-away"
    finally:
        _stop(t2)


def test_broker_round_trip_is_not_nagle_bound(mosquitto_broker) -> None:  # type: ignore[no-untyped-def]
    """The generated config sets TCP_NODELAY: request/response must not take ~40 ms."""
    assert round_trip_probe(mosquitto_broker.url, n=10) < NAGLE_SUSPECT_S


# ---------------------------------------------------------------- `edgeloop broker`


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_broker_main_prints_url(kind: str, tmp_path: Path) -> None:
    """--insecure: the anonymous loopback broker of old, with a warning."""
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.broker", "--port", "0", "--kind", kind, "--insecure",
         "--state-dir", str(tmp_path / "b")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line.startswith("mqtt://127.0.0.1:"), line
        u = parse_url(line)
        socket.create_connection((u.host, u.port), timeout=2).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        # stopped cleanly: the port is closed again (mosquitto child not left behind)
        time.sleep(0.1)
        with pytest.raises(OSError):
            socket.create_connection((u.host, u.port), timeout=1).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_broker_main_help() -> None:
    out = subprocess.run([sys.executable, "-m", "deploy.broker", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--port" in out.stdout and "--kind" in out.stdout


def test_amqtt_in_a_child_process_round_trip_and_stop() -> None:
    """The demo's fallback broker: amqtt on its own interpreter, a QoS 1 round trip, a clean stop."""
    import threading

    from deploy.broker import start_amqtt_process
    from protocol.mqtt import make_client, start

    broker = start_amqtt_process()
    try:
        got = threading.Event()
        c = make_client("amqtt-proc-test", broker.url, protocol="3.1.1")
        c.on_message = lambda *_: got.set()
        start(c)
        c.subscribe("t/amqtt-proc", 1)
        time.sleep(0.3)
        c.publish("t/amqtt-proc", b"x", qos=1)
        assert got.wait(10)
        c.disconnect()
        c.loop_stop()
    finally:
        broker.stop()
    assert not broker.alive()
