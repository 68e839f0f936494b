"""Sampler: selection curve, calibrated random draws, unbiased budget pacing, dedup and drift boost.

Clocks are simulated (an injected function), so hours of frames run in milliseconds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from edge.dedup import DedupConfig, Deduplicator, dhash, hamming, thumbnail
from edge.drift import DriftConfig, DriftMonitor
from edge.sampler import Sampler, SamplerConfig, selection_curve

NO_DEDUP = DedupConfig(enabled=False)
NO_BUDGET = dict(budget_per_minute=None, budget_per_hour=None, budget_per_day=None)


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("g", ["logistic", "linear"])
def test_p_select_within_bounds_and_monotone(g: str) -> None:
    """Through ``decide()``, the per-frame path that ships: without budget, boost or dedup the probability
    a frame is drawn with is p_base, within [p_min, 1] and never lower for a more uncertain frame."""
    clock = Clock()
    s = Sampler(SamplerConfig(g=g, p_min=0.02, seed=0, dedup=NO_DEDUP, **NO_BUDGET), clock=clock)
    decisions = []
    for i, score in enumerate(np.linspace(0, 1, 501)):
        clock.t = i / 30
        decisions.append(s.decide(float(score)))
    p = np.array([d.p_select for d in decisions])
    assert np.array_equal(p, [d.p_base for d in decisions])
    assert np.all(p >= 0.02) and np.all(p <= 1.0)
    assert np.all(np.diff(p) >= 0.0)
    assert p[0] == pytest.approx(0.02)
    assert p[-1] > 0.95
    if g == "logistic":
        assert s.decide(0.5).p_base == pytest.approx(0.5)  # g(threshold) = 1/2
    else:
        assert s.decide(0.45).p_base == pytest.approx(0.25)  # the ramp: 0 at 0.4, 1 at 0.6


def test_selection_curve_extremes_and_bad_kind() -> None:
    """Tiny temperatures stay finite (the exponent is clipped); g itself is the curve with default bounds."""
    g = selection_curve("logistic", 0.5, 0.0)
    assert g(0.0) == pytest.approx(0.0, abs=1e-25) and g(1.0) == 1.0 and g(0.5) == 0.5
    assert selection_curve("linear", 0.5, 0.1)(0.0) == 0.0
    assert selection_curve("logistic", 0.5, 0.1, p_min=0.1, p_max=0.05)(1.0) == 0.1  # p_max below p_min: p_min
    with pytest.raises(ValueError, match="unknown selection curve"):
        selection_curve("cubic", 0.5, 0.1)  # type: ignore[arg-type]


def test_every_frame_has_a_known_nonzero_chance() -> None:
    clock = Clock()
    s = Sampler(SamplerConfig(p_min=0.01, seed=0, dedup=NO_DEDUP), clock=clock)
    for i in range(200):
        clock.t = i / 30
        d = s.decide(0.0)
        assert d.p_select > 0.0
        assert d.p_select <= 0.01 + 1e-12


@pytest.mark.parametrize("score", [0.0, 0.45, 0.5, 0.6, 0.95])
def test_empirical_frequency_matches_p_select(score: float) -> None:
    clock = Clock()
    s = Sampler(SamplerConfig(p_min=0.05, seed=1234, dedup=NO_DEDUP, **NO_BUDGET), clock=clock)
    n = 20000
    hits = 0
    ps = []
    for i in range(n):
        clock.t = i / 30
        d = s.decide(score)
        hits += d.selected
        ps.append(d.p_select)
    p = float(np.mean(ps))
    assert np.ptp(ps) < 1e-12  # no budget -> the same p every frame
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= max(4 * sigma, 1e-3), (hits / n, p)


def _run(s: Sampler, clock: Clock, seconds: float, fps: float, score_fn=lambda i: 0.95):
    decisions = []
    n = int(seconds * fps)
    for i in range(n):
        clock.t = i / fps
        decisions.append((clock.t, s.decide(score_fn(i))))
    return decisions


def test_budgets_respected_over_simulated_hours() -> None:
    clock = Clock()
    cfg = SamplerConfig(seed=7, budget_per_minute=10, budget_per_hour=120, budget_per_day=None, dedup=NO_DEDUP)
    s = Sampler(cfg, clock=clock)
    dec = _run(s, clock, seconds=3 * 3600, fps=5)
    t_sel = np.array([t for t, d in dec if d.selected])
    per_min = np.bincount((t_sel // 60).astype(int))
    per_hour = np.bincount((t_sel // 3600).astype(int))
    assert per_min.max() <= 10
    assert per_hour.max() <= 120
    # Budget is used, not wasted (pacing headroom costs ~10 %).
    assert per_hour.min() >= 95
    # The hour budget binds (120/h < 10/min): uploads are spread over the hour, not spent in its first 12 minutes.
    assert np.mean((t_sel % 3600) >= 1800) == pytest.approx(0.5, abs=0.1)


def test_day_budget_paced_and_reset_at_midnight() -> None:
    day = 86400.0
    clock = Clock()
    cfg = SamplerConfig(seed=11, budget_per_minute=None, budget_per_hour=None, budget_per_day=100, dedup=NO_DEDUP)
    s = Sampler(cfg, clock=clock)
    t0 = day - 2 * 3600  # 22:00 UTC: 2 hours left in the day
    sel = []
    for i in range(int(4 * 3600 * 2)):  # 4 hours at 2 fps, crossing midnight
        clock.t = t0 + i / 2
        d = s.decide(0.95)
        if d.selected:
            sel.append(clock.t)
    sel_arr = np.array(sel)
    before, after = (sel_arr < day).sum(), (sel_arr >= day).sum()
    assert before <= 100
    assert before >= 80  # the last 2 hours of the day get (nearly) the whole day budget
    assert 0 < after <= 100  # new day, new budget, paced over 24 h -> only a few in the first 2 hours
    assert after < 20
    assert s.budget_left()["day"] == 100 - after


def test_budget_lowers_p_uniformly_instead_of_dropping_the_tail() -> None:
    """Demand 20x the budget: selections must be spread across each minute, not bunched at its start."""
    clock = Clock()
    fps = 10.0
    cfg = SamplerConfig(seed=3, budget_per_minute=30, budget_per_hour=None, budget_per_day=None, dedup=NO_DEDUP)
    s = Sampler(cfg, clock=clock)
    dec = _run(s, clock, seconds=60 * 60, fps=fps)
    sel = [(t, d) for t, d in dec if d.selected]
    phase = np.array([t % 60 for t, _ in sel])
    quarters = np.bincount((phase // 15).astype(int), minlength=4) / len(phase)
    # Tail-dropping would put ~100 % into the first quarter; uniform scaling gives ~25 % each.
    assert np.all(np.abs(quarters - 0.25) < 0.05), quarters
    # The effective p actually used is lowered for everybody (≈ budget / demand), not 1 then 0 ...
    p_used = np.array([d.p_select for t, d in dec if t >= 60])
    expected = 30 * 0.9 / (60 * fps)  # budget at 10 % pacing headroom / frames per minute
    assert np.median(p_used) == pytest.approx(expected, rel=0.25)
    # ... and (almost) no frame is left with p = 0 by an exhausted window.
    assert np.mean(p_used == 0) < 0.02
    # Calibration: the reported p_select of every frame sums to the number selected (Horvitz-Thompson).
    ps = np.array([d.p_select for _, d in dec])
    var = float((ps * (1 - ps)).sum())
    assert abs(len(sel) - ps.sum()) <= 4 * math.sqrt(var) + 1


def test_budget_factor_reported_and_recovers_when_demand_drops() -> None:
    clock = Clock()
    cfg = SamplerConfig(seed=5, budget_per_minute=20, budget_per_hour=None, budget_per_day=None, rate_tau_s=10, dedup=NO_DEDUP)
    s = Sampler(cfg, clock=clock)
    # 2 minutes of high uncertainty at 20 fps, then 2 minutes of confident frames.
    dec = _run(s, clock, seconds=240, fps=20, score_fn=lambda i: 0.95 if i < 2400 else 0.0)
    busy = [d.budget_factor for t, d in dec if 30 < t < 110]
    calm = [d.budget_factor for t, d in dec if t > 200]
    assert max(busy) < 0.2
    assert min(calm) == 1.0  # demand 20 fps * p_min = 0.2/s < 20/60 allowed -> no scaling


def test_dedup_suppresses_a_static_scene() -> None:
    clock = Clock()
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
    cfg = SamplerConfig(seed=0, dedup=DedupConfig(ttl_s=60.0), **NO_BUDGET)
    s = Sampler(cfg, clock=clock)
    selected = 0
    reasons: dict[str, int] = {}
    for i in range(30 * 50):  # 50 s at 30 fps, sensor noise of +-2 grey levels
        clock.t = i / 30
        noisy = np.clip(scene.astype(np.int16) + rng.integers(-2, 3, scene.shape), 0, 255).astype(np.uint8)
        d = s.decide(0.99, noisy)
        selected += d.selected
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        if d.duplicate:
            assert d.p_select == 0.0 and not d.selected
    assert selected == 1, reasons
    # Frames the draw would have taken are recognised as duplicates; the rest were never fingerprinted.
    assert reasons["duplicate"] > 1000
    assert reasons["duplicate"] + reasons.get("not_drawn", 0) == 30 * 50 - 1
    # A different scene is not a duplicate.
    other = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
    clock.t += 1
    assert s.decide(0.99, other).selected
    # After the TTL the static scene may be sampled again (fresh evidence that it is unchanged).
    clock.t += 61
    assert not s.decide(0.99, scene).duplicate


def test_duplicate_factor_keeps_a_known_probability() -> None:
    clock = Clock()
    scene = np.full((16, 16), 100, np.uint8)
    cfg = SamplerConfig(seed=0, duplicate_factor=0.1, dedup=DedupConfig(), **NO_BUDGET)
    s = Sampler(cfg, clock=clock)
    first = s.decide(0.99, scene)
    assert first.selected
    clock.t = 1.0
    d = s.decide(0.99, scene)
    assert d.duplicate and d.p_select == pytest.approx(0.1 * d.p_base)


def test_dedup_methods() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + 40, 0, 255).astype(np.uint8)  # brighter, same content
    c = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert hamming(dhash(a), dhash(b)) <= 8
    assert hamming(dhash(a), dhash(c)) > 16
    assert thumbnail(a).shape == (16, 16)
    d = Deduplicator(DedupConfig(method="dhash", history=2))
    d.remember(d.fingerprint(a), 0.0)
    assert d.is_duplicate(d.fingerprint(b), 1.0)
    assert not d.is_duplicate(d.fingerprint(c), 1.0)


def test_drift_monitor_detects_confidence_drop_and_boosts_sampling() -> None:
    rng = np.random.default_rng(0)
    mon = DriftMonitor(DriftConfig(reference=200, window=100, threshold=1.0, boost=3.0))
    conf = np.clip(rng.normal(0.95, 0.02, 300), 0, 1)
    ent = np.clip(rng.normal(0.1, 0.03, 300), 0, 1)
    mon.update(conf, ent)
    assert not mon.active and mon.boost == 1.0
    mon.update(np.clip(rng.normal(0.7, 0.05, 100), 0, 1), np.clip(rng.normal(0.5, 0.05, 100), 0, 1))
    assert mon.active and mon.score > 3
    assert mon.boost == 3.0
    st = mon.stats()
    assert st["active"] and st["confidence_rel_change"] < -0.1
    # Boost raises p_select (inside the reported probability).
    s = Sampler(SamplerConfig(seed=0, dedup=NO_DEDUP, **NO_BUDGET), clock=Clock())
    base = s.decide(0.3).p_select
    assert s.decide(0.3, boost=mon.boost).p_select == pytest.approx(min(1.0, 3 * base))
    # Recovery with hysteresis, and reset after a model swap.
    mon.update(np.clip(rng.normal(0.95, 0.02, 100), 0, 1), np.clip(rng.normal(0.1, 0.03, 100), 0, 1))
    assert not mon.active
    mon.reset()
    assert mon.stats()["ref_n"] == 0 and mon.score == 0.0


def test_seeded_sampler_is_reproducible() -> None:
    def run() -> list[bool]:
        clock = Clock()
        s = Sampler(SamplerConfig(seed=42, dedup=NO_DEDUP), clock=clock)
        out = []
        for i in range(500):
            clock.t = i / 30
            out.append(s.decide((i % 10) / 10).selected)
        return out

    assert run() == run()


# -- the trainer's selection hint (step 5) ------------------------------------------------------------------------
def _hinted_run(seed: int, hint: object, minutes: float = 2.0, budget: int | None = 30) -> tuple[Sampler, list]:
    """30 fps, frames alternately predicted "crack-like" (hinted) and "ok", all with p_base = p_min."""
    from edge.sampler import Hint  # noqa: F401 - the type the hint is

    clock = Clock(6000.0)
    s = Sampler(SamplerConfig(p_min=0.02, seed=seed, dedup=NO_DEDUP, budget_per_minute=budget, budget_per_hour=None,
                              budget_per_day=None), clock=clock)
    s.set_hint(hint)  # type: ignore[arg-type]
    out = []
    for i in range(int(minutes * 60 * 30)):
        clock.t = 6000.0 + i / 30
        label = "scratch" if i % 2 else "ok"
        out.append((label, s.decide(0.0, label=label)))
    return s, out


def test_a_hint_takes_more_of_the_hinted_predictions_from_its_own_budget() -> None:
    """Frames predicted as a hinted label get ``p * boost`` paced by the hint's own per-minute budget; the others
    keep theirs, and the base budget is not spent on hinted uploads."""
    from edge.sampler import Hint

    s, out = _hinted_run(0, Hint({"scratch": 10.0}, budget_per_minute=20, expires=1e12), minutes=2.0)
    _, base = _hinted_run(0, None, minutes=2.0)
    hinted = [d for lab, d in out if d.selected and d.reason == "hint"]
    assert hinted and all(lab == "scratch" for lab, d in out if d.selected and d.reason == "hint")
    assert 20 <= s.hinted == len(hinted) <= 2 * 20  # the hint's budget is spent, not exceeded
    sel = {lab: sum(d.selected for lb, d in out if lb == lab) for lab in ("ok", "scratch")}
    assert sel["scratch"] > 1.5 * sel["ok"]
    per_minute = {}
    for i, (_lab, d) in enumerate(out):
        if d.selected and d.reason == "hint":
            per_minute[i // 1800] = per_minute.get(i // 1800, 0) + 1
    assert max(per_minute.values()) <= 20
    base_ok = sum(d.selected for lab, d in base if lab == "ok")
    assert abs(sel["ok"] - base_ok) <= 0.5 * base_ok + 3  # the other classes keep about their share
    assert s.stats()["hint"]["used"] == len(hinted)


def test_hinted_probabilities_stay_exact() -> None:
    """Horvitz-Thompson over the uploads (sum of 1 / p_select) estimates the number of frames of each predicted
    label within a few percent over seeds, with and without the hint: the reported probability is the one drawn."""
    from edge.sampler import Hint

    n_each = 2 * 60 * 30 // 2
    for hint in (None, Hint({"scratch": 10.0}, budget_per_minute=20, expires=1e12)):
        est = {"ok": [], "scratch": []}
        for seed in range(30):
            _s, out = _hinted_run(seed, hint, minutes=2.0, budget=None)
            for lab in est:
                est[lab].append(sum(1.0 / d.p_select for lb, d in out if lb == lab and d.selected))
        for lab, xs in est.items():
            assert abs(np.mean(xs) / n_each - 1.0) < 0.08, (hint, lab, np.mean(xs), n_each)


def test_a_hint_lapses_at_expiry_and_is_bounded_by_the_day_budget() -> None:
    from edge.sampler import Hint

    s, out = _hinted_run(1, Hint({"scratch": 10.0}, budget_per_minute=20, expires=6000.0 + 30), minutes=1.5)
    assert any(d.reason == "hint" for _l, d in out[:900])
    assert not any(d.reason == "hint" for _l, d in out[900:])
    assert s.hint is None  # dropped once lapsed
    clock = Clock(86400.0 * 3)
    s = Sampler(SamplerConfig(p_min=0.02, seed=2, dedup=NO_DEDUP, budget_per_minute=None, budget_per_hour=None,
                              budget_per_day=5), clock=clock)
    s.set_hint(Hint({"scratch": 50.0}, budget_per_minute=1000, expires=1e12))
    n = 0
    for i in range(3000):
        clock.t = 86400.0 * 3 + i / 30
        n += s.decide(0.0, label="scratch").selected
    assert n <= 5  # the day budget caps everything, hinted or not
    s.set_hint(None)
    assert s.hint is None and s.stats()["hint"] is None
