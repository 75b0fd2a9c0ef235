"""The distributed label store: the one SQL store (:mod:`winnow.core.adapters.sql`) on PostgreSQL."""

from __future__ import annotations

from winnow.core.adapters.sql.dialect import PostgresDialect
from winnow.core.adapters.sql.store import SqlStore


class PostgresStore(SqlStore):
    """The label store in one PostgreSQL database (the schema first on the DSN's search_path); processes
    sharing it stay consistent (see :class:`~winnow.core.adapters.sql.dialect.PostgresDialect`)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(PostgresDialect(dsn))
