"""Few-shot new classes: a new class's head row starts where its first samples are, not at noise.

When a new defect type appears, the head grows by one row (trainer.nets.grow_head: small random weights, a bias
one below the old mean so the class does not steal predictions before it is trained). With a handful of labels
and a few optimiser steps that row needs many updates to win against rows trained for thousands of steps: in
the demo, ``crack`` was still taken for ``ok`` in 40 of 99 frames at the end.

Imprinting (Qi et al., CVPR 2018, for a linear head): at the first update that holds samples of the new class,
its row is set to the direction from the old classes' mean embedding to the new class's mean embedding, scaled
to the old rows' mean norm, and its bias is set so that the new samples sit on the boundary with their best old
class. Training then only has to push them over it. Everything else is the strategy's own update.
"""
from __future__ import annotations

from typing import Any

import torch

from trainer.strategies.base import LabelledBatch
from trainer.strategies.iw_er import IWER

__all__ = ["ImprintMixin", "FewShotIWER", "imprint_rows"]


@torch.no_grad()
def imprint_rows(model: Any, x_new: torch.Tensor, y_new: torch.Tensor, x_old: torch.Tensor | None,
                 rows: set[int]) -> list[int]:
    """Set the head rows ``rows`` from samples (``x_new``, ``y_new``) of those classes and old samples ``x_old``
    (see the module docstring). Returns the rows imprinted (those with at least one sample)."""
    was = model.training
    model.eval()
    emb_new = model.embed(x_new)
    emb_old = model.embed(x_old) if x_old is not None and len(x_old) else None
    head = model.head
    old_rows = [i for i in range(head.out_features) if i not in rows]
    norm = head.weight[old_rows].norm(dim=1).mean() if old_rows else torch.tensor(1.0)
    done = []
    for c in sorted(rows):
        sel = y_new == c
        if not bool(sel.any()):
            continue
        mu = emb_new[sel].mean(0)
        ref = emb_old.mean(0) if emb_old is not None else torch.zeros_like(mu)
        d = mu - ref
        w = d / d.norm().clamp(min=1e-6) * norm
        head.weight[c] = w
        head.bias[c] = 0.0
        if old_rows:
            logits_old = emb_new[sel] @ head.weight[old_rows].T + head.bias[old_rows]
            best_old = logits_old.max(1).values.mean()
            head.bias[c] = best_old - (emb_new[sel] @ w).mean()
        done.append(c)
    model.train(was)
    return done


class ImprintMixin:
    """Imprint every new head row at the first update that has samples of it (mix in before a Strategy)."""

    def observe_new_classes(self, num_classes: int) -> bool:
        old = self.model.num_classes  # type: ignore[attr-defined]
        grown = super().observe_new_classes(num_classes)  # type: ignore[misc]
        if grown:
            self.__dict__.setdefault("_to_imprint", set()).update(range(old, num_classes))
        return grown

    def update(self, batch: LabelledBatch, steps: int = 1) -> dict[str, float]:
        top = int(batch.y.max()) + 1 if len(batch) else 0
        if top > self.model.num_classes:  # type: ignore[attr-defined]
            self.observe_new_classes(top)
        todo = self.__dict__.get("_to_imprint", set()) & {int(c) for c in batch.y.unique()}
        if todo:
            old = self._replay_minibatch()  # type: ignore[attr-defined]
            x_old = None if old is None else old.x[~torch.isin(old.y, torch.tensor(sorted(todo)))]
            sel = torch.isin(batch.y, torch.tensor(sorted(todo)))
            for c in imprint_rows(self.model, batch.x[sel], batch.y[sel], x_old, todo):  # type: ignore[attr-defined]
                self._to_imprint.discard(c)
        return super().update(batch, steps)  # type: ignore[misc]


class FewShotIWER(ImprintMixin, IWER):
    """iw-er with imprinted new-class rows."""

    name = "iw-er"  # same checkpoint format and settings as iw-er
