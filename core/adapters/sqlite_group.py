"""Consumer group members of the SQLite log: heartbeats, the round-robin assignment of partitions
to live members, poll, commit and lag on one connection per member."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from pathlib import Path

from winnow.core.adapters.sqlite_log import (
    TopicPartition,
    bus_errors,
    connect,
    decode_headers,
    topic_partitions,
    write_tx,
)
from winnow.core.domain.errors import BusError, InvalidInput
from winnow.core.ports.bus import Consumer, Message, Offsets, check_offsets

log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 0.05


def assign(members: dict[str, frozenset[str]], partitions: dict[str, int], member: str) -> set[TopicPartition]:
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


def _heartbeat_loop(ref: weakref.ref[SqliteConsumer], stop: threading.Event, interval_s: float) -> None:
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


class SqliteConsumer(Consumer):
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
        self._conn = connect(path)
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
        with write_tx(self._conn):
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
            topic_partitions(self._conn, topic, self._partitions)
        owned = assign(members, self._partitions, self._member)
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

    @bus_errors
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
                batch.extend(Message(topic, k, v, partition, o, decode_headers(h)) for o, k, v, h in rows)
            if len(batch) == max_messages:
                break
        return batch

    @bus_errors
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
        with write_tx(self._conn):
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

    @bus_errors
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
            with write_tx(self._conn):
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

    @bus_errors
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
