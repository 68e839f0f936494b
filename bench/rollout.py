"""Rollout benchmark: how long until a whole fleet runs a new model.

Time from ``start_rollout`` (one wave, no shadow, no soak) until every device has *reported* the new
version active on ``dev/{id}/model/status`` - the end-to-end path: signed manifest, retained chunks of the
seed ConvNet (~4.8 MB ONNX, 19 chunks of 256 KiB) fanned out by mosquitto on loopback, per-chunk and
whole-file sha256 checks, chunk files + model written to each device's state dir, ORT load (shared per
process by light devices), swap between frames, atomic pointer, status back to the controller.

The controller runs in its own process (``edgeloop rollout run``) so its memory is measured on its own;
the devices are light devices (real updater code, one MQTT connection each): up to 250 in this process and
the rest in extra processes of 250 (paho's select() loop caps a process at ~340 clients).
Goal: N=100 in <= 10 s. N=1,000 is reported too (``--devices 1000``; the default full run does both).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GOAL_S = 10.0
GOAL_N = 100


def _seed_models(d: Path) -> tuple[Path, Path]:
    """Two versions of the seed ConvNet (untrained weights: the transfer does not care)."""
    import torch

    from protocol.model_meta import ModelMeta
    from trainer.export import export_onnx
    from trainer.nets import build_model

    out = []
    for i, version in enumerate(("v0001", "v0002")):
        torch.manual_seed(i)
        meta = ModelMeta(version=version, labels=[str(k) for k in range(10)], width=28, height=28, channels=1,
                         color_order="GRAY", mean=[0.0], std=[1.0], architecture="convnet", created=1.7e9)
        path = d / f"convnet-{version}.onnx"
        export_onnx(build_model("convnet", 10).eval(), meta, path)
        out.append(path)
    return out[0], out[1]


class _Peak:
    """Peak RSS of some processes, sampled every 100 ms."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.peak = {k: 0 for k in pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, p in self.procs.items():
                try:
                    self.peak[k] = max(self.peak[k], p.memory_info().rss)
                except Exception:
                    pass
            self._stop.wait(0.1)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join()
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}


class _Observer:
    """Counts devices whose *reported* active version is X (what an operator or controller would see)."""

    def __init__(self, url: str, prefix: str) -> None:
        from deploy.fleet import Fleet
        from protocol import mqtt
        from protocol.topics import Topics

        self.fleet = Fleet(Topics(prefix))
        self.client = mqtt.make_client(f"bench-observer-{os.getpid()}", url, protocol="3.1.1")
        self.client.on_message = lambda c, u, m: self.fleet.on_message(m.topic, m.payload)
        subs = self.fleet.subscriptions()
        self.client.on_connect = lambda c, *a: c.subscribe(subs)
        mqtt.start(self.client)

    def fleet_count(self, version: str) -> int:
        return sum(1 for d in self.fleet.devices() if d.version == version and d.model_state == "active")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure(n: int, work: Path, models: tuple[Path, Path], timeout: float = 600.0) -> dict[str, Any]:
    """One rollout to ``n`` light devices; returns seconds to all-active and peak memory (MiB)."""
    from deploy.broker import start_broker
    from deploy.controller import Controller, Policy, RolloutStore
    from deploy.keys import generate
    from deploy.lightdevice import LightFleet

    work.mkdir(parents=True, exist_ok=True)
    priv, pub = generate(work / "keys")
    old, new = models
    prefix = "bench/rollout"
    with start_broker(kind="mosquitto", workdir=work / "broker") as broker:
        t_boot = time.perf_counter()
        per_proc = 250  # paho's select() loop limits one process to ~340 clients (fds < 1024)
        lf = LightFleet(min(n, per_proc), broker.url, work / "devs", [str(pub)], old, prefix=prefix, fps=20,
                        infer=False, workers=4).start(timeout=300)
        extra = []
        for first in range(per_proc, n, per_proc):
            extra.append(subprocess.Popen(
                [sys.executable, "-m", "deploy.lightdevice", "--broker", broker.url, "--prefix", prefix,
                 "--devices", str(min(per_proc, n - first)), "--first", str(first), "--state-dir", str(work / "devs"),
                 "--trusted-key", str(pub), "--model", str(old), "--fps", "20", "--no-infer"],
                cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        for proc in extra:
            assert proc.stdout is not None
            if b"ready" not in proc.stdout.readline():
                raise RuntimeError("a light-device process failed to start")
        connect_s = time.perf_counter() - t_boot
        state = work / "ctl"
        # Register the rollout first (no MQTT needed), then start the controller service, which picks it up.
        rec = Controller(broker.url, priv, state, prefix=prefix)
        rec.register_model(old)
        rec.store.close()
        ctl = subprocess.Popen(
            [sys.executable, "-m", "deploy.rollout_cli", "run", "--broker", broker.url, "--prefix", prefix,
             "--key", str(priv), "--state-dir", str(state)],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        store = RolloutStore(state / "rollout.sqlite")
        observer = _Observer(broker.url, prefix)
        try:
            deadline = time.monotonic() + 60
            while store.heartbeat() is None:
                if time.monotonic() > deadline or ctl.poll() is not None:
                    raise RuntimeError(f"controller did not start: {ctl.stderr.read().decode()[-2000:] if ctl.stderr else ''}")
                time.sleep(0.05)
            peak = _Peak({"broker_mib": broker.proc.pid, "controller_mib": ctl.pid})  # type: ignore[attr-defined]
            rec = Controller(broker.url, priv, state, prefix=prefix)
            t0 = time.perf_counter()
            rid = rec.start_rollout("v0002", new, Policy(waves=[1.0], soak=0.0, shadow=0),
                                    previous=("v0001", old))
            rec.store.close()
            done_at: float | None = None
            while time.perf_counter() - t0 < timeout:
                if observer.fleet_count("v0002") >= n:
                    done_at = time.perf_counter() - t0
                    break
                time.sleep(0.02)
            mem = peak.stop()
            observer.close()
            r = store.rollout(rid)
        finally:
            ctl.terminate()
            try:
                ctl.wait(10)
            except subprocess.TimeoutExpired:
                ctl.kill()
            store.close()
            for proc in extra:
                proc.terminate()
            lf.stop()
            for proc in extra:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return {"devices": n, "seconds": round(done_at, 2) if done_at is not None else None,
            "connect_s": round(connect_s, 2), "rollout_state": str(r.state) if r else None,
            "bytes_per_device": new.stat().st_size, **mem}


def run(quick: bool = False) -> dict[str, Any]:
    """``quick``: N=20 and N=100; full: N=100 and N=1,000."""
    sizes = [20, 100] if quick else [100, 1000]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-rollout-") as tmp:
        t = Path(tmp)
        models = _seed_models(t)
        figures["model_bytes"] = models[1].stat().st_size
        for n in sizes:
            res = measure(n, t / f"n{n}", models)
            figures[f"n{n}_seconds"] = res["seconds"]
            figures[f"n{n}_broker_peak_mib"] = res["broker_mib"]
            figures[f"n{n}_controller_peak_mib"] = res["controller_mib"]
            figures[f"n{n}_connect_s"] = res["connect_s"]
    got = figures.get(f"n{GOAL_N}_seconds")
    return {"name": "rollout", "figures": figures,
            "goal": f"{GOAL_N} devices on the new {figures['model_bytes'] / 1e6:.1f} MB model in <= {GOAL_S:.0f} s",
            "met": got is not None and got <= GOAL_S}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, action="append", help="fleet size (repeatable); default 100 and 1000")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.devices:
        with tempfile.TemporaryDirectory(prefix="edgeloop-bench-rollout-") as tmp:
            models = _seed_models(Path(tmp))
            figures = {f"n{n}": measure(n, Path(tmp) / f"n{n}", models) for n in args.devices}
        got = figures.get(f"n{GOAL_N}", {}).get("seconds")
        result = {"name": "rollout", "figures": figures, "goal": f"{GOAL_N} devices in <= {GOAL_S:.0f} s",
                  "met": got is not None and got <= GOAL_S}
    else:
        result = run(quick=args.quick)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
