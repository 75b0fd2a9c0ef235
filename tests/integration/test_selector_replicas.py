"""Two selector replicas sharing one project's stream on a real Kafka broker and a real PostgreSQL store:
each decides its shard, together they keep the budget, a close waits for both, and every item ends with
exactly one final label or task (synthetic vectors instead of the encoder)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from winnow.core.adapters.postgres_store import PostgresStore
from winnow.core.domain.codecs import ITEMS_SCORED
from winnow.core.domain.records import Item, ModelVersion, Project, Scored
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.close import request_close, stream_status
from winnow.core.loop.ingest import ingest
from winnow.core.loop.quality import certified_quality
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import STAGES, create_topics, shard, topic
from winnow.core.ml.head import Head, HeadConfig, save_model
from winnow.services.kafka_bus import KafkaBus

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CLASSES, N, DEADLINE_S = ("a", "b", "c"), 600, 120.0


def test_two_selector_replicas_on_kafka_keep_the_budget_and_label_each_item_once(
        kafka_bootstrap: str, postgres_schema_dsn: str, tmp_path: Path) -> None:
    name = f"rep{uuid.uuid4().hex[:10]}"
    bus, store = KafkaBus(kafka_bootstrap, client_id="winnow-test-replicas"), PostgresStore(postgres_schema_dsn)
    replicas: list[Selector] = []
    try:
        project = Project(name, CLASSES, budget_labels=10, budget_per_items=100)
        store.create_project(project)
        create_topics(bus, name, 4)
        rng = np.random.default_rng(0)
        x = (np.eye(16, dtype=np.float32)[rng.integers(0, 3, N)] * 4 + rng.standard_normal((N, 16), np.float32))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"i{k}" for k in range(N)]
        folder = tmp_path / "v1"  # every item clears threshold 0: each is checked by people or auto-accepted
        save_model(folder, Head(HeadConfig(dim=16, n_classes=3)),
                   {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": 0.0})
        store.register_model(ModelVersion(name, "v1", str(folder), 0.0, 0, 1.0, 0.0))
        config = LoopConfig(selector_replicas=2, select_batch=5)
        replicas = [Selector(bus, store, project, dataclasses.replace(config, selector_replica=r)) for r in (0, 1)]
        ingest(bus.producer(), store, project, [Item(name, i, f"text {i}", 0.0) for i in ids])
        store.put_embeddings(name, ids, x)
        with bus.producer() as producer:
            producer.publish_many(topic(name, "items.scored"), ITEMS_SCORED.keyed(Scored(i) for i in ids))

        def decided() -> int:
            return len(store.labels(name)) + len(store.open_tasks(name)) + sum(len(s.backlog) for s in replicas)

        deadline = time.monotonic() + DEADLINE_S
        while decided() < N and time.monotonic() < deadline:
            for selector in replicas:
                selector.step(timeout_s=0.2)
        assert decided() == N  # each item reached exactly one replica (its shard's)
        for r, selector in enumerate(replicas):
            assert all(shard(i, 2) == r for i in selector.backlog.ids)

        request_close(store, name, "operator", time.time())
        while stream_status(store, name).state != "closed" and time.monotonic() < deadline:
            for selector in replicas:
                selector.step(timeout_s=0.2)
        assert stream_status(store, name).state == "closed"
        labels = [label.item_id for label in store.labels(name)]
        queued = [t.item_id for t in store.open_tasks(name)]
        assert len(labels) == len(set(labels)) and not set(labels) & set(queued)
        assert sorted(labels + queued) == sorted(ids)  # one final label or one task per item
        tasks = store.tasks(name)
        assert 0 < len(tasks) <= N * 10 // 100  # the budget, exactly, across both replicas
        for r in (0, 1):  # and each replica within its share
            assert sum(shard(t.item_id, 2) == r for t in tasks) <= sum(shard(i, 2) == r for i in ids) // 10
        quality = certified_quality(store, name)  # the bound over both replicas' draws (one store)
        assert quality.model.labels == len(labels)
        assert quality.model.drawn == sum(t.kind == "audit" for t in tasks)
    finally:
        for selector in replicas:
            selector.close()
        try:
            bus.delete_topics([topic(name, stage) for stage in STAGES])
        finally:
            bus.close()
            store.close()
