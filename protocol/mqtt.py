"""MQTT connection conventions shared by edge, trainer and deploy.

This is the only module in ``protocol`` that imports paho-mqtt (see docs/CONTRACTS.md).
It does three things and nothing else:

* ``parse_url`` — one broker URL format for every command line and config file:
  ``mqtt://[user:pass@]host[:port]``, ``mqtts://...`` (TLS), ``ws://`` / ``wss://`` (WebSockets).
* ``make_client`` — a paho ``Client`` with the settings every edgeloop client needs (below).
* ``detect_mqtt5`` — does the broker speak MQTT 5? (shared subscriptions, for trainer ingestion).

Credentials: a TLS identity is three files (CA, client certificate, key — what ``edgeloop pki`` issues, in one
directory as ``ca.pem``, ``cert.pem``, ``key.pem``). They come from the caller (config keys), else from the URL's
query options, else from the environment: ``EDGELOOP_MQTT_IDENTITY`` (such a directory) or
``EDGELOOP_MQTT_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE``; a password from ``EDGELOOP_MQTT_PASSWORD_FILE`` or
``EDGELOOP_MQTT_PASSWORD``. So every command, including those with only a ``--broker`` flag (the rollout
controller), authenticates without a secret on its command line, where ``ps`` shows it.

Latency rules (measured; see docs/mqtt-notes.md for the numbers)
-----------------------------------------------------------------
1. **TCP_NODELAY on both ends of every connection.** paho leaves Nagle's algorithm on, and so
   does mosquitto unless ``set_tcp_nodelay true``. Nagle holds a small segment back while an
   earlier one is un-ACKed, and Linux delays a pure ACK by ~40 ms, so any connection that carries
   two small packets back-to-back in one direction with nothing flowing the other way stalls for
   40 ms. Client side: a client that both publishes and receives QoS 1 (PUBACK then PUBLISH)
   drops from ~12,700 to ~460 msg/s (paho's default window of 20), and an echo/reply client
   to ~21 round trips/s. Broker side: a request/response pair of clients (broker
   sends PUBACK, then the reply PUBLISH) drops from ~3,500 to ~23 round trips/s *even though
   both clients set TCP_NODELAY* — the client option only covers the client->broker direction.
   ``make_client`` fixes the client half; ``deploy.broker`` writes ``set_tcp_nodelay true``;
   for any other broker, turn its no-delay option on (EMQX ``tcp_options.nodelay``, mosquitto
   ``set_tcp_nodelay``) and check with ``round_trip_probe``.
2. Running several paho clients in one process is fine: two clients in one process match the
   two-process figures; the GIL switch interval, paho's socketpair wake-up and per-client loop
   threads change nothing by more than noise against a Nagle broker (~22/s every way). Use one ``loop_start()``
   per client; publish from any thread.
3. Do not replace ``client.on_socket_open`` on a client from ``make_client``; that is where
   TCP_NODELAY is set (chain to ``tune_socket`` if you must).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import statistics
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

__all__ = [
    "BrokerURL",
    "MQTTURLError",
    "parse_url",
    "make_client",
    "start",
    "tune_socket",
    "detect_mqtt5",
    "round_trip_probe",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_QUEUED",
    "NAGLE_SUSPECT_S",
    "certificate_identity",
    "identity_files",
    "identity_overrides",
    "read_secret_file",
    "resolve_password",
    "resolve_tls",
    "refuse_password_in_url",
    "ENV_IDENTITY",
]

Protocol = Literal["auto", "3.1.1", "5"]
Will = tuple[str, bytes | str, int, bool]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}

# QoS 1 messages paho lets be un-PUBACKed at once (paho default 20). On one machine or a LAN a
# window of 20 x 1 KB is already enough to keep the pipe full; 100 covers WAN round trips of a
# few tens of ms at the sample rates the edge produces, and stays under brokers' usual
# receive-maximum (mosquitto: unlimited by default, EMQX: 32 per client by default as
# max_inflight — a broker simply stops reading when its own window is full, nothing is lost).
DEFAULT_MAX_INFLIGHT = 100
# Messages paho queues beyond the in-flight window (paho default 0 = unbounded). Bounded so an
# offline client cannot grow without limit: the edge's durable buffer is its SQLite outbox,
# not paho's memory; publish() returns MQTT_ERR_QUEUE_SIZE when this is full.
DEFAULT_MAX_QUEUED = 1000
# Reconnect backoff (paho doubles the delay from min to max after each failed attempt).
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
# MQTT 5 Session Expiry Interval meaning "never" (as a 3.1.1 persistent session). Also a workaround: mosquitto
# 2.0.11 keeps sessions with a finite expiry on a list that a SIGHUP (ACL/CRL reload) corrupts when such a
# session is offline, which can wedge or crash the broker (docs/NOTES.md 19); never-expiring ones stay off it.
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
# A median QoS 1 request/response round trip above this on a LAN means Nagle + delayed ACK
# somewhere (a broker without TCP_NODELAY measures ~44 ms; a healthy one < 2 ms).
NAGLE_SUSPECT_S = 0.020


ENV_IDENTITY = "EDGELOOP_MQTT_IDENTITY"
ENV_CA, ENV_CERT, ENV_KEY = "EDGELOOP_MQTT_CA_FILE", "EDGELOOP_MQTT_CERT_FILE", "EDGELOOP_MQTT_KEY_FILE"
ENV_PASSWORD, ENV_PASSWORD_FILE = "EDGELOOP_MQTT_PASSWORD", "EDGELOOP_MQTT_PASSWORD_FILE"


class MQTTURLError(ValueError):
    """A broker URL that cannot be used. A ``ValueError`` so CLIs can report it plainly."""


def identity_files(directory: str | os.PathLike[str]) -> tuple[str, str, str]:
    """``(ca, cert, key)`` paths of an identity directory (``edgeloop pki``: ca.pem, cert.pem, key.pem)."""
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem"))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MQTTURLError(f"identity directory {directory}: missing {', '.join(missing)}")
    return paths  # type: ignore[return-value]


def certificate_identity(cert_file: str | os.PathLike[str]) -> str:
    """The CN of a PEM client certificate: the identity (username, client id) the broker will see."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise MQTTURLError(f"client certificate {cert_file}: {exc}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise MQTTURLError(f"client certificate {cert_file} has no CN")
    return str(names[0].value)


def identity_overrides(directory: str | os.PathLike[str], section: str = "mqtt") -> dict[str, str]:
    """Config overrides (dotted keys) that point ``section.ca_file/cert_file/key_file`` at an identity directory;
    for the CLIs' ``--identity DIR``."""
    ca, cert, key = identity_files(directory)
    return {f"{section}.ca_file": ca, f"{section}.cert_file": cert, f"{section}.key_file": key}


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """A password from a file (first line, without its newline); refuses a file others may read."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as f:
            value = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise MQTTURLError(f"password file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise MQTTURLError(f"password file {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    return value


def resolve_password(password: str | None, password_file: str | None) -> str | None:
    """The config's password, else the one in ``password_file``; both set is a mistake worth an error."""
    if password is not None and password_file:
        raise MQTTURLError("mqtt.password and mqtt.password_file are both set; keep one")
    return read_secret_file(password_file) if password_file else password


def refuse_password_in_url(url: str | None, flag: str = "--broker") -> None:
    """Command-line URLs show in ``ps``: a password there is refused with where to put it instead."""
    if url and url.lower() not in ("none", "") and parse_url(url).password is not None:
        raise MQTTURLError(f"{flag}: no password in a URL on the command line (other users see it in `ps`); "
                           f"put it in the config file (mqtt.password or mqtt.password_file) or in "
                           f"{ENV_PASSWORD_FILE} / {ENV_PASSWORD}")


def resolve_tls(url: str | BrokerURL, ca: str | None = None, cert: str | None = None,
                key: str | None = None) -> tuple[str | None, str | None, str | None]:
    """The ``(ca, cert, key)`` a client of ``url`` uses: the arguments, else the URL's query options, else the
    environment (module docstring). All None for a plain ``mqtt://`` URL."""
    u = url if isinstance(url, BrokerURL) else parse_url(url)
    ca = ca if ca is not None else u.ca
    cert = cert if cert is not None else u.cert
    key = key if key is not None else u.key
    if (ca or cert or key) and not u.tls:
        raise MQTTURLError(f"TLS files given for a non-TLS URL {u}")
    if u.tls and not (ca or cert or key):
        ca, cert, key = _tls_files_from_env()
    if (cert is None) != (key is None):
        raise MQTTURLError("a client certificate and its key must be given together")
    return ca, cert, key


def _tls_files_from_env() -> tuple[str | None, str | None, str | None]:
    ident = os.environ.get(ENV_IDENTITY)
    if ident:
        return identity_files(ident)
    return os.environ.get(ENV_CA) or None, os.environ.get(ENV_CERT) or None, os.environ.get(ENV_KEY) or None


def _password_from_env() -> str | None:
    if os.environ.get(ENV_PASSWORD_FILE):
        return read_secret_file(os.environ[ENV_PASSWORD_FILE])
    return os.environ.get(ENV_PASSWORD)


@dataclass(frozen=True)
class BrokerURL:
    """A parsed broker URL. ``str()`` redacts the password so it is safe to log."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    path: str = "/mqtt"  # WebSocket path only
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "wss")

    @property
    def transport(self) -> Literal["tcp", "websockets"]:
        return "websockets" if self.scheme in ("ws", "wss") else "tcp"

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = self.username + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.transport == "websockets" else ""
        return f"{self.scheme}://{auth}{host}:{self.port}{path}"


def parse_url(url: str) -> BrokerURL:
    """Parse ``mqtt://[user:pass@]host[:port]`` (also ``mqtts``, ``ws``, ``wss``).

    TLS files may be given as query options: ``mqtts://host?ca=/ca.pem&cert=/c.pem&key=/k.pem``
    and ``insecure=1`` (skip hostname verification; tests only). A bare ``host[:port]`` is not
    accepted: the scheme decides TLS, and guessing it wrong fails late and obscurely.
    """
    if not isinstance(url, str) or not url.strip():
        raise MQTTURLError("empty broker URL")
    url = url.strip()
    if "://" not in url:
        raise MQTTURLError(f"broker URL needs a scheme, e.g. mqtt://{url}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise MQTTURLError(f"unsupported scheme {scheme!r} in {url!r}; use mqtt, mqtts, ws or wss")
    if not parts.hostname:
        raise MQTTURLError(f"no host in broker URL {url!r}")
    try:
        port = parts.port
    except ValueError as exc:  # non-numeric or out of range
        raise MQTTURLError(f"bad port in broker URL {url!r}: {exc}") from None
    if port == 0:
        raise MQTTURLError(f"port 0 in broker URL {url!r}")
    if scheme in ("mqtt", "mqtts") and parts.path not in ("", "/"):
        raise MQTTURLError(f"unexpected path {parts.path!r} in {url!r} (paths are for ws:// only)")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = {"ca", "cert", "key", "insecure"}
    unknown = set(query) - known
    if unknown:
        raise MQTTURLError(f"unknown broker URL option(s) {sorted(unknown)}; known: {sorted(known)}")
    if (query.get("cert") is None) != (query.get("key") is None):
        raise MQTTURLError("cert and key must be given together")
    if any(k in query for k in known) and scheme not in ("mqtts", "wss"):
        raise MQTTURLError(f"TLS options need mqtts:// or wss://, got {scheme}://")
    return BrokerURL(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        path=parts.path or "/mqtt",
        ca=query.get("ca") or None,
        cert=query.get("cert") or None,
        key=query.get("key") or None,
        insecure=query.get("insecure", "0").lower() in ("1", "true", "yes"),
    )


def tune_socket(sock: Any) -> None:
    """Disable Nagle on a client socket (rule 1 in the module docstring).

    Accepts plain, TLS and paho's WebSocket-wrapped sockets; a socket type without the option
    (unix sockets) is left alone rather than failing the connection.
    """
    raw = getattr(sock, "_socket", sock)  # paho's _WebsocketWrapper keeps the TCP socket here
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def _on_socket_open(client: paho.Client, userdata: Any, sock: Any) -> None:
    tune_socket(sock)


_mqtt5_cache: dict[tuple[str, int, str], bool] = {}
_mqtt5_lock = threading.Lock()


# long: one keyword per paho/MQTT option (24 of the 85 lines are its signature and docstring of them)
def make_client(
    client_id: str,
    url: str | BrokerURL,
    *,
    will: Will | None = None,
    protocol: Protocol = "auto",
    clean_start: bool = True,
    session_expiry: int = SESSION_NEVER_EXPIRES,
    keepalive: int = 30,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    insecure: bool | None = None,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    max_queued: int = DEFAULT_MAX_QUEUED,
    receive_maximum: int | None = None,
    userdata: Any = None,
) -> paho.Client:
    """Build a paho client (callback API v2) for ``url``, ready for ``loop_start()``.

    No network I/O happens here except the one-off, cached MQTT 5 probe when
    ``protocol="auto"``: the connection is set up with ``connect_async`` so the loop thread
    makes it (and retries it with backoff if the broker is not up yet — an edge device may boot
    before the network). Use ``start(client)`` to run the loop and wait for the CONNACK.

    * ``will``: (topic, payload, qos, retain), published by the broker if this client vanishes;
      edgeloop uses it for ``dev/{id}/state`` = offline (retained).
    * ``protocol``: "3.1.1", "5", or "auto" = 5 if ``detect_mqtt5`` says so, else 3.1.1
      (also 3.1.1 when the broker cannot be reached now; 3.1.1 works everywhere).
    * ``clean_start=False`` keeps the broker session (subscriptions and queued QoS 1 messages)
      across reconnects; on MQTT 5 it lives ``session_expiry`` seconds after a disconnect — by default
      for ever, like a 3.1.1 persistent session (see ``SESSION_NEVER_EXPIRES``).
    * ``ca``/``cert``/``key``/``insecure`` override the URL's TLS query options.
    * ``receive_maximum`` (MQTT 5): at most this many QoS 1/2 messages unacknowledged towards us, so a
      receiver that acknowledges only after storing bounds its queue (the trainer's ingestion).
    """
    u = url if isinstance(url, BrokerURL) else parse_url(url)
    ca, cert, key = resolve_tls(u, ca, cert, key)
    insecure = u.insecure if insecure is None else insecure
    if u.username is not None and u.password is None:
        u = dataclasses.replace(u, password=_password_from_env())

    if protocol == "auto":
        use5 = detect_mqtt5(u, ca=ca, cert=cert, key=key, insecure=insecure)
    elif protocol in ("5", "3.1.1"):
        use5 = protocol == "5"
    else:
        raise ValueError(f"protocol must be 'auto', '3.1.1' or '5', not {protocol!r}")

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        # clean_session is a 3.1.1 CONNECT flag; for MQTT 5 it goes to connect(clean_start=...).
        clean_session=None if use5 else clean_start,
        userdata=userdata,
        protocol=paho.MQTTv5 if use5 else paho.MQTTv311,
        transport=u.transport,
        reconnect_on_failure=True,
    )
    client.on_socket_open = _on_socket_open  # TCP_NODELAY: rule 1
    client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(max_queued)
    if u.transport == "websockets":
        client.ws_set_options(path=u.path)
    if u.tls:
        client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(bool(insecure))
    if u.username is not None:
        client.username_pw_set(u.username, u.password)
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)

    props = None
    if use5:
        props = Properties(PacketTypes.CONNECT)
        # Without this an MQTT 5 session ends at disconnect, which would defeat clean_start=False.
        props.SessionExpiryInterval = 0 if clean_start else session_expiry
        if receive_maximum is not None:
            props.ReceiveMaximum = max(1, min(int(receive_maximum), 65535))
        client.connect_async(u.host, u.port, keepalive, clean_start=clean_start, properties=props)
    else:
        client.connect_async(u.host, u.port, keepalive)
    return client


def start(client: paho.Client, timeout: float = 10.0) -> paho.Client:
    """``loop_start()`` and wait until the broker accepted the connection.

    Raises ``ConnectionError`` after ``timeout`` (the loop keeps retrying in the background
    unless you call ``client.loop_stop()``), so callers that must not start offline can fail fast.
    """
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not client.is_connected():
        if time.monotonic() > deadline:
            host = getattr(client, "_host", "?")
            port = getattr(client, "_port", "?")
            raise ConnectionError(f"no CONNACK from broker {host}:{port} within {timeout:g} s")
        time.sleep(0.005)
    return client


def ack_many(client: paho.Client, mids: list[int]) -> None:
    """PUBACK every QoS 1 message id in ``mids`` (in that order) with one socket write.

    With ``manual_ack`` paho queues each ``ack()`` as its own packet and writes each with its own send; under
    TLS that is one record per PUBACK: an encryption and a syscall here, two reads and a decryption on the
    broker, per sample. The bytes are exactly paho's (``_send_command_with_mid``: type, length 2, id; valid for
    MQTT 3.1.1 and, meaning success, for 5), queued as one packet. Falls back to ``ack()`` per id if a paho
    version lacks the internal queue.
    """
    if not mids:
        return
    queue = getattr(client, "_packet_queue", None)
    if queue is None or not getattr(client, "_manual_ack", False):
        for mid in mids:
            client.ack(mid, 1)
        return
    blob = b"".join(struct.pack("!BBH", paho.PUBACK, 2, mid) for mid in mids)
    queue(paho.PUBACK, blob, 0, 1)


def detect_mqtt5(
    url: str | BrokerURL,
    *,
    timeout: float = 3.0,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    insecure: bool | None = None,
    refresh: bool = False,
) -> bool:
    """True if the broker accepts an MQTT 5 CONNECT (so ``$share/...`` subscriptions work).

    Tries a v5 CONNECT with a throwaway client id; a CONNACK with success means yes; a refusal,
    a dropped connection (amqtt closes on an unknown protocol level) or a timeout means no.
    The answer is cached per (host, port, scheme) for the process; ``refresh=True`` re-probes.

    With a client certificate the broker may take the client id from the certificate (edgeloop's broker
    does), so a probe that connected would *be* the caller and replace its persistent session — the
    trainer's queued samples. The probe then asks for an authentication method no broker offers: an MQTT 5
    broker refuses it with "bad authentication method" (0x8C) before it looks at any session, which still
    proves it speaks MQTT 5. mosquitto closes the connection right behind that CONNACK, and on a loaded
    machine the close can overtake it; such an answerless attempt is repeated, and never cached.
    """
    u = url if isinstance(url, BrokerURL) else parse_url(url)
    ca, cert, key = resolve_tls(u, ca, cert, key)
    cache_key = (u.host, u.port, u.scheme)
    with _mqtt5_lock:
        if not refresh and cache_key in _mqtt5_cache:
            return _mqtt5_cache[cache_key]
    tls = (ca, cert, key, bool(u.insecure if insecure is None else insecure))
    answer = None
    for _ in range(3 if cert else 1):
        try:
            answer = _probe_once(u, tls, timeout)
        except OSError:
            return False  # unreachable now: report 3.1.1 (works everywhere) but do not cache the guess
        if answer is not None:
            break
    if answer is None and cert:
        return False  # closed without a CONNACK every time: probably not MQTT 5, but not sure enough to cache
    with _mqtt5_lock:
        _mqtt5_cache[cache_key] = bool(answer)
    return bool(answer)


def _probe_once(u: BrokerURL, tls: tuple[str | None, str | None, str | None, bool], timeout: float) -> bool | None:
    """One MQTT 5 CONNECT: True/False from the CONNACK, None when the connection ended without one."""
    ca, cert, key, insecure = tls
    result: dict[str, bool] = {}
    done = threading.Event()
    probe = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgeloop-probe-{uuid.uuid4().hex[:12]}",
        protocol=paho.MQTTv5,
        transport=u.transport,
        reconnect_on_failure=False,
    )
    if u.transport == "websockets":
        probe.ws_set_options(path=u.path)
    if u.tls:
        probe.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        probe.tls_insecure_set(insecure)
    if u.username is not None:
        probe.username_pw_set(u.username, u.password)
    props = None
    if cert:
        props = Properties(PacketTypes.CONNECT)
        props.AuthenticationMethod = "edgeloop-protocol-probe"  # refused before any session is touched

    def on_connect(c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
        # A bad-credentials refusal still proves the broker parsed a v5 CONNECT; only
        # "unsupported protocol version" (0x84, or 3.1.1's rc 1) means no.
        result["v5"] = not (rc.is_failure and rc.value in (0x84, 1))
        done.set()

    probe.on_connect = on_connect
    probe.on_disconnect = lambda *args: done.set()
    probe.on_connect_fail = lambda *args: done.set()
    try:
        probe.connect(u.host, u.port, keepalive=10, properties=props)
        probe.loop_start()
        done.wait(timeout)
        if result.get("v5") and not cert:
            probe.disconnect()
    finally:
        probe.loop_stop()
        try:
            probe.socket() and probe.socket().close()  # type: ignore[union-attr]
        except OSError:
            pass
    if "v5" in result:
        return result["v5"]
    return None if cert else False  # amqtt closes on an unknown protocol level: that is a no


def round_trip_probe(url: str | BrokerURL, n: int = 20, timeout: float = 5.0) -> float:
    """Median seconds for a QoS 1 request -> reply between two clients through the broker.

    The check for latency rule 1 on a broker you did not configure: above ``NAGLE_SUSPECT_S``
    on a LAN, the broker almost certainly has Nagle on (turn on its TCP no-delay option).
    """
    u = url if isinstance(url, BrokerURL) else parse_url(url)
    tag = uuid.uuid4().hex[:12]
    req, rep = f"edgeloop/probe/{tag}/req", f"edgeloop/probe/{tag}/rep"
    got = threading.Event()
    subscribed = threading.Semaphore(0)
    a = make_client(f"probe-a-{tag}", u, protocol="3.1.1")
    b = make_client(f"probe-b-{tag}", u, protocol="3.1.1")
    b.on_message = lambda c, ud, m: c.publish(rep, m.payload, qos=1)
    a.on_message = lambda c, ud, m: got.set()
    for c in (a, b):
        c.on_subscribe = lambda *args: subscribed.release()
    try:
        start(a, timeout)
        start(b, timeout)
        b.subscribe(req, qos=1)
        a.subscribe(rep, qos=1)
        for _ in range(2):
            if not subscribed.acquire(timeout=timeout):
                raise TimeoutError("no SUBACK from broker")
        times = []
        for i in range(n + 2):
            got.clear()
            t0 = time.perf_counter()
            a.publish(req, b"%d" % i, qos=1)
            if not got.wait(timeout):
                raise TimeoutError("no reply through the broker")
            if i >= 2:  # skip warm-up
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        for c in (a, b):
            c.disconnect()
            c.loop_stop()
