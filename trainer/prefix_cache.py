"""The outputs of a candidate's frozen blocks, kept per held-out input, so that the gate runs only the blocks that learn.

Why: with ``strategy.frozen_blocks`` N the first N blocks of the net's features keep their weights and their batch-norm
statistics through every update (trainer/strategies/base.py ``Strategy.freeze_early``), so their output for a held-out
input is the same at every evaluation. Those are the blocks at full resolution: in ``small_cnn128`` the first two of
five hold 78 % of an evaluation's time (500 inputs, one thread: 0.73 of 0.94 s). The gate judges every candidate on
the bootstrap slice and the newest held-out uploads, most of which it has seen before; kept here, an evaluation runs
the frozen blocks only on the inputs that are new to it.

The cache follows the held-out window (keys that left it are dropped), so it is bounded as the service's own cache of
held-out inputs is, and smaller per input (after two blocks: 16x32x32 floats for ``small_cnn128``'s 3x128x128 input,
32x16x16 for ``small_cnn``'s 3x64x64). It is emptied when the frozen blocks' weights
or statistics differ from those it was filled with (a checkpoint of another model, another setting), which it checks
by a digest of their state at every call: a few kilobytes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import nn

from .nets import Classifier

__all__ = ["PrefixCache"]


class PrefixCache:
    """``predict(model, n_frozen, x, keys)``: arg-max predictions of ``model`` on ``x``, reusing the output of its first
    ``n_frozen`` feature blocks for every key seen before."""

    def __init__(self, batch_size: int = 500) -> None:
        self.batch_size = batch_size
        self._digest = ""
        self._out: dict[Hashable, torch.Tensor] = {}
        self.computed = 0  # inputs run through the frozen blocks (a test and a reader can see what was saved)

    def __len__(self) -> int:
        return len(self._out)

    @torch.no_grad()
    def predict(self, model: Classifier, n_frozen: int, x: torch.Tensor, keys: Sequence[Hashable]) -> np.ndarray:
        if len(keys) != len(x):
            raise ValueError(f"{len(keys)} keys for {len(x)} inputs")
        blocks = list(model.features.children())
        prefix, rest = nn.Sequential(*blocks[:n_frozen]), nn.Sequential(*blocks[n_frozen:], model.head)
        was = model.training
        model.eval()
        try:
            self._fill(prefix, x, keys)
            out = []
            for i in range(0, len(keys), self.batch_size):
                h = torch.stack([self._out[k] for k in keys[i : i + self.batch_size]])
                out.append(rest(h).argmax(dim=1))
        finally:
            model.train(was)
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)

    def _fill(self, prefix: nn.Module, x: torch.Tensor, keys: Sequence[Hashable]) -> None:
        digest = _digest(prefix)
        if digest != self._digest:
            self._out, self._digest = {}, digest
        keep = set(keys)
        self._out = {k: v for k, v in self._out.items() if k in keep}
        missing = [i for i, k in enumerate(keys) if k not in self._out]
        for i in range(0, len(missing), self.batch_size):
            idx = missing[i : i + self.batch_size]
            for j, h in zip(idx, prefix(x[idx])):
                self._out[keys[j]] = h.clone()  # its own storage: a view would keep its whole batch alive
        self.computed += len(missing)


def _digest(module: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
