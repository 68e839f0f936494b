"""Home Assistant MQTT discovery for one camera (optional, ``homeassistant.enabled``).

Home Assistant creates entities from retained JSON configs on
``<prefix>/<component>/<object_id>/config`` (prefix ``homeassistant`` by default; object ids and node ids
are ``[a-zA-Z0-9_-]``, and Home Assistant's advice is object id = the entity's ``unique_id``). Each camera
announces one device with four entities that read the device's own plain-JSON topics, so nothing extra is
published per frame:

* ``binary_sensor`` Online - ``dev/{id}/state`` (``online``/``offline``; the MQTT Will makes it fall);
* ``sensor`` Last verdict - ``dev/{id}/predictions`` label, every verdict field as attributes;
* ``sensor`` Defect rate (%) - ``dev/{id}/stats`` ``defect_rate`` over the last stats interval;
* ``sensor`` Model version - the retained ``dev/{id}/birth``.

The configs are published retained on every connect. To remove a camera from Home Assistant, publish an
empty retained message to each config topic (``discovery_topics`` lists them).
"""
from __future__ import annotations

import json
import re

import msgspec

from protocol.topics import Topics

__all__ = ["HomeAssistantConfig", "discovery_messages", "discovery_topics"]


class HomeAssistantConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False                    # publish retained discovery configs on every connect
    prefix: str = "homeassistant"            # Home Assistant's discovery prefix


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _entities(device_id: str, topics: Topics) -> list[tuple[str, str, dict]]:
    state = topics.state(device_id)
    available = {"topic": state, "value_template": "{{ value_json.state }}",
                 "payload_available": "online", "payload_not_available": "offline"}
    return [
        ("binary_sensor", "online", {
            "name": "Online", "device_class": "connectivity", "state_topic": state,
            "value_template": "{{ value_json.state }}", "payload_on": "online", "payload_off": "offline"}),
        ("sensor", "verdict", {
            "name": "Last verdict", "icon": "mdi:eye-check", "state_topic": topics.predictions(device_id),
            "value_template": "{{ value_json.label }}", "json_attributes_topic": topics.predictions(device_id),
            "availability": [available]}),
        ("sensor", "defect_rate", {
            "name": "Defect rate", "icon": "mdi:alert-decagram", "unit_of_measurement": "%",
            "state_class": "measurement", "state_topic": topics.stats(device_id),
            "value_template": "{{ ((value_json.defect_rate or 0) * 100) | round(2) }}",
            "availability": [available]}),
        ("sensor", "model_version", {
            "name": "Model version", "icon": "mdi:brain", "entity_category": "diagnostic",
            "state_topic": topics.birth(device_id), "value_template": "{{ value_json.model_version }}"}),
    ]


def discovery_messages(device_id: str, topics: Topics, prefix: str = "homeassistant",
                       software: str = "edgeloop") -> list[tuple[str, bytes]]:
    """(topic, payload) of every discovery config for this camera; publish each retained, QoS 1."""
    node = _slug(device_id)
    device = {"identifiers": [f"edgeloop_{node}"], "name": f"edgeloop {device_id}", "manufacturer": "edgeloop",
              "model": "edge camera", "sw_version": software}
    out = []
    for component, key, config in _entities(device_id, topics):
        uid = f"edgeloop_{node}_{key}"
        body = {**config, "unique_id": uid, "device": device, "origin": {"name": "edgeloop"}}
        out.append((f"{prefix}/{component}/{uid}/config", json.dumps(body, sort_keys=True).encode()))
    return out


def discovery_topics(device_id: str, topics: Topics, prefix: str = "homeassistant") -> list[str]:
    return [t for t, _ in discovery_messages(device_id, topics, prefix)]
