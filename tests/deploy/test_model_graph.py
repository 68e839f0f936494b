"""deploy/model_graph.py: which versions differ from another only in their weights (the fast path's condition)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from deploy.model_graph import graph_digest, weights_only_change
from deploy.publisher import read_artifact


def _change(a: Path, b: Path) -> tuple[bool, str]:
    x, y = read_artifact(a), read_artifact(b)
    return weights_only_change(x.data, x.compat, y.data, y.compat)


def test_the_same_net_trained_otherwise_is_a_weights_only_change(models) -> None:
    """good1 and good2: one architecture, exported apart, other seeds and steps; NaN weights are weights too (the
    devices' own smoke test refuses those, see test_rollout.py)."""
    assert graph_digest(models["good1"].read_bytes()) == graph_digest(models["good2"].read_bytes())
    assert read_artifact(models["good1"]).data != read_artifact(models["good2"]).data
    same, why = _change(models["good2"], models["good1"])
    assert same and "other weights" in why
    assert _change(models["nan"], models["good1"])[0]


def test_a_grown_head_another_net_or_other_labels_are_not(models, tmp_path) -> None:
    from model_factory import make_onnx_model

    three = make_onnx_model(tmp_path / "three.onnx", version="v0006", labels=["0", "1", "2"])
    same, why = _change(three, models["good1"])
    assert not same and "labels" in why
    cnn = make_onnx_model(tmp_path / "cnn.onnx", version="v0007", arch="small_cnn")
    assert not _change(cnn, models["good1"])[0]
    assert graph_digest(cnn.read_bytes()) != graph_digest(models["good1"].read_bytes())
    # metadata that says 32x32 for a 28x28 graph: the graph is the same, the input spec is not
    same, why = _change(models["shape"], models["good1"])
    assert not same and "input" in why


def test_a_changed_operator_attribute_or_weight_shape_changes_the_digest(models, tmp_path) -> None:
    """What the canary guards is the graph: any attribute, operator or initializer shape counts."""
    base = onnx.load_model_from_string(models["good1"].read_bytes())
    digest = graph_digest(base.SerializeToString())

    attr = onnx.ModelProto()
    attr.CopyFrom(base)
    node = next(n for n in attr.graph.node if n.attribute)
    node.attribute[0].CopyFrom(onnx.helper.make_attribute(node.attribute[0].name, 99)
                               if node.attribute[0].type == onnx.AttributeProto.INT else
                               onnx.helper.make_attribute(node.attribute[0].name, "x"))
    assert graph_digest(attr.SerializeToString()) != digest

    op = onnx.ModelProto()
    op.CopyFrom(base)
    relu = next((n for n in op.graph.node if n.op_type == "Relu"), None)
    assert relu is not None
    relu.op_type = "Sigmoid"
    assert graph_digest(op.SerializeToString()) != digest

    shape = onnx.ModelProto()
    shape.CopyFrom(base)
    shape.graph.initializer[0].dims[0] += 1
    assert graph_digest(shape.SerializeToString()) != digest

    # metadata and doc strings are not structure
    meta = onnx.ModelProto()
    meta.CopyFrom(base)
    meta.doc_string = "another build"
    onnx.helper.set_model_props(meta, {"edgeloop.version": "v0099"})
    # the exporter notes each node's source file and line: another checkout's path is not another graph
    for node in meta.graph.node:
        del node.metadata_props[:]
        node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value='File "/elsewhere/trainer/nets.py", line 1')
    assert graph_digest(meta.SerializeToString()) == digest


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_bytes_that_are_no_model_are_never_a_weights_only_change(models, tmp_path, kind) -> None:
    from model_factory import make_broken_model

    bad = make_broken_model(tmp_path, kind, version="v0008").read_bytes()
    with pytest.raises(ValueError, match="not an ONNX model"):
        graph_digest(bad)
    good = read_artifact(models["good1"])
    same, why = weights_only_change(bad, good.compat, good.data, good.compat)
    assert not same and "not an ONNX model" in why
