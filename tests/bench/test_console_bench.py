"""bench/console.py runs end to end (quick) in a real browser and reports its figures; timings are never
asserted here (they belong to BENCHMARKS.md, measured on a quiet machine)."""
from __future__ import annotations

import pytest

from bench.browser import have_chromium

pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(not have_chromium(), reason="needs chromium + chromedriver")]


def test_console_bench_quick_reports_its_figures() -> None:
    from bench.console import DEVICES, WAITING, run

    r = run(quick=True)
    f = r["figures"]
    assert r["name"] == "console" and isinstance(r["met"], bool) and r["goal"]
    assert f["samples_waiting"] == WAITING and f["label_presses"] >= 30 and f["labels_stored"] == f["label_presses"]
    assert f["fleet_rows_rendered"] == DEVICES and f["fleet_first_paint_ms"] > 0 and f["label_p95_ms"] > 0
