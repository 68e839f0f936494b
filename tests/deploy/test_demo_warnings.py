"""The demo's chance-level warning: a dead model on the post-drift frames is named, a working one is not."""
from __future__ import annotations

from deploy.demo.report import chance_warnings


def _conf(matrix: list[list[int]], version: str = "v0009") -> dict:
    return {"labels": ["ok", "scratch", "crack"], "frames": sum(map(sum, matrix)), "seed": 99, "first_index": 0,
            "models": {"final": {"version": version, "matrix": matrix, "accuracy": 0.0}}}


def test_a_model_that_answers_one_class_is_named_loudly() -> None:
    dead = _conf([[30, 0, 0], [30, 0, 0], [30, 0, 0]])  # every frame called "ok"
    (w,) = chance_warnings(dead)
    assert "final model v0009" in w and "predicts one class" in w and "CHANCE LEVEL" in w


def test_a_spread_out_guess_is_at_chance_and_a_working_model_is_quiet() -> None:
    guess = _conf([[10, 10, 10], [10, 10, 10], [10, 10, 10]])
    assert "accuracy at chance" in chance_warnings(guess)[0]
    good = _conf([[28, 1, 1], [2, 27, 1], [3, 3, 24]])
    assert chance_warnings(good) == [] and chance_warnings(None) == []
