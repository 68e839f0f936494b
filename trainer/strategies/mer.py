"""Meta-Experience Replay (MER; Riemer et al., ICLR 2019), on top of iw-er's weighted loss.

The seed's fourth family: meta-learning. MER turns experience replay into a Reptile-style meta-learning
problem: instead of one step on (new + replay), it takes several inner steps on *different* replay draws,
each together with the new samples, and then moves the weights only part of the way (``beta``) from where
they started towards where the inner steps ended. To first order that update equals the replay gradient
plus a term that rewards *agreement* between the gradients of the inner batches (Riemer et al., eq. 7):
learning the new samples in a direction that old samples agree with, which is what limits interference.

Adapted to a trainer that does K optimiser steps per buffered update (the paper updates per example with
plain SGD): each of the K steps is one MER outer step with ``batches`` inner steps of the strategy's own
optimiser; every inner batch holds all new samples of the step (the paper puts the current example in every
batch) and its own slice of a replay draw ``batches`` times the usual size. Settings (:class:`MERConfig`):
iw-er's, plus ``batches`` (inner batches, default 2) and ``beta`` (across-batch Reptile rate, default 0.5; 1.0
turns it into plain replay with more steps). The loss of each inner step is iw-er's (selection weights, class
balance, ACE, replayed-logit distillation), so MER is compared with iw-er on the meta-learning part alone.
MER costs ``batches`` forward/backward passes per optimiser step of iw-er.
"""
from __future__ import annotations

from typing import Annotated

import msgspec
import torch

from trainer.replay import ReplayBatch
from trainer.strategies.base import LabelledBatch
from trainer.strategies.iw_er import IWER, IWERConfig


def _slice(r: ReplayBatch, lo: int, hi: int) -> ReplayBatch:
    return ReplayBatch(r.x[lo:hi], r.y[lo:hi], r.weight[lo:hi], None if r.logits is None else r.logits[lo:hi],
                       None if r.logit_mask is None else r.logit_mask[lo:hi], r.index[lo:hi])


class MERConfig(IWERConfig, kw_only=True):
    """MER's settings: iw-er's, plus the number of inner batches and the Reptile rate between them."""

    batches: Annotated[int, msgspec.Meta(ge=1)] = 2            # inner steps per outer step (MER's s)
    beta: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5     # across-batch Reptile rate (1.0 = plain replay)


class MER(IWER):
    """iw-er's loss, optimised with MER's Reptile outer step around ``batches`` inner steps."""

    name = "mer"
    Config = MERConfig
    config: MERConfig

    def _replay_minibatch(self) -> ReplayBatch | None:
        if not self.uses_memory or self.memory is None or len(self.memory) == 0:
            return None
        return self.memory.sample(self.config.replay_batch_size * self.config.batches, self.rng,
                                  balanced=self.config.balanced_replay)

    def _optimise(self, new: LabelledBatch, replay: ReplayBatch | None) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        k = self.config.batches
        losses = []
        for b in range(k):
            part = None
            if replay is not None and len(replay):
                per = -(-len(replay) // k)
                part = _slice(replay, b * per, min(len(replay), (b + 1) * per))
                if len(part) == 0:
                    part = None
            if len(new) == 0 and part is None:
                continue
            losses.append(super()._optimise(new, part))
        if losses:  # one MER step is one of the update's K steps (its ``batches`` inner steps are its cost)
            self.steps -= len(losses) - 1
        with torch.no_grad():  # across-batch Reptile: theta <- theta0 + beta (theta_k - theta0)
            for p, p0 in zip(params, start):
                p.mul_(self.config.beta).add_(p0, alpha=1.0 - self.config.beta)
        return float(sum(losses) / max(1, len(losses)))

