"""The limits and the one project-name rule (``winnow.core.domain.limits``), and the SQLite bus
applying Kafka's topic rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.domain import limits
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Project
from winnow.core.loop.topics import STAGES, topic


@pytest.mark.parametrize("name", ["a", "reviews", "Bank-77_v2.en", "9lives", "x" * limits.MAX_PROJECT_NAME_CHARS])
def test_legal_project_names_pass_and_make_legal_topics(name: str) -> None:
    limits.check_project_name(name)
    for stage in STAGES:
        limits.check_topic_name(topic(name, stage))


@pytest.mark.parametrize("name", ["", "../../../x", "a/b", "a b", "ünïcode", "semi;colon", ".", "..", ".hidden",
                                  "-dash", "nul\x00", "x" * (limits.MAX_PROJECT_NAME_CHARS + 1), "x" * 10_000])
def test_illegal_project_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        limits.check_project_name(name)
    assert raised.value.field == "name"
    assert len(str(raised.value)) < 300  # the bad value is echoed clipped
    with pytest.raises(InvalidInput) as as_reference:
        limits.check_project_name(name, "project")
    assert as_reference.value.field == "project"


def test_the_longest_name_makes_every_topic_within_kafkas_limit() -> None:
    name = "x" * limits.MAX_PROJECT_NAME_CHARS
    lengths = [len(topic(name, stage)) for stage in STAGES]
    assert max(lengths) == limits.MAX_TOPIC_CHARS == 249  # the limit is as long as the longest stage allows
    for stage in STAGES:
        limits.check_topic_name(topic(name, stage))
    with pytest.raises(InvalidInput, match="topic"):
        limits.check_topic_name(topic(name + "x", "items.scored"))


def test_shorten_clips_long_values_and_says_how_long_they_were() -> None:
    assert limits.shorten("abc") == "'abc'"
    clipped = limits.shorten("y" * 10_000)
    assert clipped.startswith("'" + "y" * 99) and clipped.endswith("...(10002 chars)") and len(clipped) < 130


def _project(**changes: object) -> Project:
    return Project(**{"name": "p", "classes": ("a", "b"), **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": "a/b"}, "name"),
    ({"classes": tuple(f"c{k}" for k in range(limits.MAX_CLASSES + 1))}, "classes"),
    ({"classes": ("a", "b" * (limits.MAX_CLASS_NAME_BYTES + 1))}, "classes"),
    ({"classes": ("a", "é" * (limits.MAX_CLASS_NAME_BYTES // 2 + 1))}, "classes"),  # bytes, not characters
    ({"classes": ("a", "b\x00")}, "classes"),
    ({"overlap": 2 ** 31 - 1}, "overlap"),
    ({"overlap": 0}, "overlap"),
    ({"budget_per_items": 2 ** 31 - 1}, "budget_per_items"),
    ({"guideline_version": "v" * 1000}, "guideline_version"),
    ({"created_at": math.nan}, "created_at"),
    ({"created_at": math.inf}, "created_at"),
])
def test_project_limits_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        limits.check_project_limits(_project(**changes))
    assert raised.value.field == field


def test_a_project_at_every_limit_passes() -> None:
    limits.check_project_limits(_project(
        name="n" * limits.MAX_PROJECT_NAME_CHARS,
        classes=tuple(f"{k:0{limits.MAX_CLASS_NAME_BYTES}d}" for k in range(limits.MAX_CLASSES)),
        overlap=limits.MAX_OVERLAP, budget_per_items=limits.MAX_BUDGET_PER_ITEMS,
        guideline_version="g" * limits.MAX_GUIDELINE_VERSION_BYTES, created_at=limits.MAX_TIME_S))


@pytest.mark.parametrize(("item", "field"), [
    (Item("p", "a", "t", math.nan), "ingested_at"),
    (Item("p", "a", "t", math.inf), "ingested_at"),
    (Item("p", "a", "t", -math.inf), "ingested_at"),
    (Item("p", "a", "t", -1.0), "ingested_at"),
    (Item("p", "a", "t", limits.MAX_TIME_S * 2), "ingested_at"),
    (Item("p", "i" * (limits.MAX_KEY_BYTES + 1), "t"), "item_id"),
    (Item("p", "", "t"), "item_id"),
    (Item("p", "a\x00b", "t"), "item_id"),
    (Item("p", "a", "te\x00xt"), "text"),
    (Item("../p", "a", "t"), "project"),
])
def test_item_limits_name_the_field(item: Item, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        limits.check_items([Item("p", "ok", "fine"), item])
    assert raised.value.field == field


def test_too_many_items_in_one_call_are_refused_before_any_is_looked_at() -> None:
    items = [Item("p", f"i{k}", "t") for k in range(limits.MAX_ITEMS_PER_CALL)]
    limits.check_items(items)
    with pytest.raises(InvalidInput) as raised:
        limits.check_items([*items, Item("p", "one-more", "t")])
    assert raised.value.field == "items" and "10001" in str(raised.value)


@pytest.mark.parametrize("topic", ["", "a/b", "a b", "x" * 250, ".", ".."])
def test_the_sqlite_bus_refuses_topics_kafka_would_refuse(tmp_path: Path, topic: str) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite")
    try:
        with pytest.raises(InvalidInput) as raised:
            bus.create_topic(topic, 1)
        assert raised.value.field == "topic"
        bus.create_topic("winnow.ok_name-1.dead-letter", 1)
    finally:
        bus.close()
