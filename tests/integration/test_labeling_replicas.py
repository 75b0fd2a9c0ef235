"""Two labeling services (API replicas) on one PostgreSQL store, with annotators calling both at
once: no task is handed to more people than it wants, no one answers an item twice, and every item
ends with exactly one final label."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from winnow.core.access.roles import Principal
from winnow.core.adapters.postgres_store import PostgresStore
from winnow.core.domain.errors import LeaseRequired
from winnow.core.domain.records import Item, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.topics import create_topics
from winnow.services.api.operations import WinnowApi
from winnow.services.kafka_bus import KafkaBus

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

ITEMS, PEOPLE, OVERLAP = 120, 8, 2


def test_two_replicas_never_double_lease(postgres_schema_dsn: str, kafka_bootstrap: str) -> None:
    project = f"replicas-{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(kafka_bootstrap, client_id="winnow-test-replicas")
    stores = [PostgresStore(postgres_schema_dsn) for _ in range(2)]
    try:
        stores[0].create_project(Project(project, ("a", "b"), overlap=OVERLAP))
        create_topics(bus, project, 1)
        stores[0].add_items([Item(project, f"i{k}", f"text {k}", 1.0) for k in range(ITEMS)])
        stores[0].add_tasks([Task(project, f"i{k}", 1.0, None, 1.0) for k in range(ITEMS)])
        replicas = [WinnowApi(bus, store, LoopConfig()) for store in stores]
        errors: list[BaseException] = []

        def person(n: int) -> None:
            who = Principal(f"p{n}", "annotator", project)
            try:
                for round_ in range(40):
                    api = replicas[(n + round_) % 2]  # each call to either replica, as a load balancer would
                    leases = api.lease(who, project, "", 5)
                    if not leases:
                        break
                    for lease in leases:
                        try:
                            replicas[(n + round_ + 1) % 2].submit(who, project, "", lease.item_id, "ab"[n % 2])
                        except LeaseRequired:
                            pass  # (a lease can lapse only after lease_s: never here)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=person, args=(n,)) for n in range(PEOPLE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors[0]
        answers = stores[0].annotations(project)
        per_item = Counter(a.item_id for a in answers)
        assert max(per_item.values()) <= OVERLAP  # no task handed to more people than it wants
        assert len(answers) == len({(a.item_id, a.annotator) for a in answers})  # no one twice
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(stores[0].labels(project)) < ITEMS:
            time.sleep(0.1)
        labels = stores[0].labels(project)
        assert sorted(label.item_id for label in labels) == sorted(f"i{k}" for k in range(ITEMS))
        assert all(per_item[label.item_id] == OVERLAP for label in labels)
    finally:
        bus.delete_topics([f"winnow.{project}.{s}" for s in ("items.raw", "items.scored", "tasks", "labels",
                                                             "models", "dead-letter")])
        bus.close()
        for store in stores:
            store.close()
