"""The embedded SQLite store: the store contract plus durability, the schema migration and a rough timing."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from winnow.core.adapters.sql.dialect import SqliteDialect
from winnow.core.adapters.sql.migrations import MIGRATIONS, migrate
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project
from winnow.core.loop.close import stream_status
from winnow.core.testing.store_contract import CLASSES, P, StoreContract, items, label


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> Callable[[], SqliteStore]:
        return lambda: SqliteStore(tmp_path / "store.db")


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    store.create_project(Project(P, CLASSES))
    store.add_items(items("b", "a"))
    store.put_embeddings(P, ["a"], np.arange(4, dtype=np.float32)[None])
    store.put_label(label("b"))
    store.close()
    store = SqliteStore(path)
    assert store.get_project(P) == Project(P, CLASSES)
    assert store.unlabeled_ids(P) == ["a"]
    assert np.array_equal(store.get_embeddings(P, ["a"]), np.arange(4, dtype=np.float32)[None])
    assert store.labels(P) == [label("b")]
    store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_version_1_database_keeps_its_close_requests(tmp_path: Path) -> None:
    """Before migration 2, close requests and served closes were audit rows: opening such a
    database moves them into the close_requests table (the audit rows stay)."""
    path = tmp_path / "store.db"
    dialect = SqliteDialect(path)
    assert migrate(dialect, upto=1) == 1
    with dialect.transaction() as tx:
        tx.run("INSERT INTO projects VALUES ('p', '[\"a\"]', 25, 100, 0.98, 'random', 1, 'v1', 0.0)")
        tx.run("INSERT INTO projects VALUES ('q', '[\"a\"]', 25, 100, 0.98, 'random', 1, 'v1', 0.0)")
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
    store = SqliteStore(path)
    assert [(r.request_id, r.items, r.served_at, r.tasks, r.low_confidence) for r in store.close_requests("p")] == \
        [("r1", 3, 2.0, 2, 1), ("r2", 5, None, 0, 0)]
    assert stream_status(store, "p").state == "closing"
    assert [r.request_id for r in store.close_requests("q", pending_only=True)] == ["r3"]
    assert len(store.audit_log("p")) == 4
    store.close()


def test_rough_write_timing(tmp_path: Path) -> None:
    """Prints (never asserts) how long bulk writes take; run with ``-s`` to see it."""
    store = SqliteStore(tmp_path / "store.db")
    store.create_project(Project(P, CLASSES))
    n, dim = 10_000, 384
    batch = [Item(P, f"item-{k}", f"some text number {k}", float(k)) for k in range(n)]
    t0 = time.perf_counter()
    assert store.add_items(batch) == n
    t1 = time.perf_counter()
    store.put_embeddings(P, [i.item_id for i in batch], np.random.default_rng(0).random((n, dim), np.float32))
    t2 = time.perf_counter()
    assert store.get_embeddings(P, [i.item_id for i in batch]).shape == (n, dim)
    t3 = time.perf_counter()
    print(f"\nadd_items {n}: {t1 - t0:.3f} s; put_embeddings {n}x{dim}: {t2 - t1:.3f} s; "
          f"get_embeddings: {t3 - t2:.3f} s")
    store.close()
