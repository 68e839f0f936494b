"""One exception type for everything that crosses the wire.

Receivers parse untrusted bytes from a shared broker; a single, predictable
exception (a ``ValueError``) with a short machine-readable ``reason`` lets them
drop, count and log bad input without catch-all handlers that would also hide
their own bugs.
"""

from __future__ import annotations

__all__ = ["ProtocolError", "REASONS"]

#: The reason codes in use (see docs/CONTRACTS.md). Kept as a set so tests and
#: metrics can enumerate them; raising an unlisted reason is allowed but should
#: be added here.
REASONS = frozenset(
    {
        "too_large",        # total size, header size or body size over a limit
        "truncated",        # fewer bytes than the framing promises
        "bad_magic",        # not an edgeloop envelope at all
        "bad_version",      # envelope version or message schema version unsupported
        "bad_header",       # header is not a UTF-8 JSON object
        "bad_json",         # a plain-JSON report is not a UTF-8 JSON object
        "wrong_type",       # a valid message of another type than its topic carries
        "unknown_type",     # header "type" is not a known message type
        "schema",           # fields missing, mistyped or out of range
        "bad_topic",        # topic does not match the layout / bad id segment
        "chunk_hash",       # a chunk's bytes do not match its digest
        "chunk_missing",    # assemble() before all chunks arrived
        "chunk_duplicate",  # same chunk index added twice with different bytes
        "chunk_range",      # chunk index outside [0, count) or bad chunk length
        "size_mismatch",    # reassembled size differs from the manifest
        "sha256_mismatch",  # reassembled digest differs from the manifest
        "bad_signature",    # signature missing, malformed, wrong key or tampered
        "unknown_key",      # manifest signed by a key we do not trust
        "expired",          # manifest past its expiry time
        "stale_sequence",   # manifest seq not above the highest accepted
        "bad_metadata",     # ONNX metadata_props missing/invalid
        "bad_key",          # key file unreadable or not Ed25519
    }
)


class ProtocolError(ValueError):
    """Invalid wire data; ``reason`` is a short code, ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason!r}, {self.detail!r})"
