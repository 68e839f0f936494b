"""Binary envelope: ``b"ELP" | version(1) | header_len(4, BE) | JSON header | body``.

Why this shape: MQTT 3.1.1 has no user properties, so metadata must ride in the
payload; a JSON header keeps it debuggable (``mosquitto_sub`` shows it) while
the image or model chunk stays raw bytes (no base64: +33 % size and CPU).
Sizes are checked before any JSON is parsed so a hostile or corrupt payload
cannot make a receiver allocate or parse more than the configured limits.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from .errors import ProtocolError

__all__ = [
    "MAGIC", "VERSION", "PREFIX_LEN", "DEFAULT_MAX", "DEFAULT_MAX_HEADER",
    "encode", "decode", "split",
]

MAGIC = b"ELP"
VERSION = 1
PREFIX_LEN = 8  # magic(3) + version(1) + header length(4)
DEFAULT_MAX = 8 * 1024 * 1024
DEFAULT_MAX_HEADER = 64 * 1024

_LEN = struct.Struct(">I")
_PREFIX = MAGIC + bytes([VERSION])
_json_encode = msgspec.json.Encoder().encode
_header_decoder = msgspec.json.Decoder(dict[str, Any])


def frame(header_json: bytes, body: bytes | bytearray | memoryview = b"",
          max_header: int = DEFAULT_MAX_HEADER) -> bytes:
    """Wrap an already-encoded JSON header and a body (one copy of each)."""
    if len(header_json) > max_header:
        raise ProtocolError("too_large", f"header is {len(header_json)} bytes > {max_header}")
    return b"".join((_PREFIX, _LEN.pack(len(header_json)), header_json, body))


def encode(header: dict[str, Any], body: bytes | bytearray | memoryview = b"",
           max_header: int = DEFAULT_MAX_HEADER) -> bytes:
    """Encode a header dict and raw body into one payload."""
    try:
        header_json = _json_encode(header)
    except (TypeError, ValueError, OverflowError) as e:  # unencodable values
        raise ProtocolError("bad_header", f"header not JSON-encodable: {e}") from None
    return frame(header_json, body, max_header)


def split(data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX,
          max_header: int = DEFAULT_MAX_HEADER) -> tuple[memoryview, memoryview]:
    """Check framing and sizes; return (header JSON, body) views without parsing.

    Shared by :func:`decode` (header → dict) and ``messages.decode_message``
    (header → typed struct in one msgspec pass).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_header", f"payload must be bytes, got {type(data).__name__}")
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        try:
            view = view.cast("B")
        except TypeError:
            raise ProtocolError("bad_header", "payload buffer is not contiguous") from None
    n = len(view)
    if n > max_size:
        raise ProtocolError("too_large", f"payload is {n} bytes > {max_size}")
    if n < PREFIX_LEN:
        if view[: min(n, 3)] != MAGIC[: min(n, 3)]:
            raise ProtocolError("bad_magic", f"payload does not start with {MAGIC!r}")
        raise ProtocolError("truncated", f"payload is {n} bytes < {PREFIX_LEN}-byte prefix")
    if view[:3] != MAGIC:
        raise ProtocolError("bad_magic", f"payload starts with {bytes(view[:3])!r}, not {MAGIC!r}")
    if view[3] != VERSION:
        raise ProtocolError("bad_version", f"envelope version {view[3]} unsupported (want {VERSION})")
    (hlen,) = _LEN.unpack_from(view, 4)
    if hlen > max_header:
        raise ProtocolError("too_large", f"header length {hlen} > {max_header}")
    end = PREFIX_LEN + hlen
    if end > n:
        raise ProtocolError("truncated", f"header length {hlen} exceeds payload ({n - PREFIX_LEN} left)")
    return view[PREFIX_LEN:end], view[end:]


def decode(data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX,
           max_header: int = DEFAULT_MAX_HEADER) -> tuple[dict[str, Any], bytes]:
    """Decode a payload into (header dict, body bytes); any defect → ProtocolError."""
    hdr, body = split(data, max_size, max_header)
    return parse_header(hdr), bytes(body)


def parse_header(header_json: bytes | memoryview) -> dict[str, Any]:
    """Parse a JSON header that must be an object."""
    try:
        return _header_decoder.decode(header_json)
    except msgspec.ValidationError:
        raise ProtocolError("bad_header", "header is not a JSON object") from None
    except (msgspec.DecodeError, RecursionError, UnicodeError) as e:  # msgspec raises UnicodeDecodeError for bad UTF-8 in a tag
        raise ProtocolError("bad_header", f"header is not valid JSON: {e}") from None
