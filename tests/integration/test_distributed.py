"""The distributed mode: every service its own `winnow serve` process on a real Kafka broker and a real
PostgreSQL store, driven through the gRPC API; then prelabel scaled out to two processes in one
consumer group: one of them killed mid-stream, and both swapping to a new model version."""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from winnow.bench.cluster import Broker, Cluster, Service, store_url, wait_until
from winnow.core.adapters.postgres_store import PostgresStore
from winnow.core.data.datasets import banking77
from winnow.core.domain.codecs import ITEMS_SCORED, MODELS, TASKS
from winnow.core.domain.records import Item, ModelVersion, Project
from winnow.core.domain.settings import LoopConfig, RuntimeConfig, TrainConfig
from winnow.core.loop.ingest import ingest
from winnow.core.loop.topics import STAGES, consumer_group, create_topics, topic
from winnow.core.ml.encoder import export_onnx
from winnow.core.ml.runtime import make_runtime
from winnow.core.ml.training import train, write_version
from winnow.core.ports.bus import partition_for
from winnow.services.client import WinnowClient
from winnow.services.kafka_bus import KafkaBus

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

LOOP_DEADLINE_S = 300.0
SCALE_OUT_DEADLINE_S = 180.0
ITEMS = 2000
FIRST_WAVE = 600  # enough for the 100 human labels of the first model at 30 labels per 100 items
BUDGET_LABELS, BUDGET_PER_ITEMS = 30, 100
PRECISION_TARGET = 0.8  # reachable on a few dozen holdout labels, so some items are auto-accepted too
ANNOTATORS = ("ann-a", "ann-b")
# consumer group -> the stages it reads (the groups serve's workers join)
STAGE_TOPICS = {"prelabel": ("items.raw", "models"), "selector": ("items.scored", "models"), "trainer": ("labels",)}


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The encoder's ONNX export, made once; each test's cache gets a copy (its embedding cache stays its own)."""
    return export_onnx(tmp_path_factory.mktemp("onnx"))


@pytest.fixture
def project(kafka_bootstrap: str) -> Iterator[str]:
    """A project name of its own, so that its topics (winnow.<project>.*) are this test's alone; they are
    deleted after the test, once its services have stopped."""
    name = f"dist{uuid.uuid4().hex[:10]}"
    yield name
    bus = KafkaBus(kafka_bootstrap, client_id="winnow-test-teardown")
    try:
        bus.delete_topics([topic(name, stage) for stage in STAGES])
    finally:
        bus.close()


@pytest.fixture
def cluster(tmp_path: Path, kafka_bootstrap: str, postgres_schema_dsn: str, onnx_export: Path,
            project: str) -> Iterator[Cluster]:
    """The test's services (stopped after it, before its topics and schema are dropped)."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    shutil.copy(onnx_export, cache_dir / onnx_export.name)
    cluster = Cluster(tmp_path, f"kafka://{kafka_bootstrap}", store_url(postgres_schema_dsn), cache_dir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def broker(kafka_bootstrap: str) -> Iterator[Broker]:
    """The broker as an operator sees it."""
    broker = Broker(kafka_bootstrap)
    yield broker
    broker.close()


def _sample(n: int, seed: int = 0) -> tuple[tuple[str, ...], list[tuple[str, str, str]]]:
    """Banking77's classes and a seeded sample of ``n`` train rows across them: (item id, text, true label)."""
    train, _ = banking77()
    rows = np.random.default_rng(seed).permutation(len(train))[:n]
    return train.classes, [(f"b{k}", train.texts[k], train.labels[k]) for k in rows.tolist()]


def _annotate(annotators: dict[str, WinnowClient], project: str, truth: dict[str, str]) -> int:
    """Simulated annotators (a client with its own token each) lease what is open and answer with the
    true label; returns answers given."""
    answered = 0
    for annotator, client in annotators.items():
        for lease in client.lease(project, annotator, 50):
            assert client.submit(project, annotator, lease.item_id, truth[lease.item_id])
            answered += 1
    return answered


def _settled(broker: Broker, project: str, open_tasks: int) -> tuple | None:
    """The end offsets of every stage's topic when nothing is left to do: every worker group has
    committed everything on its topics and no task is open; None otherwise."""
    if open_tasks:
        return None
    ends = broker.end_offsets([topic(project, s) for s in ("items.raw", "items.scored", "labels", "models")])
    for stage, stages in STAGE_TOPICS.items():
        if broker.lag(consumer_group(stage, project), [topic(project, s) for s in stages]):
            return None
    return tuple(sorted((tp.topic, tp.partition, end) for tp, end in ends.items()))


def test_services_on_kafka_and_postgres_label_train_and_swap(cluster: Cluster, broker: Broker, project: str,
                                                             postgres_schema_dsn: str) -> None:
    deadline = time.monotonic() + LOOP_DEADLINE_S
    classes, rows = _sample(ITEMS)
    truth = {item_id: label for item_id, _, label in rows}
    items = [Item(project, item_id, text) for item_id, text, _ in rows]
    admin = cluster.grant("admin")  # a PostgreSQL store gets no first token: the API would refuse to start
    api = {name: cluster.start(name) for name in ("projects", "ingest", "labeling")}
    cluster.wait_ready(api.values(), deadline)
    with WinnowClient(api["projects"].target, admin) as operator:
        operator.create_project(project, classes, budget_labels=BUDGET_LABELS, budget_per_items=BUDGET_PER_ITEMS,
                                precision_target=PRECISION_TARGET)
        owner, _ = operator.create_token("owner", project, "owner")
    with (WinnowClient(api["projects"].target, owner) as operator,
          WinnowClient(api["ingest"].target, cluster.grant("producer", project)) as producer,
          contextlib.ExitStack() as clients):
        labeler = {name: clients.enter_context(WinnowClient(api["labeling"].target,
                                                            cluster.grant("annotator", project, name)))
                   for name in ANNOTATORS}
        workers = {name: cluster.start(name, project) for name in STAGE_TOPICS}
        cluster.wait_ready(workers.values(), deadline)

        # first wave: label until the trainer has registered its first model
        assert producer.ingest(items[:FIRST_WAVE], batch_size=200) == FIRST_WAVE

        def first_model() -> bool:
            cluster.check_alive()
            _annotate(labeler, project, truth)
            return bool(operator.list_versions(project))

        wait_until(first_model, deadline, "the first model version", cluster.logs)
        first = operator.list_versions(project)[0]
        assert first.n_train >= LoopConfig().first_model_labels

        # second wave: the rest of the stream, then the producer closes it; the close is served once
        # every item has reached the selector (many are still being prelabeled when it is asked)
        assert producer.ingest(items[FIRST_WAVE:], batch_size=200) == ITEMS - FIRST_WAVE
        assert operator.close_stream(project).state == "closing"
        previous: list[tuple | None] = [None]

        def processed() -> bool:
            cluster.check_alive()
            if _annotate(labeler, project, truth):
                previous[0] = None
                return False
            stats = operator.stats(project)
            now = _settled(broker, project, stats.open_tasks) if stats.stream.state == "closed" else None
            done = now is not None and now == previous[0]  # twice in a row, nothing published in between
            previous[0] = now
            return done

        wait_until(processed, deadline, "the stream to be closed and fully processed", cluster.logs)
        stats = operator.stats(project)
        labels = list(operator.export_labels(project))
        versions = {v.version: v for v in operator.list_versions(project)}

    # every item ends with exactly one final label
    labeled = Counter(label.item_id for label in labels)
    assert not [i for i, n in labeled.items() if n > 1], "an item has two final labels"
    assert stats.items == ITEMS and set(labeled) == set(truth) and stats.open_tasks == 0
    store = PostgresStore(postgres_schema_dsn)
    try:
        assert store.unlabeled_ids(project) == [] and store.open_tasks(project) == []
    finally:
        store.close()

    human = [label for label in labels if label.source == "human"]
    assert LoopConfig().first_model_labels <= len(human) <= ITEMS * BUDGET_LABELS // BUDGET_PER_ITEMS
    assert all(label.label == truth[label.item_id] for label in human)
    by_aggregation = Counter(label.aggregation for label in labels if label.source == "model")
    assert stats.stream.low_confidence == by_aggregation["low_confidence"]
    for label in labels:
        if label.source == "model":  # auto-accepted above the threshold, or marked as below it at the close
            assert label.source_id in versions
            if label.aggregation == "auto_accept":
                assert label.confidence >= label.threshold, label
            else:
                assert label.aggregation == "low_confidence", label
                assert label.threshold is None or label.confidence < label.threshold, label

    # the trainer published every version it registered; the workers swapped: later scores and tasks carry one
    published = [MODELS.decode(value).version for _, value in broker.read_all(topic(project, "models"))]
    assert published == sorted(versions) and len(versions) >= 1
    scored = [ITEMS_SCORED.decode(value) for _, value in broker.read_all(topic(project, "items.scored"))]
    assert {s.item_id for s in scored} == set(truth)
    scored_versions = Counter(s.model_version for s in scored)
    assert set(scored_versions) - {None}, f"no item scored by a trained model: {scored_versions}"
    assert set(scored_versions) - {None} <= set(versions)
    task_versions = Counter(TASKS.decode(value).model_version for _, value in broker.read_all(topic(project, "tasks")))
    assert set(task_versions) - {None}, f"no task issued under a trained model: {task_versions}"
    assert set(task_versions) - {None} <= set(versions)
    assert stats.current_model_version == max(versions, key=lambda v: versions[v].n_train)

    # SIGTERM drains every service and each exits cleanly
    codes = cluster.stop()
    assert codes and all(code == 0 for code in codes.values()), f"{codes}\n{cluster.logs()}"


def test_prelabel_scales_out_and_survives_a_killed_member(cluster: Cluster, broker: Broker, project: str,
                                                          kafka_bootstrap: str, postgres_schema_dsn: str) -> None:
    deadline = time.monotonic() + SCALE_OUT_DEADLINE_S
    classes, rows = _sample(600, seed=1)
    items = [Item(project, item_id, text) for item_id, text, _ in rows]
    bus, store = KafkaBus(kafka_bootstrap, client_id="winnow-test-producer"), PostgresStore(postgres_schema_dsn)
    try:
        record = Project(project, classes)
        store.create_project(record)
        create_topics(bus, project, LoopConfig().partitions)
        raw, prelabel = topic(project, "items.raw"), consumer_group("prelabel", project)
        producer = bus.producer()
        assert bus.partitions(raw) == 4
        workers = [cluster.start("prelabel", project, metrics=True) for _ in range(2)]
        cluster.wait_ready(workers, deadline)

        # stream in small batches until both members have handled messages from their partitions
        sent = 0

        def both_working() -> bool:
            nonlocal sent
            cluster.check_alive()
            if sent < len(items) // 2:
                ingest(producer, store, record, items[sent:sent + 10])
                sent += 10
            owners = [{p for t, p in member if t == raw} for member in broker.members(prelabel)]
            return len(owners) == 2 and all(owners) and all(_handled(w) > 0 for w in workers)

        wait_until(both_working, deadline, "two prelabel members, each owning partitions and handling messages",
                   lambda: f"handled {[_handled(w) for w in workers]}, sent {sent}\n{cluster.logs()}")
        killed, survivor = workers
        killed.kill()

        # the rest of the stream lands on every partition, the killed member's included
        rest = items[sent:]
        assert {partition_for(i.item_id, 4) for i in rest} == set(range(4))
        for start in range(0, len(rest), 50):
            ingest(producer, store, record, rest[start:start + 50])
        ids = [i.item_id for i in items]

        def all_embedded() -> bool:
            cluster.check_alive()
            return len(store.embedded_ids(project, ids)) == len(ids)

        wait_until(all_embedded, deadline, "every item's embedding",
                   lambda: f"{len(store.embedded_ids(project, ids))}/{len(ids)} embedded\n{cluster.logs()}")
        # the survivor alone owns the stream's partitions, has committed all of them and handled the rest
        # (a worker writes embeddings before it commits and counts a batch, so these trail the store)
        wait_until(lambda: broker.members(prelabel) == [frozenset({(raw, p) for p in range(4)}
                                                                    | {(topic(project, "models"), 0)})],
                   deadline, "the survivor to own every partition", lambda: str(broker.members(prelabel)))
        wait_until(lambda: broker.lag(prelabel, [raw]) == 0, deadline, "the survivor to commit every partition",
                   lambda: f"lag {broker.lag(prelabel, [raw])}")
        wait_until(lambda: _handled(survivor) >= len(rest), deadline, "the survivor to count what it handled",
                   lambda: f"handled {_handled(survivor)} of {len(rest)} sent after the kill")
    finally:
        store.close()
        bus.close()
    assert survivor.stop() == 0


def _handled(service: Service) -> float:
    return service.counter("winnow_messages_total")


def _new_version(project: Project, models_dir: Path, dim: int) -> ModelVersion:
    """A head version for ``project`` fitted on synthetic ``dim``-d embeddings (the workers' encoder's), written
    as the trainer writes one."""
    rng = np.random.default_rng(0)
    n_classes = len(project.classes)
    labels = np.arange(40 * n_classes) % n_classes
    embeddings = rng.normal(size=(len(labels), dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    config = TrainConfig()
    result = train(embeddings, labels, n_classes, project.precision_target, config)
    version = f"v0001-n{len(labels)}"
    folder = models_dir / project.name / version
    write_version(folder, result, version, project.classes, config)
    return ModelVersion(project.name, version, str(folder), time.time(), len(labels), result.temperature,
                        float(result.threshold.threshold), result.metrics)


def test_every_prelabel_member_swaps_to_a_new_version(cluster: Cluster, broker: Broker, project: str,
                                                       kafka_bootstrap: str, postgres_schema_dsn: str) -> None:
    deadline = time.monotonic() + SCALE_OUT_DEADLINE_S
    classes, rows = _sample(200, seed=2)
    record = Project(project, classes[:4])  # the prelabel worker never reads the true labels
    items = [Item(project, item_id, text) for item_id, text, _ in rows]
    assert {partition_for(i.item_id, 4) for i in items} == set(range(4))
    raw, models = topic(project, "items.raw"), topic(project, "models")
    prelabel = consumer_group("prelabel", project)
    bus, store = KafkaBus(kafka_bootstrap, client_id="winnow-test-producer"), PostgresStore(postgres_schema_dsn)
    try:
        store.create_project(record)
        create_topics(bus, project, LoopConfig().partitions)
        workers = [cluster.start("prelabel", project) for _ in range(2)]
        cluster.wait_ready(workers, deadline)

        def two_members() -> bool:
            cluster.check_alive()
            owners = [{p for t, p in member if t == raw} for member in broker.members(prelabel)]
            return len(owners) == 2 and all(owners)

        wait_until(two_members, deadline, "two prelabel members, each owning partitions",
                   lambda: f"{broker.members(prelabel)}\n{cluster.logs()}")
        # a new version, registered and announced as the trainer does it
        encoder = cluster.env.get("WINNOW_ENCODER", RuntimeConfig().encoder)  # what the workers run
        dim = make_runtime("onnx", "cpu", cache_dir=cluster.cache_dir, encoder=encoder).encoder.dim
        model = _new_version(record, cluster.workdir / "models", dim)
        store.register_model(model)
        producer = bus.producer()
        producer.publish_many(models, MODELS.keyed([model]))
        producer.flush()
        wait_until(lambda: broker.lag(prelabel, [models]) == 0, deadline, "the group to handle the new version")

        ingest(producer, store, record, items)
        wait_until(lambda: broker.lag(prelabel, [raw]) == 0, deadline, "the group to handle every item",
                   lambda: f"lag {broker.lag(prelabel, [raw])}\n{cluster.logs()}")
        cluster.check_alive()
    finally:
        store.close()
        bus.close()
    scored = [ITEMS_SCORED.decode(value) for _, value in broker.read_all(topic(project, "items.scored"))]
    assert {s.item_id for s in scored} == {i.item_id for i in items}
    stale = Counter(partition_for(s.item_id, 4) for s in scored if s.model_version != model.version)
    assert not stale, f"items scored with an older head after {model.version} was announced, by partition: {stale}"
