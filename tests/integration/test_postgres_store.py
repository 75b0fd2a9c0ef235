"""The PostgreSQL store against a real server: the store contract plus concurrent leasers on separate
connections, durability across reconnecting, and recovery from a lost connection."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from winnow.core.adapters.postgres_store import PostgresStore
from winnow.core.domain.records import Project
from winnow.core.testing.store_contract import (
    CLASSES,
    LEASE_S,
    P,
    StoreContract,
    items,
    label,
    task,
)

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def open_store(self, postgres_schema_dsn: str) -> Callable[[], PostgresStore]:
        return lambda: PostgresStore(postgres_schema_dsn)


def test_data_survives_reconnecting(postgres_schema_dsn: str) -> None:
    store = PostgresStore(postgres_schema_dsn)
    store.create_project(Project(P, CLASSES))
    store.add_items(items("b", "a"))
    store.put_embeddings(P, ["a"], np.arange(4, dtype=np.float32)[None])
    store.put_label(label("b", threshold=float("inf")))
    store.close()
    store = PostgresStore(postgres_schema_dsn)
    assert store.get_project(P) == Project(P, CLASSES)
    assert store.unlabeled_ids(P) == ["a"]
    assert np.array_equal(store.get_embeddings(P, ["a"]), np.arange(4, dtype=np.float32)[None])
    assert store.labels(P) == [label("b", threshold=float("inf"))]
    store.close()
    with psycopg.connect(postgres_schema_dsn) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]


def test_concurrent_leasers_on_separate_connections_never_exceed_overlap(postgres_schema_dsn: str) -> None:
    setup = PostgresStore(postgres_schema_dsn)
    setup.create_project(Project(P, CLASSES, overlap=2))
    ids = [f"i{n}" for n in range(40)]
    setup.add_items(items(*ids))
    setup.add_tasks([task(i, priority=float(n % 5)) for n, i in enumerate(ids)])
    setup.close()
    stores = [PostgresStore(postgres_schema_dsn) for _ in range(4)]  # one connection (session) each
    start = threading.Barrier(len(stores))
    leased: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def annotate(store: PostgresStore, who: str) -> None:
        try:
            start.wait()
            while got := store.lease_tasks(P, who, 3, LEASE_S, 0.0, 2):
                leased.extend((who, lease.item_id) for lease in got)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(s, f"ann{k}")) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    if errors:
        raise errors[0]
    assert len(set(leased)) == len(leased)  # no annotator got an item twice
    assert Counter(item_id for _, item_id in leased) == {i: 2 for i in ids}


def test_reconnects_after_losing_the_connection(postgres_schema_dsn: str) -> None:
    app = f"winnow-test-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(make_conninfo(postgres_schema_dsn, application_name=app))
    store.create_project(Project(P, CLASSES))
    store.add_items(items("a", "b"))
    with psycopg.connect(postgres_schema_dsn, autocommit=True) as admin:
        terminated = admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    assert terminated == [(True,)]
    with pytest.raises(psycopg.OperationalError):
        store.count_items(P)
    assert store.count_items(P) == 2
    store.close()
