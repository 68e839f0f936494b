"""Split model bytes into chunks and put them back together, verifying each piece.

Chunks exist because brokers cap packet size (256 KiB default fits all common
brokers). Each chunk is checked against the per-chunk digest from the *signed*
manifest as it arrives, so a corrupt or forged chunk is rejected immediately
and a partial download can resume with only ``missing()`` re-requested.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .errors import ProtocolError

if TYPE_CHECKING:
    from .messages import Manifest

__all__ = ["DEFAULT_CHUNK_SIZE", "split_chunks", "Reassembler"]

DEFAULT_CHUNK_SIZE = 256 * 1024


def split_chunks(data: bytes | bytearray | memoryview,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[tuple[int, bytes, str]]:
    """Return ``[(index, chunk_bytes, sha256_hex), ...]``; the last chunk may be short."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    view = memoryview(data).cast("B")
    out = []
    for i, start in enumerate(range(0, len(view), chunk_size)):
        piece = bytes(view[start:start + chunk_size])
        out.append((i, piece, hashlib.sha256(piece).hexdigest()))
    return out


class Reassembler:
    """Collect chunks in any order, verify each on arrival, assemble when complete.

    ``add`` returns True for a new chunk and False for an identical duplicate
    (QoS-1 redelivery and retained re-sends are normal, not errors). A chunk
    whose bytes do not match its signed digest raises ``chunk_hash`` — this also
    covers a "duplicate" with different bytes. Not thread-safe.
    """

    def __init__(self, count: int, size: int, sha256: str, chunk_sha256: list[str]) -> None:
        if count < 1 or len(chunk_sha256) != count:
            raise ProtocolError("schema", f"{len(chunk_sha256)} chunk digests for count {count}")
        if size < 1:
            raise ProtocolError("schema", f"size must be positive, got {size}")
        self.count = count
        self.size = size
        self.sha256 = sha256
        self.chunk_sha256 = list(chunk_sha256)
        self._chunks: dict[int, bytes] = {}
        self._bytes = 0

    @classmethod
    def for_manifest(cls, manifest: "Manifest") -> "Reassembler":
        """Reassembler for a (verified) manifest."""
        return cls(manifest.chunk_count, manifest.size, manifest.sha256, manifest.chunk_sha256)

    def add(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """Verify and store chunk ``index``; True if new, False if already held."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.count:
            raise ProtocolError("chunk_range", f"chunk index {index!r} not in [0, {self.count})")
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.chunk_sha256[index]:
            raise ProtocolError("chunk_hash", f"chunk {index} sha256 {digest[:16]}… != manifest")
        if index in self._chunks:
            return False
        self._chunks[index] = bytes(data)
        self._bytes += len(data)
        return True

    def has(self, index: int) -> bool:
        return index in self._chunks

    def missing(self) -> list[int]:
        """Indices still needed, ascending (what a resuming download asks for)."""
        return [i for i in range(self.count) if i not in self._chunks]

    @property
    def complete(self) -> bool:
        return len(self._chunks) == self.count

    @property
    def received_bytes(self) -> int:
        return self._bytes

    def assemble(self) -> bytes:
        """Join all chunks and verify total size and sha256 against the manifest."""
        if not self.complete:
            missing = self.missing()
            raise ProtocolError("chunk_missing", f"{len(missing)} chunks missing, first {missing[:5]}")
        data = b"".join(self._chunks[i] for i in range(self.count))
        if len(data) != self.size:
            raise ProtocolError("size_mismatch", f"assembled {len(data)} bytes, manifest says {self.size}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ProtocolError("sha256_mismatch", f"assembled sha256 {digest[:16]}… != manifest")
        return data
