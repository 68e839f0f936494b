"""Loop variants for ``edgeloop bench adaptation``: the demo's settings, and each direction measured against it.

A variant changes the loop only through :class:`bench.adaptation_loop.LoopSettings` overrides, bootstrap options
and :class:`bench.adaptation_loop.Hooks`; the shipping code runs unchanged otherwise. Each direction that needs
a hook in a file this benchmark may not change (trainer/service.py, trainer/strategies/, edge/sampler.py) says so
in its ``doc``: the hook is what would make it a product setting.

Every variant but ``demo`` runs with the base settings (``base``: the demo's until its parts scenario took
small_cnn128 with frozen blocks, README #60) except where it says otherwise; "the demo" in a variant's doc means
that base. Since the cameras' input calibration became the demo's default (``deploy.demo.plan.CALIBRATION``), the
base includes calibration; ``no-calib`` is the demo as it was before. (The README's table of directions says
which rows were measured before that change.) ``demo`` is the demo as it is: the scenario's own net and learner.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from bench.adaptation import Variant
from bench.adaptation_loop import Hooks
from bench.net_costs import CNN128_COST, CNN128_EVAL_COST, CNN128_UPDATE_COST, FROZEN, stage_scale
from deploy.demo.plan import WEIGHTS_ONLY_WAVES

__all__ = ["VARIANTS"]


# -- strategy replacements ---------------------------------------------------------------------------------------
def _rebuild(svc: Any, cls: type, extra: dict[str, Any] | None = None) -> Any:
    """A strategy of ``cls`` on the service's model, optimiser factory and memory, with the service's strategy
    settings that ``cls`` has (+ ``extra``)."""
    old = svc.strategy
    known = cls.Config.__struct_fields__
    cfg = {k: v for k, v in old.config.as_dict().items() if k in known} | (extra or {})
    return cls(svc.model, old.optimizer_factory, old.memory, cfg)


def _strategy(cls_path: str, extra: dict[str, Any] | None = None) -> Callable[[], Hooks]:
    def make() -> Hooks:
        import importlib

        mod, name = cls_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(mod), name)
        return Hooks(make_strategy=lambda svc: _rebuild(svc, cls, extra))
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


def _rehearsal(rounds: int = 3, augment: str = "dihedral", paired: str = "off", ema: float = 0.0,
               augment_from: str = "start", tta: bool = False, steps: int | None = None) -> dict[str, Any]:
    """Settings of the idle-time rehearsal variants (README #39-#42): 20-step rounds, at most ``rounds`` after each
    update, every step's samples changed by ``augment`` (from ``augment_from``), the gate's recent slice paired as
    ``paired`` says, the candidate the weights' moving average at decay ``ema`` (0: the weights), asked its eight
    views with ``tta`` (its evaluations charged :data:`TTA_EVAL_COST` times, from the start: an upper bound of the
    cost with ``augment_from: new-class``); ``steps`` per update if not the loop's."""
    strategy = {"augment_from": augment_from, "ema": ema, "tta": tta}
    if augment != "none":  # the default; the word "none" in an override means null (protocol.config)
        strategy["augment"] = augment
    update = {"rehearse_steps": 20, "rehearse_rounds": rounds, **({"steps": steps} if steps else {})}
    return {"update": update, "strategy_settings": strategy,
            "eval": {"paired": paired}, **({"stage_scale": {"evaluate_s": TTA_EVAL_COST}} if tta else {})}


#: what every small_cnn128 variant shares: its bootstrap, and its trainer stages charged bench/net_costs.py's costs
CNN128_BOOT = {"arch": "small_cnn128"}
#: an evaluation asking the eight views (trainer.nets.DihedralMean) over one asking one, small_cnn at 64x64, one torch
#: thread, 500 inputs, thread CPU of three runs on 2026-12-01 on a loaded machine (15.7 / 16.2 / 16.6 s vs
#: 1.60 / 1.73 / 1.90 s; the median of the ratios)
TTA_EVAL_COST = 9.3

def _cnn128_hint_weighted(steps: int | None = None, rounds: int = 2, cpu: float = 1.0, frozen: int = 0,
                          ema: float = 0.0, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """#50's learner: small_cnn128 with ``rounds`` rehearsal rounds, dihedral, the paired test at the first crossing,
    the selection hint and the importance-weighted gate; ``steps`` per update if not the loop's; on a trainer with
    ``cpu`` times this machine's CPU (update and evaluation charged 1/``cpu``; export as measured); with its first
    ``frozen`` blocks frozen in updates (charged bench/net_costs.py's ``FROZEN`` of the whole net's update and evaluation); the
    candidate the weights' moving average at decay ``ema`` (0: the weights); ``gate``: more eval settings."""
    settings = _rehearsal(rounds=rounds, paired="new-class", steps=steps, ema=ema)
    cost = stage_scale("small_cnn128", frozen)
    if frozen:
        settings["strategy_settings"]["frozen_blocks"] = frozen
    return {**settings, "hints": {"enabled": True}, "eval": {"paired": "new-class", "weighted": True, **(gate or {})},
            "stage_scale": {stage: c / cpu for stage, c in cost.items()}}


#: Stage times ``bench freshness`` measured on 2026-12-02 on this 2-core VM while it ran ~3x slower per trainer step
#: than for the run of record (bootstrap 2.4-3.2 ms per sample step): one run at 20 and one at 40 optimiser steps
#: per update, back to back (p50 48.9 s and 78.8 s). Each slow arm is charged what its own run measured.
SLOW_VM = {20: {"label_delay_s": 4.627, "update_s": 5.5, "evaluate_s": 2.111, "export_s": 3.923,
                "wave_delay_s": 4.859},
           40: {"label_delay_s": 8.293, "update_s": 11.26, "evaluate_s": 2.268, "export_s": 3.344,
                "wave_delay_s": 4.542}}


def _slow_vm(steps: int) -> dict[str, Any]:
    """The demo's learner at ``steps`` per update on the slow VM's measured stage times (:data:`SLOW_VM`), its
    update charged as measured at those steps (``measured_steps``), whatever the run of record's were."""
    return {"update": {"steps": steps}, **SLOW_VM[steps], "measured_steps": steps}


#: Stage times ``bench freshness`` measured on 2026-12-02 on a second 2-core VM, one run each, one after the other
#: (README #60): the base (``--arch small_cnn``: 40 steps per update; p50 26.6 s) and #59's learner
#: (small_cnn128, 2 frozen blocks, rehearsal, dihedral, paired and weighted gate; 20 steps; its p50 read 40.4 s while
#: bench freshness did not know the versions rehearsal rounds promoted, #61; the stage times are per update). A wave's
#: delivery is (rollout - one 4.8 s soak) / 2, as ``stage_times`` derives it. What each learner really costs on a
#: 2-core trainer, its trainer busy beside four cameras, instead of the 64x64 record scaled by CPU ratios.
OWN_VM = {"base": ({"label_delay_s": 2.0, "update_s": 4.0, "evaluate_s": 0.8, "export_s": 2.7,
                    "wave_delay_s": 2.2}, 40),
          "frozen2": ({"label_delay_s": 2.861, "update_s": 2.831, "evaluate_s": 2.104, "export_s": 2.687,
                       "wave_delay_s": 1.912}, 20)}


def _own_vm(learner: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` charged the stage times ``learner``'s own freshness run measured (:data:`OWN_VM`), unscaled."""
    stages, steps = OWN_VM[learner]
    return {**(settings or {}), "stage_scale": {}, **stages, "measured_steps": steps}


VARIANTS: dict[str, Variant] = {
    "demo": Variant("demo", "the demo's settings (deploy/demo/plan.py): edge input calibration always on; iw-er, "
                            "B=32 / K=40 / Adam 1e-3, gate, waves; the scenario's net and learner (for parts "
                            "small_cnn128 with 2 frozen blocks, rehearsal, dihedral, paired, weighted gate, K=20, "
                            "#60; Adam 3e-3, #64); a version that only changes weights to every camera at once (#62)",
                    settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES)}, demo_learner=True),
    "demo-canary": Variant("demo-canary", "the demo before #62: every version through the canary waves",
                           demo_learner=True),
    "demo-overlap": Variant("demo-overlap", "the demo, the next rollout starting once the last wave is delivered "
                                            "(its soak not waited for)", settings={"overlap_last_soak": True},
                            demo_learner=True),
    "demo-instant": Variant("demo-instant", "the demo with rollouts that take no time (no soak, 0.05 s delivery): "
                                            "the bound of any rollout policy", settings={"soak_s": 0.0,
                                            "wave_delay_s": 0.05, "overlap_last_soak": True}, demo_learner=True),
    "demo-overlap-fast": Variant("demo-overlap-fast", "the weights-only waves, and every rollout (the canary's too) "
                                                      "giving way once its last wave is delivered",
                                 settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "overlap_last_soak": True},
                                 demo_learner=True),
    "demo-hint80": Variant("demo-hint80", "demo-waves-only with twice the selection hint's upload budget (80 a "
                                          "minute per camera instead of 40)",
                           settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "weights_only_take_over": False,
                                     "hints": {"budget_per_minute": 80}}, demo_learner=True),
    "demo-k40": Variant("demo-k40", "the demo with 40 optimiser steps per update instead of 20 (the update charged "
                                    "by its steps)", settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES),
                                                               "update": {"steps": 40}}, demo_learner=True),
    "demo-lr2": Variant("demo-lr2", "the demo with Adam at 2e-3 instead of 1e-3 in updates: with versions reaching "
                                    "the cameras at once, does faster learning per update pay?",
                        settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "update": {"lr": 2e-3}},
                        demo_learner=True),
    "demo-lr3": Variant("demo-lr3", "the demo with Adam at 3e-3 in updates: does the rate keep paying past 2e-3?",
                        settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "update": {"lr": 3e-3}},
                        demo_learner=True),
    "demo-lr4": Variant("demo-lr4", "the demo with Adam at 4e-3 in updates",
                        settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "update": {"lr": 4e-3}},
                        demo_learner=True),
    "demo-lr6": Variant("demo-lr6", "the demo with Adam at 6e-3 in updates: where does the rate stop paying?",
                        settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "update": {"lr": 6e-3}},
                        demo_learner=True),
    "demo-lr2-whole": Variant("demo-lr2-whole", "demo-lr2 with no block frozen in updates: the full-resolution "
                                                "blocks, which never saw a crack in the bootstrap, learn it too "
                                                "(charged the whole net's update and evaluation, bench/net_costs.py)",
                              settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "update": {"lr": 2e-3},
                                        "strategy_settings": {"frozen_blocks": 0},
                                        "stage_scale": {s: 1.0 / f for s, f in FROZEN["small_cnn128", 2].items()}},
                              demo_learner=True),
    "demo-floor": Variant("demo-floor", "the demo with the bootstrap this VM's demo gets: 4,800 frames at the floor "
                                        "of 400 optimiser steps (4 epochs instead of 9): is the bench above the "
                                        "real demo because its v0001 saw the old world longer?",
                          settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES)},
                          bootstrap={"frames": 4800, "epochs": 4}, demo_learner=True),
    "demo-boot6": Variant("demo-boot6", "demo-floor with 6 bootstrap epochs: how many does the frozen-block learner's "
                                        "v0001 need?", settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES)},
                          bootstrap={"frames": 4800, "epochs": 6}, demo_learner=True),
    "demo-r3": Variant("demo-r3", "the demo with up to 3 rehearsal rounds after each update instead of 2",
                       settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES), "update": {"rehearse_rounds": 3}},
                       demo_learner=True),
    "demo-waves-only": Variant("demo-waves-only", "the demo's weights-only waves without the take-over: each rollout "
                                                  "soaks its last wave before the next starts (#62, first step)",
                               settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES),
                                         "weights_only_take_over": False}, demo_learner=True),
    "demo-waves-only-k40": Variant("demo-waves-only-k40", "demo-waves-only with 40 optimiser steps per update",
                                   settings={"weights_only_waves": tuple(WEIGHTS_ONLY_WAVES),
                                             "weights_only_take_over": False, "update": {"steps": 40}},
                                   demo_learner=True),
    "base": Variant("base", "the loop's base, which every other variant changes: the demo before #60 (small_cnn at "
                            "64x64 for parts, the trainer's default learner)"),
    "no-calib": Variant("no-calib", "the demo before calibration became its default (calibration off)",
                        settings={"calibration": "off"}),
    "input128": Variant("input128", "small_cnn on the full 128x128 ROI instead of the demo's 2x downscale to 64x64 "
                                    "(trainer stages charged at the demo's measured 64x64 times)",
                        bootstrap={"arch": "small_cnn", "input_size": 128}),
    "cnn128": Variant("cnn128", "small_cnn128 (trainer/nets.py): an 8-channel block at full 128x128 resolution in "
                                "front of small_cnn's four; update and evaluation charged at 2.6x / 2.7x the measured "
                                "64x64 times (their single-thread CPU ratio)",
                      bootstrap=CNN128_BOOT,
                      settings={"stage_scale": CNN128_COST}),
    "aug-boot": Variant("aug-boot", "photometric + geometric augmentation in the bootstrap (trainer.augment)",
                        bootstrap={"augment": "both"}),
    "boot40": Variant("boot40", "a longer bootstrap on the old 1,600 frames: 40 epochs instead of 27 (the demo's "
                                "cap on a quiet machine; deploy/demo/bootstrap.py)",
                      bootstrap={"frames": 1600, "epochs": 40}),
    "boot-3200": Variant("boot-3200", "a bootstrap on twice the old rendered frames (3,200 instead of 1,600), "
                                      "20 epochs", bootstrap={"frames": 3200, "epochs": 20}),
    "boot-1600": Variant("boot-1600", "the demo's bootstrap before 4,800 frames became its default: 1,600 frames, "
                                      "27 epochs (the same sample steps)", bootstrap={"frames": 1600, "epochs": 27}),
    "boot-3200-e13": Variant("boot-3200-e13", "twice the old bootstrap frames in the same sample steps: 3,200 frames, "
                                              "13 epochs", bootstrap={"frames": 3200, "epochs": 13}),
    "boot-6400-e7": Variant("boot-6400-e7", "four times the old bootstrap frames in the same sample steps: 6,400 "
                                            "frames, 7 epochs", bootstrap={"frames": 6400, "epochs": 7}),
    "boot-floor": Variant("boot-floor", "the old bootstrap on a slow or busy machine: 1,600 frames at the floor of "
                                        "400 optimiser steps (10 epochs; deploy/demo/bootstrap.py MIN_STEPS)",
                          bootstrap={"frames": 1600, "epochs": 10}),
    "boot-4800-floor": Variant("boot-4800-floor", "the demo's bootstrap on a slow or busy machine: 4,800 frames at "
                                                  "the floor of 400 optimiser steps (4 epochs)",
                               bootstrap={"frames": 4800, "epochs": 4}),
    "aug": Variant("aug", "augmentation in the bootstrap and in every update step (strategy.augment both)",
                   bootstrap={"augment": "both"}, settings={"strategy_settings": {"augment": "both"}}),
    "dihedral": Variant("dihedral", "quarter turns and mirror images of every sample in every update step "
                                    "(strategy.augment dihedral): each label of a surface defect stands for eight",
                        settings={"strategy_settings": {"augment": "dihedral"}}),
    "dihedral-k60": Variant("dihedral-k60", "dihedral with 60 optimiser steps per update (8x the samples bear more "
                                            "steps before they overfit); the update charged by its steps",
                            settings={"update": {"steps": 60}, "strategy_settings": {"augment": "dihedral"}}),
    "cnn128-dihedral": Variant("cnn128-dihedral", "cnn128 with dihedral updates (README #38: offline the pair reaches "
                                                  "90 % on the final-window frames from 25 crack labels)",
                               bootstrap=CNN128_BOOT,
                               settings={"strategy_settings": {"augment": "dihedral"},
                                         "stage_scale": CNN128_COST}),
    "rehearse": Variant("rehearse", "the trainer's idle time spent on replay (update.rehearse_steps 20, up to 3 "
                                    "rounds after each update, each gated): a new class's few labels get hundreds "
                                    "of steps before the final window instead of ~60", settings={"update": {
                                        "rehearse_steps": 20, "rehearse_rounds": 3}}),
    "rehearse-dihedral": Variant("rehearse-dihedral", "rehearse, every step's samples turned and mirrored "
                                                      "(strategy.augment dihedral; README #35)",
                                 settings={"update": {"rehearse_steps": 20, "rehearse_rounds": 3},
                                           "strategy_settings": {"augment": "dihedral"}}),
    "rehearse-dihedral-ema": Variant("rehearse-dihedral-ema", "rehearse-dihedral, the candidate the moving average "
                                                              "of the weights (strategy.ema 0.99; README #41)",
                                     settings={"update": {"rehearse_steps": 20, "rehearse_rounds": 3},
                                               "strategy_settings": {"augment": "dihedral", "ema": 0.99}}),
    "rehearse-dihedral-ema95": Variant("rehearse-dihedral-ema95", "rehearse-dihedral-ema at decay 0.95 (a time "
                                                                  "constant of one update's 20 steps)",
                                       settings={"update": {"rehearse_steps": 20, "rehearse_rounds": 3},
                                                 "strategy_settings": {"augment": "dihedral", "ema": 0.95}}),
    "cnn128-rehearse-dihedral": Variant("cnn128-rehearse-dihedral", "rehearse-dihedral with small_cnn128 (README #38: "
                                                                    "offline the pair reaches 90 % after 800 steps)",
                                        bootstrap=CNN128_BOOT,
                                        settings={"update": {"rehearse_steps": 20, "rehearse_rounds": 2},
                                                  "strategy_settings": {"augment": "dihedral"},
                                                  "stage_scale": CNN128_COST}),
    "paired": Variant("paired", "the gate's recent slice also judged by a paired sign test (eval.paired always, "
                                "level 0.05): a candidate behind by more than the 2-point allowance is refused only if "
                                "significantly behind on the samples where it and the deployed version disagree "
                                "(README #23)", settings={"eval": {"paired": "always"}}),
    "paired20": Variant("paired20", "paired at level 0.2: refused when the losses outnumber the wins by more than "
                                    "chance explains four times in five",
                        settings={"eval": {"paired": "always", "paired_alpha": 0.2}}),
    "paired-new": Variant("paired-new", "the paired test only for a candidate that knows a class of the recent slice "
                                        "that the deployed version does not (eval.paired new-class): the first crossing",
                          settings={"eval": {"paired": "new-class"}}),
    "rehearse-dihedral-paired": Variant("rehearse-dihedral-paired", "rehearse-dihedral with the paired recent slice "
                                                                    "for every candidate (eval.paired always)",
                                        settings=_rehearsal(paired="always")),
    "rehearse-dihedral-paired-new": Variant("rehearse-dihedral-paired-new", "rehearse-dihedral with the paired test "
                                                                            "at the first crossing only (eval.paired "
                                                                            "new-class)",
                                            settings=_rehearsal(paired="new-class")),
    "rehearse-dihedral-ema95-paired-new": Variant("rehearse-dihedral-ema95-paired-new",
                                                  "rehearse-dihedral-paired-new, the candidate the moving average of "
                                                  "the weights at decay 0.95 (README #41)",
                                                  settings=_rehearsal(paired="new-class", ema=0.95)),
    "rehearse-dihedral-late-paired-new": Variant("rehearse-dihedral-late-paired-new",
                                                 "rehearse-dihedral-paired-new, the samples turned only once the loop "
                                                 "has added a class (strategy.augment_from new-class): the old world "
                                                 "before it as without dihedral",
                                                 settings=_rehearsal(paired="new-class", augment_from="new-class")),
    "rehearse-dihedral-late-paired-new-weighted": Variant(
        "rehearse-dihedral-late-paired-new-weighted", "rehearse-dihedral-late-paired-new (the surface-defects settings) "
        "with the gate's recent slice importance-weighted (eval.weighted)",
        settings={**_rehearsal(paired="new-class", augment_from="new-class"),
                  "eval": {"paired": "new-class", "weighted": True}}),
    "rehearse-dihedral-paired-new-tta": Variant("rehearse-dihedral-paired-new-tta",
                                                "rehearse-dihedral-paired-new, the candidate asked its eight turns "
                                                "and mirror images (strategy.tta; evaluations charged 9.3x)",
                                                settings=_rehearsal(paired="new-class", tta=True)),
    "rehearse-dihedral-late-paired-new-tta": Variant("rehearse-dihedral-late-paired-new-tta",
                                                     "rehearse-dihedral-late-paired-new with strategy.tta "
                                                     "(evaluations charged 9.3x from the start)",
                                                     settings=_rehearsal(paired="new-class", augment_from="new-class",
                                                                         tta=True)),
    "rehearse-paired-new": Variant("rehearse-paired-new", "rehearse with the paired test at the first crossing "
                                                          "(eval.paired new-class), samples not turned",
                                   settings=_rehearsal(augment="none", paired="new-class")),
    "rehearse6-dihedral-paired-new": Variant("rehearse6-dihedral-paired-new", "rehearse-dihedral-paired-new with up "
                                                                              "to 6 rehearsal rounds after each "
                                                                              "update instead of 3",
                                             settings=_rehearsal(rounds=6, paired="new-class")),
    "cnn128-rehearse-dihedral-paired-new": Variant("cnn128-rehearse-dihedral-paired-new",
                                                   "cnn128-rehearse-dihedral with the paired test at the first "
                                                   "crossing (eval.paired new-class)",
                                                   bootstrap=CNN128_BOOT,
                                                   settings={**_rehearsal(rounds=2, paired="new-class"),
                                                             "stage_scale": CNN128_COST}),
    "cnn128-rehearse-dihedral-paired-new-fast3": Variant("cnn128-rehearse-dihedral-paired-new-fast3",
                                                         "cnn128-rehearse-dihedral-paired-new on a trainer with 3x "
                                                         "this machine's CPU (update and evaluation charged a third "
                                                         "of it; export as measured), up to 6 rehearsal rounds",
                                                         bootstrap=CNN128_BOOT,
                                                         settings={**_rehearsal(rounds=6, paired="new-class"),
                                                                   "stage_scale": {"update_s": CNN128_UPDATE_COST / 3,
                                                                                   "evaluate_s": CNN128_EVAL_COST / 3}}),
    "no-hint": Variant("no-hint", "the demo without the trainer's selection hint (hints.enabled false; the demo's "
                                  "default before README #47)", settings={"hints": {"enabled": False}}),
    "hint": Variant("hint", "the demo with the trainer's selection hint (trainer/hints.py, now the default: = demo): "
                            "when the cameras miss most labels of a class, they upload more frames predicted as the "
                            "classes it hides in, from 40 a minute of their own", settings={"hints": {"enabled": True}}),
    "rehearse-dihedral-paired-new-hint": Variant("rehearse-dihedral-paired-new-hint",
                                                 "rehearse-dihedral-paired-new with the selection hint",
                                                 settings={**_rehearsal(paired="new-class"),
                                                           "hints": {"enabled": True}}),
    "cnn128-rehearse-dihedral-paired-new-hint": Variant("cnn128-rehearse-dihedral-paired-new-hint",
                                                        "cnn128-rehearse-dihedral-paired-new with the selection hint",
                                                        bootstrap=CNN128_BOOT,
                                                        settings={**_rehearsal(rounds=2, paired="new-class"),
                                                                  "hints": {"enabled": True},
                                                                  "stage_scale": CNN128_COST}),
    "demo-frozen2": Variant("demo-frozen2", "the demo with the first two of small_cnn's four blocks frozen in updates "
                                            "(strategy.frozen_blocks: 2): a step costs about half, an evaluation a "
                                            "fifth", settings={"strategy_settings": {"frozen_blocks": 2},
                                                               "stage_scale": FROZEN["small_cnn", 2]}),
    "weighted": Variant("weighted", "the demo with the gate's recent slice judged by its importance-weighted "
                                    "accuracy (eval.weighted: min(1/p_select, w_max) per upload)",
                        settings={"eval": {"weighted": True}}),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted", "cnn128-rehearse-dihedral-paired-new-hint with the gate's "
        "recent slice importance-weighted (eval.weighted)", bootstrap=CNN128_BOOT,
        settings=_cnn128_hint_weighted()),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20", "cnn128-rehearse-dihedral-paired-new-hint-weighted "
        "with 20 optimiser steps per update, the loop's default before README #52", bootstrap=CNN128_BOOT,
        settings=_cnn128_hint_weighted(steps=20)),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-fast3": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-fast3", "cnn128-rehearse-dihedral-paired-new-hint-"
        "weighted-k20 on a trainer with 3x this machine's CPU (update and evaluation charged a third; export as "
        "measured), up to 6 rehearsal rounds (#46's question for #50's learner)", bootstrap=CNN128_BOOT,
        settings=_cnn128_hint_weighted(steps=20, rounds=6, cpu=3.0)),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2", "cnn128-rehearse-dihedral-paired-new-hint-"
        "weighted-k20 with the first two of its five blocks frozen in updates (strategy.frozen_blocks: 2): a step "
        "costs about half, an evaluation a quarter", bootstrap=CNN128_BOOT, settings=_cnn128_hint_weighted(steps=20, frozen=2)),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2-r6": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2-r6", "cnn128-rehearse-dihedral-paired-new-"
        "hint-weighted-k20-frozen2 with up to 6 rehearsal rounds after each update instead of 2",
        bootstrap=CNN128_BOOT, settings=_cnn128_hint_weighted(steps=20, rounds=6, frozen=2)),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2-ema": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2-ema", "cnn128-rehearse-dihedral-paired-new-"
        "hint-weighted-k20-frozen2 whose candidate is the weights' moving average at decay 0.99 (strategy.ema, #41)",
        bootstrap=CNN128_BOOT, settings=_cnn128_hint_weighted(steps=20, frozen=2, ema=0.99)),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen3": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen3", "cnn128-rehearse-dihedral-paired-new-hint-"
        "weighted-k20 with the first three of its five blocks frozen in updates (strategy.frozen_blocks: 3)",
        bootstrap=CNN128_BOOT, settings=_cnn128_hint_weighted(steps=20, frozen=3)),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2-loose": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2-loose", "cnn128-rehearse-dihedral-paired-new-"
        "hint-weighted-k20-frozen2 with 5 points of allowed regression on the recent slice instead of 2 "
        "(eval.max_regression 0.05)", bootstrap=CNN128_BOOT,
        settings=_cnn128_hint_weighted(steps=20, frozen=2, gate={"max_regression": 0.05})),
    "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-upper": Variant(
        "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-upper", "cnn128-rehearse-dihedral-paired-new-hint-"
        "weighted-k20 beside an upper bound retrained after every update (150 steps on turned copies of every label "
        "so far and the bootstrap set) and delivered with the loop's calendar: what any learner could reach from "
        "the labels the loop gets, when it gets them (run without --no-upper)", bootstrap=CNN128_BOOT,
        settings={**_cnn128_hint_weighted(steps=20), "upper_steps": 150, "upper_every": 1,
                  "upper_augment": "dihedral"}),
    "dihedral-boot": Variant("dihedral-boot", "dihedral in the bootstrap as well as in every update step",
                             bootstrap={"augment": "dihedral"}, settings={"strategy_settings": {"augment": "dihedral"}}),
    "calib-drift": Variant("calib-drift", "edge input calibration, engaged by the drift signal (edge.model)",
                           settings={"calibration": "drift"}),
    "calib": Variant("calib", "edge input calibration, always following the light (edge.model); now = demo",
                     settings={"calibration": "always"}),
    "react": Variant("react", "on drift: 2x edge budget; trainer B=16, T=3 s, K=30 (hooks: sampler budget factor, "
                              "drift-aware cadence)", hooks=_react()),
    "react-soak": Variant("react-soak", "react + 1 s canary soak for versions that beat the deployed one by >= 10 "
                                        "points on the recent slice (hook: controller policy from gate margin)",
                          settings={"fast_soak_margin": 10.0}, hooks=_react()),
    "fewshot": Variant("fewshot", "new-class head rows imprinted from the class-mean embedding (trainer.fewshot); "
                                  "replay is class-balanced already, so the few are oversampled anyway",
                       hooks=_strategy("trainer.fewshot.FewShotIWER")),
    "soak-fast": Variant("soak-fast", "1 s canary soak for versions >= 10 points better than the deployed one on the "
                                      "recent slice, nothing else (hook: controller policy from gate margin)",
                         settings={"fast_soak_margin": 10.0}),
    "gate-loose": Variant("gate-loose", "gate: recent slice of 120, 5 points of allowed regression (eval config)",
                          settings={"eval": {"recent": 120, "max_regression": 0.05}}),
    "lr-low": Variant("lr-low", "updates at Adam lr 3e-4 instead of 1e-3 (update config)",
                      settings={"update": {"lr": 3e-4}}),
    "k5": Variant("k5", "5 optimiser steps per update instead of 40: 40 steps on the same <= 32 new samples "
                        "overfit them (update config)", settings={"update": {"steps": 5}}),
    "k40": Variant("k40", "40 optimiser steps per update instead of 20 (the update charged by its steps): is the "
                          "learner's climb after the crossing bound by its steps? now = demo",
                   settings={"update": {"steps": 40}}),
    "k20": Variant("k20", "the demo before #52: 20 optimiser steps per update (the update charged by its steps)",
                   settings={"update": {"steps": 20}}),
    "slowvm-k20": Variant("slowvm-k20", "k20 charged the stage times a 20-step freshness run measured on a VM ~3x "
                                        "slower per trainer step (SLOW_VM)", settings=_slow_vm(20)),
    "slowvm-k40": Variant("slowvm-k40", "the demo (40 steps) charged the stage times a 40-step freshness run "
                                        "measured on that slow VM (SLOW_VM)", settings=_slow_vm(40)),
    "ownvm-base": Variant("ownvm-base", "the base (small_cnn, the demo before #60) charged the stage times its own "
                                        "freshness run measured on a second 2-core VM (OWN_VM, README #60)",
                          settings=_own_vm("base")),
    "ownvm-cnn128-frozen2": Variant(
        "ownvm-cnn128-frozen2", "cnn128-rehearse-dihedral-paired-new-hint-weighted-k20-frozen2 charged the stage times "
        "its own freshness run measured on that VM (OWN_VM, README #60) instead of the 64x64 record scaled by CPU ratios",
        bootstrap=CNN128_BOOT, settings=_own_vm("frozen2", _cnn128_hint_weighted(steps=20, frozen=2))),
    "bn-frozen": Variant("bn-frozen", "batch norm in inference mode during updates (strategy.freeze_bn); now = demo",
                         settings={"strategy_settings": {"freeze_bn": True}}),
    "bn-train": Variant("bn-train", "the demo before freeze_bn became the default: batch norm in training mode "
                                    "during updates (strategy.freeze_bn false)",
                        settings={"strategy_settings": {"freeze_bn": False}}),
    "distill-off": Variant("distill-off", "iw-er without logit distillation (strategy.distill 0): stored logits of "
                                          "a class's first samples pin it to what the model thought of it then",
                           settings={"strategy_settings": {"distill": 0.0}}),
    "distill-0.1": Variant("distill-0.1", "iw-er with a third of the default distillation weight (strategy.distill 0.1)",
                           settings={"strategy_settings": {"distill": 0.1}}),
    "distill-0.6": Variant("distill-0.6", "iw-er with twice the default distillation weight (strategy.distill 0.6)",
                           settings={"strategy_settings": {"distill": 0.6}}),
    "ace-replay": Variant("ace-replay", "iw-er's ACE share set by the replayed share of each step (strategy.ace_mix "
                                        "replay): the rule that meets the equal-compute goal on Split-MNIST",
                          settings={"strategy_settings": {"ace_mix": "replay"}}),
    "pure-ace": Variant("pure-ace", "iw-er with pure ACE on new samples (strategy.ace_mix 1), the default until the "
                                    "ace_mix \"steps\" rule (0.975 at the trainer's 20 steps)",
                        settings={"strategy_settings": {"ace_mix": 1.0}}),
    "ace-off": Variant("ace-off", "iw-er with full CE on new samples (strategy.ace false): ACE never lets a new "
                                  "class's samples push down the old classes they are confused with",
                       settings={"strategy_settings": {"ace": False}}),
    "replay64": Variant("replay64", "64 replayed samples per step instead of 32 (strategy.replay_batch_size)",
                        settings={"strategy_settings": {"replay_batch_size": 64}}),
    "budget4x": Variant("budget4x", "4x the cameras' upload budget (160 per minute each instead of 40): what "
                                    "more labels alone buy, the ceiling of a budget that follows new classes",
                        settings={"budget_per_minute": 160}),
    "cnn128-budget4x": Variant("cnn128-budget4x", "cnn128 with 4x the upload budget",
                               bootstrap=CNN128_BOOT,
                               settings={"budget_per_minute": 160,
                                         "stage_scale": CNN128_COST}),
    "mer": Variant("mer", "Meta-Experience Replay (trainer/strategies/mer.py) instead of iw-er (update.strategy)",
                   settings={"strategy": "mer"}),
}

#: Measured with the demo's learner at Adam 1e-3, before its rate became 3e-3 (README #64): they keep that rate, so
#: that their rows (#62, #63) reproduce by name.
for _name in ("demo-canary", "demo-overlap", "demo-instant", "demo-overlap-fast", "demo-hint80", "demo-k40",
              "demo-r3", "demo-waves-only", "demo-waves-only-k40"):
    VARIANTS[_name].settings["update"] = {"lr": 1e-3, **VARIANTS[_name].settings.get("update", {})}
