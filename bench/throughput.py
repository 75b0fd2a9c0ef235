"""Throughput benchmark: items per second through the whole pipeline against the model alone.

The pipeline run creates a project in a fresh store, ingests Banking77 texts and lets the prelabel
worker and the selector consume them in threads, as ``winnow serve`` runs them, until every item is
scored and decided (auto-accepted, in the backlog, or a task). The model-only run is the same encoder
and head on the same texts through ``Runtime.predict`` in batches of the prelabel worker's size. They
alternate, a few repeats each, so machine noise hits both alike; the result is their medians.
"""

from __future__ import annotations

import cProfile
import dataclasses
import itertools
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.bench.meters import (PRELABEL_BATCH, MeteredStage, StageMeter, TimedRuntime, cpu_delta, profiled,
                                thread_cpu_s)
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.data.datasets import Dataset
from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.domain.records import Item, ModelVersion, Project
from winnow.core.domain.settings import LoopConfig, ServeConfig, TrainConfig
from winnow.core.loop.ingest import ingest
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.selector import Selector
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import STAGES, create_topics, topic
from winnow.core.ml.encoder import CachedEncoder
from winnow.core.ml.runtime import Runtime
from winnow.core.ml.training import train, write_version
from winnow.core.ports.bus import Bus
from winnow.core.select.index import set_threads
from winnow.services.serve import Worker, open_bus, run_worker  # as serve runs them

FAISS_THREADS: int = ServeConfig.faiss_threads  # serve's default, set for the pipeline runs only
SQLITE_SESSION_TIMEOUT_S: float = ServeConfig.sqlite_session_timeout_s
HEAD_VERSION = "bench-head"
# Each role gets its own bus client, as separate ``winnow serve`` processes would. (Sharing one is safe
# now that every stage publishes through a producer of its own, ``Bus.producer``; before, one KafkaBus
# shared by the stage threads failed flushes at random, a flush taking another thread's sends.)


@dataclass(frozen=True)
class Head:
    """The head both runs use, trained once before the first repeat."""

    folder: Path
    model: ModelVersion  # registered in each run's fresh store (its project name is replaced there)


def train_head(runtime: Runtime, labelled: Dataset, n_labels: int, project: Project, models_dir: Path,
               seed: int) -> Head:
    """Fit a head on ``n_labels`` rows of ``labelled`` (a seeded draw) so both runs do encoder + head."""
    if labelled.labels is None:
        raise InvalidInput("head_labels", f"{labelled.source} has no labels to train the head on")
    if not 10 <= n_labels <= len(labelled):
        raise InvalidInput("head_labels", f"must be between 10 and {len(labelled)}, got {n_labels}")
    rows = np.random.default_rng(seed).permutation(len(labelled))[:n_labels]
    embeddings = runtime.encoder.encode([labelled.texts[i] for i in rows])  # [n, D]
    y = np.array(labelled.label_ids())[rows]  # [n]
    config = TrainConfig(seed=seed)
    result = train(embeddings, y, len(project.classes), project.precision_target, config)
    folder = Path(models_dir) / HEAD_VERSION
    write_version(folder, result, HEAD_VERSION, project.classes, config)
    model = ModelVersion(project.name, HEAD_VERSION, str(folder), time.time(), n_labels, result.temperature,
                         float(result.threshold.threshold), result.metrics)
    return Head(folder, model)


def run_pipeline(texts: Sequence[str], runtime: Runtime, project: Project, head: Head, config: LoopConfig,
                 workdir: Path, bus_url: str | None, ingest_batch: int, deadline_s: float,
                 profile_prefix: Path | None = None) -> dict:
    """One pipeline run on a fresh store and fresh topics; timed from the first ingest to the last decision.

    The prelabel worker and the selector run in threads through serve's worker loop. Ingest, prelabel
    and selector each have their own bus client, as separate ``winnow serve`` processes would (see the
    note at the top). An item is decided when
    the selector has handled its scored message (its label, task or backlog entry durable, offsets
    committed); afterwards every item is checked to be scored and decided once.
    """
    workdir.mkdir(parents=True)
    kafka = bus_kind(bus_url) == "kafka"
    faiss_threads = set_threads(FAISS_THREADS)
    buses: list[Bus] = []

    def new_bus() -> Bus:
        buses.append(open_bus(bus_url) if kafka else SqliteBus(workdir / "bus.sqlite", SQLITE_SESSION_TIMEOUT_S))
        return buses[-1]

    store: SqliteStore | None = None
    stages: list[Stage] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    try:
        bus = new_bus()  # ingest's
        store = SqliteStore(workdir / "store.sqlite")
        store.create_project(project)
        create_topics(bus, project.name, config.partitions)
        ingest_producer = bus.producer()
        store.register_model(dataclasses.replace(head.model, project=project.name))
        timed_runtime = TimedRuntime(runtime)
        prelabel = PrelabelWorker(new_bus(), store, project, config, timed_runtime)  # type: ignore[arg-type]
        selector = Selector(new_bus(), store, project, config)
        stages = [prelabel, selector]
        if timed_runtime.model_version != HEAD_VERSION or selector.head is None:
            raise WinnowError(f"the stages did not load the benchmark head {HEAD_VERSION!r}")
        run_id = uuid.uuid4().hex[:8]
        ids = [f"{run_id}-{k}" for k in range(len(texts))]
        done = threading.Event()
        decided_at: list[float] = []

        def on_selected(handled: int, ended: float) -> None:
            # runs in the selector's thread after a step: its backlog is not changing meanwhile; a
            # redelivered batch makes ``handled`` overshoot, so the items themselves are checked
            if handled >= len(ids) and not done.is_set() and not _undecided(store, selector, project, ids):
                decided_at.append(ended)
                done.set()

        meters = {"prelabel": StageMeter(), "selector": StageMeter()}
        metered = {"prelabel": MeteredStage(prelabel, meters["prelabel"]),
                   "selector": MeteredStage(selector, meters["selector"], on_selected)}
        profiles = {name: cProfile.Profile() for name in ("ingest", *metered)} if profile_prefix else {}

        def worker(name: str) -> None:
            try:
                run_worker(Worker(name, metered[name]), stop)  # type: ignore[arg-type]
            except BaseException as e:  # surfaced by the main thread, which stops waiting
                errors.append(e)
                done.set()

        threads = [threading.Thread(target=profiled(worker, profiles.get(name)), args=(name,),
                                    name=f"bench-{name}") for name in metered]
        for thread in threads:
            thread.start()
        ready_by = time.monotonic() + deadline_s
        for stage in metered.values():  # Kafka members join their group in their first poll
            while not stage.stepped.wait(0.1):
                if errors or time.monotonic() > ready_by:
                    raise WinnowError(f"bench: stage worker not ready: {errors[0] if errors else 'timed out'}")

        chunks = [range(s, min(s + ingest_batch, len(ids))) for s in range(0, len(ids), ingest_batch)]
        ingest_profile = profiles.get("ingest")
        threads_before = thread_cpu_s()
        started, cpu_started = time.perf_counter(), time.process_time()
        if ingest_profile is not None:
            ingest_profile.enable()
        for chunk in chunks:
            ingest(ingest_producer, store, project, [Item(project.name, ids[k], texts[k], time.time()) for k in chunk])
        if ingest_profile is not None:
            ingest_profile.disable()
        ingested = time.perf_counter()
        if not done.wait(deadline_s):
            raise WinnowError(f"bench: {meters['selector'].handled} of {len(ids)} items decided after {deadline_s} s")
        if errors:
            raise WinnowError(f"bench: a stage worker failed: {errors[0]!r}") from errors[0]
        wall_s = decided_at[0] - started
        cpu_s = time.process_time() - cpu_started  # every thread of this process (not a Kafka broker's)
        threads_cpu_s = cpu_delta(threads_before, thread_cpu_s())  # the main thread ingests, then waits
        stop.set()
        for thread in threads:
            thread.join()
        decided = _check_decided(store, selector, project, ids)
        if profile_prefix is not None:
            profile_prefix.parent.mkdir(parents=True, exist_ok=True)
            for name, profile in profiles.items():
                profile.dump_stats(f"{profile_prefix}-{name}.pstats")
        prelabel_meter = meters["prelabel"]
        return {
            "wall_s": wall_s,
            "items_per_s": len(ids) / wall_s,
            "cpu_s": cpu_s,
            "items_per_cpu_s": len(ids) / cpu_s,
            "ingest_s": ingested - started,
            "prelabel_predict_s": timed_runtime.predict_s,
            # where the pipeline's wall time goes besides the model: until its first batch starts, between
            # batches (the model idle), after the last batch ends (write it out, the selector's last step)
            "model_starts_at_s": timed_runtime.spans[0][0] - started,
            "model_idle_between_batches_s": sum(b[0] - a[1] for a, b in itertools.pairwise(timed_runtime.spans)),
            "after_model_s": decided_at[0] - timed_runtime.spans[-1][1],
            "prelabel_busy_s": prelabel_meter.busy_s,
            "prelabel_done_s": prelabel_meter.last_end - started,
            "tail_s": decided_at[0] - prelabel_meter.last_end,
            "prelabel_thread_cpu_s": prelabel_meter.cpu_s,
            "selector_busy_s": meters["selector"].busy_s,
            "selector_thread_cpu_s": meters["selector"].cpu_s,
            "prelabel_batches": prelabel_meter.batches,
            "prelabel_redelivered": prelabel_meter.handled - len(ids),
            "thread_cpu_s": threads_cpu_s,
            "selector_batches": meters["selector"].batches,
            "decided": decided,
        }
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for stage in stages:
            stage.close()
        try:
            if kafka and buses:
                buses[0].delete_topics([topic(project.name, s) for s in STAGES])  # type: ignore[attr-defined]
        finally:
            set_threads(faiss_threads)
            for bus in buses:
                bus.close()
            if store is not None:
                store.close()


def _decisions(store: SqliteStore, selector: Selector, project: Project) -> list[str]:
    """Item ids with a final label, an open task or a backlog entry (an id twice if it has two)."""
    return ([label.item_id for label in store.labels(project.name)]
            + [t.item_id for t in store.open_tasks(project.name)] + selector.backlog.ids)


def _undecided(store: SqliteStore, selector: Selector, project: Project, ids: Sequence[str]) -> int:
    return len(set(ids) - set(_decisions(store, selector, project)))


def _check_decided(store: SqliteStore, selector: Selector, project: Project, ids: list[str]) -> dict[str, int]:
    """Every item scored and decided; how many were auto-accepted, queued, left in the backlog.

    ``decided_twice`` counts items in two of those places at once (a redelivery the selector did
    not recognise); it should be 0.
    """
    name = project.name
    scored = len(store.embedded_ids(name, ids))
    if scored != len(ids):
        raise WinnowError(f"bench: only {scored} of {len(ids)} items were scored")
    if undecided := _undecided(store, selector, project, ids):
        raise WinnowError(f"bench: {undecided} of {len(ids)} items were not decided")
    labels = store.labels(name)
    tasks = store.open_tasks(name)
    return {"auto_accepted": sum(label.aggregation == "auto_accept" for label in labels),
            "label_tasks": sum(t.kind == "label" for t in tasks),
            "holdout_tasks": sum(t.kind == "holdout" for t in tasks),
            "backlog": len(selector.backlog),
            "decided_twice": len(labels) + len(tasks) + len(selector.backlog) - len(ids)}


def run_model_only(texts: Sequence[str], runtime: Runtime, batch: int) -> dict:
    """The encoder and head alone: ``Runtime.predict`` on consecutive batches of ``batch`` texts."""
    threads_before = thread_cpu_s()
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), batch):
        prediction = runtime.predict(texts[start:start + batch])
        if prediction.logits is None:
            raise WinnowError("bench: the runtime has no head loaded")
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    return {"wall_s": wall_s, "items_per_s": len(texts) / wall_s, "cpu_s": cpu_s, "items_per_cpu_s": len(texts) / cpu_s,
            "thread_cpu_s": cpu_delta(threads_before, thread_cpu_s())}


def bus_kind(bus_url: str | None) -> str:
    """``sqlite`` or ``kafka`` for a benchmark's ``--bus`` (None: sqlite); InvalidInput for anything else."""
    if bus_url is None or bus_url == "sqlite" or bus_url.startswith("sqlite:///"):
        return "sqlite"
    if bus_url.startswith("kafka://"):
        return "kafka"
    raise InvalidInput("--bus", f"{bus_url[:200]!r} is neither kafka://HOST:PORT nor sqlite")


def plot_throughput(path: Path, result: dict) -> None:
    """Two bars (median items/s of the pipeline and of the model alone), each repeat as a dot."""
    runs = result["details"]["runs"]
    names = ("pipeline", "model_only")
    medians = [result["pipeline_items_per_s"], result["model_only_items_per_s"]]
    fig, ax = new_figure((6, 4.5))
    bars = ax.bar(["whole pipeline", "model only"], medians, color=["tab:blue", "tab:gray"], alpha=0.8)
    for k, name in enumerate(names):
        values = [run[name]["items_per_s"] for run in runs]
        ax.scatter([k] * len(values), values, color="black", s=14, zorder=3,
                   label="one repeat" if k == 0 else None)
    for bar, value in zip(bars, medians):  # inside the bar, clear of the repeats' dots around its top
        ax.text(bar.get_x() + bar.get_width() / 2, value / 2, f"median\n{value:.1f}", ha="center", va="center",
                color="white", fontweight="bold")
    ax.set_ylabel("items per second (median of repeats)")
    ax.set_title(f"Throughput, {result['items']} items on the {result['bus']} bus: "
                 f"pipeline / model-only = {result['ratio']:.3f}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def run_throughput_benchmark(
    train_set: Dataset,
    labelled: Dataset,
    runtime: Runtime,
    out: Path,
    items: int = 2000,
    bus_url: str | None = None,
    repeats: int = 3,
    seed: int = 0,
    head_labels: int = 400,
    config: LoopConfig | None = None,
    project: Project | None = None,
    profile_dir: Path | None = None,
    deadline_s: float = 900.0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Alternate pipeline and model-only runs on the first ``items`` texts of a seeded shuffle of ``train_set``.

    The head is trained first on ``head_labels`` rows of ``labelled`` (Banking77's test split in the
    CLI, so it shares no text with the stream). ``runtime`` must not cache embeddings: the repeats
    encode the same texts. ``bus_url`` is None or ``sqlite`` (the embedded log, fresh per run) or
    ``kafka://HOST:PORT`` (fresh topics per run, deleted after). With ``profile_dir`` every pipeline
    run's threads are profiled (cProfile, one ``.pstats`` per thread); profiling slows them down.
    Writes ``out`` (JSON) and the PNG beside it, and returns the result.
    """
    bus = bus_kind(bus_url)
    if isinstance(runtime.encoder, CachedEncoder):
        raise InvalidInput("runtime", "has an embedding cache: repeats would be served from it "
                                      "(make_runtime(..., embedding_cache=False))")
    if not 1 <= items <= len(train_set):
        raise InvalidInput("items", f"must be between 1 and {len(train_set)}, got {items}")
    if repeats < 1:
        raise InvalidInput("repeats", f"must be at least 1, got {repeats}")
    config = config or LoopConfig(seed=seed)
    # at 0.98 a head on a few hundred labels accepts nothing; at 0.90 it accepts about 40% of the stream,
    # so every way an item is decided (auto-accept, holdout or label task, backlog) is on the clock
    project = project or Project("bench", train_set.classes, precision_target=0.9)
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(train_set))[:items]
    texts = [train_set.texts[i] for i in order]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="winnow-throughput-") as tmp:
        say(f"training the head on {head_labels} labelled texts")
        head = train_head(runtime, labelled, head_labels, project, Path(tmp) / "models", seed)
        runtime.swap(head.folder)
        run_model_only(texts[:PRELABEL_BATCH], runtime, PRELABEL_BATCH)  # warm-up, not reported
        for k in range(repeats):
            run_project = dataclasses.replace(project, name=f"{project.name}-{uuid.uuid4().hex[:8]}")
            prefix = None if profile_dir is None else Path(profile_dir) / f"{bus}-r{k}"
            pipeline = run_pipeline(texts, runtime, run_project, head, config, Path(tmp) / f"run-{k}", bus_url,
                                    PRELABEL_BATCH, deadline_s, prefix)
            say(f"repeat {k + 1}/{repeats} pipeline:   {pipeline['items_per_s']:8.1f} items/s "
                f"({pipeline['wall_s']:.1f} s)")
            runtime.swap(head.folder)
            model_only = run_model_only(texts, runtime, PRELABEL_BATCH)
            say(f"repeat {k + 1}/{repeats} model only: {model_only['items_per_s']:8.1f} items/s "
                f"({model_only['wall_s']:.1f} s)")
            runs.append({"repeat": k, "pipeline": pipeline, "model_only": model_only,
                         "ratio": pipeline["items_per_s"] / model_only["items_per_s"]})
    pipeline_rate = statistics.median(r["pipeline"]["items_per_s"] for r in runs)
    model_rate = statistics.median(r["model_only"]["items_per_s"] for r in runs)
    prelabel_batches = [b for r in runs for b in r["pipeline"]["prelabel_batches"]]
    result = {
        "items": items,
        "pipeline_items_per_s": pipeline_rate,
        "model_only_items_per_s": model_rate,
        "ratio": pipeline_rate / model_rate,
        "bus": bus,
        "details": {
            "dataset": train_set.source,
            "seed": seed,
            "repeats": repeats,
            "order": "pipeline then model-only, alternating; medians over repeats",
            "batch_sizes": {
                "prelabel_poll_max_messages": PRELABEL_BATCH,
                "model_only_predict_batch": PRELABEL_BATCH,
                "ingest_batch": PRELABEL_BATCH,
                "encoder_max_batch": getattr(runtime.encoder, "max_batch", None),
                "prelabel_batches_seen_mean": float(np.mean(prelabel_batches)) if prelabel_batches else None,
            },
            "head": {"labels": head_labels, "source": labelled.source,
                     "threshold": head.model.threshold if np.isfinite(head.model.threshold) else None,
                     "heldout_accuracy": head.model.metrics.get("heldout_accuracy")},
            "project": {"strategy": project.strategy, "budget": f"{project.budget_labels} per "
                        f"{project.budget_per_items} items", "precision_target": project.precision_target,
                        "partitions": config.partitions},
            "sqlite_session_timeout_s": SQLITE_SESSION_TIMEOUT_S if bus == "sqlite" else None,
            "bus_clients": "ingest, prelabel and selector each have their own",
            "faiss_threads_in_pipeline": FAISS_THREADS,
            "runtime": {"class": type(runtime).__name__, "encoder": runtime.encoder.encoder_id,
                        "embedding_cache": False},
            "threads": "prelabel and selector each in a thread running serve's worker loop (poll timeout "
                       "0.5 s), the prelabel model in a thread of its own (serve's overlap); ingest in the "
                       "main thread",
            "profiled": profile_dir is not None,
            "ratios": [r["ratio"] for r in runs],
            # CPU seconds of this process: steadier than wall time on a shared machine (no broker CPU)
            "cpu_ratio": statistics.median(r["pipeline"]["items_per_cpu_s"] for r in runs)
            / statistics.median(r["model_only"]["items_per_cpu_s"] for r in runs),
            "runs": runs,
            "total_wall_s": time.perf_counter() - started,
            "environment": environment(),
        },
    }
    write_json(out, result)
    plot_throughput(Path(out).with_suffix(".png"), result)
    return result
