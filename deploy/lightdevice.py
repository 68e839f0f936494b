"""Lightweight simulated devices for rollout tests and the 1,000-device benchmark.

One process holds at most ~300 of them: paho's loop uses ``select()``, which cannot watch file
descriptors >= 1024, and each client needs three (socket + wake-up socketpair); beyond that clients
silently stop connecting (observed: stuck at ~340). The benchmark runs 1,000 as several processes.

Each ``LightDevice`` is a real MQTT client (own connection, own Will, own subscriptions) running the
*real* ``edge.updater.Updater``: manifest verification, windowed chunk download, per-chunk and whole-file
hashing, on-disk persistence, atomic pointer, shadow, swap, health watch and rollback are all the
production code. What is lightweight is everything around it:

* no camera: frames come from a small pool of real MNIST digits (``data/mnist``), driven by one shared
  thread at a modest frame rate (or not at all, for the transfer benchmark);
* ``SharedSlot``: ONNX sessions are shared between devices through a process-wide cache keyed by the
  model file's sha256 (loading, validating and smoke-testing a model is done once per version per process,
  not once per simulated device - on real hardware each device does it on its own CPU);
* updater work runs on a shared thread pool (each device's steps stay strictly ordered).

``deploy`` may import ``edge`` here: this module *is* a launcher of edge code.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import os
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edge.model import EdgeModel, ModelError, ModelSlot
from edge.updater import PowerLoss, Updater, UpdaterLimits, select_boot_model
from protocol import mqtt
from protocol.reports import Birth, Report, State, Stats, encode_report
from protocol.signing import load_trusted_keys
from protocol.topics import Topics

__all__ = ["SharedSlot", "LightDevice", "LightFleet", "digit_frames"]

log = logging.getLogger("edgeloop.lightdevice")

_REPO = Path(__file__).resolve().parents[1]


def digit_frames(n: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` real MNIST test digits as 28x28x3 BGR uint8 frames (what the edge's sources produce)."""
    from edge.sources.idx import read_idx

    images = read_idx(_REPO / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return [np.repeat(images[i][:, :, None], 3, axis=2).copy() for i in idx]


class _ModelCache:
    """Process-wide: sha256 -> loaded+smoke-tested EdgeModel, or the ModelError it raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, EdgeModel | ModelError] = {}
        self._locks: dict[str, threading.Lock] = {}

    def load(self, path: Path, frames: list[np.ndarray]) -> EdgeModel:
        key = path.stem if len(path.stem) == 64 else hashlib.sha256(path.read_bytes()).hexdigest()
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            got = self._models.get(key)
            if got is None:
                try:
                    got = EdgeModel.load(path)
                    got.smoke_test(frames[:4])
                except ModelError as e:
                    got = e
                self._models[key] = got
        if isinstance(got, ModelError):
            raise got
        return got


_CACHE = _ModelCache()


class SharedSlot(ModelSlot):
    """``edge.model.ModelSlot`` whose loads come from the process-wide cache: hundreds of light devices share
    one onnxruntime session per model file, and smoke tests run on a fixed set of frames."""

    def __init__(self, model: EdgeModel | None, frames: list[np.ndarray]) -> None:
        super().__init__(model, keep_frames=0)
        self._frames = frames

    def observe(self, frame: np.ndarray) -> None:
        pass

    def load(self, path: str | os.PathLike[str]) -> EdgeModel:
        return _CACHE.load(Path(path), self._frames)

    def swap(self, new: EdgeModel) -> EdgeModel:
        """Install an already loaded and smoke-tested model (the cache did both)."""
        with self._lock:
            self.previous, self.active = self.active, new
            self.generation += 1
        return new


class _Link:
    """The updater's ``UpdaterLink`` over one paho client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, subs: list[tuple[str, int]]) -> None:
        if subs:
            self.client.subscribe(subs)

    def unsubscribe(self, topics: list[str]) -> None:
        if topics:
            self.client.unsubscribe(topics)


class LightDevice:
    """One simulated device: MQTT client + real Updater + shared model slot."""

    _boots = itertools.count(1)

    def __init__(self, device_id: str, broker: str, state_dir: str | os.PathLike[str],
                 trusted_keys: Mapping[str, Any], provisioned: str | os.PathLike[str], *,
                 fleet: str = "default", topics: Topics | None = None, frames: list[np.ndarray] | None = None,
                 limits: UpdaterLimits | None = None, executor: Executor | None = None,
                 fault: Callable[[str], None] | None = None) -> None:
        self.device_id = device_id
        self.topics = topics or Topics()
        self.frames = frames if frames is not None else digit_frames(16)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        boot_path, _ = select_boot_model(self.state_dir, provisioned)
        assert boot_path is not None
        self.slot = SharedSlot(_CACHE.load(boot_path, self.frames), self.frames)
        self.boot = int(time.time() * 1000) % (2**31) + next(self._boots)
        offline = encode_report(State(device=device_id, state="offline", boot=self.boot))
        will = (self.topics.state(device_id), offline, 1, True)
        self.client = mqtt.make_client(f"light-{device_id}", broker, will=will, protocol="3.1.1")
        self.link = _Link(self.client)
        self.updater = Updater(device_id, fleet, self.state_dir, trusted_keys, self.slot, self.link,
                               self.topics, limits, executor=executor, fault=fault)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.frame_index = 0
        self._lat: list[float] = []
        self.alive = True

    # -- MQTT ---------------------------------------------------------------------------------------------
    def _msg(self, msg: Report) -> bytes:
        return encode_report(msg)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(self.updater.subscriptions())
        online = State(device=self.device_id, state="online", boot=self.boot)
        client.publish(self.topics.state(self.device_id), self._msg(online), 1, True)
        self.publish_birth()

    def publish_birth(self) -> None:
        birth = Birth(device=self.device_id, capabilities={"sim": "light"}, model_version=self.updater.active_version,
                      config_digest="light", boot=self.boot, software="lightdevice")
        self.client.publish(self.topics.birth(self.device_id), self._msg(birth), 1, True)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if self.alive and self.updater.wants(msg.topic):
            self.updater.on_message(msg.topic, msg.payload)

    def start(self) -> "LightDevice":
        self.client.loop_start()
        return self

    def connected(self) -> bool:
        return self.client.is_connected()

    # -- the "frame loop" -----------------------------------------------------------------------------------
    def step(self, infer: bool = True) -> None:
        """One frame: run the active model (optionally) and hand the result to the updater."""
        if not self.alive:
            return
        frame = self.frames[self.frame_index % len(self.frames)]
        self.frame_index += 1
        model = self.slot.active
        probs = None
        lat = None
        if infer and model is not None:
            t0 = time.perf_counter()
            try:
                probs = model.predict(model.preprocess_batch([frame]))[0]
            except Exception as e:
                self.updater.on_error(e)
                return
            lat = (time.perf_counter() - t0) * 1000.0
            self._lat.append(lat)
        try:
            self.updater.on_frame(frame if infer else None, probs, lat)
        except PowerLoss:  # a test's fault hook pulled the plug between swap and pointer write
            self.alive = False

    def publish_stats(self, fps: float) -> None:
        lat = sorted(self._lat[-100:]) or [0.0]
        self._lat = self._lat[-100:]
        stats = Stats(device=self.device_id, fps=fps, latency_p50_ms=lat[len(lat) // 2],
                      latency_p95_ms=lat[int(len(lat) * 0.95)], outbox_depth=0, outbox_bytes=0, outbox_dropped=0,
                      uploads=0)
        self.client.publish(self.topics.stats(self.device_id), self._msg(stats), 0, False)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful: offline state, disconnect."""
        self.alive = False
        self.updater.close(wait=False)
        try:
            offline = State(device=self.device_id, state="offline", boot=self.boot)
            self.client.publish(self.topics.state(self.device_id), self._msg(offline), 1, True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """As if the power went out: no goodbye, socket dropped (the broker publishes the Will)."""
        self.alive = False
        self.updater.kill()
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class LightFleet:
    """Many LightDevices in one process, plus the shared frame/stats driver thread."""

    def __init__(self, n: int, broker: str, root: str | os.PathLike[str], trusted_key_files: list[str],
                 provisioned: str | os.PathLike[str], *, fleet: str = "default", prefix: str = "edgeloop/v1",
                 fps: float = 10.0, infer: bool = True, limits: UpdaterLimits | None = None,
                 workers: int = 4, id_format: str = "dev{:04d}", first: int = 0) -> None:
        self.root = Path(root)
        self.broker = broker
        self.keys = load_trusted_keys(trusted_key_files)
        self.provisioned = provisioned
        self.fleet = fleet
        self.topics = Topics(prefix)
        self.fps = fps
        self.infer = infer
        self.limits = limits
        self.frames = digit_frames(32)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="light-updater")
        self.devices: dict[str, LightDevice] = {}
        for i in range(first, first + n):
            self.add(id_format.format(i))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, device_id: str, fault: Callable[[str], None] | None = None) -> LightDevice:
        d = LightDevice(device_id, self.broker, self.root / device_id, self.keys, self.provisioned,
                        fleet=self.fleet, topics=self.topics, frames=self.frames, limits=self.limits,
                        executor=self.executor, fault=fault)
        self.devices[device_id] = d
        return d

    def restart(self, device_id: str, fault: Callable[[str], None] | None = None) -> LightDevice:
        """Boot a device again from its state dir (after ``kill``), as a new process would."""
        return self.add(device_id, fault).start()

    def start(self, timeout: float = 30.0, batch: int = 50) -> "LightFleet":
        """Connect devices ``batch`` at a time: with ~1,000 paho loop threads starting at once, GIL-starved
        clients miss their CONNECT deadline, drop the socket and (observed) stall at ~340 connected."""
        deadline = time.monotonic() + timeout
        devs = list(self.devices.values())
        for k in range(0, len(devs), batch):
            group = devs[k:k + batch]
            for d in group:
                d.start()
            while not all(d.connected() for d in group):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"devices did not connect ({sum(d.connected() for d in devs)}/{len(devs)})")
                time.sleep(0.01)
        self._thread = threading.Thread(target=self._drive, name="light-frames", daemon=True)
        self._thread.start()
        return self

    def _drive(self) -> None:
        period = 1.0 / self.fps if self.fps > 0 else 0.5
        last_stats = 0.0
        while not self._stop.is_set():
            t0 = time.monotonic()
            for d in list(self.devices.values()):
                try:
                    d.step(self.infer)
                except Exception:
                    log.exception("device %s step failed", d.device_id)
            if t0 - last_stats > 1.0:
                last_stats = t0
                for d in list(self.devices.values()):
                    if d.alive:
                        d.publish_stats(self.fps)
            self._stop.wait(max(0.0, period - (time.monotonic() - t0)))

    def versions(self) -> dict[str, str | None]:
        return {k: d.updater.active_version for k, d in self.devices.items() if d.alive}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for d in self.devices.values():
            if d.alive:
                d.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    """Run N light devices until Ctrl-C (for trying ``edgeloop rollout`` by hand)."""
    p = argparse.ArgumentParser(prog="python -m deploy.lightdevice", description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--state-dir", default=".edgeloop/light")
    p.add_argument("--trusted-key", action="append", required=True, help="public key file (repeatable)")
    p.add_argument("--model", required=True, help="provisioned model (ONNX) the devices boot with")
    p.add_argument("--fleet", default="default")
    p.add_argument("--prefix", default="edgeloop/v1")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--first", type=int, default=0, help="number of the first device id (dev{first:04d})")
    p.add_argument("--no-infer", action="store_true", help="do not run the model on frames (transfer benchmarks)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    lf = LightFleet(args.devices, args.broker, args.state_dir, args.trusted_key, args.model, fleet=args.fleet,
                    prefix=args.prefix, fps=args.fps, infer=not args.no_infer, first=args.first).start(timeout=300)
    print("ready", flush=True)
    try:
        while True:
            time.sleep(5)
            vs = lf.versions()
            print({v: sum(1 for x in vs.values() if x == v) for v in set(vs.values())}, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        lf.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
