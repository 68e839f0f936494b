"""Everything an edge node can be told, with defaults that run on a fresh machine.

Settings come from a YAML file (``--config``), then ``EDGELOOP_EDGE__*`` environment variables (``__``
between levels, e.g. ``EDGELOOP_EDGE__SAMPLER__P_MIN=0.02``), then flags. The sampler, dedup, drift,
updater, predictions (verdicts), metrics and homeassistant sections are the components' own config
classes, so each default is written once, beside the code that uses it. ``edgeloop edge --print-config``
shows the effective values.
"""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.drift import DriftConfig
from edge.homeassistant import HomeAssistantConfig
from edge.metrics import MetricsConfig
from edge.model import CalibrationConfig
from edge.sampler import SamplerConfig
from edge.updater import UpdaterLimits
from edge.verdicts import PredictionsConfig


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class MqttConfig(_Section):
    url: str = "mqtt://127.0.0.1:1883"      # mqtt://host[:port], mqtts://… for TLS
    username: str | None = None
    password: str | None = None              # never printed; prefer password_file or EDGELOOP_EDGE__MQTT__PASSWORD
    password_file: str | None = None         # first line of this file (mode 0600) is the password
    ca_file: str | None = None               # TLS: CA bundle that signed the broker's certificate
    cert_file: str | None = None             # TLS client certificate (mutual TLS); its CN must be device_id
    key_file: str | None = None
    topic_prefix: str = "edgeloop/v1"
    keepalive_s: Annotated[int, Meta(ge=5, le=65535)] = 30
    window: Annotated[int, Meta(ge=1, le=65535)] = 32                         # samples awaiting PUBACK at once


class ModelConfig(_Section):
    path: str | None = None                  # the provisioned ONNX model (used until a rollout installs another)
    threads: Annotated[int, Meta(ge=1, le=256)] = 1                         # ONNX Runtime intra-op threads
    batch: Annotated[int, Meta(ge=1, le=1024)] = 1                           # micro-batch up to this many queued frames (throughput over latency)
    roi: list[int] | None = None             # x, y, w, h crop in frame pixels; overrides the model's ROI


class SourceConfig(_Section):
    url: str = "sim:parts"                   # 0 | clip.mp4[?loop=1] | rtsp://… | sim:parts?… | sim:digits?…
    target_fps: Annotated[float, Meta(gt=0, le=10_000)] | None = None          # cap the frame rate; None = as fast as the source gives
    stall_timeout_s: Annotated[float, Meta(gt=0, le=86_400)] = 5.0             # no frame this long -> reopen the source (with backoff)
    queue: Annotated[int, Meta(ge=1, le=1024)] = 2                           # frames waiting for inference; the oldest is dropped beyond


class UploadConfig(_Section):
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: Annotated[int, Meta(ge=1, le=100)] = 90
    crop_roi: bool = True                    # upload the model's ROI crop rather than the full frame
    wait_for_trainer: bool = True            # hold samples in the outbox until a retained trainer state is on the broker


class OutboxConfig(_Section):
    max_bytes: Annotated[int, Meta(ge=4096, le=2**50)] = 256 * 1024 * 1024       # disk bound of the spool
    policy: Literal["drop_oldest", "drop_lowest_priority", "reject_new"] = "drop_oldest"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"   # FULL survives power loss, NORMAL only kill -9
    retry_s: Annotated[float, Meta(gt=0, le=86_400)] = 5.0  # disk full: seconds between attempts to spool again


class UpdaterConfig(_Section):
    enabled: bool = True                     # follow signed manifests on fleet/{fleet}/manifest
    trusted_keys: list[str] = []             # public key PEM files whose signatures this device accepts
    min_manifest_seq: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0                # provisioning floor: never accept an older manifest, even after a reset
    limits: UpdaterLimits = msgspec.field(default_factory=UpdaterLimits)


class EdgeConfig(_Section):
    device_id: str = "edge-1"
    fleet: str = "default"
    state_dir: str = "./edgeloop-edge"       # outbox, models, counters
    uncertainty: Literal["least_confidence", "margin", "entropy"] = "margin"
    source: SourceConfig = msgspec.field(default_factory=SourceConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    sampler: SamplerConfig = msgspec.field(default_factory=SamplerConfig)
    drift: DriftConfig = msgspec.field(default_factory=DriftConfig)
    calibration: CalibrationConfig = msgspec.field(default_factory=CalibrationConfig)  # test-time input calibration
    upload: UploadConfig = msgspec.field(default_factory=UploadConfig)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    updater: UpdaterConfig = msgspec.field(default_factory=UpdaterConfig)
    predictions: PredictionsConfig = msgspec.field(default_factory=PredictionsConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    homeassistant: HomeAssistantConfig = msgspec.field(default_factory=HomeAssistantConfig)
    stats_interval_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 10.0
    accuracy_window: Annotated[int, Meta(ge=1, le=1_000_000)] = 200               # frames in the rolling accuracy vs. ground truth (sim sources)
    max_frames: Annotated[int, Meta(ge=0)] | None = None            # stop after this many frames (tests, benchmarks)
    log_level: str = "INFO"
