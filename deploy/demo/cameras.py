"""Camera processes: each simulated camera is ``edgeloop edge`` in a child process of its own.

Why processes: that is what a camera is -- its own outbox, updater and MQTT session; a crash or a slow frame
in one cannot stall another, and the demo can prove it stopped them (pids). They run in their own session
(Ctrl-C in the terminal reaches only the demo, which stops them in order) with a parent-death signal as a
backstop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.children import die_with_parent
from deploy.demo.plan import CALIBRATION, FLEET, P_MIN, STATS_INTERVAL_S, DemoOptions

__all__ = ["Camera", "start_camera", "stop_cameras"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Camera:
    device: str
    seed: int
    url: str
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def start_camera(cam: Camera, broker_url: str, model: Path, trusted_key: Path, opts: DemoOptions,
                 window_frames: int, identity: Path | None = None) -> None:
    """Launch ``edgeloop edge`` for one camera (its own process, session and state dir); ``identity``: its
    TLS identity directory (``edgeloop pki device``), for the secure broker."""
    cmd = [sys.executable, "-m", "deploy.cli", "edge", "--device-id", cam.device, "--fleet", FLEET,
           "--state-dir", str(cam.state_dir), "--source", cam.url, "--model", str(model),
           "--broker", broker_url, "--trusted-key", str(trusted_key), "--stats-interval", f"{STATS_INTERVAL_S:g}",
           "--budget-minute", str(opts.budget), "--p-min", f"{P_MIN:g}", "--calibration", CALIBRATION,
           # the hour/day defaults (600, 5000) would pace a 3-minute demo down to ~3 uploads a minute
           "--budget-hour", "none", "--budget-day", "none", "--seed", str(cam.seed), "--threads", "1", "--log-level", "WARNING"]
    if identity is not None:
        cmd += ["--identity", str(identity)]
    env = dict(os.environ)
    env["EDGELOOP_EDGE__ACCURACY_WINDOW"] = str(window_frames)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cam.state_dir.mkdir(parents=True, exist_ok=True)
    with open(cam.log_path, "ab") as logf:
        cam.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())


def stop_cameras(cams: list[Camera], timeout: float = 8.0) -> None:
    """SIGTERM all (they flush stats and close the outbox), then SIGKILL whatever is still there."""
    for c in cams:
        if c.proc is not None and c.proc.poll() is None:
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for c in cams:
        if c.proc is None:
            continue
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(5)
