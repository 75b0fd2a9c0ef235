"""The embedded SQLite bus: the bus contract plus durability, several processes and a rough throughput."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import sqlite3
import threading
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path
from typing import Iterator

import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_group import assign
from winnow.core.domain.errors import BusError, InvalidInput, NotFound
from winnow.core.ports.bus import Consumer, Message, ProducerPool, next_offsets
from winnow.core.testing.bus_contract import BusContract, poll_until, values
from winnow.core.testing.crash import BusOpener

SESSION_TIMEOUT_S = 1.0  # a member's heartbeat thread can stall half a second on a loaded 2-core machine


def _publish_from_process(path: str, topic: str, writer: int, batches: int, batch_size: int) -> None:
    """Child process body: interleave batches and single publishes on the shared file."""
    bus = SqliteBus(path)
    producer = bus.producer()
    for b in range(batches):
        rows = [(f"w{writer}-k{i % 7}", f"w{writer}-{b * batch_size + i}".encode()) for i in range(batch_size)]
        producer.publish_many(topic, rows[:-1])
        producer.publish(topic, *rows[-1])
    bus.close()  # closes the producer, which flushes the last single publish


class TestSqliteBus(BusContract):
    @pytest.fixture
    def bus(self, tmp_path: Path) -> Iterator[SqliteBus]:
        bus = SqliteBus(tmp_path / "bus.db", session_timeout_s=SESSION_TIMEOUT_S)
        yield bus
        bus.close()

    def bus_opener(self) -> BusOpener:
        return functools.partial(SqliteBus, self.bus.path, session_timeout_s=SESSION_TIMEOUT_S)

    def refusing_topic(self) -> tuple[str, bytes]:
        """A topic whose rows the database itself refuses: a trigger aborts every insert into it."""
        topic = self.new_topic(1)
        with closing(sqlite3.connect(self.bus.path)) as db, db:
            db.execute(f"CREATE TRIGGER refuse_{topic.replace('-', '_')} BEFORE INSERT ON messages"
                       f" WHEN NEW.topic = '{topic}' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
        return topic, b"refused"

    def test_offsets_are_dense_from_zero_per_partition(self) -> None:
        topic = self.new_topic(3)
        self.publish(topic, 90, keys=9)
        with self.bus.consumer([topic], self.new_group()) as consumer:
            got = poll_until(consumer, 90)
        by_partition: dict[int, list[int]] = defaultdict(list)
        for m in got:
            by_partition[m.partition].append(m.offset)
        assert all(offsets == list(range(len(offsets))) for offsets in by_partition.values())

    def test_publish_is_visible_once_flushed(self) -> None:
        topic = self.new_topic(1)
        with self.bus.consumer([topic], self.new_group()) as consumer:
            self.producer.publish(topic, "k", b"buffered")
            assert consumer.poll() == []
            self.producer.flush()
            assert [m.value for m in consumer.poll()] == [b"buffered"]

    def test_a_flush_writes_only_its_own_producers_buffer(self) -> None:
        topic = self.new_topic(1)
        other = self.bus.producer()
        with self.bus.consumer([topic], self.new_group()) as consumer:
            other.publish(topic, "k", b"other's")
            self.producer.publish(topic, "k", b"mine")
            self.producer.flush()
            assert values(consumer.poll()) == [b"mine"]
            other.flush()
            assert values(consumer.poll()) == [b"other's"]
        other.close()

    def test_members_reading_different_topics_share_one_group(self) -> None:
        members = {"a": frozenset({"t1"}), "b": frozenset({"t1", "t2"})}
        partitions = {"t1": 2, "t2": 2}
        assert assign(members, partitions, "a") == {("t1", 0)}
        assert assign(members, partitions, "b") == {("t1", 1), ("t2", 0), ("t2", 1)}

    def test_messages_and_commits_survive_reopening_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "durable.db"
        first = SqliteBus(path)
        first.create_topic("items", 2)
        with first.producer() as producer:
            producer.publish_many("items", [(f"k{i}", f"v{i}".encode()) for i in range(10)])
        consumer = first.consumer(["items"], "g")
        handed = poll_until(consumer, 4)
        consumer.close(commit=True)
        first.close()

        second = SqliteBus(path)
        second.create_topic("items", 5)  # idempotent: keeps its 2 partitions
        with second.consumer(["items"], "g") as resumed, second.consumer(["items"], "other") as fresh:
            rest = poll_until(resumed, 6)
            everything = poll_until(fresh, 10)
            assert resumed.poll(timeout_s=0.05) == []
        second.close()
        assert {m.value for m in handed + rest} == {f"v{i}".encode() for i in range(10)}
        assert {m.partition for m in everything} == {0, 1}

    def test_two_processes_publishing_to_one_file_lose_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "shared.db"
        bus = SqliteBus(path)
        bus.create_topic("shared", 3)
        batches, batch_size = 20, 50
        ctx = multiprocessing.get_context("spawn")
        writers = [
            ctx.Process(target=_publish_from_process, args=(str(path), "shared", w, batches, batch_size))
            for w in (0, 1)
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=60)
            assert w.exitcode == 0
        with bus.consumer(["shared"], "g") as consumer:
            got = poll_until(consumer, 2 * batches * batch_size)
            assert consumer.poll(timeout_s=0.05) == []
        bus.close()
        by_key: dict[str, list[int]] = defaultdict(list)
        for m in got:
            by_key[m.key].append(int(m.value.decode().split("-")[1]))
        assert sum(map(len, by_key.values())) == len({m.value for m in got}) == 2 * batches * batch_size
        assert all(seq == sorted(seq) for seq in by_key.values())
        for p in range(3):
            offsets = [m.offset for m in got if m.partition == p]
            assert offsets == list(range(len(offsets)))

    def test_threads_sharing_one_bus_lose_nothing(self) -> None:
        topic = self.new_topic(2)

        def publish(writer: int) -> None:
            with self.bus.producer() as producer:
                for i in range(100):
                    producer.publish(topic, f"t{writer}", str(i).encode())

        threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.bus.consumer([topic], self.new_group()) as consumer:
            got = poll_until(consumer, 400)
        for w in range(4):
            assert [int(m.value) for m in got if m.key == f"t{w}"] == list(range(100))

    def test_a_member_the_group_dropped_restarts_from_the_commit(self) -> None:
        topic = self.new_topic(1)
        group = self.new_group()
        sent = self.publish(topic, 5)
        with self.bus.consumer([topic], group) as paused:
            poll_until(paused, 5)
            with closing(sqlite3.connect(self.bus.path)) as db, db:  # as if its process stalled for a minute
                db.execute("UPDATE group_members SET heartbeat = heartbeat - 60 WHERE grp = ?", (group,))
            with self.bus.consumer([topic], group) as other:
                assert [m.value for m in poll_until(other, 5)] == sent
            assert [m.value for m in poll_until(paused, 5)] == sent

    def test_a_finished_batch_still_commits_after_a_rebalance_reset_its_partition(self) -> None:
        """The prelabel worker commits a batch's offsets after polling ahead; a rebalance in between
        that takes the partition away and gives it back (at the committed offset) does not void them."""
        topic = self.new_topic(1)
        group = self.new_group()
        self.publish(topic, 5)
        with self.bus.consumer([topic], group) as paused:
            finished = poll_until(paused, 5)
            with closing(sqlite3.connect(self.bus.path)) as db, db:  # as if its process stalled for a minute
                db.execute("UPDATE group_members SET heartbeat = heartbeat - 60 WHERE grp = ?", (group,))
            with self.bus.consumer([topic], group) as other:
                poll_until(other, 5)
            assert values(poll_until(paused, 2)) == values(finished[:2])  # back from the commit (none)
            paused.commit(next_offsets(finished))
            assert paused.lag() == 0
            with pytest.raises(InvalidInput):
                paused.commit({(topic, 0): 6})

    def test_a_member_busy_past_the_session_timeout_keeps_its_partitions(self) -> None:
        topic = self.new_topic(2)
        group = self.new_group()
        sent = self.publish(topic, 10, keys=8)
        with self.bus.consumer([topic], group) as busy:
            assert sorted(values(poll_until(busy, 10))) == sorted(sent)
            time.sleep(3 * SESSION_TIMEOUT_S)  # one step longer than the timeout, no poll meanwhile
            busy.commit()
            with self.bus.consumer([topic], group) as other:
                assert other.poll(timeout_s=0.2) == []
            assert busy.poll(timeout_s=0.1) == []

    def test_a_member_that_does_not_poll_still_gets_its_share_when_another_joins(self) -> None:
        topic = self.new_topic(2)
        group = self.new_group()
        self.publish(topic, 10, keys=8, tag="old")
        with self.bus.consumer([topic], group) as busy:
            poll_until(busy, 10)
            busy.commit()
            time.sleep(3 * SESSION_TIMEOUT_S)
            with self.bus.consumer([topic], group) as other:
                sent = self.publish(topic, 20, keys=8, tag="new")  # keys 0-3 on partition 0, 4-7 on 1
                got: dict[Consumer, list[Message]] = {other: [], busy: []}
                deadline = time.monotonic() + 10.0
                while sum(map(len, got.values())) < len(sent) and time.monotonic() < deadline:
                    for member in got:  # the newcomer first: it must leave the busy member its share
                        got[member] += member.poll(timeout_s=0.05)
        assert sorted(values(got[busy]) + values(got[other])) == sorted(sent)
        assert len({m.partition for m in got[busy]}) == len({m.partition for m in got[other]}) == 1
        assert not {m.partition for m in got[busy]} & {m.partition for m in got[other]}

    def test_close_stops_the_heartbeat_thread(self) -> None:
        topic = self.new_topic(1)
        group = self.new_group()
        closed = self.bus.consumer([topic], group)
        left_open = self.bus.consumer([topic], group)
        threads = [closed._heartbeat_thread, left_open._heartbeat_thread]  # type: ignore[attr-defined]
        assert all(t.is_alive() and t.daemon and t.name == "winnow-sqlite-heartbeat" for t in threads)
        closed.close()
        assert not threads[0].is_alive() and threads[1].is_alive()
        with closing(sqlite3.connect(self.bus.path)) as db:
            assert db.execute("SELECT COUNT(*) FROM group_members WHERE grp = ?", (group,)).fetchone() == (1,)
        self.bus.close()  # closes the consumers made on it
        assert not threads[1].is_alive()

    def test_a_crashed_member_stops_heartbeating_and_its_partitions_move(self) -> None:
        topic = self.new_topic(2)
        group = self.new_group()
        sent = self.publish(topic, 20, keys=8)
        crashed = self.killable([topic], group)
        poll_until(crashed, 20)
        crashed.kill()
        with self.bus.consumer([topic], group) as survivor:  # gets the crashed member's share once it expires
            assert sorted(values(poll_until(survivor, 20, deadline_s=5.0))) == sorted(sent)

    def test_a_member_dropped_without_close_stops_heartbeating(self) -> None:
        topic = self.new_topic(2)
        group = self.new_group()
        sent = self.publish(topic, 20, keys=8)
        forgotten = self.bus.consumer([topic], group)
        poll_until(forgotten, 20)
        thread = forgotten._heartbeat_thread  # type: ignore[attr-defined]
        del forgotten
        gc.collect()
        thread.join(timeout=5.0)
        assert not thread.is_alive()
        with self.bus.consumer([topic], group) as survivor:
            assert sorted(values(poll_until(survivor, 20, deadline_s=5.0))) == sorted(sent)

    def test_bad_arguments_raise_invalid_input(self) -> None:
        topic = self.new_topic(1)
        with pytest.raises(InvalidInput, match="partitions"):
            self.bus.create_topic("t", 0)
        with pytest.raises(InvalidInput, match="topic"):
            self.bus.create_topic("", 1)
        with pytest.raises(InvalidInput, match="value"):
            self.producer.publish(topic, "k", "not bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="key"):
            self.producer.publish_many(topic, [(1, b"v")])  # type: ignore[list-item]
        with pytest.raises(InvalidInput, match="headers"):
            self.producer.publish(topic, "k", b"v", (("h", "str"),))  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="topics"):
            self.bus.consumer([], "g")
        with pytest.raises(InvalidInput, match="group"):
            self.bus.consumer([topic], "")
        with pytest.raises(InvalidInput, match="session_timeout_s"):
            SqliteBus(self.bus.path, session_timeout_s=0)
        with self.bus.consumer([topic], "g") as consumer:
            with pytest.raises(InvalidInput, match="max_messages"):
                consumer.poll(max_messages=0)
            with pytest.raises(InvalidInput, match="timeout_s"):
                consumer.poll(timeout_s=-1)

    def test_unknown_topic_and_closed_consumer(self) -> None:
        with pytest.raises(NotFound):
            self.bus.consumer(["missing"], "g")
        consumer = self.bus.consumer([self.new_topic(1)], "g")
        consumer.close()
        consumer.close()
        with pytest.raises(BusError, match="closed"):
            consumer.poll()

    def test_twenty_thousand_messages_round_trip_in_batches_and_past_the_auto_write(self) -> None:
        """10,000 in one ``publish_many`` and 10,000 single publishes (written every 1,000 and by the
        flush): all handed out once, in order per key. (Timings belong to bench/, not here.)"""
        topic = self.new_topic(4)
        rows = [(f"item-{i}", i.to_bytes(4, "big")) for i in range(10_000)]
        self.producer.publish_many(topic, rows)
        for key, value in rows:
            self.producer.publish(topic, key, value)
        self.producer.flush()
        with self.bus.consumer([topic], self.new_group()) as consumer:
            got = poll_until(consumer, 2 * len(rows), deadline_s=60.0)
            consumer.commit()
            assert consumer.lag() == 0
        by_key: dict[str, list[bytes]] = defaultdict(list)
        for m in got:
            by_key[m.key].append(m.value)
        assert by_key == {key: [value, value] for key, value in rows}


class TestProducerPool:
    """``ProducerPool`` on the SQLite bus: a lease is one caller's alone, producers are reused, a
    lease whose block raised closes its producer rather than handing it on."""

    @pytest.fixture
    def bus(self, tmp_path: Path) -> Iterator[SqliteBus]:
        bus = SqliteBus(tmp_path / "bus.db")
        bus.create_topic("t", 1)
        yield bus
        bus.close()

    def test_concurrent_leases_get_different_producers_and_idle_ones_are_reused(self, bus: SqliteBus) -> None:
        pool = ProducerPool(bus)
        with pool.lease() as first, pool.lease() as second:
            assert first is not second
        with pool.lease() as again:
            assert again in (first, second)
        pool.close()
        with pytest.raises(BusError, match="closed"):
            first.publish("t", "k", b"v")
        with pytest.raises(BusError, match="closed"):
            with pool.lease():
                pass

    def test_a_lease_that_raised_closes_its_producer_after_flushing_it(self, bus: SqliteBus) -> None:
        pool = ProducerPool(bus)
        with pytest.raises(RuntimeError):
            with pool.lease() as failed:
                failed.publish("t", "k", b"published before the failure")
                raise RuntimeError("the caller failed")
        with pool.lease() as fresh:
            assert fresh is not failed
        with pytest.raises(BusError, match="closed"):
            failed.publish("t", "k", b"v")
        with bus.consumer(["t"], "g") as consumer:
            assert values(consumer.poll(timeout_s=0.5)) == [b"published before the failure"]
        pool.close()
