"""The embedded label store: the one SQL store (:mod:`winnow.core.adapters.sql`) on a SQLite file."""

from __future__ import annotations

from pathlib import Path

from winnow.core.adapters.sql.dialect import SqliteDialect
from winnow.core.adapters.sql.store import SqlStore


class SqliteStore(SqlStore):
    """The label store in one SQLite file (WAL journal, foreign keys enforced), safe across threads
    and processes (see :class:`~winnow.core.adapters.sql.dialect.SqliteDialect`)."""

    def __init__(self, path: Path | str, busy_timeout_ms: int = 10_000) -> None:
        super().__init__(SqliteDialect(path, busy_timeout_ms))
