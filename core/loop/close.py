"""Closing a project's stream: close requests, their status, and when the selector serves them."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


# -- close of stream -------------------------------------------------------------------------
CLOSE_CHECK_S = 1.0  # how often a selector looks for a close request (one small audit-log read)
CLOSE_WAIT_LOG_S = 10.0


@dataclass(frozen=True)
class StreamStatus:
    """Where a project's stream stands: ``open`` (never closed), ``closing`` (a close was requested
    and the selector has not served it yet) or ``closed`` (the last request is served).

    Closing drains: items ingested afterwards are handled as usual, and a later close drains again.
    ``tasks`` and ``low_confidence`` are what the last served close did.
    """

    project: str
    state: str
    requested_at: float | None = None  # the pending request, else the last one served
    closed_at: float | None = None
    tasks: int = 0
    low_confidence: int = 0


def _close_rows(store: Store, project: str) -> tuple[dict[str, float], list[tuple[float, dict]], list[str]]:
    """From the audit log: close requests (request id -> time), served closes (time, detail) and
    the ids of the requests not served yet, oldest first.

    Requests and closes are matched by id, never by time: the API and the selector may run on
    machines whose clocks disagree.
    """
    requests: dict[str, float] = {}
    served: list[tuple[float, dict]] = []
    for at, _, action, detail in store.audit_log(project):
        if action == "close_stream":
            requests[json.loads(detail)["request"]] = at
        elif action == "stream_closed":
            served.append((at, json.loads(detail)))
    done = {r for _, detail in served for r in detail["requests"]}
    return requests, served, [r for r in requests if r not in done]


def pending_close_requests(store: Store, project: str) -> list[str]:
    """Ids of close requests no selector has served yet, oldest first."""
    return _close_rows(store, project)[2]


def stream_status(store: Store, project: str) -> StreamStatus:
    store.get_project(project)  # NotFound("project") for an unknown one
    requests, served, pending = _close_rows(store, project)
    if pending:
        return StreamStatus(project, "closing", requested_at=requests[pending[0]])
    if not served:
        return StreamStatus(project, "open")
    closed_at, detail = served[-1]
    asked = [requests[r] for r in detail["requests"] if r in requests]
    return StreamStatus(project, "closed", max(asked) if asked else None, closed_at, int(detail["tasks"]),
                        int(detail["low_confidence"]))


def request_close(store: Store, project: str, actor: str, now: float) -> StreamStatus:
    """Ask the project's selector to close the stream (see ``Selector.close_stream``); idempotent
    while a request is pending. The request is a row in the audit log, so it survives restarts."""
    status = stream_status(store, project)
    if status.state == "closing":
        return status
    detail = {"request": uuid.uuid4().hex, "items": store.count_items(project)}
    store.audit(project, actor, "close_stream", json.dumps(detail), now)
    return stream_status(store, project)
