"""Model metadata carried in ONNX ``metadata_props`` (trainer writes, edge reads).

The edge preprocesses from this metadata alone, so a model with new classes,
a new input size or colour order rolls out with no edge code change. Props are
flat ``edgeloop.*`` string keys (visible in Netron / ``onnx`` tools); lists and
dicts are JSON. Every key is always written; ``from_props`` names the first
missing or invalid key so a broken export is obvious.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ProtocolError

__all__ = ["ModelMeta", "PREFIX", "META_SCHEMA", "COLOR_ORDERS", "LAYOUTS"]

PREFIX = "edgeloop."
META_SCHEMA = 1
COLOR_ORDERS = ("GRAY", "RGB", "BGR")
LAYOUTS = ("NCHW",)
_PROP_NAMES = {"width": "input_width", "height": "input_height"}  # attribute -> props key


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to preprocess for, interpret and trace one model version.

    Input pipeline the edge applies: crop ``roi`` (source-frame pixels) if set,
    resize to ``width``x``height``, convert to ``color_order`` (``channels``),
    ``x * scale``, then ``(x - mean[c]) / std[c]``, then ``layout``.
    """

    version: str
    labels: list[str]
    width: int
    height: int
    channels: int = 3
    color_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    layout: str = "NCHW"
    roi: list[int] | None = None
    parent_version: str | None = None
    architecture: str = ""
    samples_seen: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    input_name: str = "input"
    output_name: str = "logits"
    opset: int = 17

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ProtocolError("bad_metadata") naming the first invalid field."""
        def bad(key: str, why: str) -> ProtocolError:  # name the props key, not the attribute
            return ProtocolError("bad_metadata", f"{PREFIX}{_PROP_NAMES.get(key, key)}: {why}")

        if not isinstance(self.version, str) or not self.version:
            raise bad("version", "must be a non-empty string")
        if self.parent_version is not None and (not isinstance(self.parent_version, str) or not self.parent_version):
            raise bad("parent_version", "must be a non-empty string or absent")
        if (not isinstance(self.labels, list) or not self.labels
                or not all(isinstance(x, str) and x for x in self.labels)):
            raise bad("labels", "must be a non-empty list of non-empty strings")
        if len(set(self.labels)) != len(self.labels):
            raise bad("labels", "must be unique")
        for key in ("width", "height"):
            v = getattr(self, key)
            if not _is_int(v) or not 1 <= v <= 8192:
                raise bad(key, f"must be an int in [1, 8192], got {v!r}")
        if self.channels not in (1, 3) or not _is_int(self.channels):
            raise bad("channels", f"must be 1 or 3, got {self.channels!r}")
        if self.color_order not in COLOR_ORDERS:
            raise bad("color_order", f"must be one of {COLOR_ORDERS}, got {self.color_order!r}")
        if (self.channels == 1) != (self.color_order == "GRAY"):
            raise bad("color_order", f"{self.color_order} does not match channels={self.channels}")
        if not _is_num(self.scale) or not self.scale > 0:
            raise bad("scale", f"must be a finite number > 0, got {self.scale!r}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not isinstance(v, list) or len(v) != self.channels or not all(_is_num(x) for x in v):
                raise bad(key, f"must be a list of {self.channels} finite numbers, got {v!r}")
        if not all(x > 0 for x in self.std):
            raise bad("std", "values must be > 0")
        if self.layout not in LAYOUTS:
            raise bad("layout", f"must be one of {LAYOUTS}, got {self.layout!r}")
        if self.roi is not None:
            r = self.roi
            if (not isinstance(r, list) or len(r) != 4 or not all(_is_int(x) and x >= 0 for x in r)
                    or r[2] < 1 or r[3] < 1):
                raise bad("roi", f"must be [x, y, w, h] ints with w, h >= 1, got {r!r}")
        if not _is_int(self.samples_seen) or self.samples_seen < 0:
            raise bad("samples_seen", f"must be an int >= 0, got {self.samples_seen!r}")
        if not isinstance(self.metrics, dict):
            raise bad("metrics", "must be a JSON object")
        if not _is_num(self.created) or self.created < 0:
            raise bad("created", f"must be a finite number >= 0, got {self.created!r}")
        for key in ("architecture", "input_name", "output_name"):
            if not isinstance(getattr(self, key), str):
                raise bad(key, "must be a string")
        for key in ("input_name", "output_name"):
            if not getattr(self, key):
                raise bad(key, "must be non-empty")
        if not _is_int(self.opset) or not 1 <= self.opset <= 1000:
            raise bad("opset", f"must be a positive int, got {self.opset!r}")

    # -- props <-> meta -------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        """Flat ``{"edgeloop.<key>": str}`` for ``onnx.helper.set_model_props``."""
        p = {
            "schema": str(META_SCHEMA),
            "version": self.version,
            "parent_version": self.parent_version or "",
            "labels": json.dumps(self.labels),
            "input_width": str(self.width),
            "input_height": str(self.height),
            "channels": str(self.channels),
            "color_order": self.color_order,
            "scale": repr(float(self.scale)),
            "mean": json.dumps([float(x) for x in self.mean]),
            "std": json.dumps([float(x) for x in self.std]),
            "layout": self.layout,
            "roi": json.dumps(self.roi),
            "architecture": self.architecture,
            "samples_seen": str(self.samples_seen),
            "metrics": json.dumps(self.metrics, sort_keys=True),
            "created": repr(float(self.created)),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "opset": str(self.opset),
        }
        return {PREFIX + k: v for k, v in p.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMeta":
        """Parse props (other, non-``edgeloop.`` keys are ignored); bad/missing key → bad_metadata."""
        def get(key: str, conv: Callable[[str], Any] = str) -> Any:
            full = PREFIX + key
            if full not in props:
                raise ProtocolError("bad_metadata", f"{full}: missing")
            raw = props[full]
            if not isinstance(raw, str):
                raise ProtocolError("bad_metadata", f"{full}: value must be a string")
            try:
                return conv(raw)
            except (ValueError, TypeError, RecursionError) as e:
                raise ProtocolError("bad_metadata", f"{full}: cannot parse {raw[:80]!r}: {e}") from None

        schema = get("schema", int)
        if schema != META_SCHEMA:
            raise ProtocolError("bad_metadata", f"{PREFIX}schema: {schema} unsupported (want {META_SCHEMA})")
        return cls(
            version=get("version"),
            parent_version=get("parent_version") or None,
            labels=get("labels", json.loads),
            width=get("input_width", int),
            height=get("input_height", int),
            channels=get("channels", int),
            color_order=get("color_order"),
            scale=get("scale", _finite_float),
            mean=get("mean", json.loads),
            std=get("std", json.loads),
            layout=get("layout"),
            roi=get("roi", json.loads),
            architecture=get("architecture"),
            samples_seen=get("samples_seen", int),
            metrics=get("metrics", json.loads),
            created=get("created", _finite_float),
            input_name=get("input_name"),
            output_name=get("output_name"),
            opset=get("opset", int),
        )

    def compat(self) -> dict[str, Any]:
        """What a device checks before installing: input spec, labels, opset (goes into Manifest.compat)."""
        return {
            "input": {
                "name": self.input_name, "width": self.width, "height": self.height,
                "channels": self.channels, "color_order": self.color_order,
                "scale": float(self.scale), "mean": [float(x) for x in self.mean],
                "std": [float(x) for x in self.std], "layout": self.layout, "roi": self.roi,
            },
            "output": self.output_name,
            "labels": list(self.labels),
            "opset": self.opset,
        }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError("not finite")
    return v
