"""The label store, written once in SQL: every :class:`~winnow.core.ports.store.Store` role over a
:class:`~winnow.core.adapters.sql.dialect.Dialect` (SQLite or PostgreSQL).

Each method is one transaction. Everything a call is given is validated before anything is written
(:mod:`winnow.core.domain.validation`), so a refused call writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
from winnow.core.adapters.sql.access import SqlTokens
from winnow.core.adapters.sql.base import AUDIT_COLUMNS, PROJECT_COLUMNS, audit_record, responses_json, responses_of
from winnow.core.adapters.sql.task_queue import SqlTaskQueue
from winnow.core.domain.audit import GLOBAL, AuditRecord
from winnow.core.domain.comparisons import embedded_texts
from winnow.core.domain.errors import InvalidInput, NotFound, WinnowError
from winnow.core.domain.records import ArrivalDraw, Item, Label, ModelVersion, Project
from winnow.core.domain.validation import (
    check_finite,
    check_label,
    check_responses,
    check_text,
    validate_item_fields,
    validate_label,
    validate_model,
    validate_project,
    validate_vectors,
)
from winnow.core.ports.store import ERASURE_DIGEST_S, CloseRequest, Erasure, Store

_LABEL_COLUMNS = (
    "project, item_id, label, source, source_id, confidence, threshold, aggregation, "
    "guideline_version, created_at, idempotency_key, probability"
)
_MODEL_COLUMNS = "project, version, path, created_at, n_train, temperature, threshold, metrics"
_SET_CURRENT = (
    "INSERT INTO current_models (project, version) VALUES (?, ?) "
    "ON CONFLICT (project) DO UPDATE SET version = excluded.version"
)
_CLOSE_COLUMNS = "project, request_id, actor, requested_at, items, served_at, tasks, low_confidence, unlabeled"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlStore(SqlTaskQueue, SqlTokens, Store):
    """Every store role on one database; construct it with a dialect (or use ``SqliteStore`` /
    ``PostgresStore``). The schema is created or migrated on open."""

    # -- projects ---------------------------------------------------------------------------
    def create_project(self, project: Project) -> None:
        """Create a project; a second call with an identical project is a no-op. InvalidInput:
        "name" (taken by a different project) and those of ``validate_project``."""
        validate_project(project)
        p = project
        with self._tx() as tx:
            if not tx.run(
                f"INSERT INTO projects ({PROJECT_COLUMNS}) VALUES ({_marks(11)}) ON CONFLICT (name) DO NOTHING",
                (p.name, self.dialect.array(p.classes), p.budget_labels, p.budget_per_items, p.precision_target,
                 p.strategy, p.overlap, p.guideline_version, p.created_at, p.guideline, p.kind),
            ) and self._project(tx, p.name) != p:
                raise InvalidInput("name", f"a different project named {p.name!r} exists")

    def update_project(self, project: Project, actor: str, now: float) -> Project:
        """See :meth:`Projects.update_project` (one transaction: the row and its audit record)."""
        validate_project(project)
        check_text("actor", actor)
        check_finite("now", now)
        p = project
        with self._tx() as tx:
            old = self._project(tx, p.name)
            if p.kind != old.kind:
                raise InvalidInput("kind", f"project {p.name!r} is a {old.kind} project; a project's kind "
                                           "never changes")
            if tuple(p.classes[: len(old.classes)]) != tuple(old.classes):
                raise InvalidInput("classes", "classes can only be added, after the existing ones (a class cannot be "
                                   "removed, renamed or moved: every label and model refers to it)")
            settings = ("classes", "budget_labels", "budget_per_items", "precision_target", "strategy", "overlap",
                        "guideline_version", "guideline")
            changed = {k: [getattr(old, k), getattr(p, k)] for k in settings if getattr(old, k) != getattr(p, k)}
            if "classes" in changed:
                changed["classes"] = [list(old.classes), list(p.classes)]
            if changed:
                tx.run("UPDATE projects SET classes = ?, budget_labels = ?, budget_per_items = ?, precision_target = ?, "
                       "strategy = ?, overlap = ?, guideline_version = ?, guideline = ? WHERE name = ?",
                       (self.dialect.array(p.classes), p.budget_labels, p.budget_per_items, p.precision_target,
                        p.strategy, p.overlap, p.guideline_version, p.guideline, p.name))
                self._audit(tx, p.name, actor, "project_update", changed, now, [p.name])
            return self._project(tx, p.name)

    def get_project(self, name: str) -> Project:
        with self._tx(write=False) as tx:
            return self._project(tx, name)

    def list_projects(self) -> list[Project]:
        with self._tx(write=False) as tx:
            rows = tx.all(f"SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name")
        return [self._project_of(r) for r in rows]

    # -- items ------------------------------------------------------------------------------
    def add_items(self, items: Sequence[Item]) -> int:
        """Insert items in one transaction, keeping ingest order; ids already present are skipped.
        InvalidInput ("item_id", "text", "project", "ingested_at") or NotFound("project") for any
        item means nothing is written."""
        validate_item_fields(items)
        with self._tx() as tx:
            projects = {name: self._project(tx, name) for name in sorted({i.project for i in items})}
            for item in items:
                check_responses(projects[item.project], item, stored=True)
            return tx.many(
                "INSERT INTO items (project, item_id, text, ingested_at, responses) SELECT ?, ?, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM erasures e WHERE e.project = ? AND e.item_id = ?) "
                "ON CONFLICT (project, item_id) DO NOTHING",
                [(i.project, i.item_id, i.text, i.ingested_at, responses_json(i.responses), i.project, i.item_id)
                 for i in items],
            )

    def get_items(self, project: str, item_ids: Sequence[str]) -> list[Item]:
        found = self.find_items(project, item_ids)
        if len(found) < len(item_ids):
            have = {item.item_id for item in found}
            missing = next(i for i in item_ids if i not in have)
            raise NotFound("item_id", f"no item {missing[:100]!r} in project {project!r}")
        return found

    def count_items(self, project: str) -> int:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return tx.one("SELECT COUNT(*) FROM items WHERE project = ?", (project,))[0]

    def find_items(self, project: str, item_ids: Sequence[str]) -> list[Item]:
        rows = self._select(project, "SELECT item_id, text, ingested_at, responses FROM items WHERE project = ?", "seq",
                            item_ids)
        found = {r[0]: Item(project, r[0], r[1], r[2], responses_of(r[3])) for r in rows}
        return [found[i] for i in item_ids if i in found]

    def erase_items(self, project: str, item_ids: Sequence[str], actor: str, now: float) -> Erasure:
        """See :meth:`Items.erase_items`; holds the project's task lock (no lease or label races it)."""
        check_text("actor", actor)
        check_finite("now", now)
        ids = list(dict.fromkeys(item_ids))
        with self._tx() as tx:
            self._project(tx, project)
            self.dialect.lock_project(tx, project)
            present = {r[0]: embedded_texts(r[1], responses_of(r[2])) for r in tx.all(
                f"SELECT item_id, text, responses FROM items WHERE project = ? AND {self._in('item_id')}",
                (project, self._ids(ids)))}
            before = {r[0] for r in tx.all(
                f"SELECT item_id FROM erasures WHERE project = ? AND {self._in('item_id')}", (project, self._ids(ids)))}
            unknown = [i for i in ids if i not in present and i not in before]
            if unknown:
                raise NotFound("item_id", f"no item {unknown[0][:100]!r} in project {project!r}")
            erased = [i for i in ids if i in present]
            first = tx.one(f"SELECT MIN(created_at) FROM labels WHERE project = ? AND source IN ('human', 'gold') "
                           f"AND {self._in('item_id')}", (project, self._ids(erased)))[0] if erased else None
            versions = [] if first is None else [r[0] for r in tx.all(
                "SELECT version FROM models WHERE project = ? AND created_at >= ? ORDER BY seq", (project, first))]
            if erased:
                tx.run(f"DELETE FROM items WHERE project = ? AND {self._in('item_id')}", (project, self._ids(erased)))
                tx.many("INSERT INTO erasures (project, item_id, erased_at, text_sha256) VALUES (?, ?, ?, ?)",
                        [(project, i, now, ",".join(hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest()
                                                    for t in present[i])) for i in erased])
            tx.run("UPDATE erasures SET text_sha256 = NULL WHERE project = ? AND erased_at < ?",
                   (project, now - ERASURE_DIGEST_S))
            self._audit(tx, project, actor, "erase", {"erased": len(erased), "already": len(ids) - len(erased),
                                                      "model_versions": versions}, now, ids)
        self.dialect.scrub()
        return Erasure(tuple(erased), tuple(i for i in ids if i not in present), tuple(versions))

    def erasures(self, project: str, after: int = 0) -> list[tuple[int, str, str | None]]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return [tuple(r) for r in tx.all(  # type: ignore[misc]
                "SELECT seq, item_id, text_sha256 FROM erasures WHERE project = ? AND seq > ? ORDER BY seq",
                (project, after))]

    def erased_among(self, project: str, item_ids: Sequence[str]) -> set[str]:
        rows = self._select(project, "SELECT item_id FROM erasures WHERE project = ?", "seq", item_ids)
        return {r[0] for r in rows}

    def unlabeled_ids(self, project: str, among: Sequence[str] | None = None) -> list[str]:
        rows = self._select(project, "SELECT i.item_id FROM items i WHERE i.project = ? AND NOT EXISTS "
                                     "(SELECT 1 FROM labels l WHERE l.project = i.project AND l.item_id = i.item_id)",
                            "i.seq", among, "i.item_id")
        return [r[0] for r in rows]

    # -- embeddings -------------------------------------------------------------------------
    def put_embeddings(self, project: str, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors [n, D] as little-endian float32 (replacing older ones); InvalidInput
        ("vectors") on a shape that does not match ``item_ids``, NotFound("item_id") for an unknown item."""
        validate_vectors(item_ids, vectors)
        rows = np.ascontiguousarray(vectors, dtype="<f4")  # [n, D]
        dim = rows.shape[1]
        with self._tx() as tx:
            self._project(tx, project)
            self._require_items(tx, project, item_ids)
            tx.many(
                "INSERT INTO embeddings (project, item_id, dim, vector) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, item_id) DO UPDATE SET dim = excluded.dim, vector = excluded.vector",
                [(project, item_id, dim, row.tobytes()) for item_id, row in zip(item_ids, rows)],
            )

    # -- arrival draws ----------------------------------------------------------------------
    def record_draws(self, project: str, draws: Sequence[ArrivalDraw]) -> None:
        """See :meth:`ArrivalDraws.record_draws`."""
        for d in draws:
            check_text("item_id", d.item_id)
            for name in ("probability", "expected"):
                value = getattr(d, name)
                if not 0.0 <= value <= 1.0:  # also refuses NaN
                    raise InvalidInput(name, f"{name} of item {d.item_id[:100]!r} must be in [0, 1], got {value!r}")
        if not draws:
            return
        with self._tx() as tx:
            self._project(tx, project)
            self._require_items(tx, project, [d.item_id for d in draws])
            tx.many("INSERT INTO arrival_draws (project, item_id, probability, drawn, expected) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (project, item_id) DO UPDATE SET probability = excluded.probability, "
                    "drawn = excluded.drawn, expected = excluded.expected",
                    [(project, d.item_id, float(d.probability), bool(d.drawn), float(d.expected)) for d in draws])

    def arrival_draws(self, project: str) -> list[ArrivalDraw]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all("SELECT d.item_id, d.probability, d.drawn, d.expected FROM arrival_draws d "
                          "JOIN items i ON i.project = d.project AND i.item_id = d.item_id "
                          "WHERE d.project = ? ORDER BY i.seq", (project,))
        return [ArrivalDraw(item_id, float(p), bool(drawn), float(e)) for item_id, p, drawn, e in rows]

    def embedded_ids(self, project: str, among: Sequence[str]) -> list[str]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all(f"SELECT item_id FROM embeddings WHERE project = ? AND {self._in('item_id')}",
                          (project, self._ids(among)))
        found = {r[0] for r in rows}
        return [i for i in among if i in found]

    def drop_model_embeddings(self, project: str, labeled_before: float, aggregations: Sequence[str]) -> int:
        """See :meth:`Embeddings.drop_model_embeddings` (one statement)."""
        check_finite("labeled_before", labeled_before)
        if isinstance(aggregations, str) or not all(isinstance(a, str) for a in aggregations):
            raise InvalidInput("aggregations", "expected a list of label aggregations")
        if not aggregations:
            return 0
        with self._tx() as tx:
            self._project(tx, project)
            return tx.run("DELETE FROM embeddings WHERE project = ? AND item_id IN (SELECT item_id FROM labels "
                          "WHERE project = ? AND source = 'model' AND created_at < ? AND "
                          f"{self._in('aggregation')})",
                          (project, project, labeled_before, self._ids(list(aggregations), "aggregation")))

    def bind_encoder(self, project: str, encoder: str) -> str:
        if not isinstance(encoder, str) or not encoder.strip() or len(encoder) > 500:
            raise InvalidInput("encoder", "expected a non-empty encoder id of at most 500 characters")
        with self._tx() as tx:
            self._project(tx, project)
            tx.run("UPDATE projects SET encoder = ? WHERE name = ? AND encoder IS NULL", (encoder, project))
            return tx.one("SELECT encoder FROM projects WHERE name = ?", (project,))[0]

    def project_encoder(self, project: str) -> str | None:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return tx.one("SELECT encoder FROM projects WHERE name = ?", (project,))[0]

    def get_embeddings(self, project: str, item_ids: Sequence[str]) -> np.ndarray:
        """float32 [n, D] in the order asked ([0, 0] for no ids); NotFound("item_id") naming the first
        id without a vector; WinnowError if the vectors asked for have different dimensions."""
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all(f"SELECT item_id, dim, vector FROM embeddings WHERE project = ? AND {self._in('item_id')}",
                          (project, self._ids(item_ids)), binary=True)
        found = {r[0]: (r[1], r[2]) for r in rows}
        for item_id in item_ids:
            if item_id not in found:
                raise NotFound("item_id", f"no embedding for item {item_id[:100]!r} in project {project!r}")
        dims = {d for d, _ in found.values()}
        if len(dims) > 1:
            raise WinnowError(f"embeddings of project {project!r} mix dimensions {sorted(dims)}")
        dim = dims.pop() if dims else 0
        blob = b"".join(bytes(found[i][1]) for i in item_ids)
        return np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(len(item_ids), dim)

    # -- final labels -----------------------------------------------------------------------
    def put_labels(self, labels: Sequence[Label]) -> list[bool]:
        """See :meth:`Labels.put_labels`. All or nothing: InvalidInput "label" (outside the schema),
        "source", "confidence" (outside [0, 1]), "idempotency_key" (empty), "created_at",
        "threshold" (NaN; None or inf are kept), a NUL in a text field; NotFound "project" or
        "item_id" (the first unknown one). Each project's task lock is held, so batches closing
        many tasks queue behind leasers and re-rankers instead of deadlocking with them."""
        for lb in labels:
            validate_label(lb)
        if not labels:
            return []
        with self._tx() as tx:
            projects: dict[str, Project] = {}
            for lb in labels:
                if lb.project not in projects:
                    projects[lb.project] = self._project(tx, lb.project)
                check_label(projects[lb.project], lb.label)
            for name in sorted(projects):
                self._require_items(tx, name, [lb.item_id for lb in labels if lb.project == name])
                self.dialect.lock_project(tx, name)
            written = tx.inserted(
                f"INSERT INTO labels ({_LABEL_COLUMNS}) VALUES ({_marks(12)}) ON CONFLICT DO NOTHING",
                [(lb.project, lb.item_id, lb.label, lb.source, lb.source_id, lb.confidence, lb.threshold,
                  lb.aggregation, lb.guideline_version, lb.created_at, lb.idempotency_key, lb.probability)
                 for lb in labels],
            )
            for name in projects:
                new = [lb.item_id for lb, ok in zip(labels, written) if ok and lb.project == name]
                if new:
                    self._close_tasks(tx, name, new)
            return written

    def labels(self, project: str, source: str | None = None) -> list[Label]:
        sql = f"SELECT {_LABEL_COLUMNS} FROM labels WHERE project = ?"
        params: tuple = (project,)
        if source is not None:
            check_text("source", source)
            sql += " AND source = ?"
            params += (source,)
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all(sql + " ORDER BY created_at, seq", params)
        return [Label(*r) for r in rows]

    def count_labels(self, project: str) -> dict[str, int]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return dict(tx.all("SELECT source, COUNT(*) FROM labels WHERE project = ? GROUP BY source ORDER BY source",
                               (project,)))

    def audit_record(self, project: str, version: str | None = None,
                     ) -> tuple[list[tuple[str, float | None, int]], list[tuple[str, float, bool | None]]]:
        """See :meth:`Labels.audit_record` (two grouped reads in one transaction)."""
        labels_of, tasks_of = ("", "") if version is None else (" AND source_id = ?", " AND t.model_version = ?")
        args = (project,) if version is None else (project, version)
        with self._tx(write=False) as tx:
            self._project(tx, project)
            kept = tx.all("SELECT aggregation, probability, COUNT(*) FROM labels WHERE project = ? AND source = 'model'"
                          f"{labels_of} GROUP BY aggregation, probability ORDER BY aggregation, probability", args)
            audits = tx.all("SELECT t.family, t.probability, l.label, t.model_label FROM tasks t "
                            "LEFT JOIN labels l ON l.project = t.project AND l.item_id = t.item_id "
                            f"AND l.source IN ('human', 'gold') WHERE t.project = ? AND t.kind = 'audit'{tasks_of} "
                            "ORDER BY t.seq", args)
        return ([(a, p, int(c)) for a, p, c in kept],
                [(f, p, None if label is None else label != model_label) for f, p, label, model_label in audits])

    # -- models -----------------------------------------------------------------------------
    @staticmethod
    def _model(row: Sequence) -> ModelVersion:
        return ModelVersion(*row[:-1], metrics=json.loads(row[-1]))

    def register_model(self, model: ModelVersion) -> None:
        """Add the version and make it current; registering a known version again changes nothing.
        Metrics are kept as JSON text, so NaN and key order survive."""
        validate_model(model)
        m = model
        with self._tx() as tx:
            self._project(tx, m.project)
            if tx.run(
                f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES ({_marks(8)}) ON CONFLICT (project, version) DO NOTHING",
                (m.project, m.version, m.path, m.created_at, m.n_train, m.temperature, m.threshold,
                 json.dumps(m.metrics)),
            ):
                tx.run(_SET_CURRENT, (m.project, m.version))

    def models(self, project: str) -> list[ModelVersion]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all(f"SELECT {_MODEL_COLUMNS} FROM models WHERE project = ? ORDER BY created_at, seq", (project,))
        return [self._model(r) for r in rows]

    def current_model(self, project: str) -> ModelVersion | None:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            row = tx.one(f"SELECT {_MODEL_COLUMNS} FROM models WHERE (project, version) = "
                         "(SELECT project, version FROM current_models WHERE project = ?)", (project,))
        return None if row is None else self._model(row)

    def promote(self, project: str, version: str) -> ModelVersion:
        check_text("version", version)
        with self._tx() as tx:
            self._project(tx, project)
            row = tx.one(f"SELECT {_MODEL_COLUMNS} FROM models WHERE project = ? AND version = ?", (project, version))
            if row is None:
                raise NotFound("version", f"no model version {version[:100]!r} in project {project!r}")
            tx.run(_SET_CURRENT, (project, version))
        return self._model(row)

    # -- audit ------------------------------------------------------------------------------
    def audit(self, project: str | None, actor: str, action: str, detail: str, now: float,
              objects: Sequence[str] = ()) -> AuditRecord:
        check_text("actor", actor)
        check_text("action", action)
        check_text("detail", detail)
        check_text("objects", *objects)
        check_finite("now", now)
        with self._tx() as tx:
            if project is not None:
                self._project(tx, project)
            return self._audit(tx, project, actor, action, detail, now, objects)

    def audit_log(self, project: str) -> list[tuple[float, str, str, str]]:
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return [tuple(r) for r in tx.all(  # type: ignore[misc]
                "SELECT time, actor, action, detail FROM audit_trail WHERE chain = ? ORDER BY time, n", (project,))]

    def audit_trail(self, project: str | None = None, after: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """See :meth:`AuditLog.audit_trail`."""
        chain = GLOBAL if project is None else project
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_trail WHERE chain = ? AND n > ? ORDER BY n"
        with self._tx(write=False) as tx:
            if project is not None:
                self._project(tx, project)
            rows = tx.all(sql + ("" if limit is None else f" LIMIT {int(limit)}"), (chain, after))
        return [audit_record(r) for r in rows]

    def audit_chains(self) -> list[str]:
        """Every chain's name ("" for the global one)."""
        with self._tx(write=False) as tx:
            return [r[0] for r in tx.all("SELECT DISTINCT chain FROM audit_trail ORDER BY chain")]

    # -- close requests ---------------------------------------------------------------------
    def request_close(self, project: str, request_id: str, actor: str, now: float) -> CloseRequest:
        """See :meth:`CloseRequests.request_close`; a request id already used returns that request.
        Holds the project's task lock, so two callers at once make one request."""
        check_text("request_id", request_id)
        check_text("actor", actor)
        check_finite("now", now)
        if not request_id:
            raise InvalidInput("request_id", "request id is empty")
        with self._tx() as tx:
            self._project(tx, project)
            self.dialect.lock_project(tx, project)
            row = tx.one(f"SELECT {_CLOSE_COLUMNS} FROM close_requests WHERE project = ? "
                         "AND (served_at IS NULL OR request_id = ?) ORDER BY served_at IS NOT NULL, seq LIMIT 1",
                         (project, request_id))
            if row is not None:
                return CloseRequest(*row)
            items = tx.one("SELECT COUNT(*) FROM items WHERE project = ?", (project,))[0]
            tx.run("INSERT INTO close_requests (project, request_id, actor, requested_at, items) VALUES (?, ?, ?, ?, ?)",
                   (project, request_id, actor, now, items))
            self._audit(tx, project, actor, "close_stream", {"request": request_id, "items": items}, now)
        return CloseRequest(project, request_id, actor, now, items)

    def close_requests(self, project: str, pending_only: bool = False) -> list[CloseRequest]:
        sql = f"SELECT {_CLOSE_COLUMNS} FROM close_requests WHERE project = ?"
        with self._tx(write=False) as tx:
            self._project(tx, project)
            rows = tx.all(sql + (" AND served_at IS NULL" if pending_only else "") + " ORDER BY seq", (project,))
        return [CloseRequest(*r) for r in rows]

    def mark_closed(self, project: str, request_ids: Sequence[str], actor: str, tasks: int,
                    low_confidence: int, now: float, unlabeled: int = 0) -> int:
        """See :meth:`CloseRequests.mark_closed`; the audit row is written only when a request was marked."""
        check_text("actor", actor)
        check_finite("now", now)
        if min(tasks, low_confidence, unlabeled) < 0:
            raise InvalidInput("tasks", f"counts must not be negative, got {tasks}, {low_confidence} and {unlabeled}")
        with self._tx() as tx:
            self._project(tx, project)
            marked = tx.run("UPDATE close_requests SET served_at = ?, tasks = ?, low_confidence = ?, unlabeled = ? "
                            f"WHERE project = ? AND served_at IS NULL AND {self._in('request_id')}",
                            (now, tasks, low_confidence, unlabeled, project, self._ids(request_ids, "request_id")))
            if marked:
                self._audit(tx, project, actor, "stream_closed",
                            {"requests": list(request_ids), "tasks": tasks, "low_confidence": low_confidence,
                             "unlabeled": unlabeled}, now)
            return marked
