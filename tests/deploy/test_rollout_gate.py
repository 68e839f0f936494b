"""The fleet gate's rules, one by one, on hand-made device reports (no broker needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploy.fleet import DeviceInfo
from deploy.rollout_gate import BREACH_CHECKS, Policy, count_wave, evaluate, wave_done
from protocol.config import ConfigError, load_config

RID, NEW, OLD = "r1", "v2", "v1"


def dev(name: str, *, online: bool = True, version: str = OLD, state: str | None = None, reason: str | None = None,
        mine: bool = True, active_latency_ms: float | None = None, seq: int | None = 5, stats: bool = True,
        **metrics: object) -> DeviceInfo:
    """A device as the controller sees it; ``mine``: its last model status is about this rollout's version;
    ``metrics``: that status's metrics (a shadow run's ``latency_ms`` is the candidate's); ``active_latency_ms``:
    the active model's latency from the device's stats; ``seq``: the manifest sequence its status names;
    ``stats``: stats arrived after that status."""
    return DeviceInfo(name, online=online, version=version, model_state=state, reason=reason,
                      model_version=NEW if mine else OLD, rollout_id=RID if mine else "r0",
                      status_metrics=dict(metrics), latency_ms=active_latency_ms, status_seq=seq,
                      status_time=10.0 if state else 0.0, stats_time=11.0 if stats else 0.0)


def healthy(name: str, **kw: object) -> DeviceInfo:
    """A device that runs the new version and reported it healthy (after its health watch), with stats since."""
    return dev(name, version=NEW, state="active", health="ok", **kw)


def test_count_wave_sorts_devices_by_what_they_report() -> None:
    members = [dev("a", version=NEW, state="active"), dev("b", state="failed", reason="smoke_test"),
               dev("c", state="downloading"), dev("d", online=False, version=NEW),
               dev("e", state="rolled_back", mine=False)]  # failed an *older* rollout: still pending here
    w = count_wave(members, RID, NEW)
    assert [d.device for d in w.active] == ["a"]
    assert [d.device for d in w.failed] == ["b"]
    assert [d.device for d in w.pending] == ["c", "e"]
    assert (w.online, w.offline, w.failures) == (4, 1, {"smoke_test": 1})
    p = Policy()
    assert not wave_done(w, p)
    assert wave_done(count_wave([healthy("a")], RID, NEW), p)
    assert not wave_done(count_wave([dev("a", online=False)], RID, NEW), p)  # nobody online: nobody reported


def test_a_wave_needs_min_reporting_devices_that_reported_healthy() -> None:
    p = Policy(min_reporting=2)
    assert not wave_done(count_wave([dev("a", version=NEW)], RID, NEW), Policy())  # runs it, no status: no
    assert not wave_done(count_wave([healthy("a", stats=False)], RID, NEW), Policy())  # no stats since
    watching = dev("a", version=NEW, state="active", health="watching")  # health watch not over yet
    assert not wave_done(count_wave([watching], RID, NEW), Policy())
    already = dev("a", version=NEW, state="active", already=True)  # ran it already when this wave came
    assert wave_done(count_wave([already], RID, NEW), Policy())
    two = [healthy("a"), healthy("b"), dev("c", online=False)]
    assert not wave_done(count_wave(two[:1] + two[2:], RID, NEW), p)  # 1 of 2 needed
    assert wave_done(count_wave(two, RID, NEW), p)
    assert wave_done(count_wave([healthy("a")], RID, NEW), Policy(min_reporting=5))  # a one-device wave: all of it
    assert count_wave([], RID, NEW).needed(p) == 1  # an empty wave never passes


def test_statuses_must_name_this_rollout_and_an_issued_sequence() -> None:
    members = [healthy("a", seq=5), healthy("b", seq=9), healthy("c", seq=None), healthy("d", mine=False)]
    w = count_wave(members, RID, NEW, max_seq=7)
    assert [d.device for d in w.reporting] == ["a"]
    assert [(d.device, why) for d, why in w.ignored] == [("b", "foreign"), ("c", "foreign"), ("d", "stale")]
    forged_fail = dev("e", state="failed", reason="smoke_test", seq=99)
    assert not count_wave([forged_fail], RID, NEW, max_seq=7).failed  # an unissued seq fails nothing either


def test_a_wave_nobody_reports_from_halts_with_no_reports() -> None:
    offline = [dev("a", online=False), dev("b", online=False)]
    p = Policy(wave_timeout=60)
    assert evaluate(count_wave(offline, RID, NEW, started=100.0, now=150.0), p) is None  # waits
    reason = evaluate(count_wave(offline, RID, NEW, started=100.0, now=170.0), p)
    assert reason is not None and reason.startswith("no_reports: 0 of the 1 devices needed")
    assert evaluate(count_wave([healthy("a")], RID, NEW, started=100.0, now=170.0), p) is None


def test_the_gate_is_a_named_list_of_checks() -> None:
    assert [c.__name__ for c in BREACH_CHECKS] == ["failed_fraction", "shadow_agreement", "confidence_drop",
                                                   "latency", "wave_timeout", "no_reports"]


def test_failed_fraction_halts_above_max_failed() -> None:
    p = Policy(max_failed=0.25)
    ok = [dev("a", state="failed", reason="smoke_test")] + [dev(f"n{i}", version=NEW) for i in range(3)]
    assert evaluate(count_wave(ok, RID, NEW), p) is None  # 1/4 is not above 25 %
    bad = ok + [dev("b", state="rejected", reason="incompatible")]
    reason = evaluate(count_wave(bad, RID, NEW), p)
    assert reason is not None and reason.startswith("failed 2/5 > 25%") and "incompatible" in reason


def shadowed(n: int, active_latency_ms: float | None = None, **metrics: float) -> list[DeviceInfo]:
    return [dev(f"s{i}", state="shadow", active_latency_ms=active_latency_ms, **metrics) for i in range(n)]


def test_shadow_agreement_below_min_halts_only_with_a_shadow_policy() -> None:
    w = count_wave(shadowed(3, agreement=0.8, confidence=0.9, active_confidence=0.9), RID, NEW)
    assert evaluate(w, Policy(shadow=0, min_agreement=0.9)) is None
    assert evaluate(w, Policy(shadow=50, min_agreement=0.9)) == "shadow agreement 0.800 < 0.900"
    assert evaluate(w, Policy(shadow=50, min_agreement=0.75)) is None


def test_confidence_drop_uses_the_gates_shadow_threshold() -> None:
    w = count_wave(shadowed(2, agreement=1.0, confidence=0.6, active_confidence=0.9), RID, NEW)
    assert evaluate(w, Policy(shadow=50, shadow_max_confidence_drop=0.4)) is None  # 0.6 >= 0.9 x 0.6
    reason = evaluate(w, Policy(shadow=50, shadow_max_confidence_drop=0.25))
    assert reason == "confidence 0.600 vs active 0.900 dropped > 25%"


def test_latency_needs_both_the_ratio_and_the_slack() -> None:
    fast = count_wave(shadowed(2, agreement=1.0, latency_ms=2.0, active_latency_ms=0.5), RID, NEW)
    assert evaluate(fast, Policy(shadow=50)) is None  # 4x slower, but only by 1.5 ms
    slow = count_wave(shadowed(2, agreement=1.0, latency_ms=40.0, active_latency_ms=10.0), RID, NEW)
    assert evaluate(slow, Policy(shadow=50)) == "latency ratio 4.00 > 3.00"
    assert evaluate(slow, Policy(shadow=50, shadow_latency_slack_ms=50.0)) is None


def test_wave_timeout_counts_only_pending_devices() -> None:
    members = [dev("a", state="downloading"), healthy("b")]
    assert evaluate(count_wave(members, RID, NEW, started=100.0, now=150.0), Policy(wave_timeout=60)) is None
    reason = evaluate(count_wave(members, RID, NEW, started=100.0, now=170.0), Policy(wave_timeout=60))
    assert reason == "wave timeout: 1 devices did not finish in 60s"
    assert evaluate(count_wave(members[1:], RID, NEW, started=100.0, now=170.0), Policy(wave_timeout=60)) is None


def test_first_failing_check_wins() -> None:
    members = [dev("a", state="failed", reason="smoke_test", agreement=0.1)]
    assert evaluate(count_wave(members, RID, NEW), Policy(shadow=50)).startswith("failed 1/1")


def test_policy_old_threshold_names_fail_naming_the_new_key(tmp_path: Path) -> None:
    cfg = tmp_path / "policy.yaml"
    cfg.write_text("soak: 30\nmax_confidence_drop: 0.3\n")
    with pytest.raises(ConfigError, match="max_confidence_drop: renamed; use shadow_max_confidence_drop"):
        load_config(Policy, cfg)
    cfg.write_text("soak: 30\nshadow_max_confidence_drop: 0.3\n")
    assert load_config(Policy, cfg).shadow_max_confidence_drop == 0.3


def test_weights_only_waves_are_checked_like_waves_and_default_to_none(tmp_path) -> None:
    assert Policy().weights_only_waves is None
    assert Policy(weights_only_waves=[0.5]).weights_only_waves == [0.5, 1.0]
    with pytest.raises(ValueError, match="weights_only_waves must be increasing"):
        Policy(weights_only_waves=[0.5, 0.2])
    cfg = tmp_path / "policy.yaml"
    cfg.write_text("weights_only_waves: [2.0]\n")
    with pytest.raises(ConfigError, match="weights_only_waves"):
        load_config(Policy, cfg)
    cfg.write_text("weights_only_waves: [1.0]\n")
    assert load_config(Policy, cfg).weights_only_waves == [1.0]
