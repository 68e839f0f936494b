"""The new-class logit offset (trainer/bias_correction.py): fitted where the evidence is, zero where there is none,
and part of the exported graph."""
from __future__ import annotations

import numpy as np
import torch

from trainer.bias_correction import LogitBias, fit_new_class_bias


def _logits(n_old: int, n_new: int, shift: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, class 2 new; each sample's own logit leads by 2 (noise 1), then class 2's logit ``+shift``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([i % 2 for i in range(n_old)] + [2] * n_new)
    z = torch.randn(len(y), 3, generator=g)
    z[torch.arange(len(y)), y] += 2.0
    z[:, 2] += shift
    return z, y


def test_a_shy_new_class_is_lifted_and_a_bold_one_is_lowered() -> None:
    for shift in (-2.5, 2.5):
        z, y = _logits(200, 50, shift)
        b = fit_new_class_bias(z, y, [2], torch.ones(len(y)))
        assert abs(b + shift) < 0.8, (shift, b)
        before = float(((z.argmax(1) == y).float()).mean())
        z2 = z.clone()
        z2[:, 2] += b
        assert float(((z2.argmax(1) == y).float()).mean()) > before + 0.05


def test_weights_count_like_training() -> None:
    """Samples weighted 1/p_select: an offset that helps only low-weight samples loses to the heavy ones."""
    z, y = _logits(200, 50, -2.5)
    light = torch.where(y == 2, torch.tensor(0.01), torch.tensor(1.0))
    assert fit_new_class_bias(z, y, [2], light) < fit_new_class_bias(z, y, [2], torch.ones(len(y)))


def test_no_offset_without_evidence() -> None:
    z, y = _logits(200, 2, -2.5)
    assert fit_new_class_bias(z, y, [2], torch.ones(len(y))) == 0.0  # 2 new samples < min_new
    assert fit_new_class_bias(z, y, [], torch.ones(len(y))) == 0.0
    assert fit_new_class_bias(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), [2], torch.zeros(0)) == 0.0


def test_the_offset_never_passes_its_limit() -> None:
    """A new class far below every old one wants more than the limit allows: it gets the limit."""
    z = torch.zeros(8, 3)
    z[:, 2] = -50.0  # the new class is never anywhere near: only its own 4 samples and the old ones pull
    y = torch.tensor([0, 1, 0, 1, 2, 2, 2, 2])
    b = fit_new_class_bias(z, y, [2], torch.ones(8), limit=0.2)
    assert b == 0.2  # pulled up as far as allowed, never past the limit


def test_logit_bias_is_exported_with_the_model(tmp_path) -> None:
    from protocol.model_meta import ModelMeta
    from trainer.evaluate import onnx_session
    from trainer.export import export_onnx
    from trainer.nets import build_model

    torch.manual_seed(0)
    net = build_model("small_cnn", 3, 3).eval()
    wrapped = LogitBias(net, torch.tensor([0.0, 0.0, 1.5]))
    meta = ModelMeta(version="v0002", labels=["a", "b", "c"], width=16, height=16, channels=3,
                     architecture="small_cnn")
    x = torch.rand(4, 3, 16, 16)
    export_onnx(wrapped, meta, tmp_path / "m.onnx", exporter="torchscript", verify_inputs=x)
    sess = onnx_session(tmp_path / "m.onnx")
    out = sess.run([meta.output_name], {meta.input_name: x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(out, (net(x) + torch.tensor([0.0, 0.0, 1.5])).numpy(), atol=1e-4)
    assert wrapped.num_classes == 3
