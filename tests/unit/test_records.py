"""The record codec: ``to_json`` writes the bytes ``dataclasses.asdict`` would, and ``from_json`` reads them back."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from winnow.core.domain.records import (
    Annotation,
    Item,
    Label,
    Lease,
    ModelVersion,
    Project,
    Task,
    from_json,
    to_json,
)

RECORDS = [
    Project("p", ("billing", "card"), 5, 50, 0.95, "margin", 2, "v2", 3.0),
    Item("p", "i0", "text with ünïcode and \"quotes\"", 1.5),
    Annotation("p", "i0", "ann", "card", 2.0),
    Label("p", "i0", "card", "model", "v1", 0.97, 0.9, "auto_accept", "v1", 4.0, "i0:selector:v1"),
    Label("p", "i1", "card", "human", "a,b", 0.8, None, "dawid_skene", "v1", 5.0, "i1:labeling:human"),
    Task("p", "i0", 0.25, None, 6.0, "holdout"),
    Lease("p", "i0", "ann", "text", "label", 7.0),
    ModelVersion("p", "v1", "/models/v1", 8.0, 100, 1.3, 0.87, {"accuracy": 0.9, "per_class": {"card": [1, 2]}}),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_to_json_is_the_asdict_encoding_and_round_trips(record: object) -> None:
    assert to_json(record) == json.dumps(dataclasses.asdict(record), separators=(",", ":")).encode()
    assert from_json(type(record), to_json(record)) == record


def test_an_infinite_threshold_round_trips() -> None:
    label = dataclasses.replace(RECORDS[3], threshold=math.inf)
    assert from_json(Label, to_json(label)).threshold == math.inf


def test_to_json_refuses_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        to_json({"item_id": "i0"})
