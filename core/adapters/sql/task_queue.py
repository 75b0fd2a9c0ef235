"""The task queue role of the SQL store: tasks, leases, answers and gold (see
:class:`winnow.core.ports.store.TaskQueue` for the contract)."""

from __future__ import annotations

from typing import Mapping, Sequence

from winnow.core.adapters.sql.base import SqlBase, responses_of
from winnow.core.domain.errors import InvalidInput, LeaseRequired
from winnow.core.domain.records import Annotation, Lease, Task
from winnow.core.domain.validation import (
    check_answer,
    check_finite,
    check_label,
    check_text,
    validate_annotation,
    validate_annotator,
    validate_lease,
    validate_priorities,
    validate_tasks,
)

_TASK_ORDER = "t.priority DESC, t.created_at, t.seq"
_TASK_COLUMNS = "item_id, priority, model_version, created_at, kind, probability, model_label, family, wanted"
# the annotator's own live leases on open tasks (handed back first, so a lost reply costs nothing)
# the model's label rides along on ordinary tasks only: on audits, holdouts and gold it would bias the
# very answers that measure the model and the people
_SUGGESTION = "CASE WHEN t.kind = 'label' THEN t.model_label END"
_OWN_LEASES = f"""SELECT t.item_id, t.kind, i.text, a.expires_at, {_SUGGESTION}, i.responses FROM assignments a
    JOIN tasks t ON t.project = a.project AND t.item_id = a.item_id
    JOIN items i ON i.project = a.project AND i.item_id = a.item_id
    WHERE a.project = ? AND a.annotator = ? AND a.state = 'leased' AND a.expires_at > ? AND NOT t.closed
    ORDER BY {_TASK_ORDER} LIMIT ?"""
# open tasks this annotator has neither answered, skipped nor holds, with a free overlap slot;
# "closed = FALSE" is an equality, so the rank index (project, closed, priority DESC, ...) orders the
# scan and LIMIT stops it ("NOT closed" made SQLite read and sort every task the project ever had)
_OPEN_TASKS = f"""SELECT t.item_id, t.kind, i.text, 0.0, {_SUGGESTION}, i.responses FROM tasks t
    JOIN items i ON i.project = t.project AND i.item_id = t.item_id
    WHERE t.project = ? AND t.closed = FALSE
      AND NOT EXISTS (SELECT 1 FROM assignments a
                      WHERE a.project = t.project AND a.item_id = t.item_id AND a.annotator = ?
                        AND (a.state != 'leased' OR a.expires_at > ?))
      AND (t.kind = 'gold' OR (SELECT COUNT(*) FROM assignments a
                               WHERE a.project = t.project AND a.item_id = t.item_id
                                 AND (a.state = 'answered' OR (a.state = 'leased' AND a.expires_at > ?)))
                               < COALESCE(t.wanted, ?))
    ORDER BY {_TASK_ORDER} LIMIT ?"""
_LATER = "CASE WHEN {old} > {new} THEN {old} ELSE {new} END"  # the later of two expiry times


class SqlTaskQueue(SqlBase):
    def add_tasks(self, tasks: Sequence[Task]) -> int:
        """Queue tasks; an item that already has a task (open or closed) keeps it. InvalidInput
        ("kind", "priority", "created_at", a NUL in a text field), NotFound for an unknown project
        or item."""
        validate_tasks(tasks)
        with self._tx() as tx:
            for project in sorted({t.project for t in tasks}):
                self._project(tx, project)
                self._require_items(tx, project, [t.item_id for t in tasks if t.project == project])
            return tx.many(
                f"INSERT INTO tasks (project, {_TASK_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, item_id) DO NOTHING",
                [(t.project, t.item_id, t.priority, t.model_version, t.created_at, t.kind, t.probability,
                  t.model_label, t.family, t.wanted) for t in tasks],
            )

    def want_answers(self, project: str, item_id: str, wanted: int) -> bool:
        """See :meth:`TaskQueue.want_answers`."""
        check_text("item_id", item_id)
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
            raise InvalidInput("wanted", f"must be an integer >= 1, got {wanted!r}")
        with self._tx() as tx:
            self._project(tx, project)
            return tx.run("UPDATE tasks SET wanted = ? WHERE project = ? AND item_id = ? AND NOT closed "
                          "AND (wanted IS NULL OR wanted < ?)", (wanted, project, item_id, wanted)) > 0

    def set_priorities(self, project: str, priorities: Mapping[str, float]) -> None:
        """Re-rank open tasks; ids without an open task are ignored (they may have been labelled)."""
        validate_priorities(priorities)
        with self._tx() as tx:
            self._project(tx, project)
            self.dialect.lock_project(tx, project)
            tx.many("UPDATE tasks SET priority = ? WHERE project = ? AND item_id = ? AND NOT closed",
                    [(p, project, item_id) for item_id, p in priorities.items()])

    def lease_tasks(
        self, project: str, annotator: str, n: int, lease_s: float, now: float, overlap: int
    ) -> list[Lease]:
        """See :meth:`TaskQueue.lease_tasks`. Picking and writing the leases is one transaction
        holding the project's task lock (see ``Dialect.lock_project``; PostgreSQL also locks the
        picked task rows), so concurrent callers count the slots their predecessors took and a
        concurrent label never leaves a live lease on a closed task. InvalidInput: "annotator",
        "lease_s", "overlap", "now"."""
        validate_lease(annotator, lease_s, overlap)
        check_finite("now", now)
        if n <= 0:
            return []
        expires_at = now + lease_s
        with self._tx() as tx:
            self._project(tx, project)
            self.dialect.lock_project(tx, project)
            rows = tx.all(_OWN_LEASES, (project, annotator, now, n))
            if len(rows) < n:
                rows += tx.all(_OPEN_TASKS + self.dialect.for_update,
                               (project, annotator, now, now, overlap, n - len(rows)))
            tx.many(
                "INSERT INTO assignments (project, item_id, annotator, state, expires_at) VALUES (?, ?, ?, 'leased', ?) "
                "ON CONFLICT (project, item_id, annotator) DO UPDATE SET state = 'leased', expires_at = "
                + _LATER.format(old="assignments.expires_at", new="excluded.expires_at"),
                [(project, item_id, annotator, expires_at) for item_id, *_ in rows],
            )
        return [Lease(project, item_id, annotator, text, kind, max(held, expires_at), suggestion, responses_of(stored))
                for item_id, kind, text, held, suggestion, stored in rows]

    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str], lease_s: float, now: float) -> int:
        """Move the expiry of this annotator's live leases to ``now + lease_s`` (never earlier)."""
        check_text("annotator", annotator)
        check_finite("lease_s", lease_s)
        check_finite("now", now)
        with self._tx() as tx:
            self._project(tx, project)
            return tx.run(
                "UPDATE assignments SET expires_at = " + _LATER.format(old="expires_at", new="?")
                + f" WHERE project = ? AND annotator = ? AND state = 'leased' AND expires_at > ? AND {self._in('item_id')}",
                (now + lease_s, now + lease_s, project, annotator, now, self._ids(item_ids)),
            )

    def skip(self, project: str, annotator: str, item_id: str, leased_at: float | None = None) -> None:
        """Release the lease (if any) as skipped; an answered item stays answered. NotFound for an
        unknown item; with ``leased_at``, LeaseRequired unless a lease live then is held."""
        validate_annotator(annotator)
        check_finite("leased_at", leased_at)
        with self._tx() as tx:
            self._project(tx, project)
            self._require_items(tx, project, [item_id])
            if leased_at is not None:
                if not tx.run("UPDATE assignments SET state = 'skipped' WHERE project = ? AND item_id = ? "
                              "AND annotator = ? AND state = 'leased' AND expires_at > ?",
                              (project, item_id, annotator, leased_at)):
                    raise LeaseRequired(f"no live lease on item {item_id[:100]!r}: lease it first")
                return
            tx.run(
                "INSERT INTO assignments (project, item_id, annotator, state, expires_at) VALUES (?, ?, ?, 'skipped', 0) "
                "ON CONFLICT (project, item_id, annotator) DO UPDATE SET state = 'skipped' "
                "WHERE assignments.state = 'leased'",
                (project, item_id, annotator),
            )

    def add_annotation(self, annotation: Annotation, leased: bool = False) -> bool:
        """Record the answer and mark the annotator's assignment answered; False (nothing written)
        if this annotator already answered the item. InvalidInput("label") outside the schema,
        "annotator" when empty, NotFound("item_id") for an unknown item; with ``leased``,
        LeaseRequired unless the annotator's lease on the item is live at the annotation's time."""
        a = annotation
        validate_annotation(a)
        with self._tx() as tx:
            check_answer(self._project(tx, a.project), a)
            self._require_items(tx, a.project, [a.item_id])
            if leased:
                state = tx.one("SELECT state, expires_at FROM assignments WHERE project = ? AND item_id = ? "
                               "AND annotator = ?", (a.project, a.item_id, a.annotator))
                if state is None or state[0] == "skipped" or (state[0] == "leased" and state[1] <= a.created_at):
                    raise LeaseRequired(f"no live lease on item {a.item_id[:100]!r}: lease it (again) first")
            if not tx.run(
                "INSERT INTO annotations (project, item_id, annotator, label, created_at, strength, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, item_id, annotator) DO NOTHING",
                (a.project, a.item_id, a.annotator, a.label, a.created_at, a.strength, a.reason),
            ):
                return False
            tx.run(
                "INSERT INTO assignments (project, item_id, annotator, state, expires_at) VALUES (?, ?, ?, 'answered', ?) "
                "ON CONFLICT (project, item_id, annotator) DO UPDATE SET state = 'answered'",
                (a.project, a.item_id, a.annotator, a.created_at),
            )
            return True

    def annotations(self, project: str, item_ids: Sequence[str] | None = None) -> list[Annotation]:
        rows = self._select(project, "SELECT item_id, annotator, label, created_at, strength, reason FROM annotations "
                            "WHERE project = ?", "created_at, seq", item_ids)
        return [Annotation(project, *r) for r in rows]

    def task_ids(self, project: str, kind: str) -> list[str]:
        check_text("kind", kind)
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all("SELECT item_id FROM tasks WHERE project = ? AND kind = ? ORDER BY seq", (project, kind))
        return [r[0] for r in rows]

    def open_tasks(self, project: str, among: Sequence[str] | None = None) -> list[Task]:
        rows = self._select(project, f"SELECT {_TASK_COLUMNS} FROM tasks t WHERE project = ? AND NOT closed",
                            _TASK_ORDER, among)
        return [Task(project, *r) for r in rows]

    def tasks(self, project: str, kinds: Sequence[str] | None = None) -> list[Task]:
        """Every task of the project, open or closed, in the order they were queued (``kinds``: only those)."""
        check_text("kind", *(kinds or ()))
        rows = self._select(project, f"SELECT {_TASK_COLUMNS} FROM tasks t WHERE project = ?", "t.seq", kinds, "kind")
        return [Task(project, *r) for r in rows]

    def count_open_tasks(self, project: str) -> int:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return tx.one("SELECT COUNT(*) FROM tasks WHERE project = ? AND closed = FALSE", (project,))[0]

    def set_gold(self, project: str, answers: Mapping[str, str]) -> None:
        """Record (or replace) known answers; InvalidInput("label") outside the schema, NotFound
        ("item_id") for an item not in the project. All or nothing."""
        with self._tx() as tx:
            p = self._project(tx, project)
            for label in answers.values():
                check_label(p, label)
            self._require_items(tx, project, list(answers))
            tx.many(
                "INSERT INTO gold (project, item_id, label) VALUES (?, ?, ?) "
                "ON CONFLICT (project, item_id) DO UPDATE SET label = excluded.label",
                [(project, item_id, label) for item_id, label in answers.items()],
            )

    def gold(self, project: str) -> dict[str, str]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return dict(tx.all("SELECT item_id, label FROM gold WHERE project = ?", (project,)))
