"""The Kafka bus adapter against a real broker: the bus contract plus what only Kafka has."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest

from tests.contracts.bus_contract import BusContract
from winnow.core.bus import Consumer
from winnow.services.kafka_bus import KafkaBus, KafkaConsumerMember

pytestmark = pytest.mark.kafka

SESSION_TIMEOUT_MS = 6000  # the crash test waits this long for the group to drop the crashed member
ASSIGNMENT_DEADLINE_S = 30.0


class TestKafkaBus(BusContract):
    @pytest.fixture
    def bus(self, kafka_bootstrap: str) -> Iterator[KafkaBus]:
        bus = KafkaBus(kafka_bootstrap, client_id="winnow-contract", session_timeout_ms=SESSION_TIMEOUT_MS)
        self.topics: list[str] = []
        yield bus
        try:
            bus.delete_topics(self.topics)
        finally:
            bus.close()

    def new_topic(self, partitions: int = 1) -> str:
        topic = super().new_topic(partitions)
        self.topics.append(topic)
        return topic

    def crash(self, consumer: Consumer) -> None:
        consumer._abandon()  # type: ignore[attr-defined]

    def wait_for_assignment(self, consumers: Sequence[Consumer]) -> None:
        """Poll every member, each from its own thread, until they own disjoint, non-empty partition sets.

        Members of one process that join together must poll concurrently: a member's join finishes
        only once every member has rejoined. Callers publish after this returns, so nothing is handed out.
        """
        members = [cast(KafkaConsumerMember, c) for c in consumers]
        deadline = time.monotonic() + ASSIGNMENT_DEADLINE_S

        def settled() -> bool:
            owned = [member.assignment() for member in members]
            return all(owned) and sum(map(len, owned)) == len(frozenset().union(*owned))

        def drive(member: KafkaConsumerMember) -> int:
            handed_out = 0
            while not settled() and time.monotonic() < deadline:
                handed_out += len(member.poll(timeout_s=0.05))
            return handed_out

        with ThreadPoolExecutor(len(members)) as pool:
            handed_out = sum(pool.map(drive, members))
        assert handed_out == 0, "wait_for_assignment was handed messages: publish after it"
        if not settled():
            pytest.fail(f"no stable assignment within {ASSIGNMENT_DEADLINE_S} s")
