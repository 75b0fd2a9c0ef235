"""The embedded bus: a durable append-only log of keyed messages in one SQLite file.

Usable from several threads and several processes on the same file. WAL mode lets readers run
while one writer appends; ``synchronous=FULL`` makes every commit fsync the WAL, so a message is
durable (against power loss, not only a process crash) once the transaction that wrote it returns:
an output store that commits before the bus offset can rely on that order. The cost is one fsync
per transaction, which is why a producer buffers and its ``flush``/``publish_many`` write a batch in one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Sequence

from winnow.core.adapters.sqlite_group import SqliteConsumer
from winnow.core.adapters.sqlite_log import (
    SCHEMA,
    LogRow,
    TopicPartition,
    bus_errors,
    check_name,
    connect,
    encode_headers,
    log_row,
    topic_partitions,
    write_tx,
)
from winnow.core.domain.errors import BusError, InvalidInput
from winnow.core.domain.limits import check_topic_name
from winnow.core.ports.bus import Bus, Consumer, Headers, Producer, close_producers

log = logging.getLogger(__name__)
_MAX_PENDING = 1000


class SqliteBus(Bus):
    """The ``Bus`` as a log in one SQLite file; see the module docstring for durability.

    Producers buffer in memory (lost if the process dies before a ``flush``); a flush writes its
    producer's buffer in one transaction, after which the messages are durable and visible to
    consumers in any process. Offsets are dense per (topic, partition), starting at 0. A group
    member whose last heartbeat is older than ``session_timeout_s`` is dead and its partitions move
    to the others; each consumer heartbeats from a thread of its own, so a step longer than the
    timeout between ``poll`` and ``commit`` keeps them. One instance may be shared by threads (calls
    serialize on a lock). Nothing is ever deleted from the log (no retention yet).
    """

    def __init__(self, path: Path | str, session_timeout_s: float = 10.0) -> None:
        if not session_timeout_s > 0:
            raise InvalidInput("session_timeout_s", f"must be > 0, got {session_timeout_s!r}")
        self.path = Path(path)
        self.session_timeout_s = float(session_timeout_s)
        self._lock = threading.Lock()
        self._partitions: dict[str, int] = {}
        self._producers: weakref.WeakSet[_SqliteProducer] = weakref.WeakSet()
        self._consumers: weakref.WeakSet[SqliteConsumer] = weakref.WeakSet()
        try:
            self._conn = connect(self.path)
            with write_tx(self._conn):
                for statement in SCHEMA:
                    self._conn.execute(statement)
        except sqlite3.Error as e:
            raise BusError(f"sqlite bus: cannot open {self.path}: {e}") from e

    @bus_errors
    def erase(self, topic: str, keys: Sequence[str]) -> None:
        """Overwrite the records' values (and headers) with empty tombstones, zeroing the freed bytes
        (``secure_delete``), then checkpoint and truncate the write-ahead log that held the old pages."""
        check_name("topic", topic)
        for key in keys:
            check_name("key", key)
        if not keys:
            return
        with self._lock:
            with write_tx(self._conn):
                self._conn.executemany("UPDATE messages SET value = x'', headers = NULL WHERE topic = ? AND key = ?",
                                       [(topic, key) for key in keys])
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @bus_errors
    def create_topic(self, topic: str, partitions: int = 1, compact: bool = False) -> None:
        check_topic_name(check_name("topic", topic))  # Kafka's rule, so a name works on both buses
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise InvalidInput("partitions", f"must be an integer >= 1, got {partitions!r}")
        with self._lock, write_tx(self._conn):
            self._conn.execute("INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)", (topic, partitions))

    def producer(self) -> Producer:
        """A producer with a buffer of its own, written on this bus's connection (see ``_SqliteProducer``)."""
        producer = _SqliteProducer(self)
        self._producers.add(producer)
        return producer

    @bus_errors
    def _rows(self, topic: str, messages: Sequence[tuple[str, bytes]], headers: Headers = ()) -> list[LogRow]:
        """The log rows of ``messages`` on ``topic``: NotFound for a missing topic, InvalidInput for bad values."""
        encoded = encode_headers(headers)
        with self._lock:
            partitions = topic_partitions(self._conn, check_name("topic", topic), self._partitions)
        return [log_row(topic, partitions, key, value, encoded) for key, value in messages]

    def _append(self, rows: list[LogRow]) -> None:
        """Give ``rows`` the next dense offsets of their partitions and commit them in one transaction."""
        with self._lock, write_tx(self._conn):
            end: dict[TopicPartition, int] = {}
            for tp in {(topic, partition) for topic, partition, *_ in rows}:
                (last,) = self._conn.execute(
                    "SELECT MAX(offset) FROM messages WHERE topic = ? AND partition = ?", tp
                ).fetchone()
                end[tp] = -1 if last is None else last
            params = []
            for topic, partition, key, value, headers in rows:
                end[topic, partition] += 1
                params.append((topic, partition, end[topic, partition], key, value, headers))
            self._conn.executemany(
                "INSERT INTO messages (topic, partition, offset, key, value, headers) VALUES (?, ?, ?, ?, ?, ?)", params
            )

    @bus_errors
    def consumer(self, topics: Sequence[str], group: str) -> Consumer:
        check_name("group", group)
        if isinstance(topics, str) or not topics:
            raise InvalidInput("topics", f"must be a non-empty sequence of topic names, got {topics!r}")
        with self._lock:
            for topic in topics:
                topic_partitions(self._conn, check_name("topic", topic), self._partitions)
            partitions = dict(self._partitions)
        consumer = SqliteConsumer(self.path, self.session_timeout_s, tuple(sorted(set(topics))), group, partitions)
        self._consumers.add(consumer)
        return consumer

    def close(self) -> None:
        """Close every producer made here (flushing it), then every consumer (leaving their groups,
        without committing), then disconnect; the first producer's flush error is raised at the end."""
        failure = close_producers(self._producers)
        for consumer in list(self._consumers):
            consumer.close(commit=False)
        with self._lock:
            self._conn.close()
        if failure is not None:
            raise failure


class _SqliteProducer(Producer):
    """A buffer of rows for one stage, written by its ``flush`` (or ``publish_many``, or once 1,000
    wait) in one transaction on the bus's connection.

    A write that fails (the file locked past the busy timeout, the disk full, a trigger refusing
    the rows) drops the rows it tried and is raised as ``BusError`` by the next ``flush``: none of
    them was written, and the caller, not having committed its input, publishes them again after
    redelivery. Safe to share between threads (calls serialize), though a flush then covers them all.
    """

    def __init__(self, bus: SqliteBus) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._pending: list[LogRow] = []
        self._failed: list[BusError] = []  # writes that failed since the last flush, with how many rows
        self._failed_rows = 0
        self._closed = False

    def publish(self, topic: str, key: str, value: bytes, headers: Headers = ()) -> None:
        rows = self._bus._rows(topic, [(key, value)], headers)
        with self._lock:
            self._check_open()
            self._pending += rows
            if len(self._pending) >= _MAX_PENDING:
                self._write()

    def publish_many(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Queue the pairs and write everything buffered at once, in one transaction (one fsync)."""
        rows = self._bus._rows(topic, messages)
        with self._lock:
            self._check_open()
            self._pending += rows
            self._write()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._write()
        if self._failed:
            failed, rows, self._failed, self._failed_rows = self._failed, self._failed_rows, [], 0
            raise BusError(f"sqlite bus: {rows} messages were not written ({len(failed)} failed writes): {failed[0]}")

    def _write(self) -> None:
        """Append the buffer to the log (lock held); a failure is kept for the next ``flush`` to raise."""
        rows, self._pending = self._pending, []
        if not rows:
            return
        try:
            self._bus._append(rows)
        except sqlite3.Error as e:
            log.warning("sqlite bus write of %d messages failed: %s", len(rows), e)
            self._failed.append(BusError(f"{type(e).__name__}: {e}"))
            self._failed_rows += len(rows)

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("this producer is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._flush()
