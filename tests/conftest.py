"""Shared pytest fixtures: real brokers for integration tests, and per-test topic prefixes.

Brokers are module-scoped (starting mosquitto costs ~30 ms, amqtt ~60 ms, but there are many
tests); tests stay independent by publishing only under their own ``topic_prefix``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from deploy.broker import Broker, find_mosquitto, start_broker


@pytest.fixture(scope="module")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real mosquitto (MQTT 5) on a free port, config and log in a tmp dir."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); CI installs it")
    workdir = tmp_path_factory.mktemp("mosquitto")
    with start_broker(kind="mosquitto", workdir=workdir) as b:
        yield b


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[Broker]:
    """The embedded pure-Python broker (MQTT 3.1.1) in a background thread."""
    pytest.importorskip("amqtt", reason="amqtt not installed (pip install 'edgeloop[deploy]')")
    with start_broker(kind="amqtt") as b:
        yield b


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each test runs against both brokers; for tests that need nothing beyond MQTT 3.1.1."""
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix unique to this test, so tests sharing a broker never see each other's messages."""
    return f"test/{uuid.uuid4().hex[:12]}"
