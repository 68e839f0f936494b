"""Parse ``sim:`` URLs and YAML scenario files into a Scenario.

Errors are ValueErrors that name the offending key (``option 'fps': ...``,
``unknown option 'sed'``), because a typo in a demo config should fail at
start-up with a message a person can act on, not produce a silently different
stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from .digits import DigitsRenderer
from .drift import Drift, drift_from_mapping, parse_drift_list
from .parts import PartsRenderer

__all__ = ["Scenario", "parse_url", "RENDERERS", "COMMON_OPTIONS"]

RENDERERS: dict[str, type] = {"parts": PartsRenderer, "digits": DigitsRenderer}

COMMON_OPTIONS = {
    "seed": "integer >= 0 (default 0)",
    "fps": "nominal frames per second (default 30)",
    "realtime": "1 = pace read() to fps (default 0: as fast as asked)",
    "width": "frame width (default 320)",
    "height": "frame height (default 240)",
    "limit": "number of frames, then end of stream (default: infinite)",
    "loop": "1 = restart at frame 0 after limit (default 0)",
    "drift": "comma-separated drift items KIND[:PARAMS][@START[~RAMP][..END]]",
    "priors": "initial class priors, e.g. ok=0.7/scratch=0.1",
    "scenario": "YAML scenario file; URL options override it",
}
_YAML_ONLY = {"source"}


@dataclass
class Scenario:
    """Everything that determines a simulated stream (plus pacing options)."""

    kind: str
    seed: int = 0
    fps: float = 30.0
    width: int = 320
    height: int = 240
    limit: int | None = None
    loop: bool = False
    realtime: bool = False
    priors: dict[str, float] | None = None
    drifts: list[Drift] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    url: str = ""

    @property
    def renderer_cls(self) -> type:
        return RENDERERS[self.kind]


def _int(key: str, value: Any, lo: int, hi: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and value != int(value):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key!r}: expected an integer, got {value!r}") from None
    if out < lo or (hi is not None and out > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"option {key!r}: must be {rng}, got {out}")
    return out


def _float(key: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key!r}: expected a number, got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"option {key!r}: must be a positive number, got {value!r}")
    return out


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {key!r}: expected 0/1 or true/false, got {value!r}")


def _priors(value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for pair in str(value).replace(",", "/").split("/"):
            if not pair.strip():
                continue
            name, eq, p = pair.partition("=")
            if not eq:
                raise ValueError(f"option 'priors': entry {pair!r} is not CLASS=WEIGHT")
            items.append((name.strip(), p))
    out = {}
    for name, p in items:
        try:
            out[str(name)] = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"option 'priors': weight for {name!r} is not a number: {p!r}") from None
        if not math.isfinite(out[str(name)]) or out[str(name)] < 0:
            raise ValueError(f"option 'priors': weight for {name!r} must be >= 0")
    return out


def _split_url(url: str) -> tuple[str, list[tuple[str, str]]]:
    if not url.startswith("sim:"):
        raise ValueError(f"not a sim: URL: {url!r}")
    rest = url[4:].lstrip("/")
    kind, _, query = rest.partition("?")
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key).strip(), unquote(value)))
    return kind.strip().lower(), pairs


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a scenario file; relative ``data`` paths resolve against the file's folder."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"option 'scenario': no such file {str(p)!r}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"option 'scenario': {p} is not valid YAML ({exc})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ValueError(f"option 'scenario': {p} must hold a mapping at top level")
    doc = dict(doc)
    if isinstance(doc.get("data"), str) and not Path(doc["data"]).is_absolute():
        doc["data"] = str((p.parent / doc["data"]).resolve())
    return doc


def parse_url(url: str) -> Scenario:
    """Build a Scenario from ``sim:KIND?key=value&...`` (see the package docstring)."""
    kind, pairs = _split_url(url)
    raw: dict[str, Any] = {}
    url_drifts: list[str] = []
    for key, value in pairs:
        if key == "drift":
            url_drifts.append(value)
        elif key in raw:
            raise ValueError(f"option {key!r} given twice in {url!r}")
        else:
            raw[key] = value
    yaml_drifts: list[Any] = []
    if "scenario" in raw:
        doc = load_yaml(raw.pop("scenario"))
        src = doc.pop("source", None)
        if src is not None and str(src).lower() != kind:
            raise ValueError(f"option 'scenario': file is for sim:{src}, URL is sim:{kind}")
        yd = doc.pop("drift", None) or doc.pop("drifts", None) or []
        if not isinstance(yd, list):
            raise ValueError("option 'drift' in scenario file: expected a list")
        yaml_drifts = yd
        for key, value in doc.items():
            if key == "scenario":
                raise ValueError("option 'scenario': a scenario file cannot include another")
            raw.setdefault(key, value)
    if kind not in RENDERERS:
        raise ValueError(f"unknown sim source {kind!r} in {url!r} (known: {', '.join(RENDERERS)})")
    renderer = RENDERERS[kind]
    known = set(COMMON_OPTIONS) | set(renderer.OPTIONS)
    for key in raw:
        if key not in known:
            raise ValueError(f"unknown option {key!r} for sim:{kind} (known: {', '.join(sorted(known))})")

    sc = Scenario(kind=kind, url=url)
    if "seed" in raw:
        sc.seed = _int("seed", raw["seed"], 0)
    if "fps" in raw:
        sc.fps = _float("fps", raw["fps"])
    if "width" in raw:
        sc.width = _int("width", raw["width"], 64, 8192)
    if "height" in raw:
        sc.height = _int("height", raw["height"], 64, 8192)
    if "limit" in raw and str(raw["limit"]).lower() not in ("", "none", "inf"):
        sc.limit = _int("limit", raw["limit"], 1)
    if "loop" in raw:
        sc.loop = _bool("loop", raw["loop"])
    if "realtime" in raw:
        sc.realtime = _bool("realtime", raw["realtime"])
    if "priors" in raw:
        sc.priors = _priors(raw["priors"])
    sc.options = renderer.check_options({k: v for k, v in raw.items() if k in renderer.OPTIONS})
    classes = list(renderer.ALL_CLASSES)
    for entry in yaml_drifts:
        sc.drifts.append(drift_from_mapping(entry, sc.fps, classes))
    for text in url_drifts:
        sc.drifts.extend(parse_drift_list(text, sc.fps, classes))
    if sc.priors is None and renderer.DEFAULT_PRIORS:
        sc.priors = dict(renderer.DEFAULT_PRIORS)
    return sc
