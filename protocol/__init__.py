"""edgeloop wire protocol: topics, envelope, typed messages, plain-JSON reports, chunking, manifest signing,
model metadata.

Imports only stdlib, numpy, msgspec and cryptography so every component
(edge, trainer, deploy) can depend on it without pulling in the others.
"""

from .chunks import DEFAULT_CHUNK_SIZE, Reassembler, split_chunks
from .envelope import DEFAULT_MAX, DEFAULT_MAX_HEADER
from .errors import ProtocolError
from .messages import MESSAGE_TYPES, SCHEMA, Chunk, Decoded, Header, Manifest, Message, Sample, decode_message, encode_message
from .reports import (
    REPORT_SCHEMA, Birth, ModelStatus, PredictionReport, Report, State, Stats, TopK, decode_report, encode_report,
)
from .model_meta import ModelMeta
from .topics import DEFAULT_PREFIX, ParsedTopic, Topics

__all__ = [
    "ProtocolError", "Topics", "ParsedTopic", "DEFAULT_PREFIX",
    "Message", "Sample", "Manifest", "Chunk", "Header", "Decoded", "MESSAGE_TYPES", "SCHEMA",
    "encode_message", "decode_message",
    "Report", "Birth", "State", "Stats", "ModelStatus", "PredictionReport", "TopK", "REPORT_SCHEMA",
    "encode_report", "decode_report",
    "DEFAULT_MAX", "DEFAULT_MAX_HEADER", "DEFAULT_CHUNK_SIZE", "split_chunks", "Reassembler",
    "ModelMeta",
]
