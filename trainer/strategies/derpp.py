"""DER++ (Buzzega et al., NeurIPS 2020): replay with stored logits.

loss = CE(new) + α·MSE(f(x_r), z_r) + β·CE(f(x_r), y_r), with z_r the logits stored when x_r entered
memory. The logit term keeps the old function (dark knowledge), the label term keeps the old classes
from being overwritten by new-class bias. One replay draw serves both terms (Mammoth draws twice; one
draw halves the replay compute at a small cost in variance). Logits of rows stored before the head
grew cover only the old classes and are compared on those columns only.
"""
from __future__ import annotations

import torch

from trainer.replay import ReplayBatch
from trainer.strategies.base import LabelledBatch, Strategy, StrategyConfig, cross_entropy


class DERppConfig(StrategyConfig, kw_only=True):
    """DER++'s settings (Buzzega et al. tune both per benchmark; these are the Split-MNIST values)."""

    alpha: float = 0.3                  # weight of the MSE between replayed and stored logits
    beta: float = 0.5                   # weight of the CE on replayed labels


class DERpp(Strategy):
    """CE on new + α·masked MSE on replayed logits + β·CE on replayed labels."""

    name = "der++"
    stores_logits = True
    Config = DERppConfig
    config: DERppConfig

    def step_loss(self, new: LabelledBatch, replay: ReplayBatch | None) -> torch.Tensor:
        n = len(new)
        x = new.x if replay is None else torch.cat([new.x, replay.x])
        out = self.model(x)
        loss = cross_entropy(out[:n], new.y).mean() if n else out.new_zeros(())  # n = 0: rehearse()
        if replay is None:
            return loss
        out_r = out[n:]
        if replay.logits is not None and replay.logit_mask is not None and replay.logit_mask.any():
            k = min(out_r.shape[1], replay.logits.shape[1])
            mask = replay.logit_mask[:, :k].float()
            sq = (out_r[:, :k] - replay.logits[:, :k]) ** 2
            loss = loss + self.config.alpha * (sq * mask).sum() / mask.sum()
        return loss + self.config.beta * cross_entropy(out_r, replay.y).mean()
