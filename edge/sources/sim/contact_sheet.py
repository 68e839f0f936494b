"""Contact sheet: a PNG grid of simulated frames around each drift event.

For a person to check that a scenario looks like an inspection camera and that
each drift does what it says before a long run is spent on it::

    python -m edge.sources.sim.contact_sheet "sim:parts?drift=..." --out sheet.png

Row 1 shows one example per class (frames searched from the start, or from
the class's newclass start); then one row per drift start: frames just before
the event and just after its ramp completes. Each tile is the full frame with
the ROI outlined, next to the ROI enlarged, labelled with frame index, truth
and active drifts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from ..base import Frame
from .source import SimSource

__all__ = ["render_sheet", "write_sheet", "main"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BAR = 34


def _tile(frame: Frame, zoom: int) -> np.ndarray:
    img = frame.image.copy()
    x, y, w, h = frame.info.get("roi", (0, 0, img.shape[1], img.shape[0]))
    cv2.rectangle(img, (x - 1, y - 1), (x + w, y + h), (0, 200, 255), 1)
    parts = [img]
    if zoom > 0:
        crop = frame.image[y : y + h, x : x + w]
        side = img.shape[0]
        crop = cv2.resize(crop, (side, side), interpolation=cv2.INTER_NEAREST if zoom > 2 else cv2.INTER_LINEAR)
        parts.append(np.full((side, 3, 3), 255, np.uint8))
        parts.append(crop)
    body = np.hstack(parts)
    bar = np.full((_BAR, body.shape[1], 3), 30, np.uint8)
    cv2.putText(bar, f"#{frame.index}  {frame.truth}", (4, 14), _FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    drift = ", ".join(f"{d['name']} {d['strength']:.2f}" for d in frame.info.get("drift", []))
    cv2.putText(bar, drift or "no drift", (4, 29), _FONT, 0.38, (120, 220, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, body])


def _row(title: str, tiles: list[np.ndarray], width: int, cols: int) -> np.ndarray:
    """Titled block of tiles, wrapped after ``cols`` tiles."""
    gap = 6
    h = tiles[0].shape[0]
    lines = (len(tiles) + cols - 1) // cols
    row = np.full((22 + lines * (h + gap), width, 3), 245, np.uint8)
    cv2.putText(row, title, (6, 16), _FONT, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    for k, t in enumerate(tiles):
        x = (k % cols) * (t.shape[1] + gap)
        y = 22 + (k // cols) * (h + gap)
        row[y : y + h, x : x + t.shape[1]] = t
    return row


def _examples(src: SimSource, labels: list[str], per_class: int, search: int) -> list[Frame]:
    starts = {c: 0 for c in labels}
    for d in src.schedule.class_drifts:
        if d.kind == "newclass":
            for c in d.value:
                starts[c] = d.start + d.ramp
    found: list[Frame] = []
    for c in labels:
        got = 0
        for i in range(starts[c], starts[c] + search):
            if src.schedule.probs(i)[src.schedule.labels.index(c)] <= 0:
                continue
            f = src.frame_at(i)
            if f.truth == c:
                found.append(f)
                got += 1
                if got >= per_class:
                    break
    return found


def render_sheet(
    src: SimSource, per_event: int = 3, step: int = 5, zoom: int = 2, per_class: int = 1, cols: int = 0
) -> np.ndarray:
    """Return the contact sheet image (BGR uint8) for ``src``."""
    rows_tiles: list[tuple[str, list[Frame]]] = []
    rows_tiles.append(("examples per class (before any drift)", _examples(src, src.labels, per_class, 2000)))
    by_start: dict[int, list] = {}
    for d in src.scenario.drifts:
        by_start.setdefault(d.start, []).append(d)
    for start in sorted(by_start):
        ds = by_start[start]
        ramp = max(d.ramp for d in ds)
        before = [start - 1 - step * j for j in reversed(range(per_event))]
        after = [start + max(0, ramp - 1) + step * j for j in range(per_event)]
        frames = [src.frame_at(i) for i in before + after if i >= 0]
        names = ", ".join(d.text or d.kind for d in ds)
        rows_tiles.append((f"event at frame {start}: {names}   (left: before, right: after ramp)", frames))
    tiles = [[_tile(f, zoom) for f in frames] for _, frames in rows_tiles if frames]
    titles = [t for t, frames in rows_tiles if frames]
    cols = cols or 2 * per_event
    width = (tiles[0][0].shape[1] + 6) * cols
    rows = [_row(title, row, width, cols) for title, row in zip(titles, tiles)]
    head = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(head, src.scenario.url or src.scenario.kind, (6, 19), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([head] + rows)


def write_sheet(url: str, out: str | Path, scale: float = 1.0, **kwargs: int) -> Path:
    """Render the contact sheet for ``url`` and write it as PNG to ``out``
    (``scale`` < 1 shrinks it, e.g. for images kept in the repo)."""
    from . import open_sim

    src = open_sim(url)
    sheet = render_sheet(src, **kwargs)
    if scale != 1.0:
        size = (max(1, round(sheet.shape[1] * scale)), max(1, round(sheet.shape[0] * scale)))
        sheet = cv2.resize(sheet, size, interpolation=cv2.INTER_AREA)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    out.write_bytes(buf.tobytes())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.sources.sim.contact_sheet", description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="sim: URL, e.g. 'sim:parts?drift=brightness:-0.4@300~100'")
    ap.add_argument("--out", default="sheet.png", help="PNG to write (default sheet.png)")
    ap.add_argument("--per-event", type=int, default=3, help="frames before and after each event (default 3)")
    ap.add_argument("--step", type=int, default=5, help="frame spacing within a row (default 5)")
    ap.add_argument("--per-class", type=int, default=1, help="examples per class in the first row (default 1)")
    ap.add_argument("--cols", type=int, default=0, help="tiles per line (default 2 x per-event)")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the whole sheet (e.g. 0.6)")
    ap.add_argument("--no-roi", action="store_true", help="omit the enlarged ROI next to each frame")
    args = ap.parse_args(argv)
    try:
        path = write_sheet(
            args.url, args.out, scale=args.scale, per_event=args.per_event, step=args.step,
            zoom=0 if args.no_roi else 2, per_class=args.per_class, cols=args.cols,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
