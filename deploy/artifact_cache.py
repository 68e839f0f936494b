"""The controller's model bytes in memory: a small LRU, bounded in versions and bytes.

Why bounded: a controller runs for months and the trainer promotes a version every few minutes; keeping every
version's bytes (as it once did) grows without end. The bytes live on disk (the registered path); memory holds
only the few versions a rollout is working with now (the new one, the rollback target, the refresh of a
fleet's manifest), and anything evicted is read again from disk on demand.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from .publisher import ModelArtifact

__all__ = ["ArtifactCache", "MAX_ITEMS", "MAX_BYTES"]

MAX_ITEMS = 4
MAX_BYTES = 256 * 1024 * 1024


class ArtifactCache:
    """(model_id, version) -> :class:`ModelArtifact`, least recently used evicted first (thread-safe).

    One artifact bigger than ``max_bytes`` is still kept (alone): the rollout in progress needs it.
    """

    def __init__(self, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_items = max(1, int(max_items))
        self.max_bytes = max(1, int(max_bytes))
        self._items: OrderedDict[tuple[str, str], ModelArtifact] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, model_id: str, version: str) -> ModelArtifact | None:
        with self._lock:
            art = self._items.get((model_id, version))
            if art is not None:
                self._items.move_to_end((model_id, version))
            return art

    def put(self, art: ModelArtifact) -> None:
        with self._lock:
            self._items[(art.model_id, art.version)] = art
            self._items.move_to_end((art.model_id, art.version))
            while len(self._items) > 1 and (len(self._items) > self.max_items or self._bytes() > self.max_bytes):
                self._items.popitem(last=False)
                self.evictions += 1

    def _bytes(self) -> int:
        return sum(a.size for a in self._items.values())

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes()

    def __len__(self) -> int:
        return len(self._items)
