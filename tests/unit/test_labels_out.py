"""Final labels reach the labels topic at least once, also when a crash falls between the store write
and the publish: real SQLite store and bus; the crash is a publish on a bus whose connection is gone
(the write before it has committed), and the restart is a new stage on a new connection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import BusError
from winnow.core.domain.codecs import ITEMS_SCORED, LABELS, MODELS
from winnow.core.domain.records import Item, Label, ModelVersion, Project, Scored, Task
from winnow.core.domain.settings import LoopConfig, TrainConfig
from winnow.core.loop.close import request_close, stream_status
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.labels_out import same_key, same_stage, write_final_labels
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import consumer_group, create_topics, topic
from winnow.core.ml.head import Head, HeadConfig, save_model
from winnow.core.ml.training import train, write_version

CLASSES = ("a", "b", "c")
CONFIG = LoopConfig()


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStore(tmp_path / "store.sqlite")
    yield store
    store.close()


def _setup(store: SqliteStore, path: Path, n: int, budget_labels: int = 0) -> tuple[Project, list[str]]:
    """Project "p" with ``n`` items ingested and prelabeled (vectors [n, 8] in the store, their
    items.scored messages on the bus, as the prelabel worker leaves them); returns it and the ids."""
    project = Project("p", CLASSES, budget_labels=budget_labels, budget_per_items=100)
    store.create_project(project)
    ids = [f"i{k}" for k in range(n)]
    bus = SqliteBus(path)
    try:
        create_topics(bus, "p", 2)
        producer = bus.producer()
        ingest(producer, store, project, [Item("p", i, f"text {i}", 0.0) for i in ids])
        vectors = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)  # [n, 8]
        store.put_embeddings("p", ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        producer.publish_many(topic("p", "items.scored"), ITEMS_SCORED.keyed(Scored(i) for i in ids))
    finally:
        bus.close()
    return project, ids


def _on_topic(path: Path, group: str) -> list[Label]:
    """Every label message on p's labels topic, read by a consumer group of its own."""
    bus = SqliteBus(path)
    try:
        with bus.consumer([topic("p", "labels")], group) as reader:
            messages, batch = [], reader.poll(1000, timeout_s=1.0)
            while batch:
                messages += batch
                batch = reader.poll(1000, timeout_s=0.2)
        return [LABELS.decode(m.value) for m in messages]
    finally:
        bus.close()


def _label(item_id: str, key: str, label: str = "a") -> Label:
    return Label("p", item_id, label, "model", "v1", 0.9, None, "auto_accept", "1", 1.0, key)


def test_a_refused_label_is_published_again_only_when_the_stored_one_has_its_key(store: SqliteStore,
                                                                                 tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    _setup(store, path, 3)
    store.put_labels([_label("i0", "i0:selector:v1", "b"), _label("i1", "i1:labeling:human", "c")])
    bus = SqliteBus(path)
    try:
        written = write_final_labels(bus.producer(), store, [_label("i0", "i0:selector:v1"), _label("i1", "i1:selector:v1"),
                                                  _label("i2", "i2:selector:v1")])
    finally:
        bus.close()
    assert written == 1
    # i0 is the writer's own earlier label: the stored one (class b) again, not the attempted one;
    # i1 is another writer's (a different key): not ours to publish; i2 is new
    assert sorted((x.item_id, x.label) for x in _on_topic(path, "check")) == [("i0", "b"), ("i2", "a")]


def test_same_stage_ignores_only_the_model_version() -> None:
    assert same_stage("x:y:selector:v1", "x:y:selector:v2") and same_key("k", "k")
    assert not same_stage("x:selector:v1", "x:labeling:v1") and not same_stage("x:selector:v1", "z:selector:v1")
    assert not same_key("x:selector:v1", "x:selector:v2")


def test_a_human_label_written_before_a_crash_is_published_after_restart(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    project, ids = _setup(store, path, 10, budget_labels=100)
    store.add_tasks([Task("p", i, 1.0, None, 0.0) for i in ids])  # every item went to people
    bus = SqliteBus(path)
    labeling = LabelingService(bus, store, project, CONFIG)
    leases = labeling.lease("ann", 20)
    assert sorted(lease.item_id for lease in leases) == ids
    for lease in leases:
        labeling.submit("ann", lease.item_id, "c")
    bus.close()  # the process dies as consensus runs: its labels commit, their publish fails
    with pytest.raises(BusError):
        labeling.resolve()
    assert sorted(x.item_id for x in store.labels("p", "human")) == ids
    assert _on_topic(path, "before") == []  # lost, but for the rule in labels_out

    bus = SqliteBus(path)
    try:
        restarted = LabelingService(bus, store, project, CONFIG)
        assert restarted.resolve() == 0  # nothing new is written ...
    finally:
        bus.close()
    on_topic = _on_topic(path, "after")  # ... and every stored label is on the topic, as stored
    assert sorted(on_topic, key=lambda x: x.item_id) == sorted(store.labels("p"), key=lambda x: x.item_id)


def test_a_model_label_written_before_a_crash_is_published_when_its_input_is_redelivered(
        store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    project, ids = _setup(store, path, 6)
    # the selector died after writing labels for i0 and i1 and before publishing them or committing its
    # input; i2's label is another stage's (a person's): the selector never publishes it
    store.put_labels([_label("i0", "i0:selector:none"), _label("i1", "i1:selector:none", "b"),
                      _label("i2", "i2:labeling:human")])
    bus = SqliteBus(path)
    try:
        selector = Selector(bus, store, project, CONFIG)
        assert selector.step() == len(ids)  # the redelivered items.scored batch
    finally:
        bus.close()
    assert sorted((x.item_id, x.label) for x in _on_topic(path, "check")) == [("i0", "a"), ("i1", "b")]


@pytest.mark.parametrize("threshold, aggregation", [(None, "low_confidence"), (0.0, "auto_accept")],
                         ids=["below-threshold", "above-threshold-unchecked"])
def test_labels_of_a_close_cut_short_by_a_crash_are_published_when_it_is_served_again(
        store: SqliteStore, tmp_path: Path, threshold, aggregation) -> None:
    """Both kinds of label a close gives: below the threshold, and above it for items whose check
    found no credit during the stream (no budget here)."""
    path = tmp_path / "bus.sqlite"
    project, ids = _setup(store, path, 5)
    folder = path.parent / "v1"  # a model to label at close
    save_model(folder, Head(HeadConfig(dim=8, n_classes=len(CLASSES))),
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": threshold})
    store.register_model(ModelVersion("p", "v1", str(folder), 0.0, 0, 1.0,
                                      float("inf") if threshold is None else threshold))
    bus = SqliteBus(path)
    selector = Selector(bus, store, project, CONFIG)
    selector.step()
    request_close(store, "p", "operator", 1.0)
    bus.close()  # the process dies while the selector serves the close: labels written, publish fails
    with pytest.raises(BusError):
        selector.close_if_requested()
    assert len(store.labels("p")) == len(ids) and stream_status(store, "p").state == "closing"

    bus = SqliteBus(path)
    try:
        Selector(bus, store, project, CONFIG).step()  # the restarted selector serves the close again
    finally:
        bus.close()
    assert stream_status(store, "p").state == "closed"
    assert {x.aggregation for x in store.labels("p")} == {aggregation}
    assert sorted(x.item_id for x in _on_topic(path, "check")) == ids


def test_labels_of_a_swap_cut_short_by_a_crash_are_published_when_the_models_message_comes_again(
        store: SqliteStore, tmp_path: Path) -> None:
    """The selector died in the swap to a new version, after writing the labels the new model
    accepts from the backlog and before publishing them: on restart it loads that version from the
    store, so the redelivered models message changes nothing, yet must publish those labels."""
    path = tmp_path / "bus.sqlite"
    project, ids = _setup(store, path, 4)
    rng = np.random.default_rng(0)
    y = np.arange(60) % len(CLASSES)  # a head fitted on synthetic vectors [60, 8], as the trainer writes one
    x = rng.standard_normal((60, 8)).astype(np.float32) + np.eye(8, dtype=np.float32)[y] * 3
    config = TrainConfig(folds=3, min_support=10, max_iter=30)
    result = train(x, y, len(CLASSES), project.precision_target, config)
    folder = tmp_path / "models" / "v0001"
    write_version(folder, result, "v0001", CLASSES, config)
    model = ModelVersion("p", "v0001", str(folder), 1.0, 60, result.temperature, 0.5, result.metrics)
    store.register_model(model)
    store.put_labels([_label("i0", "i0:selector:v0001"), _label("i1", "i1:selector:none", "b")])
    bus = SqliteBus(path)
    try:
        with bus.consumer([topic("p", "items.scored")], consumer_group("selector", "p")) as done:
            assert len(done.poll(100, timeout_s=1.0)) == len(ids)
            done.commit()  # the items.scored batch was handled long before: only the models message comes again
        bus.producer().publish_many(topic("p", "models"), MODELS.keyed([model]))  # flushed on return
        selector = Selector(bus, store, project, CONFIG)
        assert selector.head is not None and selector.head.version == "v0001"
        selector.step()
    finally:
        bus.close()
    # i0's label is this version's (republished); i1's came from an earlier head: its own
    # items.scored redelivery covers it, not this models message
    assert [x.item_id for x in _on_topic(path, "check")] == ["i0"]
