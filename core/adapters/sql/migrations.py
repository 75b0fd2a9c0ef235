"""The store's schema, as numbered migrations written once for both dialects, and the one runner
that applies the missing ones when a store opens.

Migration n is ``MIGRATIONS[n - 1]``: DDL whose ``{serial}``, ``{blob}`` and ``{text_list}`` slots
the dialect fills, or a function of the open transaction (data moves). Append new ones; never edit
an applied one. ``schema_version`` records each applied migration.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Union

from winnow.core.adapters.sql.dialect import Dialect, Tx
from winnow.core.domain.errors import WinnowError

Step = Union[str, Callable[[Tx], None]]


def _close_requests_from_audit(tx: Tx) -> None:
    """Move close-of-stream requests and their serving out of the audit log (where they were kept
    before migration 2) into ``close_requests``; the audit rows stay, as a log."""
    rows = tx.all("SELECT project, time, actor, action, detail FROM audit "
                  "WHERE action IN ('close_stream', 'stream_closed') ORDER BY project, time, seq")
    for project, at, actor, action, detail in rows:
        fields = json.loads(detail)
        if action == "close_stream":
            tx.run("INSERT INTO close_requests (project, request_id, actor, requested_at, items) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project, request_id) DO NOTHING",
                   (project, fields["request"], actor, at, int(fields.get("items", 0))))
        else:
            tx.many("UPDATE close_requests SET served_at = ?, tasks = ?, low_confidence = ? "
                    "WHERE project = ? AND request_id = ? AND served_at IS NULL",
                    [(at, int(fields["tasks"]), int(fields["low_confidence"]), project, r)
                     for r in fields["requests"]])


def _chain_the_audit_log(tx: Tx) -> None:
    """Copy the unchained audit rows (before migration 5) into the hash-chained trail, each project's
    rows in their time order."""
    from winnow.core.domain.audit import link

    last: dict[str, Any] = {}
    for project, at, actor, action, detail in tx.all(
            "SELECT project, time, actor, action, detail FROM audit ORDER BY project, time, seq"):
        record = last[project] = link(last.get(project), project, at, actor, action, (), detail)
        tx.run("INSERT INTO audit_trail (chain, n, time, actor, action, objects, detail, prev_hash, hash) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (record.chain, record.n, record.time, record.actor, record.action, "[]", record.detail,
                record.prev_hash, record.hash))


MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    (
        """CREATE TABLE projects (
            name TEXT PRIMARY KEY, classes {text_list} NOT NULL, budget_labels INTEGER NOT NULL,
            budget_per_items INTEGER NOT NULL, precision_target DOUBLE PRECISION NOT NULL,
            strategy TEXT NOT NULL, overlap INTEGER NOT NULL, guideline_version TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE items (
            seq {serial},
            project TEXT NOT NULL REFERENCES projects(name),
            item_id TEXT NOT NULL, text TEXT NOT NULL, ingested_at DOUBLE PRECISION NOT NULL,
            UNIQUE (project, item_id))""",
        """CREATE TABLE embeddings (
            project TEXT NOT NULL, item_id TEXT NOT NULL, dim INTEGER NOT NULL, vector {blob} NOT NULL,
            PRIMARY KEY (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE tasks (
            seq {serial},
            project TEXT NOT NULL, item_id TEXT NOT NULL, priority DOUBLE PRECISION NOT NULL,
            model_version TEXT, created_at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL,
            closed BOOLEAN NOT NULL DEFAULT FALSE,
            UNIQUE (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        "CREATE INDEX tasks_rank ON tasks (project, closed, priority DESC, created_at, seq)",
        """CREATE TABLE assignments (
            project TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('leased', 'answered', 'skipped')),
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (project, item_id, annotator),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE annotations (
            seq {serial},
            project TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL, label TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (project, item_id, annotator),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE gold (
            project TEXT NOT NULL, item_id TEXT NOT NULL, label TEXT NOT NULL,
            PRIMARY KEY (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        """CREATE TABLE labels (
            seq {serial},
            project TEXT NOT NULL, item_id TEXT NOT NULL, label TEXT NOT NULL, source TEXT NOT NULL,
            source_id TEXT NOT NULL, confidence DOUBLE PRECISION NOT NULL, threshold DOUBLE PRECISION,
            aggregation TEXT NOT NULL, guideline_version TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, idempotency_key TEXT NOT NULL,
            UNIQUE (project, item_id), UNIQUE (project, idempotency_key),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
        "CREATE INDEX labels_order ON labels (project, created_at, seq)",
        """CREATE TABLE models (
            seq {serial},
            project TEXT NOT NULL REFERENCES projects(name), version TEXT NOT NULL, path TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, n_train INTEGER NOT NULL,
            temperature DOUBLE PRECISION NOT NULL, threshold DOUBLE PRECISION NOT NULL, metrics TEXT NOT NULL,
            UNIQUE (project, version))""",
        """CREATE TABLE current_models (
            project TEXT PRIMARY KEY REFERENCES projects(name), version TEXT NOT NULL,
            FOREIGN KEY (project, version) REFERENCES models(project, version))""",
        """CREATE TABLE audit (
            seq {serial},
            project TEXT NOT NULL REFERENCES projects(name), time DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL)""",
        "CREATE INDEX audit_order ON audit (project, time, seq)",
    ),
    (  # 2: close-of-stream requests get their own table (they were audit rows)
        """CREATE TABLE close_requests (
            seq {serial},
            project TEXT NOT NULL REFERENCES projects(name), request_id TEXT NOT NULL, actor TEXT NOT NULL,
            requested_at DOUBLE PRECISION NOT NULL, items INTEGER NOT NULL,
            served_at DOUBLE PRECISION, tasks INTEGER NOT NULL DEFAULT 0,
            low_confidence INTEGER NOT NULL DEFAULT 0,
            UNIQUE (project, request_id))""",
        "CREATE INDEX close_requests_pending ON close_requests (project, served_at)",
        _close_requests_from_audit,
    ),
    (  # 3: the audit behind certified labels: each task's draw probability and the model's label
        # at that look, each model label's chance of having been checked
        "ALTER TABLE tasks ADD COLUMN probability DOUBLE PRECISION NOT NULL DEFAULT 1.0",
        "ALTER TABLE tasks ADD COLUMN model_label TEXT",
        "ALTER TABLE tasks ADD COLUMN family TEXT",
        "ALTER TABLE tasks ADD COLUMN wanted INTEGER",
        "ALTER TABLE labels ADD COLUMN probability DOUBLE PRECISION",
        "ALTER TABLE close_requests ADD COLUMN unlabeled INTEGER NOT NULL DEFAULT 0",
    ),
    (  # 4: API tokens, kept as hashes (the global admin's have no project)
        """CREATE TABLE tokens (
            token_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, role TEXT NOT NULL,
            project TEXT REFERENCES projects(name), name TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION)""",
        "CREATE INDEX tokens_project ON tokens (project, created_at)",
        "CREATE INDEX tokens_name ON tokens (name)",
    ),
    (  # 5: the audit trail becomes hash-chained, one chain per project ("" for global records)
        """CREATE TABLE audit_trail (
            seq {serial},
            chain TEXT NOT NULL, n INTEGER NOT NULL, time DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, objects TEXT NOT NULL, detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
            UNIQUE (chain, n))""",
        "CREATE INDEX audit_trail_time ON audit_trail (chain, time, n)",
        _chain_the_audit_log,
        "DROP TABLE audit",
    ),
    (  # 6: erased items: their ids stay (an erased id is never added again), their text's digest only
        # until the workers have dropped its cached embedding
        """CREATE TABLE erasures (
            seq {serial},
            project TEXT NOT NULL REFERENCES projects(name), item_id TEXT NOT NULL,
            erased_at DOUBLE PRECISION NOT NULL, text_sha256 TEXT,
            UNIQUE (project, item_id))""",
    ),
    (  # 7: an annotator's own leases without a scan of every assignment the project ever had
        "CREATE INDEX assignments_annotator ON assignments (project, annotator, state)",
    ),
    (  # 8: the labeling guideline's text (people read it on the labeling page)
        "ALTER TABLE projects ADD COLUMN guideline TEXT NOT NULL DEFAULT ''",
    ),
    (  # 9: the encoder a project's embeddings come from (bound by its first prelabel worker)
        "ALTER TABLE projects ADD COLUMN encoder TEXT",
    ),
    (  # 10: preference projects: the project's kind, and a comparison's two responses (JSON; erased with the text)
        "ALTER TABLE projects ADD COLUMN kind TEXT NOT NULL DEFAULT 'classification'",
        "ALTER TABLE items ADD COLUMN responses TEXT",
    ),
    (  # 11: preference projects: each comparison's draw at its arrival look (model evaluation's sample)
        """CREATE TABLE arrival_draws (
            project TEXT NOT NULL, item_id TEXT NOT NULL, probability DOUBLE PRECISION NOT NULL,
            drawn BOOLEAN NOT NULL, expected DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (project, item_id),
            FOREIGN KEY (project, item_id) REFERENCES items(project, item_id) ON DELETE CASCADE)""",
    ),
    (  # 12: a comparison's answer: how much better, and why
        "ALTER TABLE annotations ADD COLUMN strength TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE annotations ADD COLUMN reason TEXT NOT NULL DEFAULT ''",
    ),
)


def migrate(dialect: Dialect, upto: int = len(MIGRATIONS)) -> int:
    """Apply the migrations after the database's version up to ``upto``, in one transaction;
    returns the version reached. WinnowError if the database is newer than this code."""
    with dialect.transaction() as tx:
        dialect.lock_migrations(tx)
        tx.run("CREATE TABLE IF NOT EXISTS schema_version "
               "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        row = tx.one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        current = row[0] if row else 0
        if current > len(MIGRATIONS):
            raise WinnowError(f"store schema version {current} is newer than this Winnow ({len(MIGRATIONS)})")
        for version in range(current + 1, upto + 1):
            for step in MIGRATIONS[version - 1]:
                if isinstance(step, str):
                    tx.run(step.format(**dialect.types))
                else:
                    step(tx)
            tx.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))
        return max(current, upto)
