"""The winnow.v1 servicers: each converts messages and delegates to ``WinnowApi``; ``handlers``
registers any servicer (grpc's health and reflection too) with request deserializers that never
raise and every method guarded, so bad bytes and errors become statuses in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.limits import MAX_INGEST_BYTES, MAX_ITEMS_PER_CALL
from winnow.core.domain.records import Item, Project
from winnow.services.api.convert import from_message, to_message
from winnow.services.api.errors import guarded, request_decoder
from winnow.services.api.operations import WinnowApi
from winnow.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    records_pb2,
)


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    """Ingest: a stream or a batch of items, each all or nothing."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    def _summary(self, messages: Iterable[records_pb2.Item]) -> ingest_pb2.IngestSummary:
        now, size, items = self.api.clock(), 0, []
        for message in messages:
            size += message.ByteSize()
            if size > MAX_INGEST_BYTES:
                raise InvalidInput("items", f"over {MAX_INGEST_BYTES} bytes in one call; split the items")
            if len(items) == MAX_ITEMS_PER_CALL:  # stop reading: the call is refused whatever follows
                raise InvalidInput("items", f"over {MAX_ITEMS_PER_CALL} items in one call; split the items")
            item = from_message(message, Item)
            items.append(item if item.ingested_at else dataclasses.replace(item, ingested_at=now))
        return ingest_pb2.IngestSummary(received=len(items), new_items=self.api.ingest(items))

    def Ingest(self, request_iterator: Iterator[records_pb2.Item], context: grpc.ServicerContext
               ) -> ingest_pb2.IngestSummary:
        """Reads the whole stream, validates all of it, then writes it: all or nothing."""
        return self._summary(request_iterator)

    def IngestBatch(self, request: ingest_pb2.ItemBatch, context: grpc.ServicerContext) -> ingest_pb2.IngestSummary:
        return self._summary(request.items)


class LabelingServicer(labeling_pb2_grpc.LabelingServicer):
    """Labeling: every SubmitLabel runs consensus for the items that have all their answers."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    def LeaseTasks(self, request: labeling_pb2.LeaseTasksRequest, context: grpc.ServicerContext
                   ) -> labeling_pb2.LeaseTasksResponse:
        leases = self.api.lease(request.project, request.annotator, request.max_tasks)
        return labeling_pb2.LeaseTasksResponse(leases=[to_message(lease, records_pb2.Lease) for lease in leases])

    def SubmitLabel(self, request: labeling_pb2.SubmitLabelRequest, context: grpc.ServicerContext
                    ) -> labeling_pb2.SubmitLabelResponse:
        recorded, made = self.api.submit(request.project, request.annotator, request.item_id, request.label)
        return labeling_pb2.SubmitLabelResponse(recorded=recorded, final_labels=made)

    def Skip(self, request: labeling_pb2.SkipRequest, context: grpc.ServicerContext) -> labeling_pb2.SkipResponse:
        self.api.skip(request.project, request.annotator, request.item_id)
        return labeling_pb2.SkipResponse()

    def Heartbeat(self, request: labeling_pb2.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> labeling_pb2.HeartbeatResponse:
        extended = self.api.heartbeat(request.project, request.annotator, list(request.item_ids))
        return labeling_pb2.HeartbeatResponse(extended=extended)


_PROJECT_SETTINGS = ("budget_labels", "budget_per_items", "precision_target", "strategy", "overlap",
                     "guideline_version")


class ProjectsServicer(projects_pb2_grpc.ProjectsServicer):
    """Projects: create, stats, export and close of stream (audited; the actor is the caller's peer address)."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    def CreateProject(self, request: projects_pb2.CreateProjectRequest, context: grpc.ServicerContext
                      ) -> records_pb2.Project:
        settings = {name: getattr(request, name) for name in _PROJECT_SETTINGS if request.HasField(name)}
        project = Project(request.name, tuple(request.classes), created_at=self.api.clock(), **settings)
        return to_message(self.api.create_project(project), records_pb2.Project)

    def GetStats(self, request: projects_pb2.GetStatsRequest, context: grpc.ServicerContext
                 ) -> projects_pb2.ProjectStats:
        return to_message(self.api.stats(request.project), projects_pb2.ProjectStats)

    def ExportLabels(self, request: projects_pb2.ExportLabelsRequest, context: grpc.ServicerContext
                     ) -> Iterator[records_pb2.Label]:
        labels = self.api.export_labels(request.project, context.peer())  # errors raise here, before streaming
        return (to_message(label, records_pb2.Label) for label in labels)

    def CloseStream(self, request: projects_pb2.CloseStreamRequest, context: grpc.ServicerContext
                    ) -> projects_pb2.StreamStatus:
        return to_message(self.api.close_stream(request.project, context.peer()), projects_pb2.StreamStatus)


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    """Models: list versions, promote one (audited)."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    def ListVersions(self, request: models_pb2.ListVersionsRequest, context: grpc.ServicerContext
                     ) -> models_pb2.ListVersionsResponse:
        versions, current = self.api.versions(request.project)
        return models_pb2.ListVersionsResponse(versions=[to_message(v, records_pb2.ModelVersion) for v in versions],
                                               current_version=current)

    def Promote(self, request: models_pb2.PromoteRequest, context: grpc.ServicerContext) -> records_pb2.ModelVersion:
        model = self.api.promote(request.project, request.version, context.peer())
        return to_message(model, records_pb2.ModelVersion)


# name -> (servicer class, service descriptor)
SERVICES: dict[str, tuple[type, ServiceDescriptor]] = {
    "Ingest": (IngestServicer, ingest_pb2.DESCRIPTOR.services_by_name["Ingest"]),
    "Labeling": (LabelingServicer, labeling_pb2.DESCRIPTOR.services_by_name["Labeling"]),
    "Projects": (ProjectsServicer, projects_pb2.DESCRIPTOR.services_by_name["Projects"]),
    "Models": (ModelsServicer, models_pb2.DESCRIPTOR.services_by_name["Models"]),
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
