"""Which devices a rollout wave targets: part of the contract between the controller and the devices.

Each wave's signed manifest carries ``compat["rollout"] = {"salt": rollout_id, "below": B, ...}``; a device
is in the wave when its stable bucket for that rollout is below ``B``. The controller only ever raises
``B``, so each wave contains the previous one, and a device that was offline learns its target from the
retained manifest when it returns. Both sides must compute the same bucket, hence one function here.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

BUCKETS = 10_000


def wave_bucket(salt: str, device_id: str) -> int:
    """A device's stable bucket in [0, BUCKETS) for one rollout."""
    digest = hashlib.sha256(f"{salt}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_wave(compat: Mapping[str, Any], device_id: str) -> bool:
    """Whether a manifest targets this device (no ``rollout.below`` = the whole fleet)."""
    r = compat.get("rollout") if isinstance(compat, Mapping) else None
    if not isinstance(r, Mapping) or "below" not in r:
        return True
    below = r.get("below")
    if not isinstance(below, int) or isinstance(below, bool):
        return False
    return below >= BUCKETS or wave_bucket(str(r.get("salt", "")), device_id) < below
