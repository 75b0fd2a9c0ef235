"""The labeling page over HTTP: a small JSON API on the same ``WinnowApi`` as the gRPC Labeling
service (the same leases, identities, audit and errors) and the page that uses it.

Every API call carries ``Authorization: Bearer TOKEN``; the page asks for the token once and keeps
it in the tab's session storage. Errors are JSON ``{"error": ..., "field": ...}`` with the HTTP
status of the gRPC code the same error gets (401, 403, 400, 404, 409).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from winnow.core.access.roles import Action, Principal
from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.limits import MAX_LEASE_TASKS
from winnow.services.api.auth import Authenticator
from winnow.services.api.errors import ERROR_CODES
from winnow.services.api.operations import WinnowApi
from winnow.services.api.server import ServerTls

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # a labeling request is a few ids and a class name

# each error's gRPC code (``services.api.errors``, the one mapping) as an HTTP status
_HTTP = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
         grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
         grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.UNAVAILABLE: 503}
# the pages load only their own assets, are never framed, and send no referrer (the URL may name a project)
PAGE_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


def _error(error: Exception) -> JSONResponse:
    code = next((c for cls, c in ERROR_CODES.items() if isinstance(error, cls)), grpc.StatusCode.INTERNAL)
    status = _HTTP.get(code, 500)
    if status == 500:  # a bug: logged, nothing of the payload returned
        log.error("http call failed error=%s", type(error).__name__)
        return JSONResponse({"error": "internal error (logged on the server)"}, status_code=500)
    body: dict[str, Any] = {"error": str(error)[:400], "kind": type(error).__name__}
    if isinstance(error, (InvalidInput, NotFound)):
        body["field"] = error.field
    return JSONResponse(body, status_code=status, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def labeling_app(api: WinnowApi, auth: Authenticator) -> Starlette:
    """The labeling page (``/``), the reviewer page (``/review``), their assets (``/static``) and
    their JSON API (``/api/...``)."""

    def endpoint(handler: Callable[[Principal, dict, str], Any]) -> Callable[[Request], Awaitable[Response]]:
        """A JSON endpoint: the caller from the Authorization header, the body as a dict, the
        project from ``?project=`` (else the caller's own); the work runs in a thread (store calls block)."""

        async def call(request: Request) -> Response:
            try:
                raw = await request.body()
                if len(raw) > MAX_BODY_BYTES:
                    raise InvalidInput("body", f"over {MAX_BODY_BYTES} bytes")
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    raise InvalidInput("body", "is not JSON") from None
                if not isinstance(body, dict):
                    raise InvalidInput("body", "must be a JSON object")
                header = request.headers.get("authorization")
                who = await run_in_threadpool(auth.principal, [("authorization", header)] if header else [])
                project = request.query_params.get("project") or who.project or ""
                result = await run_in_threadpool(handler, who, body, project)
            except Exception as error:
                return _error(error)
            return JSONResponse(result)

        return call

    def me(who: Principal, body: dict, project: str) -> dict:
        record = api.project(who, project, Action.LABEL)
        mine = api.my_quality(who, project)
        return {"name": who.name, "role": who.role, "project": project, "classes": list(record.classes),
                "kind": record.kind,
                "guideline_version": record.guideline_version, "guideline": record.guideline,
                "answers": mine["answers"],
                "gold_accuracy": mine["gold_accuracy"]}

    def lease(who: Principal, body: dict, project: str) -> dict:
        leases = api.lease(who, project, "", _int(body, "max_tasks", 10, 1, MAX_LEASE_TASKS))
        return {"leases": [{"item_id": x.item_id, "text": x.text, "kind": x.kind, "expires_at": x.expires_at,
                            "suggestion": x.suggestion,
                            "responses": [{"text": r.text, "model": r.model} for r in x.responses]} for x in leases]}

    def submit(who: Principal, body: dict, project: str) -> dict:
        recorded, made = api.submit(who, project, "", _text(body, "item_id"), _text(body, "label"),
                                    _optional_text(body, "strength"), _optional_text(body, "reason"))
        return {"recorded": recorded, "final_labels": made}

    def skip(who: Principal, body: dict, project: str) -> dict:
        api.skip(who, project, "", _text(body, "item_id"))
        return {}

    def heartbeat(who: Principal, body: dict, project: str) -> dict:
        ids = body.get("item_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidInput("item_ids", "must be a list of item ids")
        return {"extended": api.heartbeat(who, project, "", ids)}

    def review(who: Principal, body: dict, project: str) -> dict:
        stats = api.stats(who, project)
        record = api.project(who, project, Action.QUALITY)
        quality = api.annotator_quality(who, project)
        found = api.disagreements(who, project, 0)
        gold, gold_total = api.gold_items(who, project, 0)
        return {
            "project": project, "name": who.name, "role": who.role, "items": stats.items,
            "labels_by_source": stats.labels_by_source, "human_fraction": stats.human_fraction,
            "budget": {"labels": record.budget_labels, "per_items": record.budget_per_items},
            "open_tasks": stats.open_tasks, "model_version": stats.current_model_version,
            "threshold": stats.threshold, "stream": stats.stream.state,
            "quality": dataclasses.asdict(stats.quality),
            "gold_items": gold_total, "gold": gold, "classes": list(record.classes),
            "annotators": [{"name": name, **q} for name, q in sorted(quality.items())],
            "disagreements": [{"item_id": i, "answers": answers, "final_label": final, "model_label": model}
                              for i, answers, final, model in found]}

    def gold(who: Principal, body: dict, project: str) -> dict:
        return {"gold_items": api.set_gold(who, project, {_text(body, "item_id"): _text(body, "label")})}

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def review_page(request: Request) -> Response:
        return FileResponse(STATIC / "review.html", headers=PAGE_HEADERS)

    return Starlette(routes=[
        Route("/", page),
        Route("/review", review_page),
        Route("/api/review", endpoint(review), methods=["GET"]),
        Route("/api/gold", endpoint(gold), methods=["POST"]),
        Route("/api/me", endpoint(me), methods=["GET"]),
        Route("/api/lease", endpoint(lease), methods=["POST"]),
        Route("/api/submit", endpoint(submit), methods=["POST"]),
        Route("/api/skip", endpoint(skip), methods=["POST"]),
        Route("/api/heartbeat", endpoint(heartbeat), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def _text(body: dict, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, "is required (a string)")
    return value


def _optional_text(body: dict, field: str) -> str:
    value = body.get(field, "")
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    return value


def _int(body: dict, field: str, default: int, low: int, high: int) -> int:
    value = body.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(field, f"must be an integer in [{low}, {high}]")
    return value


class PageServer:
    """The page's HTTP server (uvicorn) in a thread of its own, HTTPS with the gRPC server's certificate."""

    def __init__(self, app: Starlette, host: str, port: int, tls: ServerTls | None = None) -> None:
        import socket

        import uvicorn

        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)  # connections wait in the backlog until uvicorn's loop accepts them
        self.port = self._socket.getsockname()[1]
        self._files: list[Path] = []
        ssl: dict[str, str] = {}
        if tls is not None:  # uvicorn reads files: the PEM bytes go to private temporary ones
            import tempfile

            for name, data in (("ssl_certfile", tls.cert), ("ssl_keyfile", tls.key)):
                handle, path = tempfile.mkstemp(prefix="winnow-page-", suffix=".pem")
                with open(handle, "wb") as f:
                    f.write(data)
                self._files.append(Path(path))
                ssl[name] = path
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **ssl))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="labeling-page", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self._socket.close()
        for path in self._files:
            path.unlink(missing_ok=True)
