"""Constrained field types shared by the envelope messages and the plain-JSON reports.

msgspec enforces the ``Meta`` constraints when it *decodes* (types, ranges, patterns, lengths), so a
receiver never sees an out-of-range value; ``check_finite`` covers what JSON decoding cannot produce but a
sender could construct (NaN, inf).
"""

from __future__ import annotations

import math
from typing import Annotated

from msgspec import Meta

from .topics import ID_PATTERN

__all__ = ["Id", "Label", "Text", "NonNegInt", "PosInt", "Dim", "NonNegFloat", "Prob", "Hex64", "INT_MAX",
           "check_finite"]

INT_MAX = 2**63 - 1

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
Label = Annotated[str, Meta(min_length=1, max_length=256)]
Text = Annotated[str, Meta(max_length=1024)]
NonNegInt = Annotated[int, Meta(ge=0, le=INT_MAX)]
PosInt = Annotated[int, Meta(ge=1, le=INT_MAX)]
Dim = Annotated[int, Meta(ge=1, le=65535)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Prob = Annotated[float, Meta(ge=0, le=1)]
Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]


def check_finite(obj: object, names: tuple[str, ...]) -> None:
    """Raise ValueError if a named float field is NaN or infinite (named fields only: a generic loop over all
    fields doubled decode time)."""
    for name in names:
        v = getattr(obj, name)
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
