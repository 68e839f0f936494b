"""Process-wide cache of precomputed simulator assets (textures, sprites, noise).

Assets depend only on (kind, size, seed), are read-only after construction, and
take longer to build than thousands of frames take to render; sharing them lets
a demo run many cameras with the same seed, and tests open many sources, without
rebuilding them every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

__all__ = ["cached"]

_MAX = 16
_cache: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """Return the asset for ``key``, building it with ``build()`` on first use (LRU of 16)."""
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = build()
    with _lock:
        _cache[key] = value
        while len(_cache) > _MAX:
            _cache.popitem(last=False)
    return value
