"""One topic-name rule for both buses: the SQLite log and a real Kafka broker refuse the same
names with the same error, before anything is created."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.domain.errors import InvalidInput
from winnow.core.ports.bus import Bus

REFUSED = ["", "a/b", "a b", "x" * 250, ".", "..", "ünï", "semi;colon", "nul\x00"]


@pytest.fixture(params=["sqlite", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bus]:
    if request.param == "sqlite":
        bus: Bus = SqliteBus(tmp_path / "bus.sqlite")
    else:
        from winnow.services.kafka_bus import KafkaBus

        bus = KafkaBus(request.getfixturevalue("kafka_bootstrap"), client_id="winnow-topic-rule")
    try:
        yield bus
    finally:
        bus.close()


@pytest.mark.parametrize("name", REFUSED)
def test_both_buses_refuse_the_same_topic_names(bus: Bus, name: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        bus.create_topic(name, 1)
    assert raised.value.field == "topic"


@pytest.fixture
def longest_name(bus: Bus, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh legal topic name of Kafka's full 249 characters (deleted from the broker afterwards)."""
    name = f"winnow.rule-{uuid.uuid4().hex[:8]}.{'x' * 249}"[:249]
    yield name
    if request.node.callspec.params["bus"] == "kafka":
        bus.delete_topics([name])  # type: ignore[attr-defined]


def test_both_buses_take_the_longest_legal_name(bus: Bus, longest_name: str) -> None:
    bus.create_topic(longest_name, 1)
    bus.consumer([longest_name], "rule-check").close()
