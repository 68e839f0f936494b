"""The embedded default broker for one machine (`edgeloop broker`).

``start_broker()`` runs ``mosquitto`` when the binary is on PATH (fast, MQTT 5, shared
subscriptions) and otherwise the pure-Python amqtt broker in a background thread of this
process (MQTT 3.1.1 only, a few thousand msg/s — enough for a demo, not for a fleet).
Production points every component at its own broker URL instead.

The generated mosquitto config is the part that matters for performance:
``set_tcp_nodelay true`` (without it a request/response exchange runs at ~23/s instead of
thousands — Nagle on the broker side plus the client's 40 ms delayed ACK; docs/mqtt-notes.md),
packet limits that fit 256 KiB model chunks, and in-flight/queue limits high enough that a
QoS 1 burst to a slow subscriber is queued rather than silently dropped.
"""

from __future__ import annotations

import argparse
import asyncio
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

from deploy.children import die_with_parent

__all__ = ["Broker", "BrokerError", "start_broker", "find_mosquitto", "free_port", "main"]

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

    def __init__(self, kind: str, host: str, port: int, supports_mqtt5: bool, workdir: Path | None) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.supports_mqtt5 = supports_mqtt5
        self.workdir = workdir
        self._stopped = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"mqtt://{host}:{self.port}"

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
                 workdir: Path | None) -> None:
        super().__init__(kind, host, port, supports_mqtt5, workdir)
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

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, workdir: Path, own_workdir: bool) -> None:
        super().__init__(proc, "mosquitto", host, port, True, workdir)
        self._own_workdir = own_workdir

    def stop(self) -> None:
        stopped_before = self._stopped
        super().stop()
        if not stopped_before and self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def mosquitto_config(host: str, port: int, workdir: Path, persistent: bool = False) -> str:
    """The generated mosquitto.conf; each line says why it is there."""
    lines = [
        "# generated by edgeloop (deploy/broker.py)",
        f"listener {port} {host}",
        "# one machine, demo/dev: no credentials. Production brokers set their own auth/ACLs.",
        "allow_anonymous true",
        "# Nagle on the broker side stalls request/response flows by the 40 ms delayed ACK.",
        "set_tcp_nodelay true",
        "# 256 KiB model chunks + envelope must fit; the limit still rejects garbage.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "# QoS 1 bursts (samples, model chunks) must be queued, not silently dropped.",
        f"max_inflight_messages {MAX_INFLIGHT}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        *(["# A given workdir keeps retained manifests/chunks and the trainer's session across restarts.",
            "persistence true", f"persistence_location {workdir}/", "autosave_interval 5"]
          if persistent else
          ["# Temp dir: retained state lives as long as the broker; the edge outbox is the durable store.",
           "persistence false"]),
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

        # As root, mosquitto drops to user "mosquitto" and then cannot write its log in our
        # temp dir; stay as the invoking user instead.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


def _start_mosquitto(binary: str, host: str, port: int, workdir: Path | None) -> MosquittoBroker:
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="edgeloop-broker-")) if own else Path(workdir)  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
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
        conf.write_text(mosquitto_config(host, p, wd, persistent=not own))
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
        b = MosquittoBroker(proc, host, p, wd, own)
        if _wait_port(host, p, START_TIMEOUT_S, b.alive) and b.alive():
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
    proc = subprocess.Popen([sys.executable, "-m", "deploy.broker", "--kind", "amqtt", "--host", host, "--port", str(p)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent())
    b = AmqttProcessBroker(proc, host, p)
    if not (_wait_port(host, p, START_TIMEOUT_S, b.alive) and b.alive()):
        b.stop()
        raise BrokerError(f"amqtt (child process) did not accept connections on {host}:{p} within {START_TIMEOUT_S:g} s")
    return b


def start_broker(host: str = "127.0.0.1", port: int = 0, kind: Kind = "auto", workdir: str | Path | None = None) -> Broker:
    """Start a broker and return once it accepts TCP connections.

    ``port=0`` picks a free port. ``kind="auto"`` prefers mosquitto, then amqtt. ``workdir``
    (mosquitto only) keeps the config, log and persistence file there instead of a temp dir removed on
    stop: retained messages and persistent sessions then survive a broker restart.
    Raises ``BrokerError`` with the reason (and mosquitto's log tail) on failure.
    """
    if kind not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"kind must be auto, mosquitto or amqtt, not {kind!r}")
    if kind in ("auto", "mosquitto"):
        binary = find_mosquitto()
        if binary:
            return _start_mosquitto(binary, host, port, Path(workdir) if workdir else None)
        if kind == "mosquitto":
            raise BrokerError("mosquitto is not installed (apt install mosquitto / brew install mosquitto)")
    return _start_amqtt(host, port)


def main(argv: list[str] | None = None) -> int:
    """``edgeloop broker``: run the embedded broker until Ctrl-C or SIGTERM."""
    ap = argparse.ArgumentParser(
        prog="edgeloop broker",
        description=(
            "Run a local MQTT broker for edgeloop on this machine: mosquitto if installed "
            "(MQTT 5, fast), else the built-in amqtt (MQTT 3.1.1). Prints the URL to pass "
            "to the other commands' --broker option, then runs until Ctrl-C / SIGTERM."
        ),
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines; default %(default)s)")
    ap.add_argument("--port", type=int, default=1883, help="TCP port, 0 = any free port (default %(default)s)")
    ap.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto", help="which broker to run (default %(default)s)")
    ap.add_argument("--workdir", default=None, help="keep mosquitto's config and log here (default: a temp dir)")
    args = ap.parse_args(argv)

    try:
        broker = start_broker(args.host, args.port, args.kind, args.workdir)
    except BrokerError as exc:
        print(f"edgeloop broker: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    v = "MQTT 5 + 3.1.1" if broker.supports_mqtt5 else "MQTT 3.1.1"
    print(broker.url, flush=True)
    print(f"# {broker.kind} broker ({v}) listening; pass --broker {broker.url}. Ctrl-C to stop.", file=sys.stderr, flush=True)
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
