"""The embedded SQLite store: the store contract plus durability, concurrent leasing and a rough timing."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project
from winnow.core.testing.store_contract import (
    CLASSES,
    LEASE_S,
    P,
    StoreContract,
    items,
    label,
    task,
)


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "store.db")
        yield store
        store.close()


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
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_concurrent_leasing_never_exceeds_overlap(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.create_project(Project(P, CLASSES, overlap=2))
    ids = [f"i{n}" for n in range(40)]
    store.add_items(items(*ids))
    store.add_tasks([task(i, priority=float(n % 5)) for n, i in enumerate(ids)])
    start = threading.Barrier(4)
    leased: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def annotate(who: str) -> None:
        try:
            start.wait()
            while got := store.lease_tasks(P, who, 3, LEASE_S, 0.0, 2):
                leased.extend((who, lease.item_id) for lease in got)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(f"ann{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    if errors:
        raise errors[0]
    assert len(set(leased)) == len(leased)  # no annotator got an item twice
    assert Counter(item_id for _, item_id in leased) == {i: 2 for i in ids}


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
