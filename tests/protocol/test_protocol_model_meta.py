import pytest

from protocol.errors import ProtocolError
from protocol.model_meta import ModelMeta


def meta(**kw) -> ModelMeta:
    base = dict(
        version="v4", parent_version="v3", labels=["ok", "scratch", "dent"], width=96, height=64,
        channels=3, color_order="BGR", scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
        roi=[10, 20, 300, 200], architecture="mobilenet_v3_small", samples_seen=1234,
        metrics={"accuracy": 0.93, "macro_f1": 0.9, "per_class": {"ok": 0.95}}, created=1_700_000_000.25,
        input_name="images", output_name="logits", opset=17,
    )
    base.update(kw)
    return ModelMeta(**base)


def test_round_trip():
    m = meta()
    props = m.to_props()
    assert all(k.startswith("edgeloop.") and isinstance(v, str) for k, v in props.items())
    assert ModelMeta.from_props(props) == m
    # foreign metadata_props are ignored
    assert ModelMeta.from_props({**props, "producer": "torch", "edgeloop.future_key": "x"}) == m


def test_round_trip_minimal_gray():
    m = ModelMeta(version="v1", labels=["0", "1"], width=28, height=28, channels=1, color_order="GRAY",
                  mean=[0.5], std=[0.5])
    back = ModelMeta.from_props(m.to_props())
    assert back == m and back.parent_version is None and back.roi is None


def test_compat():
    c = meta().compat()
    assert c["labels"] == ["ok", "scratch", "dent"] and c["opset"] == 17
    assert c["input"]["width"] == 96 and c["input"]["color_order"] == "BGR" and c["input"]["layout"] == "NCHW"


@pytest.mark.parametrize(
    "key, value",
    [
        ("edgeloop.version", None), ("edgeloop.labels", None), ("edgeloop.labels", "not json"),
        ("edgeloop.labels", "[]"), ("edgeloop.labels", '["a", "a", "b"]'), ("edgeloop.labels", '{"a": 1}'),
        ("edgeloop.input_width", "wide"), ("edgeloop.input_width", "0"), ("edgeloop.input_height", None),
        ("edgeloop.channels", "2"), ("edgeloop.color_order", "HSV"), ("edgeloop.color_order", "GRAY"),
        ("edgeloop.scale", "0"), ("edgeloop.scale", "nan"), ("edgeloop.mean", "[0.5]"),
        ("edgeloop.std", "[1, 0, 1]"), ("edgeloop.std", "[1, NaN, 1]"), ("edgeloop.layout", "NHWC"),
        ("edgeloop.roi", "[1, 2, 3]"), ("edgeloop.roi", "[0, 0, 0, 5]"), ("edgeloop.samples_seen", "-1"),
        ("edgeloop.metrics", "[]"), ("edgeloop.created", "inf"), ("edgeloop.schema", "2"),
        ("edgeloop.schema", None), ("edgeloop.opset", "x"), ("edgeloop.input_name", ""),
    ],
)
def test_bad_keys_named(key, value):
    props = meta().to_props()
    if value is None:
        del props[key]
    else:
        props[key] = value
    with pytest.raises(ProtocolError) as e:
        ModelMeta.from_props(props)
    assert e.value.reason == "bad_metadata"
    assert key in str(e.value)
