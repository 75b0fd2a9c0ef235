"""The embedded SQLite store: the SQL store contract plus durability and bulk writes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from winnow.core.adapters.sql.dialect import SqliteDialect
from winnow.core.adapters.sql.migrations import MIGRATIONS
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project
from winnow.core.testing.sql_store_contract import SqlStoreContract
from winnow.core.testing.store_contract import CLASSES, P, items, label


class TestSqliteStore(SqlStoreContract):
    @pytest.fixture
    def open_dialect(self, tmp_path: Path) -> Callable[[], SqliteDialect]:
        return lambda: SqliteDialect(tmp_path / "store.db")


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


def test_bulk_writes_round_trip(tmp_path: Path) -> None:
    """10,000 items and their 384-d vectors in one call each (how the loop writes), read back exactly."""
    store = SqliteStore(tmp_path / "store.db")
    store.create_project(Project(P, CLASSES))
    n, dim = 10_000, 384
    batch = [Item(P, f"item-{k}", f"some text number {k}", float(k)) for k in range(n)]
    ids = [i.item_id for i in batch]
    vectors = np.random.default_rng(0).random((n, dim), np.float32)  # [n, dim]
    assert store.add_items(batch) == n
    store.put_embeddings(P, ids, vectors)
    assert np.array_equal(store.get_embeddings(P, ids[::-1]), vectors[::-1])
    assert store.get_items(P, ids[-2:]) == batch[-2:]
    store.close()
