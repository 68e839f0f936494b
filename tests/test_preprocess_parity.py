"""Train/serve parity: the trainer prepares uploaded crops the way the edge prepares live frames.

The trainer cannot import the edge (and uses torch, the edge OpenCV), so the two implementations are kept
in step by this test: on simulated frames, the edge's model input and the trainer's training input for
the same crop must agree to a few grey levels on average.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.model import EdgeModel
from edge.sources.sim import open_sim
from tests.model_factory import make_onnx_model
from trainer.images import InputFormat, to_input


@pytest.mark.parametrize("arch,url,labels", [
    ("convnet", "sim:digits?seed=4", [str(i) for i in range(10)]),
    ("small_cnn", "sim:parts?seed=4", ["ok", "scratch", "dent", "stain"]),
])
def test_edge_and_trainer_prepare_the_same_input(tmp_path, arch, url, labels) -> None:
    src = open_sim(url)
    src.open()
    roi = list(src.roi)
    model = EdgeModel.load(make_onnx_model(tmp_path / f"{arch}.onnx", arch=arch, labels=labels, roi=roi,
                                           train_steps=0, data="random"))
    meta = model.meta
    fmt = InputFormat(meta.width, meta.height, meta.channels, meta.color_order)
    diffs = []
    for _ in range(30):
        frame = src.read().image
        x, y, w, h = roi
        crop_rgb = np.ascontiguousarray(frame[y:y + h, x:x + w, ::-1])
        trainer_x = to_input(torch.from_numpy(crop_rgb).permute(2, 0, 1), fmt).numpy()
        edge_x = model.preprocess(frame)[0]
        # Undo the edge's normalisation, x = (pixel * scale - mean) / std, to compare pixels in [0, 1].
        mean = np.asarray(meta.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(meta.std, np.float32).reshape(-1, 1, 1)
        edge_pixels = (edge_x * std + mean) / meta.scale / 255.0
        diffs.append(float(np.abs(edge_pixels - trainer_x).mean()) * 255.0)
    assert np.mean(diffs) < 5.0, f"edge and trainer inputs differ by {np.mean(diffs):.2f} grey levels on average"
