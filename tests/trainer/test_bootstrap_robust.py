"""The bootstrap notices divergence and collapse, retries at a safer learning rate, and fails loudly rather than
register a model that predicts one class or guesses; augmentation keeps labels and ranges."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.bootstrap as tb
from trainer.augment import Augment, augment, dihedral, parse_augment
from trainer.bootstrap import BootstrapDiverged, bootstrap, collapse_reason
from trainer.cli import main
from trainer.registry import Registry

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import image_folder  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_collapse_reason_on_hand_made_predictions() -> None:
    y = np.array([0, 1, 2, 3] * 25)
    assert collapse_reason(y, y, 4) is None
    one = collapse_reason(np.full(100, 2), y, 4)
    assert one is not None and "one class" in one
    rng = np.random.default_rng(0)
    chance = collapse_reason(rng.integers(0, 4, 100), y, 4)
    assert chance is not None and "chance" in chance
    # a majority-heavy truth (80 % one class): always answering it is dead too, by per-class recall
    skew = np.array([0] * 80 + [1] * 20)
    assert "recognises one class at most" in (collapse_reason(np.zeros(100, int), skew, 2) or "")
    # a 90/10 truth answered 91 % right: not dead (the minority class is recognised)
    skew = np.array([0] * 90 + [1] * 10)
    assert collapse_reason(np.r_[np.zeros(90, int), np.ones(1, int), np.zeros(9, int)], skew, 2) is None
    assert collapse_reason(np.zeros(10, int), np.arange(10) % 2, 2) is None  # too few to judge


def test_nan_loss_is_retried_then_fails_loudly_and_registers_nothing(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", ["red", "green", "blue"], 20)
    with pytest.raises(BootstrapDiverged) as exc:
        bootstrap(tmp_path / "state", folder, arch="small_cnn", input_size=16, epochs=2, batch_size=8, lr=1e6,
                  exporter="torchscript", progress=False, torch_threads=1)
    err = exc.value
    assert len(err.attempts) == 3 and all(a.reason for a in err.attempts)
    assert [round(a.lr / 1e6, 3) for a in err.attempts] == [1.0, 0.333, 0.1]
    assert "attempt 3" in str(err) and "no model was registered" in str(err)
    assert not (tmp_path / "state" / "registry.sqlite").exists()


def test_a_diverged_attempt_is_retried_at_a_safer_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tb, "RETRY_LR_FACTORS", (1.0, 1e-9))  # attempt 2 runs at lr 1e-3
    folder = image_folder(tmp_path / "imgs", ["red", "green", "blue"], 20)
    res = bootstrap(tmp_path / "state", folder, arch="small_cnn", input_size=16, epochs=6, batch_size=8, lr=1e6,
                    exporter="torchscript", progress=False, torch_threads=1)
    att = res.extra["attempts"]
    assert len(att) == 2 and att[0]["reason"] and att[1]["reason"] is None
    assert res.metrics["accuracy"] > 0.9
    with Registry(tmp_path / "state") as reg:
        assert reg.get("v0001").status == "promoted"


def test_unlearnable_labels_are_refused_not_registered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # images whose folder says nothing about them: every class is the same colour mix
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    image_folder(tmp_path / "src", ["red", "green"], 75)
    files = sorted((tmp_path / "src").rglob("*.png"))
    for i, f in enumerate(rng.permutation(len(files))):
        d = root / ["a", "b"][i % 2]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(files[f].read_bytes())
    rc = main(["bootstrap", str(root), "--arch", "small_cnn", "--input-size", "16", "--epochs", "3", "--held-out", "0.3",
               "--exporter", "torchscript", "--no-progress", "--state-dir", str(tmp_path / "state"), "--threads", "1",
               "--retries", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bootstrap failed" in err and "attempt 2" in err and ("chance" in err or "one class" in err)


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = torch.rand(16, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = augment(x, Augment(), g1), augment(x, Augment(), g2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    gray = augment(torch.rand(4, 1, 28, 28), Augment(), torch.Generator().manual_seed(0))
    assert gray.shape == (4, 1, 28, 28)
    assert parse_augment("none") is None and parse_augment(True) == Augment()
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_augment("mixup")


def test_dihedral_gives_each_sample_one_of_the_eight_symmetries_of_itself() -> None:
    """Quarter turns and mirror images only: exact pixel permutations, all eight used, seeded, input untouched."""
    x = torch.rand(400, 3, 8, 8)
    keep = x.clone()
    out = dihedral(x, torch.Generator().manual_seed(3))
    assert torch.equal(x, keep) and out.shape == x.shape
    seen = set()
    for i in range(len(x)):
        syms = [torch.rot90(x[i], k, dims=(1, 2)) for k in range(4)]
        syms += [torch.flip(s, dims=(2,)) for s in syms]
        hits = [j for j, s in enumerate(syms) if torch.equal(out[i], s)]
        assert len(hits) == 1, f"sample {i} is not a symmetry of its input"
        seen.add(hits[0])
    assert seen == set(range(8))
    assert torch.equal(out, dihedral(x, torch.Generator().manual_seed(3)))
    assert parse_augment("dihedral") == Augment(photometric=False, geometric=False, dihedral=True)
    assert torch.equal(augment(x, parse_augment("dihedral"), torch.Generator().manual_seed(3)), out)


def test_bootstrap_diverged_survives_pickling() -> None:
    """A worker process reports the failure to its parent (bench/jobs.py): it must cross a pickle."""
    import pickle

    from trainer.bootstrap import Attempt

    e = BootstrapDiverged([Attempt(1e-3, 0, 3, None, "loss is nan at epoch 1", 0.5)], 4)
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and back.attempts == e.attempts
