"""Fixtures for rollout tests: signing keys, a few real ONNX models (good, NaN, untrained), a controller
and a fleet of in-process light devices (real updater code, real mosquitto)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for model_factory

# Training + exporting the test models costs ~a minute of CPU; keep them across runs unless told otherwise.
os.environ.setdefault("EDGELOOP_MODEL_CACHE", str(Path.home() / ".cache" / "edgeloop-test-models"))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good1 (v0001, provisioned), good2 (v0002), nan (v0003: NaN outputs), shape (v0004: metadata says
    32x32, graph is 28x28), untrained (v0005: disagrees with good2)."""
    from model_factory import make_broken_model, make_onnx_model

    d = tmp_path_factory.mktemp("models")
    return {
        "good1": make_onnx_model(d / "good1.onnx", version="v0001"),
        "good2": make_onnx_model(d / "good2.onnx", version="v0002", seed=1, train_steps=40),
        "nan": make_broken_model(d / "nan.onnx", "nan", version="v0003"),
        "shape": make_broken_model(d / "shape.onnx", "wrong_input_size", version="v0004"),
        "untrained": make_onnx_model(d / "untrained.onnx", version="v0005", train_steps=0, seed=7),
    }


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from deploy.keys import generate

    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate(d)
    other_priv, other_pub = generate(d, "other")
    return {"priv": priv, "pub": pub, "other_priv": other_priv, "other_pub": other_pub}


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def rollout_env(mosquitto_broker, topic_prefix, models, keys, tmp_path) -> Iterator[Callable[..., tuple]]:
    """Factory: ``make(n_devices, fps=10)`` -> (controller, light fleet); all stopped at teardown."""
    from deploy.controller import Controller
    from deploy.lightdevice import LightFleet

    made: list = []

    def make(n: int = 20, fps: float = 10.0, **kw) -> tuple:
        lf = LightFleet(n, mosquitto_broker.url, tmp_path / "devs", [str(keys["pub"])], models["good1"],
                        prefix=topic_prefix, fps=fps, **kw).start()
        ctl = Controller(mosquitto_broker.url, keys["priv"], tmp_path / "ctl", prefix=topic_prefix,
                         tick_s=0.05).start()
        made.extend([lf, ctl])
        wait_for(lambda: len([d for d in ctl.fleet.devices() if d.online]) == n, 20, "devices online")
        return ctl, lf

    yield make
    for obj in reversed(made):
        try:
            obj.stop()
        except Exception:
            pass
