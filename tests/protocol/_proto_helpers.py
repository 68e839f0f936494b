"""Valid example messages shared by the protocol tests (not a conftest: keeps module names unique)."""

from __future__ import annotations

import hashlib

from protocol.messages import Chunk, Manifest, Sample
from protocol.reports import Birth, ModelStatus, PredictionReport, SelectionHint, State, Stats, TopK

IMAGE = bytes(range(256)) * 4  # 1 KiB stand-in for a JPEG
CHUNK = b"onnx-bytes" * 100


def sample(**kw) -> Sample:
    base = dict(
        sample_id="s-1", model_version="v3", topk=[("scratch", 0.55), ("ok", 0.40)],
        uncertainty=0.45, uncertainty_kind="least_confidence", p_select=0.25,
        reason="uncertain", frame_index=17, width=640, height=480, roi=(10, 20, 100, 80),
        truth="scratch", source="sim:parts?seed=1",
    )
    base.update(kw)
    return Sample(**base)


def manifest(**kw) -> Manifest:
    data = b"x" * 1000
    base = dict(
        fleet="default", model_id="parts", version="v4", seq=7, sha256=hashlib.sha256(data).hexdigest(), size=1000,
        chunk_size=400, chunk_count=3,
        chunk_sha256=[hashlib.sha256(data[i:i + 400]).hexdigest() for i in range(0, 1000, 400)],
        compat={"input": {"width": 64, "height": 64, "scale": 1 / 255}, "labels": ["a", "b"], "opset": 17},
        rollout_id="r-1", wave=1, expires=2_000_000_000.0,
    )
    base.update(kw)
    return Manifest(**base)


def examples() -> list[tuple[object, bytes]]:
    """One valid (message, body) per envelope type: sample, manifest, chunk."""
    return [
        (sample(), IMAGE),
        (manifest(), b""),
        (Chunk(model_id="parts", version="v4", index=1, count=3,
               sha256=hashlib.sha256(CHUNK).hexdigest()), CHUNK),
    ]


def report_examples() -> list[object]:
    """One valid plain-JSON report per type."""
    return [
        Birth(device="cam-1", ts=1.7e9, capabilities={"onnx": True, "providers": ["CPU"]}, model_version="v3",
              config_digest="abc123", boot=4, software="edgeloop 0.1.0", labels=["ok", "scratch"]),
        State(device="cam-1", ts=1.7e9, state="online", boot=4),
        Stats(device="cam-1", ts=1.7e9, fps=29.5, latency_p50_ms=3.1, latency_p95_ms=7.9, outbox_depth=2,
              outbox_bytes=4096, outbox_dropped=0, uploads=12, budget_left={"minute": 3, "hour": 50.0}, drift=0.12,
              defect_rate=0.05, extra={"confidence_mean": 0.8}),
        ModelStatus(device="cam-1", ts=1.7e9, model_id="parts", version="v4", state="shadow", rollout_id="r-1",
                    metrics={"agreement": 0.97}),
        PredictionReport(device="cam-1", ts=1.7e9, label="scratch", confidence=0.55, ok=False,
                         topk=[TopK("scratch", 0.55), TopK("ok", 0.4)], model_version="v3", frame_index=17,
                         frame_time=1.7e9 - 0.02, roi=(96, 56, 128, 128), latency_ms=3.2),
        SelectionHint(device="cam-1", ts=1.7e9, boost={"scratch": 10.0}, budget_per_minute=40, expires=1.7e9 + 60,
                      reason="crack: 18 of 27 labels predicted as scratch (~55 % of its frames)"),
    ]
