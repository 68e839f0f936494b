"""The camera nets: the layout they compute in changes their speed, never their function or their checkpoints."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.step_cost import relu_first as _relu_first
from trainer.nets import CHANNELS_LAST, build_model


@pytest.mark.parametrize("arch,size", [("small_cnn", 64), ("small_cnn128", 128)])
def test_pooling_before_the_relu_computes_what_the_relu_first_order_did(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 5).eval()
    for m in model.modules():  # batch norm that shifts many maxima below zero, where the order could matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.bias.data.normal_(0, 2)
    old = _relu_first(model)
    assert [type(b[2]).__name__ for b in old.features if isinstance(b, nn.Sequential)][0] == "ReLU"
    x = torch.rand(6, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(model(x), old(x), atol=1e-5)


def test_the_camera_nets_keep_channels_last_weights_and_old_checkpoints_load() -> None:
    assert CHANNELS_LAST == {"small_cnn", "small_cnn128"}
    model = build_model("small_cnn128", 5)
    conv = model.features[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not build_model("convnet", 10).features[2].weight.is_contiguous(memory_format=torch.channels_last)
    old = _relu_first(build_model("small_cnn128", 5))
    state = old.state_dict()  # a checkpoint written before: same keys (pooling and ReLU hold no parameters)
    model.load_state_dict(state)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # loading keeps the layout
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), old.eval()(x), atol=1e-5)
