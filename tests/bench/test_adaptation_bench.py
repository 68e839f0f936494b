"""bench adaptation's pieces that decide its numbers: the demo's streams, the rollout timing, the simulated clock,
and the metrics (rolling accuracy, recovery time, worst window, goals) on hand-made traces.

The end-to-end run is exercised by ``bench all --quick`` (tests/bench/test_bench_all_quick.py)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from bench import adaptation as ad
from bench.adaptation_loop import Clock, RunTrace, plan_rollout, sim_clock


def test_default_scenario_streams_are_the_demos() -> None:
    from deploy.demo.plan import DemoOptions, camera_seed, plan_timeline, sim_url

    sc = ad.scenarios()["default"]
    tl = plan_timeline(ad.STREAM_S, ad.FPS, "parts")
    for k in range(4):
        assert sc.url(camera_seed(0, k), ad.FPS) == sim_url(DemoOptions(), camera_seed(0, k), tl, realtime=False)
    assert [e[0] for e in sc.events()] == [tl.lighting_s, tl.newclass_s]
    assert set(ad.scenarios()) == {"default", "blur", "noise", "prior", "newclass", "digits"}
    assert "newclass:5-9" in ad.scenarios()["digits"].url(1, 15) and "classes=0-4" in ad.scenarios()["digits"].url(1, 15)


def test_rollout_waves_follow_the_controller() -> None:
    r = plan_rollout("v2", None, 10.0, 4, (0.05, 0.25, 1.0), soak=5.0, delay=0.5, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    # wave 1 (one camera) after the delivery and its soak; wave 2 adds nobody and is skipped; wave 3 takes the rest
    assert [round(t, 2) for t, _ in r.swaps] == [10.5, 16.0]
    assert len(r.swaps[0][1]) == 1 and sorted(r.swaps[0][1] + r.swaps[1][1]) == [0, 1, 2, 3]
    assert r.end == pytest.approx(21.0)
    # one camera: the canary is everyone; wave 2 is skipped, the last wave is not (it soaks, as the controller's does)
    one = plan_rollout("v2", None, 0.0, 1, (0.05, 0.25, 1.0), soak=5.0, delay=0.5, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    assert [c for _, c in one.swaps] == [[0]] and one.end == pytest.approx(10.5)


def test_a_weights_only_version_is_planned_on_the_demos_weights_only_waves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The demo's policy sends a version that only changes weights to every camera at once (#62); the loop asks the
    controller's own check on the real files, and plans that rollout as one wave that soaks before the next."""
    from bench.adaptation_loop import weights_only
    from deploy.demo.plan import WEIGHTS_ONLY_WAVES, demo_policy
    from model_factory import make_onnx_model

    assert demo_policy(127.0).weights_only_waves == WEIGHTS_ONLY_WAVES == [1.0]
    demo, _ = ad.run_one_settings("default", 0, "demo", upper=False)
    canary, _ = ad.run_one_settings("default", 0, "demo-canary", upper=False)
    assert demo.weights_only_waves == (1.0,) and canary.weights_only_waves is None
    a = make_onnx_model(tmp_path / "a.onnx", version="v0001")
    b = make_onnx_model(tmp_path / "b.onnx", version="v0002", seed=1, train_steps=5)
    grown = make_onnx_model(tmp_path / "c.onnx", version="v0003", labels=["0", "1", "2"])
    assert weights_only(b, a) and not weights_only(grown, a)
    r = plan_rollout("v2", None, 10.0, 4, (1.0,), soak=5.0, delay=0.5, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    assert [(round(t, 2), sorted(c)) for t, c in r.swaps] == [(10.5, [0, 1, 2, 3])] and r.end == pytest.approx(15.5)
    # the bound measured beside it: the next rollout may start once the last wave is delivered
    r = plan_rollout("v2", None, 10.0, 4, (0.05, 0.25, 1.0), soak=5.0, delay=0.5, rng=np.random.default_rng(0),  # type: ignore[arg-type]
                     overlap_last_soak=True)
    assert r.end == pytest.approx(16.0) == r.swaps[-1][0]


def test_the_delivery_is_derived_from_the_rollouts_with_the_canary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Since #62 a freshness run holds direct rollouts (one delivery) beside those with the canary: each kind is
    charged what its own rollouts measured."""
    import json

    from bench.adaptation_loop import stage_times

    from bench.adaptation_loop import CANARY_REPORT_LAG_S

    fig = {"stages": {k: {"p50": v} for k, v in (("label", 0.2), ("update", 3.0), ("evaluation", 0.7),
                                                   ("export", 1.1), ("rollout", 3.0), ("swap", 0.1))},
           "total_p50_s": 20.0, "settings": {"demo_stream_s": 120.0, "rollout": {"soaked_waves": 1}},
           "rollout_by_waves": {"1": {"p50": 1.2}, "2": {"p50": 9.6}}}
    (tmp_path / "both.json").write_text(json.dumps({"benchmarks": [{"name": "freshness", "figures": fig}]}))
    both = stage_times(tmp_path / "both.json")
    assert both["wave_delay_s"] == pytest.approx((9.6 - 4.8) / 2) and both["direct_delay_s"] == pytest.approx(1.3)
    # only direct rollouts (a freshness run's head never grows): a canary wave is their delivery plus the health
    # watch's excess over the soak (and the report's lag after it), spread over its two deliveries as above
    fig["rollout_by_waves"] = {"1": {"p50": 1.2}}
    fig["settings"]["rollout"]["health_s"] = 7.2
    (tmp_path / "direct.json").write_text(json.dumps({"benchmarks": [{"name": "freshness", "figures": fig}]}))
    direct = stage_times(tmp_path / "direct.json")
    assert direct["direct_delay_s"] == pytest.approx(1.3)
    assert direct["wave_delay_s"] == pytest.approx(1.3 + (7.2 + CANARY_REPORT_LAG_S - 4.8) / 2)
    del fig["rollout_by_waves"]
    (tmp_path / "old.json").write_text(json.dumps({"benchmarks": [{"name": "freshness", "figures": fig}]}))
    old = stage_times(tmp_path / "old.json")
    assert old["wave_delay_s"] == pytest.approx(0.05) and "direct_delay_s" not in old  # (3.0 - 4.8) / 2, floored


def test_soaked_waves_counts_the_waves_that_add_a_camera() -> None:
    from deploy.demo.plan import soaked_waves

    assert soaked_waves(4, (0.05, 0.25, 1.0)) == 1   # 5 % and 25 % of 4 are the same camera
    assert soaked_waves(20, (0.05, 0.25, 1.0)) == 2
    assert soaked_waves(1, (0.05, 0.25, 1.0)) == 0


def test_sim_clock_drives_the_trainer_modules_and_is_restored() -> None:
    import trainer.labelers
    import trainer.service
    import trainer.store

    clock = Clock(1_000.0)
    clock.t = 5.0
    with sim_clock(clock):
        assert trainer.service.time.monotonic() == 1_005.0 and trainer.store.time.time() == 1_005.0
        assert trainer.labelers.time.time() == 1_005.0
    assert trainer.service.time is time and trainer.store.time is time and trainer.labelers.time is time


def test_rolling_and_recovery_time() -> None:
    c = np.array([1, 0, 1, 1], float)
    assert np.allclose(ad.rolling(c, 2), [1.0, 0.5, 0.5, 1.0])
    fps = 10.0
    curve = np.concatenate([np.full(20, 0.5), np.linspace(0.5, 0.95, 30), np.full(10, 0.95)])
    t = ad.recovery_time(curve, 0.95, fps)
    assert t is not None and 4.0 < t < 5.0  # back within 5 points of 0.95 once the ramp passes 0.90
    assert ad.recovery_time(np.full(10, 0.93), 0.95, fps) == 0.0   # never fell out of the band
    assert ad.recovery_time(np.full(10, 0.5), 0.95, fps) is None   # fell and never came back


def _trace(n: int = 300, fps: float = 10.0) -> RunTrace:
    """Two cameras; frozen breaks at the drift (t = 10 s), the loop recovers 10 s later."""
    labels = ["ok", "scratch", "dent", "stain", "crack"]
    truth = [np.arange(n) % 5 for _ in range(2)]
    frozen = [np.r_[np.ones(100), np.zeros(n - 100)].astype(np.uint8) for _ in range(2)]
    loop = [np.r_[np.ones(100), np.zeros(100), np.ones(n - 200)].astype(np.uint8) for _ in range(2)]
    return RunTrace(fps=fps, labels=labels, truth=truth, loop=loop, frozen=frozen, upper=[np.ones(n, np.uint8)] * 2,
                    loop_pred=truth, drift=[np.zeros(n, np.uint8)] * 2, version=[["v1"] * n] * 2, uploads=[0, 0])


def test_metrics_and_goals_on_a_hand_made_trace() -> None:
    sc = ad.Scenario("x", "parts", (("blur:2", 10.0, "blur"),), ramp_s=0.0)
    m = ad.metrics(_trace(), sc, window_s=1.0, upper=True)
    loop, frozen = m["arms"]["loop"], m["arms"]["frozen"]
    assert loop["before_drift"] == pytest.approx(100.0) and frozen["final"] == pytest.approx(0.0)
    assert loop["final"] == pytest.approx(100.0) and m["arms"]["upper"]["final"] == pytest.approx(100.0)
    d = loop["drifts"][0]
    # back at t = 20 s; the 1 s rolling window is full of right answers 0.9 s later
    assert d["auc"] == pytest.approx(50.0) and d["recover_s"] == pytest.approx(10.9, abs=0.15)
    assert frozen["drifts"][0]["recover_s"] is None
    assert loop["recall"]["crack"] == pytest.approx(100.0)
    assert m["worst_window"]["loop_minus_frozen"] == pytest.approx(0.0)
    row = {**m, "scenario": "default", "seed": 0, "variant": "demo", "freshness_p50_s": 20.0, "uploads": 10,
           "promoted": 2, "seconds": 1.0}
    summary = ad.summarise([row, {**row, "seed": 1}, {**row, "seed": 2}])
    g = ad.goals(summary)
    assert g["checks"]["after_both_drifts_ge_90"]["met"] and g["checks"]["recover_lighting_le_45s"]["met"]
    assert g["met"] is True
    worse = {**row, "arms": {**row["arms"], "loop": {**loop, "final": 70.0}}}
    assert ad.goals(ad.summarise([worse, {**worse, "seed": 1}, {**worse, "seed": 2}]))["met"] is False
    assert ad.goals(ad.summarise([row]))["met"] is False  # one seed never meets a three-seed goal
    ag = ad.demo_agreement(summary)
    assert ag is not None and ag["final_loop"]["diff"] == pytest.approx(100.0 - ad.DEMO_REFERENCE["final_loop"][1])


def test_the_calibrated_frozen_control_is_an_arm_of_its_own() -> None:
    """The frozen v0001 behind the cameras' calibration is scored like the others when the trace has it (how much
    of the loop's gain the edge gets without labels), and traces without it keep the three arms."""
    sc = ad.Scenario("x", "parts", (("blur:2", 10.0, "blur"),), ramp_s=0.0)
    tr = _trace()
    assert "frozen_cal" not in ad.metrics(tr, sc, window_s=1.0, upper=False)["arms"]
    n = len(tr.truth[0])
    tr.frozen_cal = [np.r_[np.ones(150), np.zeros(n - 150)].astype(np.uint8) for _ in range(2)]
    m = ad.metrics(tr, sc, window_s=1.0, upper=False)
    cal = m["arms"]["frozen_cal"]
    assert cal["before_drift"] == pytest.approx(100.0) and cal["final"] == pytest.approx(0.0)
    assert cal["drifts"][0]["auc"] == pytest.approx(25.0)  # right for the first 5 of the 20 s after the drift
    # the loop is wrong from 10 to 20 s, the calibrated model from 15 s on: loop minus calibrated is -1 over 10-15 s,
    # 0 over 15-20 s, +1 after; the first 10 s window holding the whole -1 stretch starts at 5 s (from the start,
    # not from the drift: updates before a drift can cost too)
    assert m["worst_window_cal"]["loop_minus_frozen_cal"] == pytest.approx(-50.0)
    assert m["worst_window_cal"]["from_s"] == pytest.approx(5.0)
    row = {**m, "scenario": "default", "seed": 0, "variant": "demo", "freshness_p50_s": 20.0, "uploads": 10,
           "promoted": 2, "seconds": 1.0}
    assert "frozen_cal" in ad.summarise([row])["demo/default"]["arms"]
    assert ad.summarise([row])["demo/default"]["worst_window_loop_minus_frozen_cal"] == pytest.approx(-50.0)
    assert "frozen_cal" in ad.format_table(ad.summarise([row]))


def test_run_one_settings_merge_a_variants_overrides_into_the_demos() -> None:
    s, (kind, boot) = ad.run_one_settings("default", 0, "distill-off", upper=False)
    assert kind == "parts" and boot == {} and s.upper_bound is False
    assert s.strategy_settings == {"distill": 0.0} and s.update["steps"] == 40  # the demo's update settings kept
    s, (_, boot) = ad.run_one_settings("default", 0, "boot40", boot={"frames": 400})
    assert boot == {"epochs": 40, "frames": 400}  # the variant's bootstrap options, then the caller's
    s, _ = ad.run_one_settings("default", 0, "lr-low")
    assert s.update["lr"] == 3e-4 and s.update["batch"] == 32


def test_final_window_set_is_the_final_window_as_the_cameras_saw_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The replay's test set: frames after both drifts only, preprocessed through the camera's input calibration
    (which by then follows the darker light), so it differs from the raw preprocessing of the same frames."""
    from bench.adaptation_replay import final_window_set
    from tests.model_factory import PARTS_LABELS, make_onnx_model

    model = make_onnx_model(tmp_path / "m.onnx", arch="small_cnn", labels=PARTS_LABELS, train_steps=2,
                            exporter="torchscript")
    x_cal, y = final_window_set("default", 0, cameras=1, every=25, boot_model=model)
    x_raw, y_raw = final_window_set("default", 0, cameras=1, every=25, boot_model=model, calibration="off")
    sc = ad.scenarios()["default"]
    lo = max(sc.events()[-1][0] + sc.ramp_s + 8.0, 0.8 * ad.STREAM_S)
    first = int(np.ceil(lo * ad.FPS / 25)) * 25
    assert len(y) == len(range(first, int(ad.STREAM_S * ad.FPS), 25)) and y == y_raw
    assert set(y) <= set(PARTS_LABELS) | {"crack"} and "crack" in y  # the new class is in the window
    assert x_cal.shape == x_raw.shape and float(np.abs(x_cal - x_raw).mean()) > 0.01


def test_bootstrap_cache_names_the_architecture() -> None:
    """A state bootstrapped for one architecture was once reused for another (the key left the scenario's own
    architecture out, and the scenario's architecture was what changed); states of the old archs keep their keys."""
    plain, arch, _ = ad.bootstrap_options("parts", 0, {})
    assert arch == "small_cnn"
    assert ad.bootstrap_options("parts", 0, {"arch": "small_cnn"})[0] == plain
    assert ad.bootstrap_options("parts", 0, {"input_size": 64})[0] == plain  # small_cnn's own size
    cnn128, arch128, opts = ad.bootstrap_options("parts", 0, {"arch": "small_cnn128"})
    assert arch128 == "small_cnn128" and opts["arch"] == "small_cnn128" and cnn128 != plain
    raw128 = ad.bootstrap_options("parts", 0, {"arch": "small_cnn", "input_size": 128})[0]
    assert len({plain, cnn128, raw128}) == 3 and ad.bootstrap_options("parts", 1, {})[0] != plain


def test_a_costlier_variant_is_charged_its_trainer_time() -> None:
    from bench.net_costs import CNN128_EVAL_COST, CNN128_UPDATE_COST

    base, _ = ad.run_one_settings("default", 0, "base")
    cnn, (_, boot) = ad.run_one_settings("default", 0, "cnn128")
    assert cnn.update_s == pytest.approx(base.update_s * CNN128_UPDATE_COST)
    assert cnn.evaluate_s == pytest.approx(base.evaluate_s * CNN128_EVAL_COST)
    assert cnn.export_s == base.export_s and boot == {"arch": "small_cnn128"}


def test_the_demo_variant_is_the_demos_net_and_learner_charged_what_they_cost() -> None:
    """``demo`` follows deploy/demo/plan.py: on parts small_cnn128 with its learner (frozen blocks: charged the
    frozen net's cost), on digits the base (the convnet, the trainer's defaults); every other variant keeps the base."""
    from bench.net_costs import stage_scale
    from deploy.demo.plan import SCENARIOS

    base, (_, base_boot) = ad.run_one_settings("default", 0, "base")
    demo, (_, boot) = ad.run_one_settings("default", 0, "demo")
    assert boot == {"arch": SCENARIOS["parts"]["arch"]} and base_boot == {}
    assert demo.strategy_settings == {"augment": "dihedral", "frozen_blocks": 2}
    assert demo.update["rehearse_rounds"] == 2 and demo.eval == {"paired": "new-class", "weighted": True}
    scale = stage_scale("small_cnn128", 2)
    assert demo.update["steps"] == SCENARIOS["parts"]["learner_steps"] == 20 and base.update["steps"] == 40
    assert demo.update["lr"] == SCENARIOS["parts"]["learner_lr"] == 3e-3 and base.update["lr"] == 1e-3
    # its v0001 trained as long as the demo trains it (README #65)
    assert ad.bootstrap_options("parts", 0, boot)[2]["epochs"] == SCENARIOS["parts"]["learner_boot_epochs"]
    # the rows measured with the demo's learner before its rate changed keep theirs (README #62, #63)
    assert ad.run_one_settings("default", 0, "demo-k40")[0].update == {**demo.update, "lr": 1e-3, "steps": 40}
    assert demo.update_s == pytest.approx(base.update_s * scale["update_s"] * 20 / 40)  # charged by its steps too
    assert demo.evaluate_s == pytest.approx(base.evaluate_s * scale["evaluate_s"])
    digits, (kind, dboot) = ad.run_one_settings("digits", 0, "demo")
    digits_base, _ = ad.run_one_settings("digits", 0, "base")
    assert kind == "digits" and ad.bootstrap_options(kind, 0, dboot)[1] == "convnet"
    assert digits.strategy_settings == {} and digits.update_s == digits_base.update_s
    with pytest.raises(KeyError, match="small_cnn128.*4 frozen"):
        stage_scale("small_cnn128", 4)


def test_a_freshness_run_on_another_net_is_charged_back_to_the_reference(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A freshness run that records its net and learner (the demo's since #60) is brought back to small_cnn at
    64x64, whole, before the variants' costs are applied: the demo variant is then charged what was measured."""
    import json

    from bench.adaptation_loop import stage_times
    from bench.net_costs import stage_scale
    from trainer.nets import NETS_LAYOUT

    fig = {"stages": {k: {"p50": v} for k, v in (("label", 0.2), ("update", 3.0), ("evaluation", 0.7),
                                                   ("export", 1.1), ("rollout", 9.0))}, "total_p50_s": 25.0}
    fig["settings"] = {"nets": NETS_LAYOUT, "arch": "small_cnn128", "frozen_blocks": 2}
    (tmp_path / "r.json").write_text(json.dumps({"benchmarks": [{"name": "freshness", "figures": fig}]}))
    st, scale = stage_times(tmp_path / "r.json"), stage_scale("small_cnn128", 2)
    assert st["update_s"] * scale["update_s"] == pytest.approx(3.0)
    assert st["evaluate_s"] * scale["evaluate_s"] == pytest.approx(0.7)
    assert st["export_s"] == 1.1 and st["label_delay_s"] == 0.2


def test_the_update_is_charged_by_its_optimiser_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The freshness run records its steps per update; a loop with other steps is charged in proportion (runs
    from before the record count as 20 steps, the demo's then)."""
    import json

    from bench.adaptation_loop import stage_times

    fig = {"stages": {k: {"p50": v} for k, v in (("label", 0.2), ("update", 3.0), ("evaluation", 0.7),
                                                   ("export", 1.1), ("rollout", 9.0))}, "total_p50_s": 25.0}
    doc = {"benchmarks": [{"name": "freshness", "figures": fig}]}
    (tmp_path / "old.json").write_text(json.dumps(doc))
    fig["settings"] = {"update": {"steps": 40}}
    (tmp_path / "new.json").write_text(json.dumps(doc))
    assert stage_times(tmp_path / "old.json")["update_steps"] == 20
    assert stage_times(tmp_path / "new.json")["update_steps"] == 40
    measured = stage_times(ad.ROOT / "bench" / "results.json")
    demo, _ = ad.run_one_settings("default", 0, "base")
    k20, _ = ad.run_one_settings("default", 0, "k20")
    assert demo.update["steps"] == 40 and k20.update["steps"] == 20
    assert demo.update_s == pytest.approx(measured["update_s"] * 40 / measured["update_steps"])
    assert k20.update_s == pytest.approx(demo.update_s / 2)


def test_a_freshness_run_on_the_nets_before_channels_last_is_charged_as_the_nets_are_now(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The run of record trained the nets before they went channels-last: its update and evaluation are scaled by
    the measured ratio; a run that records its nets is charged as measured; the other stages never."""
    import json

    from bench.adaptation_loop import NETS_NOW_OVER_BEFORE, stage_times
    from trainer.nets import NETS_LAYOUT

    fig = {"stages": {k: {"p50": v} for k, v in (("label", 0.2), ("update", 3.0), ("evaluation", 0.7),
                                                   ("export", 1.1), ("rollout", 9.0))}, "total_p50_s": 25.0}
    doc = {"benchmarks": [{"name": "freshness", "figures": fig}]}
    (tmp_path / "before.json").write_text(json.dumps(doc))
    fig["settings"] = {"nets": NETS_LAYOUT}
    (tmp_path / "now.json").write_text(json.dumps(doc))
    before, now = stage_times(tmp_path / "before.json"), stage_times(tmp_path / "now.json")
    assert now["update_s"] == 3.0 and now["evaluate_s"] == 0.7
    assert before["update_s"] == pytest.approx(3.0 * NETS_NOW_OVER_BEFORE["update_s"]) and before["update_s"] < 3.0
    assert before["evaluate_s"] == pytest.approx(0.7 * NETS_NOW_OVER_BEFORE["evaluate_s"]) and before["evaluate_s"] < 0.7
    assert all(before[k] == now[k] for k in ("label_delay_s", "export_s", "wave_delay_s"))


def test_every_variants_strategy_settings_are_settings_its_strategy_has() -> None:
    """A misspelt setting in a variant fails here, not ten minutes into a benchmark run."""
    from trainer.strategies import strategy_settings

    for name in ad.variants():
        s, _ = ad.run_one_settings("default", 0, name)
        strategy_settings(s.strategy, s.strategy_settings)  # ValueError naming the key otherwise
    demo, _ = ad.run_one_settings("default", 0, "base")
    k60, _ = ad.run_one_settings("default", 0, "dihedral-k60")
    assert k60.update["steps"] == 60 and k60.update_s == pytest.approx(1.5 * demo.update_s)  # demo: 40 steps
    assert k60.strategy_settings == {"augment": "dihedral"} and demo.strategy_settings == {}


def test_every_variants_trainer_settings_load_and_rehearsal_is_charged_by_its_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A variant's update / eval keys are trainer config keys (a typo fails here), and the loop charges a
    rehearsal round its share of the measured update time by steps, an evaluation only if it made any."""
    from bench.adaptation_loop import _trainer_config, busy_s

    for name in ad.variants():
        s, _ = ad.run_one_settings("default", 0, name)
        _trainer_config(tmp_path, s, 0)  # ValueError naming the key otherwise
    s, _ = ad.run_one_settings("default", 0, "rehearse-dihedral")
    cfg = _trainer_config(tmp_path, s, 0)
    assert (cfg.update.rehearse_steps, cfg.update.rehearse_rounds, cfg.update.steps) == (20, 3, 40)
    assert busy_s(s, {"kind": "update"}, 20, False) == pytest.approx(s.update_s + s.evaluate_s)
    assert busy_s(s, {"kind": "rehearsal", "steps": 10}, 20, False) == pytest.approx(s.update_s / 2 + s.evaluate_s)
    assert busy_s(s, {"kind": "rehearsal", "steps": 20}, 20, True) == pytest.approx(
        s.update_s + s.evaluate_s + s.export_s)
    assert busy_s(s, {"kind": "rehearsal", "steps": 0}, 20, False) == 0.0


def test_the_trainer_s_hint_reaches_the_simulated_cameras_on_the_simulated_clock() -> None:
    """The loop's cameras take the trainer's hint as EdgeNode does (edge.hints.take_hint), judged against the
    simulated clock: a hint that expires a minute after simulated now is in force, not taken for a stale one
    from the wall clock's point of view (the first cut dropped every hint as expired), and is recorded."""
    from types import SimpleNamespace

    from bench.adaptation_loop import _deliver_hint
    from edge.sampler import Sampler, SamplerConfig
    from protocol.reports import SelectionHint, encode_report

    clock = Clock(1_700_000_000.0)
    clock.t = 80.0
    payload = encode_report(SelectionHint(device="trainer", boost={"scratch": 10.0}, budget_per_minute=40,
                                          expires=clock.time() + 60, reason="crack: 6 of 6"))
    svc = SimpleNamespace(publish_hint=lambda publish: publish("t", payload, 1, True))
    cams = [SimpleNamespace(sampler=Sampler(SamplerConfig(budget_per_minute=40), clock=clock.time)) for _ in range(2)]
    tr = RunTrace(fps=15.0, labels=[], truth=[], loop=[], frozen=[], upper=[], loop_pred=[], drift=[], version=[],
                  uploads=[])
    _deliver_hint(svc, cams, tr, 80.0)  # type: ignore[arg-type]
    assert all(c.sampler.hint is not None and c.sampler.hint.boost == {"scratch": 10.0} for c in cams)
    assert tr.events == [{"t": 80.0, "kind": "hint", "boost": {"scratch": 10.0}, "budget": 40,
                          "reason": "crack: 6 of 6"}]


def test_trace_summary_counts_where_the_new_class_goes() -> None:
    """bench/adaptation_trace.py's summary: frames of the new class between its arrival and ``until`` by what the
    cameras call them, its share of each predicted label, uploads by reason, the first hint that asks."""
    from bench.adaptation_trace import summarise

    def f(t: float, truth: str, pred: str, up: bool = False, why: str | None = None) -> dict:
        return {"camera": 0, "t": t, "truth": truth, "predicted": pred, "uploaded": up, "reason": why}

    frames = [f(1.0, "ok", "ok", True, "uncertain"),                         # before the arrival: not counted
              f(10.0, "crack", "scratch", True, "hint"), f(11.0, "crack", "scratch"), f(12.0, "crack", "ok"),
              f(13.0, "scratch", "scratch"), f(14.0, "ok", "ok", True, "uncertain"), f(15.0, "ok", "ok"),
              f(16.0, "crack", "crack", True, "uncertain"),
              f(30.0, "crack", "crack", True, "uncertain")]                  # after until: only in the end count
    run = {"scenario": "default", "frames": frames, "new_classes": ["crack"], "arrival_s": 10.0,
           "hints": [{"t": 9.5, "boost": {}}, {"t": 10.5, "boost": {"scratch": 10.0}}]}
    s = summarise(run, until=20.0)
    assert s["frames_seen"] == 4 and s["called"] == {"scratch": 2, "ok": 1, "crack": 1}
    assert s["share_of_predicted"] == {"scratch": round(2 / 3, 3), "ok": round(1 / 3, 3)}
    assert s["uploads_by_until"] == 2 and s["uploads_by_until_reason"] == {"hint": 1, "uncertain": 1}
    assert s["uploads_by_end"] == 3 and s["other_uploads_in_span"] == 1 and s["first_hint_s"] == 10.5
    with pytest.raises(ValueError, match="no new class"):
        summarise({**run, "new_classes": []}, until=20.0)


def test_the_replay_bias_probe_lifts_a_shy_class_lowers_a_bold_one_and_needs_evidence() -> None:
    """bench.adaptation_replay's BiC offset (README, Adaptation #49): three classes, class 2 new, each sample's own
    logit ahead by 2, then class 2's logit shifted; the fit undoes the shift and needs 3 samples of class 2."""
    import torch

    from bench.adaptation_replay import fit_new_class_bias

    g = torch.Generator().manual_seed(0)
    for shift in (-2.5, 2.5):
        y = torch.tensor([i % 2 for i in range(200)] + [2] * 50)
        z = torch.randn(len(y), 3, generator=g)
        z[torch.arange(len(y)), y] += 2.0
        z[:, 2] += shift
        b = fit_new_class_bias(z, y, [2], torch.ones(len(y)))
        assert abs(b + shift) < 0.8, (shift, b)
        assert fit_new_class_bias(z, y, [2], torch.ones(len(y)), limit=0.2) == (0.2 if shift < 0 else -0.2)
    few = torch.tensor([0, 1, 2, 2])
    assert fit_new_class_bias(torch.zeros(4, 3), few, [2], torch.ones(4)) == 0.0
    assert fit_new_class_bias(torch.zeros(4, 3), few, [], torch.ones(4)) == 0.0


def test_a_variant_charged_its_own_freshness_run_gets_those_stage_times_at_their_steps() -> None:
    """SLOW_VM and OWN_VM give stage times measured at a number of update steps: charged as measured, neither scaled
    by the run of record's steps (40 since #57, which halved the slow VM's 40-step update) nor by a net's CPU ratio."""
    from bench.adaptation_variants import OWN_VM, SLOW_VM

    for name, steps in (("slowvm-k20", 20), ("slowvm-k40", 40)):
        s, _ = ad.run_one_settings("default", 0, name)
        assert s.update["steps"] == steps and s.update_s == pytest.approx(SLOW_VM[steps]["update_s"])
    own, (_, boot) = ad.run_one_settings("default", 0, "ownvm-cnn128-frozen2")
    stages, steps = OWN_VM["frozen2"]
    assert boot == {"arch": "small_cnn128"} and own.strategy_settings["frozen_blocks"] == 2 and own.update["steps"] == steps
    assert {k: getattr(own, k) for k in stages} == pytest.approx(stages)
    base, _ = ad.run_one_settings("default", 0, "ownvm-base")
    assert base.update["steps"] == 40 and base.update_s == pytest.approx(OWN_VM["base"][0]["update_s"])


def test_collect_leaves_out_a_row_measured_with_other_settings(tmp_path, monkeypatch, capsys) -> None:
    """A saved row is named by its variant, whose meaning can move (``demo`` follows the demo): ``--collect`` takes a
    row only if it was measured with the settings the variant has now, and says which it left out."""
    monkeypatch.setattr(ad, "CACHE", tmp_path)
    s, (_, boot) = ad.run_one_settings("default", 0, "demo", upper=False)
    row = {"variant": "demo", "scenario": "default", "seed": 0, "stream_s": ad.STREAM_S, "cameras": 4, "upper": False}
    ad.save_row({**row, "settings_key": ad.settings_key(s, boot)})
    assert len(ad.load_rows(["default"], [0], ["demo"])) == 1
    other, _ = ad.run_one_settings("default", 0, "demo-k40", upper=False)   # another rate and steps
    assert ad.settings_key(other, boot) != ad.settings_key(s, boot)
    ad.save_row({**row, "settings_key": ad.settings_key(other, boot)})
    assert ad.load_rows(["default"], [0], ["demo"]) == []
    assert "demo-default-s0-127s-4c.json was measured with other settings than demo's now" in capsys.readouterr().err
    ad.save_row(row)  # saved before rows recorded their settings: taken as it is
    assert len(ad.load_rows(["default"], [0], ["demo"])) == 1
