"""``WinnowClient``: the Python client of the winnow.v1 gRPC API, on core records and core errors."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Union

import grpc
from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.access.roles import Principal
from winnow.core.access.tokens import TokenInfo
from winnow.core.domain.audit import AuditRecord
from winnow.core.domain.records import Item, Label, Lease, ModelVersion, Project
from winnow.core.loop.close import StreamStatus
from winnow.core.ports.store import Erasure
from winnow.services.api.convert import ProjectStats, from_message, to_message
from winnow.services.api.errors import winnow_errors as _winnow_errors
from winnow.v1 import access_pb2, access_pb2_grpc, ingest_pb2_grpc, labeling_pb2, labeling_pb2_grpc
from winnow.v1 import models_pb2, models_pb2_grpc
from winnow.v1 import projects_pb2, projects_pb2_grpc, records_pb2, review_pb2, review_pb2_grpc


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self.entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _Details:
        return _Details(details.method, details.timeout, [*(details.metadata or ()), self.entry],
                        details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = intercept_unary_unary


Pem = Union[bytes, str, Path]


def _pem(value: Pem | None) -> bytes | None:
    """PEM bytes, given as bytes or as a file path."""
    return value if value is None or isinstance(value, bytes) else Path(value).read_bytes()


def channel(target: str, token: str | None = None, *, tls: bool = False, tls_ca: Pem | None = None,
            tls_cert: Pem | None = None, tls_key: Pem | None = None) -> grpc.Channel:
    """A channel to a Winnow server whose every call carries ``token`` (for stubs used directly).

    TLS when ``tls`` or any TLS setting is given: ``tls_ca`` is the CA that signed the server's
    certificate (default: the system's roots); ``tls_cert`` and ``tls_key`` are this client's
    certificate and key for a server that asks for one (mutual TLS)."""
    if tls or tls_ca is not None or tls_cert is not None:
        credentials = grpc.ssl_channel_credentials(_pem(tls_ca), _pem(tls_key), _pem(tls_cert))
        base = grpc.secure_channel(target, credentials)
    else:
        base = grpc.insecure_channel(target)
    return base if token is None else grpc.intercept_channel(base, _Bearer(token))


class WinnowClient:
    """A connection to a Winnow server for producers, labeling tools and ML platform teams.

    Every call raises the server's WinnowError (InvalidInput, NotFound, ...) with its message; an
    unreachable server or a missed deadline raises WinnowError naming the gRPC code.
    """

    def __init__(self, target: str, token: str | None = None, timeout_s: float = 30.0, *, tls: bool = False,
                 tls_ca: Pem | None = None, tls_cert: Pem | None = None, tls_key: Pem | None = None) -> None:
        """``token`` is sent as ``authorization: Bearer TOKEN`` on every call (a server run
        ``--insecure`` needs none); the TLS settings are :func:`channel`'s."""
        self.timeout_s = timeout_s
        self._channel = channel(target, token, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self._ingest = ingest_pb2_grpc.IngestStub(self._channel)
        self._labeling = labeling_pb2_grpc.LabelingStub(self._channel)
        self._projects = projects_pb2_grpc.ProjectsStub(self._channel)
        self._models = models_pb2_grpc.ModelsStub(self._channel)
        self._access = access_pb2_grpc.AccessStub(self._channel)
        self._review = review_pb2_grpc.ReviewStub(self._channel)

    def _call(self, method, request):
        """One unary call with the deadline and the credential; errors raised as WinnowErrors."""
        with _winnow_errors():
            return method(request, timeout=self.timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> WinnowClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- producers ------------------------------------------------------------------------------
    def ingest(self, items: Iterable[Item], batch_size: int = 1000) -> int:
        """Stream items in, one Ingest stream per ``batch_size`` items; returns how many ids were new.

        Each stream is all or nothing. When one fails, the streams before it stay ingested; ids are
        idempotent, so sending every item again is safe.
        """
        if batch_size < 1:
            raise InvalidInput("batch_size", f"must be at least 1, got {batch_size}")
        new, it = 0, iter(items)
        while batch := list(itertools.islice(it, batch_size)):
            with _winnow_errors():
                summary = self._ingest.Ingest((to_message(i, records_pb2.Item) for i in batch), timeout=self.timeout_s)
            new += summary.new_items
        return new

    # -- annotators -----------------------------------------------------------------------------
    def lease(self, project: str, annotator: str, max_tasks: int) -> list[Lease]:
        request = labeling_pb2.LeaseTasksRequest(project=project, annotator=annotator, max_tasks=max_tasks)
        response = self._call(self._labeling.LeaseTasks, request)
        return [from_message(lease, Lease) for lease in response.leases]

    def submit(self, project: str, annotator: str, item_id: str, label: str, strength: str = "",
               reason: str = "") -> bool:
        """Answer an item (a comparison: A, B or tie, optionally how much better and why); False when
        this annotator had already answered it."""
        request = labeling_pb2.SubmitLabelRequest(project=project, annotator=annotator, item_id=item_id, label=label,
                                                  strength=strength, reason=reason)
        return self._call(self._labeling.SubmitLabel, request).recorded

    def skip(self, project: str, annotator: str, item_id: str) -> None:
        request = labeling_pb2.SkipRequest(project=project, annotator=annotator, item_id=item_id)
        self._call(self._labeling.Skip, request)

    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str]) -> int:
        """Extend the annotator's live leases; returns how many were extended."""
        request = labeling_pb2.HeartbeatRequest(project=project, annotator=annotator, item_ids=item_ids)
        return self._call(self._labeling.Heartbeat, request).extended

    # -- operators ------------------------------------------------------------------------------
    def create_project(self, name: str, classes: Sequence[str], *, budget_labels: int | None = None,
                       budget_per_items: int | None = None, precision_target: float | None = None,
                       strategy: str | None = None, overlap: int | None = None,
                       guideline_version: str | None = None, guideline: str | None = None,
                       kind: str | None = None) -> Project:
        """Create a project (settings left None take the server's defaults); idempotent. ``kind``
        "preference": items are prompts with responses, ``classes`` may be empty (A, B, tie)."""
        request = projects_pb2.CreateProjectRequest(
            name=name, classes=classes, budget_labels=budget_labels, budget_per_items=budget_per_items,
            precision_target=precision_target, strategy=strategy, overlap=overlap,
            guideline_version=guideline_version, guideline=guideline, kind=kind)
        return from_message(self._call(self._projects.CreateProject, request), Project)

    def projects(self) -> list[Project]:
        """The projects this caller belongs to (every project, for the admin)."""
        response = self._call(self._projects.ListProjects, projects_pb2.ListProjectsRequest())
        return [from_message(p, Project) for p in response.projects]

    def project(self, project: str) -> Project:
        return from_message(self._call(self._projects.GetProject, projects_pb2.GetProjectRequest(project=project)),
                            Project)

    def update_project(self, project: str, *, budget_labels: int | None = None, budget_per_items: int | None = None,
                       precision_target: float | None = None, strategy: str | None = None,
                       overlap: int | None = None, guideline_version: str | None = None,
                       guideline: str | None = None, add_classes: Sequence[str] = ()) -> Project:
        """Change a project's settings (owners); those left None keep their value; ``add_classes``
        are appended to its classes."""
        request = projects_pb2.UpdateProjectRequest(
            project=project, budget_labels=budget_labels, budget_per_items=budget_per_items,
            precision_target=precision_target, strategy=strategy, overlap=overlap,
            guideline_version=guideline_version, guideline=guideline, add_classes=list(add_classes))
        return from_message(self._call(self._projects.UpdateProject, request), Project)

    def stats(self, project: str) -> ProjectStats:
        response = self._call(self._projects.GetStats, projects_pb2.GetStatsRequest(project=project))
        return from_message(response, ProjectStats)

    def close_stream(self, project: str) -> StreamStatus:
        """Tell the project that everything is sent; returns at once, usually in state ``closing``
        (the selector serves the close once every item has reached it). See :meth:`wait_closed`."""
        response = self._call(self._projects.CloseStream, projects_pb2.CloseStreamRequest(project=project))
        return from_message(response, StreamStatus)

    def wait_closed(self, project: str, timeout_s: float, poll_s: float = 0.5) -> StreamStatus:
        """Poll ``stats`` until the project's stream is closed; WinnowError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.stats(project).stream
            if status.state == "closed":
                return status
            if time.monotonic() >= deadline:
                raise WinnowError(f"project {project!r}'s stream is still {status.state} after {timeout_s} s"
                                  + (": is its selector running?" if status.state == "closing" else ""))
            time.sleep(poll_s)

    def erase(self, project: str, item_ids: Sequence[str]) -> Erasure:
        """Erase items for good (owners); what was erased, what was already, which model versions may
        have learned from them."""
        report = self._call(self._projects.EraseItems, projects_pb2.EraseItemsRequest(project=project,
                                                                                      item_ids=item_ids))
        return Erasure(tuple(report.erased), tuple(report.already_erased), tuple(report.model_versions))

    def export_rows(self, project: str) -> list[dict]:
        """Every final label as a row: text, label, provenance, answers (``winnow.core.data.formats``)."""
        fields = ("threshold", "probability")
        with _winnow_errors():
            return [{"item_id": m.item_id, "text": m.text, "label": m.label, "source": m.source,
                     "source_id": m.source_id, "aggregation": m.aggregation, "confidence": m.confidence,
                     **{f: getattr(m, f) if m.HasField(f) else None for f in fields},
                     "guideline_version": m.guideline_version, "created_at": m.created_at, "answers": dict(m.answers),
                     **({"responses": [{"text": r.text, "model": r.model} for r in m.responses]}
                        if m.responses else {}),
                     **({"answer_details": {who: {"strength": d.strength, "reason": d.reason}
                                            for who, d in m.answer_details.items()}} if m.answer_details else {})}
                    for m in self._projects.ExportRows(projects_pb2.ExportLabelsRequest(project=project))]

    def export_labels(self, project: str) -> Iterator[Label]:
        """Every final label of the project, oldest first (no deadline: exports can be long)."""
        with _winnow_errors():
            for message in self._projects.ExportLabels(projects_pb2.ExportLabelsRequest(project=project)):
                yield from_message(message, Label)

    # -- ML platform ----------------------------------------------------------------------------
    def list_versions(self, project: str) -> list[ModelVersion]:
        """Model versions, oldest first (``stats`` names the current one)."""
        response = self._call(self._models.ListVersions, models_pb2.ListVersionsRequest(project=project))
        return [from_message(v, ModelVersion) for v in response.versions]

    def promote(self, project: str, version: str) -> ModelVersion:
        response = self._call(self._models.Promote, models_pb2.PromoteRequest(project=project, version=version))
        return from_message(response, ModelVersion)

    # -- access ---------------------------------------------------------------------------------
    def whoami(self) -> Principal:
        m = self._call(self._access.WhoAmI, access_pb2.WhoAmIRequest())
        return Principal(m.name, m.role, m.project if m.HasField("project") else None, m.token_id)

    def create_token(self, role: str, project: str | None, name: str = "",
                     expires_in_s: float | None = None) -> tuple[str, TokenInfo]:
        """A new token (returned once) and its record."""
        request = access_pb2.CreateTokenRequest(project=project, role=role, name=name, expires_in_s=expires_in_s)
        created = self._call(self._access.CreateToken, request)
        return created.token, _token_info(created.info)

    def tokens(self, project: str | None) -> list[TokenInfo]:
        """The project's tokens (every token, for the admin, with ``project`` None)."""
        response = self._call(self._access.ListTokens, access_pb2.ListTokensRequest(project=project))
        return [_token_info(t) for t in response.tokens]

    def revoke_token(self, token_id: str) -> TokenInfo:
        return _token_info(self._call(self._access.RevokeToken, access_pb2.RevokeTokenRequest(token_id=token_id)))

    def audit_trail(self, project: str | None, after: int = 0, limit: int = 0) -> list[AuditRecord]:
        """The project's audit records (the global chain for None), after number ``after``."""
        request = access_pb2.ReadAuditRequest(project=project, after=after, limit=limit)
        with _winnow_errors():
            return [AuditRecord(m.chain, m.n, m.time, m.actor, m.action, tuple(m.objects), m.detail, m.prev_hash,
                                m.hash) for m in self._access.ReadAudit(request, timeout=self.timeout_s)]

    def verify_audit(self, project: str | None) -> access_pb2.AuditVerdict:
        """The server's check of the chain: intact, records, head hash, the first broken record."""
        return self._call(self._access.VerifyAudit, access_pb2.VerifyAuditRequest(project=project))

    # -- reviewers ------------------------------------------------------------------------------
    def set_gold(self, project: str, answers: Mapping[str, str]) -> int:
        """Record known answers; how many gold items the project has now."""
        return self._call(self._review.SetGold, review_pb2.SetGoldRequest(project=project, answers=answers)).gold_items

    def annotator_quality(self, project: str) -> dict[str, dict[str, float | None]]:
        """Per annotator: answers, accuracy on gold (None: no gold answered), the Dawid-Skene estimate."""
        response = self._call(self._review.AnnotatorQuality, review_pb2.AnnotatorQualityRequest(project=project))
        return {q.annotator: {"answers": q.answers,
                              "gold_accuracy": q.gold_accuracy if q.HasField("gold_accuracy") else None,
                              "estimated_accuracy": q.estimated_accuracy if q.HasField("estimated_accuracy") else None}
                for q in response.annotators}

    def disagreements(self, project: str, limit: int = 0
                      ) -> list[tuple[str, dict[str, str], str | None, str | None]]:
        """Items whose answers disagree with each other or with a confident model: (item, annotator ->
        answer, final label or None, the confident model's label or None)."""
        response = self._call(self._review.Disagreements, review_pb2.DisagreementsRequest(project=project,
                                                                                         limit=limit))
        return [(d.item_id, dict(d.answers), d.final_label if d.HasField("final_label") else None,
                 d.model_label if d.HasField("model_label") else None) for d in response.items]


def _token_info(m: access_pb2.TokenInfo) -> TokenInfo:
    """A token's record as the API sends it (the hash stays on the server: empty here)."""
    def optional(name: str):
        return getattr(m, name) if m.HasField(name) else None

    return TokenInfo(m.token_id, "", m.role, optional("project"), m.name, m.created_at, optional("expires_at"),
                     optional("revoked_at"))
