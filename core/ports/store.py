"""The label store interface: projects, items, embeddings, tasks and leases, annotations, labels, models.

Two adapters implement it: SQLite (``winnow.core.adapters.sqlite_store``, embedded mode) and PostgreSQL
(distributed mode). Both pass one contract suite (tests/contracts/store_contract.py). Every write
that can be repeated by a redelivered message is idempotent.

The checks that need no database (``validate_*``, ``check_label``) are plain functions here, so the
adapters (and the API) share one copy of each rule and each error message.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import (
    Annotation,
    Item,
    Label,
    Lease,
    ModelVersion,
    Project,
    Task,
)
from winnow.core.select.strategies import STRATEGIES

SOURCES = ("human", "model", "gold")  # Label.source
KINDS = ("label", "holdout", "gold")  # Task.kind


# -- validation (no database access; adapters call these before opening a transaction) ------
def validate_project(project: Project) -> None:
    """InvalidInput: "name" (empty), "classes" (none, empty or repeated), "overlap" (below 1),
    "budget_per_items" (below 1), "budget_labels" (outside [0, budget_per_items]),
    "precision_target" (outside (0, 1)), "strategy" (not one of ``STRATEGIES``)."""
    if not project.name.strip():
        raise InvalidInput("name", "project name is empty")
    if not project.classes or any(not c.strip() for c in project.classes):
        raise InvalidInput("classes", f"classes must be non-empty names, got {list(project.classes)}")
    if len(set(project.classes)) != len(project.classes):
        raise InvalidInput("classes", f"classes repeat: {list(project.classes)}")
    if project.overlap < 1:
        raise InvalidInput("overlap", f"overlap must be at least 1, got {project.overlap}")
    if project.budget_per_items < 1:
        raise InvalidInput("budget_per_items", f"must be at least 1, got {project.budget_per_items}")
    if not 0 <= project.budget_labels <= project.budget_per_items:
        raise InvalidInput("budget_labels", f"must be in [0, budget_per_items={project.budget_per_items}], "
                                            f"got {project.budget_labels}")
    if not 0.0 < project.precision_target < 1.0:
        raise InvalidInput("precision_target", f"must be in (0, 1), got {project.precision_target}")
    if project.strategy not in STRATEGIES:
        raise InvalidInput("strategy", f"unknown strategy {project.strategy!r}; expected one of {STRATEGIES}")


def validate_item_fields(items: Sequence[Item]) -> None:
    """InvalidInput("item_id" | "text") for an empty id or text (the store's rule; ingest checks more)."""
    for item in items:
        if not item.item_id.strip():
            raise InvalidInput("item_id", f"empty item id in project {item.project!r}")
        if not item.text.strip():
            raise InvalidInput("text", f"item {item.item_id!r} has empty text")


def validate_vectors(item_ids: Sequence[str], vectors: np.ndarray) -> None:
    """InvalidInput("vectors") unless ``vectors`` is [len(item_ids), D]."""
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise InvalidInput("vectors", f"expected [{len(item_ids)}, D], got {list(vectors.shape)}")


def validate_tasks(tasks: Sequence[Task]) -> None:
    """InvalidInput("kind" | "priority") for a kind not in ``KINDS`` or a NaN priority."""
    for t in tasks:
        if t.kind not in KINDS:
            raise InvalidInput("kind", f"task kind must be one of {list(KINDS)}, got {t.kind!r}")
        if math.isnan(t.priority):
            raise InvalidInput("priority", f"priority of item {t.item_id!r} is NaN")


def validate_priorities(priorities: Mapping[str, float]) -> None:
    """InvalidInput("priority") when a priority is NaN."""
    if any(math.isnan(p) for p in priorities.values()):
        raise InvalidInput("priority", "a priority is NaN")


def validate_annotator(annotator: str) -> None:
    """InvalidInput("annotator") when empty or blank."""
    if not annotator.strip():
        raise InvalidInput("annotator", "annotator is empty")


def validate_lease(annotator: str, lease_s: float, overlap: int) -> None:
    """InvalidInput: "annotator" (empty), "lease_s" (not positive), "overlap" (below 1)."""
    validate_annotator(annotator)
    if not lease_s > 0:
        raise InvalidInput("lease_s", f"lease_s must be positive, got {lease_s}")
    if overlap < 1:
        raise InvalidInput("overlap", f"overlap must be at least 1, got {overlap}")


def validate_label(label: Label) -> None:
    """InvalidInput: "source" (not in ``SOURCES``), "confidence" (outside [0, 1]), "idempotency_key"
    (empty). The class is checked against the project by :func:`check_label`."""
    if label.source not in SOURCES:
        raise InvalidInput("source", f"source must be one of {list(SOURCES)}, got {label.source!r}")
    if not 0.0 <= label.confidence <= 1.0:
        raise InvalidInput("confidence", f"confidence must be in [0, 1], got {label.confidence}")
    if not label.idempotency_key:
        raise InvalidInput("idempotency_key", f"empty idempotency key for item {label.item_id!r}")


def check_label(project: Project, label: str) -> None:
    """InvalidInput("label") when ``label`` is not one of the project's classes."""
    if label not in project.classes:
        raise InvalidInput("label", f"{label!r} not in the project's label schema {list(project.classes)}")


class Store(ABC):
    # -- projects ---------------------------------------------------------------------------
    @abstractmethod
    def create_project(self, project: Project) -> None:
        """Create a project; InvalidInput("name", ...) if a different project has that name, and
        whatever :func:`validate_project` raises."""

    @abstractmethod
    def get_project(self, name: str) -> Project:
        """The project; NotFound("project", ...) when missing."""

    @abstractmethod
    def list_projects(self) -> list[Project]: ...

    # -- items ------------------------------------------------------------------------------
    @abstractmethod
    def add_items(self, items: Sequence[Item]) -> int:
        """Insert items in one transaction; an id already present is skipped. Returns how many were new."""

    @abstractmethod
    def get_items(self, project: str, item_ids: Sequence[str]) -> list[Item]:
        """Items in the order asked; NotFound("item_id", ...) naming the first missing id."""

    @abstractmethod
    def count_items(self, project: str) -> int: ...

    @abstractmethod
    def delete_item(self, project: str, item_id: str) -> None:
        """Remove an item and everything about it (embedding, tasks, annotations, label)."""

    # -- embeddings -------------------------------------------------------------------------
    @abstractmethod
    def put_embeddings(self, project: str, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store float32 vectors [n, D] (replacing any older vector of the same item)."""

    @abstractmethod
    def embedded_ids(self, project: str, among: Sequence[str]) -> list[str]:
        """The ids in ``among`` that have a stored vector, in the order given."""

    @abstractmethod
    def get_embeddings(self, project: str, item_ids: Sequence[str]) -> np.ndarray:
        """float32 [n, D] in the order asked; NotFound naming the first id without a vector."""

    # -- tasks and leases -------------------------------------------------------------------
    @abstractmethod
    def add_tasks(self, tasks: Sequence[Task]) -> int:
        """Queue tasks; an item already queued keeps its task (idempotent). Returns how many were new."""

    @abstractmethod
    def set_priorities(self, project: str, priorities: Mapping[str, float]) -> None:
        """Re-rank open tasks (after a new model lands)."""

    @abstractmethod
    def lease_tasks(
        self, project: str, annotator: str, n: int, lease_s: float, now: float, overlap: int
    ) -> list[Lease]:
        """Hand ``annotator`` up to ``n`` open tasks, highest priority first.

        A label task is open while fewer than ``overlap`` annotators hold a live lease on it or
        have answered it; a gold task is open to every annotator once. An annotator never gets an
        item it has answered, skipped or holds. A lease not answered by ``expires_at`` lapses and the
        slot is handed out again.
        """

    @abstractmethod
    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str], lease_s: float, now: float) -> int:
        """Extend this annotator's live leases on the items; returns how many were extended."""

    @abstractmethod
    def skip(self, project: str, annotator: str, item_id: str) -> None:
        """Release a lease without answering; the annotator is not offered the item again."""

    @abstractmethod
    def add_annotation(self, annotation: Annotation) -> bool:
        """Record an answer and close the annotator's lease; False if this annotator already answered."""

    @abstractmethod
    def annotations(self, project: str, item_ids: Sequence[str] | None = None) -> list[Annotation]:
        """Annotations of the project (or of the given items), oldest first."""

    @abstractmethod
    def close_task(self, project: str, item_id: str) -> None:
        """Mark an item's task done (it has its final label); open leases on it lapse."""

    @abstractmethod
    def task_ids(self, project: str, kind: str) -> list[str]:
        """Items that ever had a task of ``kind`` (label, holdout or gold), open or closed, in task order."""

    @abstractmethod
    def open_tasks(self, project: str, among: Sequence[str] | None = None) -> list[Task]:
        """Tasks not yet closed (only those of items in ``among`` when given), highest priority first."""

    # -- gold -------------------------------------------------------------------------------
    @abstractmethod
    def set_gold(self, project: str, answers: Mapping[str, str]) -> None:
        """Record known answers (item id -> class) given by the operator."""

    @abstractmethod
    def gold(self, project: str) -> dict[str, str]: ...

    # -- final labels -----------------------------------------------------------------------
    def put_label(self, label: Label) -> bool:
        """Write an item's final label. Idempotent: False (and nothing written) when the item
        already has a final label or the idempotency key was seen."""
        return self.put_labels([label])[0]

    @abstractmethod
    def put_labels(self, labels: Sequence[Label]) -> list[bool]:
        """Write final labels in one transaction and close their items' tasks; one flag per label, in
        order: True where it was written, False where the item already had a final label or the
        project had seen the idempotency key (also from an earlier label of the same batch, so the
        first of two labels for one item wins).

        The whole batch is checked before anything is written: InvalidInput ("label", "source",
        "confidence", "idempotency_key") or NotFound ("project", "item_id") for any label means
        nothing is written.
        """

    @abstractmethod
    def labels(self, project: str, source: str | None = None) -> list[Label]:
        """Final labels of the project, oldest first, optionally only one source."""

    @abstractmethod
    def unlabeled_ids(self, project: str, among: Sequence[str] | None = None) -> list[str]:
        """Ids of items without a final label (only those in ``among`` when given), in ingest order."""

    # -- models -----------------------------------------------------------------------------
    @abstractmethod
    def register_model(self, model: ModelVersion) -> None:
        """Add a model version (idempotent on project + version) and make it the current one."""

    @abstractmethod
    def models(self, project: str) -> list[ModelVersion]:
        """Versions, oldest first."""

    @abstractmethod
    def current_model(self, project: str) -> ModelVersion | None: ...

    @abstractmethod
    def promote(self, project: str, version: str) -> ModelVersion:
        """Make an existing version current; NotFound("version", ...) when missing."""

    # -- audit ------------------------------------------------------------------------------
    @abstractmethod
    def audit(self, project: str, actor: str, action: str, detail: str, now: float) -> None:
        """Append to the project's audit log (labels, exports, deletions)."""

    @abstractmethod
    def audit_log(self, project: str) -> list[tuple[float, str, str, str]]:
        """(time, actor, action, detail) rows, oldest first."""

    @abstractmethod
    def close(self) -> None: ...
