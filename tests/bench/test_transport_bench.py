"""bench/transport.py in a tiny mode: the result must be well formed (keys, types, strict JSON).

Why no timing assertions: the machine is shared, and throughput on loopback says nothing about
correctness. What must hold is that every role process starts, every published sample is stored
(or counted) exactly once, and the figures the harness and BENCHMARKS.md read are present.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import transport
from deploy.broker import find_mosquitto

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


def _strict(text: str) -> Any:
    def bad(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def test_percentiles_nearest_rank() -> None:
    p = transport._pcts([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p == {"n": 100, "p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert transport._pcts([])["p50_ms"] is None


def test_images_are_real_jpegs_near_target(tmp_path: Path) -> None:
    for target in transport.SIZES.values():
        paths = transport.make_images(tmp_path, target, variants=2)
        assert len(paths) == 2
        for p in paths:
            data = p.read_bytes()
            assert data[:2] == b"\xff\xd8"  # JPEG SOI
            assert 0.7 * target < len(data) < 1.3 * target


@needs_mosquitto
@pytest.mark.timeout(240)
def test_tiny_run_through_main_is_well_formed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "transport.json"
    # --link: the edge Link+Outbox throughput phase too (a full run has it; it is where the TLS arm's runs died).
    rc = transport.main(["--edges", "2", "--messages", "25", "--reps", "1", "--quick", "--link", "--json",
                         "--out", str(out)])
    assert rc == 0
    printed = _strict(capsys.readouterr().out)
    result = _strict(out.read_text())
    assert printed == result
    assert result["name"] == "transport"
    assert result["goal"] == transport.GOAL
    assert isinstance(result["met"], bool)
    f = result["figures"]
    for k in ("1kb", "20kb"):
        for key in (f"ingest_{k}_per_s", f"raw_{k}_per_s", f"ratio_{k}", f"cpu_us_per_sample_{k}"):
            assert isinstance(f[key], (int, float)) and math.isfinite(f[key]) and f[key] >= 0, key
        assert f[f"ingest_{k}_per_s"] > 0 and f[f"raw_{k}_per_s"] > 0
        assert f[f"ratio_{k}"] == pytest.approx(f[f"ingest_{k}_per_s"] / f[f"raw_{k}_per_s"], rel=1e-2)
        assert f[f"ingest_tls_{k}_per_s"] > 0
        assert f[f"tls_ratio_{k}"] == pytest.approx(f[f"ingest_tls_{k}_per_s"] / f[f"ingest_{k}_per_s"], rel=1e-2)
        assert f[f"tls_cost_{k}"] == pytest.approx(1 - f[f"tls_ratio_{k}"], abs=1e-3)
        assert f[f"tls_ratios_{k}"] == [f[f"tls_ratio_{k}"]]  # one repetition: the median is that one ratio
        assert f[f"tls_ratio_{k}_met"] == (f[f"tls_ratio_{k}"] >= transport.GOAL_TLS_RATIO)
        assert f[f"ratio_{k}_met"] == (f[f"ratio_{k}"] >= transport.GOAL_RATIO)
    assert result["met"] == all(f[f"ratio_{k}"] >= transport.GOAL_RATIO and f[f"tls_ratio_{k}"] >= transport.GOAL_TLS_RATIO
                                for k in ("1kb", "20kb"))
    assert 0 < f["latency_p50_ms"] <= f["latency_p99_ms"]
    runs = f["runs"]
    assert {(r["phase"], r["consumer"], r["size_key"]) for r in runs} >= {
        ("throughput", "trainer", "1kb"), ("throughput", "raw", "1kb"),
        ("throughput", "trainer", "20kb"), ("throughput", "raw", "20kb"), ("latency", "trainer", "1kb"),
        ("throughput_tls", "trainer", "1kb"), ("throughput_tls", "trainer", "20kb"),
        ("throughput_link", "trainer", "1kb"),
    }
    assert f["ingest_1kb_edge_link_per_s"] > 0
    assert all(r["tls"] == (r["phase"] == "throughput_tls") for r in runs)
    for r in runs:
        if r["phase"] in ("throughput", "throughput_tls", "throughput_link"):
            assert r["n"] == 2 * 25  # every sample stored (trainer) / received (raw) exactly once
        if r["consumer"] == "trainer":
            assert r["duplicates"] == 0 and r["rejected"] == 0
            assert r["latency"]["n"] == r["n"]


@needs_mosquitto
@pytest.mark.timeout(150)
@pytest.mark.parametrize("rate", [200.0, 0.0], ids=["paced", "flat-out"])
def test_edge_link_path_run_stores_everything(rate: float) -> None:
    """The real edge path (Outbox + Link, its upload hold on) feeding the real Ingestor: all samples arrive and
    every edge counts every upload, latency recorded. Flat out with 4 edges is the full run's edge-link phase,
    whose edges used to miss acknowledgements and be killed (``Link._collect_acks``, issue 12)."""
    edges, per_edge = (2, 20) if rate else (4, 400)
    imgs_dir = Path(transport.tempfile.mkdtemp())
    try:
        imgs = transport.make_images(imgs_dir, transport.SIZES["1kb"], variants=2)
        r = transport.measure("trainer", transport.SIZES["1kb"], imgs, edges=edges, per_edge=per_edge,
                              edge_mode="link", rate=rate, sync="NORMAL")
    finally:
        transport.shutil.rmtree(imgs_dir, ignore_errors=True)
    assert r["n"] == edges * per_edge and r["per_s"] > 0
    assert r["latency"]["n"] == edges * per_edge and r["latency"]["p50_ms"] > 0
