"""The message bus interface: topics of keyed messages, partitions, producers, consumer groups, commits.

Two adapters implement it: the embedded durable log in SQLite (``winnow.core.adapters.sqlite_bus``) and Apache
Kafka (``winnow.services.kafka_bus``). Both pass one contract suite (``winnow.core.testing.bus_contract``).
The bytes are each topic's protobuf records (``winnow.core.domain.codecs``); the bus itself only moves bytes.
"""

from __future__ import annotations

import logging
import threading
import zlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

from winnow.core.domain.errors import BusError, InvalidInput, WinnowError

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, bytes], ...]
Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> the offset after the last message done


@dataclass(frozen=True)
class Message:
    """One record read from the bus, with where it came from."""

    topic: str
    key: str
    value: bytes
    partition: int
    offset: int
    headers: Headers = ()

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


def next_offsets(messages: Iterable[Message]) -> dict[tuple[str, int], int]:
    """For each partition among ``messages``, the offset after the last of them (what ``commit`` takes)."""
    offsets: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
    return offsets


def check_offsets(offsets: Offsets, handed: Mapping[tuple[str, int], int]) -> None:
    """``InvalidInput`` for an offset asked to be committed that is negative or past what ``poll``
    has handed out: ``handed`` is, per partition, the offset after the furthest message handed to
    this member since it joined, kept across rebalances (a position a rebalance reset to the
    committed offset does not void a finished batch's offsets)."""
    for (t, p), offset in offsets.items():
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidInput("offsets", f"{t}/{p}: an offset must be a non-negative int, got {offset!r}")
        if offset > handed.get((t, p), 0):
            raise InvalidInput("offsets", f"{t}/{p}: {offset} is past what poll has handed out "
                                          f"({handed.get((t, p), 0)})")


def partition_for(key: str, partitions: int) -> int:
    """The partition a key lands on: stable across processes and adapters (CRC32, not ``hash``)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


class Consumer(ABC):
    """A member of a consumer group reading one or more topics.

    Delivery is at-least-once. ``poll`` returns messages after the group's committed offset for each
    partition assigned to this member, in offset order per partition (so in publish order per key).
    ``commit`` records, for every partition, the offset *after* the last message this member has
    been handed by ``poll``: call it only once the output made from those messages is durable.
    A member that polls ahead of its durable output (the prelabel worker gathers its next batch
    while the model runs on the last) commits explicit ``offsets`` instead.
    A member that stops without committing (crash, ``close(commit=False)``) leaves its uncommitted
    messages to be handed again to whichever member owns the partition next.
    """

    @abstractmethod
    def poll(self, max_messages: int = 500, timeout_s: float = 0.0) -> list[Message]:
        """Up to ``max_messages`` new messages, waiting at most ``timeout_s`` for the first one."""

    @abstractmethod
    def commit(self, offsets: Offsets | None = None) -> None:
        """Make everything handed out by ``poll`` so far committed for the group; with ``offsets``,
        only those positions (see ``next_offsets``).

        Call it only after the ``flush`` of the producer that published the output made from those
        messages has returned without raising: a committed message is never handed out again, so
        output that was not durable then is lost. Off by one: an offset is the position of the next
        message to hand out, one past the last message done.

        An offset past what ``poll`` has handed out for its partition raises ``InvalidInput``. A
        partition this member no longer owns (lost to a rebalance) is not committed: its new owner
        gets those messages again. A commit the bus refuses because the group is rebalancing (Kafka:
        a stale generation) commits nothing and raises nothing: the owners after the rebalance hand
        those messages out again. Neither is an error of the member: it goes on polling.
        """

    @abstractmethod
    def close(self, commit: bool = False) -> None:
        """Leave the group (its partitions go to the other members); commit first if asked."""

    @abstractmethod
    def lag(self) -> int:
        """Messages published to this member's partitions and not yet committed by the group."""

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(commit=False)


class Producer(ABC):
    """One stage's way onto the bus: the messages it publishes, and a ``flush`` that covers exactly those.

    Delivery contract (what "offsets only after durable output" rests on): ``publish`` may buffer.
    ``flush`` returns once every message published through *this* producer since its previous flush
    is durable (Kafka: acknowledged by every in-sync replica; SQLite: in an fsynced transaction), and
    raises ``BusError`` if any of them failed, however it failed (the broker refused it, the log
    could not be written): the caller must then not commit the input those messages were made from,
    so that redelivery makes and publishes them again. A flush that raised has dropped the messages
    it reported; the producer stays usable. A flush never waits for, and never reports, another
    producer's messages, so each stage publishes through its own (``Bus.producer``); callers that
    publish concurrently and flush on their own take one each (``ProducerPool``).

    Messages of one key published through one producer keep their order on the key's partition.
    Publishing to a topic that does not exist raises ``NotFound`` and a key, value or header of the
    wrong type ``InvalidInput``, at once, with nothing buffered.
    """

    @abstractmethod
    def publish(self, topic: str, key: str, value: bytes, headers: Headers = ()) -> None:
        """Queue one message for the key's partition of ``topic``; durable once ``flush`` returns."""

    @abstractmethod
    def publish_many(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Queue ``(key, value)`` pairs in order, as ``publish`` would one by one (adapters batch the write)."""

    @abstractmethod
    def flush(self) -> None:
        """Return once everything this producer published is durable; ``BusError`` if any of it failed."""

    @abstractmethod
    def close(self) -> None:
        """Flush (raising as ``flush`` does), then release the producer's resources; idempotent."""

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_producers(producers: Iterable[Producer]) -> BusError | None:
    """Close every one of ``producers`` (each flushes first); the first flush failure is returned,
    for the caller to raise once it has released the rest (``Bus.close``)."""
    failure: BusError | None = None
    for producer in list(producers):
        try:
            producer.close()
        except BusError as e:
            failure = failure or e
    return failure


class Bus(ABC):
    """Named topics of keyed messages: topic admin, producers and consumer group members.

    A key always maps to the same partition (``partition_for``), so the messages of one key keep
    their publish order. Messages go on through a ``Producer`` (one per stage; see its delivery
    contract) and come off through a ``Consumer`` (see its commit contract).
    """

    @abstractmethod
    def create_topic(self, topic: str, partitions: int = 1, compact: bool = False) -> None:
        """Create ``topic`` if it does not exist (idempotent; an existing topic keeps its partitions
        and settings). ``compact``: a topic whose records ``erase`` must be able to remove (on Kafka,
        ``cleanup.policy=compact,delete``: the log cleaner drops a key's records behind its tombstone)."""

    @abstractmethod
    def erase(self, topic: str, keys: Sequence[str]) -> None:
        """Remove the payloads of the records with these keys, where the bus keeps them: the SQLite
        log overwrites them in place with empty tombstones (offsets stay dense); Kafka appends a
        tombstone per key, and the log cleaner of a compacted topic removes the earlier records.
        Consumers skip tombstones (an empty value is never a record)."""

    @abstractmethod
    def producer(self) -> Producer:
        """A new producer of its own: its flush covers exactly what is published through it."""

    @abstractmethod
    def consumer(self, topics: Sequence[str], group: str) -> Consumer:
        """Join consumer ``group`` on ``topics``; members of one group share the partitions."""

    @abstractmethod
    def close(self) -> None:
        """Close every producer made here (flushing it) and release connections."""


class ProducerPool:
    """Producers for callers that publish concurrently and each flush on their own (API handlers).

    A leased producer is the caller's alone until the ``with`` block ends, so its flush covers
    exactly that caller's messages and reports exactly that caller's failures. Producers are reused
    across leases and made on demand, so there are at most as many as concurrent callers.
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._idle: list[Producer] = []
        self._closed = False

    @contextmanager
    def lease(self) -> Iterator[Producer]:
        """A producer for this caller alone. If the block raises, the producer is closed (what it
        still holds is flushed, errors logged) rather than handed to the next caller."""
        with self._lock:
            if self._closed:
                raise BusError("the producer pool is closed")
            producer = self._idle.pop() if self._idle else None
        if producer is None:
            producer = self._bus.producer()
        try:
            yield producer
        except BaseException:
            try:
                producer.close()
            except WinnowError as e:
                log.warning("closing a producer after a failed lease: %s", e)
            raise
        with self._lock:
            if not self._closed:
                self._idle.append(producer)
                return
        producer.close()

    def close(self) -> None:
        """Close the idle producers; those on lease are closed when their lease ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for producer in idle:
            producer.close()
