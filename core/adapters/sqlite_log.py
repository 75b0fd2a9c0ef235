"""The SQLite log's file: its tables, connections, write transactions and row encoding, shared by
the bus (``sqlite_bus``) and its consumer group members (``sqlite_group``)."""

from __future__ import annotations

import functools
import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, ParamSpec, TypeVar

from winnow.core.domain.errors import BusError, InvalidInput, NotFound
from winnow.core.ports.bus import Headers, partition_for

_P = ParamSpec("_P")
_R = TypeVar("_R")
TopicPartition = tuple[str, int]
LogRow = tuple[str, int, str, bytes, str | None]  # topic, partition, key, value, encoded headers

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (topic TEXT NOT NULL, partition INTEGER NOT NULL,"
    " offset INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, headers TEXT,"
    " PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,"
    " partition INTEGER NOT NULL, committed INTEGER NOT NULL, PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS group_members (grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL,"
    " heartbeat REAL NOT NULL, PRIMARY KEY (grp, member)) WITHOUT ROWID",
)
BUSY_TIMEOUT_S = 30.0


def bus_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn SQLite failures (locked past the busy timeout, disk full, corrupt file) into BusError."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            raise BusError(f"sqlite bus: {e}") from e

    return wrapper


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")  # an erased record's bytes are zeroed, not left in free pages
    return conn


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: takes the file's write lock up front, so reads inside it are current."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def encode_headers(headers: Headers) -> str | None:
    if not isinstance(headers, tuple) or not all(
        isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], bytes) for h in headers
    ):
        raise InvalidInput("headers", f"must be a tuple of (str, bytes) pairs, got {headers!r:.80}")
    return json.dumps([[k, v.hex()] for k, v in headers]) if headers else None


def decode_headers(text: str | None) -> Headers:
    return tuple((k, bytes.fromhex(v)) for k, v in json.loads(text)) if text else ()


def check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"must be a non-empty string, got {value!r}")
    return value


def log_row(topic: str, partitions: int, key: str, value: bytes, headers: str | None) -> LogRow:
    if not isinstance(key, str):
        raise InvalidInput("key", f"must be a string, got {type(key).__name__}")
    if not isinstance(value, bytes):
        raise InvalidInput("value", f"must be bytes, got {type(value).__name__}")
    return topic, partition_for(key, partitions), key, value, headers


def topic_partitions(conn: sqlite3.Connection, topic: str, cache: dict[str, int]) -> int:
    """Partition count of ``topic`` (immutable once created, so cached); NotFound if it does not exist."""
    if topic not in cache:
        row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
        if row is None:
            raise NotFound("topic", f"no topic named {topic!r}; create it first")
        cache[topic] = row[0]
    return cache[topic]
