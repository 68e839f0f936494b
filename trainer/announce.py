"""Announce promoted versions on the broker, bytes included, so the rollout controller never needs our disk.

What is published, retained (layout and notice: protocol/promotion.py):

* ``trainer/models/{v}/chunk/{i}`` — the ONNX bytes of ``v`` in ``Chunk`` envelopes, then
* ``trainer/models/{v}`` — the notice of ``v`` (sha256, size, every chunk's digest), then
* ``trainer/promoted`` — the notice of the newest promoted version.

Bytes first, notice last: a controller that sees a notice finds the bytes already there.

Which versions stay on the broker (the *kept set*): the newest ``keep`` promoted versions and the bootstrap
version (no parent: what cameras are provisioned with, so a controller that starts late still has the first
rollback target). Versions that leave the set are cleared (an empty retained payload on each of their
topics), so the broker holds a bounded number of models whatever the trainer's history. ``announced.json``
in the state directory remembers what is on the broker, so clearing survives a restart.

Restarts on either side lose nothing: the registry row is written before anything is announced, and on every
(re)connection the whole kept set is published again (idempotent: same bytes, same topics; the controller
records each version once). A trainer killed between registering and announcing thus announces on its next
start; a broker that lost its retained messages gets them back on the next reconnect.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from protocol.chunks import DEFAULT_CHUNK_SIZE, split_chunks
from protocol.durable import atomic_write
from protocol.messages import Chunk, encode_message
from protocol.promotion import Promotion, encode_promotion
from protocol.topics import Topics

from .registry import ModelRecord, Registry

__all__ = ["Announcer", "KEEP_ON_BROKER", "ANNOUNCED_FILE"]

log = logging.getLogger(__name__)

PublishFn = Callable[[str, bytes, int, bool], Any]
#: Promoted versions whose bytes stay retained on the broker (plus the bootstrap version).
KEEP_ON_BROKER = 3
ANNOUNCED_FILE = "announced.json"
_NOTICE_METRICS = ("accuracy", "macro_f1", "forgetting", "n", "per_class")


class Announcer:
    """Publishes notices and bytes of promoted versions for one trainer state directory (any thread)."""

    def __init__(self, topics: Topics, state_dir: str | Path, model_id: str, *, keep: int = KEEP_ON_BROKER,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.topics = topics
        self.state_dir = Path(state_dir)
        self.model_id = model_id
        self.keep = max(1, int(keep))
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._seq = 0

    # -- what -----------------------------------------------------------------------------------------------
    def kept(self, records: list[ModelRecord]) -> list[ModelRecord]:
        """The kept set, oldest first: the bootstrap version and the newest ``keep`` promoted ones."""
        promoted = [r for r in records if r.status == "promoted"]
        keep = {r.version: r for r in promoted[-self.keep:]}
        boot = next((r for r in records if r.parent is None), None)
        if boot is not None:
            keep.setdefault(boot.version, boot)
        return sorted(keep.values(), key=lambda r: r.seq)

    def notice(self, rec: ModelRecord) -> Promotion:
        pieces = split_chunks(rec.path.read_bytes(), self.chunk_size)
        metrics = {k: rec.metrics[k] for k in _NOTICE_METRICS if k in rec.metrics}
        return Promotion(model_id=self.model_id, version=rec.version, seq=rec.seq, parent=rec.parent,
                         sha256=rec.sha256, size=rec.size, chunk_size=self.chunk_size,
                         chunk_sha256=[h for _, _, h in pieces], labels=list(rec.labels), metrics=metrics,
                         time=_created(rec), path=str(rec.path))

    # -- publishing -----------------------------------------------------------------------------------------
    def announce(self, publish: PublishFn, version: str) -> None:
        """A version was just promoted: publish it as the newest, then clear what left the kept set."""
        with self._lock, Registry(self.state_dir) as reg:
            records = reg.list()
            rec = reg.get(version)
            self._publish_version(publish, rec, newest=True)
            self._clear_others(publish, self.kept(records))

    def republish(self, publish: PublishFn) -> int:
        """Publish the whole kept set again (after a (re)connection); returns how many versions."""
        with self._lock, Registry(self.state_dir) as reg:
            records = reg.list()
            kept = self.kept(records)
            newest = max((r for r in kept if r.status == "promoted"), key=lambda r: r.seq, default=None)
            for rec in kept:
                self._publish_version(publish, rec, newest=rec is newest)
            self._clear_others(publish, kept)
        return len(kept)

    def republish_soon(self, publish: PublishFn) -> threading.Thread:
        """:meth:`republish` on a thread of its own (reading model files must not hold up the MQTT loop)."""
        def run() -> None:
            try:
                n = self.republish(publish)
                log.info("announced %d kept version(s) on the broker again", n)
            except Exception:
                log.exception("re-announcing promoted versions failed; the next reconnection tries again")

        t = threading.Thread(target=run, name="trainer-announce", daemon=True)
        t.start()
        return t

    def _publish_version(self, publish: PublishFn, rec: ModelRecord, newest: bool) -> None:
        note = self.notice(rec)
        data = rec.path.read_bytes()
        if len(data) != rec.size:
            raise ValueError(f"{rec.path} has {len(data)} bytes; the registry says {rec.size}")
        for i, piece, digest in split_chunks(data, self.chunk_size):
            self._seq += 1
            msg = Chunk(model_id=self.model_id, version=rec.version, index=i, count=note.chunk_count, sha256=digest)
            publish(self.topics.trainer_chunk(rec.version, i),
                    encode_message(msg, piece, device="trainer", seq=self._seq, validate=False), 1, True)
        payload = encode_promotion(note)
        publish(self.topics.trainer_model(rec.version), payload, 1, True)
        if newest:
            publish(self.topics.trainer_promoted(), payload, 1, True)
        self._remember(rec.version, note.chunk_count)

    def _clear_others(self, publish: PublishFn, kept: list[ModelRecord]) -> None:
        """Clear every version on the broker that is not in the kept set (empty retained = deleted)."""
        want = {r.version for r in kept}
        on_broker = self._announced()
        for version, count in sorted(on_broker.items()):
            if version in want:
                continue
            publish(self.topics.trainer_model(version), b"", 1, True)
            for i in range(int(count)):
                publish(self.topics.trainer_chunk(version, i), b"", 1, True)
            on_broker.pop(version)
            log.info("cleared %s from the broker (%d chunks): no longer among the kept versions", version, count)
        self._write_announced(on_broker)

    # -- announced.json -------------------------------------------------------------------------------------
    def _announced(self) -> dict[str, int]:
        try:
            data = json.loads((self.state_dir / ANNOUNCED_FILE).read_text())
            return {str(k): int(v) for k, v in data.get("versions", {}).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, TypeError) as e:
            log.warning("%s unreadable (%s): starting it again", ANNOUNCED_FILE, e)
            return {}

    def _remember(self, version: str, count: int) -> None:
        on_broker = self._announced()
        if on_broker.get(version) != count:
            on_broker[version] = count
            self._write_announced(on_broker)

    def _write_announced(self, versions: dict[str, int]) -> None:
        atomic_write(self.state_dir / ANNOUNCED_FILE, json.dumps({"versions": versions}, sort_keys=True).encode())


def _created(rec: ModelRecord) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(rec.created).timestamp()
    except ValueError:
        return 0.0
