"""SimSource: a scenario turned into a camera-like frame stream.

Frame ``i`` depends only on (scenario, seed, i): the class comes from the
schedule at ``i`` and a per-frame generator seeded with ``(seed, i)``, drift
strengths are functions of ``i``, and all precomputed assets are derived from
the seed. So ``frame_at(i)`` gives the same pixels whether frames are read in
order, out of order, or in another process — tests, benchmarks and trainers can
all refer to "frame 812 of sim:parts?seed=3".
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np

from ..base import Frame
from .effects import Effects
from .scenario import Scenario
from .schedule import ClassSchedule

__all__ = ["SimSource"]

_STREAM = 0x51A1  # keeps per-frame seeds apart from the assets' seeds


class SimSource:
    """A simulated camera (implements the Source protocol, plus ``frame_at``)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        cls = scenario.renderer_cls
        self.schedule = ClassSchedule(
            list(cls.ALL_CLASSES), cls.initial_classes(scenario.options), scenario.priors, scenario.drifts
        )
        self.effects = Effects(scenario.drifts, scenario.width, scenario.height, scenario.seed)
        self._renderer: Any = None
        self._cursor = 0
        self._t0: float | None = None
        self._closed = False

    # -- Source protocol ------------------------------------------------------

    @property
    def fps(self) -> float:
        return self.scenario.fps

    @property
    def live(self) -> bool:
        """Paced to real time (``realtime=1``) it behaves like a camera; otherwise it waits for the reader."""
        return bool(self.scenario.realtime)

    @property
    def finite(self) -> bool:
        """True when the stream ends (``limit`` without ``loop``): the capture stops instead of reopening."""
        return self.scenario.limit is not None and not self.scenario.loop

    @property
    def labels(self) -> list[str]:
        """Every class this scenario can emit, in canonical order, including
        classes that only appear after a newclass drift."""
        return list(self.schedule.labels)

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """Fixed region of interest (x, y, w, h) where the object always is."""
        return self.renderer.roi

    @property
    def renderer(self) -> Any:
        if self._renderer is None:
            sc = self.scenario
            self._renderer = sc.renderer_cls(sc.width, sc.height, sc.seed, sc.options)
        return self._renderer

    def open(self) -> None:
        """Build assets (if not yet built) and rewind to frame 0."""
        _ = self.renderer
        self._cursor = 0
        self._t0 = time.monotonic()
        self._closed = False

    def read(self) -> Frame | None:
        """Next frame, or None after ``limit`` frames (unless ``loop``) or after close()."""
        if self._closed:
            return None
        if self._t0 is None:
            self.open()
        sc = self.scenario
        k = self._cursor
        if sc.limit is not None and k >= sc.limit:
            if not sc.loop:
                return None
            k %= sc.limit
        if sc.realtime:
            due = self._t0 + self._cursor / sc.fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self._cursor += 1
        frame = self.frame_at(k)
        if sc.loop and sc.limit is not None:
            frame.info["pass"] = (self._cursor - 1) // sc.limit
        return frame

    def close(self) -> None:
        self._closed = True
        self._t0 = None

    # -- random access --------------------------------------------------------

    def frame_at(self, i: int) -> Frame:
        """Frame ``i`` (pure function of scenario, seed and ``i``)."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        rng = np.random.default_rng([self.scenario.seed, _STREAM, i])
        truth = self.schedule.sample(i, float(rng.random()))
        image, extra = self.renderer.render(truth, rng, i)
        active = self.effects.active(i)
        image = self.effects.apply(image, active, rng)
        drift = [
            {"kind": d.kind, "name": d.name, "strength": round(s, 4)}
            for d, s in active
        ]
        for d in self.schedule.class_drifts:
            s = d.strength(i)
            if s > 0:
                drift.append({"kind": d.kind, "name": d.name, "strength": round(s, 4)})
        info: dict[str, Any] = {"roi": self.renderer.roi, "drift": drift, "source": self.scenario.kind}
        info.update(extra)
        return Frame(image=image, index=i, t=i / self.scenario.fps, truth=truth, info=info)

    def probs_at(self, i: int) -> dict[str, float]:
        """Class probabilities at frame ``i`` (for plots and tests)."""
        return dict(zip(self.schedule.labels, (float(p) for p in self.schedule.probs(i))))

    def events(self) -> list[int]:
        """Frames at which some drift starts (for contact sheets and reports)."""
        return sorted({d.start for d in self.scenario.drifts})

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def __enter__(self) -> "SimSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimSource({self.scenario.url or self.scenario.kind!r})"
