"""Drift events: what changes in a simulated camera, from when, and how fast.

A drift is ``KIND[:PARAMS][@START[~RAMP][..END]]`` in a URL (see the package
docstring for the full grammar) or the equivalent mapping in a YAML scenario.
Its strength at frame ``i`` is a pure function of ``i`` (never of wall time or of
what was generated before), which is what keeps frame ``i`` reproducible under
random access.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "PHOTOMETRIC",
    "Drift",
    "parse_drift",
    "parse_drift_list",
    "drift_from_mapping",
]

#: Drifts that change pixels (applied after rendering) versus drifts that change
#: what is shown (class schedule).
PHOTOMETRIC = ("brightness", "contrast", "cast", "blur", "noise", "rotate")
KINDS = PHOTOMETRIC + ("prior", "newclass")
_ALIASES = {
    "colour": "cast",
    "color": "cast",
    "gain": "cast",
    "rotation": "rotate",
    "sensor_noise": "noise",
    "new_class": "newclass",
    "class": "newclass",
    "priors": "prior",
}

_TIME = r"[0-9]+(?:\.[0-9]*)?s?"
_ITEM = re.compile(
    rf"^(?P<kind>[A-Za-z_]+)(?::(?P<params>[^@]*))?"
    rf"(?:@(?P<start>{_TIME})(?:~(?P<ramp>{_TIME}))?(?:\.\.(?P<end>{_TIME}))?)?$"
)


@dataclass(frozen=True, slots=True)
class Drift:
    """One scheduled change.

    value: the kind's parameter at full strength — a float for brightness
      (relative gain change, -0.4 = 40 % darker), contrast (factor), blur
      (Gaussian sigma, px), noise (sigma, grey levels) and rotate (degrees); a
      (b, g, r) gain tuple for cast; a {class: probability} dict for prior; a
      tuple of class names for newclass (``weight`` then holds the optional
      probability the new classes get, None = the median current class prior).
    start, ramp, end: frames. Strength is 0 before ``start``, rises linearly to 1
      over ``ramp`` frames (0 = abrupt), and drops to 0 at ``end`` (None = never).
    """

    kind: str
    value: Any
    start: int = 0
    ramp: int = 0
    end: int | None = None
    weight: float | None = None
    text: str = ""

    def strength(self, i: int) -> float:
        """Severity in [0, 1] at frame ``i``; a pure function of ``i``."""
        if i < self.start or (self.end is not None and i >= self.end):
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (i - self.start + 1) / self.ramp)

    @property
    def name(self) -> str:
        """Short label for ``info['drift']`` and contact sheets, e.g. ``brightness:-0.4``."""
        return self.text.split("@", 1)[0] if self.text else self.kind


def _frames(text: str, fps: float, what: str, item: str) -> int:
    """Frames from '300' or '10s' (seconds at the nominal fps)."""
    try:
        if text.endswith("s"):
            return int(round(float(text[:-1]) * fps))
        value = float(text)
    except ValueError:
        raise ValueError(f"drift {item!r}: {what} {text!r} is not a frame count or seconds ('10s')") from None
    if value != int(value):
        raise ValueError(f"drift {item!r}: {what} {text!r} must be whole frames, or seconds with 's'")
    return int(value)


def _float(text: str, kind: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"drift {item!r}: {kind} needs a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"drift {item!r}: {kind} value must be finite")
    return value


def _parse_value(kind: str, params: str | None, item: str, classes: list[str] | None) -> tuple[Any, float | None]:
    """Turn the PARAMS text of one drift into its typed value (see Drift.value)."""
    if kind in ("brightness", "contrast", "blur", "noise", "rotate"):
        if not params:
            raise ValueError(f"drift {item!r}: {kind} needs a value, e.g. {kind}:0.5")
        value = _float(params, kind, item)
        if kind == "brightness" and value <= -1:
            raise ValueError(f"drift {item!r}: brightness must be > -1 (relative gain change)")
        if kind == "contrast" and value <= 0:
            raise ValueError(f"drift {item!r}: contrast factor must be > 0")
        if kind in ("blur", "noise") and value < 0:
            raise ValueError(f"drift {item!r}: {kind} must be >= 0")
        return value, None
    if kind == "cast":
        parts = (params or "").replace(",", "/").split("/")
        if len(parts) != 3:
            raise ValueError(f"drift {item!r}: cast needs three channel gains B/G/R, e.g. cast:0.9/1.0/1.2")
        gains = tuple(_float(p, "cast", item) for p in parts)
        if any(g < 0 for g in gains):
            raise ValueError(f"drift {item!r}: cast gains must be >= 0")
        return gains, None
    if kind == "prior":
        if not params:
            raise ValueError(f"drift {item!r}: prior needs CLASS=P pairs, e.g. prior:scratch=0.4")
        target: dict[str, float] = {}
        for pair in params.split("/"):
            name, eq, p = pair.partition("=")
            if not eq:
                raise ValueError(f"drift {item!r}: prior entry {pair!r} is not CLASS=P")
            prob = _float(p, "prior", item)
            if not 0 <= prob <= 1:
                raise ValueError(f"drift {item!r}: prior for {name!r} must be in [0, 1]")
            target[name.strip()] = prob
        if sum(target.values()) > 1 + 1e-9:
            raise ValueError(f"drift {item!r}: prior probabilities sum to more than 1")
        if classes is not None:
            for name in target:
                if name not in classes:
                    raise ValueError(f"drift {item!r}: prior names unknown class {name!r} (classes: {classes})")
        return target, None
    if kind == "newclass":
        if not params:
            raise ValueError(f"drift {item!r}: newclass needs a class, e.g. newclass:crack or newclass:5-9")
        names_text, eq, w = params.partition("=")
        weight = _float(w, "newclass", item) if eq else None
        if weight is not None and not 0 < weight < 1:
            raise ValueError(f"drift {item!r}: newclass probability must be in (0, 1)")
        names = expand_classes(names_text, item)
        if classes is not None:
            for name in names:
                if name not in classes:
                    raise ValueError(f"drift {item!r}: newclass names unknown class {name!r} (classes: {classes})")
        return tuple(names), weight
    raise AssertionError(kind)


def expand_classes(text: str, item: str = "classes") -> list[str]:
    """'5-9' -> ['5'..'9'], 'crack' -> ['crack'], 'a/b' or 'a,b' -> ['a', 'b']."""
    names: list[str] = []
    for part in text.replace(",", "/").split("/"):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if dash and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise ValueError(f"{item!r}: empty class range {part!r}")
            names.extend(str(k) for k in range(int(lo), int(hi) + 1))
        else:
            names.append(part)
    if not names:
        raise ValueError(f"{item!r}: no class names given")
    return names


def _kind(raw: str, item: str) -> str:
    kind = _ALIASES.get(raw.lower(), raw.lower())
    if kind not in KINDS:
        raise ValueError(f"drift {item!r}: unknown drift kind {raw!r} (known: {', '.join(KINDS)})")
    return kind


def parse_drift(item: str, fps: float, classes: list[str] | None = None) -> Drift:
    """Parse one compact drift item such as ``brightness:-0.4@300~100`` or ``newclass:crack@20s``."""
    item = item.strip()
    m = _ITEM.match(item)
    if not m:
        raise ValueError(
            f"drift {item!r}: expected KIND[:PARAMS][@START[~RAMP][..END]], e.g. brightness:-0.4@300~100"
        )
    kind = _kind(m["kind"], item)
    value, weight = _parse_value(kind, m["params"], item, classes)
    start = _frames(m["start"], fps, "start", item) if m["start"] else 0
    ramp = _frames(m["ramp"], fps, "ramp", item) if m["ramp"] else 0
    end = _frames(m["end"], fps, "end", item) if m["end"] else None
    if end is not None and end <= start:
        raise ValueError(f"drift {item!r}: end {end} is not after start {start}")
    return Drift(kind, value, start, ramp, end, weight, item)


def parse_drift_list(text: str, fps: float, classes: list[str] | None = None) -> list[Drift]:
    """Parse a comma-separated list of drift items (the ``drift=`` URL option)."""
    return [parse_drift(part, fps, classes) for part in text.split(",") if part.strip()]


_MAPPING_KEYS = {"kind", "value", "start", "ramp", "end"}


def drift_from_mapping(d: Any, fps: float, classes: list[str] | None = None) -> Drift:
    """Build a Drift from a YAML entry: either a compact string or a mapping
    ``{kind, value, start, ramp, end}`` where value is written as in the URL
    (``-0.4``, ``0.9/1.0/1.2``, ``scratch=0.4``, ``crack``) or as a list/dict."""
    if isinstance(d, str):
        return parse_drift(d, fps, classes)
    if not isinstance(d, dict):
        raise ValueError(f"drift entry {d!r}: expected a string or a mapping")
    unknown = set(d) - _MAPPING_KEYS
    if unknown:
        raise ValueError(f"drift entry {d!r}: unknown key {sorted(unknown)[0]!r} (known: {sorted(_MAPPING_KEYS)})")
    if "kind" not in d:
        raise ValueError(f"drift entry {d!r}: missing key 'kind'")
    value = d.get("value")
    if isinstance(value, dict):
        value = "/".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        value = "/".join(str(v) for v in value)
    text = str(d["kind"]) + (f":{value}" if value is not None else "")
    if any(d.get(k) is not None for k in ("start", "ramp", "end")):
        text += f"@{d.get('start') if d.get('start') is not None else 0}"
        if d.get("ramp") is not None:
            text += f"~{d['ramp']}"
        if d.get("end") is not None:
            text += f"..{d['end']}"
    return parse_drift(text, fps, classes)
