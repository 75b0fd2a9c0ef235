"""What the throughput benchmark measures its runs with: per-stage step meters, the time a runtime
spends in ``predict``, per-thread CPU from /proc, and an optional profile of a thread."""

from __future__ import annotations

import cProfile
import inspect
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from winnow.core.loop.stage import Stage
from winnow.core.ml.runtime import Prediction, Runtime

# What one prelabel step takes off the bus: serve's worker loop calls ``Stage.step`` with its default.
PRELABEL_BATCH: int = inspect.signature(Stage.step).parameters["max_messages"].default


@dataclass
class StageMeter:
    """One stage in one run: messages per step that moved any, wall and thread CPU time in those steps,
    when the last ended (ONNX Runtime's own worker threads are not in ``cpu_s``)."""

    batches: list[int] = field(default_factory=list)
    busy_s: float = 0.0
    cpu_s: float = 0.0
    handled: int = 0
    last_end: float = 0.0


class MeteredStage:
    """A stage as serve's worker loop sees it (``step``, ``consumer``, ``project``), metering each step.

    ``on_step(handled_so_far, ended_at)`` runs after every step that moved messages, once its output
    is durable and its offsets are committed.
    """

    def __init__(self, stage: Stage, meter: StageMeter, on_step: Callable[[int, float], None] | None = None) -> None:
        self.stage, self.meter, self.on_step = stage, meter, on_step
        self.consumer, self.project = stage.consumer, stage.project
        self.stepped = threading.Event()  # set after the first step (Kafka: the group is joined)

    def step(self, max_messages: int = PRELABEL_BATCH, timeout_s: float = 0.0) -> int:
        in_flight = self.stage.in_flight  # an overlapping prelabel worker's batch in the model
        started, cpu_started = time.perf_counter(), time.thread_time()
        handled = self.stage.step(max_messages, timeout_s)
        ended = time.perf_counter()
        self.stepped.set()
        if handled or self.stage.in_flight != in_flight:  # took messages, or wrote a batch
            if handled:
                self.meter.batches.append(handled)
            self.meter.busy_s += ended - started
            self.meter.cpu_s += time.thread_time() - cpu_started
            self.meter.handled += handled
            self.meter.last_end = ended
            if self.on_step is not None:
                self.on_step(self.meter.handled, ended)
        return handled


class TimedRuntime:
    """The runtime the prelabel worker gets: the benchmark's runtime, with the time spent in ``predict``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.predict_s = 0.0
        self.spans: list[tuple[float, float]] = []  # perf_counter start and end of each predict

    @property
    def model_version(self) -> str | None:
        return self.runtime.model_version

    @property
    def encoder(self):
        """The runtime's encoder (the prelabel worker binds the project to it)."""
        return self.runtime.encoder

    def swap(self, model_folder: Path) -> None:
        self.runtime.swap(model_folder)

    def forget(self, text_sha256: Sequence[str]) -> int:
        return self.runtime.forget(text_sha256)

    def predict(self, texts: Sequence[str]) -> Prediction:
        started = time.perf_counter()
        try:
            return self.runtime.predict(texts)
        finally:
            ended = time.perf_counter()
            self.predict_s += ended - started
            self.spans.append((started, ended))


def thread_cpu_s() -> dict[str, float] | None:
    """CPU seconds (user + system) of each live thread of this process by thread name, from /proc.

    Threads Python did not start (ONNX Runtime's pool) are summed as ``native``; threads sharing a
    name (one Kafka IO thread per client) are summed. None where /proc is missing (not Linux).
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in tasks.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), "native")
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * tick_s  # utime, stime
    return totals


def cpu_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """CPU seconds each thread name spent between two ``thread_cpu_s`` readings, largest first (None without /proc)."""
    if before is None or after is None:
        return None
    delta = {name: round(after[name] - before.get(name, 0.0), 2) for name in after}
    return dict(sorted(((n, d) for n, d in delta.items() if d > 0), key=lambda kv: -kv[1]))


def profiled(target: Callable[..., None], profile: cProfile.Profile | None) -> Callable[..., None]:
    """``target`` run under ``profile`` (itself when there is no profile)."""
    if profile is None:
        return target

    def run(*args: object) -> None:
        profile.enable()
        try:
            target(*args)
        finally:
            profile.disable()

    return run
