"""Tiny, seeded synthetic data for the trainer tests: coloured squares that a small CNN learns in a few steps."""
from __future__ import annotations

from pathlib import Path

import io

import numpy as np
from PIL import Image

from trainer.store import IncomingSample, SampleStore

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}


def png(label: str, rng: np.random.Generator, size: int = 16) -> bytes:
    """A noisy square of the class colour on a grey background."""
    img = np.full((size, size, 3), 120, np.int16)
    o = int(rng.integers(0, size // 4))
    img[o:o + size // 2 + 2, o:o + size // 2 + 2] = COLOURS[label]
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, labels: list[str], per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for lab in labels:
        (root / lab).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / lab / f"{i:03d}.png").write_bytes(png(lab, rng))
    return root


def incoming(sample_id: str, truth: str | None, rng: np.random.Generator, device: str = "cam1", seq: int = 0,
             p_select: float = 0.5, image: bytes | None = None) -> IncomingSample:
    return IncomingSample(
        sample_id=sample_id, device=device, seq=seq, msg_id=f"m{sample_id}", ts=0.0, model_version="v0001",
        topk=[("red", 0.5), ("green", 0.3)], uncertainty=0.5, uncertainty_kind="margin", p_select=p_select,
        reason="uncertain", frame_index=seq, width=16, height=16, roi=None, truth=truth, source="test",
        content_type="image/png", image=image if image is not None else png(truth or "red", rng),
    )


def fill_store(store: SampleStore, labels: list[str], n: int, seed: int = 1, start: int = 0) -> list[str]:
    """Add n samples cycling through labels (truth set); returns their ids."""
    rng = np.random.default_rng(seed)
    items = [incoming(f"s{start + i:05d}", labels[i % len(labels)], rng, seq=start + i) for i in range(n)]
    store.add_batch(items)
    return [it.sample_id for it in items]


def bootstrap_state(d: Path, labels: list[str], **options) -> Path:
    """A small_cnn (16x16) trained on ``labels`` colours in ``d/state`` (tests copy it per test); ``options`` go to
    :func:`trainer.bootstrap.bootstrap`."""
    from trainer.bootstrap import bootstrap

    options = {"epochs": 2, **options}
    bootstrap(d / "state", image_folder(d / "imgs", labels, 8), arch="small_cnn", input_size=16, batch_size=8,
              exporter="torchscript", progress=False, replay_size=200, torch_threads=1, **options)
    return d / "state"


def service_config(state: Path, **over):
    """A TrainerConfig for tests: no broker, no HTTP, oracle labels, small fast updates."""
    from protocol.config import load_config
    from trainer.config import TrainerConfig

    base = {"state_dir": str(state), "mqtt.url": "none", "labeler.kind": "oracle", "labeler.api_port": "none",
            "metrics.enabled": False, "update.batch": 16, "update.steps": 5, "strategy.replay_batch_size": 16,
            "strategy.new_batch_size": 16, "update.lr": 0.05, "eval.heldout": 0.25}
    base.update(over)
    return load_config(TrainerConfig, overrides=base)
