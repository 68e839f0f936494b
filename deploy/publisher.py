"""Put a model version on the broker for devices to fetch: retained chunks + a signed, retained manifest.

Why retained chunks: a device that is offline during a rollout, or restarts mid-download, fetches
exactly the chunks it is missing by subscribing to their topics - no request/response protocol, no
HTTP server, and the broker's packet limit is respected by the chunk size (256 KiB default). The
price is broker memory, so versions that no manifest points at any more are cleared by publishing
an empty retained payload on each chunk topic (``clear``).

Everything here is synchronous and transport-agnostic: ``publish`` is a callable
``(topic, payload, qos, retain) -> None`` (paho's ``client.publish`` wrapped by the controller), so the
publisher is easy to test and to reuse from the bench.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.chunks import DEFAULT_CHUNK_SIZE, split_chunks
from protocol.messages import Chunk, Manifest, encode_message
from protocol.model_meta import ModelMeta
from protocol.signing import sign_manifest
from protocol.topics import Topics

__all__ = ["ModelArtifact", "read_artifact", "Publisher", "DEFAULT_EXPIRY_S"]

PublishFn = Callable[[str, bytes, int, bool], None]

#: Manifests are valid for a week; the controller re-signs the fleet manifest when half of that is
#: gone, so a device returning after a long absence still gets an unexpired target.
DEFAULT_EXPIRY_S = 7 * 24 * 3600.0
SENDER = "deploy"


@dataclass(frozen=True)
class ModelArtifact:
    """One model version's bytes plus what the manifest says about them."""

    model_id: str
    version: str
    data: bytes
    sha256: str
    compat: dict[str, Any]
    path: str = ""

    @property
    def size(self) -> int:
        return len(self.data)


def read_meta(data: bytes) -> ModelMeta:
    """ModelMeta from ONNX bytes via onnxruntime's metadata reader (no onnx/torch needed in deploy)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    return ModelMeta.from_props(dict(sess.get_modelmeta().custom_metadata_map))


def read_artifact(path: str | Path, model_id: str | None = None, version: str | None = None) -> ModelArtifact:
    """Read an ONNX file and its metadata; ``compat`` (input spec, labels, opset) comes from the metadata.

    ``model_id`` defaults to the architecture name (one model line per architecture); ``version`` to the
    metadata version. Raises ProtocolError(bad_metadata) for a file without edgeloop metadata.
    """
    data = Path(path).read_bytes()
    meta = read_meta(data)
    mid = model_id or (meta.architecture or "model")
    return ModelArtifact(model_id=mid, version=version or meta.version, data=data,
                         sha256=hashlib.sha256(data).hexdigest(), compat=meta.compat(), path=str(path))


class Publisher:
    """Builds, signs and publishes manifests and chunks for one topic prefix."""

    def __init__(self, publish: PublishFn, key: Ed25519PrivateKey, topics: Topics | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, seq_start: int = 0) -> None:
        self._publish = publish
        self.key = key
        self.topics = topics or Topics()
        self.chunk_size = chunk_size
        self._tx_seq = seq_start

    def _next(self) -> int:
        self._tx_seq += 1
        return self._tx_seq

    def chunk_digests(self, art: ModelArtifact) -> list[str]:
        return [h for _, _, h in split_chunks(art.data, self.chunk_size)]

    def publish_chunks(self, art: ModelArtifact, indices: list[int] | None = None) -> int:
        """Publish every chunk (or those at ``indices``) retained, QoS 1; returns how many. Idempotent (same
        bytes, same topics), so republishing a chunk the broker lost is the same call."""
        pieces = split_chunks(art.data, self.chunk_size)
        if indices is not None:
            wanted = set(indices)
            pieces_out = [p for p in pieces if p[0] in wanted]
        else:
            pieces_out = pieces
        for i, piece, digest in pieces_out:
            msg = Chunk(model_id=art.model_id, version=art.version, index=i, count=len(pieces), sha256=digest)
            payload = encode_message(msg, piece, device=SENDER, seq=self._next(), validate=False)
            self._publish(self.topics.chunk(art.model_id, art.version, i), payload, 1, True)
        return len(pieces_out)

    def clear_chunks(self, model_id: str, version: str, count: int) -> None:
        """Remove a version's retained chunks (empty retained payload = delete on every MQTT broker)."""
        for i in range(count):
            self._publish(self.topics.chunk(model_id, version, i), b"", 1, True)

    def manifest(self, art: ModelArtifact, *, seq: int, rollout_id: str, wave: int,
                 targeting: Mapping[str, Any] | None = None, expires: float | None = None) -> Manifest:
        """A signed manifest for ``art``; ``targeting`` goes to ``compat["rollout"]`` (signed with the rest)."""
        compat = dict(art.compat)
        if targeting:
            compat["rollout"] = dict(targeting)
        m = Manifest(
            model_id=art.model_id, version=art.version, seq=seq, sha256=art.sha256, size=art.size,
            chunk_size=self.chunk_size, chunk_count=-(-art.size // self.chunk_size),
            chunk_sha256=self.chunk_digests(art), compat=compat, rollout_id=rollout_id, wave=wave,
            expires=float(expires if expires is not None else time.time() + DEFAULT_EXPIRY_S),
        )
        return sign_manifest(m, self.key)

    def publish_manifest(self, fleet: str, manifest: Manifest) -> bytes:
        """Publish a signed manifest retained on the fleet topic; returns the payload (for the audit log)."""
        payload = encode_message(manifest, device=SENDER, seq=self._next())
        self._publish(self.topics.manifest(fleet), payload, 1, True)
        return payload
