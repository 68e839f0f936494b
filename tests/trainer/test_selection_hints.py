"""trainer.hints.HintPolicy: where a class the cameras miss hides, estimated from the labelled uploads with
their selection probabilities, and the trainer service publishing, renewing and withdrawing the hint."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainer.config import HintsConfig
from trainer.hints import HintPolicy

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import bootstrap_state, incoming, service_config  # noqa: E402

_BOOT: dict[str, Path] = {}


def _boot(tmp_path: Path) -> Path:
    """One bootstrapped state per test session (red, green, blue)."""
    if "state" not in _BOOT:
        _BOOT["state"] = bootstrap_state(tmp_path / "boot", ["red", "green", "blue"])
    return _BOOT["state"]


def _feed(policy: HintPolicy, t: float, rows: list[tuple[str, str, float, int]]) -> None:
    for label, pred, p, n in rows:
        for _ in range(n):
            policy.observe(t, label, pred, p)


def test_a_missed_class_asks_for_the_predicted_label_it_hides_in() -> None:
    """crack: every label predicted as scratch or ok. Among frames predicted scratch it is ~half (by the
    1/p weights), among those predicted ok ~4 %: only scratch is boosted."""
    pol = HintPolicy(HintsConfig(enabled=True))
    _feed(pol, 100.0, [("crack", "scratch", 0.03, 10), ("scratch", "scratch", 0.03, 10),
                       ("crack", "ok", 0.03, 2), ("ok", "ok", 0.03, 50)])
    h = pol.hint(110.0)
    assert h is not None and h.boost == {"scratch": 10.0} and h.budget_per_minute == 40
    assert h.expires == 110.0 + 60.0 and "crack: 10 of 12 labels predicted as scratch" in h.reason


def test_a_boost_in_force_holds_down_to_the_release_thresholds() -> None:
    """Hysteresis: crack's share of what is predicted scratch falls from 50 % to 15 % -- below min_share (20 %)
    but above half of it -- and the boost holds; a fresh policy at 15 % does not start one. At 5 % it is
    released. Without it the retained hint flapped on every labelled batch near the threshold."""
    cfg = HintsConfig(enabled=True)
    pol = HintPolicy(cfg)
    _feed(pol, 100.0, [("crack", "scratch", 0.03, 10), ("scratch", "scratch", 0.03, 10)])
    assert pol.hint(101.0) is not None
    _feed(pol, 102.0, [("scratch", "scratch", 0.03, 47)])   # 10 of 67: ~15 %
    h = pol.hint(103.0)
    assert h is not None and h.boost == {"scratch": 10.0}
    fresh = HintPolicy(cfg)
    _feed(fresh, 100.0, [("crack", "scratch", 0.03, 10), ("scratch", "scratch", 0.03, 57)])
    assert fresh.hint(103.0) is None
    _feed(pol, 104.0, [("scratch", "scratch", 0.03, 133)])  # 10 of 200: 5 %
    assert pol.hint(105.0) is None
    _feed(pol, 106.0, [("scratch", "scratch", 0.03, 0)])
    assert pol.hint(107.0) is None   # released: back to the starting thresholds
    off = HintPolicy(HintsConfig(enabled=True, release=1.0))
    _feed(off, 100.0, [("crack", "scratch", 0.03, 10), ("scratch", "scratch", 0.03, 10)])
    assert off.hint(101.0) is not None
    _feed(off, 102.0, [("scratch", "scratch", 0.03, 47)])
    assert off.hint(103.0) is None   # release 1.0: no hysteresis


def test_the_share_is_weighted_by_the_selection_probability() -> None:
    """10 crack uploads predicted ok but each drawn at p=1 (uncertain) stand for 10 frames; 20 ok uploads at
    p=0.03 stand for ~670: crack is ~1.5 % of what the cameras predict as ok, so nothing is asked for, though it
    is a third of the uploads."""
    pol = HintPolicy(HintsConfig(enabled=True))
    _feed(pol, 0.0, [("crack", "ok", 1.0, 10), ("ok", "ok", 0.03, 20)])
    assert pol.hint(1.0) is None
    pol = HintPolicy(HintsConfig(enabled=True))
    _feed(pol, 0.0, [("crack", "ok", 0.03, 10), ("ok", "ok", 1.0, 20)])
    assert pol.hint(1.0) is not None  # the same counts, the other way round: crack is most of it


def test_no_hint_without_enough_labels_misses_or_after_the_window() -> None:
    cfg = HintsConfig(enabled=True, min_labels=4, window_s=60.0)
    pol = HintPolicy(cfg)
    _feed(pol, 0.0, [("crack", "scratch", 0.03, 3)])
    assert pol.hint(1.0) is None  # 3 < min_labels
    _feed(pol, 0.0, [("crack", "scratch", 0.03, 2)])
    assert pol.hint(1.0) is not None
    assert pol.hint(61.0) is None  # the window moved past them
    pol = HintPolicy(cfg)
    _feed(pol, 0.0, [("crack", "crack", 0.03, 10), ("crack", "scratch", 0.03, 3)])
    assert pol.hint(1.0) is None  # the cameras name it: 3 misses of 13 < min_miss


def test_the_service_publishes_renews_and_withdraws_the_hint(tmp_path: Path) -> None:
    """Through the real service: labelled uploads of a class the cameras call something else (``yellow``,
    predicted ``red``) make ``publish_hint`` publish a retained JSON report asking for more ``red``; it is renewed
    once half its life is gone and withdrawn (an empty boost) once the labels in the window show no miss."""
    import dataclasses
    import shutil
    import time

    import numpy as np

    from protocol.reports import decode_report
    from trainer.service import TrainerService

    state = tmp_path / "state"
    shutil.copytree(_boot(tmp_path), state)
    svc = TrainerService(service_config(state, **{"hints.enabled": True, "hints.ttl_s": 2.0, "hints.window_s": 3.0}))
    sent: list = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sent.append((topic, decode_report(payload, "selection_hint"), qos, retain))

    def upload(n0: int, truth: str, predicted: str, n: int) -> None:
        rng = np.random.default_rng(n0)
        svc.store.add_batch([dataclasses.replace(incoming(f"h{n0 + i}", truth, rng, seq=n0 + i, p_select=0.03),
                                                 topk=[(predicted, 0.9), ("green", 0.05)]) for i in range(n)])
        svc.step()  # the oracle labels them; the service reads them once

    try:
        assert svc.publish_hint(publish) is None and not sent  # nothing missed: nothing published
        upload(0, "yellow", "red", 6)
        upload(100, "red", "red", 4)
        h = svc.publish_hint(publish)
        assert h is not None and len(sent) == 1
        topic, msg, qos, retain = sent[0]
        assert topic == svc.topics.selection_hint() and qos == 1 and retain
        assert msg.boost == {"red": 10.0} and msg.device == "trainer" and "yellow: 6 of 6" in msg.reason
        assert svc.hint_in_force == {"red": 10.0}  # edgeloop_trainer_selection_hint_labels 1
        svc.publish_hint(publish)
        assert len(sent) == 1  # unchanged, not due for renewal
        time.sleep(1.1)
        svc.publish_hint(publish)
        assert len(sent) == 2 and sent[1][1].expires > msg.expires  # renewed
        time.sleep(2.0)  # the misses leave the window; the cameras now name yellow
        upload(200, "yellow", "yellow", 6)
        svc.publish_hint(publish)
        assert len(sent) == 3 and sent[2][1].boost == {} and svc.hint_changes == 2 and svc.hint_in_force == {}
        svc.publish_hint(publish)
        assert len(sent) == 3
    finally:
        svc.stop()


def test_hints_are_on_by_default_and_can_be_switched_off(tmp_path: Path) -> None:
    import shutil

    from trainer.service import TrainerService

    state = tmp_path / "state"
    shutil.copytree(_boot(tmp_path), state)
    for enabled in (None, False):
        svc = TrainerService(service_config(state, **({} if enabled is None else {"hints.enabled": enabled})))
        try:
            for _ in range(8):
                svc.hints.observe(0.0, "yellow", "red", 0.03)
            h = svc.selection_hint(now=1.0)
            assert (h is not None and h.boost == {"red": 10.0}) if enabled is None else h is None
            if enabled is False:
                assert svc.publish_hint(lambda *a: None) is None
        finally:
            svc.stop()
