"""Records and helpers the store contract suites share: one project ``P`` with ``CLASSES``, and
short ways to make items, tasks, labels and models for it."""

from __future__ import annotations

from winnow.core.domain.records import Item, Label, ModelVersion, Task
from winnow.core.ports.store import Store

P = "proj"
CLASSES = ("billing", "card", "other")
LEASE_S = 60.0


def items(*ids: str, project: str = P) -> list[Item]:
    return [Item(project, i, f"text of {i}", ingested_at=float(n)) for n, i in enumerate(ids)]


def task(item_id: str, priority: float = 0.5, created_at: float = 0.0, kind: str = "label") -> Task:
    return Task(P, item_id, priority, "m1", created_at, kind)  # type: ignore[arg-type]


def label(item_id: str, value: str = "card", key: str | None = None, **kw: object) -> Label:
    fields: dict = dict(
        project=P, item_id=item_id, label=value, source="model", source_id="m1", confidence=0.99,
        threshold=0.9, aggregation="auto_accept", guideline_version="v1", created_at=1.0,
        idempotency_key=key or f"{item_id}:prelabel:m1",
    )
    return Label(**(fields | kw))


def model(version: str, created_at: float) -> ModelVersion:
    return ModelVersion(P, version, f"/models/{version}.onnx", created_at, 100, 1.3, 0.87, {"accuracy": 0.9})


def lease_ids(store: Store, annotator: str, n: int = 10, now: float = 0.0, overlap: int = 1) -> list[str]:
    return [lease.item_id for lease in store.lease_tasks(P, annotator, n, LEASE_S, now, overlap)]
