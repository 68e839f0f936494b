"""A post-hoc bias on the logits of the classes the head grew after the first model (BiC's idea, one number).

Why: a class learnt from a few dozen labels comes out of each update either too shy (its frames still called
``scratch`` or ``ok``) or too bold (everything thin and dark called ``crack``), and which one swings from update
to update (README, Adaptation #40, #44). Wu et al. (BiC, CVPR 2019) correct this after training with a shift
of the new classes' logits fitted on a small held-out set. The trainer has that set already -- the held-out
uploads its gate judges with -- and each sample's selection probability, so the shift is fitted where the
cameras are: the importance-weighted cross-entropy of the held-out uploads (weights ``min(1/p_select, w_max)``,
as in training), minimised over one shared offset on a grid. The learner's weights never see it: it is applied
to the candidate that is judged and shipped (:class:`LogitBias`, part of the exported graph), and refitted for
every candidate. The bootstrap's held-out slice is left out of the fit (it has none of the new classes and
is the old world, not the current one); it still judges forgetting in the gate.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LogitBias", "fit_new_class_bias"]


class LogitBias(nn.Module):
    """``model(x) + bias``: a fixed offset per class, exported with the model so the edge runs it unchanged."""

    def __init__(self, model: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("bias", bias.detach().float().clone())

    @property
    def num_classes(self) -> int:
        return int(self.bias.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.bias


@torch.no_grad()
def fit_new_class_bias(logits: torch.Tensor, targets: torch.Tensor, new: list[int], weights: torch.Tensor,
                       limit: float = 4.0, step: float = 0.1, min_new: int = 3) -> float:
    """The offset ``b`` in ``[-limit, limit]`` (grid ``step``) added to the ``new`` classes' logits that minimises
    ``sum w_i * CE(logits_i + b * 1[new], y_i) / sum w_i``.

    0 when nothing is new or fewer than ``min_new`` samples belong to a new class: without them the loss only
    says "never answer the new class" (every old sample's loss falls as ``b`` falls), which would silence a
    class the trainer has just been taught because its held-out share has not arrived yet. Ties resolve to the
    offset nearest 0, so the correction never moves without evidence.
    """
    if not new or int(torch.isin(targets, torch.tensor(new)).sum()) < min_new:
        return 0.0
    mask = torch.zeros(logits.shape[1])
    mask[new] = 1.0
    n = int(round(limit / step))
    grid = torch.arange(-n, n + 1, dtype=torch.float32) * step
    shifted = logits.float().unsqueeze(0) + grid.view(-1, 1, 1) * mask  # [G, N, C]
    ce = torch.nn.functional.cross_entropy(shifted.reshape(-1, logits.shape[1]), targets.repeat(len(grid)),
                                           reduction="none").view(len(grid), -1)
    w = weights.float()
    loss = (ce * w).sum(1) / w.sum()
    best = float(loss.min())
    ok = (loss <= best + 1e-6).nonzero().flatten()
    return round(float(grid[ok[grid[ok].abs().argmin()]]), 6)
