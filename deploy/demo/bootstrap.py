"""The demo's v0001: render the scenario's initial conditions, size the training to the time budget.

The trainer never imports ``edge``; the demo (deploy) may, to launch it, so the rendering happens here and
:func:`trainer.bootstrap.bootstrap` only sees an ImageFolder.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from deploy.demo.plan import DemoOptions, sim_url

__all__ = ["bootstrap_epochs", "render_bootstrap_set"]


def bootstrap_epochs(arch: str, n_train: int, budget_s: float, threads: int = 2,
                     input_size: int | None = None) -> tuple[int, float]:
    """Epochs that fit ``budget_s`` of training on *this* machine, measured, not assumed.

    A few timed optimiser steps of ``arch`` give the cost of one sample's forward+backward pass; the epoch
    count follows. A busy or slow box gets fewer epochs instead of breaking the demo's time promise, but never
    fewer than :data:`MIN_STEPS` optimiser steps: below that a loaded box (2 epochs measured at load 4) got a
    one-class v0001, which the bootstrap rightly refused, and the demo ended with no model at all. A late
    demo beats a dead one; the caller logs when the floor overrode the budget.
    ``input_size`` (square) overrides the architecture's input, as the bootstrap will.
    Returns (epochs, measured seconds per sample)."""
    import torch
    import torch.nn.functional as F

    from trainer.nets import ARCH_INPUT, build_model

    torch.set_num_threads(threads)
    spec = ARCH_INPUT[arch]
    net = build_model(arch, 4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    h, w = (input_size, input_size) if input_size else (spec.height, spec.width)
    x = torch.rand(32, spec.channels, h, w)
    y = torch.randint(0, 4, (32,))
    times = []
    for _ in range(WARM_STEPS + TIMED_STEPS):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_sample = float(statistics.median(times[WARM_STEPS:])) / 32.0
    epochs = int(budget_s / max(1e-6, per_sample * 1.15 * n_train))  # +15 %: data shuffling, BN, eval
    return max(min_epochs(n_train), min(40, epochs)), per_sample


#: The probe's optimiser steps: untimed while oneDNN builds its kernels (a fresh small_cnn's first three took
#: 2.2, 1.4 and 1.1 ms per sample against a steady 0.9 here), then timed, their median the measure. The probe
#: sets the epochs and the slow fallback (fewer update steps), so one busy moment must not decide them: with the
#: median of three steps a demo on a quiet 2-core VM once measured 3.6 ms and took the fallback for nothing.
WARM_STEPS, TIMED_STEPS = 3, 6

MIN_STEPS = 400  # optimiser steps of batch 32 a bootstrap always gets (the quiet 2-core box gives the demo ~800)


def min_epochs(n_train: int, batch: int = 32) -> int:
    """The epochs that make :data:`MIN_STEPS` steps of ``batch`` on ``n_train`` samples (2 to 60)."""
    return max(2, min(60, math.ceil(MIN_STEPS * batch / max(1, n_train))))


def render_bootstrap_set(opts: DemoOptions, folder: Path) -> tuple[list[str], tuple[int, int, int, int]]:
    """Render the scenario's initial conditions (no drift) as ROI crops into ``folder/<class>/*.png``.

    Seeds differ from every camera's, so the cameras' streams are never training data."""
    import cv2

    from edge.sources.sim import open_sim

    n_seeds = 4
    per_seed = max(1, opts.bootstrap_frames // n_seeds)
    labels: list[str] = []
    roi = (0, 0, 0, 0)
    for j in range(n_seeds):
        src = open_sim(sim_url(opts, opts.seed * 100 + 50 + j, None, realtime=False))
        if not labels:
            labels, roi = src.labels, tuple(src.roi)  # type: ignore[assignment]
        x, y, w, h = src.roi
        for i in range(per_seed):
            f = src.frame_at(i * 7)  # spread over the stream (positions on the belt, sprite choices)
            d = folder / str(f.truth)
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"s{j}_{i:05d}.png"), f.image[y:y + h, x:x + w])
    return labels, roi  # type: ignore[return-value]
