"""Classifier architectures the trainer can learn and export.

Every network is split into ``features`` (image -> embedding) and ``head`` (an ``nn.Linear``), so that
class-incremental growth only ever touches ``head`` and strategies that need embeddings can get them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """Input size an architecture is built for; the exported metadata repeats it for the edge."""

    width: int
    height: int
    channels: int


ARCH_INPUT: dict[str, InputSpec] = {
    "convnet": InputSpec(28, 28, 1),
    "small_cnn": InputSpec(64, 64, 3),
    "small_cnn128": InputSpec(128, 128, 3),
    "mobilenet_v3_small": InputSpec(96, 96, 3),
}


class Classifier(nn.Module):
    """features -> head. The one shape every strategy, exporter and head-grower relies on."""

    def __init__(self, features: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(embed_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DihedralMean(nn.Module):
    """A classifier asked all eight turns and mirror images of its input; it answers their mean probability.

    The output is ``log`` of the mean softmax, so it is still a row of logits (their softmax *is* the mean)
    and every consumer -- the gate, the ONNX export, the edge's softmax and uncertainty -- reads it unchanged.
    The eight views run as one batch of 8N through the wrapped model, so the exported graph is one model.

    Why: a learner trained on turned copies (``strategy.augment: dihedral``) is invariant only on average, and
    its checkpoints swing by class (README, Adaptation #40); asked all eight views, the same checkpoint scored
    1.3-4.9 points higher on the final-window frames, 25 ``crack`` labels, offline (two seeds, #44). The price is
    eight forward passes per frame: at 64x64 about a millisecond on the edge, and the trainer's evaluations
    cost ~9x; in the loop on this 2-core VM that took the idle time rehearsal needed and the loop ended lower.
    """

    VIEWS = 8

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        t = x.transpose(2, 3)  # flips and a transpose are the eight (rot90 has no ONNX export in torchscript)
        views = torch.cat([x, x.flip(2), x.flip(3), x.flip(2, 3), t, t.flip(2), t.flip(3), t.flip(2, 3)])
        logp = torch.log_softmax(self.model(views), dim=1).reshape(self.VIEWS, n, self.num_classes)
        return torch.logsumexp(logp, dim=0) - math.log(self.VIEWS)


def convnet(num_classes: int = 10, in_channels: int = 1) -> Classifier:
    """The seed's MNIST ConvNet: conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, max-pool 2, fc 9216->128, ReLU, fc."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(1),
        nn.Linear(9216, 128),
        nn.ReLU(),
    )
    return Classifier(features, 128, num_classes)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Convolution, batch norm, 2x max pooling, ReLU. Pooling before the ReLU gives the same numbers (the ReLU is
    monotone, so it commutes with a max) on a quarter of the elements; the parameters and their state-dict keys are
    those of the ReLU-first order, so checkpoints of either load into the other."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.MaxPool2d(2), nn.ReLU())


def small_cnn(num_classes: int = 4, in_channels: int = 3) -> Classifier:
    """A small colour CNN for 64x64 ROIs: four conv blocks with batch norm, then global *max* pooling.

    Inspection classes are decided by a small local anomaly (a scratch, a dent) somewhere on the part;
    average pooling dilutes that one strong activation over the whole map, max pooling keeps it. Measured
    on sim:parts, 2000 crops, 3 epochs: 84 % with max pooling vs 56-60 % (still at the majority class) with
    average pooling.
    """

    features = nn.Sequential(
        _conv_block(in_channels, 16),
        _conv_block(16, 32),
        _conv_block(32, 64),
        _conv_block(64, 96),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(1),
    )
    return Classifier(features, 96, num_classes)


def small_cnn128(num_classes: int = 4, in_channels: int = 3) -> Classifier:
    """``small_cnn`` for 128x128 ROIs: a thin block at full resolution in front of ``small_cnn``'s four.

    A defect one pixel wide (sim:parts' ``crack``) loses half its contrast when the ROI is downscaled 2x for
    ``small_cnn``; the same labels then give about half the recall (README, Adaptation #28). ``small_cnn`` on
    the whole 128x128 ROI sees it but costs ~5x per training step. Here an 8-channel block finds the line at
    full resolution and its max pooling keeps it, at ~2x the 64x64 step's cost. A strided first convolution
    (the 64x64 cost) was measured too and learnt `crack` no better than the downscale (README, #29).
    """
    features = nn.Sequential(
        _conv_block(in_channels, 8),
        _conv_block(8, 16),
        _conv_block(16, 32),
        _conv_block(32, 64),
        _conv_block(64, 96),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(1),
    )
    return Classifier(features, 96, num_classes)


def mobilenet_v3_small(num_classes: int = 10, in_channels: int = 3) -> Classifier:
    """torchvision's MobileNetV3-Small, random init (weights come from ``--weights FILE`` when a user has them)."""
    from torchvision.models import mobilenet_v3_small as tv_mobilenet

    if in_channels != 3:
        raise ValueError("mobilenet_v3_small takes 3-channel input")
    net = tv_mobilenet(weights=None)
    embed_dim = net.classifier[-1].in_features
    net.classifier[-1] = nn.Identity()
    features = nn.Sequential(net.features, net.avgpool, nn.Flatten(1), net.classifier)
    return Classifier(features, embed_dim, num_classes)


#: The camera nets keep their convolution weights channels-last: oneDNN's convolutions, batch norm and pooling then
#: run without layout conversions, and the inputs need not change (each layer's output follows its weights). One torch
#: thread, B=64, with pooling before the ReLU: an update step of small_cnn128 0.33-0.39 s instead of 0.59-0.61 s, an
#: evaluation of 500 inputs 2.0 s instead of 3.8 s; small_cnn at 64x64 0.17-0.19 s instead of 0.24-0.25 s, 0.93 s
#: instead of 1.9 s (2026-12-02, in one run on a loaded machine). Split-MNIST's convnet (one channel, 28x28) is left
#: as its benchmark against Avalanche measured it.
CHANNELS_LAST = {"small_cnn", "small_cnn128"}
#: How the camera nets are computed, for benchmarks that must tell their measurements apart (bench freshness records it)
NETS_LAYOUT = "channels-last, pooling before the ReLU"

BUILDERS = {"convnet": convnet, "small_cnn": small_cnn, "small_cnn128": small_cnn128, "mobilenet_v3_small": mobilenet_v3_small}


def build_model(arch: str, num_classes: int, in_channels: int | None = None) -> Classifier:
    """Build an architecture by name; unknown names fail with the list of known ones."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(BUILDERS))}")
    channels = ARCH_INPUT[arch].channels if in_channels is None else in_channels
    model = BUILDERS[arch](num_classes=num_classes, in_channels=channels)
    if arch in CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def grow_head(model: Classifier, num_classes: int) -> bool:
    """Widen the head to ``num_classes`` outputs, keeping the old rows so old classes keep their scores.

    New rows start small (and new biases slightly negative relative to the old mean) so a newly added
    class does not steal predictions before it has been trained. Returns True when the head changed.
    """
    old = model.head
    if num_classes <= old.out_features:
        return False
    new = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
    nn.init.normal_(new.weight, std=0.01)
    new.weight[: old.out_features] = old.weight
    new.bias.fill_(float(old.bias.mean()) - 1.0)
    new.bias[: old.out_features] = old.bias
    model.head = new
    return True
