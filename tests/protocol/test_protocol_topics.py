import pytest

from protocol.errors import ProtocolError
from protocol.topics import ParsedTopic, Topics

T = Topics()


@pytest.mark.parametrize(
    "topic, parsed",
    [
        (T.state("cam-1"), ParsedTopic("state", device="cam-1")),
        (T.birth("cam-1"), ParsedTopic("birth", device="cam-1")),
        (T.samples("cam_2.a"), ParsedTopic("samples", device="cam_2.a")),
        (T.predictions("c"), ParsedTopic("predictions", device="c")),
        (T.stats("c"), ParsedTopic("stats", device="c")),
        (T.model_status("c"), ParsedTopic("model_status", device="c")),
        (T.manifest("line-3"), ParsedTopic("manifest", fleet="line-3")),
        (T.chunk("parts", "v1.2", 12), ParsedTopic("chunk", model="parts", version="v1.2", index=12)),
        (T.trainer_state(), ParsedTopic("trainer_state")),
    ],
)
def test_build_parse_round_trip(topic, parsed):
    assert topic.startswith("edgeloop/v1/")
    assert T.parse(topic) == parsed


def test_layout_matches_design():
    assert T.state("d") == "edgeloop/v1/dev/d/state"
    assert T.model_status("d") == "edgeloop/v1/dev/d/model/status"
    assert T.manifest("f") == "edgeloop/v1/fleet/f/manifest"
    assert T.chunk("m", "v", 0) == "edgeloop/v1/models/m/v/chunk/0"
    assert T.chunks_wildcard("m", "v") == "edgeloop/v1/models/m/v/chunk/+"
    assert T.trainer_state() == "edgeloop/v1/trainer/state"
    assert T.all_samples() == "edgeloop/v1/dev/+/samples"
    assert T.all_states() == "edgeloop/v1/dev/+/state"
    assert T.all_births() == "edgeloop/v1/dev/+/birth"
    assert T.all_stats() == "edgeloop/v1/dev/+/stats"
    assert T.all_model_status() == "edgeloop/v1/dev/+/model/status"


def test_custom_prefix():
    t = Topics("plant7/el")
    assert t.samples("d") == "plant7/el/dev/d/samples"
    assert t.parse("plant7/el/dev/d/samples").device == "d"
    with pytest.raises(ProtocolError) as e:
        t.parse("edgeloop/v1/dev/d/samples")
    assert e.value.reason == "bad_topic"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+b", "x#", "nul\x00", "a" * 129, "sp ace", "..", "é", "a\n"])
def test_bad_ids_rejected_on_build(bad):
    for build in (T.state, T.samples, T.manifest):
        with pytest.raises(ProtocolError) as e:
            build(bad)
        assert e.value.reason == "bad_topic"
    with pytest.raises(ProtocolError):
        T.chunk(bad, "v1", 0)


def test_max_len_id_ok():
    assert T.parse(T.state("a" * 128)).device == "a" * 128


@pytest.mark.parametrize("index", [-1, 10**9, 1.0, "3", True])
def test_bad_chunk_index(index):
    with pytest.raises(ProtocolError):
        T.chunk("m", "v", index)


@pytest.mark.parametrize(
    "bad",
    [
        "other/v1/dev/d/state", "edgeloop/v2/dev/d/state", "edgeloop/v1", "edgeloop/v1/",
        "edgeloop/v1/dev/d/unknown", "edgeloop/v1/dev//state", "edgeloop/v1/dev/+/state",
        "edgeloop/v1/dev/d/model/other", "edgeloop/v1/dev/d/state/extra", "edgeloop/v1/fleet/f",
        "edgeloop/v1/models/m/v/chunk/x", "edgeloop/v1/models/m/v/chunk/01", "edgeloop/v1/models/m/v/chunk/-1",
        "edgeloop/v1/models/m/v/chunk/+", "edgeloop/v1/trainer/state/x", "edgeloop/v1/dev/d/samples\n",
    ],
)
def test_parse_bad_topics(bad):
    with pytest.raises(ProtocolError) as e:
        T.parse(bad)
    assert e.value.reason == "bad_topic"
    assert repr(bad) in str(e.value)  # the message names the topic


def test_bad_prefix():
    for p in ("", "a//b", "a/+", "a/#"):
        with pytest.raises(ProtocolError):
            Topics(p)
