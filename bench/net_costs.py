"""What a trainer stage costs on one net over another: the factors ``edgeloop bench adaptation`` charges.

Why: the benchmark's stage times come from one ``bench freshness`` run on one net (bench/results.json). A variant on
another net, or with blocks frozen, is charged that run's update and evaluation times scaled by these ratios of
thread CPU, so nets are compared at the compute they would really take. The reference is ``small_cnn`` at 64x64,
whole (nothing frozen), as trainer/nets.py computes it now.
"""
from __future__ import annotations

__all__ = ["CNN128_UPDATE_COST", "CNN128_EVAL_COST", "CNN128_COST", "FROZEN", "stage_scale"]

#: small_cnn128's CPU per update step (B=64) and per 500-input evaluation over small_cnn's at 64x64, both as
#: trainer/nets.py computes them now, one torch thread, medians of 5 interleaved rounds (``python -m bench.step_cost``,
#: 2026-12-02: 0.415 vs 0.179 s; 2.184 vs 0.937 s): the loop charges its stages this much more than the 64x64 ones.
#: Rows before README #54 were measured on the nets before channels-last, charged 2.55 and 2.7 (816 vs 320 ms,
#: 3.26 vs 1.20 s, one run on 2026-11-30).
CNN128_UPDATE_COST = 2.32
CNN128_EVAL_COST = 2.33
CNN128_COST = {"update_s": CNN128_UPDATE_COST, "evaluate_s": CNN128_EVAL_COST}

#: a net with its first N blocks frozen (``strategy.frozen_blocks: N``) over the whole net, per (net, N): an update step,
#: and an evaluation that runs the frozen blocks only on the inputs new to it (trainer/prefix_cache.py; 10 of 500), each
#: net against itself in the same run (``python -m bench.step_cost``, 5 rounds, 2026-12-02, a quiet machine: small_cnn
#: N=2 0.037 vs 0.069 s and 0.068 vs 0.364 s; small_cnn128 N=2 0.090 vs 0.174 s and 0.203 vs 0.889 s, N=3 0.060 vs
#: 0.149 s and 0.069 vs 0.849 s)
FROZEN = {("small_cnn", 2): {"update_s": 0.54, "evaluate_s": 0.19},
          ("small_cnn128", 2): {"update_s": 0.51, "evaluate_s": 0.23},
          ("small_cnn128", 3): {"update_s": 0.40, "evaluate_s": 0.08}}

#: the nets measured against small_cnn at 64x64, whole (the digits' convnet is never compared across nets)
_NET = {"small_cnn": {"update_s": 1.0, "evaluate_s": 1.0}, "convnet": {"update_s": 1.0, "evaluate_s": 1.0},
        "small_cnn128": CNN128_COST}


def stage_scale(arch: str, frozen_blocks: int = 0) -> dict[str, float]:
    """``{"update_s": x, "evaluate_s": y}``: what an update and an evaluation of ``arch`` with its first
    ``frozen_blocks`` blocks frozen cost over small_cnn's at 64x64, whole. A pair nobody measured is an error,
    not a guess."""
    if arch not in _NET:
        raise KeyError(f"no measured stage costs for {arch!r}; known: {', '.join(sorted(_NET))}")
    scale = dict(_NET[arch])
    if frozen_blocks:
        if (arch, frozen_blocks) not in FROZEN:
            raise KeyError(f"no measured stage costs for {arch!r} with {frozen_blocks} frozen blocks; known: "
                           f"{', '.join(f'{a} N={n}' for a, n in FROZEN)}")
        scale = {stage: c * FROZEN[arch, frozen_blocks][stage] for stage, c in scale.items()}
    return scale
