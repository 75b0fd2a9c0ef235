"""The gRPC API (winnow.v1 Ingest, Labeling, Projects, Models) over a Store and a Bus.

``WinnowApi`` holds the logic as plain typed methods on core records; the servicers only convert
messages and delegate to it; ``_status`` is the one place that maps a WinnowError to a gRPC status.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from winnow.core.domain.errors import (
    BusError,
    EmptyPoolError,
    InvalidInput,
    ModelFileError,
    NotFound,
    WinnowError,
)
from winnow.core.domain.records import (
    Item,
    Label,
    Lease,
    ModelVersion,
    Project,
    to_json,
)
from winnow.core.domain.settings import LoopConfig
from winnow.core.domain.validation import validate_items
from winnow.core.loop.close import StreamStatus, request_close, stream_status
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.topics import create_topics, topic
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store, validate_project
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

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
R = TypeVar("R")

MAX_STREAM_BYTES = 64 * 1024 * 1024  # an Ingest stream is held in memory until all of it is validated
MAX_LEASE_TASKS = 1000
# The one mapping from core errors to gRPC codes (any other WinnowError is INTERNAL); the client
# maps back by the class name sent in the trailing metadata.
ERROR_CODES: dict[type[WinnowError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ModelFileError: grpc.StatusCode.FAILED_PRECONDITION,
    EmptyPoolError: grpc.StatusCode.FAILED_PRECONDITION,
    BusError: grpc.StatusCode.UNAVAILABLE,
}
ERROR_CLASS_KEY = "winnow-error"  # trailing metadata: the WinnowError subclass name
ERROR_FIELD_KEY = "winnow-field"  # trailing metadata: the field an InvalidInput or NotFound names


@dataclass(frozen=True)
class ProjectStats:
    """Where a project stands: items in, final labels by source, open tasks, current model."""

    project: str
    items: int
    labels_by_source: dict[str, int]
    human_fraction: float  # human labels / items
    open_tasks: int
    current_model_version: str | None
    threshold: float | None  # auto-accept threshold of the current model
    stream: StreamStatus  # open, closing or closed


# -- records <-> messages -------------------------------------------------------------------
def _enum_prefix(field: FieldDescriptor) -> str:
    return field.enum_type.values[0].name.removesuffix("UNSPECIFIED")  # e.g. "LABEL_SOURCE_"


def to_message(record: object, message_cls: type[M]) -> M:
    """The message with ``record``'s fields: None leaves a field unset, enums go by name ("human")."""
    fields = message_cls.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if value is None:
            continue
        field = fields[f.name]
        if field.enum_type is not None:
            value = field.enum_type.values_by_name[_enum_prefix(field) + value.upper()].number
        elif field.message_type is not None and dataclasses.is_dataclass(value):
            value = to_message(value, type(getattr(message_cls(), f.name)))
        values[f.name] = value
    return message_cls(**values)


_type_hints = functools.cache(typing.get_type_hints)  # evaluating a record's annotations costs more than a message


def from_message(message: Message, record_cls: type[R]) -> R:
    """The record with ``message``'s fields (the inverse of :func:`to_message`)."""
    fields = message.DESCRIPTOR.fields_by_name
    hints = _type_hints(record_cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record_cls):  # type: ignore[arg-type]
        field, value = fields[f.name], getattr(message, f.name)
        if field.message_type is not None and dataclasses.is_dataclass(hints[f.name]):
            value = from_message(value, hints[f.name])  # a nested record
        elif field.message_type is struct_pb2.Struct.DESCRIPTOR:
            value = json_format.MessageToDict(value)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = dict(value)
        elif field.is_repeated:
            value = tuple(value)
        elif field.has_presence and not message.HasField(f.name):
            value = None
        elif field.enum_type is not None:
            value = field.enum_type.values_by_number[value].name.removeprefix(_enum_prefix(field)).lower()
        values[f.name] = value
    return record_cls(**values)


# -- the API as plain functions ---------------------------------------------------------------
class WinnowApi:
    """What the API does, on core records. Each project gets one ``LabelingService``; its submits
    and consensus run under that project's lock (``LabelingService`` keeps the items ready for
    consensus in memory)."""

    def __init__(self, bus: Bus, store: Store, config: LoopConfig, clock: Callable[[], float] = time.time) -> None:
        self.bus, self.store, self.config, self.clock = bus, store, config, clock
        self._labeling: dict[str, tuple[LabelingService, threading.Lock]] = {}
        self._labeling_lock = threading.Lock()

    # -- ingest ---------------------------------------------------------------------------------
    def ingest(self, items: Sequence[Item]) -> int:
        """Validate every item (per project) before writing any; returns how many ids were new."""
        by_project: dict[str, list[Item]] = {}
        for item in items:
            by_project.setdefault(item.project, []).append(item)
        projects = {name: self.store.get_project(name) for name in by_project}
        for name, group in by_project.items():
            validate_items(projects[name], group)
        return sum(ingest(self.bus, self.store, projects[name], group) for name, group in by_project.items())

    # -- labeling -------------------------------------------------------------------------------
    def _service(self, project: str) -> tuple[LabelingService, threading.Lock]:
        with self._labeling_lock:
            if project not in self._labeling:
                service = LabelingService(self.bus, self.store, self.store.get_project(project), self.config,
                                          self.clock)
                self._labeling[project] = (service, threading.Lock())
            return self._labeling[project]

    def lease(self, project: str, annotator: str, max_tasks: int) -> list[Lease]:
        if not 1 <= max_tasks <= MAX_LEASE_TASKS:
            raise InvalidInput("max_tasks", f"must be in [1, {MAX_LEASE_TASKS}], got {max_tasks}")
        return self._service(project)[0].lease(annotator, max_tasks)

    def submit(self, project: str, annotator: str, item_id: str, label: str) -> tuple[bool, int]:
        """Record the answer, then resolve: (answer recorded, final labels made)."""
        service, lock = self._service(project)
        with lock:
            recorded = service.submit(annotator, item_id, label)
            return recorded, service.resolve()

    def skip(self, project: str, annotator: str, item_id: str) -> None:
        self._service(project)[0].skip(annotator, item_id)

    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str]) -> int:
        return self._service(project)[0].heartbeat(annotator, item_ids)

    # -- projects -------------------------------------------------------------------------------
    def create_project(self, project: Project) -> Project:
        """Create the project and its topics; an existing project with the same settings is returned."""
        validate_project(project)
        try:
            existing = self.store.get_project(project.name)
        except NotFound:
            self.store.create_project(project)
            existing = project
        if dataclasses.replace(existing, created_at=project.created_at) != project:
            raise InvalidInput("name", f"a project named {project.name!r} exists with other settings")
        create_topics(self.bus, project.name, self.config.partitions)
        return existing

    def stats(self, project: str) -> ProjectStats:
        items = self.store.count_items(project)
        by_source = Counter(label.source for label in self.store.labels(project))
        current = self.store.current_model(project)
        return ProjectStats(project, items, dict(by_source), by_source["human"] / items if items else 0.0,
                            len(self.store.open_tasks(project)), None if current is None else current.version,
                            None if current is None else current.threshold, stream_status(self.store, project))

    def close_stream(self, project: str, actor: str) -> StreamStatus:
        """Ask the selector to close the stream (idempotent while a close is pending); audited."""
        return request_close(self.store, project, actor, self.clock())

    def export_labels(self, project: str, actor: str) -> list[Label]:
        """Every final label, oldest first; the export is in the audit log before anything is sent."""
        labels = self.store.labels(project)
        self.store.audit(project, actor, "export_labels", f"{len(labels)} labels", self.clock())
        return labels

    # -- models ---------------------------------------------------------------------------------
    def versions(self, project: str) -> tuple[list[ModelVersion], str | None]:
        """The project's versions, oldest first, and the current one."""
        current = self.store.current_model(project)
        return self.store.models(project), None if current is None else current.version

    def promote(self, project: str, version: str, actor: str) -> ModelVersion:
        """Make ``version`` current and publish it on the models topic (workers swap to it)."""
        model = self.store.promote(project, version)
        self.bus.publish(topic(project, "models"), project, to_json(model))
        self.bus.flush()
        self.store.audit(project, actor, "promote", version, self.clock())
        return model


# -- servicers: convert, delegate -------------------------------------------------------------
Handler = TypeVar("Handler", bound=Callable[..., Any])


def _status(method: Handler) -> Handler:
    """Turn a WinnowError into a gRPC status naming the field (the one place errors are mapped)."""

    @functools.wraps(method)
    def handler(self: object, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except WinnowError as error:
            code = next((c for cls, c in ERROR_CODES.items() if isinstance(error, cls)), grpc.StatusCode.INTERNAL)
            metadata = [(ERROR_CLASS_KEY, type(error).__name__)]
            if isinstance(error, (InvalidInput, NotFound)):
                metadata.append((ERROR_FIELD_KEY, error.field))
            log.info("rpc %s failed code=%s error=%s", method.__name__, code.name, type(error).__name__)
            context.set_trailing_metadata(metadata)
            context.abort(code, str(error))

    return handler  # type: ignore[return-value]


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    """Ingest: a stream or a batch of items, each all or nothing."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    def _summary(self, messages: Iterable[records_pb2.Item]) -> ingest_pb2.IngestSummary:
        now, size, items = self.api.clock(), 0, []
        for message in messages:
            size += message.ByteSize()
            if size > MAX_STREAM_BYTES:
                raise InvalidInput("items", f"over {MAX_STREAM_BYTES} bytes in one call; split the items")
            item = from_message(message, Item)
            items.append(item if item.ingested_at else dataclasses.replace(item, ingested_at=now))
        return ingest_pb2.IngestSummary(received=len(items), new_items=self.api.ingest(items))

    @_status
    def Ingest(self, request_iterator: Iterator[records_pb2.Item], context: grpc.ServicerContext
               ) -> ingest_pb2.IngestSummary:
        """Reads the whole stream, validates all of it, then writes it: all or nothing."""
        return self._summary(request_iterator)

    @_status
    def IngestBatch(self, request: ingest_pb2.ItemBatch, context: grpc.ServicerContext) -> ingest_pb2.IngestSummary:
        return self._summary(request.items)


class LabelingServicer(labeling_pb2_grpc.LabelingServicer):
    """Labeling: every SubmitLabel runs consensus for the items that have all their answers."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    @_status
    def LeaseTasks(self, request: labeling_pb2.LeaseTasksRequest, context: grpc.ServicerContext
                   ) -> labeling_pb2.LeaseTasksResponse:
        leases = self.api.lease(request.project, request.annotator, request.max_tasks)
        return labeling_pb2.LeaseTasksResponse(leases=[to_message(lease, records_pb2.Lease) for lease in leases])

    @_status
    def SubmitLabel(self, request: labeling_pb2.SubmitLabelRequest, context: grpc.ServicerContext
                    ) -> labeling_pb2.SubmitLabelResponse:
        recorded, made = self.api.submit(request.project, request.annotator, request.item_id, request.label)
        return labeling_pb2.SubmitLabelResponse(recorded=recorded, final_labels=made)

    @_status
    def Skip(self, request: labeling_pb2.SkipRequest, context: grpc.ServicerContext) -> labeling_pb2.SkipResponse:
        self.api.skip(request.project, request.annotator, request.item_id)
        return labeling_pb2.SkipResponse()

    @_status
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

    @_status
    def CreateProject(self, request: projects_pb2.CreateProjectRequest, context: grpc.ServicerContext
                      ) -> records_pb2.Project:
        settings = {name: getattr(request, name) for name in _PROJECT_SETTINGS if request.HasField(name)}
        project = Project(request.name, tuple(request.classes), created_at=self.api.clock(), **settings)
        return to_message(self.api.create_project(project), records_pb2.Project)

    @_status
    def GetStats(self, request: projects_pb2.GetStatsRequest, context: grpc.ServicerContext
                 ) -> projects_pb2.ProjectStats:
        return to_message(self.api.stats(request.project), projects_pb2.ProjectStats)

    @_status
    def ExportLabels(self, request: projects_pb2.ExportLabelsRequest, context: grpc.ServicerContext
                     ) -> Iterator[records_pb2.Label]:
        labels = self.api.export_labels(request.project, context.peer())  # errors raise here, before streaming
        return (to_message(label, records_pb2.Label) for label in labels)

    @_status
    def CloseStream(self, request: projects_pb2.CloseStreamRequest, context: grpc.ServicerContext
                    ) -> projects_pb2.StreamStatus:
        return to_message(self.api.close_stream(request.project, context.peer()), projects_pb2.StreamStatus)


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    """Models: list versions, promote one (audited)."""

    def __init__(self, api: WinnowApi) -> None:
        self.api = api

    @_status
    def ListVersions(self, request: models_pb2.ListVersionsRequest, context: grpc.ServicerContext
                     ) -> models_pb2.ListVersionsResponse:
        versions, current = self.api.versions(request.project)
        return models_pb2.ListVersionsResponse(versions=[to_message(v, records_pb2.ModelVersion) for v in versions],
                                               current_version=current)

    @_status
    def Promote(self, request: models_pb2.PromoteRequest, context: grpc.ServicerContext) -> records_pb2.ModelVersion:
        model = self.api.promote(request.project, request.version, context.peer())
        return to_message(model, records_pb2.ModelVersion)


# -- the server -------------------------------------------------------------------------------
def _full_name(module: Any, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name


SERVICES: dict[str, tuple[type, Callable[[Any, grpc.Server], None], str]] = {
    "Ingest": (IngestServicer, ingest_pb2_grpc.add_IngestServicer_to_server, _full_name(ingest_pb2, "Ingest")),
    "Labeling": (LabelingServicer, labeling_pb2_grpc.add_LabelingServicer_to_server,
                 _full_name(labeling_pb2, "Labeling")),
    "Projects": (ProjectsServicer, projects_pb2_grpc.add_ProjectsServicer_to_server,
                 _full_name(projects_pb2, "Projects")),
    "Models": (ModelsServicer, models_pb2_grpc.add_ModelsServicer_to_server, _full_name(models_pb2, "Models")),
}


def create_server(bus: Bus, store: Store, addr: str = "127.0.0.1:0", services: Sequence[str] = tuple(SERVICES),
                  config: LoopConfig | None = None, max_workers: int = 8) -> tuple[grpc.Server, int]:
    """A server, not started yet, with the chosen winnow.v1 ``services`` (keys of ``SERVICES``; none
    for a worker process), the health service (SERVING for each) and server reflection.

    Returns the server and the port it bound (``addr`` may ask for port 0). The caller starts it and
    stops it with a grace period, in a ``finally``.
    """
    unknown = [name for name in services if name not in SERVICES]
    if unknown:
        raise InvalidInput("services", f"{unknown} given; expected some of {list(SERVICES)}")
    api = WinnowApi(bus, store, config or LoopConfig())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = []
    for name in services:
        servicer_cls, add_to_server, full_name = SERVICES[name]
        add_to_server(servicer_cls(api), server)
        health_servicer.set(full_name, health_pb2.HealthCheckResponse.SERVING)
        names.append(full_name)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(addr)
    log.info("grpc server addr=%s port=%d services=%s", addr, port, ",".join(names))
    return server, port
