"""`winnow bench labeling`: people answering through the gRPC Labeling API, side by side at two
history lengths, so submit cost is seen not to grow with a project's past.

For each ``prior`` (annotations already in the project) and each ``annotators`` count, a fresh
SQLite store and bus get a project with ``prior`` answered items (two answers each, overlap 2, the
Dawid-Skene path), fresh open tasks, and ``annotators`` people, each a thread with their own token
and client, who lease and answer until ``seconds`` have passed. Reports per run the p50/p99 latency
of lease and submit calls, answers per second, errors, and double leases (an item answered by more
people than it wanted). Latencies include the whole gRPC round trip on 127.0.0.1. Each run first
warms up (a first lease and answers, then ``WARMUP_S``: the server loads the project and fits
consensus over its history in the background), as a long-running server has.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.domain.records import Item, Label, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.topics import create_topics
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.client import WinnowClient

PROJECT = "people"
CLASSES = tuple(f"c{k}" for k in range(10))
OVERLAP = 2
LEASE_BATCH = 10
WARMUP_S = 3.0  # after the first answers, before timing: the first consensus fit runs meanwhile


def _seed_history(store: SqliteStore, prior: int, rng: np.random.Generator) -> None:
    """``prior`` answers on ``prior // 2`` items, two each, already aggregated into final labels
    (what a project that has run for a while holds), written in bulk."""
    items = prior // OVERLAP
    store.add_items([Item(PROJECT, f"old-{k}", f"an old item {k}", 1.0) for k in range(items)])
    store.add_tasks([Task(PROJECT, f"old-{k}", 0.0, None, 1.0) for k in range(items)])
    truth = rng.integers(0, len(CLASSES), items)
    rows = []
    for k in range(items):
        for a in range(OVERLAP):
            right = rng.random() < 0.9
            label = CLASSES[truth[k] if right else rng.integers(0, len(CLASSES))]
            rows.append((PROJECT, f"old-{k}", f"past-{(k + a) % 40}", label, 1.0))
    with store.dialect.transaction() as tx:  # the store has no bulk call for answers: a benchmark's shortcut
        tx.many("INSERT INTO annotations (project, item_id, annotator, label, created_at) VALUES (?, ?, ?, ?, ?)",
                rows)
        tx.many("INSERT INTO assignments (project, item_id, annotator, state, expires_at) "
                "VALUES (?, ?, ?, 'answered', 1.0)", [r[:3] for r in rows])
    store.put_labels([Label(PROJECT, f"old-{k}", CLASSES[truth[k]], "human", "past", 0.9, None, "dawid_skene_one_coin",
                            "v1", 1.0, f"old-{k}:labeling:human") for k in range(items)])


def _run(folder: Path, prior: int, annotators: int, seconds: float, rng: np.random.Generator) -> dict:
    bus, store = SqliteBus(folder / "bus.sqlite"), SqliteStore(folder / "store.sqlite")
    project = Project(PROJECT, CLASSES, overlap=OVERLAP)
    store.create_project(project)
    create_topics(bus, PROJECT, 1)
    _seed_history(store, prior, rng)
    fresh = 4000
    store.add_items([Item(PROJECT, f"new-{k}", f"a new item {k}", 2.0) for k in range(fresh)])
    store.add_tasks([Task(PROJECT, f"new-{k}", 1.0 - k / fresh, None, 2.0) for k in range(fresh)])
    server, port = create_server(bus, store, Authenticator(store), config=LoopConfig(), max_workers=max(8, annotators))
    server.start()
    tokens = [issue(store, "bench", "annotator", PROJECT, f"ann-{n}", time.time())[0] for n in range(annotators)]
    # warm up as a long-running server is: the labeling service loads the project and fits consensus
    # over its history (in the background) before the timed run
    with WinnowClient(f"127.0.0.1:{port}", tokens[0], timeout_s=120) as client:
        warm = time.monotonic()
        for lease in client.lease(PROJECT, "", 2):
            client.submit(PROJECT, "", lease.item_id, CLASSES[0])
        time.sleep(WARMUP_S)
        warmup_s = time.monotonic() - warm
    lease_ms: list[float] = []
    submit_ms: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(annotators + 1)
    deadline = [0.0]

    def person(token: str, seed: int) -> None:
        local = np.random.default_rng(seed)
        leases_t, submits_t = [], []
        with WinnowClient(f"127.0.0.1:{port}", token, timeout_s=60) as client:
            start.wait()
            while time.monotonic() < deadline[0]:
                try:
                    t0 = time.perf_counter()
                    leases = client.lease(PROJECT, "", LEASE_BATCH)
                    leases_t.append(time.perf_counter() - t0)
                    for lease in leases:
                        if time.monotonic() >= deadline[0]:
                            break
                        t0 = time.perf_counter()
                        client.submit(PROJECT, "", lease.item_id, CLASSES[local.integers(0, len(CLASSES))])
                        submits_t.append(time.perf_counter() - t0)
                    if not leases:
                        time.sleep(0.01)
                except WinnowError as e:
                    with lock:
                        errors[type(e).__name__] += 1
        with lock:
            lease_ms.extend(1000 * t for t in leases_t)
            submit_ms.extend(1000 * t for t in submits_t)

    threads = [threading.Thread(target=person, args=(t, n), daemon=True) for n, t in enumerate(tokens)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    began = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.monotonic() - began
    answered = [a for a in store.annotations(PROJECT) if a.item_id.startswith("new-")]
    per_item = Counter(a.item_id for a in answered)
    same_person_twice = len(answered) - len({(a.item_id, a.annotator) for a in answered})
    server.stop(2.0).wait()
    bus.close()
    store.close()
    return {"annotators": annotators, "prior_annotations": prior,
            "lease_p50_ms": _pct(lease_ms, 50), "lease_p99_ms": _pct(lease_ms, 99),
            "submit_p50_ms": _pct(submit_ms, 50), "submit_p99_ms": _pct(submit_ms, 99),
            "answers_per_s": round(len(answered) / elapsed, 1), "answers": len(answered), "seconds": round(elapsed, 2),
            "errors": sum(errors.values()), "error_kinds": dict(errors), "warmup_s": round(warmup_s, 2),
            "double_leases": sum(1 for n in per_item.values() if n > OVERLAP) + same_person_twice}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def run_labeling_benchmark(out: Path, annotators: tuple[int, ...] = (1, 20, 50),
                           priors: tuple[int, ...] = (1_000, 100_000), seconds: float = 10.0, seed: int = 0,
                           progress=lambda _: None) -> dict:
    """Every (prior, annotators) run; JSON at ``out`` and a PNG beside it."""
    if not annotators or min(annotators) < 1:
        raise InvalidInput("annotators", "must be counts >= 1")
    if not priors or min(priors) < 0:
        raise InvalidInput("prior", "must be counts >= 0")
    if not seconds > 0:
        raise InvalidInput("seconds", f"must be > 0, got {seconds}")
    rng = np.random.default_rng(seed)
    runs = []
    for prior in priors:
        for n in annotators:
            with tempfile.TemporaryDirectory(prefix="winnow-bench-labeling-") as tmp:
                runs.append(_run(Path(tmp), prior, n, seconds, rng))
            progress(runs[-1])
    result = {"benchmark": "labeling", "runs": runs,
              "details": {"seconds_per_run": seconds, "overlap": OVERLAP, "classes": len(CLASSES),
                          "lease_batch": LEASE_BATCH, "seed": seed, "store": "sqlite", "environment": environment()}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    _plot(out.with_suffix(".png"), result)
    return result


def _plot(path: Path, result: dict) -> None:
    fig, (latency, rate) = new_figure((10, 4), ncols=2)
    for prior in sorted({r["prior_annotations"] for r in result["runs"]}):
        runs = [r for r in result["runs"] if r["prior_annotations"] == prior]
        xs = [r["annotators"] for r in runs]
        latency.plot(xs, [r["submit_p99_ms"] for r in runs], marker="o", label=f"submit p99, {prior:,} prior")
        latency.plot(xs, [r["submit_p50_ms"] for r in runs], marker=".", linestyle="--",
                     label=f"submit p50, {prior:,} prior")
        rate.plot(xs, [r["answers_per_s"] for r in runs], marker="o", label=f"{prior:,} prior answers")
    latency.set(xlabel="concurrent annotators", ylabel="ms", title="submit latency (gRPC round trip)")
    rate.set(xlabel="concurrent annotators", ylabel="answers / s", title="throughput")
    for ax in (latency, rate):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
