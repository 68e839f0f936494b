"""SQLite outbox: bound and drop policies, ack semantics, in-flight reset, persistence across reopen and SIGKILL."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path


from edge.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]


def test_put_peek_inflight_ack(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        assert ob.put("s1", "t/a", b"x" * 10, 0.5)
        assert ob.put("s2", "t/a", b"y" * 20, 0.1)
        assert ob.put("s1", "t/a", b"dup", 0.9)  # idempotent: already stored
        assert ob.depth == 2 and ob.bytes == 30
        batch = ob.peek_batch(10)
        assert [i.sample_id for i in batch] == ["s1", "s2"] and batch[0].payload == b"x" * 10
        ob.mark_inflight(batch[0].id, mid=7)
        assert [i.sample_id for i in ob.peek_batch(10)] == ["s2"]  # in-flight rows are not handed out again
        assert ob.ack_mid(7)
        assert not ob.ack(batch[0].id)  # already gone
        assert ob.ack(batch[1].id)
        st = ob.stats()
        assert st["depth"] == 0 and st["bytes"] == 0 and st["acked"] == 2 and st["duplicate_put"] == 1


def test_nothing_deleted_before_ack_and_reset_inflight(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        for i in range(5):
            ob.put(f"s{i}", "t", b"p", i)
        for mid, item in enumerate(ob.peek_batch(3), start=1):
            ob.mark_inflight(item.id, mid)
        assert ob.stats()["inflight"] == 3 and ob.depth == 5
        assert ob.reset_inflight() == 3  # reconnect: unacked go back to pending, resent in order
        again = ob.peek_batch(10)
        assert [i.sample_id for i in again] == [f"s{i}" for i in range(5)]
        assert again[0].attempts == 1 and again[4].attempts == 0


def test_bound_drop_oldest(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=100, policy="drop_oldest") as ob:
        for i in range(10):
            assert ob.put(f"s{i}", "t", bytes(30), priority=i)
        assert ob.bytes <= 100
        assert [i.sample_id for i in ob.peek_batch(10)] == ["s7", "s8", "s9"]
        st = ob.stats()
        assert st["dropped_oldest"] == 7 and st["dropped"] == 7
        assert not ob.put("huge", "t", bytes(101))  # larger than the whole bound
        assert ob.stats()["rejected"] == 1


def test_bound_drop_lowest_priority(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=100, policy="drop_lowest_priority") as ob:
        for i, pr in enumerate([0.5, 0.9, 0.1]):
            assert ob.put(f"s{i}", "t", bytes(30), priority=pr)
        assert ob.put("s3", "t", bytes(30), priority=0.7)  # evicts s2 (0.1)
        assert sorted(i.sample_id for i in ob.peek_batch(10)) == ["s0", "s1", "s3"]
        assert not ob.put("s4", "t", bytes(30), priority=0.2)  # the newcomer is the least important: refused
        assert sorted(i.sample_id for i in ob.peek_batch(10)) == ["s0", "s1", "s3"]
        assert ob.stats()["dropped_lowest_priority"] == 2


def test_bound_reject_new(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=60, policy="reject_new") as ob:
        assert ob.put("a", "t", bytes(30)) and ob.put("b", "t", bytes(30))
        assert not ob.put("c", "t", bytes(1))
        assert ob.stats()["rejected"] == 1 and ob.depth == 2


def test_persists_across_reopen_and_inflight_is_reset(tmp_path: Path) -> None:
    p = tmp_path / "o.db"
    ob = Outbox(p, max_bytes=1000, policy="drop_oldest")
    for i in range(4):
        ob.put(f"s{i}", "t", bytes(100))
    ob.put("s4", "t", bytes(800))  # drops s0, s1
    ob.mark_inflight(ob.peek_batch(1)[0].id, 42)
    ob.close()
    ob2 = Outbox(p, max_bytes=1000)
    st = ob2.stats()
    assert st["depth"] == 3 and st["bytes"] == 1000 and st["inflight"] == 0 and st["dropped_oldest"] == 2
    assert ob2.integrity_check() == "ok"
    ob2.close()


def test_concurrent_put_and_ack(tmp_path: Path) -> None:
    """Frame loop puts while the 'network thread' acks; nothing lost, nothing left over."""
    n = 300
    with Outbox(tmp_path / "o.db", synchronous="NORMAL") as ob:
        done = threading.Event()
        acked: list[str] = []

        def network() -> None:
            mid = 0
            while not (done.is_set() and ob.depth == 0):
                for item in ob.peek_batch(16):
                    mid += 1
                    ob.mark_inflight(item.id, mid)
                    assert ob.ack_mid(mid)
                    acked.append(item.sample_id)
                time.sleep(0.001)

        t = threading.Thread(target=network)
        t.start()
        for i in range(n):
            assert ob.put(f"s{i}", "t", b"payload", 0.5)
        done.set()
        t.join(20)
        assert sorted(acked) == sorted(f"s{i}" for i in range(n))
        assert ob.stats()["put"] == n and ob.stats()["acked"] == n


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from edge.outbox import Outbox
    ob = Outbox({path!r}, max_bytes=1 << 30)
    i = 0
    while True:
        sid = f"s{{i}}"
        ob.put(sid, "edgeloop/v1/dev/d/samples", bytes(2000) + sid.encode(), i % 7)
        print(sid, flush=True)  # printed only after put() returned, i.e. after COMMIT
        if i % 3 == 0:
            for item in ob.peek_batch(2):
                ob.mark_inflight(item.id, i)
        i += 1
    """
)


def test_survives_sigkill_while_writing(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    code = _WRITER.format(root=str(ROOT), path=str(db))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    committed: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while len(committed) < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)  # mid-write: the loop never pauses
    proc.wait(10)
    committed += [ln.strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
    assert len(committed) >= 100, "writer too slow"
    # Raw SQLite view first: the file is a consistent database.
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    ob = Outbox(db, max_bytes=1 << 30)
    assert ob.integrity_check() == "ok"
    stored = {item.sample_id: item for item in ob.peek_batch(100000)}
    missing = [s for s in committed if s not in stored]
    assert not missing, f"{len(missing)} committed puts lost, e.g. {missing[:5]}"
    assert all(item.payload.endswith(item.sample_id.encode()) for item in stored.values())
    assert ob.stats()["inflight"] == 0  # reopened: everything is pending again
    ob.close()
