"""The label store interface: projects, items, embeddings, tasks and leases, annotations, labels, models.

Two adapters implement it: SQLite (``winnow.core.sqlite_store``, embedded mode) and PostgreSQL
(distributed mode). Both pass one contract suite (tests/contracts/store_contract.py). Every write
that can be repeated by a redelivered message is idempotent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

from winnow.core.records import Annotation, Item, Label, Lease, ModelVersion, Project, Task


class Store(ABC):
    # -- projects ---------------------------------------------------------------------------
    @abstractmethod
    def create_project(self, project: Project) -> None:
        """Create a project; InvalidInput("name", ...) if a different project has that name."""

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
    def open_tasks(self, project: str) -> list[Task]:
        """Tasks not yet closed, highest priority first."""

    # -- gold -------------------------------------------------------------------------------
    @abstractmethod
    def set_gold(self, project: str, answers: Mapping[str, str]) -> None:
        """Record known answers (item id -> class) given by the operator."""

    @abstractmethod
    def gold(self, project: str) -> dict[str, str]: ...

    # -- final labels -----------------------------------------------------------------------
    @abstractmethod
    def put_label(self, label: Label) -> bool:
        """Write an item's final label. Idempotent: False (and nothing written) when the item
        already has a final label or the idempotency key was seen."""

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
