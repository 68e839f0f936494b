"""How much of the sample store is kept: limits by count, bytes and age, enforced on unlabelled samples only.

Why only unlabelled ones: a labelled sample is somebody's work (or the simulation's ground truth), it is in
the training or the held-out set, and the learner may still have to read it (``label_seq`` above the
checkpoint's). An unlabelled sample is a frame nobody has looked at; the oldest of them are what a site can
spare. The replay memory keeps its own copies of what it rehearses (uint8 tensors in the checkpoint), so no
row is referenced by it. When labelled samples alone exceed a limit, nothing is deleted to meet it and
:attr:`RetentionReport.over_limit` says so (logged, in ``trainer status`` and the metrics).

Pack files are append-only, so deleting rows alone frees no disk: a sealed pack file whose live bytes fall
below ``compact_below`` of its size is compacted (:meth:`SampleStore.compact_segment`) and deleted.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import RetentionConfig
from .store import SampleStore

log = logging.getLogger(__name__)

__all__ = ["RetentionReport", "enforce"]

_PAGE = 1000


@dataclass
class RetentionReport:
    """What one pass did: rows deleted per limit, bytes given back, files compacted, limits still exceeded."""

    deleted: dict[str, int] = field(default_factory=dict)
    reclaimed_bytes: int = 0
    compacted: int = 0
    over_limit: list[str] = field(default_factory=list)

    @property
    def total_deleted(self) -> int:
        return sum(self.deleted.values())


def enforce(store: SampleStore, cfg: RetentionConfig, now: float | None = None) -> RetentionReport:
    """Apply the limits once: age, then count, then bytes (oldest unlabelled first), then compact."""
    now = time.time() if now is None else now
    rep = RetentionReport()
    conn = store.connection()
    if cfg.max_age_days is not None:
        cutoff = now - cfg.max_age_days * 86400.0
        _delete_oldest(store, rep, "age", lambda: None, f"received < {cutoff!r}")
    if cfg.max_samples is not None:
        def excess_rows() -> int | None:
            return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]) - cfg.max_samples
        _delete_oldest(store, rep, "count", excess_rows)
    if cfg.max_bytes is not None:
        def excess_bytes() -> int | None:
            return store.live_bytes() - cfg.max_bytes
        _delete_oldest(store, rep, "bytes", excess_bytes, by_bytes=True)
    rep.reclaimed_bytes += store.remove_empty_segments()
    for n, (live, size) in sorted(store.segment_usage().items()):
        if n != store.segments()[-1] and size > 0 and live < cfg.compact_below * size:
            rep.reclaimed_bytes += store.compact_segment(n)
            rep.compacted += 1
    if rep.total_deleted or rep.compacted:
        log.info("retention: deleted %s unlabelled samples, compacted %d pack files, %.1f MB given back",
                 rep.deleted, rep.compacted, rep.reclaimed_bytes / 1e6)
    if rep.over_limit:
        log.warning("retention: labelled samples alone exceed retention.%s; nothing labelled is deleted -- raise "
                    "the limit or give the store more disk", " and ".join(rep.over_limit))
    return rep


def _delete_oldest(store: SampleStore, rep: RetentionReport, limit: str, excess: Callable[[], int | None],
                   where: str = "1", by_bytes: bool = False) -> None:
    """Delete the oldest unlabelled rows matching ``where`` while ``excess()`` is positive (or, when it is
    None, every such row)."""
    conn = store.connection()
    while True:
        over = excess()
        if over is not None and over <= 0:
            return
        page = _PAGE if over is None or by_bytes else min(_PAGE, over)
        rows = conn.execute(f"SELECT rowid, length FROM samples WHERE label IS NULL AND ({where}) "
                            "ORDER BY rowid LIMIT ?", (page,)).fetchall()
        if by_bytes and over is not None:
            take, total = [], 0
            for rowid, length in rows:
                if total >= over:
                    break
                take.append(rowid)
                total += length
        else:
            take = [r[0] for r in rows]
        if not take:
            if over is not None:
                rep.over_limit.append(limit)
            return
        n, _ = store.delete_unlabelled(take)
        rep.deleted[limit] = rep.deleted.get(limit, 0) + n
