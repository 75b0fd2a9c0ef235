"""What differs between SQLite and PostgreSQL, and nothing else: connections and transactions,
placeholders, lists bound as one parameter, column types, locks, and per-row insert results.

The store writes every statement once, with ``?`` placeholders, and runs it through :class:`Tx`.
``psycopg`` is imported only when a :class:`PostgresDialect` is made.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

Row = tuple[Any, ...]

_MIGRATION_LOCK = 0x77696E6E6F77  # PostgreSQL advisory lock key ("winnow") held while migrating


class Tx:
    """One open transaction of a dialect: statements use ``?`` placeholders."""

    def __init__(self, dialect: Dialect, handle: Any) -> None:
        self.dialect, self._handle = dialect, handle

    def _run(self, sql: str, params: Sequence[Any] | dict, binary: bool = False) -> Any:
        return self.dialect.execute(self._handle, self.dialect.placeholders(sql), params, binary)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row, or None."""
        return self._run(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = (), binary: bool = False) -> list[Row]:
        """Every row (``binary``: PostgreSQL sends them in its binary format, faster for bytea)."""
        return self._run(sql, params, binary).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""
        return max(self._run(sql, params).rowcount, 0)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a statement once per row; how many rows they changed in all."""
        if not rows:
            return 0
        return max(self.dialect.executemany(self._handle, self.dialect.placeholders(sql), rows).rowcount, 0)

    def inserted(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Run an ``INSERT ... ON CONFLICT DO NOTHING`` once per row, in order (each sees the rows
        the earlier ones wrote); True where it wrote its row."""
        if not rows:
            return []
        return self.dialect.inserted(self._handle, self.dialect.placeholders(sql), rows)


class Dialect(ABC):
    """One database's way of doing what the store needs. ``types`` fills the ``{name}`` slots of
    the migrations' DDL; ``ids_table`` is a table expression ``j(value, key)`` over a list bound as
    one parameter (see :meth:`array`), ``key`` giving the list's order."""

    name: str
    types: dict[str, str]
    ids_table: str
    for_update: str = ""  # appended to a SELECT whose picked rows the transaction then changes

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one connection per dialect object, one transaction at a time

    @abstractmethod
    def transaction(self, write: bool = True) -> Any:
        """A context manager giving a :class:`Tx`: committed on success, rolled back on any error."""

    def placeholders(self, sql: str) -> str:
        return sql

    @abstractmethod
    def execute(self, handle: Any, sql: str, params: Sequence[Any] | dict, binary: bool) -> Any: ...

    @abstractmethod
    def executemany(self, handle: Any, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...

    @abstractmethod
    def inserted(self, handle: Any, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]: ...

    @abstractmethod
    def array(self, values: Sequence[str]) -> Any:
        """A list of strings as one parameter (for ``ids_table`` and list columns)."""

    @abstractmethod
    def from_array(self, value: Any) -> list[str]:
        """A list column's value back as a list."""

    def lock_project(self, tx: Tx, project: str) -> None:
        """Queue behind every other transaction that holds this project's task lock (leasing,
        re-ranking, deleting, labelling) until this one ends. No-op where a write transaction
        already excludes every other writer."""

    def lock_migrations(self, tx: Tx) -> None:
        """Make processes that open together migrate one after the other."""

    def lock_audit(self, tx: Tx, chain: str) -> None:
        """Queue behind every other transaction appending to this audit chain until this one ends
        (each record links to the one before it). No-op where writers are serialised anyway."""

    def scrub(self) -> None:
        """After an erase: remove what the database keeps of deleted rows outside its tables, where it
        can. No-op on PostgreSQL (autovacuum reclaims dead tuples; encrypt its disk)."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDialect(Dialect):
    """One SQLite file (WAL journal, foreign keys enforced). One connection, guarded by a lock,
    serves every thread: SQLite admits one writer at a time anyway, so sharing costs no write
    throughput, never meets ``SQLITE_BUSY`` inside the process, and makes each transaction
    trivially atomic. Writes open ``BEGIN IMMEDIATE``, so other processes (and other stores on the
    same file) are serialised too, waiting up to ``busy_timeout_ms``."""

    name = "sqlite"
    types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "text_list": "TEXT"}
    ids_table = "json_each(?) AS j"

    def __init__(self, path: Path | str, busy_timeout_ms: int = 10_000) -> None:
        super().__init__()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA secure_delete = ON")  # deleted rows are zeroed, not left in free pages

    def scrub(self) -> None:
        """Truncate the write-ahead log, whose frames still hold the pages as they were before a
        delete (best effort: a reader in another process may hold it; the next checkpoint does it)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Tx(self, self._conn)
            except BaseException:
                if self._conn.in_transaction:  # some errors (disk full) already rolled back
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def execute(self, handle: sqlite3.Connection, sql: str, params: Sequence[Any] | dict, binary: bool) -> Any:
        return handle.execute(sql, params)

    def executemany(self, handle: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return handle.executemany(sql, rows)

    def inserted(self, handle: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        return [handle.execute(sql, row).rowcount == 1 for row in rows]

    def array(self, values: Sequence[str]) -> str:
        return json.dumps(list(values))

    def from_array(self, value: str) -> list[str]:
        return json.loads(value)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDialect(Dialect):
    """One PostgreSQL database (the schema first on the DSN's search_path). One connection per
    store, guarded by a lock, serves every thread of a process (each call is one short
    transaction; run more processes to scale). Cross-process safety comes from the database:
    idempotent writes are ``INSERT ... ON CONFLICT DO NOTHING``, leasing takes a transaction-level
    advisory lock per project and locks the picked task rows. A call that finds the connection lost
    raises ``psycopg.OperationalError`` and the next call reconnects; every write is idempotent,
    so retrying a call whose commit went unconfirmed is safe."""

    name = "postgres"
    types = {"serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "blob": "BYTEA", "text_list": "TEXT[]"}
    ids_table = "unnest(?::text[]) WITH ORDINALITY AS j(value, key)"
    for_update = " FOR UPDATE OF t"

    def __init__(self, dsn: str) -> None:
        import psycopg  # only the distributed mode needs it

        super().__init__()
        self._psycopg, self._dsn = psycopg, dsn
        self._conn = psycopg.connect(dsn, autocommit=True)

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        with self._lock:
            if self._conn.broken:
                self._conn = self._psycopg.connect(self._dsn, autocommit=True)
            with self._conn.transaction(), self._conn.cursor() as cur:
                yield Tx(self, cur)

    def placeholders(self, sql: str) -> str:
        return _pyformat(sql)

    def execute(self, handle: Any, sql: str, params: Sequence[Any] | dict, binary: bool) -> Any:
        return handle.execute(sql, params, binary=binary)

    def executemany(self, handle: Any, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        handle.executemany(sql, rows)
        return handle

    def inserted(self, handle: Any, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        # one statement per row, pipelined; each returns a row when it wrote one
        handle.executemany(sql + " RETURNING 1", rows, returning=True)
        written = []
        while True:  # one result per statement (Cursor.results() needs psycopg 3.3)
            written.append(handle.fetchone() is not None)
            if not handle.nextset():
                return written

    def array(self, values: Sequence[str]) -> list[str]:
        return list(values)

    def from_array(self, value: list[str]) -> list[str]:
        return value

    def lock_project(self, tx: Tx, project: str) -> None:
        tx.one("SELECT pg_advisory_xact_lock(hashtextextended('winnow.tasks:' || ?, 0))", (project,))

    def lock_migrations(self, tx: Tx) -> None:
        tx.one("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def lock_audit(self, tx: Tx, chain: str) -> None:
        tx.one("SELECT pg_advisory_xact_lock(hashtextextended('winnow.audit:' || ?, 0))", (chain,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
