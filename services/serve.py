"""`winnow serve NAME`: run one service (or all of them) against a bus and a store, until SIGTERM.

Bus and store are named by URL: ``sqlite:///path`` (embedded, the default) or ``kafka://host:port``
for the bus, ``sqlite:///path`` or ``postgresql://...`` for the store. Every service serves gRPC
health and reflection (plus its API, for the API services) and prints ``grpc listening on
HOST:PORT`` when it is ready; workers consume their topics in a loop, and say at INFO what they do
(start, model trained or swapped, close served, shutdown). Metrics that query the bus or the store
(consumer lag, label counts) are measured in a thread of their own: one that fails is logged and
never stops a worker. SIGTERM stops the loops after the
batch in hand (its output flushed and its offsets committed), then stops the server; whatever has
not finished ``grace_s`` after the signal is abandoned and the process exits anyway (uncommitted
input is redelivered to the next process).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from prometheus_client import start_http_server
from winnow.core.access.tokens import issue
from winnow.core.domain.errors import InvalidInput, NotFound, WinnowError
from winnow.core.domain.settings import SERVICES, ServeConfig, Settings
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.quality import certified_quality
from winnow.core.loop.selector import Selector
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import consumer_group, create_topics
from winnow.core.loop.trainer import Trainer
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store
from winnow.core.select.index import set_threads
from winnow.services.api.auth import Authenticator
from winnow.services.metrics import (
    AUDIT_AGREEMENT,
    CERTIFIED_ACCURACY,
    CERTIFIED_PRECISION,
    HUMAN_FRACTION,
    LAG,
    MESSAGES,
    METRIC_ERRORS,
    MODEL_VERSION,
    OPEN_TASKS,
    STEP_SECONDS,
)
from winnow.services.api.operations import WinnowApi
from winnow.services.api.server import ServerTls
from winnow.services.web.app import PageServer, labeling_app

log = logging.getLogger(__name__)

API_SERVICES = {"ingest": ("Ingest",), "labeling": ("Labeling",),
                "projects": ("Projects", "Models", "Access", "Review")}
WORKERS = ("prelabel", "selector", "trainer")
FORCED_EXIT = 1  # the exit code when shutdown overran the grace period



class WorkerFailed(WinnowError):
    """A worker's step raised; ``serve`` stopped every service and exits with this error."""


class ShutdownOverran(WinnowError):
    """Some worker or connection had not stopped by the end of the grace period; it was abandoned."""


def open_bus(url: str, session_timeout_s: float = ServeConfig.sqlite_session_timeout_s) -> Bus:
    """``sqlite:///path/bus.sqlite`` or ``kafka://host:port[?security options]`` (see
    ``kafka_bus.security_from_url``: SSL, SASL_SSL)."""
    if url.startswith("kafka://"):
        from winnow.services.kafka_bus import KafkaBus, security_from_url

        bootstrap, security = security_from_url(url)
        return KafkaBus(bootstrap, security=security)
    if url.startswith("sqlite:///"):
        from winnow.core.adapters.sqlite_bus import SqliteBus

        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteBus(path, session_timeout_s=session_timeout_s)
    raise InvalidInput("--bus", f"{url[:200]!r} is neither kafka://HOST:PORT nor sqlite:///PATH")


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
    raise InvalidInput("--store", "is neither postgresql://... nor sqlite:///PATH")  # a URL may hold a password


def make_stage(name: str, bus: Bus, store: Store, project: str, settings: Settings) -> Stage:
    """The worker ``name`` (prelabel, selector or trainer) of ``project``, configured by ``settings``."""
    record = store.get_project(project)
    if name == "prelabel":
        from winnow.core.ml.runtime import make_runtime

        runtime = settings.runtime
        return PrelabelWorker(bus, store, record, settings.loop,
                              make_runtime(runtime.engine, runtime.device, cache_dir=runtime.cache_dir,
                                           encoder=runtime.encoder, int8=runtime.encoder_int8))
    if name == "selector":
        return Selector(bus, store, record, settings.loop)
    # resolved: the paths it registers are loaded by other workers, from other working directories
    return Trainer(bus, store, record, settings.loop, settings.serve.models_dir.resolve())


class Worker:
    """One stage stepped in a loop; its bus client is used by one thread at a time (``lock``).

    Kafka consumers are not thread-safe, so the lag thread measures between steps, under the lock.
    """

    def __init__(self, name: str, stage: Stage) -> None:
        self.name, self.stage = name, stage
        self.project = stage.project.name
        self.lock = threading.Lock()
        self.metric_waiting = threading.Event()  # the lag thread wants the lock: yield it after a step

    def step(self, timeout_s: float = 0.5) -> int:
        with self.lock:
            return self.stage.step(timeout_s=timeout_s)

    def measure_lag(self, wait_s: float) -> None:
        """Set the lag gauge; a failure (a broker outage) is logged and counted, never raised."""
        self.metric_waiting.set()
        try:
            if not self.lock.acquire(timeout=wait_s):
                return  # a long step: measured next time
            try:
                LAG.labels(self.name, self.project).set(self.stage.consumer.lag())
            finally:
                self.lock.release()
        except Exception as e:  # the metric must never stop the worker
            METRIC_ERRORS.labels(self.name, self.project).inc()
            log.warning("consumer lag not measured service=%s project=%s error=%s", self.name, self.project,
                        type(e).__name__)
        finally:
            self.metric_waiting.clear()

    def measure_labels(self, store: Store) -> None:
        """The trainer's gauges: share of human labels, current model version, open tasks, the certified
        bounds and the realised agreement on audits; failures logged, never raised."""
        try:
            counts = store.count_labels(self.project)
            if total := sum(counts.values()):
                HUMAN_FRACTION.labels(self.project).set(counts.get("human", 0) / total)
            current = store.current_model(self.project)
            if current is not None:
                MODEL_VERSION.labels(self.project, current.version).set(current.n_train)
            OPEN_TASKS.labels(self.project).set(store.count_open_tasks(self.project))
            quality = certified_quality(store, self.project)
            for gauge, value in ((CERTIFIED_ACCURACY, quality.accuracy_lower_bound),
                                 (CERTIFIED_PRECISION, quality.auto_accepted_precision_lower_bound)):
                gauge.labels(self.project).set(float("nan") if value is None else value)
            answered = [wrong for _, _, wrong in store.audit_record(self.project)[1] if wrong is not None]
            if answered:
                AUDIT_AGREEMENT.labels(self.project).set(1.0 - sum(answered) / len(answered))
        except Exception as e:  # the metric must never stop the worker
            METRIC_ERRORS.labels(self.name, self.project).inc()
            log.warning("label metrics not measured service=%s project=%s error=%s", self.name, self.project,
                        type(e).__name__)


def run_worker(worker: Worker, stop: threading.Event, failures: list[BaseException] | None = None,
               faiss_threads: int | None = None) -> None:
    """Step ``worker`` until ``stop``; each step's output is durable before its offsets are committed.

    ``faiss_threads``: the OpenMP threads of FAISS's calls in this thread (OpenMP keeps the count per
    thread, so it is set here, in the worker's own thread; None leaves it).

    With ``failures``, a step that raises stops the whole service: the error goes into ``failures``
    and ``stop`` is set, so ``serve`` drains the other workers and exits with an error. The failed
    batch's offsets are not committed, so a restarted process gets it again; a worker thread left
    dead would leave its partitions stuck behind a service that still answers health checks.
    """
    try:
        if faiss_threads is not None:
            set_threads(faiss_threads)
        _step_until(worker, stop)
    except Exception as e:
        if failures is None:
            raise
        log.exception("worker failed service=%s project=%s; stopping the service", worker.name, worker.project)
        failures.append(e)
        stop.set()


def _step_until(worker: Worker, stop: threading.Event) -> None:
    name, project = worker.name, worker.project
    while not stop.is_set():
        started = time.perf_counter()
        handled = worker.step(timeout_s=0.5)
        if handled:
            STEP_SECONDS.labels(name, project).observe(time.perf_counter() - started)
            MESSAGES.labels(name, project).inc(handled)
        if worker.metric_waiting.is_set():
            time.sleep(0.001)  # hand the lock to the metric thread


def measure_until(workers: Sequence[Worker], store: Store, stop: threading.Event, every_s: float) -> None:
    """Every ``every_s`` seconds, each worker's consumer lag (and the trainer's label gauges), until ``stop``.

    Runs in a thread of its own, so a metric that fails or hangs (a broker or database outage)
    never stops or stalls a worker's step loop."""
    while not stop.wait(every_s):
        for worker in workers:
            if stop.is_set():
                return
            worker.measure_lag(wait_s=every_s)
            if worker.name == "trainer":
                worker.measure_labels(store)


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


def _hard_exit(grace_s: float) -> None:
    log.error("shutdown overran grace_s=%.1f; exiting now (uncommitted input is redelivered)", grace_s)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(FORCED_EXIT)


def install_signal_handlers(stop: threading.Event, grace_s: float,
                            hard_exit: Callable[[float], None] = _hard_exit) -> None:
    """SIGTERM and SIGINT set ``stop`` and start a watchdog that ends the process ``grace_s`` later
    whatever it is waiting on (a bus call in an outage, a long training step); a second signal ends
    it at once."""
    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            hard_exit(0.0)
        log.info("shutdown begun signal=%s grace_s=%.1f", signal.Signals(signum).name, grace_s)
        stop.set()
        watchdog = threading.Timer(grace_s, hard_exit, args=(grace_s,))
        watchdog.daemon = True
        watchdog.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def _close_within(deadline: float, closers: list[tuple[str, Callable[[], object]]]) -> list[str]:
    """Run ``closers`` in order in a daemon thread; the names of those not done by ``deadline``."""
    done: list[str] = []

    def run() -> None:
        for name, close in closers:
            try:
                close()
            except Exception as e:  # the next one still gets closed
                log.warning("close failed part=%s error=%s", name, type(e).__name__)
            done.append(name)

    thread = threading.Thread(target=run, name="serve-close", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name, _ in closers if name not in done]


def credentials(store: Store, store_url: str, insecure: bool) -> Authenticator:
    """How the API services know their callers: bearer tokens checked against the store, unless the
    operator said ``--insecure``. A store that has never held a token gets a first admin token when
    it is the embedded SQLite store (printed once, as notebook servers do); any other store with no
    live token is refused: the API would answer nobody."""
    if insecure:
        log.warning("serving without credentials (--insecure): every caller may do everything")
        return Authenticator.insecure()
    tokens = store.tokens()
    if not tokens and store_url.startswith("sqlite:///"):
        token, info = issue(store, "serve", "admin", None, "admin", time.time())
        print("created the first admin token; it is shown only now (the store keeps its hash):\n"
              f"  {token}\n"
              "clients send it as 'authorization: Bearer TOKEN' (WinnowClient(target, token=TOKEN)); "
              f"more tokens: winnow token create --store {store_url} --role ROLE --project PROJECT", flush=True)
        log.info("first admin token created token_id=%s", info.token_id)
    elif not any(t.live(time.time()) for t in tokens):
        raise InvalidInput("--insecure", "the store holds no live token, so the API would answer nobody: create one "
                           "with `winnow token create --store URL --role admin`, or serve --insecure on purpose")
    return Authenticator(store)


def serve(settings: Settings, services: Sequence[str], stop: threading.Event | None = None,
          insecure: bool = False) -> None:
    """Run ``services`` until ``stop`` is set (SIGTERM and SIGINT set it when called from the main thread).

    The API services need credentials (:func:`credentials`) unless ``insecure``.

    Raises WorkerFailed when a worker's step raised, ShutdownOverran when something was still
    running ``grace_s`` after the stop (it is abandoned: daemon threads, connections left open).
    """
    from winnow.services.api.server import create_server

    options = settings.serve
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise InvalidInput("service", f"{unknown} not among {SERVICES + ('all',)}")
    workers = [s for s in services if s in WORKERS]
    if workers and not options.projects:
        raise InvalidInput("--project", f"{workers} consume one project's topics: name it with --project")
    tls = ServerTls.load(options.tls_cert, options.tls_key, options.tls_client_ca)  # refused before anything opens
    if "prelabel" in workers or "trainer" in workers:
        from winnow.core.ml.runtime import set_torch_threads

        set_torch_threads(settings.runtime.engine, settings.runtime.torch_threads)
    if "prelabel" in workers:  # an encoder that is not there is refused before anything opens
        from winnow.core.ml.encoder import check_encoders, encoder_specs

        runtime = settings.runtime
        check_encoders(encoder_specs(runtime.encoder), runtime.engine, runtime.encoder_int8)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(stop, options.grace_s)
    bus = open_bus(options.bus_url, options.sqlite_session_timeout_s)
    store = open_store(options.store_url)
    api = tuple(name for s in services for name in API_SERVICES.get(s, ()))
    try:
        auth = credentials(store, options.store_url, insecure) if api else Authenticator.insecure()
    except BaseException:
        bus.close()
        store.close()
        raise
    operations = WinnowApi(bus, store, settings.loop)  # one per process: the gRPC API and the page share it
    server, port = create_server(bus, store, auth, f"{options.grpc_host}:{options.grpc_port}", services=api,
                                 config=settings.loop, tls=tls, api=operations)
    page = (PageServer(labeling_app(operations, auth), options.grpc_host, options.http_port, tls)
            if options.http_port is not None and "labeling" in services else None)
    running: list[Worker] = []
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []
    try:
        server.start()
        if options.metrics_port is not None:
            metrics_server, _ = start_http_server(options.metrics_port, addr=options.metrics_host)
            print(f"metrics listening on {options.metrics_host}:{metrics_server.server_port}", flush=True)
        if page is not None:
            page.start()
            print(f"http listening on {options.grpc_host}:{page.port}", flush=True)
        print(f"grpc listening on {options.grpc_host}:{port}", flush=True)
        log.info("serving services=%s projects=%s bus=%s grpc_port=%d", ",".join(services),
                 ",".join(options.projects), options.bus_url.split("://")[0], port)
        for project in options.projects if workers else ():
            _wait_for_project(store, project, stop)
            if stop.is_set():
                return
            create_topics(bus, project, settings.loop.partitions)  # idempotent
            for name in workers:
                log.info("worker starting name=%s project=%s group=%s", name, project, consumer_group(name, project))
                running.append(Worker(name, make_stage(name, bus, store, project, settings)))
        threads = [threading.Thread(target=run_worker, args=(w, stop, failures, options.faiss_threads),
                                    name=f"{w.name}-{w.project}", daemon=True) for w in running]
        if running:
            threads.append(threading.Thread(target=measure_until, args=(running, store, stop, options.lag_every_s),
                                            name="metrics", daemon=True))
        for thread in threads:
            thread.start()
        stop.wait()
    finally:
        stop.set()
        _shut_down(options, server, running, threads, bus, store, page)
    if failures:
        raise WorkerFailed(f"a worker failed, so the service stopped: {failures[0]!r}") from failures[0]


def _shut_down(options: ServeConfig, server, running: list[Worker], threads: list[threading.Thread], bus: Bus,
               store: Store, page: PageServer | None = None) -> None:
    """Stop everything within ``options.grace_s`` (the watchdog of a signalled process ends it just after)."""
    started = time.monotonic()
    deadline = started + 0.9 * options.grace_s  # the rest is the watchdog's margin
    log.info("shutdown stopping workers=%d grace_s=%.1f", len(running), options.grace_s)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    server.stop(max(0.0, deadline - time.monotonic())).wait(max(0.0, deadline - time.monotonic()))
    closers: list[tuple[str, Callable[[], object]]] = [
        (f"{w.name}-{w.project}", w.stage.close) for w in running if f"{w.name}-{w.project}" not in stuck]
    if page is not None:
        closers.insert(0, ("page", page.stop))
    stuck += _close_within(deadline, [*closers, ("bus", bus.close), ("store", store.close)])
    if stuck:
        raise ShutdownOverran(f"still running after grace_s={options.grace_s:g}: {', '.join(stuck)}")
    log.info("shutdown finished seconds=%.2f", time.monotonic() - started)


def parse_services(name: str) -> tuple[str, ...]:
    return SERVICES if name == "all" else (name,)
