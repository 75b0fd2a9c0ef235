"""The message bus interface: topics of keyed messages, partitions, consumer groups, commits.

Two adapters implement it: the embedded durable log in SQLite (``winnow.core.adapters.sqlite_bus``) and Apache
Kafka (``winnow.services.kafka_bus``). Both pass one contract suite (tests/contracts/bus_contract.py).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from winnow.core.domain.errors import InvalidInput

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

        An offset past what ``poll`` has handed out for its partition raises ``InvalidInput``. A
        partition this member no longer owns (lost to a rebalance) is not committed: its new owner
        gets those messages again (Kafka also raises ``BusError`` for a commit across a rebalance).
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


class Bus(ABC):
    """Named topics of keyed messages.

    A key always maps to the same partition (``partition_for``), so the messages of one key keep
    their publish order. ``publish`` may buffer; a message is durable once ``flush`` returns.
    """

    @abstractmethod
    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` if it does not exist (idempotent; an existing topic keeps its partitions)."""

    @abstractmethod
    def publish(self, topic: str, key: str, value: bytes, headers: Headers = ()) -> None:
        """Append one message to the key's partition of ``topic`` (which must exist)."""

    @abstractmethod
    def flush(self) -> None:
        """Return once everything published so far is durable."""

    @abstractmethod
    def consumer(self, topics: Sequence[str], group: str) -> Consumer:
        """Join consumer ``group`` on ``topics``; members of one group share the partitions."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release connections."""

    def publish_many(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(key, value)`` pairs in order; adapters may override with a batched write."""
        for key, value in messages:
            self.publish(topic, key, value)
