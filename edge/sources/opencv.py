"""Real cameras through OpenCV: a USB device index, a video file, or an RTSP/HTTP stream.

OpenCV does the decoding (FFmpeg/V4L2 backends of the headless build); this class only gives captures the
same interface as the simulated cameras and turns OpenCV's silent failures into clear errors.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge.sources.base import Frame


class SourceError(RuntimeError):
    """A source could not be opened; the message says which and why."""


class OpenCVSource:
    """A ``cv2.VideoCapture`` behind the edge's Source interface.

    ``loop=True`` rewinds a video file at its end, so a recorded clip can stand in for a camera.
    """

    def __init__(self, target: str | int, *, loop: bool = False, width: int | None = None,
                 height: int | None = None, fps: float | None = None, open_timeout_s: float = 10.0) -> None:
        self.target = target
        self.loop = loop
        self._width, self._height, self._fps_request = width, height, fps
        self._open_timeout_s = open_timeout_s
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        self._fps = float(fps or 0.0)

    @property
    def is_file(self) -> bool:
        return isinstance(self.target, str) and "://" not in self.target

    @property
    def live(self) -> bool:
        """Cameras and streams run on their own clock; a file can wait for the reader."""
        return not self.is_file

    @property
    def finite(self) -> bool:
        return self.is_file and not self.loop

    @property
    def fps(self) -> float:
        return self._fps or 30.0

    @property
    def labels(self) -> list[str]:
        return []

    def open(self) -> None:
        if self.is_file and not Path(str(self.target)).exists():
            raise SourceError(f"video file not found: {self.target}")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self._open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self._open_timeout_s * 1000)]
        cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video source {self.target!r} (no such device, unreadable file, "
                              f"or stream not reachable)")
        if self._width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._width)
        if self._height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._height)
        if self._fps_request:
            cap.set(cv2.CAP_PROP_FPS, self._fps_request)
        reported = cap.get(cv2.CAP_PROP_FPS)
        if not self._fps_request and reported and 0 < reported < 1000:
            self._fps = float(reported)
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok and self.loop and self.is_file:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok or image is None:
            return None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        frame = Frame(image=np.ascontiguousarray(image), index=self._index, t=time.time())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
