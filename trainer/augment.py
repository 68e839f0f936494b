"""Training-time augmentation on batches of inputs in [0, 1]: photometric and small geometric changes.

Why: a camera's world changes in ways the bootstrap set never showed -- a lamp fails (darker, warmer), the
exposure drifts, the part sits a little rotated or off-centre. A model that has seen such variations while
learning loses less when they happen, before any new label arrives. Everything here is a batched tensor
operation (a few hundred microseconds for 32 inputs of 64x64x3), seeded by a ``torch.Generator`` so runs
repeat, and label-preserving by construction: no flips (a mirrored 2 is not a 2), rotations of at most a
few degrees -- except ``dihedral`` below, which flips and turns, and is only ever asked for by name.

- photometric: per-sample global gain (brightness), contrast around the sample's mean, per-channel gains (a
  colour cast; colour inputs only) and a gamma; then clamped to [0, 1];
- geometric: per-sample rotation, scale and translation through one affine resampling (border: the edge
  pixels, so no black corners appear that the data never has);
- dihedral (off unless asked for): per-sample quarter turns and mirroring, exact pixel permutations. Only for
  inputs whose orientation carries no meaning -- a defect on a part's surface is a crack whichever way it
  runs -- so each label of a new defect stands for eight; never for digits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Augment", "AUGMENTS", "augment", "dihedral", "parse_augment"]


@dataclass(frozen=True)
class Augment:
    """Ranges of the random changes; ``p`` is the probability that a sample is changed at all."""

    photometric: bool = True
    geometric: bool = True
    p: float = 0.8
    brightness: float = 0.5      # gain in [1 - b, 1 + b/2]: darkening is the common failure, so more of it
    contrast: float = 0.4        # factor in [1 - c, 1 + c/2]
    cast: float = 0.25           # per-channel gain in [1 - c, 1 + c]
    gamma: float = 0.3           # exponent in [1 - g, 1 + g]
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.06      # fraction of the side
    dihedral: bool = False       # quarter turns and flips (label-preserving for surface defects, not for digits)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return augment(x, self, gen)


AUGMENTS = {
    "none": None,
    "photometric": Augment(geometric=False),
    "geometric": Augment(photometric=False),
    "both": Augment(),
    "dihedral": Augment(photometric=False, geometric=False, dihedral=True),
    "all": Augment(dihedral=True),
}


def parse_augment(value: str | bool | Augment | None) -> Augment | None:
    """``None``/``False``/"none" -> None; ``True``/"both" -> both; "photometric"/"geometric"/"dihedral" -> that
    one; "all" -> both and dihedral."""
    if value is None or value is False:
        return None
    if value is True:
        return AUGMENTS["both"]
    if isinstance(value, Augment):
        return value
    if value not in AUGMENTS:
        raise ValueError(f"unknown augmentation {value!r}; use one of {', '.join(AUGMENTS)}")
    return AUGMENTS[value]


def _u(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment(x: torch.Tensor, a: Augment, gen: torch.Generator | None = None) -> torch.Tensor:
    """A changed copy of ``x`` (N, C, H, W) in [0, 1]; ``x`` itself is never modified."""
    n, c = x.shape[0], x.shape[1]
    if n == 0:
        return x
    out = x
    if a.dihedral:
        out = dihedral(out, gen)
    if a.geometric:
        on = (torch.rand(n, generator=gen) < a.p).float().view(n, 1, 1, 1)
        ang = _u(n, -a.rotate_deg, a.rotate_deg, gen) * math.pi / 180.0
        sc = 1.0 + _u(n, -a.scale, a.scale, gen)
        tx, ty = _u(n, -a.translate, a.translate, gen) * 2, _u(n, -a.translate, a.translate, gen) * 2
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = on * warped + (1 - on) * out
    if a.photometric:
        on = (torch.rand(n, generator=gen) < a.p).float().view(n, 1, 1, 1)
        gain = _u(n, 1 - a.brightness, 1 + a.brightness / 2, gen).view(n, 1, 1, 1)
        con = _u(n, 1 - a.contrast, 1 + a.contrast / 2, gen).view(n, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        y = (out - mean) * con + mean
        y = y * gain
        if c == 3 and a.cast > 0:
            y = y * _u(n * 3, 1 - a.cast, 1 + a.cast, gen).view(n, 3, 1, 1)
        y = y.clamp(0.0, 1.0)
        gam = _u(n, 1 - a.gamma, 1 + a.gamma, gen).view(n, 1, 1, 1)
        y = y.clamp(min=1e-6).pow(gam)
        out = on * y + (1 - on) * out
    return out.clamp(0.0, 1.0)


def dihedral(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Each sample of ``x`` (N, C, H, W; square) turned by a random multiple of 90 degrees and mirrored with
    probability 1/2: one of the eight symmetries of the square, uniformly, as an exact pixel permutation."""
    n = x.shape[0]
    turns = torch.randint(0, 4, (n,), generator=gen)
    flips = torch.randint(0, 2, (n,), generator=gen)
    out = x.clone()
    for k in range(4):
        for f in range(2):
            sel = ((turns == k) & (flips == f)).nonzero().flatten()
            if len(sel):
                y = torch.rot90(x[sel], k, dims=(2, 3))
                out[sel] = torch.flip(y, dims=(3,)) if f else y
    return out
