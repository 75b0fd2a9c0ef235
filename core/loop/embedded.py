"""Embedded mode: every stage of the loop in one process, on the SQLite bus and the SQLite store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, ModelVersion, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.close import request_close, stream_status
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import create_topics
from winnow.core.loop.trainer import Trainer
from winnow.core.ml.runtime import Runtime

People = Callable[[LabelingService], int]


class EmbeddedLoop:
    """The whole loop for one project under ``workdir`` (bus.sqlite, store.sqlite, models/).

    ``people`` is whoever answers tasks between stage steps (simulated annotators in the demo and
    the benchmark; in a deployment people use the Labeling API and the web page instead).
    """

    def __init__(self, workdir: Path, project: Project, runtime: Runtime, config: LoopConfig,
                 clock: Callable[[], float] = time.time,
                 on_version: Callable[[ModelVersion], None] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # one process: no member can die apart from the others, so no heartbeat deadline applies
        self.bus = SqliteBus(self.workdir / "bus.sqlite", session_timeout_s=24 * 3600.0)
        self.store = SqliteStore(self.workdir / "store.sqlite")
        self.store.create_project(project)
        create_topics(self.bus, project.name, config.partitions)
        self.project, self.config, self.clock = project, config, clock
        self.producer = self.bus.producer()  # ingest's
        # ingest and the stages take turns here: no more items come mid-step, and no stage runs while
        # the model works on a batch, so the worker neither waits to fill a batch nor overlaps
        self.prelabel = PrelabelWorker(self.bus, self.store, project, config, runtime, overlap=False)
        self.prelabel.fill_s = 0.0
        self.selector = Selector(self.bus, self.store, project, config, clock)
        self.labeling = LabelingService(self.bus, self.store, project, config, clock)
        self.trainer = Trainer(self.bus, self.store, project, config, self.workdir / "models", clock, on_version)

    def ingest(self, items: Sequence[Item]) -> int:
        return ingest(self.producer, self.store, self.project, items)

    def run_until_idle(self, people: People | None = None) -> None:
        """Step every stage until none has anything left to do."""
        while True:
            moved = self.prelabel.step() + self.selector.step()
            if people is not None:
                moved += people(self.labeling)
            moved += self.labeling.resolve() + self.trainer.step()
            if not moved:
                return

    def close_stream(self, people: People | None = None, actor: str = "embedded") -> dict[str, int]:
        """No more items will come: people answer the open tasks, the trainer retrains on every
        label, and only then the selector's close labels the rest (``Selector.close_stream``); the
        audit tasks the close draws are answered before this returns (when ``people`` are given)."""
        request_close(self.store, self.project.name, actor, self.clock())
        for _ in range(1000):
            self.run_until_idle(people)
            self.trainer.train_for_close()
            self.run_until_idle(people)
            self.selector.close_if_requested()  # or served already in a step of the runs above
            status = stream_status(self.store, self.project.name)
            if status.state == "closed":
                self.run_until_idle(people)
                return {"tasks": status.tasks, "low_confidence": status.low_confidence, "unlabeled": status.unlabeled}
        raise RuntimeError(f"the close of project {self.project.name!r} never became ready")

    def close(self) -> None:
        for stage in (self.prelabel, self.selector, self.trainer):
            stage.close()
        self.bus.close()
        self.store.close()
