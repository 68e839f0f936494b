"""Everything the trainer service can be told, with defaults that run on a fresh machine.

Settings come from a YAML file (``--config``), then ``EDGELOOP_TRAINER__*`` environment variables, then
flags (see :func:`protocol.config.load_config`). Every key is documented here, once;
``edgeloop trainer run --print-config`` shows the effective values.
"""
from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "MqttConfig", "IngestConfig", "LabelerConfig", "UpdateConfig", "EvalConfig", "TrainerConfig", "ENV_PREFIX",
]

ENV_PREFIX = "EDGELOOP_TRAINER__"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class MqttConfig(_Section):
    url: str | None = "mqtt://127.0.0.1:1883"  # broker; None = no ingestion (labels from import/queue only)
    username: str | None = None
    password: str | None = None                 # never printed; prefer password_file or EDGELOOP_TRAINER__MQTT__PASSWORD
    password_file: str | None = None            # first line of this file (mode 0600) is the password
    ca_file: str | None = None                  # TLS: the CA that signed the broker's certificate
    cert_file: str | None = None                # TLS client certificate: its CN is the trainer's identity
    key_file: str | None = None
    topic_prefix: str = "edgeloop/v1"
    keepalive_s: int = 30
    # Stable, so the broker keeps our session (unacked samples) across restarts. None = the certificate's CN
    # (one identity per trainer instance; the edgeloop broker enforces client id = CN), else edgeloop-trainer.
    client_id: str | None = None
    shared_group: str | None = "trainers"       # MQTT 5 shared subscription group; None = plain subscription


class IngestConfig(_Section):
    max_message_bytes: int = 8 * 1024 * 1024    # bigger payloads are rejected ("too_large") before parsing
    max_image_bytes: int = 2 * 1024 * 1024      # per-sample body limit
    batch_max: int = 512                        # at most this many messages per SQLite commit (+ one fsync)
    linger_ms: float = 0.0                      # wait this long for more messages before committing (0 = group commit)
    max_delay_ms: float = 20.0                  # never hold a received message longer than this before committing
    segment_bytes: int = 64 * 1024 * 1024       # image pack files roll over at this size


class LabelerConfig(_Section):
    kind: Literal["oracle", "queue", "import"] = "oracle"
    delay_s: float = 0.0                        # oracle: a sample's truth becomes its label this long after arrival
    noise: float = 0.0                          # oracle: probability that a label is flipped to another known class
    seed: int = 0                               # oracle: label-noise seed (noise is a hash of sample id + seed)
    csv: str | None = None                      # import: CSV file of sample_id,label (re-read when it changes)
    api_host: str = "127.0.0.1"                 # HTTP label API (always on for kind=queue; port 0 = pick a free one)
    api_port: int | None = 8765                 # None = no HTTP API (oracle/import)


class UpdateConfig(_Section):
    strategy: str = "iw-er"                     # naive | er | iw-er | der++ | ewc | mer (trainer/strategies); its settings: `strategy:`
    batch: int = 32                             # B: update after this many new labelled (training) samples ...
    wait_s: float = 30.0                        # T: ... or after this long with at least min_batch waiting
    min_batch: int = 1
    steps: int = 20                             # K: optimiser steps per update (new samples mixed with replay)
    optimizer: Literal["sgd", "adam"] = "sgd"   # sgd = SGD with momentum 0.9
    lr: float = 0.01
    replay_size: int = 2000                     # replay memory capacity (samples)
    replay: Literal["reservoir", "class_balanced"] = "class_balanced"
    seed: int = 0                               # torch, the strategy's minibatch draws and the replay memory


class EvalConfig(_Section):
    heldout: float = 0.2                        # fraction of labelled samples kept for evaluation (class-stratified)
    max_regression: float = 0.02                # promote unless accuracy/macro-F1 drop more than this vs the deployed version
    recent: int = 60                            # the latest N held-out uploads: "what the cameras see now"
    min_recent: int = 20                        # below this many recent held-out samples, judge on the whole set only
    max_forgetting: float = 0.10                # with a recent slice: largest allowed drop on the whole held-out set
    min_heldout: int = 1                        # with fewer held-out samples, the gate cannot judge: promote only if --force
    every: int = 1                              # evaluate (and maybe promote) after every N-th update


class TrainerConfig(_Section):
    state_dir: str = "./edgeloop-trainer"       # samples, checkpoint, registry, exported models
    model_id: str = "edgeloop"                  # model id in the registry and in manifests
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    labeler: LabelerConfig = msgspec.field(default_factory=LabelerConfig)
    update: UpdateConfig = msgspec.field(default_factory=UpdateConfig)
    eval: EvalConfig = msgspec.field(default_factory=EvalConfig)
    # The settings of the strategy named by update.strategy, defined (with their defaults and meaning) beside
    # it in trainer/strategies/<name>.py, e.g. iw-er's w_max, der++'s alpha/beta, ewc's ewc_lambda. A key
    # that strategy does not have is an error naming it; after loading, every setting is here with its value.
    strategy: dict[str, Any] = msgspec.field(default_factory=dict)
    poll_s: float = 0.2                         # service loop tick (labeller poll, buffer check)
    torch_threads: int = 1                      # torch intra-op threads (the machine is shared with edges)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        from .strategies import strategy_class  # torch: only when a trainer config is built

        try:
            cls = strategy_class(self.update.strategy)
        except ValueError as e:
            raise ValueError(f"update.strategy: {e}") from None
        try:
            self.strategy = cls.settings(self.strategy).as_dict()
        except ValueError as e:
            raise ValueError(f"strategy.{e}") from None
