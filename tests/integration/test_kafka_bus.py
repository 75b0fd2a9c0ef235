"""The Kafka bus adapter against a real broker: the bus contract plus what only Kafka has."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from winnow.core.ports.bus import Consumer
from winnow.core.testing.bus_contract import BusContract
from winnow.core.testing.crash import BusOpener
from winnow.services.kafka_bus import KafkaBus, KafkaConsumerMember

pytestmark = pytest.mark.kafka

SESSION_TIMEOUT_MS = 6000  # the crash test waits this long for the group to drop the crashed member
ASSIGNMENT_DEADLINE_S = 30.0
REFUSING_MAX_BYTES = 1024  # the refusing topic's max.message.bytes: a bigger record is refused by the broker


class TestKafkaBus(BusContract):
    @pytest.fixture
    def bus(self, kafka_bootstrap: str) -> Iterator[KafkaBus]:
        bus = KafkaBus(kafka_bootstrap, client_id="winnow-contract", session_timeout_ms=SESSION_TIMEOUT_MS)
        self.bootstrap = kafka_bootstrap
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

    def bus_opener(self) -> BusOpener:
        return functools.partial(KafkaBus, self.bootstrap, client_id="winnow-contract-killable",
                                 session_timeout_ms=SESSION_TIMEOUT_MS)

    def refusing_topic(self) -> tuple[str, bytes]:
        """A topic whose ``max.message.bytes`` is 1 KiB, and a 64 KiB value: the client sends it (its
        own limit is 1 MiB) and the broker refuses the batch with MESSAGE_TOO_LARGE."""
        topic = f"contract-refusing-{uuid.uuid4().hex[:12]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="winnow-contract-refusing")
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                          topic_configs={"max.message.bytes": str(REFUSING_MAX_BYTES)})])
            admin.wait_for_topics([topic], timeout_ms=30000)
        finally:
            admin.close()
        self.topics.append(topic)
        return topic, bytes(64 * REFUSING_MAX_BYTES)

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


def test_a_commit_while_another_member_joins_raises_nothing_and_loses_nothing(kafka_bootstrap: str) -> None:
    """A member commits while another is joining the group. The broker takes the commit, or refuses it
    for the rebalance (a stale generation: then the adapter warns and commits nothing; before, it raised,
    and a worker stopped its process whenever another member joined or left; the refusal itself is
    tested in tests/unit/test_kafka_client.py). Either way nothing is raised and nothing is lost: once
    the members commit what they are handed after the rebalance, every message is committed, and only
    messages of the topic were handed out again."""
    bus = KafkaBus(kafka_bootstrap, client_id="winnow-rebalance", session_timeout_ms=SESSION_TIMEOUT_MS)
    topic, group = f"contract-rebalance-{uuid.uuid4().hex[:12]}", f"group-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="winnow-rebalance-admin")
    try:
        bus.create_topic(topic, 2)
        with bus.producer() as producer:
            sent = [f"m-{i}".encode() for i in range(20)]
            producer.publish_many(topic, [(f"key-{i % 8}", v) for i, v in enumerate(sent)])
            producer.flush()
        with bus.consumer([topic], group) as a, bus.consumer([topic], group) as b:
            first: list = []
            deadline = time.monotonic() + ASSIGNMENT_DEADLINE_S
            while len(first) < len(sent) and time.monotonic() < deadline:
                first += a.poll(timeout_s=0.1)
            assert sorted(m.value for m in first) == sorted(sent)

            def settled() -> bool:
                owned = [a.assignment(), b.assignment()]
                return all(owned) and not owned[0] & owned[1]

            def drive(member: KafkaConsumerMember) -> list:
                """Poll (and commit what it is handed) until both members own partitions and this
                member's have nothing left."""
                got: list = []
                while time.monotonic() < deadline and not (settled() and member.lag() == 0):
                    if batch := member.poll(timeout_s=0.05):
                        got += batch
                        member.commit()
                return got

            def state() -> str:
                info = admin.describe_groups([group])[group]
                return info.get("group_state") or info.get("state") or ""

            with ThreadPoolExecutor(2) as pool:
                joining = pool.submit(drive, b)  # b joins: the group waits for a to rejoin
                while state() != "PreparingRebalance":
                    assert time.monotonic() < deadline, f"the group never started to rebalance ({state()})"
                    time.sleep(0.05)
                a.commit()  # taken, or refused for the rebalance: never an error
                handed = drive(a) + joining.result()
            assert settled() and a.lag() == 0 and b.lag() == 0
            assert {m.value for m in handed} <= set(sent)
    finally:
        admin.close()
        bus.delete_topics([topic])
        bus.close()


def test_poison_messages_go_to_the_dead_letter_topic_on_kafka(kafka_bootstrap: str, tmp_path) -> None:
    """The selector stage on Kafka: malformed messages are dead-lettered and committed past."""
    import uuid

    from winnow.core.adapters.sqlite_store import SqliteStore
    from winnow.core.domain.records import Project
    from winnow.core.domain.settings import LoopConfig
    from winnow.core.loop.selector import Selector
    from winnow.core.loop.topics import STAGES, create_topics, topic

    name = f"dl{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(kafka_bootstrap, client_id="winnow-dead-letter", session_timeout_ms=SESSION_TIMEOUT_MS)
    store = SqliteStore(tmp_path / "store.sqlite")
    try:
        project = Project(name, ("a", "b"))
        store.create_project(project)
        create_topics(bus, name, 2)
        selector = Selector(bus, store, project, LoopConfig())
        with bus.producer() as producer:
            producer.publish(topic(name, "items.scored"), "k1", b"not json")
            producer.publish(topic(name, "items.scored"), "k2", b'{"no_item_id": 1}')
        deadline = time.monotonic() + ASSIGNMENT_DEADLINE_S
        handled = 0
        while handled < 2 and time.monotonic() < deadline:
            handled += selector.step(timeout_s=1.0)
        assert handled == 2
        assert selector.consumer.lag() == 0  # committed past the poison: the partition is not blocked
        selector.close()
        dead = bus.consumer([topic(name, "dead-letter")], f"inspect-{name}")
        letters = []
        while len(letters) < 2 and time.monotonic() < deadline:
            letters += dead.poll(10, timeout_s=1.0)
        dead.close()
        assert sorted(m.key for m in letters) == ["k1", "k2"]
        assert all(m.header("error") and m.header("stage") == b"selector" for m in letters)
    finally:
        store.close()
        bus.delete_topics([topic(name, stage) for stage in STAGES])
        bus.close()
