"""The demo's own goal checks (deploy/demo/goals.py): fleet curve, worst window, recovery, the new class, medians."""
from __future__ import annotations

from typing import Any

from deploy.demo.goals import fleet_curve, format_goals, median_goals, run_goals

TIMELINE = {"stream_s": 60.0, "fps": 15.0, "lighting_s": 20.0, "newclass_s": 40.0, "ramp_s": 4.0,
            "newclass": "crack=0.2"}
LABELS = ["ok", "crack"]


def _points(loop: Any, frozen: Any, every: float = 2.0, until: float = 60.0) -> list[dict[str, Any]]:
    """A camera's stats points every ``every`` s; ``loop``/``frozen`` map a stream second to an accuracy."""
    out, t = [], every
    while t <= until + 1e-9:
        out.append({"t": t, "loop": loop(t), "frozen": frozen(t)})
        t += every
    return out


def _confusion(crack_right: int, crack_n: int) -> dict[str, Any]:
    return {"labels": LABELS, "models": {"final": {"matrix": [[50, 0], [crack_n - crack_right, crack_right]]}}}


def _acc(before: float, after: float) -> dict[str, float]:
    return {"before_drift": before, "after_drift_final": after}


def test_a_run_that_holds_every_goal_is_met() -> None:
    cam = _points(lambda t: 0.98 if t < 22 else 0.95, lambda t: 0.98 if t < 22 else 0.5)
    g = run_goals({"c1": cam, "c2": cam}, TIMELINE, _acc(0.98, 0.92), _confusion(85, 100))
    assert g["met"] and g["new_class"] == "crack"
    assert g["checks"]["recover_lighting_s"]["value"] == 0.0  # 0.95 never left the band of 0.98 - 5 points
    assert g["checks"]["new_class_recall"]["value"] == 85.0 and g["checks"]["worst_window"]["value"] >= 0


def test_the_loop_below_the_frozen_model_after_the_drift_fails_the_worst_window() -> None:
    """Only after the lighting change: before it, the loop's own noise against v0001 is not a drift's cost."""
    cam = _points(lambda t: 0.90 if t < 20 else (0.80 if 30 <= t < 34 else 0.97),
                  lambda t: 0.97 if t < 20 else 0.85)
    g = run_goals({"c1": cam}, TIMELINE, _acc(0.98, 0.95), _confusion(90, 100))
    assert g["checks"]["worst_window"] == {"value": -5.0, "met": False} and not g["met"]


def test_recovery_counts_from_the_drift_until_back_within_five_points() -> None:
    dip = _points(lambda t: 0.98 if t < 20 else (0.60 if t < 31 else 0.95), lambda t: 0.5)
    never = _points(lambda t: 0.98 if t < 20 else 0.60, lambda t: 0.5)
    assert run_goals({"c": dip}, TIMELINE, _acc(0.98, 0.95), None)["checks"]["recover_lighting_s"]["value"] == 12.0
    g = run_goals({"c": never}, TIMELINE, _acc(0.98, 0.6), None)
    assert g["checks"]["recover_lighting_s"] == {"value": None, "met": False}
    assert g["checks"]["new_class_recall"] == {"value": None, "met": False}  # no confusion panel: not measured


def test_a_camera_that_stopped_publishing_drops_out_of_the_fleet_curve() -> None:
    """Its last value is not carried forward: the fleet curve is what the cameras that still report say."""
    a = _points(lambda t: 1.0, lambda t: 1.0)
    b = _points(lambda t: 0.5, lambda t: 0.5, until=20.0)
    grid, loop, frozen = fleet_curve({"a": a, "b": b}, 60.0)
    assert loop[int(10 / (grid[1] - grid[0]))] == 0.75 and loop[-1] == 1.0 and frozen[-1] == 1.0


def test_the_median_of_runs_judges_each_goal_and_an_unmeasured_run_counts_against() -> None:
    def run(after: float, rec: float | None) -> dict[str, Any]:
        return {"checks": {"after_both_drifts": {"value": after}, "before_drift": {"value": 98.0},
                           "new_class_recall": {"value": 81.0}, "worst_window": {"value": 1.0},
                           "recover_lighting_s": {"value": rec}}}

    m = median_goals([run(89.0, 10.0), run(91.0, None), run(92.0, None)])
    assert m["checks"]["after_both_drifts"] == {"value": 91.0, "met": True}
    assert m["checks"]["recover_lighting_s"] == {"value": None, "met": False} and not m["met"]
    assert m["per_run"]["after_both_drifts"] == [89.0, 91.0, 92.0] and m["runs"] == 3
    lines = format_goals(m)
    assert any("recover_lighting_s" in x and "NOT met" in x and "10.0 / - / -" in x for x in lines), lines


def test_demo_goals_judges_earlier_runs_and_exits_by_the_result(tmp_path, capsys) -> None:
    """``edgeloop demo --goals DIR...``: 0 only when the median meets every goal; a run without goals or without a
    summary is refused by name (2), not counted."""
    import json

    from deploy.demo.cli import main

    cam = _points(lambda t: 0.98 if t < 22 else 0.95, lambda t: 0.98 if t < 22 else 0.5)
    good = run_goals({"c": cam}, TIMELINE, _acc(0.98, 0.92), _confusion(85, 100))
    bad = run_goals({"c": cam}, TIMELINE, _acc(0.98, 0.85), _confusion(85, 100))
    for name, g in (("a", good), ("b", good), ("c", bad), ("old", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"goals": g} if g else {"accuracy": {}}))
    assert main(["--goals", *(str(tmp_path / n) for n in "abc")]) == 0
    assert "92.0 / 92.0 / 85.0" in capsys.readouterr().out
    assert main(["--goals", *(str(tmp_path / n) for n in "acc")]) == 1
    assert "NOT met" in capsys.readouterr().out
    assert main(["--goals", str(tmp_path / "a"), str(tmp_path / "old")]) == 2
    assert "old/summary.json has no goals" in capsys.readouterr().err
    assert main(["--goals", str(tmp_path / "missing")]) == 2
