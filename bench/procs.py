"""Named ``python -m deploy.cli ...`` children, each with its own log: the production shape as processes.

Why one class: the chaos and soak benchmarks and the production-shape integration test all run edgeloop's
commands as separate processes on loopback and need the same few things — start one with a log, stop one
or several (SIGTERM, then SIGKILL after a timeout), restart one with a chosen signal (chaos), see which died,
show a log's tail. Each child dies with its parent (``deploy.children.die_with_parent``), so a benchmark that
is interrupted leaves nothing running.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["Procs", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent


class Procs:
    """Children by name; ``logs/NAME.log`` holds each one's stdout and stderr (appended across restarts)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, tuple[tuple[str, ...], dict[str, str] | None]] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        from deploy.children import die_with_parent

        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
        with open(self.logs / f"{name}.log", "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], cwd=ROOT, env=full_env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        self.procs[name] = p
        self.args[name] = (args, env)
        return p

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal one child and wait (SIGKILL after ``timeout``); its exit code, None if it was not running."""
        return self.stop_many([name], sig, timeout).get(name)

    def stop_many(self, names: Sequence[str], sig: int = signal.SIGTERM, timeout: float = 30.0) -> dict[str, int]:
        """Signal all of ``names`` at once, then wait for each (SIGKILL after ``timeout``); their exit codes."""
        for n in names:
            p = self.procs.get(n)
            if p is not None and p.poll() is None:
                p.send_signal(sig)
        codes: dict[str, int] = {}
        for n in names:
            p = self.procs.pop(n, None)
            if p is None:
                continue
            try:
                codes[n] = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[n] = p.wait(10)
        return codes

    def restart(self, name: str, sig: int) -> subprocess.Popen[bytes]:
        """Stop ``name`` with ``sig`` (SIGKILL = a crash) and start it again with the same arguments."""
        args, env = self.args[name]
        self.stop(name, sig)
        return self.start(name, *args, env=env)

    def dead(self) -> list[str]:
        """Names of the children that exited while they should be running."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        """Everything still running, newest first (the broker, started first, stops last)."""
        if self.procs:
            self.stop_many(list(reversed(list(self.procs))))
