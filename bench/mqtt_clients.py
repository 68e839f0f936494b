"""Benchmark: QoS 1 throughput and round trips with paho clients, in one process and across two.

Answers "why do two paho clients in one process only reach 40-150 msg/s?" (docs/mqtt-notes.md):
it is not the process, the GIL or paho's loop threads; it is Nagle's algorithm on the *broker*
side of a connection meeting the client's 40 ms delayed ACK, which appears as soon as a
client both publishes and receives (request/response). Each figure below isolates one factor.

    python -m bench.mqtt_clients [--quick]   # writes bench/results/mqtt_clients.json
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as paho

from deploy.broker import Broker, MosquittoBroker, find_mosquitto, free_port, mosquitto_config, start_broker, _wait_port
from protocol.mqtt import make_client, start

PAYLOAD = 1024
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def nagle_mosquitto() -> Iterator[Broker]:
    """mosquitto with its *default* set_tcp_nodelay false (the stock config most people run)."""
    binary = find_mosquitto()
    if binary is None:
        raise RuntimeError("mosquitto not installed")
    wd = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    port = free_port()
    conf = mosquitto_config("127.0.0.1", port, wd).replace("set_tcp_nodelay true\n", "")
    (wd / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([binary, "-c", str(wd / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = MosquittoBroker(proc, "127.0.0.1", port, wd, own_workdir=True)
    try:
        if not _wait_port("127.0.0.1", port, 10, b.alive):
            raise RuntimeError("bench mosquitto did not start")
        yield b
    finally:
        b.stop()


def _client(url: str, name: str, nodelay: bool = True) -> paho.Client:
    c = make_client(f"bench-{name}-{uuid.uuid4().hex[:8]}", url, protocol="3.1.1", max_queued=0)
    if not nodelay:
        c.on_socket_open = None  # what a bare paho client does: Nagle stays on
    return c


def _subscribe(c: paho.Client, topic: str) -> None:
    ok = threading.Event()
    c.on_subscribe = lambda *a: ok.set()
    c.subscribe(topic, qos=1)
    if not ok.wait(5):
        raise TimeoutError("no SUBACK")


def one_way(url: str, n: int, nodelay: bool = True, same_client: bool = False) -> float:
    """Publisher -> subscriber in this process, pipelined (paho's in-flight window), msg/s."""
    topic = f"bench/{uuid.uuid4().hex[:8]}/t"
    a = _client(url, "pub", nodelay)
    b = a if same_client else _client(url, "sub", nodelay)
    done, count = threading.Event(), [0]

    def on_msg(c: Any, u: Any, m: Any) -> None:
        count[0] += 1
        if count[0] >= n:
            done.set()

    b.on_message = on_msg
    for c in {id(a): a, id(b): b}.values():
        start(c)
    _subscribe(b, topic)
    payload = b"x" * PAYLOAD
    t0 = time.perf_counter()
    for _ in range(n):
        a.publish(topic, payload, qos=1)
    ok = done.wait(120)
    dt = time.perf_counter() - t0
    for c in {id(a): a, id(b): b}.values():
        c.disconnect()
        c.loop_stop()
    if not ok:
        raise TimeoutError(f"one_way: {count[0]}/{n} delivered")
    return n / dt


def _echo_client(url: str, req: str, rep: str, nodelay: bool) -> paho.Client:
    b = _client(url, "echo", nodelay)
    b.on_message = lambda c, u, m: c.publish(rep, m.payload, qos=1)
    return b


def req_rep(url: str, n: int, nodelay: bool = True, mode: str = "threads", other_process: bool = False) -> float:
    """A publishes a request, B (echo) publishes the reply, A waits for it: round trips/s.

    mode "threads": each client has its own loop_start() thread (the normal setup).
    mode "switch":  same, with sys.setswitchinterval(1e-4) (tests the GIL hypothesis).
    mode "single":  one thread drives both sockets with select() (no GIL hand-offs, no
                    socketpair wake-ups between threads).
    other_process:  B runs in a separate process (tests "inside one process").
    """
    tag = uuid.uuid4().hex[:8]
    req, rep = f"bench/{tag}/req", f"bench/{tag}/rep"
    a = _client(url, "req", nodelay)
    got = threading.Event()
    a.on_message = lambda c, u, m: got.set()
    proc = None
    old_switch = sys.getswitchinterval()
    b: paho.Client | None = None
    try:
        if other_process:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.mqtt_clients", "--echo", url, req, rep, "1" if nodelay else "0"],
                stdout=subprocess.PIPE, cwd=ROOT,
            )
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("echo process failed")
        else:
            b = _echo_client(url, req, rep, nodelay)
        if mode == "single":
            clients = [a] + ([b] if b else [])
            for c in clients:
                c.reconnect()  # blocking connect; no loop thread
            stop = threading.Event()

            def drive() -> None:
                while not stop.is_set():
                    rl = [c.socket() for c in clients]
                    wl = [c.socket() for c in clients if c.want_write()]
                    r, _, _ = select.select(rl, wl, [], 0.05)
                    for c in clients:
                        if c.socket() in r:
                            c.loop_read(100)
                        if c.want_write():
                            c.loop_write()
                        c.loop_misc()

            th = threading.Thread(target=drive, daemon=True)
            th.start()
            # subscribe (SUBACKs are handled by the driving thread)
            subs = []
            for c, t in ((a, rep),) + (((b, req),) if b else ()):
                ev = threading.Event()
                c.on_subscribe = lambda *x, ev=ev: ev.set()
                c.subscribe(t, qos=1)
                subs.append(ev)
            for ev in subs:
                ev.wait(5)
        else:
            if mode == "switch":
                sys.setswitchinterval(1e-4)
            for c in [a] + ([b] if b else []):
                start(c)
            if b:
                _subscribe(b, req)
            _subscribe(a, rep)
        payload = b"x" * PAYLOAD
        for i in range(3):  # warm-up
            got.clear()
            a.publish(req, payload, qos=1)
            got.wait(5)
        t0 = time.perf_counter()
        for _ in range(n):
            got.clear()
            a.publish(req, payload, qos=1)
            if not got.wait(5):
                raise TimeoutError("req_rep: no reply")
        dt = time.perf_counter() - t0
        if mode == "single":
            stop.set()
            th.join(1)
        return n / dt
    finally:
        sys.setswitchinterval(old_switch)
        for c in [a] + ([b] if b else []):
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:  # noqa: BLE001 - bench teardown
                pass
        if proc is not None:
            proc.kill()
            proc.wait()


def two_process_one_way(url: str, n: int) -> float:
    """The plain ceiling: one publisher process -> one subscriber process, QoS 1, 1 KB."""
    topic = f"bench/{uuid.uuid4().hex[:8]}/t"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.mqtt_clients", "--sub", url, topic, str(n)], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("subscriber process failed")
        a = _client(url, "pub")
        start(a)
        payload = b"x" * PAYLOAD
        t0 = time.time()
        for _ in range(n):
            a.publish(topic, payload, qos=1)
        line = proc.stdout.readline()
        a.disconnect()
        a.loop_stop()
        t_last = float(line)
        return n / (t_last - t0)
    finally:
        proc.kill()
        proc.wait()


def _sub_process(url: str, topic: str, n: int) -> None:
    c = _client(url, "sub2")
    done, count = threading.Event(), [0]

    def on_msg(cl: Any, u: Any, m: Any) -> None:
        count[0] += 1
        if count[0] >= n:
            done.set()

    c.on_message = on_msg
    start(c)
    _subscribe(c, topic)
    print("ready", flush=True)
    done.wait(120)
    print(time.time(), flush=True)


def _echo_process(url: str, req: str, rep: str, nodelay: bool) -> None:
    b = _echo_client(url, req, rep, nodelay)
    start(b)
    _subscribe(b, req)
    print("ready", flush=True)
    while True:
        time.sleep(1)


def _median(f: Any, repeat: int) -> float:
    vals = sorted(f() for _ in range(repeat))
    return round(vals[len(vals) // 2], 1)


def run(quick: bool = False) -> dict[str, Any]:
    """All configurations; each figure is a median of 3 runs (msg/s or round trips/s)."""
    n_flow = 1000 if quick else 5000
    n_rr = 200 if quick else 1000
    n_slow = 25 if quick else 40  # round trips against a Nagle broker are ~44 ms each: 40 x 3 reps x 5 runs = 26 s
    rep = 1 if quick else 3
    figs: dict[str, float] = {}
    with start_broker(kind="mosquitto") as good:
        u = good.url
        figs["one_way_1proc_2clients"] = _median(lambda: one_way(u, n_flow), rep)
        figs["one_way_2procs_ceiling"] = _median(lambda: two_process_one_way(u, n_flow), rep)
        figs["one_way_1proc_2clients_no_client_nodelay"] = _median(lambda: one_way(u, n_flow, nodelay=False), rep)
        figs["self_loop_1client"] = _median(lambda: one_way(u, n_flow, same_client=True), rep)
        figs["self_loop_1client_no_client_nodelay"] = _median(lambda: one_way(u, 1000, nodelay=False, same_client=True), rep)
        figs["req_rep_1proc_2clients"] = _median(lambda: req_rep(u, n_rr), rep)
        figs["req_rep_2procs"] = _median(lambda: req_rep(u, n_rr, other_process=True), rep)
        figs["req_rep_1proc_2clients_switch1e-4"] = _median(lambda: req_rep(u, n_rr, mode="switch"), rep)
        figs["req_rep_1proc_1thread_drives_both"] = _median(lambda: req_rep(u, n_rr, mode="single"), rep)
        figs["req_rep_1proc_no_client_nodelay"] = _median(lambda: req_rep(u, n_slow, nodelay=False), rep)
    with nagle_mosquitto() as bad:
        u = bad.url
        figs["nagle_broker_one_way_1proc_2clients"] = _median(lambda: one_way(u, n_flow), rep)
        figs["nagle_broker_req_rep_1proc_2clients"] = _median(lambda: req_rep(u, n_slow), rep)
        figs["nagle_broker_req_rep_2procs"] = _median(lambda: req_rep(u, n_slow, other_process=True), rep)
        figs["nagle_broker_req_rep_switch1e-4"] = _median(lambda: req_rep(u, n_slow, mode="switch"), rep)
        figs["nagle_broker_req_rep_1thread_drives_both"] = _median(lambda: req_rep(u, n_slow, mode="single"), rep)
    with start_broker(kind="amqtt") as am:
        u = am.url
        figs["amqtt_inproc_one_way_1proc_2clients"] = _median(lambda: one_way(u, n_flow // 2), rep)
        figs["amqtt_inproc_req_rep_1proc_2clients"] = _median(lambda: req_rep(u, n_rr // 2), rep)
    ceiling = figs["one_way_2procs_ceiling"]
    met = (
        figs["one_way_1proc_2clients"] >= 0.5 * ceiling
        and figs["req_rep_1proc_2clients"] >= 1000
    )
    return {
        "name": "mqtt_clients",
        "figures": figs,
        "units": "one_way/self_loop: QoS 1 msg/s, 1 KiB payloads; req_rep: QoS 1 request->reply round trips/s",
        "goal": (
            "with the edgeloop broker config and make_client, two paho clients in one process reach "
            ">= 50% of the two-process QoS 1 ceiling, and request/response >= 1000 round trips/s"
        ),
        "met": bool(met),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "paho": paho.__version__ if hasattr(paho, "__version__") else "2.x"},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sub", nargs=3, metavar=("URL", "TOPIC", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--echo", nargs=4, metavar=("URL", "REQ", "REP", "NODELAY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sub:
        _sub_process(args.sub[0], args.sub[1], int(args.sub[2]))
        return 0
    if args.echo:
        _echo_process(args.echo[0], args.echo[1], args.echo[2], args.echo[3] == "1")
        return 0
    res = run(quick=args.quick)
    out = ROOT / "bench" / "results" / "mqtt_clients.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
