"""Export round trips (PyTorch vs onnxruntime, metadata), the verifier's refusals, and the test model factory."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for model_factory

from model_factory import BROKEN_KINDS, default_meta, make_broken_model, make_onnx_model  # noqa: E402
from protocol.model_meta import ModelMeta  # noqa: E402
from trainer import export as export_mod  # noqa: E402
from trainer.export import ExportError, export_onnx, read_meta  # noqa: E402
from trainer.nets import ARCH_INPUT, build_model  # noqa: E402


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _trained(arch: str, labels: list[str], steps: int = 3) -> torch.nn.Module:
    """A few steps so BatchNorm running stats are not the identity (a real eval-mode export)."""
    torch.manual_seed(0)
    spec = ARCH_INPUT[arch]
    model = build_model(arch, len(labels))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        x = torch.randn(8, spec.channels, spec.height, spec.width)
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, len(labels), (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("arch,labels", [("convnet", [str(d) for d in range(10)]), ("small_cnn", ["ok", "scratch", "dent"]),
                                         ("small_cnn128", ["ok", "scratch", "dent", "crack"])])
def test_round_trip(tmp_path: Path, arch: str, labels: list[str]) -> None:
    model = _trained(arch, labels)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = default_meta(arch, labels, "v0003", parent_version="v0002", roi=[10, 20, 100, 100],
                        samples_seen=1234, metrics={"accuracy": 0.9, "per_class": {"0": 1.0}})
    out = tmp_path / "m.onnx"
    result = export_onnx(model, meta, out)

    # the caller's model is untouched: still training mode, same weights
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # metadata round trip through the file, with the graph's facts filled in
    proto = onnx.load(str(out))
    stored = ModelMeta.from_props({p.key: p.value for p in proto.metadata_props})
    assert stored == result.meta == dataclasses.replace(meta, opset=result.opset)
    assert stored.output_name == "logits" and stored.input_name == "input" and result.opset >= 18
    assert result.size == out.stat().st_size and result.max_abs_diff < 1e-4

    # same outputs as PyTorch eval() at several batch sizes (dynamic batch axis)
    sess = _session(out)
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert inp.shape[1:] == [meta.channels, meta.height, meta.width] and not isinstance(inp.shape[0], int)
    assert outp.shape[1] == len(labels)
    model.eval()
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, meta.channels, meta.height, meta.width), dtype=np.float32)
        got = sess.run(["logits"], {"input": x})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-3)
    assert not list(tmp_path.glob(".*tmp*"))


def test_mobilenet_v3_small_exports(tmp_path: Path) -> None:
    labels = ["ok", "scratch", "dent", "stain"]
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", len(labels))
    t = time.perf_counter()
    result = export_onnx(model, default_meta("mobilenet_v3_small", labels), tmp_path / "mb.onnx")
    print(f"mobilenet_v3_small: export {result.export_seconds:.1f}s verify {result.verify_seconds:.1f}s "
          f"total {time.perf_counter() - t:.1f}s size {result.size} B")
    assert read_meta(result.path).width == 96
    assert _session(result.path).get_inputs()[0].shape[1:] == [3, 96, 96]


def test_torchscript_exporter_is_an_explicit_alternative(tmp_path: Path) -> None:
    labels = ["a", "b"]
    model = _trained("small_cnn", labels, steps=1)
    result = export_onnx(model, default_meta("small_cnn", labels), tmp_path / "ts.onnx", exporter="torchscript")
    assert result.exporter == "torchscript" and result.max_abs_diff < 1e-4


def test_labels_count_mismatch_is_refused_and_nothing_written(tmp_path: Path) -> None:
    model = build_model("small_cnn", 4)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="3 labels"):
        export_onnx(model, default_meta("small_cnn", ["a", "b", "c"]), out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_input_size_the_net_cannot_take_is_a_clear_error(tmp_path: Path) -> None:
    meta = default_meta("convnet", ["0", "1"], width=32, height=32)  # fc expects 9216 = 64*12*12 features
    with pytest.raises(ExportError, match="export of Classifier"):
        export_onnx(build_model("convnet", 2), meta, tmp_path / "m.onnx")


def test_graph_input_disagreeing_with_metadata_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate an exporter bug: the graph is traced at 32x32 while the metadata says 64x64."""
    real = export_mod._export_proto

    def traced_at_32(net, example, *args, **kw):  # type: ignore[no-untyped-def]
        return real(net, torch.zeros(2, example.shape[1], 32, 32), *args, **kw)

    monkeypatch.setattr(export_mod, "_export_proto", traced_at_32)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"metadata needs \[batch \(dynamic\), 3, 64, 64\]"):
        export_onnx(build_model("small_cnn", 2), default_meta("small_cnn", ["a", "b"]), out)
    assert not out.exists()


def test_numeric_mismatch_is_caught_and_old_file_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the exported graph computes something else than the model (here: another model's weights), refuse."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous good model")
    real = export_mod._export_proto
    torch.manual_seed(1)
    other = build_model("small_cnn", 2).eval()
    monkeypatch.setattr(export_mod, "_export_proto", lambda net, *a, **kw: real(other, *a, **kw))
    torch.manual_seed(2)
    with pytest.raises(ExportError, match="disagree"):
        export_onnx(build_model("small_cnn", 2), default_meta("small_cnn", ["a", "b"]), out)
    assert out.read_bytes() == b"previous good model"


def test_nan_model_is_refused(tmp_path: Path) -> None:
    model = build_model("small_cnn", 2)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(ExportError, match="non-finite"):
        export_onnx(model, default_meta("small_cnn", ["a", "b"]), tmp_path / "m.onnx")


def test_factory_convnet_on_digits_is_a_real_classifier(tmp_path: Path) -> None:
    path = make_onnx_model(tmp_path / "a.onnx", roi=[0, 0, 56, 56])
    meta = read_meta(path)
    assert meta.labels == [str(d) for d in range(10)] and meta.roi == [0, 0, 56, 56]
    assert meta.metrics["accuracy"] > 0.6, meta.metrics  # 30 Adam steps on real MNIST
    # cached: a second call with the same arguments is a copy, not a retrain
    t = time.perf_counter()
    again = make_onnx_model(tmp_path / "b.onnx", roi=[0, 0, 56, 56])
    assert time.perf_counter() - t < 1.0 and again.read_bytes() == path.read_bytes()


def test_factory_subset_of_digits_and_random_data(tmp_path: Path) -> None:
    two = read_meta(make_onnx_model(tmp_path, labels=["3", "7"], train_steps=5))
    assert two.labels == ["3", "7"]
    colour = make_onnx_model(tmp_path, arch="small_cnn", labels=["x", "y", "z"], train_steps=3, width=48, height=40)
    meta = read_meta(colour)
    assert (meta.width, meta.height, meta.channels, meta.color_order) == (48, 40, 3, "RGB")
    assert _session(colour).get_outputs()[0].shape[1] == 3


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("broken")


@pytest.mark.parametrize("kind", sorted(BROKEN_KINDS))
def test_broken_models_are_broken_as_described(broken_dir: Path, kind: str) -> None:
    path = make_broken_model(broken_dir, kind)
    if kind in ("truncated", "garbage"):
        with pytest.raises(Exception):
            _session(path)
        return
    sess = _session(path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    if kind in ("missing_metadata", "bad_metadata", "no_metadata"):
        with pytest.raises(ValueError, match="bad_metadata"):
            ModelMeta.from_props(props)
        return
    meta = ModelMeta.from_props(props)
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    graph_chw = list(inp.shape[1:])
    if kind == "wrong_input_size":
        assert graph_chw == [1, 28, 28] and (meta.height, meta.width) == (32, 32)
    elif kind == "wrong_channels":
        assert graph_chw[0] == 1 and meta.channels == 3
    elif kind == "wrong_labels":
        assert out.shape[1] == len(meta.labels) - 1
    elif kind == "wrong_input_name":
        assert inp.name != meta.input_name
    else:
        assert graph_chw == [meta.channels, meta.height, meta.width] and out.shape[1] == len(meta.labels)
        y = sess.run(None, {inp.name: np.zeros((2, *graph_chw), np.float32)})[0]
        if kind == "nan":
            assert np.isnan(y).all()
        else:  # bitflip: still a working model, only the bytes differ
            assert kind == "bitflip" and np.isfinite(y).all()


def test_a_new_version_of_a_traced_net_is_not_traced_again_and_writes_the_same_model(tmp_path: Path) -> None:
    """The trace cache: the second export of the same structure is a hit; its file computes what a fresh trace of the
    same weights computes, op for op (BatchNorm folded from the new weights); a grown head is a new structure."""
    labels = ["ok", "scratch", "dent", "crack"]
    export_mod.TRACES.__init__()  # type: ignore[misc]
    first = _trained("small_cnn128", labels, steps=2)
    export_onnx(first, default_meta("small_cnn128", labels), tmp_path / "v1.onnx")
    second = _trained("small_cnn128", labels, steps=4)  # other weights and other batch-norm statistics
    cached = export_onnx(second, default_meta("small_cnn128", labels), tmp_path / "v2.onnx")
    assert (export_mod.TRACES.hits, export_mod.TRACES.misses) == (1, 1)
    export_mod.TRACES.__init__()  # type: ignore[misc]
    fresh = export_onnx(second, default_meta("small_cnn128", labels), tmp_path / "v2-fresh.onnx")
    assert export_mod.TRACES.misses == 1 and cached.max_abs_diff < 1e-4 and fresh.max_abs_diff < 1e-4
    a, b = onnx.load(str(cached.path)), onnx.load(str(fresh.path))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert "BatchNormalization" not in {n.op_type for n in a.graph.node}
    x = np.random.default_rng(0).standard_normal((5, 3, 128, 128), dtype=np.float32)
    np.testing.assert_allclose(_session(cached.path).run(None, {"input": x})[0],
                               _session(fresh.path).run(None, {"input": x})[0], atol=1e-5)
    grown = _trained("small_cnn128", labels + ["stain"], steps=1)
    export_onnx(grown, default_meta("small_cnn128", labels + ["stain"]), tmp_path / "v3.onnx")
    assert export_mod.TRACES.misses == 2


def test_a_cached_trace_that_fails_verification_is_dropped_and_the_net_traced_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """If a cached graph ever stops computing the net (here: its weights do not land), the export is not lost and
    nothing wrong is written: verification refuses it, the entry goes, a fresh trace is exported and verified."""
    labels = ["a", "b"]
    export_mod.TRACES.__init__()  # type: ignore[misc]
    export_onnx(_trained("small_cnn", labels), default_meta("small_cnn", labels), tmp_path / "v1.onnx")
    real, broken = export_mod._with_weights, []

    def weights_lost_once(graph, net):  # type: ignore[no-untyped-def]
        if export_mod.TRACES.hits and not broken:  # the cached graph, the first time: another net's weights
            broken.append(True)
            return real(graph, build_model("small_cnn", 2).eval())
        return real(graph, net)

    monkeypatch.setattr(export_mod, "_with_weights", weights_lost_once)
    model = _trained("small_cnn", labels, steps=5)
    with caplog.at_level("WARNING", logger="trainer.export"):
        res = export_onnx(model, default_meta("small_cnn", labels), tmp_path / "v2.onnx")
    assert broken and "tracing it again" in caplog.text and res.max_abs_diff < 1e-4
    assert export_mod.TRACES.misses == 2 and _session(res.path).run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})
