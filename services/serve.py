"""`winnow serve NAME`: run one service (or all of them) against a bus and a store, until SIGTERM.

Bus and store are named by URL: ``sqlite:///path`` (embedded, the default) or ``kafka://host:port``
for the bus, ``sqlite:///path`` or ``postgresql://...`` for the store. Every service serves gRPC
health and reflection (plus its API, for the API services) and prints ``grpc listening on
HOST:PORT`` when it is ready; workers consume their topics in a loop. SIGTERM stops the loops after
the batch in hand (its output flushed and its offsets committed), then stops the server with a grace
period.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from winnow.core.domain.errors import InvalidInput, NotFound, WinnowError
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.selector import Selector
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import create_topics
from winnow.core.loop.trainer import Trainer
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store
from winnow.core.select.index import set_threads

log = logging.getLogger(__name__)

API_SERVICES = {"ingest": ("Ingest",), "labeling": ("Labeling",), "projects": ("Projects", "Models")}
WORKERS = ("prelabel", "selector", "trainer")
SERVICES = (*API_SERVICES, *WORKERS)
GRACE_S = 5.0
# each SQLite consumer heartbeats from its own thread (every 10 s here), so a long step does not
# count: the deadline need only outlast a stall of that thread (the GIL held by a long C call, a
# slow fsync on a loaded disk), and it is how long a killed worker's partitions wait for another
SQLITE_SESSION_TIMEOUT_S = 30.0
LAG_EVERY_S = 5.0  # consumer lag costs broker round trips on Kafka: measure it every few seconds

MESSAGES = Counter("winnow_messages_total", "Bus messages a stage handled", ["service", "project"])
LAG = Gauge("winnow_consumer_lag", "Messages on the stage's partitions not yet committed", ["service", "project"])
STEP_SECONDS = Histogram("winnow_step_seconds", "Time to handle one batch (output durable, offsets committed)",
                         ["service", "project"])
HUMAN_FRACTION = Gauge("winnow_human_fraction", "Share of final labels made by people", ["project"])
MODEL_VERSION = Gauge("winnow_model_version", "Human labels the current model was trained on", ["project", "version"])


class WorkerFailed(WinnowError):
    """A worker's step raised; ``serve`` stopped every service and exits with this error."""


def open_bus(url: str) -> Bus:
    """``sqlite:///path/bus.sqlite`` or ``kafka://host:port``."""
    if url.startswith("kafka://"):
        from winnow.services.kafka_bus import KafkaBus

        return KafkaBus(url.removeprefix("kafka://"))
    if url.startswith("sqlite:///"):
        from winnow.core.adapters.sqlite_bus import SqliteBus

        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteBus(path, session_timeout_s=SQLITE_SESSION_TIMEOUT_S)
    raise InvalidInput("bus", f"{url!r} is neither kafka://HOST:PORT nor sqlite:///PATH")


def open_store(url: str) -> Store:
    """``sqlite:///path/store.sqlite`` or ``postgresql://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        from winnow.core.adapters.postgres_store import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        from winnow.core.adapters.sqlite_store import SqliteStore

        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(path)
    raise InvalidInput("store", f"{url!r} is neither postgresql://... nor sqlite:///PATH")


@dataclass(frozen=True)
class ServeOptions:
    services: tuple[str, ...]
    projects: tuple[str, ...]
    bus_url: str
    store_url: str
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int | None = None
    models_dir: Path = Path("winnow-data/models")
    engine: str = "onnx"
    config: LoopConfig = LoopConfig()
    # FAISS OpenMP threads of this process (the selector's searches and clustering): one, because the
    # workers share the cores with the model (see ``winnow.core.select.index.set_threads``)
    faiss_threads: int = 1


def _stages(name: str, bus: Bus, store: Store, project: str, options: ServeOptions) -> Stage:
    record = store.get_project(project)
    if name == "prelabel":
        from winnow.core.ml.runtime import make_runtime

        return PrelabelWorker(bus, store, record, options.config, make_runtime(options.engine))
    if name == "selector":
        return Selector(bus, store, record, options.config)
    return Trainer(bus, store, record, options.config, options.models_dir.resolve())  # paths other workers can load


def _work(name: str, stage: Stage, store: Store, stop: threading.Event,
          failures: list[BaseException] | None = None) -> None:
    """Step ``stage`` until ``stop``; each step's output is durable before its offsets are committed.

    With ``failures``, a step that raises stops the whole service: the error goes into ``failures``
    and ``stop`` is set, so ``serve`` drains the other workers and exits with an error. The failed
    batch's offsets are not committed, so a restarted process gets it again; a worker thread left
    dead would leave its partitions stuck behind a service that still answers health checks.
    """
    try:
        _step_until(name, stage, store, stop)
    except Exception as e:
        if failures is None:
            raise
        log.exception("%s worker of project=%s failed; stopping the service", name, stage.project.name)
        failures.append(e)
        stop.set()


def _step_until(name: str, stage: Stage, store: Store, stop: threading.Event) -> None:
    project = stage.project.name
    lag_at = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        handled = stage.step(timeout_s=0.5)
        if handled:
            STEP_SECONDS.labels(name, project).observe(time.perf_counter() - started)
            MESSAGES.labels(name, project).inc(handled)
        if time.perf_counter() - lag_at >= LAG_EVERY_S:
            LAG.labels(name, project).set(stage.consumer.lag())
            lag_at = time.perf_counter()
        if name == "trainer" and handled:
            labels = store.labels(project)
            if labels:
                HUMAN_FRACTION.labels(project).set(sum(x.source == "human" for x in labels) / len(labels))
            current = store.current_model(project)
            if current is not None:
                MODEL_VERSION.labels(project, current.version).set(current.n_train)


def _wait_for_project(store: Store, project: str, stop: threading.Event) -> None:
    """Workers may start before the project is created through the Projects API: wait for it."""
    delay_s = 0.5
    while not stop.is_set():
        try:
            store.get_project(project)
            return
        except NotFound:
            log.warning("waiting for project=%s to be created", project)
            stop.wait(delay_s)
            delay_s = min(delay_s * 2, 10.0)


def serve(options: ServeOptions, stop: threading.Event | None = None) -> None:
    """Run the chosen services until ``stop`` is set (SIGTERM and SIGINT set it)."""
    from winnow.services.api.server import create_server

    unknown = [s for s in options.services if s not in SERVICES]
    if unknown:
        raise InvalidInput("service", f"{unknown} not among {SERVICES + ('all',)}")
    workers = [s for s in options.services if s in WORKERS]
    if workers and not options.projects:
        raise InvalidInput("project", f"{workers} consume one project's topics: name it with --project")
    set_threads(options.faiss_threads)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    bus, store = open_bus(options.bus_url), open_store(options.store_url)
    api = tuple(name for s in options.services for name in API_SERVICES.get(s, ()))
    server, port = create_server(bus, store, f"{options.grpc_host}:{options.grpc_port}", services=api,
                                 config=options.config)
    stages: list[tuple[str, Stage]] = []
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []
    try:
        server.start()
        if options.metrics_port is not None:
            metrics_server, _ = start_http_server(options.metrics_port, addr=options.grpc_host)
            print(f"metrics listening on {options.grpc_host}:{metrics_server.server_port}", flush=True)
        print(f"grpc listening on {options.grpc_host}:{port}", flush=True)
        for project in options.projects if workers else ():
            _wait_for_project(store, project, stop)
            if stop.is_set():
                return
            create_topics(bus, project, options.config.partitions)  # idempotent
            stages += [(name, _stages(name, bus, store, project, options)) for name in workers]
        threads = [threading.Thread(target=_work, args=(name, stage, store, stop, failures),
                                    name=f"{name}-{stage.project.name}") for name, stage in stages]
        for thread in threads:
            thread.start()
        log.info("serving services=%s projects=%s bus=%s", options.services, options.projects,
                 options.bus_url.split("://")[0])
        stop.wait()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.stop(GRACE_S).wait()
        for _, stage in stages:
            stage.close()
        bus.close()
        store.close()
    if failures:
        raise WorkerFailed(f"a worker failed, so the service stopped: {failures[0]!r}") from failures[0]


def parse_services(name: str) -> tuple[str, ...]:
    return SERVICES if name == "all" else (name,)


def project_names(values: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(p for value in values or () for p in value.split(",") if p)
