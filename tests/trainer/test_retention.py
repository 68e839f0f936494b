"""Store retention: bounded by count, bytes and age, never a labelled or held-out sample, disk given back;
and the migration of a store keyed on sample_id alone."""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import numpy as np

from trainer.config import RetentionConfig
from trainer.retention import enforce
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import incoming  # noqa: E402

IMG = 4096


def _fill(st: SampleStore, n: int, start: int = 0, truth: str | None = "red") -> list[str]:
    """n samples of IMG bytes each, stored 10 per batch (as ingestion does, so pack files roll over)."""
    rng = np.random.default_rng(start)
    items = [incoming(f"r{start + i:05d}", truth, rng, seq=start + i, image=bytes(rng.integers(0, 255, IMG, np.uint8)))
             for i in range(n)]
    for i in range(0, n, 10):
        st.add_batch(items[i:i + 10])
    return [it.sample_id for it in items]


def _pack_bytes(st: SampleStore) -> int:
    return sum(p.stat().st_size for p in st.images_dir.glob("seg-*.pack"))


def test_count_limit_deletes_oldest_unlabelled_only(tmp_path: Path) -> None:
    with SampleStore(tmp_path, segment_bytes=64 * 1024) as st:
        ids = _fill(st, 100)
        st.set_labels([(i, "red") for i in ids[:30]], "test", heldout_fraction=0.3)  # labelled + some held out
        rep = enforce(st, RetentionConfig(max_samples=50, max_bytes=None, max_age_days=None))
        assert st.count() == 50 and rep.deleted == {"count": 50}
        assert st.count("label IS NOT NULL") == 30 and st.count("heldout = 1") > 0  # all kept
        kept = {s.sample_id for s in st.query("label IS NULL", limit=1000)}
        assert kept == set(ids[80:])  # the newest unlabelled ones
        # labelled samples alone over the limit: nothing labelled goes, the report says so
        rep = enforce(st, RetentionConfig(max_samples=10, max_bytes=None, max_age_days=None))
        assert st.count() == 30 and rep.over_limit == ["count"]


def test_byte_limit_and_compaction_give_disk_back(tmp_path: Path) -> None:
    with SampleStore(tmp_path, segment_bytes=64 * 1024) as st:
        ids = _fill(st, 200)  # ~800 kB in 13 pack files
        st.set_labels([(i, "red") for i in ids[::10]], "test", heldout_fraction=0.0)
        images = {i: st.image(i)[0] for i in ids[::10]}
        before = _pack_bytes(st)
        rep = enforce(st, RetentionConfig(max_samples=None, max_bytes=1024 * 1024 // 4, max_age_days=None,
                                          compact_below=0.5))
        assert st.live_bytes() <= 1024 * 1024 // 4 + IMG
        assert rep.compacted > 0 and rep.reclaimed_bytes > 0
        assert _pack_bytes(st) < before / 2  # the space really went back to the file system
        assert all(st.image(i)[0] == img for i, img in images.items())  # every labelled image still readable
        assert st.count("label IS NOT NULL") == 20
    with SampleStore(tmp_path, segment_bytes=64 * 1024) as st:  # and after reopening
        assert all(st.image(i)[0] == img for i, img in images.items())


def test_age_limit(tmp_path: Path) -> None:
    import time

    with SampleStore(tmp_path) as st:
        _fill(st, 10)
        rep = enforce(st, RetentionConfig(max_samples=None, max_bytes=None, max_age_days=1.0), now=time.time() + 2 * 86400)
        assert rep.deleted == {"age": 10} and st.count() == 0
        _fill(st, 5, start=50)
        assert enforce(st, RetentionConfig(max_samples=None, max_bytes=None, max_age_days=1.0)).total_deleted == 0


def test_a_store_keyed_on_sample_id_alone_is_migrated(tmp_path: Path) -> None:
    with SampleStore(tmp_path) as st:
        _fill(st, 3)
        st.set_label("r00000", "red", "test")
    # rebuild the table as edgeloop < schema 2 wrote it (sample_id UNIQUE on its own)
    con = sqlite3.connect(tmp_path / "samples.db")
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name='samples'").fetchone()[0]
    con.executescript(f"""
        DROP INDEX IF EXISTS samples_key; DROP INDEX IF EXISTS samples_id; DROP INDEX IF EXISTS samples_segment;
        ALTER TABLE samples RENAME TO old;
        {sql.replace("sample_id TEXT NOT NULL,", "sample_id TEXT NOT NULL UNIQUE,")};
        INSERT INTO samples SELECT * FROM old; DROP TABLE old; PRAGMA user_version=0;""")
    con.close()
    with SampleStore(tmp_path) as st:
        assert st.count() == 3 and st.get("r00000").label == "red"
        rng = np.random.default_rng(9)
        r = st.add_batch([incoming("r00001", "red", rng, device="cam2")])  # same id, another device
        assert r.stored == 1 and st.count() == 4
        assert st.connection().execute("PRAGMA user_version").fetchone()[0] == 2
