"""Per-sample importance weights and the self-normalised weighted loss.

Why weights at all: edges upload a frame with probability ``p_select`` that depends on how uncertain
the model was, so the labelled pool over-represents hard frames. Weighting each sample by
``1 / p_select`` (inverse-propensity, capped at ``w_max`` to bound the variance) makes the expected
training loss equal to the loss over *all* frames the edge saw. On top of that the seed's idea of
"importance from the influence on the model" is offered per sample (loss-based or gradient-norm-based),
and class balance counters a skewed label distribution.

Weights are computed in float64 from a probability clipped to ``[P_SELECT_MIN, 1]`` (the protocol's floor):
a ``p_select`` of 1e-50 is 0 in float32 and ``1/p`` is then infinite, which used to stop training for good.
A stored value that is out of range (older data, a bug) therefore costs at most ``w_max``, never an update.

Losses are *self-normalised* per batch (Σ wᵢℓᵢ / Σ wᵢ): the scale of the gradient then does not
depend on the absolute size of the weights, so the learning rate stays meaningful whatever p_select is.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from protocol.messages import P_SELECT_MIN

__all__ = [
    "class_balance_weights",
    "gradnorm_importance",
    "importance_weights",
    "loss_importance",
    "selection_weights",
    "weighted_loss",
]

_EPS = 1e-8


def _as_tensor(values: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float32)
    return t.to(torch.float32).reshape(-1)


def selection_weights(p_select: torch.Tensor | Sequence[float], w_max: float = 10.0) -> torch.Tensor:
    """``min(1 / p_select, w_max)``: the capped inverse-propensity correction for the edge's random selection.

    1.0 means "not selected by an edge" (weight 1). Computed in float64 with ``p_select`` clipped to
    ``[P_SELECT_MIN, 1]`` (NaN counts as 1), so every weight is finite and in ``[1, w_max]``; returned as float32.
    ``w_max`` below 1 is a configuration error (the config rejects it at load).
    """
    if not (w_max >= 1 and math.isfinite(w_max)):
        raise ValueError(f"w_max must be a finite number >= 1, got {w_max}")
    p = (p_select if isinstance(p_select, torch.Tensor) else torch.as_tensor(p_select, dtype=torch.float64))
    p = torch.nan_to_num(p.to(torch.float64).reshape(-1), nan=1.0)
    w = torch.clamp(1.0 / torch.clamp(p, min=P_SELECT_MIN, max=1.0), max=float(w_max))
    return w.to(torch.float32)


def loss_importance(losses: torch.Tensor) -> torch.Tensor:
    """Per-sample loss divided by the batch mean (mean 1): samples the model gets wrong count more.

    Detached: importance is a weight, not something to differentiate through.
    """
    losses = losses.detach().to(torch.float32).reshape(-1)
    return (losses + _EPS) / (losses.mean() + _EPS)


def gradnorm_importance(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of d(CE)/d(logits) = softmax(z) − onehot(y), divided by the batch mean.

    The seed ranks samples by gradient norm but computes it per *parameter*; this is the per-sample
    version, in closed form and so free (no extra backward pass). It lies in [0, √2].
    """
    z = logits.detach().to(torch.float32)
    g = F.softmax(z, dim=1)
    g[torch.arange(len(labels)), labels.long()] -= 1.0
    norms = g.norm(dim=1)
    return (norms + _EPS) / (norms.mean() + _EPS)


def class_balance_weights(labels: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse class frequency per sample, scaled so the weights average 1 over the batch.

    ``counts`` (per-class counts, e.g. of the stream so far) defaults to the counts in ``labels``.
    """
    labels = labels.long().reshape(-1)
    if counts is None:
        counts = torch.bincount(labels)
    counts = _as_tensor(counts)
    if torch.any(counts[labels] <= 0):
        raise ValueError("a label has zero count in class_balance counts")
    w = 1.0 / counts[labels]
    return w * (len(labels) / w.sum())


def importance_weights(
    p_select: torch.Tensor | Sequence[float],
    w_max: float = 10.0,
    importance: torch.Tensor | Sequence[float] | None = None,
    class_balance: bool | torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """w = min(1/p_select, w_max) × importance (optional) × class balance (optional).

    - ``importance``: any per-sample factor, typically :func:`loss_importance` or
      :func:`gradnorm_importance` of the current model (the seed's "influence" weights).
    - ``class_balance``: ``True`` → inverse class frequency within ``labels``; a tensor → per-class
      counts to take the inverse frequency from (e.g. counts of the labelled stream so far).
    """
    w = selection_weights(p_select, w_max)
    if importance is not None:
        imp = _as_tensor(importance)
        if imp.shape != w.shape:
            raise ValueError(f"importance has {imp.numel()} values for {w.numel()} samples")
        if torch.any(imp < 0):
            raise ValueError("importance must be >= 0")
        w = w * imp
    if class_balance is not None and class_balance is not False:
        if labels is None:
            raise ValueError("class_balance needs labels")
        counts = None if class_balance is True else class_balance
        w = w * class_balance_weights(labels, counts)
    return w


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Self-normalised weighted mean Σ wᵢℓᵢ / Σ wᵢ (weights are treated as constants).

    Equal weights give the plain mean, so unweighted and weighted runs share one learning rate.
    """
    w = weights.detach().to(losses.dtype).reshape(losses.shape)
    total = w.sum()
    if total <= 0:
        raise ValueError("weights sum to zero")
    return (w * losses).sum() / total
