"""``WinnowClient``: the Python client of the winnow.v1 gRPC API, on core records and core errors."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import grpc
from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.domain.records import Item, Label, Lease, ModelVersion, Project
from winnow.core.loop.close import StreamStatus
from winnow.services.api.convert import ProjectStats, from_message, to_message
from winnow.services.api.errors import winnow_errors as _winnow_errors
from winnow.v1 import ingest_pb2_grpc, labeling_pb2, labeling_pb2_grpc, models_pb2, models_pb2_grpc
from winnow.v1 import projects_pb2, projects_pb2_grpc, records_pb2


class WinnowClient:
    """A connection to a Winnow server for producers, labeling tools and ML platform teams.

    Every call raises the server's WinnowError (InvalidInput, NotFound, ...) with its message; an
    unreachable server or a missed deadline raises WinnowError naming the gRPC code.
    """

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target)
        self._ingest = ingest_pb2_grpc.IngestStub(self._channel)
        self._labeling = labeling_pb2_grpc.LabelingStub(self._channel)
        self._projects = projects_pb2_grpc.ProjectsStub(self._channel)
        self._models = models_pb2_grpc.ModelsStub(self._channel)

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
        with _winnow_errors():
            response = self._labeling.LeaseTasks(request, timeout=self.timeout_s)
        return [from_message(lease, Lease) for lease in response.leases]

    def submit(self, project: str, annotator: str, item_id: str, label: str) -> bool:
        """Answer an item; False when this annotator had already answered it."""
        request = labeling_pb2.SubmitLabelRequest(project=project, annotator=annotator, item_id=item_id, label=label)
        with _winnow_errors():
            return self._labeling.SubmitLabel(request, timeout=self.timeout_s).recorded

    def skip(self, project: str, annotator: str, item_id: str) -> None:
        request = labeling_pb2.SkipRequest(project=project, annotator=annotator, item_id=item_id)
        with _winnow_errors():
            self._labeling.Skip(request, timeout=self.timeout_s)

    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str]) -> int:
        """Extend the annotator's live leases; returns how many were extended."""
        request = labeling_pb2.HeartbeatRequest(project=project, annotator=annotator, item_ids=item_ids)
        with _winnow_errors():
            return self._labeling.Heartbeat(request, timeout=self.timeout_s).extended

    # -- operators ------------------------------------------------------------------------------
    def create_project(self, name: str, classes: Sequence[str], *, budget_labels: int | None = None,
                       budget_per_items: int | None = None, precision_target: float | None = None,
                       strategy: str | None = None, overlap: int | None = None,
                       guideline_version: str | None = None) -> Project:
        """Create a project (settings left None take the server's defaults); idempotent."""
        request = projects_pb2.CreateProjectRequest(
            name=name, classes=classes, budget_labels=budget_labels, budget_per_items=budget_per_items,
            precision_target=precision_target, strategy=strategy, overlap=overlap,
            guideline_version=guideline_version)
        with _winnow_errors():
            return from_message(self._projects.CreateProject(request, timeout=self.timeout_s), Project)

    def stats(self, project: str) -> ProjectStats:
        with _winnow_errors():
            response = self._projects.GetStats(projects_pb2.GetStatsRequest(project=project), timeout=self.timeout_s)
        return from_message(response, ProjectStats)

    def close_stream(self, project: str) -> StreamStatus:
        """Tell the project that everything is sent; returns at once, usually in state ``closing``
        (the selector serves the close once every item has reached it). See :meth:`wait_closed`."""
        with _winnow_errors():
            response = self._projects.CloseStream(projects_pb2.CloseStreamRequest(project=project),
                                                  timeout=self.timeout_s)
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

    def export_labels(self, project: str) -> Iterator[Label]:
        """Every final label of the project, oldest first (no deadline: exports can be long)."""
        with _winnow_errors():
            for message in self._projects.ExportLabels(projects_pb2.ExportLabelsRequest(project=project)):
                yield from_message(message, Label)

    # -- ML platform ----------------------------------------------------------------------------
    def list_versions(self, project: str) -> list[ModelVersion]:
        """Model versions, oldest first (``stats`` names the current one)."""
        with _winnow_errors():
            response = self._models.ListVersions(models_pb2.ListVersionsRequest(project=project),
                                                 timeout=self.timeout_s)
        return [from_message(v, ModelVersion) for v in response.versions]

    def promote(self, project: str, version: str) -> ModelVersion:
        with _winnow_errors():
            response = self._models.Promote(models_pb2.PromoteRequest(project=project, version=version),
                                            timeout=self.timeout_s)
        return from_message(response, ModelVersion)
