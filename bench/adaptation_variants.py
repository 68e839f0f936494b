"""Loop variants for ``edgeloop bench adaptation``: the demo's settings, and each direction measured against it.

A variant changes the loop only through :class:`bench.adaptation_loop.LoopSettings` overrides, bootstrap options
and :class:`bench.adaptation_loop.Hooks`; the shipping code runs unchanged otherwise. Each direction that needs
a hook in a file this benchmark may not change (trainer/service.py, trainer/strategies/, edge/sampler.py) says so
in its ``doc``: the hook is what would make it a product setting.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from bench.adaptation import Variant
from bench.adaptation_loop import Hooks

__all__ = ["VARIANTS"]


# -- strategy replacements ---------------------------------------------------------------------------------------
def _rebuild(svc: Any, cls: type, extra: dict[str, Any] | None = None) -> Any:
    """A strategy of ``cls`` on the service's model, optimiser factory, memory and config (+ ``extra``)."""
    import dataclasses

    old = svc.strategy
    cfg = dataclasses.replace(old.config, extra={**old.config.extra, **(extra or {})})
    return cls(svc.model, old.optimizer_factory, old.memory, cfg)


def _strategy(cls_path: str, extra: dict[str, Any] | None = None) -> Callable[[], Hooks]:
    def make() -> Hooks:
        import importlib

        mod, name = cls_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(mod), name)
        return Hooks(make_strategy=lambda svc: _rebuild(svc, cls, extra))
    return make


def _augmented_updates(kind: str = "both") -> Callable[[], Hooks]:
    def make() -> Hooks:
        from trainer.augment import augmented
        from trainer.strategies.iw_er import IWER

        return Hooks(make_strategy=lambda svc: _rebuild(svc, augmented(IWER), {"augment": kind}))
    return make


# -- edge calibration ------------------------------------------------------------------------------------------------
def _calibration(mode: str, **kw: Any) -> Callable[[], Hooks]:
    def make() -> Hooks:
        from edge.model import CalibrationConfig, InputCalibration

        def attach(cam: Any) -> None:
            cam.slot.calibration = InputCalibration(CalibrationConfig(mode=mode, **kw))

        return Hooks(on_camera=attach)
    return make


# -- reacting to drift -------------------------------------------------------------------------------------------------
class _DriftReaction:
    """When the edge's drift signal is on, the camera's minute budget is multiplied by ``budget_factor``; when a
    quarter of the last 10 s of uploads were drift-selected, the trainer updates on smaller batches sooner with
    more steps (``batch``, ``wait_s``, ``steps``) for ``hold_s`` seconds.

    Product hooks this stands in for: ``Sampler.set_budget_factor(f)`` (edge/sampler.py) and a drift-aware
    cadence in the service (``update.drift_batch`` / ``drift_wait_s`` / ``drift_steps``)."""

    def __init__(self, budget_factor: float, batch: int, wait_s: float, steps: int, hold_s: float = 20.0) -> None:
        self.budget_factor, self.batch, self.wait_s, self.steps, self.hold_s = budget_factor, batch, wait_s, steps, hold_s
        self.until = -1.0
        self.normal: Any = None
        self.next_check = 0.0
        self.cams: list[Any] = []
        self.recent: list[tuple[float, str]] = []

    def on_camera(self, cam: Any) -> None:
        self.cams.append(cam)
        cam._base_budget = cam.sampler._budgets["minute"]  # noqa: SLF001 - stand-in for set_budget_factor

    def on_frame(self, k: int, t: float, cam: Any, res: Any) -> None:
        if res.decision.selected:  # what the trainer's store holds too: each sample carries its reason
            self.recent.append((t, res.decision.reason))
        if self.budget_factor == 1.0:
            return
        want = int(round(cam._base_budget * (self.budget_factor if cam.drift.active else 1.0)))
        sp = cam.sampler
        if sp._budgets["minute"] != want:  # noqa: SLF001
            sp._budgets["minute"] = want  # noqa: SLF001
            sp._next_roll = -np.inf  # noqa: SLF001 - recompute the pacing with the new budget
            sp._left_cache = None  # noqa: SLF001

    def on_tick(self, svc: Any, t: float) -> None:
        import msgspec

        if self.normal is None:
            self.normal = svc.config.update
        if t < self.next_check:
            return
        self.next_check = t + 1.0
        self.recent = [(u, r) for u, r in self.recent if u >= t - 10.0]
        if len(self.recent) >= 4 and sum(r == "drift" for _, r in self.recent) >= 0.25 * len(self.recent):
            self.until = t + self.hold_s
        want = (msgspec.structs.replace(self.normal, batch=self.batch, wait_s=self.wait_s, steps=self.steps)
                if t < self.until else self.normal)
        if svc.config.update != want:
            svc.config = msgspec.structs.replace(svc.config, update=want)


def _react(budget_factor: float = 2.0, batch: int = 16, wait_s: float = 3.0, steps: int = 30) -> Callable[[], Hooks]:
    def make() -> Hooks:
        r = _DriftReaction(budget_factor, batch, wait_s, steps)
        return Hooks(on_camera=r.on_camera, on_frame=r.on_frame, on_tick=r.on_tick)
    return make


def _chain(*makers: Callable[[], Hooks]) -> Callable[[], Hooks]:
    """Several variants' hooks at once (each callback runs in order; the last make_strategy wins)."""
    def make() -> Hooks:
        hs = [m() for m in makers]

        def each(name: str) -> Callable[..., None] | None:
            fns = [getattr(h, name) for h in hs if getattr(h, name) is not None]
            if not fns:
                return None
            return lambda *a: [f(*a) for f in fns] and None

        strat = [h.make_strategy for h in hs if h.make_strategy is not None]
        return Hooks(make_strategy=strat[-1] if strat else None, on_frame=each("on_frame"), on_tick=each("on_tick"),
                     on_camera=each("on_camera"))
    return make


VARIANTS: dict[str, Variant] = {
    "demo": Variant("demo", "the demo's settings (deploy/demo.py): iw-er, B=32 / K=20 / Adam 1e-3, gate, waves"),
    "aug-boot": Variant("aug-boot", "photometric + geometric augmentation in the bootstrap (trainer.augment)",
                        bootstrap={"augment": "both"}),
    "aug": Variant("aug", "augmentation in the bootstrap and in every update step (hook: update.augment in the "
                          "strategies' base step)", bootstrap={"augment": "both"}, hooks=_augmented_updates()),
    "calib-drift": Variant("calib-drift", "edge input calibration, engaged by the drift signal (edge.model)",
                           hooks=_calibration("drift")),
    "calib": Variant("calib", "edge input calibration, always following the light (edge.model)",
                     hooks=_calibration("always")),
    "react": Variant("react", "on drift: 2x edge budget; trainer B=16, T=3 s, K=30 (hooks: sampler budget factor, "
                              "drift-aware cadence)", hooks=_react()),
    "react-soak": Variant("react-soak", "react + 1 s canary soak for versions that beat the deployed one by >= 10 "
                                        "points on the recent slice (hook: controller policy from gate margin)",
                          settings={"fast_soak_margin": 10.0}, hooks=_react()),
    "fewshot": Variant("fewshot", "new-class head rows imprinted from the class-mean embedding (trainer.fewshot); "
                                  "replay is class-balanced already, so the few are oversampled anyway",
                       hooks=_strategy("trainer.fewshot.FewShotIWER")),
    "gate-loose": Variant("gate-loose", "gate: recent slice of 120, 5 points of allowed regression (eval config)",
                          settings={"eval": {"recent": 120, "max_regression": 0.05}}),
    "lr-low": Variant("lr-low", "updates at Adam lr 3e-4 instead of 1e-3 (update config)",
                      settings={"update": {"lr": 3e-4}}),
    "k5": Variant("k5", "5 optimiser steps per update instead of 20: 20 steps on the same <= 32 new samples "
                        "overfit them (update config)", settings={"update": {"steps": 5}}),
    "mer": Variant("mer", "Meta-Experience Replay (trainer/strategies/mer.py) instead of iw-er",
                   hooks=_strategy("trainer.strategies.mer.MER")),
    "ace-mix": Variant("ace-mix", "iw-er with half asymmetric, half full CE on new samples (bench/learning_mer.py; "
                                  "hook: an ace_mix setting of iw-er)",
                       hooks=_strategy("bench.learning_mer.MixIWER", {"ace_mix": 0.5})),
    # combinations of the directions that earned their place
    "calib-gate": Variant("calib-gate", "calib + gate-loose", settings={"eval": {"recent": 120, "max_regression": 0.05}},
                          hooks=_calibration("always")),
    "calib-gate-react": Variant("calib-gate-react", "calib + gate-loose + react",
                                settings={"eval": {"recent": 120, "max_regression": 0.05}},
                                hooks=_chain(_calibration("always"), _react())),
    "calib-k5": Variant("calib-k5", "calib + k5", settings={"update": {"steps": 5}}, hooks=_calibration("always")),
    "calib-gate-mix": Variant("calib-gate-mix", "calib + gate-loose + ace-mix",
                              settings={"eval": {"recent": 120, "max_regression": 0.05}},
                              hooks=_chain(_calibration("always"),
                                           _strategy("bench.learning_mer.MixIWER", {"ace_mix": 0.5}))),
}
