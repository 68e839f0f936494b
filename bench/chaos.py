"""``edgeloop bench chaos``: kill and restart the broker, the trainer and a camera mid-stream; count every sample.

Why: "nothing selected is lost" is a claim about crashes, not about a quiet run. The outbox deletes a row
only on the broker's PUBACK, the broker persists the trainer's queued samples, the trainer acknowledges a
sample only once it is stored in SQLite, and a redelivered sample has the same id. This benchmark breaks each
link of that chain while sim cameras stream, as separate processes on loopback with a real mosquitto
(``edgeloop broker``), and then accounts for every sample by id:

    selected (committed to a camera's outbox) = stored by the trainer + dropped by the outbox policy (counted)

after the cameras have stopped and their outboxes were drained by the same link code a camera runs at its next
boot. It also checks that no sample was trained in two updates (the trainer's timeline) and that the trainer
ends healthy.

Faults, at seeded random moments of the stream: the broker restarted (SIGTERM: mosquitto saves its
persistence file; ``--quick`` 2 times, full 3), the trainer killed with SIGKILL and restarted (2 / 3), one
camera killed with SIGKILL and restarted (1 / 2). Not covered here (yet): the rollout controller, a network
partition and a full camera disk (tests/edge covers the full disk).

Goal: 0 lost, 0 trained twice. ``--quick``: 2 cameras, a 60 s stream (about 2 minutes in all); full: 4
cameras, 300 s.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.procs import Procs

ROOT = Path(__file__).resolve().parent.parent
ROI = "96,56,128,128"  # sim:digits' label card at 320x240

Result = dict[str, Any]


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def _bootstrap(d: Path) -> None:
    """A convnet on sim:digits label cards from seeds no camera uses (an operator's labelled set)."""
    import cv2

    from edge.sources.sim import open_sim
    from trainer.bootstrap import bootstrap

    folder = d / "labelled"
    src = open_sim("sim:digits?seed=901")
    x, y, w, h = src.roi
    for i in range(300):
        f = src.frame_at(i * 3)
        (folder / str(f.truth)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / str(f.truth) / f"{i}.png"), f.image[y:y + h, x:x + w])
    roi = tuple(int(v) for v in ROI.split(","))
    bootstrap(d / "trainer", folder, arch="convnet", epochs=10, roi=roi, exporter="torchscript",  # type: ignore[arg-type]
              progress=False, torch_threads=1)


def _outbox_counts(state: Path) -> dict[str, int]:
    """The camera's persistent outbox counters (put, acked, dropped_*) and what is left in it."""
    with sqlite3.connect(f"file:{state / 'outbox.sqlite'}?mode=ro", uri=True) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    return {"put": int(meta.get("put", 0)), "dropped": int(meta.get("dropped_oldest", 0))
            + int(meta.get("dropped_lowest_priority", 0)), "left": int(left)}


def _drain(device: str, state: Path, broker: str, identity: Path) -> int:
    """What a camera does at its next boot: its link sends what is still in the outbox. Returns what is left."""
    from edge.link import Link
    from edge.outbox import Outbox
    from protocol.topics import Topics

    with Outbox(state / "outbox.sqlite") as box:
        if box.depth == 0:
            return 0
        link = Link(device_id=device, url=broker, topics=Topics(), outbox=box, boot=10**6, birth=lambda: b"",
                    ca_file=str(identity / "ca.pem"), cert_file=str(identity / "cert.pem"),
                    key_file=str(identity / "key.pem"))
        link.start()
        try:
            _wait(lambda: box.depth == 0, 60, f"{device}'s outbox to drain")
        except TimeoutError:
            pass
        link.stop()
        return box.depth


def _trainer_view(state: Path) -> tuple[dict[str, int], int]:
    """Samples stored per device, and samples that appear in more than one update of the timeline."""
    with sqlite3.connect(f"file:{state / 'samples' / 'samples.db'}?mode=ro", uri=True) as db:
        stored = dict(db.execute("SELECT device, COUNT(*) FROM samples GROUP BY device").fetchall())
    seen: set[str] = set()
    twice = 0
    timeline = state / "timeline.jsonl"
    if timeline.exists():
        for line in timeline.read_text().splitlines():
            try:
                ids = json.loads(line).get("samples", [])
            except ValueError:
                continue  # a line cut by kill -9
            for sid in ids:
                twice += sid in seen
                seen.add(sid)
    return {k: int(v) for k, v in stored.items()}, twice


def _provision(d: Path, devices: list[str]) -> None:
    """The fleet's PKI (CA, broker and service identities), a signing key and one identity per camera."""
    from deploy.cli import main as cli

    quiet = open(d / "logs" / "provision.log", "a")  # noqa: SIM115 - closed below
    try:
        from contextlib import redirect_stdout

        with redirect_stdout(quiet):
            steps = [["keys", "generate", "--out", str(d / "keys")], ["pki", "init", "--dir", str(d / "pki")]]
            steps += [["pki", "device", dev, "--dir", str(d / "pki"), "--signing-key", str(d / "keys" / "signing.pub")]
                      for dev in devices]
            for args in steps:
                if cli(args) != 0:
                    raise RuntimeError(f"edgeloop {' '.join(args)} failed (see {d / 'logs' / 'provision.log'})")
    finally:
        quiet.close()


def _faults(quick: bool, stream_s: float, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    n = {"broker": 2, "trainer": 2, "camera": 1} if quick else {"broker": 3, "trainer": 3, "camera": 2}
    events = [(rng.uniform(0.1, 0.85) * stream_s, kind) for kind, k in n.items() for _ in range(k)]
    return sorted(events)


def chaos(quick: bool = True, seed: int = 0, workdir: Path | None = None) -> Result:
    """Run the stream with faults; the figures (see :func:`run`)."""
    from deploy.broker import free_port

    cameras, stream_s = (2, 60.0) if quick else (4, 300.0)
    tmp = tempfile.TemporaryDirectory(prefix="edgeloop-chaos-") if workdir is None else None
    d = Path(tmp.name) if tmp is not None else workdir
    assert d is not None
    (d / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    _bootstrap(d)
    procs = Procs(d / "logs")
    port = free_port()
    broker = f"mqtts://127.0.0.1:{port}"  # as on a line: TLS, client certificates, ACL, persistence
    model = d / "trainer" / "models" / "v0001.onnx"
    devices = [f"cam-{k}" for k in range(1, cameras + 1)]
    _provision(d, devices)
    identity = {dev: d / "pki" / "devices" / dev for dev in devices}
    done: list[str] = []
    try:
        procs.start("broker", "broker", "--port", str(port), "--kind", "mosquitto", "--workdir", str(d / "broker"),
                    "--pki", str(d / "pki"))
        _wait(lambda: "listening" in (d / "logs" / "broker.log").read_text(), 30, "the broker")
        procs.start("trainer", "trainer", "run", "--state-dir", str(d / "trainer"), "--broker", broker,
                    "--identity", str(d / "pki" / "services" / "trainer"), "--labeller", "oracle", "-B", "32",
                    "-T", "5", "-K", "5", "--no-api", "--metrics-port", "0", "--exporter", "torchscript",
                    "--log-level", "INFO")
        # The broker keeps samples only for a session that exists: on a line the trainer's first start creates
        # it once (persistent, never expiring); samples published before that have no subscriber.
        _wait(lambda: "subscribed to" in (d / "logs" / "trainer.log").read_text(), 120, "the trainer's subscription")
        for k, dev in enumerate(devices, 1):
            procs.start(dev, "edge", "--device-id", dev, "--source", f"sim:digits?seed={k}&realtime=1&fps=10",
                        "--model", str(model), "--broker", broker, "--identity", str(identity[dev]),
                        "--trusted-key", str(d / "keys" / "signing.pub"), "--state-dir", str(d / dev), "--p-min", "0.5",
                        "--budget-minute", "600", "--budget-hour", "none", "--budget-day", "none", "--seed", str(k),
                        "--stats-interval", "1", "--metrics-port", "0", "--log-level", "WARNING")
        t0 = time.monotonic()
        rng = random.Random(seed + 1)
        for at, kind in _faults(quick, stream_s, seed):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if kind == "broker":
                procs.restart("broker", signal.SIGTERM)
            elif kind == "trainer":
                procs.restart("trainer", signal.SIGKILL)
            else:
                procs.restart(rng.choice(devices), signal.SIGKILL)
            done.append(f"{time.monotonic() - t0:.1f}s {kind}")
        time.sleep(max(0.0, t0 + stream_s - time.monotonic()))
        crashed = [f"{n} exited with {procs.procs[n].returncode}" for n in procs.dead()]
        for dev in devices:
            procs.stop(dev)  # SIGTERM: the link drains for a few seconds, the rest stays in the outbox
        left = {dev: _drain(dev, d / dev, broker, identity[dev]) for dev in devices}
        edges = {dev: _outbox_counts(d / dev) for dev in devices}
        expected = {dev: c["put"] - c["dropped"] - c["left"] for dev, c in edges.items()}
        try:
            _wait(lambda: all(_trainer_view(d / "trainer")[0].get(dev, 0) >= n for dev, n in expected.items()),
                  90, "the trainer to store every selected sample")
        except TimeoutError:
            pass
        time.sleep(2.0)
        procs.stop("trainer")
        stored, twice = _trainer_view(d / "trainer")
    finally:
        procs.stop_all()
    selected = sum(c["put"] for c in edges.values())
    lost = sum(max(0, expected[dev] - stored.get(dev, 0)) for dev in devices)
    figures = {"cameras": cameras, "stream_s": stream_s, "faults": done, "selected": selected,
               "stored": sum(stored.get(dev, 0) for dev in devices),
               "dropped_by_outbox_policy": sum(c["dropped"] for c in edges.values()),
               "left_in_outboxes": sum(left.values()), "lost": lost, "trained_twice": twice,
               "crashed_processes": crashed, "per_device": {dev: {**edges[dev], "stored": stored.get(dev, 0)}
                                                           for dev in devices},
               "seconds": round(time.monotonic() - t_start, 1)}
    if tmp is not None:
        tmp.cleanup()
    return figures


def run(quick: bool = False) -> Result:
    fig = chaos(quick)
    met = fig["lost"] == 0 and fig["trained_twice"] == 0 and fig["selected"] > 0 and fig["left_in_outboxes"] == 0
    return {"name": "chaos", "figures": fig, "met": met, "headline": "lost",
            "goal": "0 selected samples lost and 0 trained twice while the broker is restarted and the trainer and a "
                    "camera are killed (-9) mid-stream",
            "units": {"stream_s": "s", "seconds": "s"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeloop bench chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 cameras, 60 s stream")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="keep the state and logs here (default: a temporary directory)")
    args = ap.parse_args(argv)
    fig = chaos(args.quick, args.seed, args.workdir)
    print(json.dumps(fig, indent=2))
    return 0 if fig["lost"] == 0 and fig["trained_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
