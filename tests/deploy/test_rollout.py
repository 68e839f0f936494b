"""End-to-end rollouts over a real mosquitto: one controller, 20 light devices running the real updater."""
from __future__ import annotations

import time

import pytest

from conftest import wait_for  # tests/deploy/conftest.py
from deploy.controller import Controller, Policy
from protocol.waves import BUCKETS, in_wave, wave_bucket as controller_bucket

pytestmark = pytest.mark.timeout(120)

FAST = dict(soak=0.5, health_seconds=0.5, wave_timeout=30.0)


def test_waves_grow_monotonically_and_spread_evenly() -> None:
    """Raising ``below`` only ever adds devices, and buckets spread devices evenly across a fleet."""
    devices = [f"dev{i}" for i in range(2000)]
    members = [{d for d in devices if in_wave({"rollout": {"salt": "r1", "below": b}}, d)}
               for b in (500, 2500, BUCKETS)]
    assert members[0] <= members[1] <= members[2] == set(devices)
    assert 0.03 < len(members[0]) / len(devices) < 0.07  # 5 % wave
    assert in_wave({}, "dev1") and not in_wave({"rollout": {"salt": "r1", "below": "x"}}, "dev1")


def _wave1_members(ctl: Controller, rid: str) -> set[str]:
    below = ctl.store.rollout(rid).below
    return {d for d in ctl.fleet.ids() if controller_bucket(rid, d) < below}


def test_good_model_goes_canary_then_full(rollout_env, models) -> None:
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.1, 0.5, 1.0], shadow=10, min_agreement=0.5,
                                                                  shadow_seconds=20, **FAST),
                            previous=("v0001", models["good1"]))
    wait_for(lambda: ctl.store.rollout(rid).wave_published, 10, "wave 1")
    canary = _wave1_members(ctl, rid)
    assert len(canary) == 2
    # Until the canary has soaked, nobody outside it gets the new version.
    wait_for(lambda: all(lf.versions()[d] == "v0002" for d in canary), 30, "canary active")
    assert ctl.store.rollout(rid).wave == 0 or ctl.store.rollout(rid).wave == 1
    assert ctl.wait(rid, 60) == "completed", ctl.store.rollout(rid).reason
    assert set(lf.versions().values()) == {"v0002"}
    kinds = [e.kind for e in ctl.store.events(rid)]
    assert kinds.count("wave") == 3 and kinds[-1] == "completed"
    # Shadow metrics reached the controller from every device.
    assert all(d.status_metrics.get("agreement", 0) >= 0.5 for d in ctl.fleet.devices())


def test_wave_that_adds_no_device_is_skipped(rollout_env, models) -> None:
    """On 4 devices the 25 % wave is the 5 % canary's one device again: it is skipped, not soaked a second time
    (the demo's fleet lost a soak per rollout to it), and the last wave still goes to everyone."""
    ctl, lf = rollout_env(4)
    rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.05, 0.25, 1.0], **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 60) == "completed", ctl.store.rollout(rid).reason
    assert set(lf.versions().values()) == {"v0002"}
    events = ctl.store.events(rid)
    kinds = [e.kind for e in events]
    assert kinds.count("wave") == 2 and kinds.count("wave_skipped") == 1, kinds
    skipped = next(e for e in events if e.kind == "wave_skipped")
    assert "wave 2/3 25%" in skipped.detail and "1 already in" in skipped.detail
    assert ctl.counters["waves_skipped"] == 1 and ctl.counters["waves_published"] == 2


def test_the_soak_runs_beside_the_devices_health_watch(rollout_env, models) -> None:
    """A wave advances once its devices reported healthy and it has been out for the soak, not a soak after the
    reports: the demo's canary waited its 7.2 s health watch and then 4.8 s more (bench freshness 36 s, goal 30).
    The canary's soak is made to have begun long ago; the wave goes on as soon as the report is in."""
    ctl, lf = rollout_env(4)
    with ctl._lock:  # the controller's own ticks wait while the wave's clock is set back
        rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.25, 1.0], soak=600, health_seconds=1.0,
                                                                 wave_timeout=900),
                                previous=("v0001", models["good1"]))
        ctl.tick()
        r = ctl.store.rollout(rid)
        assert r.wave_published and r.wave == 0
        ctl.store._update(rid, "wave_started=?", (time.time() - 600,))  # out for the whole soak already
    # the canary's wave goes on as soon as its report is in, not 600 s after it
    wait_for(lambda: ctl.store.rollout(rid).wave == 1, 30, "the canary's wave to advance on its health report")
    wait_for(lambda: set(lf.versions().values()) == {"v0002"}, 30, "the last wave on every device")
    assert ctl.store.rollout(rid).state == "running"  # the last wave soaks its own 600 s


def test_a_wave_does_not_advance_before_its_soak_even_when_reported_healthy(rollout_env, models) -> None:
    ctl, lf = rollout_env(4)
    rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.25, 1.0], soak=600, health_seconds=0.5,
                                                             wave_timeout=900),
                            previous=("v0001", models["good1"]))
    wait_for(lambda: ctl.store.rollout(rid).wave_published, 10, "wave 1")
    canary = _wave1_members(ctl, rid)
    wait_for(lambda: all(lf.versions()[d] == "v0002" for d in canary), 30, "canary active")
    wait_for(lambda: len(ctl.evaluate(ctl.store.rollout(rid)).wave.reporting) >= 1, 30, "the canary's health report")
    time.sleep(1.0)  # ticks every 50 ms: twenty chances to advance too early
    r = ctl.store.rollout(rid)
    assert (r.state, r.wave) == ("running", 0)
    assert {d for d, v in lf.versions().items() if v == "v0002"} == canary


def test_a_weights_only_version_takes_the_weights_only_waves(rollout_env, models) -> None:
    """good2 is good1's graph with other weights: with ``weights_only_waves: [1.0]`` it goes to every device in one
    wave, said in an event and counted; the stored policy is the one it ran."""
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.1, 0.5, 1.0], weights_only_waves=[1.0], **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 60) == "completed", ctl.store.rollout(rid).reason
    assert set(lf.versions().values()) == {"v0002"}
    events = ctl.store.events(rid)
    kinds = [e.kind for e in events]
    assert kinds.count("wave") == 1 and kinds.count("weights_only") == 1, kinds
    assert "differs from v0001 only in its weights" in next(e for e in events if e.kind == "weights_only").detail
    assert ctl.store.rollout(rid).policy.waves == [1.0]
    assert ctl.counters["rollouts_weights_only"] == 1


def test_a_weights_only_version_with_nan_weights_is_refused_everywhere_and_rolled_back(rollout_env, models) -> None:
    """The fast path skips the canary, not the checks: every device's smoke test refuses NaN outputs before it
    swaps, the wave fails, and the fleet keeps (and is rolled back to) v0001."""
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout("v0003", models["nan"], Policy(waves=[0.1, 1.0], weights_only_waves=[1.0], **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 30) == "rolled_back"
    assert "weights_only" in [e.kind for e in ctl.store.events(rid)]
    assert "smoke_test" in ctl.store.rollout(rid).reason
    assert set(lf.versions().values()) == {"v0001"}


def test_a_version_that_is_not_only_new_weights_keeps_the_canary(rollout_env, models) -> None:
    """The same graph with another input spec in its metadata is not a weights-only change: the full waves, and the
    canary stops it."""
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout("v0004", models["shape"], Policy(waves=[0.1, 1.0], weights_only_waves=[1.0], **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 30) == "rolled_back"
    r = ctl.store.rollout(rid)
    assert r.wave == 0 and r.policy.waves == [0.1, 1.0] and "input_mismatch" in r.reason
    assert "weights_only" not in [e.kind for e in ctl.store.events(rid)]
    assert ctl.counters["rollouts_weights_only"] == 0
    touched = {d.device for d in ctl.fleet.devices() if d.rollout_id == rid and d.model_version != "v0001"}
    assert touched <= _wave1_members(ctl, rid)
    assert set(lf.versions().values()) == {"v0001"}


@pytest.mark.parametrize("bad, version, reason", [("nan", "v0003", "smoke_test"),
                                                  ("shape", "v0004", "input_mismatch")])
def test_broken_model_stops_at_canary_and_rolls_back(rollout_env, models, bad, version, reason) -> None:
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout(version, models[bad], Policy(waves=[0.1, 1.0], **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 30) == "rolled_back"
    r = ctl.store.rollout(rid)
    assert r.wave == 0 and reason in r.reason
    canary = _wave1_members(ctl, rid)
    # Only canary devices ever saw it; everyone still runs the good model.
    touched = {d.device for d in ctl.fleet.devices() if d.rollout_id == rid and d.model_version != "v0001"}
    assert touched <= canary
    assert set(lf.versions().values()) == {"v0001"}


def test_low_agreement_model_stops_at_canary(rollout_env, models) -> None:
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout("v0005", models["untrained"],
                            Policy(waves=[0.1, 1.0], shadow=15, shadow_seconds=20, min_agreement=0.9, **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 40) == "rolled_back"
    assert "low_agreement" in ctl.store.rollout(rid).reason
    assert set(lf.versions().values()) == {"v0001"}  # devices refused to swap; nobody ran it


def test_controller_killed_mid_rollout_continues(rollout_env, models, mosquitto_broker, keys, topic_prefix,
                                                 tmp_path) -> None:
    ctl, lf = rollout_env(20)
    rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.1, 0.5, 1.0], soak=1.0, health_seconds=0.5,
                                                                  wave_timeout=30),
                            previous=("v0001", models["good1"]))
    wait_for(lambda: ctl.store.rollout(rid).wave >= 1, 30, "wave 2")
    ctl.kill()
    on_new = sum(v == "v0002" for v in lf.versions().values())
    assert on_new < 20
    ctl2 = Controller(mosquitto_broker.url, keys["priv"], tmp_path / "ctl", prefix=topic_prefix, tick_s=0.05).start()
    try:
        assert ctl2.wait(rid, 60) == "completed"
        assert set(lf.versions().values()) == {"v0002"}
    finally:
        ctl2.stop()


def test_offline_device_gets_target_when_it_returns(rollout_env, models) -> None:
    ctl, lf = rollout_env(10)
    away = "dev0003"
    lf.devices[away].kill()
    wait_for(lambda: not ctl.fleet.get(away).online, 10, "device offline")
    rid = ctl.start_rollout("v0002", models["good2"], Policy(waves=[0.2, 1.0], **FAST),
                            previous=("v0001", models["good1"]))
    assert ctl.wait(rid, 60) == "completed"
    st = ctl.status(rid)
    assert st["devices"].get("offline", 0) == 1
    dev = lf.restart(away)
    wait_for(lambda: dev.updater.active_version == "v0002", 30, "returning device updated")
