"""Codec benchmark: encode + decode of a Sample carrying a 1 KB image.

Why: every uncertain frame goes through this on the edge (encode) and the
trainer (decode); the codec must cost little next to copying the image itself,
so its overhead never limits sample throughput. Goal: a round trip well under
50 µs on top of a bare copy of the image.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from protocol.messages import Sample, decode_message, encode_message

GOAL_US = 50.0
IMAGE = bytes(range(256)) * 4  # 1 KiB


def _sample() -> Sample:
    return Sample(
        sample_id="cam-1-000017", model_version="v3", topk=[("scratch", 0.55), ("ok", 0.40), ("dent", 0.05)],
        uncertainty=0.45, uncertainty_kind="least_confidence", p_select=0.25, reason="uncertain",
        frame_index=17, width=640, height=480, roi=(10, 20, 100, 80), truth=None, source="rtsp://cam-1/stream",
    )


def _time_us(fn, iterations: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per call over ``iterations`` calls."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        runs.append((time.perf_counter_ns() - t0) / iterations / 1000.0)
    return statistics.median(runs)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return ``{"name", "figures", "goal", "met"}``."""
    iterations, repeats = (2_000, 5) if quick else (20_000, 7)
    msg = _sample()
    seq = iter(range(10**12))

    def round_trip(validate: bool) -> None:
        data = encode_message(msg, IMAGE, device="cam-1", seq=next(seq), validate=validate)
        decode_message(data)

    def copy() -> None:
        bytearray(IMAGE)

    encoded = encode_message(msg, IMAGE, device="cam-1", seq=0)
    for _ in range(1000):  # warm up
        round_trip(True)
    figures = {
        "round_trip_us": round(_time_us(lambda: round_trip(True), iterations, repeats), 2),
        "round_trip_no_validate_us": round(_time_us(lambda: round_trip(False), iterations, repeats), 2),
        "encode_us": round(_time_us(lambda: encode_message(msg, IMAGE, device="cam-1", seq=1), iterations, repeats), 2),
        "decode_us": round(_time_us(lambda: decode_message(encoded), iterations, repeats), 2),
        "image_copy_us": round(_time_us(copy, iterations, repeats), 3),
        "payload_bytes": len(encoded),
        "header_bytes": len(encoded) - len(IMAGE) - 8,
        "iterations": iterations,
        "repeats": repeats,
    }
    met = figures["round_trip_us"] < GOAL_US + figures["image_copy_us"]
    return {
        "name": "codec",
        "figures": figures,
        "goal": f"Sample (1 KB image) encode+decode round trip < {GOAL_US:.0f} µs + image copy",
        "met": met,
    }


if __name__ == "__main__":
    import sys

    result = run(quick="--quick" in sys.argv)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    out = Path(__file__).resolve().parent / "results" / "codec.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
