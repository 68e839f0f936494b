"""Test-time input calibration: the correction folds into the model's normalisation exactly, it maps a lighting
change back onto the reference, it follows the slot across swaps, and it is reversible."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_factory import make_onnx_model  # noqa: E402

from edge.drift import DriftMonitor  # noqa: E402
from edge.model import CalibrationConfig, EdgeModel, InputCalibration, ModelSlot  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from edge.sampler import Sampler, SamplerConfig  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    gray = make_onnx_model(d / "gray.onnx", arch="convnet", train_steps=5, version="v0002")
    rgb = make_onnx_model(d / "rgb.onnx", arch="small_cnn", train_steps=5, version="v0003", parent_version="v0002")
    return {"gray": gray, "rgb": rgb}


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (64, 64, 3)).astype(np.float32)
    return [np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_correction_equals_preprocessing_the_corrected_image(models: dict[str, Path], kind: str) -> None:
    m = EdgeModel.load(models[kind])
    frame = _frames(1)[0]
    gain, offset = np.array([1.4, 0.9, 1.2]), np.array([-10.0, 5.0, 3.0])
    m.set_input_correction(gain, offset)
    fused, small = m.prepare(frame)
    # the same map applied to the small crop by hand, through the plain model's normalisation
    plain = EdgeModel.load(models[kind])
    corrected = small.astype(np.float64)
    if corrected.ndim == 3:
        corrected = corrected * gain + offset
    else:
        w = np.array([0.114, 0.587, 0.299])
        corrected = corrected * float(w @ gain) + float(w @ offset)
    ref = plain.batch_from_small([corrected.astype(np.float32)])
    assert np.allclose(fused, ref, atol=1e-4)
    # and the numpy path agrees with OpenCV's fused blob path
    out = np.empty_like(fused)
    m._to_chw_into(small, out[0])
    assert np.allclose(out, fused, atol=1e-4)
    m.set_input_correction(None)
    assert np.allclose(m.prepare(frame)[0], plain.prepare(frame)[0]) and m.correction is None


def test_calibration_maps_a_lighting_change_back_and_releases() -> None:
    cfg = CalibrationConfig(mode="always", reference=40, window=20, every=5)
    cal = InputCalibration(cfg)
    frames = _frames(200)
    for f in frames[:60]:
        cal.observe(f)
        assert not cal.update(False) or cal.engaged is False  # identity: nothing to engage
    assert not cal.engaged
    cast = np.array([0.55, 0.7, 0.9])  # darker and warmer (BGR gains)
    for f in frames[60:120]:
        cal.observe(np.clip(f * cast, 0, 255).astype(np.uint8))
        cal.update(False)
    assert cal.engaged and cal.engagements == 1
    assert np.allclose(cal.gain, 1 / cast, rtol=0.08)
    st = cal.stats()
    assert st["engaged"] and len(st["gain"]) == 3 and st["mode"] == "always"
    for f in frames[120:200]:  # the light comes back: the map returns to identity and disengages
        cal.observe(f)
        cal.update(False)
    assert not cal.engaged and cal.gain is None


def test_drift_mode_waits_for_the_drift_signal() -> None:
    cal = InputCalibration(CalibrationConfig(mode="drift", reference=20, window=10, every=5))
    for f in _frames(30):
        cal.observe((f * 0.5).astype(np.uint8) if cal.frames >= 20 else f)
        assert not cal.update(False)
    assert not cal.engaged
    cal.observe((_frames(1)[0] * 0.5).astype(np.uint8))
    assert cal.update(True) and cal.engaged


def test_off_costs_nothing_and_the_slot_applies_the_map_to_swapped_models(models: dict[str, Path]) -> None:
    cal = InputCalibration(CalibrationConfig(mode="always", reference=10, window=10, every=1))
    slot = ModelSlot(EdgeModel.load(models["rgb"]), calibration=cal)
    pipe = Pipeline(slot, Sampler(SamplerConfig(seed=0)), DriftMonitor())
    frames = _frames(40)
    for f in frames[:10]:
        pipe.step(f)
    for f in frames[10:40]:
        pipe.step((f * 0.6).astype(np.uint8))
    assert cal.engaged and slot.get().correction is not None
    new = slot.swap(EdgeModel.load(models["rgb"]))
    assert new.correction is not None and np.allclose(new.correction[0], cal.gain)
    cal.release()
    cal.apply(slot.get())
    assert slot.get().correction is None
    off = InputCalibration()
    assert not off.enabled
    slot2 = ModelSlot(EdgeModel.load(models["rgb"]), calibration=off)
    Pipeline(slot2, Sampler(SamplerConfig(seed=0)), DriftMonitor()).step(frames[0])
    assert off.frames == 0


def test_calibrate_image_is_what_the_model_saw(models: dict[str, Path]) -> None:
    m = EdgeModel.load(models["rgb"])
    img = _frames(1)[0]
    assert m.calibrate_image(img) is img
    m.set_input_correction(np.array([2.0, 1.0, 0.5]), np.array([0.0, 10.0, 0.0]))
    out = m.calibrate_image(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.allclose(out[..., 1], np.clip(img[..., 1] + 10.0, 0, 255), atol=1)
    assert out[..., 0].max() <= 255


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        CalibrationConfig(mode="sometimes")
    with pytest.raises(ValueError, match=">= 1"):
        CalibrationConfig(window=0)
