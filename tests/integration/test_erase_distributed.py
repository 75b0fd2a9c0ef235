"""Erasure on Kafka and PostgreSQL: after an owner's erase, no table of the store, no record of the
project's topics (nor, for a broker this session started, any byte of its log segments), no file of
the embedding cache and no later export holds the erased text; the selector has forgotten the items."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from winnow.bench.cluster import Broker
from winnow.core.access.tokens import issue
from winnow.core.adapters.postgres_store import PostgresStore
from winnow.core.domain.records import Item
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import STAGES, topic
from winnow.core.ml.encoder import CachedEncoder, EmbeddingCache
from winnow.core.ml.runtime import OnnxRuntime
from winnow.core.testing.fakes import CrcEncoder
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.client import WinnowClient
from winnow.services.kafka_bus import KafkaBus

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _tables_holding(dsn: str, needle: str) -> list[str]:
    """Tables of the store's schema with a row whose text form contains ``needle``."""
    with psycopg.connect(dsn, autocommit=True) as db:
        tables = [r[0] for r in db.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = current_schema()")]
        return [t for t in tables if db.execute(sql.SQL("SELECT COUNT(*) FROM {} t WHERE t::text LIKE %s").format(
            sql.Identifier(t)), (f"%{needle}%",)).fetchone()[0]]


def _records_holding(broker: Broker, project: str, needle: bytes) -> list[str]:
    found = []
    for stage in STAGES:
        for key, value in broker.read_all(topic(project, stage)):
            if needle in (value or b"") or needle in key.encode():
                found.append(f"{stage}/{key}")
    return found


def _files_holding(root: Path | None, needle: bytes) -> list[str]:
    """Files under ``root`` whose bytes hold ``needle``; a file or folder the server deletes while it is
    read (Kafka removes the folders of deleted topics, marked ``-delete``, on its own schedule) holds
    nothing any more: ``os.walk`` skips a folder that vanished (``Path.rglob`` raised there)."""
    if root is None:
        return []
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except (FileNotFoundError, IsADirectoryError):
                continue
    return sorted(found)


def test_an_erase_on_kafka_and_postgres_leaves_no_trace(tmp_path: Path, kafka_bootstrap: str,
                                                       postgres_schema_dsn: str, kafka_log_dir: Path | None) -> None:
    project = f"erase-{uuid.uuid4().hex[:8]}"
    bus, store = KafkaBus(kafka_bootstrap, client_id="winnow-test-erase"), PostgresStore(postgres_schema_dsn)
    cache = EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite", CrcEncoder.encoder_id, dim=8)
    server, port = create_server(bus, store, Authenticator(store), config=LoopConfig())
    server.start()
    target = f"127.0.0.1:{port}"
    secrets = {f"s{k}": f"secret {k} {uuid.uuid4().hex}" for k in range(8)}
    broker = Broker(kafka_bootstrap)
    config = LoopConfig(seed=3, erasure_check_s=0.0)
    prelabel = selector = None
    clients: list[WinnowClient] = []
    try:
        with WinnowClient(target, issue(store, "test", "admin", None, "admin", time.time())[0]) as operator:
            operator.create_project(project, ("a", "b"), budget_labels=50, budget_per_items=100, strategy="random")
            owner = WinnowClient(target, operator.create_token("owner", project, "olga")[0])
            person = WinnowClient(target, operator.create_token("annotator", project, "ann")[0])
            clients += [owner, person]
        record = store.get_project(project)
        prelabel = PrelabelWorker(bus, store, record, config, OnnxRuntime(CachedEncoder(CrcEncoder(), cache)),
                                  overlap=False)
        selector = Selector(bus, store, record, config)
        owner.ingest([Item(project, item_id, text) for item_id, text in secrets.items()])
        deadline = time.monotonic() + 60
        while len(store.embedded_ids(project, list(secrets))) < len(secrets) and time.monotonic() < deadline:
            prelabel.step(timeout_s=0.5)
        while time.monotonic() < deadline and len(selector.backlog) + store.count_open_tasks(project) < len(secrets):
            selector.step(timeout_s=0.5)
        for lease in person.lease(project, "", 50):
            person.submit(project, "", lease.item_id, "a")
        labeled = [label.item_id for label in owner.export_labels(project)]
        doomed = (labeled[:1] + selector.backlog.ids)[:2]  # one labeled by a person (when the draws gave one)
        assert all(_tables_holding(postgres_schema_dsn, secrets[i]) == ["items"] for i in doomed)

        erasure = owner.erase(project, doomed)
        assert erasure.erased == tuple(doomed)
        selector.step(timeout_s=0.2)
        prelabel.step(timeout_s=0.2)

        assert not set(doomed) & set(selector.backlog.ids)
        export = tmp_path / "export.jsonl"
        export.write_text("\n".join(json.dumps(label.__dict__) for label in owner.export_labels(project)))
        for item_id in doomed:
            needle = secrets[item_id]
            assert _tables_holding(postgres_schema_dsn, needle) == [], item_id
            assert _records_holding(broker, project, needle.encode()) == [], item_id  # never on the bus
            assert _files_holding(tmp_path, needle.encode()) == [], item_id
            assert _files_holding(kafka_log_dir, needle.encode()) == [], item_id
        assert cache.get_many([secrets[i] for i in doomed])[1].tolist() == [False, False]
        tombstones = [key for key, value in broker.read_all(topic(project, "items.raw")) if not value]
        assert sorted(tombstones) == sorted(doomed)
        kept = next(i for i in secrets if i not in doomed)
        assert _tables_holding(postgres_schema_dsn, secrets[kept]) == ["items"]
    finally:
        for client in clients:
            client.close()
        for stage in (prelabel, selector):
            if stage is not None:
                stage.close()
        server.stop(1.0).wait()
        broker.close()
        bus.delete_topics([topic(project, s) for s in STAGES])
        bus.close()
        store.close()
