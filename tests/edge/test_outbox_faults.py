"""A full disk under the outbox: the write fails with SQLite's own error (not "cannot rollback"), nothing
committed before is lost, and writing works again when there is room. Shown with SQLite's max_page_count
(always) and with a real, full file system (a small tmpfs; needs root, skipped otherwise)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.counters import SequenceLease
from edge.outbox import Outbox, OutboxWriteError
from full_disk import fill_disk, tmpfs

PAYLOAD = os.urandom(20_000)  # incompressible, like a JPEG


def fill(ob: Outbox, start: int = 0) -> int:
    """Put samples until the outbox cannot be written; return how many went in."""
    n = start
    while True:
        try:
            assert ob.put(f"s{n}", "t", PAYLOAD)
        except OutboxWriteError as exc:
            assert "full" in str(exc) and "rollback" not in str(exc), exc
            return n - start
        n += 1
        assert n - start < 10_000, "never filled up"


def test_database_full_raises_the_real_error_and_recovers(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", synchronous="NORMAL") as ob:
        ob._db.execute("PRAGMA max_page_count = 200")  # ~800 KB: SQLite answers SQLITE_FULL beyond
        stored = fill(ob)
        assert stored > 10
        before = ob.stats()
        assert before["depth"] == stored and ob.bytes == stored * len(PAYLOAD)  # byte count not corrupted
        with pytest.raises(OutboxWriteError, match="database or disk is full"):
            ob.put("again", "t", PAYLOAD)
        # acknowledgements (deletes) and marks still work on a full database: they free pages
        item = ob.peek_batch(1)[0]
        ob.mark_inflight(item.id, 1)
        assert ob.ack(item.id)
        ob._db.execute("PRAGMA max_page_count = 100000")  # space is back
        assert ob.put("after", "t", PAYLOAD)
        assert ob.depth == stored and ob.integrity_check() == "ok"


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 4 MiB tmpfs: a real file system that fills up."""
    with tmpfs(tmp_path / "fs", "4m") as fs:
        yield fs


@pytest.fixture
def fs_16m(tmp_path: Path):
    """16 MiB: room for SQLite's WAL to reach its full cycle (1,000 pages, ~4 MB) before the disk fills."""
    with tmpfs(tmp_path / "fs", "16m") as fs:
        yield fs


def test_real_full_file_system(small_fs: Path) -> None:
    other = small_fs / "other-file"
    other.write_bytes(b"\0" * (2 * 1024 * 1024))  # something else on the disk, removed later
    with Outbox(small_fs / "o.sqlite", synchronous="FULL") as ob:
        stored = fill(ob)
        assert stored > 10
        with pytest.raises(OutboxWriteError, match="database or disk is full"):
            ob.put("again", "t", PAYLOAD)
        with pytest.raises(OutboxWriteError, match="database or disk is full"):
            ob.ack(ob.peek_batch(1)[0].id)  # even a delete needs room (the WAL); the link retries it later
        assert ob.depth == stored
        other.unlink()  # room again
        assert ob.put("after", "t", PAYLOAD)
        assert ob.ack(ob.peek_batch(1)[0].id)
        assert ob.integrity_check() == "ok" and ob.depth == stored


def test_a_full_disk_does_not_stop_an_outbox_that_keeps_draining(fs_16m: Path) -> None:
    """Once its WAL has cycled, SQLite reuses the pages acknowledged rows freed (WAL and database), so a camera
    whose uplink keeps up goes on spooling on a full disk; an outbox that must grow (the camera cut off) meets
    the full disk. Why the chaos benchmark fills the disk of the camera it cuts off."""
    with Outbox(fs_16m / "o.sqlite", synchronous="FULL") as ob:
        for i in range(400):  # steady state, ~8 MB through: each sample acknowledged soon after it was stored
            assert ob.put(f"a{i}", "t", PAYLOAD)
            assert ob.ack(ob.peek_batch(1)[0].id)
        fill_disk(fs_16m / "filler")
        for i in range(300):
            assert ob.put(f"b{i}", "t", PAYLOAD)
            assert ob.ack(ob.peek_batch(1)[0].id)
        assert fill(ob) > 0  # no acknowledgements: the outbox grows into the full disk and says so
        assert ob.integrity_check() == "ok"


def test_sequence_lease_survives_a_full_disk(small_fs: Path) -> None:
    lease = SequenceLease(small_fs / "sample.seq", block=4)
    taken = [lease.next() for _ in range(4)]
    filler = small_fs / "filler"
    fill_disk(filler)
    with pytest.raises(OSError):
        lease.next()  # the block could not be extended: no number handed out
    filler.unlink()
    assert lease.next() == 4  # nothing skipped, nothing reused
    assert taken == [0, 1, 2, 3]
    again = SequenceLease(small_fs / "sample.seq", block=4)
    assert again.next() >= 5


def test_give_back_leaves_no_gap(tmp_path: Path) -> None:
    lease = SequenceLease(tmp_path / "seq")
    a = lease.next()
    lease.give_back(a)
    assert lease.next() == a
    b = lease.next()
    lease.give_back(a)  # not the last one taken: ignored
    assert lease.next() == b + 1
