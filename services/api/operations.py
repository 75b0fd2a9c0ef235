"""What the API does, as plain typed methods on core records: ``WinnowApi`` checks every value
against ``winnow.core.domain.limits`` before it reaches the store or the bus."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.limits import (
    MAX_CLASS_NAME_BYTES,
    MAX_HEARTBEAT_IDS,
    MAX_KEY_BYTES,
    MAX_LEASE_TASKS,
    check_count,
    check_items,
    check_keys,
    check_project_name,
    check_string,
    shorten,
)
from winnow.core.domain.codecs import MODELS
from winnow.core.domain.records import Item, Label, Lease, ModelVersion, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.domain.validation import validate_items, validate_project
from winnow.core.loop.close import StreamStatus, request_close, stream_status
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.topics import create_topics, topic
from winnow.core.ports.bus import Bus, ProducerPool
from winnow.core.ports.store import Store
from winnow.core.loop.quality import certified_quality
from winnow.services.api.convert import CertifiedQuality, ProjectStats


def _project(name: str) -> str:
    check_project_name(name, "project")  # a name no project can have is refused before any lookup
    return name


class WinnowApi:
    """What the API does, on core records. Each project gets one ``LabelingService``; its submits
    and consensus run under that project's lock (``LabelingService`` keeps the items ready for
    consensus in memory)."""

    def __init__(self, bus: Bus, store: Store, config: LoopConfig, clock: Callable[[], float] = time.time) -> None:
        self.bus, self.store, self.config, self.clock = bus, store, config, clock
        self.producers = ProducerPool(bus)  # one per concurrent call: a flush reports only its own call's sends
        self._labeling: dict[str, tuple[LabelingService, threading.Lock]] = {}
        self._labeling_lock = threading.Lock()

    # -- ingest ---------------------------------------------------------------------------------
    def ingest(self, items: Sequence[Item]) -> int:
        """Validate every item (per project) before writing any; returns how many ids were new."""
        check_items(items)
        by_project: dict[str, list[Item]] = {}
        for item in items:
            by_project.setdefault(item.project, []).append(item)
        projects = {name: self.store.get_project(name) for name in by_project}
        for name, group in by_project.items():
            validate_items(projects[name], group)
        with self.producers.lease() as producer:
            return sum(ingest(producer, self.store, projects[name], group) for name, group in by_project.items())

    # -- labeling -------------------------------------------------------------------------------
    def _service(self, project: str, annotator: str) -> tuple[LabelingService, threading.Lock]:
        _project(project)
        check_string("annotator", annotator, MAX_KEY_BYTES)
        with self._labeling_lock:
            if project not in self._labeling:
                service = LabelingService(self.bus, self.store, self.store.get_project(project), self.config,
                                          self.clock)
                self._labeling[project] = (service, threading.Lock())
            return self._labeling[project]

    def lease(self, project: str, annotator: str, max_tasks: int) -> list[Lease]:
        if not 1 <= max_tasks <= MAX_LEASE_TASKS:
            raise InvalidInput("max_tasks", f"must be in [1, {MAX_LEASE_TASKS}], got {max_tasks}")
        return self._service(project, annotator)[0].lease(annotator, max_tasks)

    def submit(self, project: str, annotator: str, item_id: str, label: str) -> tuple[bool, int]:
        """Record the answer, then resolve: (answer recorded, final labels made)."""
        check_keys("item_id", [item_id])
        check_string("label", label, MAX_CLASS_NAME_BYTES)
        service, lock = self._service(project, annotator)
        with lock:
            recorded = service.submit(annotator, item_id, label)
            return recorded, service.resolve()

    def skip(self, project: str, annotator: str, item_id: str) -> None:
        check_keys("item_id", [item_id])
        self._service(project, annotator)[0].skip(annotator, item_id)

    def heartbeat(self, project: str, annotator: str, item_ids: Sequence[str]) -> int:
        check_count("item_ids", len(item_ids), MAX_HEARTBEAT_IDS)
        check_keys("item_ids", item_ids)
        return self._service(project, annotator)[0].heartbeat(annotator, item_ids)

    # -- projects -------------------------------------------------------------------------------
    def create_project(self, project: Project) -> Project:
        """Create the project: its topics first, then its row, so a bus that refuses a topic leaves
        nothing behind. An existing project with the same settings is returned as it is."""
        validate_project(project)  # with the limits and the one name rule, before any topic exists
        try:
            existing = self.store.get_project(project.name)
        except NotFound:
            create_topics(self.bus, project.name, self.config.partitions)
            self.store.create_project(project)
            existing = project
        if dataclasses.replace(existing, created_at=project.created_at) != project:
            raise InvalidInput("name", f"a project named {shorten(project.name)} exists with other settings")
        create_topics(self.bus, project.name, self.config.partitions)  # idempotent
        return existing

    def stats(self, project: str) -> ProjectStats:
        items = self.store.count_items(_project(project))
        by_source = Counter(self.store.count_labels(project))
        current = self.store.current_model(project)
        return ProjectStats(project, items, dict(by_source), by_source["human"] / items if items else 0.0,
                            self.store.count_open_tasks(project), None if current is None else current.version,
                            None if current is None else current.threshold, stream_status(self.store, project),
                            CertifiedQuality.of(certified_quality(self.store, project)))

    def close_stream(self, project: str, actor: str) -> StreamStatus:
        """Ask the selector to close the stream (idempotent while a close is pending); audited."""
        return request_close(self.store, _project(project), actor, self.clock())

    def export_labels(self, project: str, actor: str) -> list[Label]:
        """Every final label, oldest first; the export is in the audit log before anything is sent."""
        labels = self.store.labels(_project(project))
        self.store.audit(project, actor, "export_labels", f"{len(labels)} labels", self.clock())
        return labels

    # -- models ---------------------------------------------------------------------------------
    def versions(self, project: str) -> tuple[list[ModelVersion], str | None]:
        """The project's versions, oldest first, and the current one."""
        current = self.store.current_model(_project(project))
        return self.store.models(project), None if current is None else current.version

    def promote(self, project: str, version: str, actor: str) -> ModelVersion:
        """Make ``version`` current and publish it on the models topic (workers swap to it)."""
        check_keys("version", [version])
        model = self.store.promote(_project(project), version)
        with self.producers.lease() as producer:
            producer.publish_many(topic(project, "models"), MODELS.keyed([model]))
            producer.flush()
        self.store.audit(project, actor, "promote", version, self.clock())
        return model
