"""The winnow.v1 servicers: each learns who calls (``Authenticator``), converts messages and
delegates to ``WinnowApi``; ``handlers`` registers any servicer (grpc's health and reflection too)
with request deserializers that never raise and every method guarded, so bad bytes and errors
become statuses in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.limits import MAX_INGEST_BYTES, MAX_ITEMS_PER_CALL
from winnow.core.domain.records import PREFERENCE_CLASSES, Item, Project
from winnow.services.api.convert import from_message, to_message
from winnow.services.api.errors import guarded, request_decoder
from winnow.core.access.roles import Principal
from winnow.core.access.tokens import TokenInfo
from winnow.services.api.auth import Authenticator
from winnow.services.api.operations import WinnowApi
from winnow.v1 import (
    access_pb2,
    access_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    records_pb2,
    review_pb2,
    review_pb2_grpc,
)


class _Servicer:
    """What every servicer holds: the API and the authenticator that names each call's caller."""

    def __init__(self, api: WinnowApi, auth: Authenticator) -> None:
        self.api, self.auth = api, auth

    def who(self, context: grpc.ServicerContext) -> Principal:
        """The caller (Unauthenticated without a live credential), before the request is read."""
        return self.auth.principal(context.invocation_metadata(), context.auth_context())


class IngestServicer(_Servicer, ingest_pb2_grpc.IngestServicer):
    """Ingest: a stream or a batch of items, each all or nothing."""

    def _summary(self, who: Principal, messages: Iterable[records_pb2.Item]) -> ingest_pb2.IngestSummary:
        now, size, items = self.api.clock(), 0, []
        for message in messages:
            size += message.ByteSize()
            if size > MAX_INGEST_BYTES:
                raise InvalidInput("items", f"over {MAX_INGEST_BYTES} bytes in one call; split the items")
            if len(items) == MAX_ITEMS_PER_CALL:  # stop reading: the call is refused whatever follows
                raise InvalidInput("items", f"over {MAX_ITEMS_PER_CALL} items in one call; split the items")
            item = from_message(message, Item)
            items.append(item if item.ingested_at else dataclasses.replace(item, ingested_at=now))
        return ingest_pb2.IngestSummary(received=len(items), new_items=self.api.ingest(who, items))

    def Ingest(self, request_iterator: Iterator[records_pb2.Item], context: grpc.ServicerContext
               ) -> ingest_pb2.IngestSummary:
        """Reads the whole stream, validates all of it, then writes it: all or nothing."""
        return self._summary(self.who(context), request_iterator)

    def IngestBatch(self, request: ingest_pb2.ItemBatch, context: grpc.ServicerContext) -> ingest_pb2.IngestSummary:
        return self._summary(self.who(context), request.items)


class LabelingServicer(_Servicer, labeling_pb2_grpc.LabelingServicer):
    """Labeling: every SubmitLabel runs consensus for the items that have all their answers. The
    annotator is the caller (a request's ``annotator`` must be empty or the caller's name)."""

    def LeaseTasks(self, request: labeling_pb2.LeaseTasksRequest, context: grpc.ServicerContext
                   ) -> labeling_pb2.LeaseTasksResponse:
        leases = self.api.lease(self.who(context), request.project, request.annotator, request.max_tasks)
        return labeling_pb2.LeaseTasksResponse(leases=[to_message(lease, records_pb2.Lease) for lease in leases])

    def SubmitLabel(self, request: labeling_pb2.SubmitLabelRequest, context: grpc.ServicerContext
                    ) -> labeling_pb2.SubmitLabelResponse:
        recorded, made = self.api.submit(self.who(context), request.project, request.annotator, request.item_id,
                                         request.label, request.strength, request.reason)
        return labeling_pb2.SubmitLabelResponse(recorded=recorded, final_labels=made)

    def Skip(self, request: labeling_pb2.SkipRequest, context: grpc.ServicerContext) -> labeling_pb2.SkipResponse:
        self.api.skip(self.who(context), request.project, request.annotator, request.item_id)
        return labeling_pb2.SkipResponse()

    def Heartbeat(self, request: labeling_pb2.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> labeling_pb2.HeartbeatResponse:
        extended = self.api.heartbeat(self.who(context), request.project, request.annotator, list(request.item_ids))
        return labeling_pb2.HeartbeatResponse(extended=extended)


_PROJECT_SETTINGS = ("budget_labels", "budget_per_items", "precision_target", "strategy", "overlap",
                     "guideline_version", "guideline")
_CREATE_SETTINGS = (*_PROJECT_SETTINGS, "kind")


class ProjectsServicer(_Servicer, projects_pb2_grpc.ProjectsServicer):
    """Projects: create, stats, export and close of stream (audited under the caller's name)."""

    def CreateProject(self, request: projects_pb2.CreateProjectRequest, context: grpc.ServicerContext
                      ) -> records_pb2.Project:
        who = self.who(context)
        settings = {name: getattr(request, name) for name in _CREATE_SETTINGS if request.HasField(name)}
        # a preference project's classes are fixed: none given means those
        classes = tuple(request.classes) or (PREFERENCE_CLASSES if settings.get("kind") == "preference" else ())
        project = Project(request.name, classes, created_at=self.api.clock(), **settings)
        return to_message(self.api.create_project(who, project), records_pb2.Project)

    def ListProjects(self, request: projects_pb2.ListProjectsRequest, context: grpc.ServicerContext
                     ) -> projects_pb2.ListProjectsResponse:
        return projects_pb2.ListProjectsResponse(
            projects=[to_message(p, records_pb2.Project) for p in self.api.projects(self.who(context))])

    def UpdateProject(self, request: projects_pb2.UpdateProjectRequest, context: grpc.ServicerContext
                      ) -> records_pb2.Project:
        who = self.who(context)
        changes: dict[str, object] = {name: getattr(request, name) for name in _PROJECT_SETTINGS
                                      if request.HasField(name)}
        if request.add_classes:
            changes["add_classes"] = tuple(request.add_classes)
        return to_message(self.api.update_project(who, request.project, changes), records_pb2.Project)

    def GetProject(self, request: projects_pb2.GetProjectRequest, context: grpc.ServicerContext
                   ) -> records_pb2.Project:
        return to_message(self.api.project(self.who(context), request.project), records_pb2.Project)

    def GetStats(self, request: projects_pb2.GetStatsRequest, context: grpc.ServicerContext
                 ) -> projects_pb2.ProjectStats:
        return to_message(self.api.stats(self.who(context), request.project), projects_pb2.ProjectStats)

    def ExportLabels(self, request: projects_pb2.ExportLabelsRequest, context: grpc.ServicerContext
                     ) -> Iterator[records_pb2.Label]:
        labels = self.api.export_labels(self.who(context), request.project)  # errors raise here, before streaming
        return (to_message(label, records_pb2.Label) for label in labels)

    def ExportRows(self, request: projects_pb2.ExportLabelsRequest, context: grpc.ServicerContext
                   ) -> Iterator[projects_pb2.ExportRow]:
        data = self.api.export_rows(self.who(context), request.project)  # errors raise here, before streaming
        return (projects_pb2.ExportRow(**row) for row in data)

    def CloseStream(self, request: projects_pb2.CloseStreamRequest, context: grpc.ServicerContext
                    ) -> projects_pb2.StreamStatus:
        return to_message(self.api.close_stream(self.who(context), request.project), projects_pb2.StreamStatus)

    def EraseItems(self, request: projects_pb2.EraseItemsRequest, context: grpc.ServicerContext
                   ) -> projects_pb2.ErasureReport:
        erasure = self.api.erase(self.who(context), request.project, list(request.item_ids))
        return projects_pb2.ErasureReport(erased=erasure.erased, already_erased=erasure.already,
                                          model_versions=erasure.model_versions)


class ModelsServicer(_Servicer, models_pb2_grpc.ModelsServicer):
    """Models: list versions, promote one (audited)."""

    def ListVersions(self, request: models_pb2.ListVersionsRequest, context: grpc.ServicerContext
                     ) -> models_pb2.ListVersionsResponse:
        versions, current = self.api.versions(self.who(context), request.project)
        return models_pb2.ListVersionsResponse(versions=[to_message(v, records_pb2.ModelVersion) for v in versions],
                                               current_version=current)

    def Promote(self, request: models_pb2.PromoteRequest, context: grpc.ServicerContext) -> records_pb2.ModelVersion:
        model = self.api.promote(self.who(context), request.project, request.version)
        return to_message(model, records_pb2.ModelVersion)


def token_message(info: TokenInfo) -> access_pb2.TokenInfo:
    """A token's record as the API shows it: never its hash."""
    return access_pb2.TokenInfo(token_id=info.token_id, role=info.role, project=info.project, name=info.name,
                                created_at=info.created_at, expires_at=info.expires_at, revoked_at=info.revoked_at)


class AccessServicer(_Servicer, access_pb2_grpc.AccessServicer):
    """Access: the caller's identity; tokens created, listed and revoked by owners and the admin."""

    def WhoAmI(self, request: access_pb2.WhoAmIRequest, context: grpc.ServicerContext) -> access_pb2.Principal:
        who = self.who(context)
        return access_pb2.Principal(name=who.name, role=who.role, project=who.project, token_id=who.token_id)

    def CreateToken(self, request: access_pb2.CreateTokenRequest, context: grpc.ServicerContext
                    ) -> access_pb2.CreatedToken:
        token, info = self.api.create_token(
            self.who(context), request.project if request.HasField("project") else None, request.role, request.name,
            request.expires_in_s if request.HasField("expires_in_s") else None)
        return access_pb2.CreatedToken(token=token, info=token_message(info))

    def ListTokens(self, request: access_pb2.ListTokensRequest, context: grpc.ServicerContext
                   ) -> access_pb2.ListTokensResponse:
        tokens = self.api.tokens(self.who(context), request.project if request.HasField("project") else None)
        return access_pb2.ListTokensResponse(tokens=[token_message(t) for t in tokens])

    def RevokeToken(self, request: access_pb2.RevokeTokenRequest, context: grpc.ServicerContext
                    ) -> access_pb2.TokenInfo:
        return token_message(self.api.revoke_token(self.who(context), request.token_id))

    def ReadAudit(self, request: access_pb2.ReadAuditRequest, context: grpc.ServicerContext
                  ) -> Iterator[access_pb2.AuditRecord]:
        records = self.api.audit_trail(self.who(context), request.project if request.HasField("project") else None,
                                       request.after, request.limit)  # errors raise here, before streaming
        return (access_pb2.AuditRecord(**dataclasses.asdict(r)) for r in records)

    def VerifyAudit(self, request: access_pb2.VerifyAuditRequest, context: grpc.ServicerContext
                    ) -> access_pb2.AuditVerdict:
        project = request.project if request.HasField("project") else None
        broken, heads, records = self.api.verify_audit(self.who(context), project)
        return access_pb2.AuditVerdict(intact=not broken, records=records,
                                       head_hash=next(iter(heads.values()), ""),
                                       broken=str(broken[0]) if broken else "")


class ReviewServicer(_Servicer, review_pb2_grpc.ReviewServicer):
    """Review: gold answers, annotator quality, disagreements (reviewers and owners)."""

    def SetGold(self, request: review_pb2.SetGoldRequest, context: grpc.ServicerContext) -> review_pb2.SetGoldResponse:
        return review_pb2.SetGoldResponse(gold_items=self.api.set_gold(self.who(context), request.project,
                                                                      dict(request.answers)))

    def AnnotatorQuality(self, request: review_pb2.AnnotatorQualityRequest, context: grpc.ServicerContext
                         ) -> review_pb2.AnnotatorQualityResponse:
        quality = self.api.annotator_quality(self.who(context), request.project)
        return review_pb2.AnnotatorQualityResponse(annotators=[
            review_pb2.AnnotatorQuality(annotator=name, answers=int(q["answers"]), gold_accuracy=q["gold_accuracy"],
                                        estimated_accuracy=q["estimated_accuracy"]) for name, q in quality.items()])

    def Disagreements(self, request: review_pb2.DisagreementsRequest, context: grpc.ServicerContext
                      ) -> review_pb2.DisagreementsResponse:
        found = self.api.disagreements(self.who(context), request.project, request.limit)
        return review_pb2.DisagreementsResponse(items=[
            review_pb2.Disagreement(item_id=i, answers=answers, final_label=final, model_label=model)
            for i, answers, final, model in found])

    def GoldItems(self, request: review_pb2.GoldItemsRequest, context: grpc.ServicerContext
                  ) -> review_pb2.GoldItemsResponse:
        found, total = self.api.gold_items(self.who(context), request.project, request.limit)
        return review_pb2.GoldItemsResponse(items=[review_pb2.GoldItem(**g) for g in found], total=total)


# name -> (servicer class, service descriptor)
SERVICES: dict[str, tuple[type, ServiceDescriptor]] = {
    "Ingest": (IngestServicer, ingest_pb2.DESCRIPTOR.services_by_name["Ingest"]),
    "Labeling": (LabelingServicer, labeling_pb2.DESCRIPTOR.services_by_name["Labeling"]),
    "Projects": (ProjectsServicer, projects_pb2.DESCRIPTOR.services_by_name["Projects"]),
    "Models": (ModelsServicer, models_pb2.DESCRIPTOR.services_by_name["Models"]),
    "Access": (AccessServicer, access_pb2.DESCRIPTOR.services_by_name["Access"]),
    "Review": (ReviewServicer, review_pb2.DESCRIPTOR.services_by_name["Review"]),
}

_HANDLER_KINDS = {  # (client streams, server streams) -> grpc's handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def handlers(servicer: Any, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """Every method of ``service`` served by ``servicer``, as grpc's generated ``add_*_to_server``
    would register them, except that the request deserializer is :func:`request_decoder` and each
    method is :func:`guarded` (errors become statuses, undecodable requests INVALID_ARGUMENT)."""
    methods = {}
    for method in service.methods:
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        methods[method.name] = kind(
            guarded(getattr(servicer, method.name), method.name),
            request_deserializer=request_decoder(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, methods)
