"""Bootstrap from tiny IDX files and an ImageFolder: a registered, promoted ONNX v0001 with the right metadata."""
from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from trainer.bootstrap import bootstrap
from trainer.cli import main
from trainer.datasets import default_mnist_paths, read_idx
from trainer.export import read_meta
from trainer.registry import Registry

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import image_folder  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = 0x08
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_cli_bootstrap_from_idx_then_status_and_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = default_mnist_paths()
    x, y = read_idx(images), read_idx(labels)
    keep = np.flatnonzero(y < 3)[:48]  # three digits, 48 images: seconds, not minutes
    data = tmp_path / "idx"
    data.mkdir()
    _write_idx(data / "tiny-images-idx3-ubyte.gz", x[keep])
    _write_idx(data / "tiny-labels-idx1-ubyte.gz", y[keep])
    state = tmp_path / "state"
    rc = main(["bootstrap", str(data), "--arch", "convnet", "--epochs", "1", "--batch-size", "16",
               "--labels", "zero,one,two", "--held-out", "0.25", "--exporter", "torchscript", "--no-progress",
               "--state-dir", str(state), "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("v0001: accuracy") and "macro-F1" in out
    with Registry(state) as reg:
        rec = reg.get("v0001")
        assert rec.status == "promoted" and rec.labels == ["zero", "one", "two"] and rec.arch == "convnet"
    meta = read_meta(rec.path)
    assert (meta.width, meta.height, meta.channels, meta.color_order) == (28, 28, 1, "GRAY")
    assert meta.labels == ["zero", "one", "two"] and "accuracy" in meta.metrics
    sess = ort.InferenceSession(str(rec.path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {meta.input_name: np.zeros((2, 1, 28, 28), np.float32)})[0].shape == (2, 3)

    assert main(["versions", "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == "v0001"
    assert main(["status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "promoted   v0001" in out
    assert "replay     36 of 2000 rows (class_balanced), logits stored for 36 (distillation targets)" in out  # iw-er distils
    # an existing state is never silently replaced
    assert main(["bootstrap", str(data), "--state-dir", str(state), "--no-progress"]) == 2
    assert "already holds a trainer state" in capsys.readouterr().err


def test_cli_bootstrap_reads_the_trainers_strategy_from_its_config(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The memory stores logits only for a strategy that distils: `--config` is the file `trainer run` will read
    (a key that strategy does not have is refused before any training, naming the key)."""
    folder = image_folder(tmp_path / "imgs", ["red", "green"], 6)
    common = ["--arch", "small_cnn", "--input-size", "16", "--epochs", "1", "--batch-size", "4", "--exporter",
              "torchscript", "--no-progress", "--threads", "1"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("update:\n  strategy: er\nstrategy:\n  distill: 0.3\n")  # er has no distill
    assert main(["bootstrap", str(folder), "--config", str(bad), "--state-dir", str(tmp_path / "s0"), *common]) == 2
    assert "distill" in capsys.readouterr().err and not (tmp_path / "s0").exists()
    cfg = tmp_path / "trainer.yaml"
    cfg.write_text("strategy:\n  distill: 0\n")  # iw-er without distillation
    state = tmp_path / "state"
    assert main(["bootstrap", str(folder), "--config", str(cfg), "--state-dir", str(state), *common]) == 0
    capsys.readouterr()
    assert main(["status", "--state-dir", str(state)]) == 0
    assert "replay     10 of 2000 rows (class_balanced), no logits stored" in capsys.readouterr().out


def test_bootstrap_from_image_folder_with_roi(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", ["red", "green"], 6)
    res = bootstrap(tmp_path / "state", folder, arch="small_cnn", input_size=16, roi=(2, 2, 12, 12), epochs=1,
                    batch_size=4, exporter="torchscript", progress=False, torch_threads=1)
    assert res.version == "v0001" and res.labels == ["green", "red"]
    meta = read_meta(res.path)
    assert meta.roi == [2, 2, 12, 12] and (meta.width, meta.channels, meta.color_order) == (16, 3, "RGB")
    assert res.train_size + res.heldout_size == 12 and res.heldout_size == 2  # round(0.2 * 6) per class


def test_sim_sources_are_rendered_by_the_demo_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bootstrap", "sim:parts", "--state-dir", str(tmp_path), "--no-progress"]) == 2
    assert "edgeloop demo" in capsys.readouterr().err


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("bootstrap", "run", "status", "versions"):
        assert cmd in out


def test_bootstrap_offers_every_architecture_the_trainer_can_build() -> None:
    """The CLI lists its choices literally (it does not import torch to print help); they must not fall behind."""
    from trainer.cli import build_parser
    from trainer.nets import ARCH_INPUT, BUILDERS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    arch = next(a for a in sub.choices["bootstrap"]._actions if "--arch" in a.option_strings)  # noqa: SLF001
    assert sorted(arch.choices) == sorted(ARCH_INPUT) == sorted(BUILDERS)
