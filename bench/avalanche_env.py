"""Locate or create the separate virtualenv that holds avalanche-lib (the Avalanche peer of the learning benchmark).

avalanche-lib pulls in wandb, tensorboard, matplotlib, scikit-learn, pytorchcv, gdown and qpsolvers, and its
own torch; it is kept out of the project's environment in its own venv (default
``~/.cache/edgeloop-avalanche-venv``, about 6 GB of which 4.4 GB are torch and its CUDA wheels)::

    python -m bench.avalanche_env            # print the python of an existing venv (exit 1 if none)
    python -m bench.avalanche_env --create   # python -m venv + pip install avalanche-lib torch torchvision

pip is the ordinary client, with whatever index and constraints this machine's pip configuration sets.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_VENV = Path(os.environ.get("EDGELOOP_AVALANCHE_VENV", Path.home() / ".cache" / "edgeloop-avalanche-venv"))
# The pins the benchmark was measured with: avalanche-lib 0.6.0 on the torch the project uses.
PACKAGES = ("avalanche-lib==0.6.0", "torch==2.14.1", "torchvision==0.29.1")

__all__ = ["DEFAULT_VENV", "PACKAGES", "ensure_venv", "find_python", "main", "venv_python"]


def venv_python(venv: str | Path = DEFAULT_VENV) -> Path:
    return Path(venv) / "bin" / "python"


def _imports_avalanche(python: str | Path) -> bool:
    try:
        r = subprocess.run([str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('avalanche') is None)"],
                           capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def find_python(venv: str | Path | None = None, check: bool = True) -> Path | None:
    """The python that has avalanche: $EDGELOOP_AVALANCHE_PYTHON, else the venv's, else this interpreter's.

    ``check`` also verifies that the venv's python can find the ``avalanche`` package (a subprocess, ~0.1 s).
    Returns None when there is none.
    """
    env = os.environ.get("EDGELOOP_AVALANCHE_PYTHON")
    candidates = [Path(env)] if env else []
    candidates.append(venv_python(venv or DEFAULT_VENV))
    for py in candidates:
        if py.is_file() and os.access(py, os.X_OK) and (not check or _imports_avalanche(py)):
            return py
    if importlib.util.find_spec("avalanche") is not None:
        return Path(sys.executable)
    return None


def ensure_venv(venv: str | Path | None = None, packages: tuple[str, ...] = PACKAGES, quiet: bool = False) -> Path:
    """Return the venv's python, creating the venv and installing ``packages`` with pip if needed."""
    venv = Path(venv or DEFAULT_VENV)
    py = venv_python(venv)
    if py.is_file() and _imports_avalanche(py):
        return py
    t0 = time.perf_counter()
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cmd = [str(py), "-m", "pip", "install", *(["-q"] if quiet else []), *packages]
    subprocess.run(cmd, check=True)
    if not _imports_avalanche(py):
        raise RuntimeError(f"{py} still cannot import avalanche after: {' '.join(cmd)}")
    if not quiet:
        print(f"avalanche venv ready at {venv} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return py


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=str(DEFAULT_VENV))
    ap.add_argument("--create", action="store_true", help="create the venv and install avalanche-lib if missing")
    a = ap.parse_args(argv)
    py = ensure_venv(a.venv) if a.create else find_python(a.venv)
    if py is None:
        print(f"no avalanche venv at {a.venv}; run: python -m bench.avalanche_env --create", file=sys.stderr)
        return 1
    print(py)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
