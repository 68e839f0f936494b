"""Frame sources: real cameras through OpenCV and the simulated cameras (``sim:``).

``open_source(url)`` is the one place that turns a configured source string into a Source:

- ``0``, ``1`` ...            a USB/V4L2 device index
- ``path/to/clip.mp4``        a video file (``?loop=1`` to rewind at its end)
- ``rtsp://...``, ``http://`` a network stream
- ``sim:parts?...``, ``sim:digits?...``  simulated cameras (see ``edge.sources.sim``)
"""
from __future__ import annotations

from urllib.parse import parse_qs

from edge.sources.base import Frame, Source
from edge.sources.opencv import OpenCVSource, SourceError

__all__ = ["Frame", "Source", "SourceError", "OpenCVSource", "open_source"]


def open_source(url: str) -> Source:
    """Build (not yet open) the source a configuration names; raises ValueError for a malformed string."""
    url = str(url).strip()
    if not url:
        raise ValueError("source: empty source string")
    if url.startswith("sim:"):
        from edge.sources.sim import open_sim

        return open_sim(url)
    if url.isdigit():
        return OpenCVSource(int(url))
    if "://" in url:
        return OpenCVSource(url)
    path, _, query = url.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(options) - {"loop"}
    if unknown:
        raise ValueError(f"source: unknown option(s) {sorted(unknown)} for video file {path!r}; known: loop")
    return OpenCVSource(path, loop=options.get("loop", "0") not in ("0", "false", "no"))
