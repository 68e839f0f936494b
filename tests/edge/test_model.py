"""EdgeModel and ModelSlot on real exported models (tests/model_factory -> trainer.export), broken ones too."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_factory import make_broken_model, make_onnx_model  # noqa: E402

from edge.model import EdgeModel, ModelError, ModelSlot, softmax  # noqa: E402
from edge.uncertainty import entropy  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    # Same arguments as make_broken_model's source model, so the broken variants reuse the cached export.
    gray = make_onnx_model(d / "gray.onnx", arch="convnet", train_steps=5, version="v0002")
    rgb = make_onnx_model(d / "rgb.onnx", arch="small_cnn", train_steps=5, version="v0003", parent_version="v0002")
    return {"gray": gray, "rgb": rgb, "dir": d}


def _frame(seed: int = 0, h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_reads_metadata_and_infers(models: dict[str, Path]) -> None:
    m = EdgeModel.load(models["gray"], threads=1)
    assert m.version == "v0002" and m.labels == [str(i) for i in range(10)]
    assert m.size == (28, 28) and m.channels == 1 and m.outputs_logits and m.max_batch is None
    frames = [_frame(i) for i in range(5)]
    preds = m.infer(frames)
    assert len(preds) == 5
    for p in preds:
        assert p.probs.shape == (10,) and abs(float(p.probs.sum()) - 1) < 1e-5
        assert p.label == m.labels[p.index] and p.confidence == pytest.approx(float(p.probs.max()))
        assert [c for _, c in p.topk] == sorted((c for _, c in p.topk), reverse=True) and len(p.topk) == 3
    # Micro-batching gives the same answers as one frame at a time.
    single = np.stack([m.infer(f)[0].probs for f in frames])
    assert np.allclose(single, np.stack([p.probs for p in preds]), atol=1e-5)
    # predict == softmax(raw logits)
    x = m.preprocess_batch(frames)
    assert np.allclose(m.predict(x), softmax(m.run(x)), atol=1e-6)
    # The batch-1 fast path (plain Python softmax, entropy from the softmax terms) agrees with the
    # vectorised path on probabilities, top-k and normalised entropy.
    for f, batched in zip(frames, preds):
        one = m.classify(m.preprocess(f))
        assert np.allclose(one.probs, batched.probs, atol=1e-6) and one.index == batched.index
        assert [lab for lab, _ in one.topk] == [lab for lab, _ in batched.topk]
        assert one.entropy == pytest.approx(float(entropy(batched.probs)[0]), abs=1e-6)
        assert one.entropy == pytest.approx(batched.entropy, abs=1e-6)


def test_preprocess_gray_matches_reference(models: dict[str, Path]) -> None:
    m = EdgeModel.load(models["gray"])
    f = _frame(1)
    x = m.preprocess(f)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    grey = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
    ref = cv2.resize(grey, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    # A 2x area halving first (160x120 -> 80x60), then bilinear to 56x56 and a 2x area average: an area
    # average whose box edges fall on even pixels. Uniform noise is the worst case for that (all its energy is at the finest
    # scale): about 3 grey levels from one exact INTER_AREA on average, under 20 at most. Natural frames are
    # much closer (tests/test_preprocess_parity.py compares with the trainer's resize).
    d = np.abs(x[0, 0] - ref)
    assert d.mean() < 4 / 255 and d.max() <= 24 / 255
    # Exactly the chain: halve (colour), grey, bilinear to twice the target, 2x area.
    half = cv2.cvtColor(cv2.resize(f, (80, 60), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    double = cv2.resize(half, (56, 56), interpolation=cv2.INTER_LINEAR)
    chain = cv2.resize(double, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    assert np.abs(x[0, 0] - chain).max() < 1e-6
    # A smooth scene (what cameras mostly see) stays within about a grey level of the exact area average.
    yy, xx = np.mgrid[0:120, 0:160]
    smooth = np.dstack([(xx + yy) % 256, (2 * xx) % 256, (3 * yy) % 256]).astype(np.uint8)
    xs = m.preprocess(smooth)[0, 0]
    ref_s = cv2.resize(cv2.cvtColor(smooth, cv2.COLOR_BGR2GRAY), (28, 28), interpolation=cv2.INTER_AREA) / 255.0
    assert np.abs(xs - ref_s).mean() < 1.5 / 255


def test_preprocess_rgb_mean_std_and_roi(models: dict[str, Path]) -> None:
    m = EdgeModel.load(models["rgb"], roi=[20, 10, 80, 60])
    meta = m.meta
    assert meta.color_order == "RGB" and m.size == (64, 64)
    f = _frame(2)
    x = m.preprocess(f)
    crop = f[10:70, 20:100]
    small = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)[:, :, ::-1].astype(np.float64)
    ref = (small * meta.scale - np.array(meta.mean)) / np.array(meta.std)
    assert np.abs(x[0] - ref.transpose(2, 0, 1)).max() < 1e-4
    # A grey (HxW) frame is accepted too.
    assert m.preprocess(f[:, :, 0]).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_file_is_a_clear_model_error(models: dict[str, Path], kind: str) -> None:
    bad = make_broken_model(models["dir"], kind)
    with pytest.raises(ModelError) as ei:
        EdgeModel.load(bad)
    assert ei.value.reason == "corrupt"
    assert "not a loadable ONNX model" in str(ei.value) and str(bad) in str(ei.value)


def test_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not_found: cannot read model file"):
        EdgeModel.load(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        EdgeModel.load(tmp_path / "empty.onnx")


@pytest.mark.parametrize(
    "kind, reason, words",
    [
        ("wrong_input_size", "input_mismatch", ["H=28", "H=32"]),
        ("wrong_channels", "input_mismatch", ["C=1", "C=3"]),
        ("wrong_labels", "output_mismatch", ["width 10", "11 labels"]),
        ("wrong_input_name", "input_mismatch", ["'pixels'"]),
        ("missing_metadata", "bad_metadata", ["edgeloop.labels", "missing"]),
        ("bad_metadata", "bad_metadata", ["edgeloop.labels"]),
        ("no_metadata", "bad_metadata", ["missing"]),
    ],
)
def test_mismatched_metadata_names_the_mismatch(models: dict[str, Path], kind: str, reason: str, words: list[str]) -> None:
    bad = make_broken_model(models["dir"], kind)
    with pytest.raises(ModelError) as ei:
        EdgeModel.load(bad)
    assert ei.value.reason == reason
    for w in words:
        assert w in str(ei.value), str(ei.value)


def test_swap_refuses_nan_model_and_keeps_active(models: dict[str, Path]) -> None:
    slot = ModelSlot(EdgeModel.load(models["gray"]))
    before = slot.active
    with pytest.raises(ModelError) as ei:
        slot.swap(make_broken_model(models["dir"], "nan"))
    assert ei.value.reason == "smoke_test" and "non-finite" in str(ei.value)
    assert slot.active is before and slot.generation == 0
    with pytest.raises(ModelError, match="no_previous"):
        slot.rollback()


def test_hot_swap_between_frames_in_a_running_loop(models: dict[str, Path]) -> None:
    """A frame loop thread keeps running while the main thread swaps to a different model and rolls back."""
    slot = ModelSlot(EdgeModel.load(models["gray"]), observe_every=5)
    frames = [_frame(i, 96, 128) for i in range(8)]
    seen: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        i = 0
        try:
            while not stop.is_set():
                model = slot.active  # read once per frame: the whole frame uses one model
                f = frames[i % len(frames)]
                slot.observe(f)
                pred = model.infer(f)[0]
                assert pred.probs.shape == (model.num_classes,)
                seen.append((model.version, pred.probs.shape[0]))
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    time.sleep(0.2)
    new = slot.swap(models["rgb"])  # 1x28x28 / 10 classes -> 3x64x64 / 4 classes, no loop restart
    assert new.version == "v0003" and slot.previous is not None and slot.previous.version == "v0002"
    time.sleep(0.2)
    back = slot.rollback()
    assert back.version == "v0002" and slot.generation == 2
    time.sleep(0.2)
    stop.set()
    t.join(5)
    assert not errors, errors
    versions = [v for v, _ in seen]
    # Contiguous runs v0002 -> v0003 -> v0002, and each frame's output matches the model that ran it.
    runs = [versions[0]] + [b for a, b in zip(versions, versions[1:]) if a != b]
    assert runs == ["v0002", "v0003", "v0002"]
    assert all(k == (10 if v == "v0002" else 4) for v, k in seen)


def test_classify_fast_path_matches_infer(models: dict[str, Path]) -> None:
    m = EdgeModel.load(models["rgb"])
    f = _frame(4)
    a = m.classify(m.preprocess(f))
    b = m.infer(f)[0]
    assert a.label == b.label and np.allclose(a.probs, b.probs, atol=1e-6)
    assert [lbl for lbl, _ in a.topk] == [lbl for lbl, _ in b.topk]
