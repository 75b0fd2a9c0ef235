"""The delivery contract of ``winnow.core.ports.bus.Bus``, run against every adapter (SQLite, Kafka).

Subclass ``BusContract`` as ``Test<Adapter>Bus``, provide a ``bus`` fixture and override ``bus_opener``
(how a child process opens the same bus, for crashes) and ``refusing_topic`` (how the adapter makes a
publish fail for real), and ``new_topic`` / ``wait_for_assignment`` where the adapter needs it.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import pytest
from winnow.core.domain.errors import BusError, InvalidInput, NotFound
from winnow.core.ports.bus import Bus, Consumer, Message, Producer, next_offsets, partition_for
from winnow.core.testing.crash import BusOpener, KillableMember


def poll_until(consumer: Consumer, n: int, deadline_s: float = 10.0) -> list[Message]:
    """Exactly ``n`` messages from ``consumer`` (never asking for more), failing the test at the deadline."""
    got: list[Message] = []
    deadline = time.monotonic() + deadline_s
    while len(got) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"got {len(got)} of {n} messages within {deadline_s} s")
        got += consumer.poll(max_messages=n - len(got), timeout_s=0.1)
    return got


def values(messages: Sequence[Message]) -> list[bytes]:
    return [m.value for m in messages]


class BusContract(ABC):
    """Ordering per key, consumer groups, commit and redelivery after a crash, for any ``Bus``."""

    bus: Bus
    producer: Producer  # the test's own, for messages a test needs on a topic

    @pytest.fixture(autouse=True)
    def _bind_bus(self, bus: Bus) -> Iterator[None]:
        self.bus = bus
        self.producer = bus.producer()
        yield
        self.producer.close()

    def new_topic(self, partitions: int = 1) -> str:
        """A topic name no other test uses, created on the bus with ``partitions`` partitions."""
        topic = f"contract-{uuid.uuid4().hex[:12]}"
        self.bus.create_topic(topic, partitions)
        return topic

    @staticmethod
    def new_group() -> str:
        return f"group-{uuid.uuid4().hex[:12]}"

    @abstractmethod
    def bus_opener(self) -> BusOpener:
        """A picklable callable that opens this same bus in another process (for ``killable``);
        each adapter's suite says how."""

    @abstractmethod
    def refusing_topic(self) -> tuple[str, bytes]:
        """A new topic and a value that ``publish`` accepts but the bus then refuses to make durable,
        through a real mechanism of the adapter (a broker limit, a database constraint), so that the
        ``flush`` covering it fails."""

    def killable(self, topics: Sequence[str], group: str) -> KillableMember:
        """A member of ``group`` in a child process, which ``kill()`` SIGKILLs: a real crash."""
        return KillableMember(self.bus_opener(), topics, group)

    def wait_for_assignment(self, consumers: Sequence[Consumer]) -> None:
        """Return once ``consumers`` share the partitions; override where joining a group is asynchronous."""

    def publish(self, topic: str, n: int, keys: int = 1, tag: str = "m") -> list[bytes]:
        """Publish ``n`` messages round-robin over ``keys`` keys and flush; returns their values in order."""
        batch = [(f"key-{i % keys}", f"{tag}-{i}".encode()) for i in range(n)]
        self.producer.publish_many(topic, batch)
        self.producer.flush()
        return [v for _, v in batch]

    def test_order_is_kept_per_key(self) -> None:
        topic = self.new_topic(4)
        sent = self.publish(topic, 600, keys=30)
        with self.bus.consumer([topic], self.new_group()) as consumer:
            got = poll_until(consumer, len(sent))
        by_key: dict[str, list[bytes]] = defaultdict(list)
        for m in got:
            by_key[m.key].append(m.value)
        for key, vals in by_key.items():
            assert vals == [v for i, v in enumerate(sent) if f"key-{i % 30}" == key]
        assert len(by_key) == 30
        for p in {m.partition for m in got}:
            offsets = [m.offset for m in got if m.partition == p]
            assert offsets == sorted(set(offsets))

    def test_after_an_erase_the_last_record_of_each_erased_key_is_a_tombstone(self) -> None:
        topic = f"contract-{uuid.uuid4().hex[:12]}"
        self.bus.create_topic(topic, 2, compact=True)
        sent = self.publish(topic, 12, keys=4)
        self.bus.erase(topic, ["key-1", "key-3"])
        self.bus.erase(topic, [])  # nothing to do
        with self.bus.consumer([topic], self.new_group()) as consumer:
            got = poll_until(consumer, 12)
            got += consumer.poll(100, timeout_s=1.0)  # Kafka appends the tombstones after the records
        last = {m.key: m.value for m in sorted(got, key=lambda m: (m.partition, m.offset))}
        assert last == {"key-0": sent[8], "key-1": b"", "key-2": sent[10], "key-3": b""}
        assert not [m for m in got if m.key in ("key-0", "key-2") and not m.value]  # other keys keep theirs

    def test_a_key_always_lands_in_the_same_partition(self) -> None:
        topic = self.new_topic(5)
        self.publish(topic, 200, keys=17)
        with self.bus.consumer([topic], self.new_group()) as consumer:
            got = poll_until(consumer, 200)
        partitions: dict[str, set[int]] = defaultdict(set)
        for m in got:
            partitions[m.key].add(m.partition)
        assert partitions == {key: {partition_for(key, 5)} for key in partitions}
        assert len({p for ps in partitions.values() for p in ps}) > 1

    def test_two_groups_each_see_every_message_once(self) -> None:
        topic = self.new_topic(3)
        sent = self.publish(topic, 100, keys=10)
        for group in (self.new_group(), self.new_group()):
            with self.bus.consumer([topic], group) as consumer:
                assert sorted(values(poll_until(consumer, 100))) == sorted(sent)
                assert consumer.poll(timeout_s=0.1) == []

    def test_members_of_one_group_split_the_partitions(self) -> None:
        topic = self.new_topic(4)
        group = self.new_group()
        with self.bus.consumer([topic], group) as a, self.bus.consumer([topic], group) as b:
            self.wait_for_assignment([a, b])
            sent = self.publish(topic, 200, keys=40)
            got: dict[int, list[Message]] = {0: [], 1: []}
            deadline = time.monotonic() + 10.0
            while len(got[0]) + len(got[1]) < len(sent) and time.monotonic() < deadline:
                for i, member in enumerate((a, b)):
                    got[i] += member.poll(timeout_s=0.05)
            got[0] += a.poll(timeout_s=0.1)
            got[1] += b.poll(timeout_s=0.1)
        assert got[0] and got[1]
        assert not set(values(got[0])) & set(values(got[1]))
        assert sorted(values(got[0]) + values(got[1])) == sorted(sent)
        assert not {m.partition for m in got[0]} & {m.partition for m in got[1]}

    def test_a_new_member_resumes_after_the_committed_offset(self) -> None:
        topic = self.new_topic(1)
        group = self.new_group()
        sent = self.publish(topic, 10)
        with self.bus.consumer([topic], group) as first:
            assert values(poll_until(first, 4)) == sent[:4]
            first.commit()
        with self.bus.consumer([topic], group) as second:
            assert values(poll_until(second, 6)) == sent[4:]
            assert second.poll(timeout_s=0.1) == []

    def test_uncommitted_messages_are_redelivered_after_a_crash(self) -> None:
        topic = self.new_topic(2)
        group = self.new_group()
        self.publish(topic, 20, keys=8, tag="old")
        crashed = self.killable([topic], group)
        poll_until(crashed, 20)
        crashed.commit()
        sent = self.publish(topic, 10, keys=8, tag="new")
        assert sorted(values(poll_until(crashed, 10))) == sorted(sent)
        crashed.kill()
        with self.bus.consumer([topic], group) as survivor:
            assert sorted(values(poll_until(survivor, 10))) == sorted(sent)
            assert survivor.poll(timeout_s=0.1) == []

    def test_a_commit_of_explicit_offsets_keeps_what_was_polled_after_them(self) -> None:
        """A member that polled ahead commits only the batch it finished; a crash redelivers the rest."""
        topic = self.new_topic(2)
        group = self.new_group()
        sent = self.publish(topic, 24, keys=6)
        crashed = self.killable([topic], group)
        first = poll_until(crashed, 10)
        ahead = poll_until(crashed, 14)
        crashed.commit(next_offsets(first))
        crashed.kill()
        with self.bus.consumer([topic], group) as survivor:
            again = poll_until(survivor, 14)
            assert survivor.poll(timeout_s=0.1) == []
        assert sorted(values(again)) == sorted(values(ahead))
        assert sorted(values(first) + values(again)) == sorted(sent)

    def test_a_commit_past_what_poll_handed_out_is_refused(self) -> None:
        topic = self.new_topic(1)
        group = self.new_group()
        self.publish(topic, 10)
        with self.bus.consumer([topic], group) as consumer:
            got = poll_until(consumer, 3)
            with pytest.raises(InvalidInput) as raised:
                consumer.commit({(topic, 0): 5})
            assert raised.value.field == "offsets"
            with pytest.raises(InvalidInput):
                consumer.commit({(topic, 0): -1})
            with pytest.raises(InvalidInput):
                consumer.commit({(f"missing-{uuid.uuid4().hex[:8]}", 0): 1})  # nothing was handed out there
            consumer.commit({(f"missing-{uuid.uuid4().hex[:8]}", 0): 0})  # not this member's: nothing to commit
            consumer.commit(next_offsets(got[:2]))
            assert consumer.lag() == 8

    def test_close_with_commit_then_reopen_gets_nothing_old(self) -> None:
        topic = self.new_topic(2)
        group = self.new_group()
        self.publish(topic, 10, keys=4, tag="old")
        first = self.bus.consumer([topic], group)
        poll_until(first, 10)
        first.close(commit=True)
        with self.bus.consumer([topic], group) as second:
            self.wait_for_assignment([second])
            sent = self.publish(topic, 1, tag="new")
            assert values(poll_until(second, 1)) == sent
            assert second.poll(timeout_s=0.1) == []

    def test_poll_on_an_empty_topic_returns_nothing_within_its_timeout(self) -> None:
        topic = self.new_topic(2)
        with self.bus.consumer([topic], self.new_group()) as consumer:
            started = time.monotonic()
            assert consumer.poll(timeout_s=0.2) == []
            assert time.monotonic() - started < 5.0

    def test_headers_round_trip(self) -> None:
        topic = self.new_topic(1)
        headers = (("trace-id", b"abc"), ("blob", bytes(range(256))), ("trace-id", b"second"))
        self.producer.publish(topic, "k", b"with", headers)
        self.producer.publish(topic, "k", b"without")
        self.producer.flush()
        with self.bus.consumer([topic], self.new_group()) as consumer:
            with_headers, without = poll_until(consumer, 2)
        assert with_headers.headers == headers
        assert with_headers.header("trace-id") == b"abc"
        assert with_headers.header("missing") is None
        assert without.headers == ()

    def test_lag_counts_uncommitted_messages(self) -> None:
        topic = self.new_topic(2)
        with self.bus.consumer([topic], self.new_group()) as consumer:
            self.wait_for_assignment([consumer])
            self.publish(topic, 10, keys=5)
            assert consumer.lag() == 10
            poll_until(consumer, 4)
            assert consumer.lag() == 10
            consumer.commit()
            assert consumer.lag() == 6
            poll_until(consumer, 6)
            consumer.commit()
            assert consumer.lag() == 0

    def test_publish_to_an_unknown_topic_raises_not_found(self) -> None:
        with pytest.raises(NotFound) as raised:
            self.producer.publish(f"missing-{uuid.uuid4().hex[:12]}", "k", b"v")
        assert raised.value.field == "topic"
        with pytest.raises(NotFound):
            self.producer.publish_many(f"missing-{uuid.uuid4().hex[:12]}", [("k", b"v")])
        self.producer.flush()  # nothing was queued

    @pytest.mark.parametrize("first", ["good", "failing"])
    def test_a_flush_covers_only_its_own_producer_and_a_failed_stage_does_not_commit(self, first: str) -> None:
        """Two stages read one topic, each in its own group and thread, and publish through their own
        producers; one of the failing stage's publishes is refused. Both have published before either
        flushes, then ``first`` flushes, then the other: the failing stage's flush raises (so it does
        not commit), the good one's returns, its output is durable and its input committed; the
        failing stage's input is handed out again. (A flush that took every producer's sends would
        raise in the good stage, or return in the failing one with the good one's output lost.)"""
        source, out = self.new_topic(2), self.new_topic(2)
        refusing, refused_value = self.refusing_topic()
        sent = self.publish(source, 20, keys=6)
        groups = {"good": self.new_group(), "failing": self.new_group()}
        published = threading.Barrier(2, timeout=60.0)
        first_flushed = threading.Event()

        def stage(name: str) -> BusError | None:
            with self.bus.consumer([source], groups[name]) as consumer, self.bus.producer() as producer:
                batch = poll_until(consumer, len(sent), deadline_s=60.0)
                for m in batch:
                    producer.publish(out, m.key, f"{name}:".encode() + m.value)
                if name == "failing":
                    producer.publish(refusing, "k", refused_value)
                published.wait()
                if name != first:
                    assert first_flushed.wait(60.0)
                try:
                    producer.flush()
                except BusError as e:
                    return e
                finally:
                    first_flushed.set()
                consumer.commit()
                return None

        with ThreadPoolExecutor(2) as pool:
            good, failing = pool.map(stage, ["good", "failing"])
        assert good is None
        assert isinstance(failing, BusError)

        wanted = {b"good:" + v for v in sent}
        got: set[bytes] = set()
        deadline = time.monotonic() + 30.0
        with self.bus.consumer([out], self.new_group()) as reader:
            while not wanted <= got and time.monotonic() < deadline:
                got |= set(values(reader.poll(timeout_s=0.1)))
        assert wanted <= got, "the good stage's output is not all on the topic"
        with self.bus.consumer([source], groups["good"]) as again:
            self.wait_for_assignment([again])
            assert again.poll(timeout_s=0.5) == []  # committed
        with self.bus.consumer([source], groups["failing"]) as again:
            assert sorted(values(poll_until(again, len(sent), deadline_s=60.0))) == sorted(sent)

    def test_a_producer_is_usable_after_a_failed_flush(self) -> None:
        refusing, refused_value = self.refusing_topic()
        topic = self.new_topic(1)
        with self.bus.producer() as producer:
            producer.publish(refusing, "k", refused_value)
            with pytest.raises(BusError):
                producer.flush()
            producer.publish(topic, "k", b"after")
            producer.flush()
        with self.bus.consumer([topic], self.new_group()) as consumer:
            assert values(poll_until(consumer, 1)) == [b"after"]

    def test_a_closed_producer_refuses_publishes(self) -> None:
        topic = self.new_topic(1)
        producer = self.bus.producer()
        producer.close()
        producer.close()  # idempotent
        with pytest.raises(BusError, match="closed"):
            producer.publish(topic, "k", b"v")
