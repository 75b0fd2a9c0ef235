"""`winnow bench chaos`: stream items through running Winnow processes while SIGKILLing them at random
moments (and, on Kafka, restarting the broker once), then count what the store and the labels topic
ended with: every acknowledged item labeled exactly once, and every final label on the topic.

Default mode: ``winnow serve all`` on the SQLite bus and store under a temp dir. ``bus="kafka"``: the
six services as processes on a Kafka broker and a PostgreSQL server started with the deploy scripts.
A producer and simulated annotators (answering with the true label) drive everything through the
gRPC client and retry what a kill interrupts, as real clients would.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from winnow.bench.cluster import (
    KAFKA_LOCAL,
    POSTGRES_LOCAL,
    Broker,
    Cluster,
    LocalServer,
    Service,
    postgres_schema,
    store_url,
)
from winnow.bench.common import environment, write_json
from winnow.core.data.datasets import banking77
from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.domain.codecs import LABELS
from winnow.core.domain.records import Item, Label
from winnow.core.loop.topics import topic
from winnow.services.client import WinnowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

API = ("ingest", "labeling", "projects")  # the services clients call (each on its own port on Kafka)
WORKERS = ("prelabel", "selector", "trainer")
ANNOTATORS = ("ann-1", "ann-2", "ann-3")
READY_TIMEOUT_S = 180.0
RETRY_PAUSE_S = 0.2
# what a client sees while a server is down or restarting; anything else is an answer, and a bug if unexpected
TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


@dataclass(frozen=True)
class ChaosPlan:
    """What one chaos run does. ``uptime_s``: a kill comes this long (uniform) after the previous
    restart was ready. The producer splits the items into ``kills + 1`` equal shares and sends share
    ``k`` only after kill ``k``, so the kills land while the stream flows."""

    items: int = 3000
    kills: int = 20
    classes: int = 25  # the first this many Banking77 classes (3,155 train rows), so models get confident
    seed: int = 0
    bus: str = "sqlite"  # or "kafka"
    budget_labels: int = 15
    budget_per_items: int = 100
    precision_target: float = 0.8  # reachable early, so the selector auto-accepts and swaps models too
    # WINNOW_* settings for every process: by default people check half the items the model would (or
    # nearly would) label, so thresholds are certified early and auto-accepts, audits and swaps run
    # under the kills
    serve_settings: dict[str, str] = field(default_factory=lambda: {"WINNOW_AUDIT_PROBABILITY": "0.5"})
    chunk: int = 50
    uptime_s: tuple[float, float] = (1.0, 6.0)
    deadline_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.bus not in ("sqlite", "kafka"):
            raise InvalidInput("bus", f"must be sqlite or kafka, got {self.bus!r}")
        train = banking77()[0]
        if not 2 <= self.classes <= len(train.classes):
            raise InvalidInput("classes", f"must be in [2, {len(train.classes)}], got {self.classes}")
        rows = len(_rows(self.classes))
        if not 1 <= self.items <= rows:
            raise InvalidInput("items", f"must be in [1, {rows}] (Banking77 train rows of {self.classes} classes), "
                                        f"got {self.items}")
        if self.kills < 0:
            raise InvalidInput("kills", f"must be >= 0, got {self.kills}")
        if any(not name.startswith("WINNOW_") for name in self.serve_settings):
            raise InvalidInput("serve_settings", f"names must be WINNOW_* variables, got {sorted(self.serve_settings)}")
        if self.chunk < 1:
            raise InvalidInput("chunk", f"must be >= 1, got {self.chunk}")
        if not 0 < self.uptime_s[0] <= self.uptime_s[1]:
            raise InvalidInput("uptime_s", f"must be 0 < low <= high, got {self.uptime_s}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chaos(threading.Thread):
    """Kills a random live process at random moments and restarts it; restarts any process that exits
    on its own (a supervisor's job), counting those apart; restarts the broker once when given one."""

    def __init__(self, cluster: Cluster, plan: ChaosPlan, broker: LocalServer | None) -> None:
        super().__init__(name="chaos", daemon=True)
        self.cluster, self.plan, self.broker = cluster, plan, broker
        self.rng = np.random.default_rng(plan.seed)
        self.kills_by_service: Counter[str] = Counter()
        self.unplanned_exits: Counter[str] = Counter()
        self.broker_restarts = 0
        self.stop_event = threading.Event()
        self.kills_done = 0
        self.errors: list[BaseException] = []
        # the broker goes down at one of the kills (drawn), besides the process killed there
        self._broker_at = int(self.rng.integers(plan.kills)) if broker is not None and plan.kills else -1

    @property
    def done(self) -> bool:
        return self.kills_done >= self.plan.kills

    def live(self) -> list[Service]:
        """The newest process of each service name."""
        newest: dict[str, Service] = {}
        for service in self.cluster.services:
            newest[service.name] = service
        return list(newest.values())

    def _restart(self, service: Service, attempts: int = 5) -> None:
        """Start ``service`` again and wait until it listens; one that exits before it is ready (its
        broker still coming back, say) counts as an unplanned exit and is started again."""
        for attempt in range(attempts):
            started = self.cluster.restart(service)
            try:
                started.wait_ready(time.monotonic() + READY_TIMEOUT_S)
                return
            except AssertionError:
                if started.process.poll() is None or attempt == attempts - 1:
                    raise
                self.unplanned_exits[service.name] += 1
                service = started
                self.stop_event.wait(1.0)

    def _supervise(self) -> None:
        for service in self.live():
            if service.process.poll() is not None:
                log.warning("chaos: %s exited on its own with %s; restarting", service.name, service.process.returncode)
                self.unplanned_exits[service.name] += 1
                self._restart(service)

    def run(self) -> None:
        try:
            next_kill = time.monotonic() + self.rng.uniform(*self.plan.uptime_s)
            while not self.stop_event.is_set():
                self._supervise()
                if not self.done and time.monotonic() >= next_kill:
                    live = self.live()
                    victim = live[int(self.rng.integers(len(live)))]
                    log.info("chaos: kill %d of %d: %s (pid %d)", self.kills_done + 1, self.plan.kills, victim.name,
                             victim.process.pid)
                    victim.kill()
                    self.kills_by_service[victim.name] += 1
                    if self.kills_done == self._broker_at:
                        log.info("chaos: restarting the broker")
                        self.broker.restart()
                        self.broker_restarts += 1
                    self._restart(victim)
                    self.kills_done += 1
                    next_kill = time.monotonic() + self.rng.uniform(*self.plan.uptime_s)
                self.stop_event.wait(0.05)
        except BaseException as e:  # reported by the driver, which stops the run
            self.errors.append(e)


class Driver:
    """The producer and the annotators: gRPC calls retried until they succeed, as real clients do."""

    def __init__(self, targets: dict[str, str], project: str, truth: dict[str, str], cluster: Cluster,
                 admin: str) -> None:
        self.clients = {name: WinnowClient(target, admin, timeout_s=10.0) for name, target in targets.items()}
        self.targets, self.cluster = targets, cluster
        self.annotators: dict[str, WinnowClient] = {}  # one identity each, once the project exists
        self.project, self.truth = project, truth
        self.retries = 0
        self.acknowledged: set[str] = set()
        self._unsent: dict[str, list[str]] = defaultdict(list)  # annotator -> leased items not yet answered

    def close(self) -> None:
        for client in (*self.clients.values(), *self.annotators.values()):
            client.close()

    def add_annotators(self) -> None:
        """A token and a client for each simulated annotator of the (created) project."""
        for name in ANNOTATORS:
            token = self.cluster.grant("annotator", self.project, name)
            self.annotators[name] = WinnowClient(self.targets["labeling"], token, timeout_s=10.0)

    def call(self, fn: Callable[[], T], until: float) -> T:
        """``fn()``, retried while the server is unreachable or restarting (``TRANSIENT`` codes) until
        ``until``; any other error is raised (the run fails on it)."""
        while True:
            try:
                return fn()
            except WinnowError as e:
                if not str(e).startswith(TRANSIENT) or time.monotonic() >= until:
                    raise
                self.retries += 1
                time.sleep(RETRY_PAUSE_S)

    def ingest(self, items: list[Item], until: float) -> None:
        self.call(lambda: self.clients["ingest"].ingest(items), until)
        self.acknowledged.update(i.item_id for i in items)

    def annotate(self, until: float) -> int:
        """One round: each annotator answers what it holds, then leases more and answers them."""
        answered = 0
        for name in ANNOTATORS:
            labeling = self.annotators[name]
            try:
                self._unsent[name] += [x.item_id for x in labeling.lease(self.project, name, 25)
                                       if x.item_id not in self._unsent[name]]
            except WinnowError as e:
                if not str(e).startswith(TRANSIENT):
                    raise
                self.retries += 1  # leases whose reply was lost are handed back by the next lease call
            while self._unsent[name]:
                item_id = self._unsent[name][0]
                self.call(lambda: labeling.submit(self.project, name, item_id, self.truth[item_id]), until)
                self._unsent[name].pop(0)
                answered += 1
        return answered

    def settled(self, until: float) -> bool:
        stats = self.call(lambda: self.clients["projects"].stats(self.project), until)
        return (stats.stream.state == "closed" and stats.open_tasks == 0
                and sum(stats.labels_by_source.values()) >= len(self.acknowledged))


def _rows(classes: int) -> list[int]:
    """Indices of the Banking77 train rows whose label is among its first ``classes`` classes."""
    train = banking77()[0]
    kept = set(train.classes[:classes])
    return [k for k, label in enumerate(train.labels) if label in kept]


def _sample(plan: ChaosPlan) -> tuple[tuple[str, ...], list[tuple[str, str, str]]]:
    """The plan's classes and a seeded sample of ``plan.items`` of their train rows: (item id, text, true label)."""
    train = banking77()[0]
    rows = np.random.default_rng(plan.seed).permutation(_rows(plan.classes))[: plan.items]
    return train.classes[: plan.classes], [(f"b{k}", train.texts[k], train.labels[k]) for k in rows.tolist()]


def _drive(plan: ChaosPlan, cluster: Cluster, targets: dict[str, str], project: str,
           broker: LocalServer | None, admin: str) -> tuple[Driver, Chaos, dict]:
    """Create the project, stream the items and answer tasks while the chaos thread kills; close the
    stream and answer until every item has its final label (or the deadline)."""
    until = time.monotonic() + plan.deadline_s
    classes, rows = _sample(plan)
    driver = Driver(targets, project, {item_id: label for item_id, _, label in rows}, cluster, admin)
    driver.call(lambda: driver.clients["projects"].create_project(
        project, classes, budget_labels=plan.budget_labels, budget_per_items=plan.budget_per_items,
        precision_target=plan.precision_target), until)
    driver.add_annotators()
    chaos = Chaos(cluster, plan, broker)
    chaos.start()
    sent = 0
    try:
        while sent < plan.items or not chaos.done:
            if chaos.errors:
                raise chaos.errors[0]
            if time.monotonic() >= until:
                raise WinnowError(f"chaos run past its deadline of {plan.deadline_s} s")
            # the items are spread over the kills: the k-th share goes out before kill k
            allowed = plan.items if chaos.done else plan.items * (chaos.kills_done + 1) // (plan.kills + 1)
            moved = 0
            if sent < allowed:
                chunk = [Item(project, item_id, text, time.time()) for item_id, text, _ in
                         rows[sent:min(sent + plan.chunk, allowed)]]
                driver.ingest(chunk, until)
                sent += len(chunk)
                moved += len(chunk)
            moved += driver.annotate(until)
            if not moved:
                time.sleep(RETRY_PAUSE_S)
        driver.call(lambda: driver.clients["projects"].close_stream(project), until)
        while not driver.settled(until):
            if chaos.errors:
                raise chaos.errors[0]
            if time.monotonic() >= until:
                log.error("chaos: the project did not settle before the deadline; counting as it is")
                break
            if not driver.annotate(until):
                time.sleep(0.5)
        stats = driver.call(lambda: driver.clients["projects"].stats(project), until)
        return driver, chaos, {"labels_by_source": dict(stats.labels_by_source), "stream": stats.stream.state}
    finally:
        chaos.stop_event.set()
        chaos.join()


def _topic_labels(bus_url: str, project: str) -> list[Label]:
    """Every message on the project's labels topic, read back from the bus without committing."""
    name = topic(project, "labels")
    if bus_url.startswith("kafka://"):
        broker = Broker(bus_url.removeprefix("kafka://"))
        try:
            values = [value for _, value in broker.read_all(name)]
        finally:
            broker.close()
    else:
        from winnow.services.serve import open_bus

        bus = open_bus(bus_url)
        try:
            with bus.consumer([name], f"chaos-audit-{uuid.uuid4().hex[:8]}") as reader:
                # nothing publishes any more: read until a poll comes back empty
                values, batch = [], reader.poll(1000, timeout_s=5.0)
                while batch:
                    values += [m.value for m in batch]
                    batch = reader.poll(1000, timeout_s=0.5)
        finally:
            bus.close()
    return [LABELS.decode(value) for value in values]


def count(acknowledged: set[str], stored: list[Label], on_topic: list[Label]) -> dict:
    """The outcome: items labeled exactly once in the store, on the topic, lost, duplicated."""
    per_item = Counter(label.item_id for label in stored)
    topic_classes: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for label in on_topic:
        topic_classes[label.item_id].add((label.label, label.source))
    return {
        "acknowledged": len(acknowledged),
        "labeled_once": sum(1 for n in per_item.values() if n == 1),
        "topic_labels": len(topic_classes),
        "lost": len([i for i in acknowledged if per_item[i] == 0]),
        "duplicated": len({i for i, n in per_item.items() if n > 1}
                          | {i for i, classes in topic_classes.items() if len(classes) > 1}),
        "missing_from_topic": len([i for i in acknowledged if i not in topic_classes]),
        "topic_messages": len(on_topic),
    }


def run_chaos(plan: ChaosPlan, out: Path | None = None, workdir: Path | None = None,
              postgres_dsn: str | None = None) -> dict:
    """Run one chaos experiment (see the module docstring) and return (and write to ``out``) its JSON.

    ``workdir`` keeps the processes' logs, store and bus (a temp dir, removed after, by default).
    ``postgres_dsn``: in the Kafka mode, a PostgreSQL server to use (a schema of its own is made and
    dropped) instead of starting one.
    """
    started = time.perf_counter()
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="winnow-chaos-")) if own_dir else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    servers: list[LocalServer] = []
    schema_drop: Callable[[], None] | None = None
    cluster: Cluster | None = None
    try:
        project = "chaos" if plan.bus == "sqlite" else f"chaos{uuid.uuid4().hex[:8]}"
        broker = None
        if plan.bus == "sqlite":
            bus_url, store = f"sqlite:///{root / 'bus.sqlite'}", f"sqlite:///{root / 'store.sqlite'}"
        else:
            broker = LocalServer(KAFKA_LOCAL, root / "kafka")
            servers.append(broker)
            bus_url = f"kafka://{broker.start()}"
            if postgres_dsn is None:
                pg_dir = Path(tempfile.mkdtemp(prefix="winnow-chaos-pg-"))  # the server runs as postgres
                pg_dir.chmod(0o755)
                servers.append(LocalServer(POSTGRES_LOCAL, pg_dir))
                postgres_dsn = servers[-1].start()
            dsn, schema_drop = postgres_schema(postgres_dsn, "chaos")
            store = store_url(dsn)
        from winnow.core.ml.encoder import default_cache_dir

        cluster = Cluster(root, bus_url, store, default_cache_dir())
        cluster.env.update(plan.serve_settings)
        admin = cluster.grant("admin", name="chaos-admin")  # before any API service starts: they refuse without one
        targets = _start(cluster, plan, project)
        driver, chaos, final = _drive(plan, cluster, targets, project, broker, admin)
        driver.close()
        codes = cluster.stop()
        from winnow.services.serve import open_store

        opened = open_store(store)
        try:
            stored = opened.labels(project)
            final["model_versions"] = len(opened.models(project))
        finally:
            opened.close()
        final["labels_by_aggregation"] = dict(Counter(label.aggregation for label in stored))
        result = {
            **count(driver.acknowledged, stored, _topic_labels(bus_url, project)),
            "kills": chaos.kills_done, "kills_by_service": dict(chaos.kills_by_service),
            "broker_restarts": chaos.broker_restarts, "unplanned_exits": dict(chaos.unplanned_exits),
            "rpc_retries": driver.retries, "exit_codes_at_stop": codes, **final,
            "mode": plan.bus, "seed": plan.seed, "plan": asdict(plan),
            "duration_s": time.perf_counter() - started, "environment": environment(),
        }
        if out is not None:
            write_json(Path(out), result)
        return result
    finally:
        if cluster is not None:
            cluster.stop()
        if schema_drop is not None:
            schema_drop()
        for server in reversed(servers):
            server.stop()
            if server.script == POSTGRES_LOCAL:
                shutil.rmtree(server.directory, ignore_errors=True)
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def _start(cluster: Cluster, plan: ChaosPlan, project: str) -> dict[str, str]:
    """Start the processes on fixed gRPC ports (a restart comes back where the clients look); returns
    the API services' targets."""
    if plan.bus == "sqlite":
        port = _free_port()
        service = cluster.start("all", project, grpc_port=port)
        service.wait_ready(time.monotonic() + READY_TIMEOUT_S)
        return {name: f"127.0.0.1:{port}" for name in API}
    ports = {name: _free_port() for name in API}
    started = [cluster.start(name, grpc_port=ports[name]) for name in API]
    started += [cluster.start(name, project) for name in WORKERS]
    cluster.wait_ready(started, time.monotonic() + READY_TIMEOUT_S)
    return {name: f"127.0.0.1:{port}" for name, port in ports.items()}

