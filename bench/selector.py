"""Selector benchmark: what one selector step costs as its backlog grows, the selector alone.

For each backlog size a fresh SQLite store holds that many scored items (synthetic unit vectors) and a
model version (a random linear head whose threshold nothing clears, so every item waits in the
backlog), and ``guard`` more items that people have labeled already (the near-duplicate guard every pick
is checked against); a selector restores its backlog and guard from the store. With ``bank`` > 0 the
version blends its head with the vote of ``bank`` labeled vectors (:mod:`winnow.core.ml.neighbours`,
weight 0.5), as a trained version does where the vote helps. Then ``steps`` times: ``arrivals`` new
items are written to the store and scored as a prelabel worker scores them (not timed), then handed
to the selector as one batch of items.scored (timed: the arrival look, the look at the backlog, and
the pick from the whole backlog that the credit earned funds). With ``carried`` the messages carry the
worker's scores, as served (the selector takes them: same version); without, they carry none and the
selector scores every arrival itself (a worker a swap behind). Reported per size: the median step,
and arrivals per second at that median.
FAISS runs with the threads a served selector gives it (``ServeConfig.faiss_threads``, one by default:
with two, its clustering competed with numpy's and the model's threads on this 2-core machine: a
median step of 61-96 ms instead of 46 ms at a backlog of 100,000, in runs here).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Label, ModelVersion, Project, Scored
from winnow.core.domain.settings import LoopConfig, ServeConfig
from winnow.core.loop.prelabel import scored_messages
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import create_topics
from winnow.core.ml.head import Head, HeadConfig, OnnxHead, save_model
from winnow.core.ml.neighbours import NeighbourBlend
from winnow.core.select.index import set_threads

DIM, CLASSES = 384, 77


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(store: SqliteStore, project: str, ids: list[str], vectors: np.ndarray, chunk: int = 50_000) -> None:
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        store.add_items([Item(project, i, "x", 0.0) for i in part])
        store.put_embeddings(project, part, vectors[start:start + chunk])


def _version(folder: Path, rng: np.random.Generator, bank: int) -> None:
    """Model version ``v1``: a random linear head whose threshold nothing clears, blended with the vote
    of ``bank`` random labeled vectors (none: the head alone)."""
    classes = [f"c{k}" for k in range(CLASSES)]
    meta = {"version": "v1", "classes": classes, "temperature": 1.0, "threshold": 0.999, "candidate_threshold": 0.999}
    blend = None
    if bank:
        ids = np.array([f"n{k}" for k in range(bank)])
        blend = NeighbourBlend(_unit(rng, bank), rng.integers(0, CLASSES, bank), ids, CLASSES, 10, 0.05, 0.5, 1.0)
        meta["neighbours"] = blend.described()
    save_model(folder, Head(HeadConfig(DIM, CLASSES)), meta, None if blend is None else blend.save)


def _scored(head: OnnxHead, ids: list[str], vectors: np.ndarray, score: str, carried: bool) -> list[Scored]:
    """The items.scored messages a prelabel worker running ``head`` publishes for ``vectors`` (with its
    scores when ``carried``; the item ids alone otherwise)."""
    if not carried:
        return [Scored(i) for i in ids]
    return scored_messages(ids, head.meta["classes"], head.version, head.logits(vectors), head.meta["temperature"],
                           score)


def measure(size: int, workdir: Path, strategy: str, arrivals: int, steps: int, seed: int, guard: int = 0,
            bank: int = 0, carried: bool = True) -> dict:
    """One backlog size: restore seconds, every step's seconds and the backlog after the last."""
    rng = np.random.default_rng(seed)
    classes = tuple(f"c{k}" for k in range(CLASSES))
    project = Project("bench", classes, 25, 100, 0.98, strategy)
    store, bus = SqliteStore(workdir / "store.sqlite"), SqliteBus(workdir / "bus.sqlite")
    try:
        store.create_project(project)
        create_topics(bus, project.name, 1)
        folder = workdir / "v1"
        _version(folder, rng, bank)
        worker = OnnxHead(folder)  # the prelabel worker's copy of the version
        config = LoopConfig(seed=seed)
        store.register_model(ModelVersion(project.name, "v1", str(folder), 0.0, 0, 1.0, 0.999))
        _items(store, project.name, [f"b{k}" for k in range(size)], _unit(rng, size))
        labeled = [f"h{k}" for k in range(guard)]
        _items(store, project.name, labeled, _unit(rng, guard))
        store.put_labels([Label(project.name, i, "c0", "human", "bench", 1.0, None, "majority", "v1", 0.0, f"{i}:h")
                          for i in labeled])
        started = time.perf_counter()
        selector = Selector(bus, store, project, config)
        restore_s = time.perf_counter() - started
        # the backlog's items earned their credit as they arrived, and picks spent it then: the steps
        # measure the steady state, where each batch of arrivals funds its own share of picks
        selector.budget.grant(selector.budget.whole - selector._reserve())  # the close's reserve stays held
        times = []
        for step in range(steps):
            ids = [f"a{step}-{k}" for k in range(arrivals)]
            vectors = _unit(rng, arrivals)
            _items(store, project.name, ids, vectors)
            messages = _scored(worker, ids, vectors, config.uncertainty, carried)
            started = time.perf_counter()
            selector.handle([("items.scored", m) for m in messages])
            times.append(time.perf_counter() - started)
        backlog = len(selector.backlog)
        selector.close()
    finally:
        store.close()
        bus.close()
    return {"restore_s": restore_s, "steps_s": times, "backlog_after": backlog}


def run_selector_benchmark(out: Path, sizes: Sequence[int] = (10_000, 100_000, 1_000_000), arrivals: int = 500,
                           steps: int = 20, strategy: str = "cluster_margin", seed: int = 0, guard: int = 10_000,
                           bank: int = 0, carried: bool = True,
                           progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every size in one run (module doc); JSON at ``out`` (``step_s`` and ``arrivals_per_s`` keyed by
    the backlog size as a string) and a PNG beside it."""
    runs = {}
    previous = set_threads(ServeConfig.faiss_threads)
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory(prefix="winnow-bench-selector-") as tmp:
                runs[str(size)] = measure(size, Path(tmp), strategy, arrivals, steps, seed, guard, bank, carried)
            median = statistics.median(runs[str(size)]["steps_s"])
            progress(f"backlog {size:>9,}: step {median * 1000:.1f} ms, {arrivals / median:,.0f} arrivals/s")
    finally:
        set_threads(previous)
    step_s = {k: statistics.median(r["steps_s"]) for k, r in runs.items()}
    result = {
        "step_s": step_s,
        "arrivals_per_s": {k: arrivals / s for k, s in step_s.items()},
        "step_ratio_largest_to_smallest": step_s[str(max(sizes))] / step_s[str(min(sizes))],
        "details": {"arrivals_per_step": arrivals, "steps": steps, "strategy": strategy, "dim": DIM,
                    "classes": CLASSES, "budget": "25 per 100 items", "guard": guard,
                    "neighbour_bank": bank, "scores_carried": carried,
                    "faiss_threads": ServeConfig.faiss_threads, "runs": runs, "environment": environment()},
    }
    write_json(out, result)
    fig, ax = new_figure((6, 4))
    xs = [int(k) for k in step_s]
    ax.plot(xs, [step_s[str(x)] * 1000 for x in xs], marker="o")
    ax.set(xscale="log", xlabel="backlog (items waiting)", ylabel=f"median step of {arrivals} arrivals (ms)",
           title=f"Selector step against its backlog ({strategy})")
    ax.grid(alpha=0.3)
    save_figure(fig, Path(out).with_suffix(".png"))
    return result
