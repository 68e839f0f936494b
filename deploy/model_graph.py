"""Does a model version differ from another only in its weights?

Why it matters: a canary exists to catch what a new model does to a device -- a graph the runtime refuses or
runs slowly, an input spec or label set the camera does not expect, outputs that are garbage -- before the whole
fleet has it. A continual learner ships a new version every few seconds, and almost all of them are the same
graph with other numbers in it (trainer/export.py ``TraceCache`` puts each version's weights into one traced
graph). For such a version the graph, its operators, shapes, input spec and labels have already run on every
device of the fleet, healthy: only the weights are new, and what weights do to accuracy is what the trainer's
gate judged. ``Policy.weights_only_waves`` lets such a version take shorter waves (the demo: everyone at once);
every device still watches it and rolls back by itself, and the fleet gate still halts and rolls back on a
breach.

:func:`graph_digest` is the model with every weight's *values* removed (names, shapes and types kept), metadata
and doc strings dropped (the model's and every node's: the exporter notes each node's source file and line),
serialised deterministically and hashed. Anything else that differs -- an operator, an attribute, a constant
folded into a node, an initializer's shape (a grown head), the opset -- gives another digest, so a doubt always
falls back to the full waves.
"""
from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["graph_digest", "weights_only_change"]

#: TensorProto fields that hold values (cleared) -- not name, dims or data_type (kept).
_VALUE_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                 "external_data")


def graph_digest(data: bytes) -> str:
    """sha256 of the model's structure: everything but its weights' values, metadata and doc strings. Raises
    ValueError for bytes that are not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        m = onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as exc:
        raise ValueError(f"not an ONNX model: {exc}") from exc
    if not m.graph.node:
        raise ValueError("not an ONNX model: no graph nodes")
    for t in m.graph.initializer:
        for name in _VALUE_FIELDS:
            t.ClearField(name)
    for sp in m.graph.sparse_initializer:
        for part in (sp.values, sp.indices):
            for name in _VALUE_FIELDS:
                part.ClearField(name)
    for name in ("producer_name", "producer_version", "model_version"):
        m.ClearField(name)
    _strip_notes(m)
    m.graph.ClearField("name")
    return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()


def _strip_notes(msg: Any) -> None:
    """Remove ``metadata_props`` and ``doc_string`` from ``msg`` and every message in it: notes, not structure.
    The exporter writes one per node (the PyTorch source file and line it came from, the install's path), so two
    exports of one net from two checkouts would otherwise differ."""
    for name in ("metadata_props", "doc_string"):
        if name in msg.DESCRIPTOR.fields_by_name:
            msg.ClearField(name)
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for child in (value if field.is_repeated else [value]):
            _strip_notes(child)


def weights_only_change(new: bytes, new_compat: dict, old: bytes, old_compat: dict) -> tuple[bool, str]:
    """(True, why) when ``new`` is ``old``'s graph with other weights and the same compat block (input spec,
    labels, opset); (False, what differs) otherwise, including when either is not a readable model."""
    if new_compat != old_compat:
        keys = sorted(k for k in set(new_compat) | set(old_compat) if new_compat.get(k) != old_compat.get(k))
        return False, f"compat differs ({', '.join(keys)})"
    try:
        a, b = graph_digest(new), graph_digest(old)
    except ValueError as exc:
        return False, str(exc)
    if a != b:
        return False, f"graph differs ({a[:12]} vs {b[:12]})"
    return True, f"same graph {a[:12]}, other weights"
