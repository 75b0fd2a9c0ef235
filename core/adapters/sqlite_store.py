"""The embedded label store: every :class:`~winnow.core.ports.store.Store` method on one SQLite file.

One connection, guarded by a lock, serves every thread: SQLite admits one writer at a time anyway,
so a shared connection costs nothing in write throughput, never meets ``SQLITE_BUSY`` inside the
process, and makes each method's transaction trivially atomic. Writes open ``BEGIN IMMEDIATE``, so
other processes on the same file are serialised too (they wait up to ``busy_timeout_ms``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from winnow.core.domain.errors import InvalidInput, NotFound, WinnowError
from winnow.core.domain.records import (
    Annotation,
    Item,
    Label,
    Lease,
    ModelVersion,
    Project,
    Task,
)
from winnow.core.ports.store import (
    Store,
    check_label,
    validate_annotator,
    validate_item_fields,
    validate_label,
    validate_lease,
    validate_priorities,
    validate_project,
    validate_tasks,
    validate_vectors,
)

# Migration n is _MIGRATIONS[n - 1]; append new ones, never edit an applied one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE projects (
            name TEXT PRIMARY KEY, classes TEXT NOT NULL, budget_labels INTEGER NOT NULL,
            budget_per_items INTEGER NOT NULL, precision_target REAL NOT NULL, strategy TEXT NOT NULL,
            overlap INTEGER NOT NULL, guideline_version TEXT NOT NULL, created_at REAL NOT NULL)""",
        """CREATE TABLE items (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            project TEXT NOT NULL REFERENCES projects(name),
            item_id TEXT NOT NULL, text TEXT NOT NULL, ingested_at REAL NOT NULL,
            UNIQUE (project, item_id))""",
        """CREATE TABLE embeddings (
            project TEXT NOT NULL, item_id TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
            PRIMARY KEY (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY,
            project TEXT NOT NULL, item_id TEXT NOT NULL, priority REAL NOT NULL, model_version TEXT,
            created_at REAL NOT NULL, kind TEXT NOT NULL, closed INTEGER NOT NULL DEFAULT 0,
            UNIQUE (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        "CREATE INDEX tasks_rank ON tasks (project, closed, priority DESC, created_at, seq)",
        """CREATE TABLE assignments (
            project TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('leased', 'answered', 'skipped')),
            expires_at REAL NOT NULL,
            PRIMARY KEY (project, item_id, annotator),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE annotations (
            seq INTEGER PRIMARY KEY,
            project TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL, label TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (project, item_id, annotator),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE gold (
            project TEXT NOT NULL, item_id TEXT NOT NULL, label TEXT NOT NULL,
            PRIMARY KEY (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE labels (
            seq INTEGER PRIMARY KEY,
            project TEXT NOT NULL, item_id TEXT NOT NULL, label TEXT NOT NULL, source TEXT NOT NULL,
            source_id TEXT NOT NULL, confidence REAL NOT NULL, threshold REAL, aggregation TEXT NOT NULL,
            guideline_version TEXT NOT NULL, created_at REAL NOT NULL, idempotency_key TEXT NOT NULL,
            UNIQUE (project, item_id), UNIQUE (project, idempotency_key),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        "CREATE INDEX labels_order ON labels (project, created_at, seq)",
        """CREATE TABLE models (
            seq INTEGER PRIMARY KEY,
            project TEXT NOT NULL REFERENCES projects(name), version TEXT NOT NULL, path TEXT NOT NULL,
            created_at REAL NOT NULL, n_train INTEGER NOT NULL, temperature REAL NOT NULL,
            threshold REAL NOT NULL, metrics TEXT NOT NULL,
            UNIQUE (project, version))""",
        """CREATE TABLE current_models (
            project TEXT PRIMARY KEY REFERENCES projects(name), version TEXT NOT NULL,
            FOREIGN KEY (project, version) REFERENCES models(project, version))""",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY, project TEXT NOT NULL REFERENCES projects(name),
            time REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL)""",
        "CREATE INDEX audit_order ON audit (project, time, seq)",
    ),
)

_PROJECT_COLUMNS = (
    "name, classes, budget_labels, budget_per_items, precision_target, strategy, overlap, "
    "guideline_version, created_at"
)
_LABEL_COLUMNS = (
    "project, item_id, label, source, source_id, confidence, threshold, aggregation, "
    "guideline_version, created_at, idempotency_key"
)
_MODEL_COLUMNS = "project, version, path, created_at, n_train, temperature, threshold, metrics"
_SET_CURRENT = (
    "INSERT INTO current_models (project, version) VALUES (?, ?) "
    "ON CONFLICT (project) DO UPDATE SET version = excluded.version"
)


class SqliteStore(Store):
    """The label store in one SQLite file (WAL journal, foreign keys enforced), safe across threads.

    The schema is created or migrated on open; ``schema_version`` records each applied migration.
    """

    def __init__(self, path: Path | str, busy_timeout_ms: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = c.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > len(_MIGRATIONS):
                raise WinnowError(f"store schema version {current} is newer than this Winnow ({len(_MIGRATIONS)})")
            for version in range(current + 1, len(_MIGRATIONS) + 1):
                for statement in _MIGRATIONS[version - 1]:
                    c.execute(statement)
                c.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: committed on success, rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:  # some errors (disk full) already rolled back
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- helpers (called inside a transaction) ----------------------------------------------
    @staticmethod
    def _project_of(row: tuple) -> Project:
        return Project(row[0], tuple(json.loads(row[1])), *row[2:])

    @classmethod
    def _project(cls, c: sqlite3.Connection, name: str) -> Project:
        row = c.execute(f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound("project", f"no project named {name!r}")
        return cls._project_of(row)

    @staticmethod
    def _require_items(c: sqlite3.Connection, project: str, item_ids: Sequence[str]) -> None:
        """NotFound("item_id") naming the first of ``item_ids`` (in order) that is not in the project."""
        row = c.execute(
            "SELECT j.value FROM json_each(?) j WHERE NOT EXISTS "
            "(SELECT 1 FROM items i WHERE i.project = ? AND i.item_id = j.value) ORDER BY j.key LIMIT 1",
            (json.dumps(list(item_ids)), project),
        ).fetchone()
        if row is not None:
            raise NotFound("item_id", f"no item {row[0]!r} in project {project!r}")

    @staticmethod
    def _close_tasks(c: sqlite3.Connection, items: Sequence[tuple[str, str]]) -> None:
        """Close the tasks of ``(project, item_id)`` pairs and drop their live leases."""
        c.executemany("UPDATE tasks SET closed = 1 WHERE project = ? AND item_id = ?", items)
        c.executemany("DELETE FROM assignments WHERE project = ? AND item_id = ? AND state = 'leased'", items)

    # -- projects ---------------------------------------------------------------------------
    def create_project(self, project: Project) -> None:
        """Create a project; a second call with an identical project is a no-op.

        InvalidInput: "name" (taken by a different project) and those of
        :func:`~winnow.core.ports.store.validate_project`.
        """
        validate_project(project)
        p = project
        with self._tx() as c:
            row = c.execute(f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE name = ?", (p.name,)).fetchone()
            if row is None:
                c.execute(
                    f"INSERT INTO projects ({_PROJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.name, json.dumps(list(p.classes)), p.budget_labels, p.budget_per_items,
                     p.precision_target, p.strategy, p.overlap, p.guideline_version, p.created_at),
                )
            elif self._project_of(row) != p:
                raise InvalidInput("name", f"a different project named {p.name!r} exists")

    def get_project(self, name: str) -> Project:
        with self._tx(write=False) as c:
            return self._project(c, name)

    def list_projects(self) -> list[Project]:
        """Every project, by name."""
        with self._tx(write=False) as c:
            return [self._project_of(r) for r in c.execute(f"SELECT {_PROJECT_COLUMNS} FROM projects ORDER BY name")]

    # -- items ------------------------------------------------------------------------------
    def add_items(self, items: Sequence[Item]) -> int:
        """Insert items in one transaction, keeping ingest order; ids already present are skipped.

        Everything is validated before anything is written: InvalidInput("item_id" | "text") for an
        empty id or text, NotFound("project") for an unknown project.
        """
        validate_item_fields(items)
        with self._tx() as c:
            for project in {i.project for i in items}:
                self._project(c, project)
            cur = c.executemany(
                "INSERT OR IGNORE INTO items (project, item_id, text, ingested_at) VALUES (?, ?, ?, ?)",
                [(i.project, i.item_id, i.text, i.ingested_at) for i in items],
            )
            return max(cur.rowcount, 0)

    def get_items(self, project: str, item_ids: Sequence[str]) -> list[Item]:
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute(
                "SELECT item_id, text, ingested_at FROM items "
                "WHERE project = ? AND item_id IN (SELECT value FROM json_each(?))",
                (project, json.dumps(list(item_ids))),
            ).fetchall()
        found = {r[0]: Item(project, *r) for r in rows}
        for item_id in item_ids:
            if item_id not in found:
                raise NotFound("item_id", f"no item {item_id!r} in project {project!r}")
        return [found[i] for i in item_ids]

    def count_items(self, project: str) -> int:
        with self._tx(write=False) as c:
            self._project(c, project)
            return c.execute("SELECT COUNT(*) FROM items WHERE project = ?", (project,)).fetchone()[0]

    def delete_item(self, project: str, item_id: str) -> None:
        """Remove the item with its embedding, task, assignments, annotations, gold answer and final
        label, and write an audit row (actor "store", action "delete_item"); NotFound("item_id")
        when missing."""
        with self._tx() as c:
            self._project(c, project)
            if c.execute("DELETE FROM items WHERE project = ? AND item_id = ?", (project, item_id)).rowcount == 0:
                raise NotFound("item_id", f"no item {item_id!r} in project {project!r}")
            c.execute(
                "INSERT INTO audit (project, time, actor, action, detail) VALUES (?, ?, 'store', 'delete_item', ?)",
                (project, time.time(), item_id),
            )

    # -- embeddings -------------------------------------------------------------------------
    def put_embeddings(self, project: str, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors [n, D] as float32 (replacing older ones); InvalidInput("vectors") on a shape
        that does not match ``item_ids``, NotFound("item_id") for an unknown item."""
        validate_vectors(item_ids, vectors)
        rows = np.ascontiguousarray(vectors, dtype="<f4")  # [n, D]
        dim = rows.shape[1]
        with self._tx() as c:
            self._project(c, project)
            self._require_items(c, project, item_ids)
            c.executemany(
                "INSERT INTO embeddings (project, item_id, dim, vector) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, item_id) DO UPDATE SET dim = excluded.dim, vector = excluded.vector",
                [(project, item_id, dim, row.tobytes()) for item_id, row in zip(item_ids, rows)],
            )

    def embedded_ids(self, project: str, among: Sequence[str]) -> list[str]:
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute(
                "SELECT item_id FROM embeddings WHERE project = ? AND item_id IN (SELECT value FROM json_each(?))",
                (project, json.dumps(list(among))),
            ).fetchall()
        found = {r[0] for r in rows}
        return [i for i in among if i in found]

    def get_embeddings(self, project: str, item_ids: Sequence[str]) -> np.ndarray:
        """float32 [n, D] in the order asked ([0, 0] for no ids); NotFound("item_id") naming the first
        id without a vector; WinnowError if the vectors asked for have different dimensions."""
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute(
                "SELECT item_id, dim, vector FROM embeddings "
                "WHERE project = ? AND item_id IN (SELECT value FROM json_each(?))",
                (project, json.dumps(list(item_ids))),
            ).fetchall()
        found = {r[0]: (r[1], r[2]) for r in rows}
        for item_id in item_ids:
            if item_id not in found:
                raise NotFound("item_id", f"no embedding for item {item_id!r} in project {project!r}")
        dims = {d for d, _ in found.values()}
        if len(dims) > 1:
            raise WinnowError(f"embeddings of project {project!r} mix dimensions {sorted(dims)}")
        dim = dims.pop() if dims else 0
        blob = b"".join(found[i][1] for i in item_ids)
        return np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(len(item_ids), dim)

    # -- tasks and leases -------------------------------------------------------------------
    def add_tasks(self, tasks: Sequence[Task]) -> int:
        """Queue tasks; an item that already has a task (open or closed) keeps it. InvalidInput
        ("kind" | "priority") for an unknown kind or a NaN priority, NotFound for an unknown
        project or item."""
        validate_tasks(tasks)
        with self._tx() as c:
            for project in {t.project for t in tasks}:
                self._project(c, project)
                self._require_items(c, project, [t.item_id for t in tasks if t.project == project])
            cur = c.executemany(
                "INSERT OR IGNORE INTO tasks (project, item_id, priority, model_version, created_at, kind) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(t.project, t.item_id, t.priority, t.model_version, t.created_at, t.kind) for t in tasks],
            )
            return max(cur.rowcount, 0)

    def set_priorities(self, project: str, priorities: Mapping[str, float]) -> None:
        """Re-rank open tasks; ids without an open task are ignored (they may have been labelled)."""
        validate_priorities(priorities)
        with self._tx() as c:
            self._project(c, project)
            c.executemany(
                "UPDATE tasks SET priority = ? WHERE project = ? AND item_id = ? AND closed = 0",
                [(p, project, item_id) for item_id, p in priorities.items()],
            )

    def lease_tasks(
        self, project: str, annotator: str, n: int, lease_s: float, now: float, overlap: int
    ) -> list[Lease]:
        """See :meth:`Store.lease_tasks`. Ties in priority go to the task created first. A lease is
        live while ``now < expires_at``. Picking and writing the leases is one write transaction, so
        concurrent callers never exceed ``overlap``. InvalidInput: "annotator", "lease_s", "overlap"."""
        validate_lease(annotator, lease_s, overlap)
        if n <= 0:
            return []
        expires_at = now + lease_s
        with self._tx() as c:
            self._project(c, project)
            rows = c.execute(
                """SELECT t.item_id, t.kind, i.text FROM tasks t
                   JOIN items i ON i.project = t.project AND i.item_id = t.item_id
                   WHERE t.project = :p AND t.closed = 0
                     AND NOT EXISTS (SELECT 1 FROM assignments a
                                     WHERE a.project = t.project AND a.item_id = t.item_id AND a.annotator = :who
                                       AND (a.state != 'leased' OR a.expires_at > :now))
                     AND (t.kind = 'gold' OR (SELECT COUNT(*) FROM assignments a
                                              WHERE a.project = t.project AND a.item_id = t.item_id
                                                AND (a.state = 'answered'
                                                     OR (a.state = 'leased' AND a.expires_at > :now))) < :overlap)
                   ORDER BY t.priority DESC, t.created_at, t.seq LIMIT :n""",
                {"p": project, "who": annotator, "now": now, "overlap": overlap, "n": n},
            ).fetchall()
            c.executemany(
                "INSERT INTO assignments (project, item_id, annotator, state, expires_at) "
                "VALUES (?, ?, ?, 'leased', ?) ON CONFLICT (project, item_id, annotator) "
                "DO UPDATE SET state = 'leased', expires_at = excluded.expires_at",
                [(project, item_id, annotator, expires_at) for item_id, _, _ in rows],
            )
        return [Lease(project, item_id, annotator, text, kind, expires_at) for item_id, kind, text in rows]

    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str], lease_s: float, now: float) -> int:
        """Move the expiry of this annotator's live leases to ``now + lease_s`` (never earlier)."""
        with self._tx() as c:
            self._project(c, project)
            cur = c.executemany(
                "UPDATE assignments SET expires_at = MAX(expires_at, ?) WHERE project = ? AND item_id = ? "
                "AND annotator = ? AND state = 'leased' AND expires_at > ?",
                [(now + lease_s, project, item_id, annotator, now) for item_id in item_ids],
            )
            return max(cur.rowcount, 0)

    def skip(self, project: str, annotator: str, item_id: str) -> None:
        """Release the lease (if any) as skipped; an answered item stays answered. NotFound for an
        unknown item."""
        with self._tx() as c:
            self._project(c, project)
            self._require_items(c, project, [item_id])
            c.execute(
                "INSERT INTO assignments (project, item_id, annotator, state, expires_at) "
                "VALUES (?, ?, ?, 'skipped', 0) ON CONFLICT (project, item_id, annotator) "
                "DO UPDATE SET state = 'skipped' WHERE state = 'leased'",
                (project, item_id, annotator),
            )

    def add_annotation(self, annotation: Annotation) -> bool:
        """Record the answer and mark the annotator's assignment answered; False (nothing written)
        if this annotator already answered the item. InvalidInput("label") outside the schema,
        InvalidInput("annotator") when empty, NotFound("item_id") for an unknown item."""
        a = annotation
        validate_annotator(a.annotator)
        with self._tx() as c:
            check_label(self._project(c, a.project), a.label)
            self._require_items(c, a.project, [a.item_id])
            cur = c.execute(
                "INSERT OR IGNORE INTO annotations (project, item_id, annotator, label, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (a.project, a.item_id, a.annotator, a.label, a.created_at),
            )
            if cur.rowcount == 0:
                return False
            c.execute(
                "INSERT INTO assignments (project, item_id, annotator, state, expires_at) "
                "VALUES (?, ?, ?, 'answered', ?) ON CONFLICT (project, item_id, annotator) "
                "DO UPDATE SET state = 'answered'",
                (a.project, a.item_id, a.annotator, a.created_at),
            )
            return True

    def annotations(self, project: str, item_ids: Sequence[str] | None = None) -> list[Annotation]:
        with self._tx(write=False) as c:
            self._project(c, project)
            sql = "SELECT item_id, annotator, label, created_at FROM annotations WHERE project = ?"
            params: tuple = (project,)
            if item_ids is not None:
                sql += " AND item_id IN (SELECT value FROM json_each(?))"
                params += (json.dumps(list(item_ids)),)
            rows = c.execute(sql + " ORDER BY created_at, seq", params).fetchall()
        return [Annotation(project, *r) for r in rows]

    def close_task(self, project: str, item_id: str) -> None:
        """Close the item's task and drop its live leases; a no-op when the item has no task."""
        with self._tx() as c:
            self._project(c, project)
            self._close_tasks(c, [(project, item_id)])

    def task_ids(self, project: str, kind: str) -> list[str]:
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute("SELECT item_id FROM tasks WHERE project = ? AND kind = ? ORDER BY rowid",
                             (project, kind)).fetchall()
        return [r[0] for r in rows]

    def open_tasks(self, project: str, among: Sequence[str] | None = None) -> list[Task]:
        sql = "SELECT item_id, priority, model_version, created_at, kind FROM tasks WHERE project = ? AND closed = 0"
        params: tuple = (project,)
        if among is not None:
            sql += " AND item_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(list(among)),)
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute(sql + " ORDER BY priority DESC, created_at, seq", params).fetchall()
        return [Task(project, *r) for r in rows]

    # -- gold -------------------------------------------------------------------------------
    def set_gold(self, project: str, answers: Mapping[str, str]) -> None:
        """Record (or replace) known answers; InvalidInput("label") outside the schema, NotFound
        ("item_id") for an item not in the project. All or nothing."""
        with self._tx() as c:
            p = self._project(c, project)
            for label in answers.values():
                check_label(p, label)
            self._require_items(c, project, list(answers))
            c.executemany(
                "INSERT INTO gold (project, item_id, label) VALUES (?, ?, ?) "
                "ON CONFLICT (project, item_id) DO UPDATE SET label = excluded.label",
                [(project, item_id, label) for item_id, label in answers.items()],
            )

    def gold(self, project: str) -> dict[str, str]:
        with self._tx(write=False) as c:
            self._project(c, project)
            return dict(c.execute("SELECT item_id, label FROM gold WHERE project = ?", (project,)).fetchall())

    # -- final labels -----------------------------------------------------------------------
    def put_labels(self, labels: Sequence[Label]) -> list[bool]:
        """Write final labels and close their items' tasks, in one transaction; per label (in order)
        True if written, False when its item already has a final label or its project has seen the
        idempotency key (an earlier label of the same batch counts). All or nothing: InvalidInput
        "label" (outside the schema), "source", "confidence" (outside [0, 1]), "idempotency_key"
        (empty); NotFound "project" or "item_id" (the first unknown one). ``threshold`` may be None
        or inf."""
        for lb in labels:
            validate_label(lb)
        if not labels:
            return []
        with self._tx() as c:
            projects: dict[str, Project] = {}
            for lb in labels:
                if lb.project not in projects:
                    projects[lb.project] = self._project(c, lb.project)
                check_label(projects[lb.project], lb.label)
            for name in projects:
                self._require_items(c, name, [lb.item_id for lb in labels if lb.project == name])
            written = [
                c.execute(
                    f"INSERT OR IGNORE INTO labels ({_LABEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (lb.project, lb.item_id, lb.label, lb.source, lb.source_id, lb.confidence, lb.threshold,
                     lb.aggregation, lb.guideline_version, lb.created_at, lb.idempotency_key),
                ).rowcount == 1
                for lb in labels
            ]
            self._close_tasks(c, [(lb.project, lb.item_id) for lb, new in zip(labels, written) if new])
            return written

    def labels(self, project: str, source: str | None = None) -> list[Label]:
        with self._tx(write=False) as c:
            self._project(c, project)
            sql = f"SELECT {_LABEL_COLUMNS} FROM labels WHERE project = ?"
            params: tuple = (project,)
            if source is not None:
                sql += " AND source = ?"
                params += (source,)
            rows = c.execute(sql + " ORDER BY created_at, seq", params).fetchall()
        return [Label(*r) for r in rows]

    def unlabeled_ids(self, project: str, among: Sequence[str] | None = None) -> list[str]:
        sql = ("SELECT i.item_id FROM items i WHERE i.project = ? AND NOT EXISTS "
               "(SELECT 1 FROM labels l WHERE l.project = i.project AND l.item_id = i.item_id)")
        params: tuple = (project,)
        if among is not None:
            sql += " AND i.item_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(list(among)),)
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute(sql + " ORDER BY i.seq", params).fetchall()
        return [r[0] for r in rows]

    # -- models -----------------------------------------------------------------------------
    @staticmethod
    def _model(row: tuple) -> ModelVersion:
        return ModelVersion(*row[:-1], metrics=json.loads(row[-1]))

    def register_model(self, model: ModelVersion) -> None:
        """Add the version and make it current; registering a known version again changes nothing
        (so a redelivered registration does not undo a later promotion)."""
        m = model
        with self._tx() as c:
            self._project(c, m.project)
            cur = c.execute(
                f"INSERT OR IGNORE INTO models ({_MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (m.project, m.version, m.path, m.created_at, m.n_train, m.temperature, m.threshold,
                 json.dumps(m.metrics)),
            )
            if cur.rowcount:
                c.execute(_SET_CURRENT, (m.project, m.version))

    def models(self, project: str) -> list[ModelVersion]:
        with self._tx(write=False) as c:
            self._project(c, project)
            rows = c.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE project = ? ORDER BY created_at, seq", (project,)
            ).fetchall()
        return [self._model(r) for r in rows]

    def current_model(self, project: str) -> ModelVersion | None:
        with self._tx(write=False) as c:
            self._project(c, project)
            row = c.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models "
                "WHERE (project, version) = (SELECT project, version FROM current_models WHERE project = ?)",
                (project,),
            ).fetchone()
        return None if row is None else self._model(row)

    def promote(self, project: str, version: str) -> ModelVersion:
        with self._tx() as c:
            self._project(c, project)
            row = c.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE project = ? AND version = ?", (project, version)
            ).fetchone()
            if row is None:
                raise NotFound("version", f"no model version {version!r} in project {project!r}")
            c.execute(_SET_CURRENT, (project, version))
        return self._model(row)

    # -- audit ------------------------------------------------------------------------------
    def audit(self, project: str, actor: str, action: str, detail: str, now: float) -> None:
        with self._tx() as c:
            self._project(c, project)
            c.execute(
                "INSERT INTO audit (project, time, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                (project, now, actor, action, detail),
            )

    def audit_log(self, project: str) -> list[tuple[float, str, str, str]]:
        with self._tx(write=False) as c:
            self._project(c, project)
            return c.execute(
                "SELECT time, actor, action, detail FROM audit WHERE project = ? ORDER BY time, seq", (project,)
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
