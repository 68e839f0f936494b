"""The embedded default broker for one machine (`edgeloop broker`).

Secure by default: ``edgeloop broker`` runs mosquitto with a TLS listener that requires a client certificate
from the fleet's PKI (deploy/pki.py), takes each client's identity from its certificate's CN (as username
*and* client id, so no one can take over another's session), and enforces the trust model of DESIGN.md with
an ACL generated from the PKI's registry (deploy/acl.py). ``--insecure`` keeps an anonymous plain-TCP
broker on loopback for development, and says so. The pure-Python amqtt broker (when mosquitto is not
installed) can check neither certificates nor ACLs: it only ever runs anonymous on loopback.

The generated mosquitto config is also the part that matters for performance and for not losing data:
``set_tcp_nodelay true`` (without it a request/response exchange runs at ~23/s instead of thousands — Nagle
on the broker side plus the client's 40 ms delayed ACK; docs/mqtt-notes.md), packet limits that fit 256 KiB
model chunks, in-flight/queue limits high enough that a QoS 1 burst to a slow subscriber is queued rather
than silently dropped, and persistence (samples queued for the trainer and retained manifests and chunks
survive a broker restart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlencode

from deploy.children import die_with_parent
from protocol.durable import atomic_write
from protocol.hosts import is_loopback
from protocol.topics import DEFAULT_PREFIX, Topics

__all__ = ["Broker", "BrokerError", "start_broker", "find_mosquitto", "free_port", "main", "mosquitto_config",
           "reload_brokers", "is_loopback"]

Kind = Literal["auto", "mosquitto", "amqtt"]

# Largest MQTT packet the broker accepts: a 256 KiB chunk + envelope header + MQTT header fits
# many times over; 16 MiB also leaves room for operators who raise the chunk size.
MAX_PACKET_SIZE = 16 * 1024 * 1024
# Outgoing QoS 1 messages in flight per client (mosquitto default 20). Higher keeps a fast
# subscriber's pipe full during model-chunk and sample bursts.
MAX_INFLIGHT = 100
# Queued QoS 1 messages per client beyond the in-flight window before mosquitto *silently drops*
# (default 1000): a trainer that pauses for a checkpoint must not lose samples, so queue deep,
# bounded by bytes so one stuck client cannot eat the machine's memory.
MAX_QUEUED_MESSAGES = 100_000
MAX_QUEUED_BYTES = 512 * 1024 * 1024
# Seconds between saves of the in-memory state (retained messages, sessions, queued QoS 1 messages) to the
# persistence file. A clean stop (SIGTERM) always saves; a crash loses at most this much.
AUTOSAVE_INTERVAL_S = 5
DEFAULT_TLS_PORT = 8883
DEFAULT_PLAIN_PORT = 1883

# A reload of a generated config takes milliseconds; wait this long after mosquitto logged it.
RELOAD_SETTLE_S = 0.2
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """The broker could not be started; the message carries the reason (and log tail)."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary; Debian installs it in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for cand in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (there is a small race until the broker binds it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    """Fail early and clearly if something already listens there (otherwise the readiness
    check would happily connect to the *other* server)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as brokers do; TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (Address already in use?)") from None


def _wait_port(host: str, port: int, timeout: float, alive: "callable[[], bool]") -> bool:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((connect_host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Broker:
    """A running broker. ``url`` is what to pass to ``edgeloop edge/trainer/rollout --broker``."""

    def __init__(self, kind: str, host: str, port: int, supports_mqtt5: bool, workdir: Path | None,
                 pki_dir: Path | None = None) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.supports_mqtt5 = supports_mqtt5
        self.workdir = workdir
        self.pki_dir = pki_dir  # set: TLS with client certificates and ACLs from this PKI
        self._stopped = False

    @property
    def tls(self) -> bool:
        return self.pki_dir is not None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def client_url(self, identity: str) -> str:
        """The URL a client with PKI identity ``identity`` (a device id or service name) connects with: the
        broker URL plus its CA, certificate and key as query options. Plain ``url`` for an anonymous broker."""
        if self.pki_dir is None:
            return self.url
        from deploy.pki import open_pki

        d = open_pki(self.pki_dir).identity_dir(identity)
        return f"{self.url}?" + urlencode({"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"})

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "broker.log" if self.workdir else None

    def log_tail(self, lines: int = 20) -> str:
        p = self.log_path
        if p is None or not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Broker {self.kind} {self.url}{' stopped' if self._stopped else ''}>"


class ProcessBroker(Broker):
    """A broker running as a child process: alive while the process runs; stop = SIGTERM, then SIGKILL."""

    def __init__(self, proc: subprocess.Popen[bytes], kind: str, host: str, port: int, supports_mqtt5: bool,
                 workdir: Path | None, pki_dir: Path | None = None) -> None:
        super().__init__(kind, host, port, supports_mqtt5, workdir, pki_dir)
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)


class MosquittoBroker(ProcessBroker):
    """mosquitto as a child process with a generated config in ``workdir`` (removed on stop if ours)."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, workdir: Path, own_workdir: bool,
                 pki_dir: Path | None = None, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(proc, "mosquitto", host, port, True, workdir, pki_dir)
        self._own_workdir = own_workdir
        self.prefix = prefix

    @property
    def acl_path(self) -> Path:
        return self.workdir / "acl.conf"  # type: ignore[operator]

    def reload(self) -> bool:
        """Regenerate the ACL from the PKI and SIGHUP mosquitto: it re-reads the ACL and the CRL (measured on
        2.0.11: a revoked certificate is refused at the next handshake, and an open connection of a revoked
        identity loses its rights at once). Connections stay up. True once mosquitto has reloaded."""
        if self.pki_dir is not None:
            _write_acl(self.pki_dir, self.prefix, self.acl_path)
        return self.alive() and _hup_and_wait(self.proc.pid, self.log_path)  # type: ignore[arg-type]

    def stop(self) -> None:
        stopped_before = self._stopped
        super().stop()
        if not stopped_before and self.pki_dir is not None:
            (self.pki_dir / "brokers" / f"{self.proc.pid}.json").unlink(missing_ok=True)
        if not stopped_before and self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _write_acl(pki_dir: Path, prefix: str, path: Path) -> None:
    from deploy.acl import mosquitto_acl
    from deploy.pki import open_pki

    atomic_write(path, mosquitto_acl(open_pki(pki_dir), Topics(prefix)).encode())


def _hup_and_wait(pid: int, log_path: Path, timeout: float = 5.0) -> bool:
    """SIGHUP mosquitto and wait until it has reloaded. mosquitto 2.0.11 clears its reload flag *after*
    reloading, so a SIGHUP that arrives during a reload is lost: wait for the "Reloading config" line, give
    the reload (milliseconds) time to finish, and send again if the line never came."""
    def reloads() -> int:
        try:
            return log_path.read_text(errors="replace").count("Reloading config")
        except OSError:
            return 0

    for _ in range(2):
        before = reloads()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if reloads() > before:
                time.sleep(RELOAD_SETTLE_S)
                return True
            time.sleep(0.02)
    return False


def _register(pki_dir: Path, b: MosquittoBroker) -> None:
    """Tell later `edgeloop pki device/revoke` runs which broker to reload (see reload_brokers)."""
    d = pki_dir / "brokers"
    d.mkdir(mode=0o700, exist_ok=True)
    record = {"pid": b.proc.pid, "port": b.port, "acl": str(b.acl_path), "log": str(b.log_path),
              "prefix": b.prefix, "started": time.time()}
    atomic_write(d / f"{b.proc.pid}.json", json.dumps(record).encode())


def reload_brokers(pki_dir: str | Path) -> list[int]:
    """Regenerate the ACL of every running mosquitto that edgeloop started on this PKI and SIGHUP it (after a
    device was provisioned or an identity revoked); returns once they have reloaded, with their pids. Drops
    records of brokers gone. Holds the PKI's lock, so reloads from parallel commands never overlap."""
    from deploy.pki import open_pki

    with open_pki(pki_dir).locked():
        return _reload_brokers(Path(pki_dir))


def _reload_brokers(pki_dir: Path) -> list[int]:
    done = []
    for rec_path in sorted((Path(pki_dir) / "brokers").glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
            pid = int(rec["pid"])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, KeyError):
            rec_path.unlink(missing_ok=True)  # the broker is gone (or the record is junk)
            continue
        if comm != "mosquitto":  # the pid was reused by something else: never signal it
            rec_path.unlink(missing_ok=True)
            continue
        try:
            _write_acl(Path(pki_dir), rec["prefix"], Path(rec["acl"]))
            reloaded = _hup_and_wait(pid, Path(rec.get("log") or Path(rec["acl"]).with_name("broker.log")))
        except OSError as exc:  # its state dir is gone, or it is another user's: not ours to reload
            logging.getLogger("edgeloop.broker").warning("cannot reload broker pid %d: %s", pid, exc)
            continue
        if reloaded:
            done.append(pid)
        else:
            logging.getLogger("edgeloop.broker").warning("broker pid %d did not log a reload", pid)
    return done


#: TLS 1.3 suites the generated broker offers, preferred first (mosquitto applies its own order)
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def mosquitto_config(host: str, port: int, workdir: Path, persistent: bool = False, *,
                     pki_dir: Path | None = None) -> str:
    """The generated mosquitto.conf; each line says why it is there.

    With ``pki_dir``: a TLS listener that requires a certificate from that PKI, identities from the CN, the
    ACL in ``workdir/acl.conf`` (written by the caller) and the PKI's CRL. Without: anonymous plain TCP.
    """
    lines = ["# generated by edgeloop (deploy/broker.py)", f"listener {port} {host}"]
    if pki_dir is not None:
        lines += [
            "# TLS only; every client shows a certificate from the fleet's CA (edgeloop pki).",
            f"cafile {pki_dir / 'ca.pem'}",
            f"certfile {pki_dir / 'broker' / 'cert.pem'}",
            f"keyfile {pki_dir / 'broker' / 'key.pem'}",
            "# Revoked certificates (edgeloop pki revoke); SIGHUP re-reads it.",
            f"crlfile {pki_dir / 'crl.pem'}",
            "tls_version tlsv1.2",
            "# TLS 1.3 suites, in the broker's order of preference: AES-128-GCM (the suite every TLS 1.3 peer",
            "# must implement, RFC 8446 9.1) before AES-256-GCM costs 20 instead of 28 us per 20 KB sample here,",
            "# and each sample is encrypted or decrypted four times (camera, broker in and out, trainer).",
            f"ciphers_tls1.3 {TLS13_SUITES}",
            "require_certificate true",
            "# The certificate's CN is the username the ACL is written for ...",
            "use_identity_as_username true",
            "# ... and the client id: nobody can take over another identity's session (the trainer's queue).",
            "use_username_as_clientid true",
            "allow_anonymous false",
            f"acl_file {workdir / 'acl.conf'}",
        ]
    else:
        lines += ["# --insecure: anonymous, loopback only (deploy.broker refuses any other address).",
                  "allow_anonymous true"]
    lines += [
        "# Nagle on the broker side stalls request/response flows by the 40 ms delayed ACK.",
        "set_tcp_nodelay true",
        "# 256 KiB model chunks + envelope must fit; the limit still rejects garbage.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "# QoS 1 bursts (samples, model chunks) must be queued, not silently dropped: beyond these limits",
        "# mosquitto drops further QoS 1 messages for that client and logs it (README, 'The broker').",
        f"max_inflight_messages {MAX_INFLIGHT}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
    ]
    if persistent:
        lines += ["# Samples queued for the trainer and retained manifests/chunks survive a broker restart.",
                  "persistence true", f"persistence_location {workdir}/", "persistence_file mosquitto.db",
                  f"autosave_interval {AUTOSAVE_INTERVAL_S}",
                  "# No persistent_client_expiration: with it, mosquitto 2.0.11 puts every offline session on its",
                  "# expiry list, and a SIGHUP (ACL/CRL reload) adds it twice -> a freed session on the list, a",
                  "# wedged broker (docs/NOTES.md 19). Sessions do not expire; their queues are bounded below."]
    else:
        lines += ["# Retained state lives as long as this broker process; the edge outbox is the durable store.",
                  "persistence false"]
    lines += [
        f"log_dest file {workdir / 'broker.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd

        # As root, mosquitto drops to user "mosquitto" and then can read neither the 0600 root-owned keys
        # of the PKI nor write its log in our directory; stay as the invoking user instead.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


def _start_mosquitto(binary: str, host: str, port: int, workdir: Path | None, *, pki_dir: Path | None = None,
                     prefix: str = DEFAULT_PREFIX, persistent: bool | None = None) -> MosquittoBroker:
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="edgeloop-broker-")) if own else Path(workdir).resolve()  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
    if pki_dir is not None:
        _write_acl(pki_dir, prefix, wd / "acl.conf")
    attempts = 3 if port == 0 else 1  # a free port can be taken between probe and bind: retry
    last_err = ""
    for _ in range(attempts):
        p = port or free_port(host)
        try:
            _check_port_free(host, p)
        except BrokerError:
            if own:
                shutil.rmtree(wd, ignore_errors=True)
            raise
        conf = wd / "mosquitto.conf"
        conf.write_text(mosquitto_config(host, p, wd, persistent=(not own) if persistent is None else persistent,
                                         pki_dir=pki_dir))
        (wd / "broker.log").unlink(missing_ok=True)
        with open(wd / "stdout.log", "wb") as out:
            proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # own process group: Ctrl-C in a terminal reaches us, and we stop it in order; and it
                # still goes away if we are killed outright.
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        b = MosquittoBroker(proc, host, p, wd, own, pki_dir, prefix)
        if _wait_port(host, p, START_TIMEOUT_S, b.alive) and b.alive():
            if pki_dir is not None:
                _register(pki_dir, b)
            return b
        rc = proc.poll()
        tail = b.log_tail() or (wd / "stdout.log").read_text(errors="replace")[-2000:]
        own_saved, b._own_workdir = b._own_workdir, False
        b.stop()
        b._own_workdir = own_saved
        last_err = (
            f"mosquitto ({binary}) did not accept connections on {host}:{p} within "
            f"{START_TIMEOUT_S:g} s (exit code {rc}). Log tail:\n{tail}"
        )
        if "Address already in use" not in tail:
            break
    if own:
        shutil.rmtree(wd, ignore_errors=True)
    raise BrokerError(last_err)


class _ProbeNoise(logging.Filter):
    """Drop amqtt's error lines caused by our own readiness and MQTT 5 probes."""

    NOISE = ("No data to decode MQTT packet fixed header", "Invalid protocol from", "Invalid connection from")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.NOISE)


class AmqttBroker(Broker):
    """amqtt's asyncio broker on its own event loop in a daemon thread of this process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__("amqtt", host, port, False, None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
            finally:
                ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name=f"amqtt-broker-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(START_TIMEOUT_S)
        if self._error is not None or not self.alive():
            raise BrokerError(f"amqtt broker failed to start on {self.host}:{self.port}: {self._error!r}")

    async def _serve(self, ready: threading.Event) -> None:
        from amqtt.broker import Broker as _AmqttBroker

        # amqtt logs every connection at INFO; keep the embedded broker quiet unless asked.
        lg = logging.getLogger("amqtt")
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
        for name in ("amqtt.broker", "amqtt.mqtt.protocol.handler"):
            target = logging.getLogger(name)
            if not any(isinstance(f, _ProbeNoise) for f in target.filters):
                target.addFilter(_ProbeNoise())
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # No $SYS publisher and no per-packet logger plugins: they cost throughput for
            # nothing on a local broker.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = _AmqttBroker(config)
        self._stop_event = asyncio.Event()
        await broker.start()
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await broker.shutdown()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._loop is not None and self._stop_event is not None and self.alive():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)


def _start_amqtt(host: str, port: int) -> AmqttBroker:
    if not is_loopback(host):
        raise BrokerError(f"amqtt cannot authenticate clients: it listens on loopback only, not {host}")
    try:
        import amqtt  # noqa: F401
    except ImportError as exc:
        raise BrokerError("neither mosquitto (apt install mosquitto) nor amqtt (pip install 'edgeloop[deploy]') is available") from exc
    attempts = 3 if port == 0 else 1
    err: BrokerError | None = None
    for _ in range(attempts):
        p = port or free_port(host)
        _check_port_free(host, p)
        b = AmqttBroker(host, p)
        try:
            b._start()
            return b
        except BrokerError as exc:
            err = exc
    assert err is not None
    raise err


class AmqttProcessBroker(ProcessBroker):
    """The amqtt broker in a child process (``python -m deploy.broker --kind amqtt``).

    A pure-Python broker shares the GIL with whatever runs beside it; in a process that also trains models
    it slows to ~120 msg/s (docs/mqtt-notes.md). The demo runs it here, on its own interpreter.
    """

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int) -> None:
        super().__init__(proc, "amqtt", host, port, False, None)


def start_amqtt_process(host: str = "127.0.0.1", port: int = 0) -> AmqttProcessBroker:
    """Start amqtt in a child process that dies with this one; return once it accepts connections."""
    p = port or free_port(host)
    _check_port_free(host, p)
    if not is_loopback(host):
        raise BrokerError(f"amqtt cannot authenticate clients: it listens on loopback only, not {host}")
    proc = subprocess.Popen([sys.executable, "-m", "deploy.broker", "--kind", "amqtt", "--insecure", "--host", host,
                             "--port", str(p)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent())
    b = AmqttProcessBroker(proc, host, p)
    if not (_wait_port(host, p, START_TIMEOUT_S, b.alive) and b.alive()):
        b.stop()
        raise BrokerError(f"amqtt (child process) did not accept connections on {host}:{p} within {START_TIMEOUT_S:g} s")
    return b


def start_broker(host: str = "127.0.0.1", port: int = 0, kind: Kind = "auto", workdir: str | Path | None = None,
                 *, pki: str | Path | None = None, prefix: str = DEFAULT_PREFIX,
                 persistence: bool | None = None) -> Broker:
    """Start a broker and return once it accepts TCP connections.

    ``pki`` (a directory made by ``edgeloop pki init``) gives the secure broker: mosquitto with TLS, client
    certificates, identities from the CN and the ACL for topic ``prefix``; its ``url`` is ``mqtts://…`` and
    ``client_url(identity)`` adds an identity's files. Without ``pki`` the broker is anonymous plain TCP and
    must listen on a loopback address (BrokerError otherwise).

    ``port=0`` picks a free port. ``kind="auto"`` prefers mosquitto, then amqtt (anonymous only). ``workdir``
    (mosquitto only) keeps config, ACL, log and persistence file there instead of a temp dir removed on stop;
    ``persistence`` defaults to on when a ``workdir`` is given, so that retained messages and persistent
    sessions survive a broker restart. Raises ``BrokerError`` with the reason (and mosquitto's log tail).
    """
    if kind not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"kind must be auto, mosquitto or amqtt, not {kind!r}")
    pki_dir = None
    if pki is not None:
        from deploy.pki import PKIError, open_pki

        try:
            pki_dir = open_pki(pki).root
        except PKIError as exc:
            raise BrokerError(str(exc)) from None
        Topics(prefix)  # a bad prefix fails here, not as an unreadable ACL
    elif not is_loopback(host):
        raise BrokerError(f"an anonymous broker listens on loopback only, not {host}: give it a PKI (TLS with "
                          "client certificates) to accept other machines")
    if persistence and workdir is None:
        raise BrokerError("persistence needs a workdir that outlives the broker")
    if kind in ("auto", "mosquitto"):
        binary = find_mosquitto()
        if binary:
            return _start_mosquitto(binary, host, port, Path(workdir) if workdir else None, pki_dir=pki_dir,
                                    prefix=prefix, persistent=persistence)
        if kind == "mosquitto" or pki_dir is not None:
            raise BrokerError("mosquitto is not installed (apt install mosquitto / brew install mosquitto)"
                              + ("; the fallback amqtt cannot check client certificates or enforce ACLs, so it only "
                                 "runs anonymous on loopback (edgeloop broker --insecure)" if pki_dir else ""))
    if pki_dir is not None:
        raise BrokerError("amqtt cannot check client certificates or enforce ACLs: the secure broker is mosquitto")
    return _start_amqtt(host, port)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgeloop broker",
        description=(
            "Run the MQTT broker for edgeloop on this machine until Ctrl-C / SIGTERM, and print the URL to pass "
            "to the other commands' --broker option. Secure by default: mosquitto with TLS, a client "
            "certificate required from the fleet's PKI (edgeloop pki), each identity limited to its own topics "
            "by a generated ACL, persistence on. --insecure runs an anonymous loopback broker for development."
        ),
        epilog="Clients connect with --broker mqtts://HOST:PORT and their identity's ca.pem/cert.pem/key.pem "
               "(edge and trainer: --identity DIR or config mqtt.ca_file/cert_file/key_file; any command: "
               "EDGELOOP_MQTT_IDENTITY=PKI/services/deploy). Provision cameras with `edgeloop pki device`.",
    )
    ap.add_argument("--pki", metavar="DIR", help="the fleet's PKI (edgeloop pki init); default: STATE_DIR/pki, "
                    "created on first start")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (0.0.0.0 for other machines: TLS only; default %(default)s)")
    ap.add_argument("--port", type=int, default=None,
                    help=f"TCP port, 0 = any free port (default {DEFAULT_TLS_PORT}; --insecure {DEFAULT_PLAIN_PORT})")
    ap.add_argument("--state-dir", "--workdir", dest="state_dir", default="./edgeloop-broker",
                    help="config, ACL, log and persistence file (and the PKI if no --pki); default %(default)s")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix the ACL is written for (default %(default)s)")
    ap.add_argument("--no-persistence", action="store_true",
                    help="keep retained messages and queued samples in memory only (lost on restart)")
    ap.add_argument("--insecure", action="store_true",
                    help="anonymous plain TCP on loopback, no ACL (development only; prints a warning)")
    ap.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto",
                    help="which broker to run; amqtt only with --insecure (default %(default)s)")
    return ap


def _secure_pki(args: argparse.Namespace) -> Path:
    """The PKI the broker serves: --pki, or STATE_DIR/pki (created the first time, with this host's names)."""
    from deploy.pki import PKI, init_pki

    if args.pki:
        return Path(args.pki)
    default = Path(args.state_dir) / "pki"
    if not PKI(default).exists():
        hosts = [] if is_loopback(args.host) else [args.host]
        if args.host in ("0.0.0.0", "::", ""):
            hosts = [socket.gethostname(), socket.getfqdn()]
        init_pki(default, [h for h in dict.fromkeys(hosts) if h and h not in ("0.0.0.0", "::")])
        print(f"# created a PKI in {default} (CA, broker certificate, trainer/deploy/monitor identities)",
              file=sys.stderr)
    return default


def _check_names(pki_dir: Path, host: str) -> None:
    """Warn when clients will reach the broker by a name its certificate does not carry (their TLS hostname
    check would fail, with an error far from the cause)."""
    from deploy.pki import open_pki

    if host in ("0.0.0.0", "::", "") or is_loopback(host):
        return
    sans = open_pki(pki_dir).broker_sans()
    if host not in sans:
        print(f"edgeloop broker: WARNING: the broker certificate in {pki_dir} is for {', '.join(sans)}, not {host}; "
              f"clients connecting to {host} will fail the TLS name check (edgeloop pki broker --dir {pki_dir} "
              f"--host {host} ... --force)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``edgeloop broker``: run the embedded broker until Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    port = args.port if args.port is not None else (DEFAULT_PLAIN_PORT if args.insecure else DEFAULT_TLS_PORT)
    state = Path(args.state_dir)
    try:
        if args.insecure:
            if args.pki:
                raise BrokerError("--insecure and --pki contradict each other")
            print("edgeloop broker: WARNING: --insecure: anonymous clients, no TLS, no ACL — any local process may "
                  "publish manifests and samples as anyone. Development only.", file=sys.stderr, flush=True)
            pki = None
        else:
            if args.kind == "amqtt":
                raise BrokerError("amqtt cannot check client certificates or enforce ACLs; it runs only with "
                                  "--insecure (loopback, anonymous)")
            pki = _secure_pki(args)
            _check_names(Path(pki), args.host)
        if args.kind != "amqtt":
            from deploy.pki import make_private_dir

            make_private_dir(state.resolve())  # queued samples (camera images) are persisted here
        broker = start_broker(args.host, port, args.kind, None if args.kind == "amqtt" else state, pki=pki,
                              prefix=args.prefix, persistence=not args.no_persistence and args.kind != "amqtt")
    except Exception as exc:  # BrokerError, PKIError, bad prefix: one clear line, no traceback
        print(f"edgeloop broker: {exc}", file=sys.stderr)
        return 1
    return _serve(broker)


def _serve(broker: Broker) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    v = "MQTT 5 + 3.1.1" if broker.supports_mqtt5 else "MQTT 3.1.1"
    print(broker.url, flush=True)
    if broker.tls:
        print(f"# {broker.kind} broker ({v}, TLS, client certificates from {broker.pki_dir}, ACL, persistence in "
              f"{broker.workdir}) listening; pass --broker {broker.url} and an identity from the PKI. "
              "Ctrl-C to stop.", file=sys.stderr, flush=True)
    else:
        why = " — amqtt cannot check certificates or ACLs" if broker.kind == "amqtt" else ""
        print(f"# {broker.kind} broker ({v}, anonymous, loopback only{why}) listening; pass --broker {broker.url}. "
              "Ctrl-C to stop.", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            if not broker.alive():
                print(f"edgeloop broker: {broker.kind} exited unexpectedly\n{broker.log_tail()}", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    print("# broker stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
