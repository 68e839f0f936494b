"""Weights math with hand-computed numbers."""
import math

import pytest
import torch

from trainer.weighting import (
    class_balance_weights,
    gradnorm_importance,
    importance_weights,
    loss_importance,
    selection_weights,
    weighted_loss,
)


def test_selection_weights_inverse_and_capped():
    w = selection_weights([1.0, 0.5, 0.25, 0.05], w_max=10.0)
    assert w.tolist() == pytest.approx([1.0, 2.0, 4.0, 10.0])  # 1/0.05 = 20 capped at 10


def test_poison_p_select_gives_a_finite_capped_weight_not_an_error():
    """p_select = 1e-50 is 0 in float32 and used to raise (and wedge training); now it is clipped."""
    w = selection_weights([1e-50, 0.0, float("nan"), 1.5, -3.0], w_max=10.0)
    assert torch.isfinite(w).all() and w.dtype == torch.float32
    assert w.tolist() == pytest.approx([10.0, 10.0, 1.0, 1.0, 10.0])
    # float32 input that already underflowed to 0, as LabelledBatch stores it
    assert selection_weights(torch.tensor([1e-50], dtype=torch.float32), w_max=5.0).tolist() == [5.0]
    w = importance_weights(torch.tensor([1e-50, 0.5], dtype=torch.float64), w_max=10.0)
    assert weighted_loss(torch.tensor([1.0, 3.0]), w).item() == pytest.approx((10 * 1 + 2 * 3) / 12)


@pytest.mark.parametrize("w_max", [0.5, 0.0, -1.0, float("nan"), float("inf")])
def test_w_max_below_one_is_refused(w_max):
    with pytest.raises(ValueError, match="w_max"):
        selection_weights([0.5], w_max=w_max)


def test_importance_multiplies():
    w = importance_weights([0.5, 1.0], w_max=10.0, importance=[3.0, 0.5])
    assert w.tolist() == pytest.approx([6.0, 0.5])


def test_class_balance_inverse_frequency():
    # labels 0,0,0,1: counts 3,1 -> raw 1/3,1/3,1/3,1 (sum 2) -> scaled by 4/2 -> 2/3,2/3,2/3,2
    w = class_balance_weights(torch.tensor([0, 0, 0, 1]))
    assert w.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    full = importance_weights([1.0, 1.0, 1.0, 0.5], class_balance=True, labels=torch.tensor([0, 0, 0, 1]))
    assert full.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 4.0])


def test_class_balance_from_given_counts():
    # counts [1, 4]; labels 0,1 -> raw 1, 0.25 (sum 1.25) -> x 2/1.25 -> 1.6, 0.4
    w = class_balance_weights(torch.tensor([0, 1]), torch.tensor([1.0, 4.0]))
    assert w.tolist() == pytest.approx([1.6, 0.4])


def test_class_balance_needs_labels():
    with pytest.raises(ValueError):
        importance_weights([1.0], class_balance=True)


def test_loss_importance_normalised():
    imp = loss_importance(torch.tensor([1.0, 3.0]))
    assert imp.tolist() == pytest.approx([0.5, 1.5], rel=1e-6)


def test_gradnorm_importance_closed_form():
    # logits (0,0): softmax (0.5,0.5), label 0 -> grad (-0.5, 0.5), norm sqrt(0.5)
    # logits (10,-10) label 0: grad ~ (-2e-9, 2e-9) ~ 0
    imp = gradnorm_importance(torch.tensor([[0.0, 0.0], [10.0, -10.0]]), torch.tensor([0, 0]))
    n0 = math.sqrt(0.5)
    mean = n0 / 2
    assert imp[0].item() == pytest.approx(n0 / mean, rel=1e-4)
    assert imp[1].item() == pytest.approx(0.0, abs=1e-4)


def test_gradnorm_matches_autograd():
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    per = torch.nn.functional.cross_entropy(z, y, reduction="sum")
    (g,) = torch.autograd.grad(per, z)
    norms = g.norm(dim=1)
    assert gradnorm_importance(z, y).tolist() == pytest.approx((norms / norms.mean()).tolist(), rel=1e-5)


def test_weighted_loss_self_normalised():
    losses = torch.tensor([1.0, 2.0, 4.0])
    # (1*1 + 2*2 + 1*4) / (1+2+1) = 9/4
    assert weighted_loss(losses, torch.tensor([1.0, 2.0, 1.0])).item() == pytest.approx(2.25)
    # scale invariance and equal weights = mean
    assert weighted_loss(losses, torch.tensor([10.0, 20.0, 10.0])).item() == pytest.approx(2.25)
    assert weighted_loss(losses, torch.ones(3)).item() == pytest.approx(7 / 3)


def test_weighted_loss_gradient_does_not_flow_into_weights():
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.tensor([1.0, 3.0], requires_grad=True)
    weighted_loss(losses, w).backward()
    assert losses.grad.tolist() == pytest.approx([0.25, 0.75])
    assert w.grad is None
