"""The SQL store's own contract, on top of the store contract: its schema migrations bring an older
database forward with its data. Subclass ``SqlStoreContract`` and provide ``open_dialect`` (a
function opening a new dialect object on one fresh database each time it is called)."""

from __future__ import annotations

import json
from typing import Callable

import pytest
from winnow.core.adapters.sql.dialect import Dialect
from winnow.core.adapters.sql.migrations import MIGRATIONS, migrate
from winnow.core.adapters.sql.store import SqlStore
from winnow.core.loop.close import stream_status
from winnow.core.testing.store_contract import StoreContract


class SqlStoreContract(StoreContract):
    @pytest.fixture
    def open_store(self, open_dialect: Callable[[], Dialect]) -> Callable[[], SqlStore]:
        return lambda: SqlStore(open_dialect())

    def test_migrations_are_recorded_once(self, open_dialect: Callable[[], Dialect]) -> None:
        SqlStore(open_dialect()).close()
        dialect = open_dialect()
        assert migrate(dialect) == len(MIGRATIONS)  # nothing left to apply
        with dialect.transaction(write=False) as tx:
            assert tx.all("SELECT version FROM schema_version ORDER BY version") == \
                [(v,) for v in range(1, len(MIGRATIONS) + 1)]
        dialect.close()

    def test_a_version_1_database_keeps_its_close_requests(self, open_dialect: Callable[[], Dialect]) -> None:
        """Before migration 2, close requests and served closes were audit rows: opening such a
        database moves them into their own table (the audit rows stay)."""
        dialect = open_dialect()
        assert migrate(dialect, upto=1) == 1
        with dialect.transaction() as tx:
            for name in ("p", "q"):
                tx.run("INSERT INTO projects VALUES (?, ?, 25, 100, 0.98, 'random', 1, 'v1', 0.0)",
                       (name, dialect.array(["a"])))
            for project, at, actor, action, detail in [
                ("p", 1.0, "op", "close_stream", {"request": "r1", "items": 3}),
                ("p", 2.0, "selector", "stream_closed", {"requests": ["r1"], "tasks": 2, "low_confidence": 1}),
                ("p", 3.0, "op", "export_labels", "3 labels"),
                ("p", 4.0, "op", "close_stream", {"request": "r2", "items": 5}),
                ("q", 5.0, "op", "close_stream", {"request": "r3", "items": 0}),
            ]:
                tx.run("INSERT INTO audit (project, time, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                       (project, at, actor, action, detail if isinstance(detail, str) else json.dumps(detail)))
        dialect.close()
        store = SqlStore(open_dialect())
        try:
            assert [(r.request_id, r.actor, r.requested_at, r.items, r.served_at, r.tasks, r.low_confidence)
                    for r in store.close_requests("p")] == [("r1", "op", 1.0, 3, 2.0, 2, 1), ("r2", "op", 4.0, 5, None, 0, 0)]
            assert stream_status(store, "p").state == "closing"
            assert [r.request_id for r in store.close_requests("q", pending_only=True)] == ["r3"]
            assert len(store.audit_log("p")) == 4
        finally:
            store.close()
