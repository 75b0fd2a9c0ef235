"""Storage benchmark: rates of the embedded bus and the SQLite label store on their hot calls, so the
timings no test asserts have a home (tests check the same round trips for correctness only).

Bus: ``publish_many`` + ``flush``, one ``publish`` per message + ``flush``, ``poll`` + ``commit`` of
everything. Store: ``add_items``, ``put_embeddings``, ``get_embeddings``, ``add_tasks``,
``lease_tasks`` in pages, ``put_labels``. Each is timed over ``repeats`` fresh files; the result is
the median rate per call kind.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Label, Project, Task

PROJECT = "bench"
CLASSES = ("a", "b", "c")
DIM = 384
VALUE_BYTES = 100
LEASE_PAGE = 1000


def _timed(rates: dict[str, list[float]], name: str, n: int, call: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = call()
    rates.setdefault(name, []).append(n / (time.perf_counter() - started))
    return result


def _bus_round(folder: Path, n: int, rates: dict[str, list[float]]) -> None:
    bus = SqliteBus(folder / "bus.sqlite")
    try:
        bus.create_topic("t", 4)
        rows = [(f"item-{k}", b"x" * VALUE_BYTES) for k in range(n)]
        with bus.producer() as producer:
            _timed(rates, "bus publish_many+flush", n, lambda: (producer.publish_many("t", rows), producer.flush()))

            def one_by_one() -> None:
                for key, value in rows:
                    producer.publish("t", key, value)
                producer.flush()

            _timed(rates, "bus publish+flush", n, one_by_one)
        with bus.consumer(["t"], "bench") as consumer:
            def drain() -> int:
                got = 0
                while got < 2 * n:
                    batch = consumer.poll(10_000, timeout_s=5.0)
                    if not batch:
                        raise RuntimeError(f"the bus handed out {got} of {2 * n} messages")
                    got += len(batch)
                consumer.commit()
                return got

            _timed(rates, "bus poll+commit", 2 * n, drain)
    finally:
        bus.close()


def _store_round(folder: Path, n: int, rates: dict[str, list[float]], rng: np.random.Generator) -> None:
    store = SqliteStore(folder / "store.sqlite")
    try:
        store.create_project(Project(PROJECT, CLASSES))
        ids = [f"item-{k}" for k in range(n)]
        items = [Item(PROJECT, i, f"some text number {k}", float(k + 1)) for k, i in enumerate(ids)]
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)  # [n, D]
        _timed(rates, "store add_items", n, lambda: store.add_items(items))
        _timed(rates, "store put_embeddings", n, lambda: store.put_embeddings(PROJECT, ids, vectors))
        got = _timed(rates, "store get_embeddings", n, lambda: store.get_embeddings(PROJECT, ids))
        if not np.array_equal(got, vectors):
            raise RuntimeError("get_embeddings returned other vectors than were put")
        tasks = [Task(PROJECT, i, float(k), None, 1.0) for k, i in enumerate(ids)]
        _timed(rates, "store add_tasks", n, lambda: store.add_tasks(tasks))

        def lease_all() -> int:  # one annotator per page: an annotator asking again gets its own leases back
            leased, page = 0, 0
            while got := store.lease_tasks(PROJECT, f"ann-{page}", LEASE_PAGE, 600.0, 2.0, 1):
                leased, page = leased + len(got), page + 1
            return leased

        if _timed(rates, "store lease_tasks", n, lease_all) != n:
            raise RuntimeError("lease_tasks did not hand out every task once")
        labels = [Label(PROJECT, i, CLASSES[k % 3], "model", "v1", 0.99, 0.9, "auto_accept", "v1", 3.0,
                        f"{i}:bench:v1") for k, i in enumerate(ids)]
        _timed(rates, "store put_labels", n, lambda: store.put_labels(labels))
    finally:
        store.close()


def plot_storage(path: Path, result: dict) -> None:
    figure, axis = new_figure((8, 4.5))
    names = list(result["per_s"])
    rates = [result["per_s"][n] for n in names]
    bars = axis.barh(names, rates, color="#4477aa")
    axis.bar_label(bars, labels=[f"{r:,.0f}/s" for r in rates], padding=3, fontsize=8)
    axis.set_xlim(0, max(rates) * 1.2)
    axis.set_xlabel("records per second (median of repeats)")
    axis.set_title(f"SQLite bus and store, {result['items']:,} records per call")
    axis.invert_yaxis()
    save_figure(figure, path)


def run_storage_benchmark(out: Path, items: int = 10_000, repeats: int = 3, seed: int = 0) -> dict:
    """Time each call kind over ``repeats`` fresh bus and store files; write JSON and a PNG beside it."""
    if items < 1:
        raise InvalidInput("items", f"must be at least 1, got {items}")
    if repeats < 1:
        raise InvalidInput("repeats", f"must be at least 1, got {repeats}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rates: dict[str, list[float]] = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="winnow-bench-storage-") as tmp:
            _bus_round(Path(tmp), items, rates)
            _store_round(Path(tmp), items, rates, rng)
    result = {
        "benchmark": "storage",
        "items": items,
        "per_s": {name: round(statistics.median(r), 1) for name, r in rates.items()},
        "details": {"repeats": repeats, "seed": seed, "value_bytes": VALUE_BYTES, "dim": DIM,
                    "lease_page": LEASE_PAGE, "runs_per_s": {n: [round(x, 1) for x in r] for n, r in rates.items()},
                    "environment": environment()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    plot_storage(out.with_suffix(".png"), result)
    return result
