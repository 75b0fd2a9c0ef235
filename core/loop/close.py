"""Closing a project's stream: close requests, their status, and recording that the selector served them.

The requests live in the store's own table (:class:`~winnow.core.ports.store.CloseRequests`), so they
survive restarts; the audit log gets a row for each request and each served close, as a record only.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from winnow.core.domain.settings import LoopConfig
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)

CLOSE_CHECK_S = 1.0  # how often a selector looks for a close request (one small indexed read)
CLOSE_WAIT_LOG_S = 10.0


@dataclass(frozen=True)
class StreamStatus:
    """Where a project's stream stands: ``open`` (never closed), ``closing`` (a close was requested
    and the selector has not served it yet) or ``closed`` (the last request is served).

    Closing drains: items ingested afterwards are handled as usual, and a later close drains again.
    ``tasks``, ``low_confidence`` and ``unlabeled`` are what the last served close did
    (``unlabeled``: items left without a label because no model existed to label them).
    """

    project: str
    state: str
    requested_at: float | None = None  # the pending request, else the last one served
    closed_at: float | None = None
    tasks: int = 0
    low_confidence: int = 0
    unlabeled: int = 0


def pending_close_requests(store: Store, project: str) -> list[str]:
    """Ids of close requests no selector has served yet, oldest first."""
    return [r.request_id for r in store.close_requests(project, pending_only=True)]


def stream_status(store: Store, project: str) -> StreamStatus:
    """The stream's state; NotFound("project") for an unknown project."""
    requests = store.close_requests(project)
    pending = [r for r in requests if r.served_at is None]
    if pending:
        return StreamStatus(project, "closing", requested_at=pending[0].requested_at)
    if not requests:
        return StreamStatus(project, "open")
    closed_at = max(r.served_at for r in requests if r.served_at is not None)
    last = [r for r in requests if r.served_at == closed_at]  # the requests the last close served
    return StreamStatus(project, "closed", max(r.requested_at for r in last), closed_at, last[0].tasks,
                        last[0].low_confidence, last[0].unlabeled)


def request_close(store: Store, project: str, actor: str, now: float) -> StreamStatus:
    """Ask the project's selector to close the stream (see ``Selector.close_stream``); idempotent
    while a request is pending."""
    store.request_close(project, uuid.uuid4().hex, actor, now)
    return stream_status(store, project)


def record_close(store: Store, project: str, request_ids: list[str], tasks: int, low_confidence: int,
                 now: float, unlabeled: int = 0) -> None:
    """Mark ``request_ids`` served by a close that queued ``tasks`` tasks, made ``low_confidence``
    low-confidence labels and left ``unlabeled`` items unlabeled. Call it once the close's output is
    durable: a crash before it means the close runs again after restart (its labels are idempotent,
    its tasks already queued)."""
    store.mark_closed(project, request_ids, "selector", tasks, low_confidence, now, unlabeled)


def min_train_labels(config: LoopConfig) -> int:
    """Fewest human labels a model can be trained on (its cross-fitting needs one per fold)."""
    return max(config.train.folds, 2)


def model_behind(store: Store, project: str, config: LoopConfig, serving: str | None) -> bool:
    """Whether a close must wait for the trainer: there are enough human labels to train on, and the
    current model (or ``serving``, the version the caller holds) has not learned from all of them."""
    humans = store.count_labels(project).get("human", 0)
    if humans < min_train_labels(config):
        return False
    current = store.current_model(project)
    return current is None or current.n_train < humans or current.version != serving
