"""Benchmark: disk size of an edge-only virtualenv (``pip install 'edgeloop[edge]'``).

Why: cameras and gateways have small disks and slow links; the edge must run from ONNX Runtime +
OpenCV + paho without dragging in torch. This builds a fresh venv, installs the repo (non-editable)
with only the ``edge`` extra, and measures what a device would really carry: the whole venv including
pip, as ``python -m venv`` leaves it. It then proves, *inside that venv*, that the edge imports work
and torch is absent — so the size figure and the "no torch" claim come from the same install.

Goal: the venv is at most 400 MB.

    python -m bench.venv_size [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_MB = 400.0
# An install that takes longer than this in quick mode is abandoned (reported as skipped) so that
# `edgeloop bench all --quick` keeps its 3-minute budget. Measured on the 2-core box: ~33 s on an idle
# machine with a warm pip cache, ~150 s when other jobs saturate both cores.
QUICK_INSTALL_LIMIT_S = 60.0
FULL_INSTALL_LIMIT_S = 900.0

# Runs inside the new venv (isolated mode, cwd outside the repo so the source tree cannot shadow the
# installed package). Prints one JSON line.
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, sys
site = [p for p in sys.path if p.endswith("site-packages")]
sizes = {}
for d in md.distributions():
    total = 0
    for f in d.files or []:
        try:
            total += os.lstat(d.locate_file(f)).st_size
        except OSError:
            pass
    name = d.metadata["Name"]
    sizes[name] = sizes.get(name, 0) + total
ok, err = True, ""
try:
    import edge, edge.sources, edge.model
except Exception as e:
    ok, err = False, f"{type(e).__name__}: {e}"
print(json.dumps({
    "sizes": sizes,
    "imports_ok": ok,
    "import_error": err,
    "torch_installed": importlib.util.find_spec("torch") is not None,
    "torch_imported": "torch" in sys.modules,
    "edge_file": getattr(sys.modules.get("edge"), "__file__", None),
}))
"""


def dir_size(path: Path) -> int:
    """Bytes on disk under ``path`` like ``du -s`` (allocated blocks; hard links counted once).

    Apparent size would understate many tiny files and overstate sparse ones; blocks are what fills a
    device's flash.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _mb(n: int | float) -> float:
    return round(n / 1e6, 1)


def measure(venv: Path, limit_s: float, root: Path = ROOT) -> dict[str, Any]:
    """Create ``venv``, install ``root[edge]`` into it and measure; raises on a failed install.

    Raises ``subprocess.TimeoutExpired`` when creating the venv plus installing exceeds ``limit_s``.
    """
    t0 = time.perf_counter()

    def remaining() -> float:
        left = limit_s - (time.perf_counter() - t0)
        if left <= 0:
            raise subprocess.TimeoutExpired("venv + pip install", limit_s)
        return left

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=remaining())
    t_venv = time.perf_counter() - t0
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    t1 = time.perf_counter()
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-input", "--disable-pip-version-check", f"{root}[edge]"],
        capture_output=True, text=True, timeout=remaining(), env=env, cwd=venv,
    )
    t_install = time.perf_counter() - t1
    if pip.returncode != 0:
        tail = "\n".join((pip.stderr or pip.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"pip install '{root}[edge]' failed (exit {pip.returncode}):\n{tail}")
    probe = subprocess.run([str(py), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env, cwd=venv)
    if probe.returncode != 0:
        raise RuntimeError(f"probe failed in the edge venv: {probe.stderr.strip()[-2000:]}")
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    total = dir_size(venv)
    sizes: dict[str, int] = info["sizes"]
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    return {
        "venv_mb": _mb(total),
        "venv_without_pip_setuptools_mb": _mb(total - sizes.get("pip", 0) - sizes.get("setuptools", 0)),
        "largest_packages_mb": {name: _mb(size) for name, size in largest},
        "packages": len(sizes),
        "package_names": sorted(sizes),
        "edge_imports_ok": bool(info["imports_ok"]),
        "import_error": info["import_error"] or None,
        "torch_installed": bool(info["torch_installed"]),
        "torch_imported_by_edge": bool(info["torch_imported"]),
        "edge_from_site_packages": bool(info["edge_file"] and "site-packages" in info["edge_file"]),
        "create_venv_s": round(t_venv, 1),
        "pip_install_s": round(t_install, 1),
    }


def run(quick: bool = False, keep: Path | None = None) -> dict[str, Any]:
    """Measure a fresh edge venv; ``{"name", "figures", "goal", "met"}``.

    quick: same measurement (a warm pip cache makes it ~35 s), but the install is abandoned after
    ``QUICK_INSTALL_LIMIT_S`` and the result is then ``status: "skipped (quick)"`` rather than a stale
    or guessed number.
    """
    goal = f"edge-only venv (pip install 'edgeloop[edge]', incl. pip) <= {GOAL_MB:.0f} MB, edge imports work, no torch"
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-venv-size-"))
    venv = keep if keep is not None else tmp / "venv"
    try:
        if keep is not None and keep.exists():
            shutil.rmtree(keep)
        try:
            figures = measure(venv, QUICK_INSTALL_LIMIT_S if quick else FULL_INSTALL_LIMIT_S)
        except subprocess.TimeoutExpired:
            if not quick:
                raise
            return {
                "name": "venv_size", "status": "skipped (quick)", "figures": {}, "goal": goal, "met": None,
                "notes": f"pip install took longer than {QUICK_INSTALL_LIMIT_S:.0f} s (cold pip cache?); "
                         "run without --quick to measure",
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    met = (
        figures["venv_mb"] <= GOAL_MB
        and figures["edge_imports_ok"]
        and not figures["torch_installed"]
        and not figures["torch_imported_by_edge"]
    )
    top = ", ".join(f"{k} {v:.0f}" for k, v in figures["largest_packages_mb"].items())
    return {
        "name": "venv_size",
        "figures": figures,
        "goal": goal,
        "met": bool(met),
        "notes": f"python {sys.version.split()[0]}; largest (MB): {top}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeloop bench venv_size", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", type=Path, help="build the venv here and leave it (for inspection)")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, keep=args.keep)
    print(json.dumps(res, indent=2))
    return 0 if res.get("met") else 1


if __name__ == "__main__":
    sys.exit(main())
