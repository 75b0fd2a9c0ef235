"""The label store's interface: one small protocol per role, and ``Store``, their union, the facade
the loop and the API use.

One SQL store implements it (:mod:`winnow.core.adapters.sql`) with two dialects: SQLite
(``SqliteStore``, embedded mode) and PostgreSQL (``PostgresStore``, distributed mode); both pass one
contract suite (:mod:`winnow.core.testing.store_contract`). Rules every role keeps:

- Every write a redelivered message can repeat is idempotent (said per method).
- A call is checked whole before anything is written (the ``validate_*`` functions of
  :mod:`winnow.core.domain.validation`): InvalidInput naming the field (a NUL character in any
  text, a NaN or infinite time included) or NotFound naming the first unknown thing, and then
  nothing is written.
- Every method taking a project raises NotFound("project") for an unknown one.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
from winnow.core.access.tokens import TokenInfo
from winnow.core.domain.audit import AuditRecord
from winnow.core.domain.records import (
    Annotation,
    ArrivalDraw,
    Item,
    Label,
    Lease,
    ModelVersion,
    Project,
    Task,
)


@dataclass(frozen=True)
class CloseRequest:
    """A request to close a project's stream, and how it was served (``served_at`` None: pending).

    ``items`` is how many items the project had when the request was made; ``tasks``,
    ``low_confidence`` and ``unlabeled`` are what the close that served it did (``unlabeled``: items
    left without a final label because no model could label them).
    """

    project: str
    request_id: str
    actor: str
    requested_at: float
    items: int
    served_at: float | None = None
    tasks: int = 0
    low_confidence: int = 0
    unlabeled: int = 0


@dataclass(frozen=True)
class Erasure:
    """What an erase did: the items it erased now, those erased before, and the model versions that
    may have learned from them (every version registered after the item's first human or gold label;
    a superset, as a label that came during a training run counts as used)."""

    erased: tuple[str, ...]
    already: tuple[str, ...]
    model_versions: tuple[str, ...]


ERASURE_DIGEST_S = 7 * 24 * 3600.0  # how long an erased text's digest stays for the workers' caches


class Projects(Protocol):
    @abstractmethod
    def update_project(self, project: Project, actor: str, now: float) -> Project:
        """Replace a project's settings (budget, precision target, strategy, overlap, guideline
        version and text) with ``project``'s, and add the classes it has after the stored ones,
        audited with what changed; its name and creation time stay. NotFound("project");
        InvalidInput("classes") unless the stored classes are a prefix of ``project``'s (classes are
        only ever appended: labels and models refer to them by position), and whatever
        ``validate_project`` raises. Returns the project as stored."""

    @abstractmethod
    def create_project(self, project: Project) -> None:
        """Create a project; a second call with an identical project is a no-op. InvalidInput("name")
        if a different project has that name, and whatever ``validate_project`` raises."""

    @abstractmethod
    def get_project(self, name: str) -> Project:
        """The project; NotFound("project") when missing."""

    @abstractmethod
    def list_projects(self) -> list[Project]:
        """Every project, by name."""


class Items(Protocol):
    @abstractmethod
    def add_items(self, items: Sequence[Item]) -> int:
        """Insert items in one transaction, keeping ingest order. Idempotent: an id already present,
        or erased, is skipped. Returns how many were new."""

    @abstractmethod
    def get_items(self, project: str, item_ids: Sequence[str]) -> list[Item]:
        """Items in the order asked; NotFound("item_id") naming the first missing id."""

    @abstractmethod
    def count_items(self, project: str) -> int: ...

    @abstractmethod
    def find_items(self, project: str, item_ids: Sequence[str]) -> list[Item]:
        """The items of ``item_ids`` that the store has, in the order asked (no error for the others)."""

    @abstractmethod
    def erase_items(self, project: str, item_ids: Sequence[str], actor: str, now: float) -> Erasure:
        """Remove the items and everything about them (text, embedding, tasks, leases, answers, gold,
        final label) in one transaction, keep their ids as erased (``add_items`` skips an erased id
        for ever) and audit it. Idempotent: ids erased before are reported as such; NotFound("item_id")
        names the first id that never existed (and nothing is erased)."""

    @abstractmethod
    def erasures(self, project: str, after: int = 0) -> list[tuple[int, str, str | None]]:
        """``(seq, item_id, text_sha256)`` of the items erased after ``seq``: the comma-joined hex
        SHA-256 of each text the item was embedded from (its text, or a comparison's two feature
        texts), which workers use to drop cached embeddings, kept for ``ERASURE_DIGEST_S`` only."""

    @abstractmethod
    def erased_among(self, project: str, item_ids: Sequence[str]) -> set[str]:
        """The ids among ``item_ids`` that were erased."""

    @abstractmethod
    def unlabeled_ids(self, project: str, among: Sequence[str] | None = None) -> list[str]:
        """Ids of items without a final label (only those in ``among`` when given), in ingest order."""


class Embeddings(Protocol):
    @abstractmethod
    def put_embeddings(self, project: str, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors [n, D] as float32, replacing an item's older vector (so idempotent);
        InvalidInput("vectors") for a shape that does not match ``item_ids``."""

    @abstractmethod
    def embedded_ids(self, project: str, among: Sequence[str]) -> list[str]:
        """The ids in ``among`` that have a stored vector, in the order given."""

    @abstractmethod
    def get_embeddings(self, project: str, item_ids: Sequence[str]) -> np.ndarray:
        """float32 [n, D] in the order asked; NotFound("item_id") naming the first id without a vector."""

    @abstractmethod
    def drop_model_embeddings(self, project: str, labeled_before: float, aggregations: Sequence[str]) -> int:
        """Retention: delete the vectors of items whose final label is a model label of one of
        ``aggregations`` given before ``labeled_before`` (nothing reads them again: the backlog, the
        guard and training read only undecided items and people's); returns how many went."""

    @abstractmethod
    def bind_encoder(self, project: str, encoder: str) -> str:
        """The encoder the project's embeddings come from: ``encoder`` if none was bound yet (it is
        now, atomically), else the one bound first; the caller refuses to write vectors of another."""

    @abstractmethod
    def project_encoder(self, project: str) -> str | None:
        """The encoder bound to the project, None before its first prelabel worker."""


class TaskQueue(Protocol):
    """Tasks for people, their leases, the answers, and the operator's gold answers.

    Lease expiry: a lease is live while ``now < expires_at``; one not answered, skipped or renewed
    by then lapses, and its slot is handed out again. Times are the caller's ``now``.
    """

    @abstractmethod
    def add_tasks(self, tasks: Sequence[Task]) -> int:
        """Queue tasks. Idempotent: an item that has a task (open or closed) keeps it. Returns how
        many were new."""

    @abstractmethod
    def set_priorities(self, project: str, priorities: Mapping[str, float]) -> None:
        """Re-rank open tasks (after a new model lands); ids without an open task are ignored."""

    @abstractmethod
    def lease_tasks(self, project: str, annotator: str, n: int, lease_s: float, now: float,
                    overlap: int) -> list[Lease]:
        """Up to ``n`` leases for ``annotator``, expiring at ``now + lease_s``: first its own live
        leases (renewed, so a caller that lost a reply gets its tasks back), then open tasks,
        highest priority first (ties: the task created first).

        A lease carries the model's label as ``suggestion`` on ordinary ("label") tasks only, never
        on audit, holdout or gold tasks (it would bias the answers that measure model and people).
        A task is open while fewer than its ``wanted`` answers (``overlap`` when it has none)
        annotators hold a live lease on it or have answered it; a gold task is open to every
        annotator once. An annotator never gets an item it has answered or skipped, nor one item
        twice. Concurrent callers (threads, connections, processes) never exceed those slots.
        """

    @abstractmethod
    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str], lease_s: float, now: float) -> int:
        """Move this annotator's live leases on the items to expire at ``now + lease_s`` (never
        earlier); returns how many were extended."""

    @abstractmethod
    def skip(self, project: str, annotator: str, item_id: str, leased_at: float | None = None) -> None:
        """Release a lease without answering; the annotator is not offered the item again. With
        ``leased_at``, only a lease live at that time may be skipped: LeaseRequired otherwise."""

    @abstractmethod
    def add_annotation(self, annotation: Annotation, leased: bool = False) -> bool:
        """Record an answer and end the annotator's lease. Idempotent: False (nothing written) if
        this annotator already answered the item. With ``leased``, the annotator must hold a lease
        on the item that is live at the annotation's time: LeaseRequired (nothing written) otherwise."""

    @abstractmethod
    def annotations(self, project: str, item_ids: Sequence[str] | None = None) -> list[Annotation]:
        """Annotations of the project (or of the given items), oldest first."""

    @abstractmethod
    def task_ids(self, project: str, kind: str) -> list[str]:
        """Items that ever had a task of ``kind`` (label, audit, gold or holdout), open or closed, in task order."""

    @abstractmethod
    def tasks(self, project: str, kinds: Sequence[str] | None = None) -> list[Task]:
        """Every task, open or closed, in the order queued (only those of ``kinds`` when given)."""

    @abstractmethod
    def want_answers(self, project: str, item_id: str, wanted: int) -> bool:
        """Ask for ``wanted`` answers on the item's open task (adaptive overlap: it then stays open for
        that many people, beyond the project's overlap if asked); only ever raises. Returns whether the
        task changed. InvalidInput "wanted" (< 1), "item_id"."""

    @abstractmethod
    def open_tasks(self, project: str, among: Sequence[str] | None = None) -> list[Task]:
        """Tasks not yet closed (only those of items in ``among`` when given), highest priority first."""

    @abstractmethod
    def count_open_tasks(self, project: str) -> int:
        """How many tasks are not yet closed (without loading them)."""

    @abstractmethod
    def set_gold(self, project: str, answers: Mapping[str, str]) -> None:
        """Record (or replace) known answers, item id -> class; all or nothing."""

    @abstractmethod
    def gold(self, project: str) -> dict[str, str]: ...


class Labels(Protocol):
    def put_label(self, label: Label) -> bool:
        """:meth:`put_labels` of one label."""
        return self.put_labels([label])[0]

    @abstractmethod
    def put_labels(self, labels: Sequence[Label]) -> list[bool]:
        """Write final labels in one transaction and close their items' tasks (their live leases
        lapse). Idempotent: one flag per label, in order, False where the item already had a final
        label or the project had seen the idempotency key (also from an earlier label of the same
        batch, so the first of two labels for one item wins). The whole batch is checked first."""

    @abstractmethod
    def labels(self, project: str, source: str | None = None) -> list[Label]:
        """Final labels of the project, oldest first, optionally only one source."""

    @abstractmethod
    def count_labels(self, project: str) -> dict[str, int]:
        """How many final labels each source made (sources without labels left out), without loading them."""

    @abstractmethod
    def audit_record(self, project: str, version: str | None = None,
                     ) -> tuple[list[tuple[str, float | None, int]], list[tuple[str, float, bool | None]]]:
        """What the certified bounds are computed from, aggregated in the database (``version``: only
        the model labels that version gave and the audit tasks that checked its labels):

        - ``(aggregation, probability, count)`` of the model labels, grouped;
        - ``(family, probability, wrong)`` per audit task: ``wrong`` is whether the item's final
          human (or gold) label differs from the task's model label, None while it has none.
        """


class ArrivalDraws(Protocol):
    """Each comparison's draw at its arrival look (preference projects: the sample model evaluation's
    win rates rest on, :mod:`winnow.core.loop.evaluation`)."""

    @abstractmethod
    def record_draws(self, project: str, draws: Sequence[ArrivalDraw]) -> None:
        """Keep the draws, replacing an item's earlier one (a look redone after a crash is the one whose
        tasks and labels were written). InvalidInput ("probability", "expected": outside [0, 1],
        "item_id"), NotFound("item_id") for an item the store does not have; all or nothing."""

    @abstractmethod
    def arrival_draws(self, project: str) -> list[ArrivalDraw]:
        """Every recorded draw of the project's items, in the order the items were ingested."""


class ModelRegistry(Protocol):
    @abstractmethod
    def register_model(self, model: ModelVersion) -> None:
        """Add a model version and make it current. Idempotent on project + version: registering a
        known version again changes nothing (a redelivery never undoes a later promotion)."""

    @abstractmethod
    def models(self, project: str) -> list[ModelVersion]:
        """Versions, oldest first."""

    @abstractmethod
    def current_model(self, project: str) -> ModelVersion | None: ...

    @abstractmethod
    def promote(self, project: str, version: str) -> ModelVersion:
        """Make an existing version current; NotFound("version") when missing."""


class AuditLog(Protocol):
    """An append-only log of what was done (labels, exports, deletions, close requests): a record,
    never a queue that code reads to decide what to do."""

    @abstractmethod
    def audit(self, project: str | None, actor: str, action: str, detail: str, now: float,
              objects: Sequence[str] = ()) -> AuditRecord:
        """Append a record to the project's hash chain (None: the global chain) and return it.
        ``objects`` are the ids touched; never item text."""

    @abstractmethod
    def audit_log(self, project: str) -> list[tuple[float, str, str, str]]:
        """(time, actor, action, detail) of the project's records, oldest first."""

    @abstractmethod
    def audit_trail(self, project: str | None = None, after: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """The chain's records (the global one for None) after number ``after``, in chain order, with
        their hashes (see :func:`winnow.core.domain.audit.verify`)."""

    @abstractmethod
    def audit_chains(self) -> list[str]:
        """Every audit chain's name: the projects that have records, and "" for the global one."""


class CloseRequests(Protocol):
    """Requests to close a project's stream (see :mod:`winnow.core.loop.close`); they survive restarts.
    Requests and the closes serving them are matched by id, never by time (clocks may disagree)."""

    @abstractmethod
    def request_close(self, project: str, request_id: str, actor: str, now: float) -> CloseRequest:
        """The pending request if there is one, else a new one with id ``request_id`` counting the
        project's items (written with an audit row "close_stream"). Idempotent while pending."""

    @abstractmethod
    def close_requests(self, project: str, pending_only: bool = False) -> list[CloseRequest]:
        """Requests, oldest first (only those not served yet with ``pending_only``)."""

    @abstractmethod
    def mark_closed(self, project: str, request_ids: Sequence[str], actor: str, tasks: int,
                    low_confidence: int, now: float, unlabeled: int = 0) -> int:
        """Mark the pending ones of ``request_ids`` served by a close that queued ``tasks`` tasks,
        made ``low_confidence`` low-confidence labels and left ``unlabeled`` items without a label
        (no model), with an audit row "stream_closed".
        Idempotent: requests already served keep their outcome; returns how many were marked."""


class Tokens(Protocol):
    """API tokens, kept only as hashes (:mod:`winnow.core.access.tokens` mints and checks them)."""

    @abstractmethod
    def add_token(self, info: TokenInfo) -> None:
        """Store a new token's record. InvalidInput ("role", "project", "name", "token_id" when taken),
        NotFound("project")."""

    @abstractmethod
    def token(self, token_id: str) -> TokenInfo:
        """The token's record, revoked or expired ones too; NotFound("token_id")."""

    @abstractmethod
    def tokens(self, project: str | None = None, name: str | None = None) -> list[TokenInfo]:
        """Every token (only ``project``'s, only those named ``name``, when given), oldest first."""

    @abstractmethod
    def revoke_token(self, token_id: str, now: float) -> TokenInfo:
        """Revoke it from ``now`` on; idempotent (the first revocation time stays). NotFound("token_id")."""


class Store(Projects, Items, Embeddings, TaskQueue, Labels, ArrivalDraws, ModelRegistry, AuditLog, CloseRequests,
            Tokens):
    """Every role in one object (what the loop and the API hold)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the store is not used afterwards."""
