"""Winnow services as separate processes, for the distributed tests and the chaos benchmark: start
``winnow serve NAME`` (on Kafka and PostgreSQL, or ``all`` on the embedded bus and store), wait until
it is listening, stop it (SIGTERM, or SIGKILL for a crash), start it again, and look at the broker the
way an operator would (consumer-group lag, topic contents, group members).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError
from psycopg.conninfo import conninfo_to_dict

T = TypeVar("T")

READY_LINE = "grpc listening on"
METRICS_LINE = "metrics listening on"
STOP_TIMEOUT_S = 60.0


def wait_until(check: Callable[[], T], deadline: float, what: str, describe: Callable[[], str] = lambda: "") -> T:
    """Call ``check`` until it returns something truthy (returned), backing off up to 0.5 s between calls;
    AssertionError naming ``what`` (and ``describe()``) once ``deadline`` (time.monotonic) has passed."""
    pause_s = 0.05
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}; {describe()}")
        time.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
        pause_s = min(pause_s * 2, 0.5)


def store_url(dsn: str) -> str:
    """A ``postgresql://`` URL for a DSN in either form (``winnow serve --store`` takes URLs only);
    connection options such as ``-c search_path=...`` travel as URL query parameters."""
    params = conninfo_to_dict(dsn)
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    host, port, dbname = params.pop("host", "localhost"), params.pop("port", None), params.pop("dbname", "")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    netloc = f"{auth}{host}" + (f":{port}" if port else "")
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in params.items())
    return f"postgresql://{netloc}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")


def stop_process(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM (a Winnow process drains), then SIGKILL if it has not exited within ``timeout_s``;
    returns the exit code (``-SIGKILL`` when it had to be killed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
            return -signal.SIGKILL
    return process.returncode


@dataclass
class Service:
    """One ``winnow serve NAME`` process; stdout and stderr go to ``log_path`` (never a pipe that can fill)."""

    name: str
    process: subprocess.Popen
    log_path: Path
    project: str | None = None
    grpc_port: int = 0  # as asked (0: a free one); ``target`` says where it listens
    target: str = ""  # host:port of its gRPC server, once ready
    metrics: str = ""  # host:port of its Prometheus endpoint, when asked for

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _line(self, prefix: str) -> str:
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        return ""

    def wait_ready(self, deadline: float) -> None:
        """Wait for the ``grpc listening on`` line (and the metrics line when it serves metrics)."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                                     f"{self.log_tail()}")
            self.target = self._line(READY_LINE)
            return bool(self.target)

        wait_until(ready, deadline, f"{self.name} to listen", lambda: self.log_tail())
        self.metrics = self._line(METRICS_LINE)

    def counter(self, metric: str) -> float:
        """Sum of a Prometheus metric's samples on this process's metrics endpoint."""
        body = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith(metric + "{") or line.startswith(metric + " "))

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no commit, no LeaveGroup."""
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM (drain), then SIGKILL if it has not exited in time; returns the exit code."""
        return stop_process(self.process)


@dataclass
class Cluster:
    """Processes of one test, all on the same bus, store, models folder and encoder cache."""

    workdir: Path
    bus_url: str
    store_url: str
    cache_dir: Path
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # WINNOW_* settings every process gets

    def start(self, name: str, project: str | None = None, metrics: bool = False, grpc_port: int = 0) -> Service:
        """Start ``winnow -v serve NAME`` (not waiting for it: see :meth:`wait_ready`)."""
        argv = [sys.executable, "-m", "winnow.services.cli", "-v", "serve", name, "--bus", self.bus_url,
                "--store", self.store_url, "--grpc-port", str(grpc_port), "--models-dir", str(self.workdir / "models")]
        if project is not None:
            argv += ["--project", project]
        if metrics:
            argv += ["--metrics-port", "0"]
        env = {**os.environ, **self.env, "WINNOW_CACHE_DIR": str(self.cache_dir), "PYTHONUNBUFFERED": "1"}
        log_path = self.workdir / f"{name}-{len(self.services)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        service = Service(name, process, log_path, project, grpc_port)
        self.services.append(service)
        return service

    def grant(self, role: str, project: str | None = None, name: str | None = None) -> str:
        """A new token on the cluster's store (what `winnow token create` does), for its clients."""
        from winnow.core.access.tokens import issue
        from winnow.services.serve import open_store

        store = open_store(self.store_url)
        try:
            return issue(store, "bench", role, project, name, time.time())[0]
        finally:
            store.close()

    def restart(self, service: Service) -> Service:
        """Start ``service`` again as it was started (same name, project and gRPC port), once it has exited."""
        if service.process.poll() is None:
            raise AssertionError(f"{service.name} (pid {service.process.pid}) is still running")
        return self.start(service.name, service.project, bool(service.metrics), service.grpc_port)

    def wait_ready(self, services: Iterable[Service], deadline: float) -> None:
        for service in services:
            service.wait_ready(deadline)

    def check_alive(self) -> None:
        """AssertionError with the log of any service that exited (other than ones the test killed)."""
        for service in self.services:
            code = service.process.poll()
            if code is not None and code != -signal.SIGKILL:
                raise AssertionError(f"{service.name} exited with {code}:\n{service.log_tail()}")

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} (pid {s.process.pid}, exit {s.process.poll()})\n{s.log_tail(15)}"
                         for s in self.services)

    def stop(self) -> dict[str, int]:
        """SIGTERM every live service, API services last (workers may still be calling the store);
        returns the exit code of each service that was running."""
        codes = {}
        for service in sorted(self.services, key=lambda s: s.name in ("ingest", "labeling", "projects")):
            if service.process.poll() is None:
                codes[f"{service.name}-{service.process.pid}"] = service.stop()
        return codes


class Broker:
    """What an operator sees on the Kafka broker: committed offsets, end offsets, topic contents, members."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="winnow-test-admin")
        self.reader = KafkaConsumer(bootstrap_servers=bootstrap, client_id="winnow-test-reader", group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")

    def close(self) -> None:
        self.reader.close()
        self.admin.close()

    def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        out = []
        for topic in topics:
            found = self.reader.partitions_for_topic(topic)
            if not found:
                raise AssertionError(f"topic {topic!r} has no partitions")
            out.extend(TopicPartition(topic, p) for p in sorted(found))
        return out

    def end_offsets(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        return self.reader.end_offsets(self.partitions(topics))

    def committed(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """The group's committed offset on each partition of ``topics`` (0 where it has none)."""
        tps = self.partitions(topics)
        found = self.admin.list_group_offsets({group: tps}).get(group, {})
        return {tp: max(found[tp].offset, 0) if tp in found else 0 for tp in tps}

    def lag(self, group: str, topics: Sequence[str]) -> int:
        ends = self.end_offsets(topics)
        committed = self.committed(group, topics)
        return sum(max(ends[tp] - committed[tp], 0) for tp in ends)

    def read_all(self, topic: str) -> list[tuple[str, bytes]]:
        """Every message now on ``topic`` (key, value), read without a group (nothing is committed)."""
        tps = self.partitions([topic])
        ends = self.reader.end_offsets(tps)
        self.reader.assign(tps)
        self.reader.seek_to_beginning(*tps)
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 60
        while any(self.reader.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic!r} to its end within 60 s")
            for records in self.reader.poll(timeout_ms=500).values():
                out.extend(((r.key or b"").decode(), r.value) for r in records
                           if r.offset < ends[TopicPartition(r.topic, r.partition)])
        self.reader.assign([])
        return out

    def members(self, group: str) -> list[frozenset[tuple[str, int]]]:
        """Each live member's assigned (topic, partition) pairs (empty while the group rebalances, or
        while a new broker has no coordinator for groups yet)."""
        try:
            info = self.admin.describe_groups([group])[group]
        except CoordinatorNotAvailableError:
            return []
        assignments = [member["member_assignment"] for member in info["members"]]
        return [frozenset((owned["topic"], p) for owned in assignment["assigned_partitions"]
                          for p in owned["partitions"]) if isinstance(assignment, dict) else frozenset()
                for assignment in assignments]


REPO = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO / "deploy" / "kafka-local.sh"
POSTGRES_LOCAL = REPO / "deploy" / "postgres-local.sh"
SERVER_START_TIMEOUT_S = 600.0  # a first start fetches the broker's jars / installs the Debian packages
SERVER_STOP_TIMEOUT_S = 120.0


class ServerUnavailable(RuntimeError):
    """A deploy script could not start (or stop) its server: no java, mvn or PostgreSQL packages, ..."""


@dataclass
class LocalServer:
    """A Kafka broker or PostgreSQL server kept in ``directory`` by its deploy/ script (``start DIR``
    prints the address last; ``stop DIR``; a stopped DIR starts again on the same port and data)."""

    script: Path
    directory: Path
    address: str = ""

    def _run(self, action: str, timeout_s: float) -> str:
        try:
            done = subprocess.run(["bash", str(self.script), action, str(self.directory)], capture_output=True,
                                  text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ServerUnavailable(f"{self.script.name} {action}: {e}") from e
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-20:])
            raise ServerUnavailable(f"{self.script.name} {action} failed (exit {done.returncode}):\n{tail}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def start(self) -> str:
        """Start (or find) the server; returns its address (bootstrap host:port, or a DSN)."""
        self.address = self._run("start", SERVER_START_TIMEOUT_S)
        return self.address

    def stop(self) -> None:
        self._run("stop", SERVER_STOP_TIMEOUT_S)

    def restart(self) -> str:
        """Stop, then start again on the same port and data (an outage as a broker restart makes)."""
        self.stop()
        return self.start()


def postgres_schema(dsn: str, prefix: str) -> tuple[str, Callable[[], None]]:
    """A DSN whose search_path is a new, empty schema named ``prefix_<random>``, and the function that
    drops it with everything in it (a run of its own on a shared server)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    return make_conninfo(dsn, options=f"-c search_path={schema}"), drop
