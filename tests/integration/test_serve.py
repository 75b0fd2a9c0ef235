"""`winnow serve all` as a real process on the embedded bus and store: gRPC in, labels out, SIGTERM."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.data.datasets import banking77
from winnow.core.domain.records import Item, Project
from winnow.core.testing.certs import TestCa
from winnow.services.client import WinnowClient

pytestmark = pytest.mark.slow
DEADLINE_S = 240.0


def _wait_for_line(process: subprocess.Popen, prefix: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line.strip().removeprefix(prefix).strip()
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no {prefix!r} line; exit code {process.poll()}")


def test_serve_all_labels_trains_and_stops_on_sigterm(tmp_path: Path) -> None:
    train, _ = banking77()
    classes = tuple(sorted(set(train.labels))[:4])
    rows = [(t, label) for t, label in zip(train.texts, train.labels) if label in classes][:130]
    store = SqliteStore(tmp_path / "store.sqlite")
    # every item goes to people, so the trainer has its first 100 labels quickly
    store.create_project(Project("served", classes, budget_labels=100, budget_per_items=100))
    store.close()
    env = {**os.environ, "WINNOW_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    ca = TestCa()  # the whole loop over TLS: a client without this CA cannot connect (tests/unit/test_tls.py)
    cert, key = ca.issue("winnow", server=True).write(tmp_path, "server")
    process = subprocess.Popen(
        [sys.executable, "-m", "winnow.services.cli", "serve", "all", "--project", "served",
         "--bus", f"sqlite:///{tmp_path / 'bus.sqlite'}", "--store", f"sqlite:///{tmp_path / 'store.sqlite'}",
         "--grpc-port", "0", "--metrics-port", "0", "--models-dir", str(tmp_path / "models"),
         "--tls-cert", str(cert), "--tls-key", str(key), "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + DEADLINE_S
    try:
        admin = _wait_for_line(process, "  wn_", deadline)  # the first start makes an admin token, printed once
        metrics = _wait_for_line(process, "metrics listening on", deadline)
        page = _wait_for_line(process, "http listening on", deadline)
        target = _wait_for_line(process, "grpc listening on", deadline)
        tls = ssl.create_default_context(cadata=ca.pem.decode())  # the labeling page: HTTPS, same certificate
        assert b"Winnow" in urllib.request.urlopen(f"https://{page}/", context=tls, timeout=10).read()
        with WinnowClient(target, admin, tls_ca=ca.pem) as operator, \
                WinnowClient(target, operator.create_token("producer", "served")[0], tls_ca=ca.pem) as producer, \
                WinnowClient(target, operator.create_token("annotator", "served", "ann-1")[0], tls_ca=ca.pem) as person:
            truth = {f"s{k}": label for k, (_, label) in enumerate(rows)}
            items = [Item("served", f"s{k}", text, 0.0) for k, (text, _) in enumerate(rows)]
            assert producer.ingest(items) == len(rows)
            answered = 0
            while time.monotonic() < deadline and not operator.list_versions("served"):
                leases = person.lease("served", "", 50)
                for lease in leases:
                    person.submit("served", "", lease.item_id, truth[lease.item_id])
                answered += len(leases)
                if not leases:
                    time.sleep(0.2)  # the workers are consuming; nothing to answer yet
            versions = operator.list_versions("served")
            assert versions and versions[-1].n_train >= 100
            stats = operator.stats("served")
            assert stats.labels_by_source.get("human", 0) >= 100 and stats.current_model_version == versions[-1].version
            labels = {label.source_id for label in operator.export_labels("served") if label.source == "human"}
            assert labels == {"ann-1"}  # the annotator on every label is the identity that answered
        body = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
        assert 'winnow_messages_total{project="served",service="prelabel"}' in body
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0
    said = process.stdout.read()  # serve tells what it does at its default level (INFO), as key=value
    for line in ("worker starting name=prelabel project=served group=prelabel.served",
                 "worker starting name=trainer project=served group=trainer.served",
                 "trainer registered project=served version=v0001", "prelabel swapped project=served version=v0001",
                 "selector swapped project=served version=v0001",
                 "shutdown begun signal=SIGTERM", "shutdown finished"):
        assert line in said, line


def test_sigterm_ends_serve_within_the_grace_period_while_the_bus_is_stuck(tmp_path: Path) -> None:
    """Another process holds the SQLite bus's write lock (as a broker outage stalls every bus call): the
    selector's polls, heartbeats and closing commit all wait on it, yet SIGTERM ends the process in time."""
    import sqlite3

    grace_s = 3.0
    store = SqliteStore(tmp_path / "store.sqlite")
    store.create_project(Project("stuck", ("a", "b")))
    store.close()
    bus_path = tmp_path / "bus.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "winnow.services.cli", "serve", "selector", "--project", "stuck",
         "--bus", f"sqlite:///{bus_path}", "--store", f"sqlite:///{tmp_path / 'store.sqlite'}",
         "--grpc-port", "0", "--grace-s", str(grace_s), "--sqlite-session-timeout-s", "1.5",
         "--lag-every-s", "0.2", "--models-dir", str(tmp_path / "models")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    holder = None
    try:
        deadline = time.monotonic() + 120
        _wait_for_line(process, "grpc listening on", deadline)
        started = ""
        while "worker starting name=selector project=stuck group=selector.stuck" not in started:
            started = _wait_for_line(process, "", deadline)
        time.sleep(0.5)  # its first steps ran
        holder = sqlite3.connect(bus_path, timeout=30, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # every write of the bus now waits (busy timeout 30 s)
        time.sleep(2.0)  # a heartbeat is due (every 0.5 s): the worker is stuck in a bus call
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("serve ignored SIGTERM while the bus was stuck") from None
        elapsed = time.monotonic() - sent
    finally:
        if holder is not None:
            holder.close()
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert elapsed <= grace_s + 1.0, f"exited {elapsed:.1f} s after SIGTERM (grace {grace_s} s)\n{output}"
    assert "shutdown begun signal=SIGTERM" in output and "Traceback" not in output
