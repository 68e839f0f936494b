"""Experience replay: every step mixes the new batch with samples drawn from memory (plain CE)."""
from __future__ import annotations

import torch

from trainer.replay import ReplayBatch
from trainer.strategies.base import LabelledBatch, Strategy, cross_entropy


class ER(Strategy):
    """Unweighted CE on new + replay in one forward pass; memory gets the batch after the K steps."""

    name = "er"

    def step_loss(self, new: LabelledBatch, replay: ReplayBatch | None) -> torch.Tensor:
        if replay is None:
            return cross_entropy(self.model(new.x), new.y).mean()
        x = torch.cat([new.x, replay.x])
        y = torch.cat([new.y, replay.y])
        return cross_entropy(self.model(x), y).mean()
