"""The demo's chance-level warning: a dead model on the post-drift frames is named, a working one is not."""
from __future__ import annotations

import pytest

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


def test_a_busy_machine_still_gets_a_bootstrap_that_can_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    """However slow the measured step (a loaded box), the demo's bootstrap gets at least MIN_STEPS optimiser
    steps: 2 epochs gave a one-class v0001 at load 4, and the demo ended without a model."""
    pytest.importorskip("torch")
    from deploy.demo import bootstrap as demo_bootstrap

    class SlowClock:  # every timed optimiser step "takes" 5 s
        t = 0.0

        def perf_counter(self) -> float:
            self.t += 5.0
            return self.t

    monkeypatch.setattr(demo_bootstrap, "time", SlowClock())
    epochs, per_sample = demo_bootstrap.bootstrap_epochs("convnet", 1280, budget_s=30.0)
    assert per_sample == pytest.approx(5.0 / 32)
    assert epochs == demo_bootstrap.min_epochs(1280) == 10 and epochs * 1280 // 32 >= demo_bootstrap.MIN_STEPS
    assert demo_bootstrap.min_epochs(320) == 40 and demo_bootstrap.min_epochs(10) == 60
