"""What every frame source hands the edge loop.

The edge node only ever talks to this interface, so a USB camera, an RTSP
stream, a video file and the simulated cameras (``sim:``) are interchangeable.
Simulated sources additionally fill ``truth`` so that samples can carry ground
truth and the demo can score itself without a human labeller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Frame", "Source"]


@dataclass(slots=True)
class Frame:
    """One captured frame.

    image: HxWx3 uint8, BGR (OpenCV's order, so nothing converts twice).
    index: frame number within the stream (0-based).
    t: timestamp in seconds; nominal stream time (index / fps) for simulated
       and file sources, capture time for live ones.
    truth: ground-truth class name when the source knows it (simulators), else None.
    info: free-form extras, e.g. ``roi`` (x, y, w, h) and ``drift`` (active drifts
       with their strength) for simulators.
    """

    image: np.ndarray
    index: int
    t: float
    truth: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """A camera-like stream of frames.

    ``read()`` returns None at end of stream or on failure; callers close and may
    reopen. ``labels`` lists the class names a source can emit (empty for real
    cameras, which know nothing about classes).
    """

    @property
    def fps(self) -> float: ...

    @property
    def labels(self) -> list[str]: ...

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...
