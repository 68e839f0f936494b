"""edgeloop wire protocol: topics, envelope, typed messages, chunking, manifest signing, model metadata.

Imports only stdlib, numpy, msgspec and cryptography so every component
(edge, trainer, deploy) can depend on it without pulling in the others.
"""

from .chunks import DEFAULT_CHUNK_SIZE, Reassembler, split_chunks
from .envelope import DEFAULT_MAX, DEFAULT_MAX_HEADER
from .errors import ProtocolError
from .messages import (
    MESSAGE_TYPES, SCHEMA, Birth, Chunk, Decoded, Header, Manifest, Message, ModelStatus, Sample,
    State, Stats, decode_message, encode_message,
)
from .model_meta import ModelMeta
from .topics import DEFAULT_PREFIX, ParsedTopic, Topics

__all__ = [
    "ProtocolError", "Topics", "ParsedTopic", "DEFAULT_PREFIX",
    "Message", "Sample", "Birth", "State", "Stats", "ModelStatus", "Manifest", "Chunk",
    "Header", "Decoded", "MESSAGE_TYPES", "SCHEMA", "encode_message", "decode_message",
    "DEFAULT_MAX", "DEFAULT_MAX_HEADER", "DEFAULT_CHUNK_SIZE", "split_chunks", "Reassembler",
    "ModelMeta",
]
