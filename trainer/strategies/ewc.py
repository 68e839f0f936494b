"""Online EWC (Kirkpatrick et al. 2017; Schwarz et al. 2018 online form): no replay, a quadratic penalty.

After every ``ewc_window`` update calls (the trainer has no task boundaries, so a window of updates
stands in for a "task"), the diagonal empirical Fisher of the window's samples is folded into a running
Fisher F ← γ·F + F_window and the parameters are anchored: θ* ← θ. Each step then minimises
CE(new) + λ/2 · Σ F (θ − θ*)². Per-sample gradients come from torch.func (vmap over grad), so the
Fisher is a true per-sample mean of squared gradients, not the square of a batch gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from trainer.replay import ReplayBatch
from trainer.strategies.base import LabelledBatch, Strategy, StrategyConfig, cross_entropy


class EWCConfig(StrategyConfig, kw_only=True):
    """Online EWC's settings; the values the Split-MNIST benchmark's numbers were measured with."""

    ewc_lambda: float = 100.0           # λ, strength of the quadratic penalty
    ewc_gamma: float = 1.0              # γ, decay of the running Fisher at each consolidation
    ewc_window: int = 100               # update calls per Fisher consolidation (a stand-in for a "task")


class EWC(Strategy):
    """CE on the new batch + online-EWC penalty; memory is not used."""

    name = "ewc"
    uses_memory = False
    Config = EWCConfig
    config: EWCConfig

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._acc_updates = 0

    def penalty(self) -> torch.Tensor:
        if not self.fisher:
            return torch.zeros(())
        total = torch.zeros(())
        for name, p in self.model.named_parameters():
            f = self.fisher.get(name)
            if f is not None:
                total = total + (f * (p - self.anchor[name]) ** 2).sum()
        return 0.5 * self.config.ewc_lambda * total

    def step_loss(self, new: LabelledBatch, replay: ReplayBatch | None) -> torch.Tensor:
        return cross_entropy(self.model(new.x), new.y).mean() + self.penalty()

    def _per_sample_sq_grads(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {k: v.detach() for k, v in self.model.named_parameters()}

        def loss_fn(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, p, (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        was = self.model.training
        self.model.eval()  # batch norm cannot run batch statistics per sample under vmap
        try:
            grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
        finally:
            self.model.train(was)
        return {k: (g**2).sum(0) for k, g in grads.items()}

    def after_update(self, batch: LabelledBatch) -> None:
        sq = self._per_sample_sq_grads(batch.x, batch.y)
        for k, v in sq.items():
            self._acc[k] = self._acc[k] + v if k in self._acc else v
        self._acc_n += len(batch)
        self._acc_updates += 1
        if self._acc_updates >= max(1, self.config.ewc_window):
            self.consolidate()

    def consolidate(self) -> None:
        """Fold the window's Fisher into the running one and anchor at the current parameters."""
        if self._acc_n == 0:
            return
        g = self.config.ewc_gamma
        for k, v in self._acc.items():
            f = v / self._acc_n
            self.fisher[k] = g * self.fisher[k] + f if k in self.fisher else f
        self.anchor = {k: p.detach().clone() for k, p in self.model.named_parameters()}
        self._acc, self._acc_n, self._acc_updates = {}, 0, 0

    def on_head_grown(self, old_weight: torch.Tensor, old_bias: torch.Tensor) -> None:
        # New head rows are unconstrained (zero Fisher); old rows keep their Fisher and anchor.
        head = self.model.head
        for name, p in (("head.weight", head.weight), ("head.bias", head.bias)):
            for store in (self.fisher, self.anchor, self._acc):
                if name in store and store[name].shape != p.shape:
                    grown = torch.zeros_like(p, requires_grad=False)
                    grown[: store[name].shape[0]] = store[name]
                    if store is self.anchor:
                        grown[store[name].shape[0]:] = p.detach()[store[name].shape[0]:]
                    store[name] = grown
