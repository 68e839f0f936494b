"""Everything the trainer service can be told, with defaults that run on a fresh machine.

Settings come from a YAML file (``--config``), then ``EDGELOOP_TRAINER__*`` environment variables, then
flags (see :func:`protocol.config.load_config`). Every key is documented here, once;
``edgeloop trainer run --print-config`` shows the effective values.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "MqttConfig", "IngestConfig", "LabelerConfig", "UpdateConfig", "EvalConfig", "HintsConfig", "RetentionConfig",
    "MetricsConfig", "TrainerConfig", "ENV_PREFIX", "LABELLERS",
]

ENV_PREFIX = "EDGELOOP_TRAINER__"
LABELLERS = ("oracle", "queue", "import")
MIB = 1024 * 1024

# Ranges every numeric key is checked against at load (the error names the key, the value and the range).
Port = Annotated[int, Meta(ge=0, le=65535)]
Seed = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Seconds = Annotated[float, Meta(ge=0.0, le=7 * 86400.0)]
Millis = Annotated[float, Meta(ge=0.0, le=60_000.0)]
Count = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Size = Annotated[int, Meta(ge=0, le=2**31 - 1)]


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
    keepalive_s: Annotated[int, Meta(ge=5, le=65535)] = 30
    # Stable, so the broker keeps our session (unacked samples) across restarts. None = the certificate's CN
    # (one identity per trainer instance; the edgeloop broker enforces client id = CN), else edgeloop-trainer.
    client_id: str | None = None
    # MQTT 5 shared subscription group ($share/<group>/...). None (default) = a plain subscription. It does
    # not let several trainers share one stream: each trainer owns its state directory (a second one on the
    # same state is refused), and two trainers in one group would each see only part of the samples.
    shared_group: str | None = None


class IngestConfig(_Section):
    max_message_bytes: Annotated[int, Meta(ge=1024, le=256 * MIB)] = 8 * MIB  # bigger payloads: "too_large"
    max_image_bytes: Annotated[int, Meta(ge=1024, le=64 * MIB)] = 2 * MIB     # per-sample body limit
    # Largest width or height of an uploaded image, read from its PNG/JPEG header before anything decodes it
    # ("image_too_large"). The limit per axis is the larger of this and the model's ROI far edge (a full frame
    # always contains the ROI); an image must also be the size its sample declares (the frame, or the ROI crop).
    max_image_side: Annotated[int, Meta(ge=16, le=65535)] = 4096
    batch_max: Annotated[int, Meta(ge=1, le=100_000)] = 512  # at most this many messages per SQLite commit (+ one fsync)
    linger_ms: Millis = 0.0                     # wait this long for more messages before committing (0 = group commit)
    max_delay_ms: Millis = 20.0                 # never hold a received message longer than this before committing
    segment_bytes: Annotated[int, Meta(ge=64 * 1024, le=2**40)] = 64 * MIB  # image pack files roll over at this size
    # Received messages waiting for the writer. QoS 1 never overflows it: the broker sends at most this many
    # unacknowledged (MQTT 5 receive maximum; 3.1.1 brokers have their own in-flight limit, mosquitto 20).
    # QoS 0 samples beyond it are dropped and counted ("queue_full").
    queue_max: Annotated[int, Meta(ge=1, le=65535)] = 2048
    queue_max_bytes: Annotated[int, Meta(ge=MIB, le=2**40)] = 256 * MIB
    # Per-device token bucket: a device may send device_burst samples at once and device_rate per second on
    # average; more is rejected ("quota"), acknowledged (so the broker does not redeliver it) and counted per
    # device. The defaults let a camera with the edge's default budgets (5000 a day) empty a full day's outbox
    # at once. None = no limit.
    device_rate: Annotated[float, Meta(gt=0.0, le=1e6)] | None = 1.0
    device_burst: Count = 10_000


class LabelerConfig(_Section):
    # Where labels come from. queue (default) = people, through the HTTP label API, the console or
    # `edgeloop label`: what a real line needs, since real frames carry no ground truth. oracle = the ground
    # truth simulated cameras attach (the demo, benchmarks; real frames have none: they are counted as skipped
    # and wait unlabelled). import = a CSV file. Not "oracle by default": a camera could then label its own
    # samples, and a real deployment would silently never learn.
    kind: Literal["oracle", "queue", "import"] = "queue"
    delay_s: Seconds = 0.0                      # oracle: a sample's truth becomes its label this long after arrival
    noise: Fraction = 0.0                       # oracle: probability that a label is flipped to another known class
    seed: Seed = 0                              # oracle: label-noise seed (noise is a hash of sample id + seed)
    csv: str | None = None                      # import: CSV file of sample_id,label (re-read when it changes)
    api_host: str = "127.0.0.1"                 # HTTP label API (always on for kind=queue; port 0 = pick a free one)
    api_port: Port | None = 8765                # None = no HTTP API (oracle/import)


class UpdateConfig(_Section):
    strategy: str = "iw-er"                     # naive | er | iw-er | der++ | ewc | mer (trainer/strategies); its settings: `strategy:`
    batch: Count = 32                           # B: update after this many new labelled (training) samples ...
    wait_s: Seconds = 30.0                      # T: ... or after this long with at least min_batch waiting
    min_batch: Count = 1
    steps: Annotated[int, Meta(ge=1, le=100_000)] = 20  # K: optimiser steps per update (new samples mixed with replay)
    optimizer: Literal["sgd", "adam"] = "sgd"   # sgd = SGD with momentum 0.9
    lr: Annotated[float, Meta(gt=0.0, le=10.0)] = 0.01
    # While it waits for the next batch, the trainer may spend its idle time on replay: after each update, up to
    # rehearse_rounds rounds of rehearse_steps replay-only optimiser steps (Strategy.rehearse: the memory,
    # class-balanced, so a new class's few samples are a fair share of every step), each round checkpointed and
    # gated like an update. 0 = off: the CPU stays free between batches. Numbers: README, Adaptation #39.
    rehearse_steps: Annotated[int, Meta(ge=0, le=100_000)] = 0
    rehearse_rounds: Annotated[int, Meta(ge=1, le=10_000)] = 3
    replay_size: Size = 2000                    # replay memory capacity (samples)
    replay: Literal["reservoir", "class_balanced"] = "class_balanced"
    seed: Seed = 0                              # torch, the strategy's minibatch draws and the replay memory


class EvalConfig(_Section):
    heldout: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.2  # fraction of labelled samples kept for evaluation (class-stratified)
    max_regression: Fraction = 0.02             # promote unless accuracy/macro-F1 drop more than this vs the deployed version
    recent: Size = 60                           # the latest N held-out uploads: "what the cameras see now"
    min_recent: Size = 20                       # below this many recent held-out samples, judge on the whole set only
    max_forgetting: Fraction = 0.10             # with a recent slice: largest allowed drop on the whole held-out set
    # A candidate more than max_regression behind on the recent slice is refused only if a sign test on the samples
    # where it and the deployed version disagree says it is worse at level paired_alpha: "always", or only for a
    # candidate that knows a class in the recent slice that the deployed version does not ("new-class"); "off":
    # the allowance alone
    paired: Literal["off", "new-class", "always"] = "off"
    paired_alpha: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.05
    min_heldout: Size = 1                       # with fewer held-out samples, the gate cannot judge: promote only if --force
    every: Count = 1                            # evaluate (and maybe promote) after every N-th update
    # The gate judges on the newest max_heldout held-out uploads (plus the bootstrap slice): a bounded set, whose
    # images are decoded once and whose deployed-version predictions are computed once per version.
    max_heldout: Count = 5000
    # Judge the recent slice by its accuracy weighted min(1/p_select, w_max): the stream's accuracy, estimated from
    # uploads chosen for uncertainty (and for a hinted class), instead of the accuracy on those hard frames alone
    weighted: bool = False


class HintsConfig(_Section):
    """The selection hint (trainer/hints.py): when the cameras miss most labels of a class, ask them for more
    frames of the predicted classes it hides in, from an upload budget of its own. On by default: it spends the
    cameras' hour and day budgets sooner on where a missed class hides, never beyond them (Adaptation #47)."""

    enabled: bool = True
    window_s: Annotated[float, Meta(gt=0.0, le=86400.0)] = 120.0   # labelled uploads of the last window_s judge
    min_labels: Count = 4                       # a class needs this many labels in the window before it can ask
    min_miss: Fraction = 0.5                    # ... and the cameras must have predicted at least this share wrong
    min_share: Fraction = 0.2                   # boost a predicted label whose frames are >= this share the class
    boost: Annotated[float, Meta(ge=1.0, le=1000.0)] = 10.0        # multiplier on those frames' probability
    budget_per_minute: Annotated[int, Meta(ge=0, le=100_000)] = 40  # extra uploads per camera and minute
    ttl_s: Annotated[float, Meta(gt=0.0, le=86400.0)] = 60.0       # a hint nobody renews lapses after this
    release: Fraction = 0.5                     # a boost in force holds down to this share of min_miss / min_share


class RetentionConfig(_Section):
    """How much the sample store keeps. Only *unlabelled* samples are ever deleted, oldest first: labelled
    ones (people's work, the training and held-out sets) stay, whatever the limits (a warning says when they
    alone exceed them). The replay memory holds its own copies, so it references no store row."""

    max_samples: Count | None = 1_000_000        # rows in the store
    max_bytes: Annotated[int, Meta(ge=MIB, le=2**50)] | None = 20 * 1024 * MIB  # image bytes in the pack files
    max_age_days: Annotated[float, Meta(gt=0.0, le=36_500.0)] | None = 30.0   # unlabelled samples older than this go
    every_s: Annotated[float, Meta(ge=1.0, le=86_400.0)] = 60.0   # how often the limits are enforced
    # A sealed pack file whose live bytes fall below this fraction is compacted (its live images copied to
    # the current pack, then the file deleted), so deleting rows gives the disk space back.
    compact_below: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.5


class MetricsConfig(_Section):
    """Prometheus ``/metrics`` and ``/healthz`` (no authentication: loopback unless told otherwise)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9852                           # 0 = any free port (logged)
    ingest_stall_s: Annotated[float, Meta(gt=0.0, le=86_400.0)] = 60.0  # /healthz fails when a received sample waits longer unacknowledged
    loop_stall_s: Annotated[float, Meta(gt=0.0, le=86_400.0)] = 900.0   # ... or when the update loop has not come round this long


class TrainerConfig(_Section):
    state_dir: str = "./edgeloop-trainer"       # samples, checkpoint, registry, exported models
    model_id: str = "edgeloop"                  # model id in the registry and in manifests
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    labeler: LabelerConfig = msgspec.field(default_factory=LabelerConfig)
    update: UpdateConfig = msgspec.field(default_factory=UpdateConfig)
    eval: EvalConfig = msgspec.field(default_factory=EvalConfig)
    hints: HintsConfig = msgspec.field(default_factory=HintsConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    # The settings of the strategy named by update.strategy, defined (with their defaults and meaning) beside
    # it in trainer/strategies/<name>.py, e.g. iw-er's w_max, der++'s alpha/beta, ewc's ewc_lambda. A key
    # that strategy does not have is an error naming it; after loading, every setting is here with its value.
    strategy: dict[str, Any] = msgspec.field(default_factory=dict)
    poll_s: Annotated[float, Meta(gt=0.0, le=60.0)] = 0.2   # service loop tick (labeller poll, buffer check)
    torch_threads: Annotated[int, Meta(ge=1, le=256)] = 1   # torch intra-op threads (the machine is shared with edges)
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
