"""Naive fine-tuning: learn from the new samples only. The lower bound every other strategy must beat."""
from __future__ import annotations

import torch

from trainer.replay import ReplayBatch
from trainer.strategies.base import LabelledBatch, Strategy, cross_entropy


class Naive(Strategy):
    """Unweighted CE on the new batch; no memory, so it forgets whatever the new data does not show."""

    name = "naive"
    uses_memory = False

    def step_loss(self, new: LabelledBatch, replay: ReplayBatch | None) -> torch.Tensor:
        return cross_entropy(self.model(new.x), new.y).mean()
