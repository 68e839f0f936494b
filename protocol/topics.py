"""MQTT topic layout (DESIGN.md "Topics"), built and parsed in one place.

Every publisher and subscriber goes through :class:`Topics` so the layout can
change (or the prefix be set per deployment) without string formatting spread
over three packages, and so ids that would break the layout (``/``, ``+``,
``#``) are rejected before they reach the broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ProtocolError

__all__ = ["Topics", "ParsedTopic", "DEFAULT_PREFIX", "KINDS", "check_id", "ID_PATTERN"]

DEFAULT_PREFIX = "edgeloop/v1"
#: Allowed id segment: safe in topics, file names and SQL without quoting.
ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}\Z"  # \Z: "$" would accept a trailing newline
_ID_RE = re.compile(ID_PATTERN)
_INDEX_RE = re.compile(r"^(0|[1-9][0-9]{0,8})\Z")  # canonical decimal, < 1e9

#: Every kind that ``parse`` can return.
KINDS = (
    "state", "birth", "samples", "predictions", "stats", "model_status",
    "manifest", "chunk", "trainer_state", "trainer_promoted", "trainer_model", "trainer_chunk",
)
_DEV_LEAF = {"state": "state", "birth": "birth", "samples": "samples",
             "predictions": "predictions", "stats": "stats"}


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid topic segment, else raise ``bad_topic``.

    Ids become topic levels; a ``/`` would shift levels and ``+``/``#`` would
    turn a publish into a wildcard, so only ``[A-Za-z0-9._-]{1,128}`` passes.
    """
    if not isinstance(value, str) or _ID_RE.match(value) is None or value in (".", ".."):
        raise ProtocolError(
            "bad_topic", f"{what} {value!r} must be 1-128 chars of [A-Za-z0-9._-]"
        )
    return value


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """What a topic addresses; fields not used by ``kind`` are None."""

    kind: str
    device: str | None = None
    fleet: str | None = None
    model: str | None = None
    version: str | None = None
    index: int | None = None


class Topics:
    """Topic builders and parser for one prefix (default ``edgeloop/v1``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        parts = prefix.split("/") if isinstance(prefix, str) else [None]
        for p in parts:
            check_id(p, "prefix segment")  # type: ignore[arg-type]
        self.prefix = prefix
        self._parts = parts

    def __repr__(self) -> str:
        return f"Topics({self.prefix!r})"

    # -- per-device topics (edge publishes) ---------------------------------
    def _dev(self, device: str, leaf: str) -> str:
        return f"{self.prefix}/dev/{check_id(device, 'device')}/{leaf}"

    def state(self, device: str) -> str:
        return self._dev(device, "state")

    def birth(self, device: str) -> str:
        return self._dev(device, "birth")

    def samples(self, device: str) -> str:
        return self._dev(device, "samples")

    def predictions(self, device: str) -> str:
        return self._dev(device, "predictions")

    def stats(self, device: str) -> str:
        return self._dev(device, "stats")

    def model_status(self, device: str) -> str:
        return self._dev(device, "model/status")

    def device_root(self, device: str) -> str:
        """``prefix/dev/{device}/#`` — the subtree a device's credentials may write."""
        return self._dev(device, "#")

    # -- deploy → edges -------------------------------------------------------
    def manifest(self, fleet: str) -> str:
        return f"{self.prefix}/fleet/{check_id(fleet, 'fleet')}/manifest"

    def chunk(self, model: str, version: str, index: int) -> str:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 10**9:
            raise ProtocolError("bad_topic", f"chunk index {index!r} must be an int in [0, 1e9)")
        return f"{self._chunks(model, version)}/{index}"

    def chunks_wildcard(self, model: str, version: str) -> str:
        return f"{self._chunks(model, version)}/+"

    def _chunks(self, model: str, version: str) -> str:
        return f"{self.prefix}/models/{check_id(model, 'model')}/{check_id(version, 'version')}/chunk"

    # -- trainer --------------------------------------------------------------
    def trainer_state(self) -> str:
        return f"{self.prefix}/trainer/state"

    def trainer_promoted(self) -> str:
        """Retained JSON notice of the newest promoted version (protocol/promotion.py)."""
        return f"{self.prefix}/trainer/promoted"

    def selection_hint(self) -> str:
        """Retained JSON ``SelectionHint``: which predicted classes the cameras should upload more of."""
        return f"{self.prefix}/trainer/selection_hint"

    def trainer_model(self, version: str) -> str:
        """Retained JSON notice of one promoted version whose bytes the trainer keeps on the broker."""
        return f"{self.prefix}/trainer/models/{check_id(version, 'version')}"

    def trainer_chunk(self, version: str, index: int) -> str:
        """Retained bytes of a promoted version, in ``Chunk`` envelopes (the controller fetches them)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 10**9:
            raise ProtocolError("bad_topic", f"chunk index {index!r} must be an int in [0, 1e9)")
        return f"{self.trainer_model(version)}/chunk/{index}"

    def trainer_chunks_wildcard(self, version: str) -> str:
        return f"{self.trainer_model(version)}/chunk/+"

    def all_trainer_models(self) -> str:
        """Every retained per-version notice (``trainer/models/+``; the chunks are one level deeper)."""
        return f"{self.prefix}/trainer/models/+"

    # -- subscriber wildcards -------------------------------------------------
    def all_samples(self) -> str:
        return f"{self.prefix}/dev/+/samples"

    def all_states(self) -> str:
        return f"{self.prefix}/dev/+/state"

    def all_births(self) -> str:
        return f"{self.prefix}/dev/+/birth"

    def all_stats(self) -> str:
        return f"{self.prefix}/dev/+/stats"

    def all_predictions(self) -> str:
        return f"{self.prefix}/dev/+/predictions"

    def all_model_status(self) -> str:
        return f"{self.prefix}/dev/+/model/status"

    def all_manifests(self) -> str:
        return f"{self.prefix}/fleet/+/manifest"

    # -- parsing ---------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic:
        """Classify a concrete topic (no wildcards); raise ``bad_topic`` otherwise.

        Subscribers with wildcards need to know which device/model a message is
        for; the topic is authoritative for the device (broker ACLs pin it).
        """
        if not isinstance(topic, str):
            raise ProtocolError("bad_topic", f"topic must be str, got {type(topic).__name__}")
        parts = topic.split("/")
        n = len(self._parts)
        if parts[:n] != self._parts:
            raise ProtocolError("bad_topic", f"{topic!r} does not start with prefix {self.prefix!r}")
        rest = parts[n:]
        try:
            return self._parse_rest(rest)
        except ProtocolError as e:
            raise ProtocolError("bad_topic", f"{topic!r}: {e.detail}") from None

    @staticmethod
    def _parse_rest(rest: list[str]) -> ParsedTopic:
        if len(rest) == 3 and rest[0] == "dev" and rest[2] in _DEV_LEAF:
            return ParsedTopic(_DEV_LEAF[rest[2]], device=check_id(rest[1], "device"))
        if len(rest) == 4 and rest[0] == "dev" and rest[2:] == ["model", "status"]:
            return ParsedTopic("model_status", device=check_id(rest[1], "device"))
        if len(rest) == 3 and rest[0] == "fleet" and rest[2] == "manifest":
            return ParsedTopic("manifest", fleet=check_id(rest[1], "fleet"))
        if len(rest) == 5 and rest[0] == "models" and rest[3] == "chunk":
            if _INDEX_RE.match(rest[4]) is None:
                raise ProtocolError("bad_topic", f"chunk index {rest[4]!r} is not a decimal int")
            return ParsedTopic(
                "chunk", model=check_id(rest[1], "model"),
                version=check_id(rest[2], "version"), index=int(rest[4]),
            )
        if rest == ["trainer", "state"]:
            return ParsedTopic("trainer_state")
        if rest == ["trainer", "promoted"]:
            return ParsedTopic("trainer_promoted")
        if rest == ["trainer", "selection_hint"]:
            return ParsedTopic("selection_hint")
        if len(rest) == 3 and rest[:2] == ["trainer", "models"]:
            return ParsedTopic("trainer_model", version=check_id(rest[2], "version"))
        if len(rest) == 5 and rest[:2] == ["trainer", "models"] and rest[3] == "chunk":
            if _INDEX_RE.match(rest[4]) is None:
                raise ProtocolError("bad_topic", f"chunk index {rest[4]!r} is not a decimal int")
            return ParsedTopic("trainer_chunk", version=check_id(rest[2], "version"), index=int(rest[4]))
        raise ProtocolError("bad_topic", f"unknown topic kind {'/'.join(rest)!r}")
