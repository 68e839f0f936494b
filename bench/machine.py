"""Facts about the machine a benchmark ran on.

Why: a figure without its machine is not comparable with anything. Every results.json carries these
facts, and BENCHMARKS.md prints them above the tables, so a reader can tell whether a slower number
means a regression or just a smaller box. Imports of the measured libraries are lazy and each one is
allowed to fail (``None``): an edge-only install has no torch, and the harness must still describe it.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# key in the facts -> (distributions that provide it, in order of preference; module to import as a fallback)
LIBRARIES: dict[str, tuple[tuple[str, ...], str]] = {
    "numpy": (("numpy",), "numpy"),
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "onnxruntime"),
    "opencv": (("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                "opencv-contrib-python"), "cv2"),
    "paho_mqtt": (("paho-mqtt",), "paho.mqtt"),
    "torch": (("torch",), "torch"),
}

KEYS = (
    "cpu_model", "cpu_count", "cpu_affinity", "memory_mb", "os", "kernel", "machine",
    "python", "numpy", "onnxruntime", "opencv", "paho_mqtt", "torch", "mosquitto", "git_commit", "git_dirty",
)


def cpu_model() -> str | None:
    """The first ``model name`` in /proc/cpuinfo (Linux); platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_mb() -> int | None:
    """Total RAM from /proc/meminfo (MemTotal, kB) in MB, or via sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError, AttributeError):
        return None


def affinity() -> int | None:
    """Cores this process may actually run on (containers often allow fewer than cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def library_version(dists: tuple[str, ...], module: str) -> str | None:
    """Installed version, or None when absent.

    Read from the distribution metadata first: importing torch just to read its version costs
    seconds (and cv2/onnxruntime load native libraries), which would make the harness slow to start.
    Falls back to importing ``module`` for libraries installed without metadata.
    """
    from importlib.metadata import PackageNotFoundError, version

    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - an absent or broken library is a fact, not an error
        return None
    found = getattr(mod, "__version__", None)
    return str(found) if found is not None else "unknown"


def mosquitto_version() -> str | None:
    """First line of ``mosquitto -h`` (it prints its version there and exits non-zero)."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def git_commit(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has uncommitted changes); (None, None) outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def facts() -> dict[str, Any]:
    """All machine facts; every key in ``KEYS`` is present, unknown values are None."""
    commit, dirty = git_commit()
    out: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity(),
        "memory_mb": memory_mb(),
        "os": _os_name(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    for key, (dists, module) in LIBRARIES.items():
        out[key] = library_version(dists, module)
    out["mosquitto"] = mosquitto_version()
    out["git_commit"] = commit
    out["git_dirty"] = dirty
    return out


def _os_name() -> str:
    """PRETTY_NAME from /etc/os-release when there is one (more useful than 'Linux')."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


if __name__ == "__main__":
    import json

    json.dump(facts(), sys.stdout, indent=2)
    print()
