"""The PostgreSQL store against a real server: the SQL store contract (concurrent leasers on
separate connections and migrating an older database included), durability across reconnecting, and recovery from a lost connection."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from winnow.core.adapters.sql.migrations import MIGRATIONS
from winnow.core.adapters.postgres_store import PostgresStore
from winnow.core.adapters.sql.dialect import PostgresDialect
from winnow.core.domain.records import Project
from winnow.core.testing.sql_store_contract import SqlStoreContract
from winnow.core.testing.store_contract import CLASSES, P, items, label

pytestmark = pytest.mark.postgres


class TestPostgresStore(SqlStoreContract):
    @pytest.fixture
    def open_dialect(self, postgres_schema_dsn: str) -> Callable[[], PostgresDialect]:
        return lambda: PostgresDialect(postgres_schema_dsn)


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
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


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
