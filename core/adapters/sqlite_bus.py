"""The embedded bus: a durable append-only log of keyed messages in one SQLite file.

Usable from several threads and several processes on the same file. WAL mode lets readers run
while one writer appends; ``synchronous=FULL`` makes every commit fsync the WAL, so a message is
durable (against power loss, not only a process crash) once the transaction that wrote it returns:
an output store that commits before the bus offset can rely on that order. The cost is one fsync
per transaction, which is why a producer buffers and its ``flush``/``publish_many`` write a batch in one.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, ParamSpec, Sequence, TypeVar

from winnow.core.domain.errors import BusError, InvalidInput, NotFound
from winnow.core.domain.limits import check_topic_name
from winnow.core.ports.bus import (
    Bus,
    Consumer,
    Headers,
    Message,
    Offsets,
    Producer,
    check_offsets,
    partition_for,
)

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")
TopicPartition = tuple[str, int]
_Row = tuple[str, int, str, bytes, str | None]  # topic, partition, key, value, encoded headers

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (topic TEXT NOT NULL, partition INTEGER NOT NULL,"
    " offset INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, headers TEXT,"
    " PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,"
    " partition INTEGER NOT NULL, committed INTEGER NOT NULL, PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS group_members (grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL,"
    " heartbeat REAL NOT NULL, PRIMARY KEY (grp, member)) WITHOUT ROWID",
)
_BUSY_TIMEOUT_S = 30.0
_MAX_BACKOFF_S = 0.05
_MAX_PENDING = 1000


def _bus_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn SQLite failures (locked past the busy timeout, disk full, corrupt file) into BusError."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            raise BusError(f"sqlite bus: {e}") from e

    return wrapper


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: takes the file's write lock up front, so reads inside it are current."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _encode_headers(headers: Headers) -> str | None:
    if not isinstance(headers, tuple) or not all(
        isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], bytes) for h in headers
    ):
        raise InvalidInput("headers", f"must be a tuple of (str, bytes) pairs, got {headers!r:.80}")
    return json.dumps([[k, v.hex()] for k, v in headers]) if headers else None


def _decode_headers(text: str | None) -> Headers:
    return tuple((k, bytes.fromhex(v)) for k, v in json.loads(text)) if text else ()


def _check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"must be a non-empty string, got {value!r}")
    return value


def _row(topic: str, partitions: int, key: str, value: bytes, headers: str | None) -> _Row:
    if not isinstance(key, str):
        raise InvalidInput("key", f"must be a string, got {type(key).__name__}")
    if not isinstance(value, bytes):
        raise InvalidInput("value", f"must be bytes, got {type(value).__name__}")
    return topic, partition_for(key, partitions), key, value, headers


def _topic_partitions(conn: sqlite3.Connection, topic: str, cache: dict[str, int]) -> int:
    """Partition count of ``topic`` (immutable once created, so cached); NotFound if it does not exist."""
    if topic not in cache:
        row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
        if row is None:
            raise NotFound("topic", f"no topic named {topic!r}; create it first")
        cache[topic] = row[0]
    return cache[topic]


def _assign(members: dict[str, frozenset[str]], partitions: dict[str, int], member: str) -> set[TopicPartition]:
    """Round-robin over sorted (topic, partition) across sorted live member ids (Kafka's RoundRobinAssignor).

    A member is skipped for partitions of topics it does not read, so members with different topic
    lists still get one owner per partition; every member computes the same table from the same rows.
    """
    ids = sorted(members)
    owned: set[TopicPartition] = set()
    turn = 0
    for tp in sorted((t, p) for t in set().union(*members.values()) for p in range(partitions[t])):
        while tp[0] not in members[ids[turn % len(ids)]]:
            turn += 1
        if ids[turn % len(ids)] == member:
            owned.add(tp)
        turn += 1
    return owned


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
        self._consumers: weakref.WeakSet[_SqliteConsumer] = weakref.WeakSet()
        try:
            self._conn = _connect(self.path)
            with _write(self._conn):
                for statement in _SCHEMA:
                    self._conn.execute(statement)
        except sqlite3.Error as e:
            raise BusError(f"sqlite bus: cannot open {self.path}: {e}") from e

    @_bus_errors
    def create_topic(self, topic: str, partitions: int = 1) -> None:
        check_topic_name(_check_name("topic", topic))  # Kafka's rule, so a name works on both buses
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise InvalidInput("partitions", f"must be an integer >= 1, got {partitions!r}")
        with self._lock, _write(self._conn):
            self._conn.execute("INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)", (topic, partitions))

    def producer(self) -> Producer:
        """A producer with a buffer of its own, written on this bus's connection (see ``_SqliteProducer``)."""
        producer = _SqliteProducer(self)
        self._producers.add(producer)
        return producer

    @_bus_errors
    def _rows(self, topic: str, messages: Sequence[tuple[str, bytes]], headers: Headers = ()) -> list[_Row]:
        """The log rows of ``messages`` on ``topic``: NotFound for a missing topic, InvalidInput for bad values."""
        encoded = _encode_headers(headers)
        with self._lock:
            partitions = _topic_partitions(self._conn, _check_name("topic", topic), self._partitions)
        return [_row(topic, partitions, key, value, encoded) for key, value in messages]

    def _append(self, rows: list[_Row]) -> None:
        """Give ``rows`` the next dense offsets of their partitions and commit them in one transaction."""
        with self._lock, _write(self._conn):
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

    @_bus_errors
    def consumer(self, topics: Sequence[str], group: str) -> Consumer:
        _check_name("group", group)
        if isinstance(topics, str) or not topics:
            raise InvalidInput("topics", f"must be a non-empty sequence of topic names, got {topics!r}")
        with self._lock:
            for topic in topics:
                _topic_partitions(self._conn, _check_name("topic", topic), self._partitions)
            partitions = dict(self._partitions)
        consumer = _SqliteConsumer(self.path, self.session_timeout_s, tuple(sorted(set(topics))), group, partitions)
        self._consumers.add(consumer)
        return consumer

    def close(self) -> None:
        """Close every producer made here (flushing it), then every consumer (leaving their groups,
        without committing), then disconnect; the first producer's flush error is raised at the end."""
        failure: BusError | None = None
        for producer in list(self._producers):
            try:
                producer.close()
            except BusError as e:
                failure = failure or e
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
        self._pending: list[_Row] = []
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


def _heartbeat_loop(ref: weakref.ref[_SqliteConsumer], stop: threading.Event, interval_s: float) -> None:
    """Body of a consumer's heartbeat thread: beat whenever one is due, until ``stop`` is set.

    It holds the consumer only weakly between beats, so a consumer dropped without ``close`` is
    collected, stops beating and is dropped by the group after the session timeout, as a crashed one.
    """
    wait_s = interval_s
    while not stop.wait(wait_s):
        consumer = ref()
        if consumer is None:
            return
        wait_s = consumer._beat(interval_s)
        del consumer


class _SqliteConsumer(Consumer):
    """One group member with its own connection; safe to share between threads (calls serialize).

    A daemon thread heartbeats every third of the session timeout, on the same connection under
    the same lock as the calls: the member stays alive while the caller works on a batch, however
    long, and dies with its process. The thread only keeps the member alive: ``poll``, ``commit``
    and ``lag`` still re-read the group each time, so they follow members joining and dying.
    """

    def __init__(
        self, path: Path, session_timeout_s: float, topics: tuple[str, ...], group: str, partitions: dict[str, int]
    ) -> None:
        self._topics = topics
        self._group = group
        self._session_timeout_s = session_timeout_s
        self._member = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._partitions = partitions
        self._positions: dict[TopicPartition, int] = {}  # owned partition -> next offset to hand out
        self._handed: dict[TopicPartition, int] = {}  # partition -> after the furthest message ever handed out
        self._rotation = 0
        self._closed = False
        self._conn = _connect(path)
        self._last_heartbeat = 0.0
        self._heartbeat(time.time())
        self._stop = threading.Event()
        weakref.finalize(self, self._stop.set)
        self._heartbeat_thread = threading.Thread(
            target=_heartbeat_loop,
            args=(weakref.ref(self), self._stop, session_timeout_s / 3),
            name="winnow-sqlite-heartbeat",
            daemon=True,
        )
        self._heartbeat_thread.start()

    def _heartbeat(self, now: float) -> None:
        """Mark this member alive (re-joining if the group dropped it) and drop dead members' rows.

        A member silent for longer than the session timeout may have lost its partitions to others
        meanwhile, so it forgets its positions and restarts them from the group's committed offsets.
        """
        with _write(self._conn):
            updated = self._conn.execute(
                "UPDATE group_members SET heartbeat = ? WHERE grp = ? AND member = ?", (now, self._group, self._member)
            ).rowcount
            if not updated:
                self._conn.execute(
                    "INSERT INTO group_members (grp, member, topics, heartbeat) VALUES (?, ?, ?, ?)",
                    (self._group, self._member, json.dumps(self._topics), now),
                )
            self._conn.execute(
                "DELETE FROM group_members WHERE grp = ? AND heartbeat < ?",
                (self._group, now - self._session_timeout_s),
            )
        if not updated or now - self._last_heartbeat > self._session_timeout_s:
            if self._positions:  # the heartbeat thread was stalled (or the process stopped) past the timeout
                log.warning("bus member silent past the session timeout restarts from the commits"
                            " group=%s silent_s=%.1f", self._group, now - self._last_heartbeat)
            self._positions.clear()
        self._last_heartbeat = now

    def _beat(self, interval_s: float) -> float:
        """The heartbeat thread's beat, skipped if ``poll`` sent one lately; returns the seconds to the next.

        A failure (the file locked past the busy timeout, disk full) is logged and retried next
        interval: the member only dies if none gets through within the session timeout.
        """
        with self._lock:
            if self._closed:
                return interval_s
            now = time.time()
            due = self._last_heartbeat + interval_s
            if now < due:
                return due - now
            try:
                self._heartbeat(now)
            except sqlite3.Error as e:
                log.warning("bus heartbeat failed group=%s: %s", self._group, e)
            return interval_s

    def _rebalance(self, now: float) -> None:
        """Re-read the live members, keep the partitions still owned, start new ones from the commit."""
        members = {
            member: frozenset(json.loads(topics))
            for member, topics in self._conn.execute(
                "SELECT member, topics FROM group_members WHERE grp = ? AND heartbeat >= ?",
                (self._group, now - self._session_timeout_s),
            )
        }
        if self._member not in members:  # dropped by the others: own nothing until the next heartbeat
            self._positions.clear()
            self._last_heartbeat = 0.0
            return
        for topic in set().union(*members.values()):
            _topic_partitions(self._conn, topic, self._partitions)
        owned = _assign(members, self._partitions, self._member)
        new = owned - self._positions.keys()
        for tp in self._positions.keys() - owned:
            del self._positions[tp]
        if new:
            committed = self._committed()
            self._positions.update({tp: committed.get(tp, 0) for tp in new})

    def _committed(self) -> dict[TopicPartition, int]:
        rows = self._conn.execute("SELECT topic, partition, committed FROM group_offsets WHERE grp = ?", (self._group,))
        return {(t, p): c for t, p, c in rows}

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"consumer of group {self._group!r} is closed")

    @_bus_errors
    def poll(self, max_messages: int = 500, timeout_s: float = 0.0) -> list[Message]:
        """Up to ``max_messages`` after this member's positions; waits with a backoff of 1 to 50 ms."""
        if not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1:
            raise InvalidInput("max_messages", f"must be an integer >= 1, got {max_messages!r}")
        if not isinstance(timeout_s, (int, float)) or not 0 <= timeout_s < float("inf"):
            raise InvalidInput("timeout_s", f"must be a finite number >= 0, got {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        backoff_s = 0.001
        while True:
            with self._lock:
                self._check_open()
                now = time.time()
                if now - self._last_heartbeat >= self._session_timeout_s / 3:
                    self._heartbeat(now)
                self._rebalance(now)
                batch = self._fetch(max_messages)
            remaining_s = deadline - time.monotonic()
            if batch or remaining_s <= 0:
                return batch
            time.sleep(min(backoff_s, remaining_s))
            backoff_s = min(2 * backoff_s, _MAX_BACKOFF_S)

    def _fetch(self, max_messages: int) -> list[Message]:
        """Read owned partitions in offset order, starting at a rotating partition so none starves."""
        owned = sorted(self._positions)
        if not owned:
            return []
        start = self._rotation % len(owned)
        self._rotation += 1
        batch: list[Message] = []
        for topic, partition in owned[start:] + owned[:start]:
            rows = self._conn.execute(
                "SELECT offset, key, value, headers FROM messages WHERE topic = ? AND partition = ? AND offset >= ?"
                " ORDER BY offset LIMIT ?",
                (topic, partition, self._positions[topic, partition], max_messages - len(batch)),
            ).fetchall()
            if rows:
                self._positions[topic, partition] = rows[-1][0] + 1
                self._handed[topic, partition] = max(self._handed.get((topic, partition), 0), rows[-1][0] + 1)
                batch.extend(Message(topic, k, v, partition, o, _decode_headers(h)) for o, k, v, h in rows)
            if len(batch) == max_messages:
                break
        return batch

    @_bus_errors
    def commit(self, offsets: Offsets | None = None) -> None:
        """Write this member's positions (or ``offsets``) for the partitions it still owns, after
        re-reading the group.

        Partitions lost to a rebalance since the last poll are not written: their new owner started
        from the previous commit, so the messages handed out here from them will be handed out again.
        """
        with self._lock:
            self._check_open()
            self._commit(offsets)

    def _commit(self, offsets: Offsets | None = None) -> None:
        if offsets is not None:
            check_offsets(offsets, self._handed)  # refuse a bad offset before anything is written
        with _write(self._conn):
            asked = set(self._positions) if offsets is None else set(offsets)
            self._rebalance(time.time())
            if lost := asked - self._positions.keys():
                log.warning("bus commit skips partitions lost to a rebalance group=%s lost=%s", self._group, lost)
            positions = self._positions if offsets is None else {
                tp: offset for tp, offset in offsets.items() if tp in self._positions}
            self._conn.executemany(
                "INSERT INTO group_offsets (grp, topic, partition, committed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (grp, topic, partition) DO UPDATE SET committed = excluded.committed",
                [(self._group, t, p, offset) for (t, p), offset in positions.items()],
            )

    @_bus_errors
    def close(self, commit: bool = False) -> None:
        """Leave the group at once (its partitions move on the others' next poll); idempotent.

        Returns once the heartbeat thread has stopped. If the commit or the leave fails, the
        consumer stays open, in the group and heartbeating, as before the call.
        """
        with self._lock:
            if self._closed:
                return
            if commit:
                self._commit()
            with _write(self._conn):
                self._conn.execute(
                    "DELETE FROM group_members WHERE grp = ? AND member = ?", (self._group, self._member)
                )
            self._shut()
        self._heartbeat_thread.join()

    def _shut(self) -> None:
        """Stop heartbeating and disconnect (lock held): the thread, waiting or about to beat, sees it and ends."""
        self._closed = True
        self._stop.set()
        self._conn.close()

    @_bus_errors
    def lag(self) -> int:
        """Sum over the partitions owned now of (end offset - group's committed offset)."""
        with self._lock:
            self._check_open()
            self._rebalance(time.time())
            committed = self._committed()
            total = 0
            for topic, partition in self._positions:
                (end,) = self._conn.execute(
                    "SELECT COALESCE(MAX(offset) + 1, 0) FROM messages WHERE topic = ? AND partition = ?",
                    (topic, partition),
                ).fetchone()
                total += end - committed.get((topic, partition), 0)
            return total
