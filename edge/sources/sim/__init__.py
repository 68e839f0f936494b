"""Simulated cameras: ``sim:parts`` (defect inspection) and ``sim:digits`` (MNIST labels).

They behave like the OpenCV sources (``open()``, ``read() -> Frame | None``,
``close()``, ``.fps``, ``.labels``) and add ground truth, a fixed ROI and
scheduled drift, so the whole learning loop can be exercised — and scored —
without a camera. Frame ``i`` is a pure function of (scenario, seed, i);
``frame_at(i)`` gives random access.

URL syntax
----------
``sim:KIND?key=value&key=value...`` with KIND ``parts`` or ``digits``.

Common options:
  seed=INT (0) · fps=FLOAT (30) · realtime=0|1 (0: return frames as fast as
  asked; 1: pace read() to fps) · width=, height= (320, 240) · limit=N frames
  (default infinite) · loop=0|1 (restart at frame 0 after limit) ·
  priors=CLASS=W/CLASS=W (initial class weights; parts default ok=0.55, the
  defects share the rest) · drift=ITEMS · scenario=PATH.yaml

Digits only: data=DIR (t10k IDX files, .gz or raw; default repo data/mnist) ·
classes=0-4 (initial digits; also 0/1/2) · split=all|stream|test.

Drift items, comma-separated (``drift=`` may also repeat)::

    KIND[:PARAMS][@START[~RAMP][..END]]

START, RAMP and END are frames (``300``) or seconds at the nominal fps
(``10s``). Without ``@`` the drift is on from frame 0. Strength is 0 before
START, rises linearly to 1 over RAMP frames (none = abrupt), and returns to 0
at END (none = stays). Multi-valued PARAMS use ``/``.

  brightness:-0.4    illumination gain change (-0.4 = 40 % darker, 0.3 = brighter)
  contrast:0.6       contrast factor around mid-grey
  cast:0.9/1.0/1.25  per-channel gains B/G/R (colour cast; alias colour, color)
  blur:2             defocus, Gaussian-equivalent sigma in px
  noise:12           extra sensor noise, sigma in grey levels
  rotate:8           camera rotation in degrees (mount knocked)
  prior:scratch=0.4  class-prior shift towards the given probabilities (others rescaled)
  newclass:crack     class appears (parts: crack; digits: newclass:5-9); ``=P``
                     sets its probability, default the median current prior

Example: ``sim:parts?seed=3&drift=brightness:-0.4@300~100,newclass:crack@600``.

YAML scenario (``sim:parts?scenario=line3.yaml``): the same keys at top level,
optional ``source: parts``, and ``drift:`` as a list of compact strings or
mappings ``{kind, value, start, ramp, end}``; URL options override the file
and URL drifts are appended to the file's.
"""

from __future__ import annotations

from .drift import Drift, parse_drift
from .scenario import Scenario, parse_url
from .source import SimSource

__all__ = ["open_sim", "SimSource", "Scenario", "Drift", "parse_url", "parse_drift"]


def open_sim(url: str) -> SimSource:
    """Build (not yet opened) simulated source from a ``sim:`` URL.

    Raises ValueError naming the bad key for malformed URLs or scenario files.
    """
    return SimSource(parse_url(url))
