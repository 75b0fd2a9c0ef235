"""The bus codecs: every topic's record round-trips through its ``winnow.v1`` message; bad bytes and
unusable messages raise ``InvalidInput`` naming the field; a newer writer's unknown fields are ignored."""

from __future__ import annotations

import dataclasses
import math

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from winnow.core.domain.codecs import (
    CODECS,
    ITEMS_RAW,
    ITEMS_SCORED,
    LABELS,
    MODELS,
    TASKS,
    codec_for,
)
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Label, ModelVersion, Scored, Task
from winnow.v1 import records_pb2

ON_TOPICS = [
    ("items.raw", Item("p", "i0", "text with ünïcode and \"quotes\"", 1.5)),
    ("items.scored", Scored("i0")),
    ("items.scored", Scored("i0", "v0001-n30", "card", 0.875)),
    ("tasks", Task("p", "i0", 0.25, None, 6.0, "holdout")),
    ("tasks", Task("p", "i1", 0.5, "v1", 6.0, "label")),
    ("labels", Label("p", "i0", "card", "model", "v1", 0.97, 0.9, "auto_accept", "v1", 4.0, "i0:selector:v1")),
    ("labels", Label("p", "i1", "card", "human", "a,b", 0.8, None, "dawid_skene", "v1", 5.0, "i1:labeling:human")),
    ("models", ModelVersion("p", "v1", "/models/v1", 8.0, 100, 1.3, 0.87,
                            {"accuracy": 0.9, "per_class": {"card": [1.0, 2.0]}, "note": "ok", "empty": None})),
]


@pytest.mark.parametrize(("stage", "record"), ON_TOPICS, ids=lambda x: x if isinstance(x, str) else "")
def test_each_topic_record_round_trips_as_its_protobuf_message(stage: str, record: object) -> None:
    codec = codec_for(stage)
    data = codec.encode(record)
    assert isinstance(data, bytes)
    assert codec.message.FromString(data) is not None  # real protobuf bytes, readable by any client
    assert codec.decode(data) == record


def test_every_record_topic_has_a_codec_and_the_dead_letter_topic_none() -> None:
    assert set(CODECS) == {"items.raw", "items.scored", "tasks", "labels", "models"}
    with pytest.raises(InvalidInput) as raised:
        codec_for("dead-letter")
    assert raised.value.field == "stage"


def test_infinities_and_nan_survive() -> None:
    label = dataclasses.replace(ON_TOPICS[5][1], threshold=math.inf)
    assert LABELS.decode(LABELS.encode(label)).threshold == math.inf
    model = dataclasses.replace(ON_TOPICS[7][1], metrics={"ece": math.nan, "bound": -math.inf})
    metrics = MODELS.decode(MODELS.encode(model)).metrics
    assert math.isnan(metrics["ece"]) and metrics["bound"] == -math.inf


def test_unset_optionals_stay_none_and_set_zeros_stay_zero() -> None:
    assert ITEMS_SCORED.decode(ITEMS_SCORED.encode(Scored("i0", "", "a", 0.0))) == Scored("i0", "", "a", 0.0)
    assert ITEMS_SCORED.decode(records_pb2.Scored(item_id="i0").SerializeToString()) == Scored("i0")


def test_keyed_uses_the_item_id_or_for_models_the_project() -> None:
    items = [Item("p", "a", "x", 0.0), Item("p", "b", "y", 0.0)]
    assert [k for k, _ in ITEMS_RAW.keyed(items)] == ["a", "b"]
    assert [k for k, _ in MODELS.keyed([ON_TOPICS[7][1]])] == ["p"]


def _newer_scored_class() -> type:
    """``winnow.v1.Scored`` as a newer writer would have it: one more field (number 9) and one more
    string field (number 10) the reader does not know."""
    proto = descriptor_pb2.FileDescriptorProto(name="winnow/v2/scored_newer.proto", package="winnow.v2",
                                               syntax="proto3")
    scored = proto.message_type.add()
    records_pb2.Scored.DESCRIPTOR.CopyToProto(scored)
    for name, number, kind in (("margin", 9, "TYPE_DOUBLE"), ("encoder", 10, "TYPE_STRING")):
        scored.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.Type.Value(kind),
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("winnow.v2.Scored"))


def test_a_message_with_fields_the_reader_does_not_know_still_decodes() -> None:
    newer = _newer_scored_class()
    data = newer(item_id="i0", model_version="v2", label="card", confidence=0.75, margin=0.5,
                 encoder="e5-small").SerializeToString()
    assert len(data) > len(ITEMS_SCORED.encode(Scored("i0", "v2", "card", 0.75)))  # the new fields are there
    assert ITEMS_SCORED.decode(data) == Scored("i0", "v2", "card", 0.75)


@pytest.mark.parametrize("data", [b"not json", b"\xff\xff\xff", b"\x0a\x10short"], ids=["text", "ff", "truncated"])
def test_bytes_that_are_not_a_message_raise_invalid_input_naming_the_value(data: bytes) -> None:
    with pytest.raises(InvalidInput) as raised:
        ITEMS_SCORED.decode(data)
    assert raised.value.field == "value"


def test_a_message_without_its_key_field_is_refused() -> None:
    with pytest.raises(InvalidInput) as raised:
        ITEMS_SCORED.decode(records_pb2.Scored(label="card").SerializeToString())
    assert raised.value.field == "item_id"
    with pytest.raises(InvalidInput) as raised:
        MODELS.decode(records_pb2.ModelVersion(project="p", version="v1").SerializeToString())
    assert raised.value.field == "path"


def test_an_unset_or_unknown_enum_value_is_refused() -> None:
    message = LABELS.message.FromString(LABELS.encode(ON_TOPICS[5][1]))
    message.source = records_pb2.LABEL_SOURCE_UNSPECIFIED
    with pytest.raises(InvalidInput) as raised:
        LABELS.decode(message.SerializeToString())
    assert raised.value.field == "source"
    message.source = 42  # a value a newer writer added: open enum, kept as a number
    with pytest.raises(InvalidInput):
        LABELS.decode(message.SerializeToString())


def test_encode_refuses_another_record_type_and_an_unknown_enum_name() -> None:
    with pytest.raises(InvalidInput) as raised:
        TASKS.encode(ON_TOPICS[0][1])
    assert raised.value.field == "record"
    with pytest.raises(InvalidInput) as raised:
        TASKS.encode(dataclasses.replace(ON_TOPICS[3][1], kind="urgent"))  # type: ignore[arg-type]
    assert raised.value.field == "kind"
    with pytest.raises(InvalidInput):
        ITEMS_RAW.encode(Item("p", "i0", 42, 0.0))  # type: ignore[arg-type]
