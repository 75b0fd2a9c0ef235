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
from winnow.core.domain.audit import verify
from winnow.core.domain.records import Project
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
            # migration 5 chained the old rows: each project's in time order
            assert verify(store.audit_trail("p") + store.audit_trail("q"))[0] == []
            assert [r.n for r in store.audit_trail("p")] == [1, 2, 3, 4]
        finally:
            store.close()

    def test_an_edited_or_deleted_audit_record_breaks_the_chain(self, open_dialect: Callable[[], Dialect]) -> None:
        store = SqlStore(open_dialect())
        try:
            store.create_project(Project("p", ("a", "b")))
            for k in range(5):
                store.audit("p", "op", "export_labels", f"{k} labels", float(k), [f"i{k}"])
            store.audit(None, "admin", "token_create", "admin root", 9.0, ["t1"])
            trail = store.audit_trail("p")
            heads = {"p": trail[-1].hash, "": store.audit_trail()[0].hash}
            assert verify(trail + store.audit_trail(None)) == ([], heads)
            with store.dialect.transaction() as tx:  # someone with the database's password edits one record
                tx.run("UPDATE audit_trail SET detail = ? WHERE chain = ? AND n = ?", ("0 labels", "p", 3))
            assert [str(b) for b in verify(store.audit_trail("p"))[0]] == \
                ["chain 'p' record 3: its content does not match its hash (edited)"]
            with store.dialect.transaction() as tx:  # ... or deletes one and renumbers the rest
                tx.run("UPDATE audit_trail SET detail = ? WHERE chain = ? AND n = ?", ("2 labels", "p", 3))
                tx.run("DELETE FROM audit_trail WHERE chain = ? AND n = ?", ("p", 2))
            assert [str(b) for b in verify(store.audit_trail("p"))[0]] == \
                ["chain 'p' record 2: missing (the next record is number 3)"]
            store.audit("p", "op", "export_labels", "later", 10.0)  # appending still links to the last record
            assert store.audit_trail("p")[-1].n == 6
        finally:
            store.close()
