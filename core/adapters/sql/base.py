"""What every part of the SQL store shares: its dialect, its migration on open, and the lookups that
run inside a transaction (the project, the items an id list names, closing tasks)."""

from __future__ import annotations

import json
from typing import Any, Sequence

from winnow.core.adapters.sql.dialect import Dialect, Tx
from winnow.core.adapters.sql.migrations import migrate
from winnow.core.domain.audit import GLOBAL, AuditRecord, link
from winnow.core.domain.errors import NotFound
from winnow.core.domain.records import Project, Response
from winnow.core.domain.validation import check_text

AUDIT_COLUMNS = "chain, n, time, actor, action, objects, detail, prev_hash, hash"


def audit_record(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(row[0], row[1], row[2], row[3], row[4], tuple(json.loads(row[5])), *row[6:])


PROJECT_COLUMNS = (
    "name, classes, budget_labels, budget_per_items, precision_target, strategy, overlap, "
    "guideline_version, created_at, guideline, kind"
)


def responses_json(responses: Sequence[Response]) -> str | None:
    """A preference item's responses as stored (items.responses): JSON ``[[text, model], ...]``, None for none."""
    return json.dumps([[r.text, r.model] for r in responses], ensure_ascii=False) if responses else None


def responses_of(stored: str | None) -> tuple[Response, ...]:
    return tuple(Response(text, model) for text, model in json.loads(stored)) if stored else ()


class SqlBase:
    """The dialect and the in-transaction helpers; the schema is created or migrated on open."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        migrate(dialect)

    def _tx(self, write: bool = True) -> Any:
        """One transaction (see :meth:`Dialect.transaction`)."""
        return self.dialect.transaction(write)

    def _ids(self, ids: Sequence[str], field: str = "item_id") -> Any:
        """An id list as the one parameter of ``dialect.ids_table``; InvalidInput(field) for a NUL."""
        check_text(field, *ids)
        return self.dialect.array(ids)

    def _in(self, column: str) -> str:
        """``column`` is one of the list bound to the fragment's one parameter (see :meth:`_ids`)."""
        return f"{column} IN (SELECT j.value FROM {self.dialect.ids_table})"

    def _project_of(self, row: Sequence[Any]) -> Project:
        return Project(row[0], tuple(self.dialect.from_array(row[1])), *row[2:])

    def _project(self, tx: Tx, name: str) -> Project:
        """The project; InvalidInput("project") for a NUL in the name, NotFound("project") when missing."""
        check_text("project", name)
        row = tx.one(f"SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?", (name,))
        if row is None:
            raise NotFound("project", f"no project named {name[:100]!r}")
        return self._project_of(row)

    def _select(self, project: str, sql: str, order: str, among: Sequence[str] | None = None,
                column: str = "item_id") -> list[Any]:
        """The rows of ``sql`` (a SELECT whose WHERE clause binds the project as its one parameter),
        only those whose ``column`` is in ``among`` when given, in ``order``; one read transaction
        that first checks the project."""
        params: tuple = (project,)
        if among is not None:
            sql += f" AND {self._in(column)}"
            params += (self._ids(among),)
        with self._tx(write=False) as tx:
            self._project(tx, project)
            return tx.all(f"{sql} ORDER BY {order}", params)

    def _require_items(self, tx: Tx, project: str, item_ids: Sequence[str]) -> None:
        """NotFound("item_id") naming the first of ``item_ids`` (in order) that is not in the project."""
        row = tx.one(
            f"SELECT j.value FROM {self.dialect.ids_table} WHERE NOT EXISTS "
            "(SELECT 1 FROM items i WHERE i.project = ? AND i.item_id = j.value) ORDER BY j.key LIMIT 1",
            (self._ids(item_ids), project),
        )
        if row is not None:
            raise NotFound("item_id", f"no item {row[0][:100]!r} in project {project[:100]!r}")

    def _close_tasks(self, tx: Tx, project: str, item_ids: Sequence[str]) -> None:
        """Close the items' tasks and drop their live leases."""
        ids = self._ids(sorted(item_ids))
        tx.run(f"UPDATE tasks SET closed = TRUE WHERE project = ? AND {self._in('item_id')}", (project, ids))
        tx.run(f"DELETE FROM assignments WHERE project = ? AND {self._in('item_id')} AND state = 'leased'",
               (project, ids))

    def _audit(self, tx: Tx, project: str | None, actor: str, action: str, detail: str | dict, now: float,
               objects: Sequence[str] = ()) -> AuditRecord:
        """Append a record to the project's audit chain (the global one for None), linked to the
        chain's last record (``detail`` a dict is written as JSON)."""
        chain = GLOBAL if project is None else project
        text = detail if isinstance(detail, str) else json.dumps(detail)
        self.dialect.lock_audit(tx, chain)
        row = tx.one(f"SELECT {AUDIT_COLUMNS} FROM audit_trail WHERE chain = ? ORDER BY n DESC LIMIT 1", (chain,))
        record = link(None if row is None else audit_record(row), chain, now, actor, action, objects, text)
        tx.run(f"INSERT INTO audit_trail ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (record.chain, record.n, record.time, record.actor, record.action,
                json.dumps(list(record.objects), ensure_ascii=False), record.detail, record.prev_hash, record.hash))
        return record

    def close(self) -> None:
        """Release the connection."""
        self.dialect.close()
