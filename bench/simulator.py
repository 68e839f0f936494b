"""Simulator benchmark: frames per second of the ``sim:`` cameras at 320x240 on one core.

Why: the simulated cameras feed the edge loop, the learning benchmarks and the
demo fleet (many cameras on one machine). If generating a frame cost as much as
running the model, the benchmarks would measure the simulator; at >= 1,000
frames/s per core a camera at 30 fps costs < 3 % of a core.

How: OpenCV pinned to one thread; each figure is the median over several runs of
``read()`` calls. Rates are computed from the process CPU time (one thread, so
CPU time = one core's time), which keeps the figure meaningful on a shared,
busy machine; the wall-clock rate is reported alongside.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import cv2

from edge.sources.sim import open_sim

GOAL_FPS = 1000.0

URLS = {
    "parts": "sim:parts?seed=1",
    "digits": "sim:digits?seed=1",
    # Every pixel drift at once (worst case), half-way up their ramps.
    "parts_drift": (
        "sim:parts?seed=1&drift=brightness:-0.3@0~2000,contrast:0.7@0~2000,cast:0.9/1.0/1.2@0~2000,"
        "blur:1.5@0~2000,noise:10@0~2000,rotate:6@0~2000,prior:scratch=0.4@0~2000,newclass:crack@0"
    ),
}


def _measure(url: str, frames: int, repeats: int) -> tuple[float, float]:
    """(median CPU-time fps, median wall fps) over ``repeats`` runs of ``frames`` reads."""
    src = open_sim(url)
    src.open()
    for _ in range(50):  # warm up (lazy assets, caches)
        src.read()
    cpu, wall = [], []
    for _ in range(repeats):
        src.open()  # rewind: every run covers the same frames
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(frames):
            src.read()
        cpu.append(frames / max(1e-9, time.process_time() - c0))
        wall.append(frames / max(1e-9, time.perf_counter() - w0))
    src.close()
    return statistics.median(cpu), statistics.median(wall)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return ``{"name", "figures", "goal", "met"}``."""
    frames, repeats = (300, 3) if quick else (2000, 5)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        figures: dict[str, Any] = {}
        for name, url in URLS.items():
            cpu, wall = _measure(url, frames, repeats)
            figures[f"{name}_fps"] = round(cpu, 1)
            figures[f"{name}_wall_fps"] = round(wall, 1)
    finally:
        cv2.setNumThreads(threads)
    figures.update({"width": 320, "height": 240, "frames": frames, "repeats": repeats, "cv2_threads": 1})
    met = all(figures[f"{n}_fps"] >= GOAL_FPS for n in URLS)
    return {
        "name": "simulator",
        "figures": figures,
        "goal": ">= 1000 frames/s at 320x240 on one core",
        "met": met,
        "headline": "parts_fps",
        "units": {k: "frames/s" for k in figures if k.endswith("_fps")},
        "notes": "rates from process CPU time with cv2.setNumThreads(1); *_wall_fps are wall-clock rates",
    }


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    out = Path(__file__).resolve().parent / "results" / "simulator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
