"""Pipeline stages on the embedded bus and store, with synthetic embeddings instead of the encoder."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.codecs import ITEMS_SCORED
from winnow.core.domain.records import Annotation, Item, Label, ModelVersion, Project, Scored, Task
from winnow.core.domain.settings import LoopConfig, TrainConfig
from winnow.core.loop.close import StreamStatus, request_close, stream_status
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.selector import Selector, pick_rounds
from winnow.core.loop.topics import create_topics, topic
from winnow.core.loop.trainer import Trainer
from winnow.core.ml.head import Head, HeadConfig, save_model
from winnow.core.testing.bus_contract import poll_until

CLASSES = ("a", "b", "c")
CONFIG = LoopConfig(first_model_labels=30, retrain_min_new=10,
                    train=TrainConfig(folds=3, min_support=10))


@pytest.fixture
def env(tmp_path: Path):
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    yield bus, store
    bus.close()
    store.close()


def clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated clusters on the unit sphere: vectors [n, 16] and their class ids [n]."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16, dtype=np.float32)[:3] * 4
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.standard_normal((n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def score(bus: SqliteBus, store: SqliteStore, project: Project, ids: list[str], vectors: np.ndarray) -> None:
    """What the prelabel worker does, minus the encoder: vectors in the store, items.scored on the bus."""
    store.put_embeddings(project.name, ids, vectors)
    with bus.producer() as producer:
        producer.publish_many(topic(project.name, "items.scored"), ITEMS_SCORED.keyed(Scored(i) for i in ids))


def _full_budget_project(bus, store) -> tuple[Project, np.ndarray]:
    """Project ``p`` at a budget of 100 per 100 items, its topics, and 600 clustered vectors to stream."""
    project = Project("p", CLASSES, budget_labels=100, budget_per_items=100)
    store.create_project(project)
    create_topics(bus, "p", 2)
    return project, clustered(600, seed=3)[0]


def _arrive_all(bus, store, project: Project, selector: Selector, vectors: np.ndarray) -> list[str]:
    """Items ``i0 .. i{n-1}`` with ``vectors`` arrive, scored, and the selector steps until idle; their ids."""
    ids = [f"i{k}" for k in range(len(vectors))]
    ingest(bus.producer(), store, project, [Item(project.name, i, f"text {i}", 0.0) for i in ids])
    score(bus, store, project, ids, vectors)
    while selector.step():
        pass
    return ids


def _stream_through(bus, store, project: Project, config: LoopConfig, tmp_path: Path, n: int = 400,
                    on_step: Callable[[Selector], None] | None = None):
    """Stream ``n`` clustered items through selector, labeling (a perfect annotator) and trainer,
    calling ``on_step`` after every selector step; returns the truth by item id and the three stages."""
    store.create_project(project)
    create_topics(bus, project.name, 2)
    x, y = clustered(n)
    ids = [f"i{k}" for k in range(n)]
    truth = dict(zip(ids, (CLASSES[k] for k in y)))
    selector = Selector(bus, store, project, config)
    labeling = LabelingService(bus, store, project, config)
    trainer = Trainer(bus, store, project, config, tmp_path / "models")
    for start in range(0, n, 50):
        chunk = ids[start:start + 50]
        ingest(bus.producer(), store, project, [Item(project.name, i, f"text {i}", 0.0) for i in chunk])
        score(bus, store, project, chunk, x[start:start + 50])
        while True:
            moved = selector.step()
            if on_step is not None:
                on_step(selector)
            for lease in labeling.lease("ann", 100):
                labeling.submit("ann", lease.item_id, truth[lease.item_id])
                moved += 1
            moved += labeling.resolve() + trainer.step()
            if not moved:
                break
    return truth, selector, labeling, trainer


def test_poison_messages_go_to_the_dead_letter_topic_and_never_block(env) -> None:
    bus, store = env
    project = Project("p", CLASSES)
    store.create_project(project)
    create_topics(bus, "p", 2)
    selector = Selector(bus, store, project, CONFIG)
    with bus.producer() as producer:
        producer.publish(topic("p", "items.scored"), "k1", b"not json")
        producer.publish(topic("p", "items.scored"), "k2", b'{"no_item_id": 1}')
    assert selector.step() == 2
    assert selector.consumer.lag() == 0  # committed past the poison
    with bus.consumer([topic("p", "dead-letter")], "inspect") as dead:
        letters = dead.poll(10, timeout_s=2)
    assert sorted(m.key for m in letters) == ["k1", "k2"]
    assert all(m.header("error") and m.header("source").startswith(b"winnow.p.items.scored/") for m in letters)


BALD = LoopConfig(first_model_labels=30, retrain_min_new=10, uncertainty="bald",
                  train=TrainConfig(members=3, folds=3, min_support=10, steps=100, warm_steps=50))


@pytest.mark.parametrize("config", [CONFIG, BALD], ids=["logistic-margin", "ensemble-bald"])
def test_loop_labels_every_item_once_within_budget(env, tmp_path: Path, config: LoopConfig) -> None:
    bus, store = env
    # a target a few dozen checks can certify (0.98 needs about 150 right answers in a row), checked often
    project = Project("p", CLASSES, budget_labels=30, budget_per_items=100, precision_target=0.9)
    config = LoopConfig(**{**config.__dict__, "audit_probability": 0.3})
    truth, selector, labeling, trainer = _stream_through(bus, store, project, config, tmp_path,
                                                         on_step=check_backlog_caches)
    ids = list(truth)
    trainer.maybe_train(force=True)
    selector.step()
    check_backlog_caches(selector)
    restarted = Selector(bus, store, project, config)  # rebuilt from the store: the same backlog
    check_backlog_caches(restarted)
    assert sorted(restarted.backlog.ids) == sorted(selector.backlog.ids)
    row = {item_id: k for k, item_id in enumerate(restarted.backlog.ids)}
    order = [row[item_id] for item_id in selector.backlog.ids]
    np.testing.assert_allclose(restarted.backlog.probs[order], selector.backlog.probs, rtol=1e-5, atol=1e-7)
    restarted.close()
    selector.close_stream()
    for lease in labeling.lease("ann", 1000):  # the audit tasks the close drew
        labeling.submit("ann", lease.item_id, truth[lease.item_id])
    labeling.resolve()
    labels = store.labels("p")
    assert sorted(label.item_id for label in labels) == sorted(ids)  # exactly one each
    human = [label for label in labels if label.source == "human"]
    assert len(human) <= 0.30 * len(ids)  # the budget, exactly
    assert store.task_ids("p", "audit")  # people checked labels the model would have given
    model = [label for label in labels if label.source == "model"]
    assert all(label.probability is not None for label in model)  # each with its chance of a check
    accuracy = np.mean([truth[label.item_id] == label.label for label in labels])
    assert accuracy > 0.92
    models = store.models("p")
    assert models and all(m.n_train >= config.first_model_labels for m in models)
    assert json.loads((Path(models[-1].path) / "meta.json").read_text())["members"] == config.train.members
    auto = [label for label in labels if label.aggregation == "auto_accept"]
    assert all(label.confidence >= label.threshold for label in auto)


def check_backlog_caches(selector: Selector) -> None:
    """The selector's per-item scores equal a computation from scratch."""
    n = len(selector.backlog.ids)
    assert len(selector.backlog.emb) == len(selector.backlog.probs) == len(selector.backlog.unc) == n
    assert len(selector.backlog.conf) == n
    if not n:
        return
    probs, unc = selector._scores(selector.backlog.emb)
    np.testing.assert_allclose(selector.backlog.probs, probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(selector.backlog.unc, unc, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(selector.backlog.conf, probs.max(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", ["kcenter", "cluster_margin"])
def test_the_backlogs_guard_similarities_are_a_search_from_scratch(env, tmp_path: Path, strategy: str) -> None:
    """Each backlog row's similarity to what people have is kept lazily (a row is checked against the
    guard's items added since its last check only, when a pick needs it): the rows a pick read, and any
    rows brought up to date, hold what a search of the whole guard from scratch gives. A shortlisting
    strategy leaves the rows it did not read unchecked."""
    bus, store = env
    project = Project("p", CLASSES, budget_labels=30, budget_per_items=100, strategy=strategy)
    checked, partial = [], []

    def check(selector: Selector) -> None:
        if selector.guard is None or not len(selector.backlog):
            return
        backlog, guard = selector.backlog, selector.guard
        current = np.flatnonzero(backlog.dup_at == len(guard))
        scratch = guard.max_similarity(backlog.emb)
        np.testing.assert_allclose(backlog.dup[current], scratch[current], atol=1e-5)
        partial.append(len(current) < len(backlog))
        rows = np.arange(len(backlog))[::-1].copy()  # any order, any subset
        np.testing.assert_allclose(selector._guard_similarity(rows), scratch[rows], atol=1e-5)
        checked.append(len(rows))

    _stream_through(bus, store, project, CONFIG, tmp_path, n=300, on_step=check)
    assert len(checked) > 5
    if strategy == "cluster_margin":
        assert any(partial)  # the shortlist: a pick read only some rows


@pytest.mark.parametrize("size", [1, 7, 25])
def test_pick_rounds_split_exactly(size: int) -> None:
    for wanted in range(0, 300):
        rounds = pick_rounds(wanted, size)
        assert sum(rounds) == wanted
        assert all(size <= r < 2 * size for r in rounds) or (wanted < size and rounds == ([wanted] if wanted else []))


@pytest.mark.parametrize(("strategy", "calls"), [("cluster_margin", [10, 10, 10, 10, 14]), ("kcenter", [54])])
def test_a_pick_of_much_credit_goes_in_rounds_where_the_strategy_shortlists(env, strategy: str, calls) -> None:
    """Cluster-margin's clustering costs the square of its pick: 54 labels of credit are picked in rounds
    of select_batch, each shortlisted from what the rounds before it left (never an item twice, never a
    near-duplicate of an earlier round's pick); k-center, which reads the whole backlog, picks once."""
    bus, store = env
    project = Project("p", CLASSES, budget_labels=100, budget_per_items=100, strategy=strategy)
    store.create_project(project)
    create_topics(bus, "p", 1)
    config = dataclasses.replace(CONFIG, select_batch=10)
    x, _ = clustered(400, seed=5)
    ids = [f"i{k}" for k in range(len(x))]
    ingest(bus.producer(), store, project, [Item("p", i, f"text {i}", 0.0) for i in ids])
    store.put_embeddings("p", ids, x)
    selector = Selector(bus, store, project, config)  # the restore: all 400 wait, credit for each
    assert len(selector.backlog) == 400 and store.count_open_tasks("p") == 0
    selector.budget.grant(int(selector.budget.credit) - 54)  # leave 54 labels of credit
    sizes = []
    select = selector.strategy.select
    selector.strategy.select = lambda candidates, n, rng: sizes.append(n) or select(candidates, n, rng)
    assert selector._pick() == 54
    assert sizes == calls
    tasks = store.tasks("p")
    assert len(tasks) == len({t.item_id for t in tasks}) == 54 and len(selector.backlog) == 346
    picked = store.get_embeddings("p", [t.item_id for t in tasks])
    cosine = picked @ picked.T
    np.fill_diagonal(cosine, -1.0)
    assert cosine.max() < config.near_duplicate


def test_backlog_items_that_duplicate_a_queued_item_are_never_picked(env) -> None:
    """The selector's picks from the backlog skip near-duplicates of items people already have: of
    two identical items, at most one is picked (either may still be drawn at arrival, with the
    arrival's small recorded probability)."""
    bus, store = env
    project = Project("p", CLASSES, budget_labels=50, budget_per_items=100)
    store.create_project(project)
    create_topics(bus, "p", 2)
    selector = Selector(bus, store, project, CONFIG)
    x, _ = clustered(60, seed=3)
    x = np.concatenate([x, x])  # items 60..119 repeat items 0..59 exactly
    ids = [f"i{k}" for k in range(len(x))]
    for start in range(0, len(ids), 20):
        chunk = ids[start:start + 20]
        ingest(bus.producer(), store, project, [Item("p", i, f"text {i}", 0.0) for i in chunk])
        score(bus, store, project, chunk, x[start:start + 20])
        while selector.step():
            check_backlog_caches(selector)
    tasks = {t.item_id: t for t in store.tasks("p")}
    picked = {i for i, t in tasks.items() if t.kind == "label" and t.probability == 1.0}
    twin = {i: f"i{(int(i[1:]) + 60) % 120}" for i in ids}
    assert len(picked) >= 10 and not any(twin[i] in picked for i in picked)  # never both copies
    assert all(t.probability < 1.0 for i, t in tasks.items() if i not in picked)  # arrival draws
    waiting = [k for k, i in enumerate(selector.backlog.ids) if twin[i] in tasks]
    assert (selector.guard.max_similarity(selector.backlog.emb[waiting]) >= CONFIG.near_duplicate).all()


def _ingested(bus: SqliteBus, store: SqliteStore, n: int, budget_labels: int) -> tuple[Project, list[str], np.ndarray]:
    """Project "p" with ``n`` items ingested (not scored yet): the project, item ids, their vectors [n, 16]."""
    project = Project("p", CLASSES, budget_labels=budget_labels, budget_per_items=100)
    store.create_project(project)
    create_topics(bus, "p", 2)
    x, _ = clustered(n)
    ids = [f"i{k}" for k in range(n)]
    ingest(bus.producer(), store, project, [Item("p", i, f"text {i}", 0.0) for i in ids])
    return project, ids, x


def _model(store: SqliteStore, tmp_path: Path, threshold: float | None) -> ModelVersion:
    """Register an untrained head for project "p" ([16]-dim inputs) with ``threshold`` in its meta."""
    folder = tmp_path / "v1"
    save_model(folder, Head(HeadConfig(dim=16, n_classes=len(CLASSES))),
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": threshold})
    model = ModelVersion("p", "v1", str(folder), 0.0, 0, 1.0, float("inf") if threshold is None else threshold)
    store.register_model(model)
    return model


def test_a_close_request_waits_for_every_item_then_labels_each_once(env, tmp_path: Path) -> None:
    """Closing drains: it is served only once every ingested item has reached the selector; then the
    budget left goes to audit tasks and every other item gets a model label marked low_confidence."""
    bus, store = env
    project, ids, x = _ingested(bus, store, 60, budget_labels=10)
    _model(store, tmp_path, None)  # a model with no certified threshold
    selector = Selector(bus, store, project, CONFIG)
    assert stream_status(store, "p") == StreamStatus("p", "open")
    score(bus, store, project, ids[:40], x[:40])  # 20 items are not prelabeled yet
    selector.step()

    asked = request_close(store, "p", "operator", 5.0)
    assert (asked.state, asked.requested_at) == ("closing", 5.0)
    assert request_close(store, "p", "operator", 6.0) == asked  # idempotent while pending
    assert selector.close_if_requested() is None  # 20 items have not arrived: closing now would skip them
    assert store.labels("p") == [] and stream_status(store, "p").state == "closing"

    score(bus, store, project, ids[40:], x[40:])
    selector.step()  # takes them in and, with every item arrived, serves the close
    status = stream_status(store, "p")
    assert (status.state, status.requested_at) == ("closed", 5.0)
    tasks = {t.item_id for t in store.open_tasks("p")}
    labels = store.labels("p")
    assert len(tasks) <= 6 and 0 < status.tasks  # at most the whole budget (10 per 100 of 60)
    assert status.low_confidence == len(labels) == 60 - len(tasks)
    assert {label.aggregation for label in labels} == {"low_confidence"}  # no threshold: nothing is confident
    assert {t.family for t in store.tasks("p") if t.item_id in tasks and t.kind == "audit"} <= {"low_confidence"}
    labeled = {label.item_id for label in labels}
    assert sorted(tasks | labeled) == sorted(ids) and not tasks & labeled
    assert selector.close_if_requested() is None  # served once

    # a later close drains what came after; the first one's outcome is not served twice
    ingest(bus.producer(), store, project, [Item("p", "late", "text late", 0.0)])
    score(bus, store, project, ["late"], x[:1])
    assert request_close(store, "p", "operator", 9.0).state == "closing"
    selector.step()
    again = stream_status(store, "p")
    assert (again.state, again.requested_at, again.tasks + again.low_confidence) == ("closed", 9.0, 1)


@pytest.mark.parametrize("reserve, threshold, reachable, held", [
    (0.0, 0.9999, True, 0), (0.4, 0.9999, True, 40), (0.4, None, True, 0), (0.4, None, False, 40)],
    ids=["no-reserve", "certified", "racing", "ruled-out"])
def test_the_picks_leave_the_close_reserve_for_the_closes_checks(env, tmp_path: Path, reserve: float,
                                                                 threshold: float | None, reachable: bool,
                                                                 held: int) -> None:
    """Once a version certified a threshold (or its checks ruled the target out for it), the picks spend the
    credit but ``close_reserve`` of all the credit earned: the close spends that on checks of the items still
    waiting (audit tasks), so the labels the last model gives them are bounded by something. While no
    threshold is certified and the target is not ruled out, every label goes to the race for the first one:
    no reserve."""
    bus, store = env
    project, ids, x = _ingested(bus, store, 400, budget_labels=25)
    folder = tmp_path / "v1"  # an untrained head: nothing of it clears 0.9999
    save_model(folder, Head(HeadConfig(dim=16, n_classes=len(CLASSES))),
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": threshold,
                "threshold_choice": {"reachable": reachable}})
    store.register_model(ModelVersion("p", "v1", str(folder), 0.0, 0, 1.0, float("inf") if threshold is None
                                      else threshold))
    config = dataclasses.replace(CONFIG, close_reserve=reserve, min_probability=0.001, certify_probability=0.001,
                                 audit_probability=0.001, select_batch=5)
    selector = Selector(bus, store, project, config)
    for start in range(0, 400, 50):
        score(bus, store, project, ids[start:start + 50], x[start:start + 50])
        while selector.step():
            pass
        assert selector.budget.whole >= (selector.budget.earned(reserve) if held else 0)  # never the reserve
    asked = store.tasks("p")  # picks (and a rare draw at the floor or as a probe)
    left = selector.budget.whole
    assert len(asked) + left == 100  # 25 per 100 of 400 items: spent or left
    assert held <= left < held + 5  # the picks took all above the reserve
    request_close(store, "p", "operator", 1.0)
    assert selector.close_if_requested() is not None
    closing = [t for t in store.tasks("p") if t.kind == "audit"]
    assert {t.family for t in closing} <= {"low_confidence"}
    assert abs(len(closing) - left) <= 4 * np.sqrt(left + 1)  # the credit left, spent on the close's checks
    assert stream_status(store, "p").state == "closed"
    selector.close()


def test_a_close_before_any_model_invents_no_label(env) -> None:
    """With no model to label them, the items stay unlabeled and the status says how many; a later
    close, once a model exists, labels them."""
    bus, store = env
    project, ids, x = _ingested(bus, store, 10, budget_labels=0)
    score(bus, store, project, ids, x)
    request_close(store, "p", "operator", 1.0)  # requested while no selector runs
    selector = Selector(bus, store, project, CONFIG)
    selector.step()  # a pending close survives the selector's absence
    status = stream_status(store, "p")
    assert (status.state, status.unlabeled, status.low_confidence, status.tasks) == ("closed", 10, 0, 0)
    assert store.labels("p") == [] and sorted(store.unlabeled_ids("p")) == sorted(ids)
    assert sorted(selector.backlog.ids) == sorted(ids)  # still waiting for a model


@pytest.mark.parametrize("fill_s, taken", [(0.0, 3), (30.0, 5)], ids=["no-fill", "fill"])
def test_a_step_waits_to_fill_its_batch_only_with_fill_s(env, tmp_path: Path, fill_s: float, taken: int) -> None:
    """A producer's batch landing over two polls is one step with ``fill_s`` (which stops waiting as
    soon as the batch is full, long before the 30 s), two steps without it."""
    bus, store = env
    project = Project("p", CLASSES)
    store.create_project(project)
    create_topics(bus, "p", 1)
    selector = Selector(bus, store, project, CONFIG)
    selector.fill_s = fill_s
    scored = topic("p", "items.scored")
    with bus.producer() as producer:
        producer.publish_many(scored, [(f"k{k}", b"poison") for k in range(3)])  # dead-lettered: only counted here

    def produce_more() -> None:  # a bus of its own, as another process would have
        other = SqliteBus(tmp_path / "bus.sqlite")
        other.producer().publish_many(scored, [("k3", b"x"), ("k4", b"y")])
        other.close()

    later = threading.Timer(0.3, produce_more)
    later.start()
    try:
        assert selector.step(max_messages=5, timeout_s=1.0) == taken
    finally:
        later.join()


def test_a_restarted_selector_accepts_what_its_restored_model_clears(env, tmp_path: Path) -> None:
    """A model registered while the selector was down (or a swap a crash cut short before its
    auto-accepts): the restarted selector loads it from the store, so no models message will make it
    re-score. It takes its audit look at what the restored head clears before its first step: each
    item is checked by people (an audit task) or labeled and published."""
    bus, store = env
    project = Project("p", CLASSES, budget_labels=50, budget_per_items=100)
    store.create_project(project)
    create_topics(bus, "p", 2)
    x, _ = clustered(40)
    ids = [f"i{k}" for k in range(len(x))]
    ingest(bus.producer(), store, project, [Item("p", i, f"text {i}", 0.0) for i in ids])
    score(bus, store, project, ids, x)  # scored while the selector was down
    waiting = sorted(ids)

    _model(store, tmp_path, 0.0)  # threshold 0: all clear it
    restarted = Selector(bus, store, project, CONFIG)
    assert len(restarted.backlog) == 0
    labels = store.labels("p")
    audits = {t.item_id for t in store.open_tasks("p") if t.kind == "audit"}
    assert sorted([label.item_id for label in labels] + list(audits)) == waiting
    assert {(label.aggregation, label.source_id) for label in labels} == {("auto_accept", "v1")}
    assert all(label.probability >= CONFIG.audit_probability for label in labels)  # each could be checked
    with bus.consumer([topic("p", "labels")], "inspect") as consumer:
        assert sorted(m.key for m in poll_until(consumer, len(labels))) == sorted(label.item_id for label in labels)
    restarted.close()


@pytest.mark.parametrize("target, asked", [(None, (0.45, 0.5)), (0.25, (0.2, 0.4))], ids=["budget", "target"])
def test_target_mode_stops_asking_once_the_certified_bound_meets_the_target(env, tmp_path: Path, target,
                                                                           asked) -> None:
    """No model ever labels here (people's labels alone make the bound: every item without a label
    counts as wrong), so the certified accuracy is the share people labeled. On a 50% budget, budget
    mode spends it all; target mode at 0.25 stops picking once a quarter is labeled (the arrivals'
    checks go on) and writes when to the audit log."""
    bus, store = env
    config = LoopConfig(**{**CONFIG.__dict__, "first_model_labels": 10_000, "target_accuracy": target})
    project = Project("p", CLASSES, budget_labels=50, budget_per_items=100)
    _stream_through(bus, store, project, config, tmp_path)
    share = len(store.tasks("p")) / 400
    assert asked[0] <= share <= asked[1]
    met = [json.loads(detail) for _, _, action, detail in store.audit_log("p") if action == "target_met"]
    if target is None:
        assert met == []
    else:
        assert len(met) == 1 and met[0]["bound"] >= target and met[0]["human_labels"] >= 0.25 * met[0]["items"]


def stored_items(bus: SqliteBus, store: SqliteStore, project: Project, n: int = 40) -> tuple[list[str], np.ndarray]:
    """A project with ``n`` stored items and their vectors (``clustered``): their ids and class ids."""
    store.create_project(project)
    create_topics(bus, project.name, 1)
    x, y = clustered(n)
    ids = [f"i{k}" for k in range(n)]
    store.add_items([Item(project.name, i, f"text {i}", 0.0) for i in ids])
    store.put_embeddings(project.name, ids, x)
    return ids, y


def test_answers_with_no_majority_stay_out_of_the_thresholds_sample(env, tmp_path: Path) -> None:
    """Three people, three answers: the label is a guess, so the item is left out of the sample the
    threshold is estimated on (it still trains the model)."""
    bus, store = env
    project = Project("p", CLASSES, overlap=3)
    ids, y = stored_items(bus, store, project)
    store.add_tasks([Task("p", i, 0.5, None, 0.0, "holdout", 0.5) for i in ids])
    for k, i in enumerate(ids):
        answers = [CLASSES[y[k]]] if k else list(CLASSES)  # i0: a, b and c from three people
        for who, answer in zip(("x", "y", "z"), answers):
            store.add_annotation(Annotation("p", i, who, answer, 1.0))
        store.put_label(Label("p", i, answers[0], "human", "x", 1.0, None, "single", "v1", 1.0, f"{i}:h"))
    model = Trainer(bus, store, project, CONFIG, tmp_path / "models").maybe_train(force=True)
    assert model.n_train == 40 and model.metrics["threshold_sample"] == pytest.approx(39)


@pytest.mark.parametrize("weights", ["pooled", "inverse_probability"])
def test_the_thresholds_sample_counts_each_check_once_unless_weighed_by_its_chance(env, tmp_path: Path,
                                                                                     weights: str) -> None:
    """Probes drawn at 0.2 and audits at 0.03 (``TrainConfig.threshold_weights``): pooled, the sample
    is every check once; weighed by 1 / chance, each of the 10 audits counts for almost seven probes, and
    Kish's effective sample (19.7) is smaller than the 30 probes alone."""
    bus, store = env
    project = Project("p", CLASSES)
    ids, y = stored_items(bus, store, project)
    store.add_tasks([Task("p", i, 0.5, None, 0.0, "holdout" if k < 30 else "audit", 0.2 if k < 30 else 0.03)
                     for k, i in enumerate(ids)])
    for k, i in enumerate(ids):
        store.put_label(Label("p", i, CLASSES[y[k]], "human", "x", 1.0, None, "single", "v1", 1.0, f"{i}:h"))
    config = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, threshold_weights=weights))
    model = Trainer(bus, store, project, config, tmp_path / "models").maybe_train(force=True)
    w = np.array([5.0] * 30 + [1 / 0.03] * 10)
    kish = w.sum() ** 2 / (w**2).sum()  # 19.7
    assert model.metrics["threshold_sample"] == pytest.approx(40 if weights == "pooled" else kish)


def test_a_close_after_an_older_version_was_promoted_retrains_and_is_served(env, tmp_path: Path) -> None:
    """An operator promoted an older version: the close waits for a model that learned every human
    label, so the trainer trains again though it saw no new label, and the close is then served."""
    bus, store = env
    project = Project("p", CLASSES, budget_labels=60, budget_per_items=100)
    truth, selector, labeling, trainer = _stream_through(bus, store, project, CONFIG, tmp_path, n=200)
    versions = store.models("p")
    assert len(versions) >= 2
    store.promote("p", versions[0].version)  # older: trained on fewer labels
    request_close(store, "p", "operator", 1.0)
    assert selector.close_if_requested() is None  # its model is behind the labels
    model = trainer.train_for_close()
    assert model is not None and model.n_train == len(store.labels("p", "human"))
    selector.step()  # the models message: it swaps, then serves the close
    assert stream_status(store, "p").state == "closed"


def test_a_class_added_mid_stream_is_answered_at_once_and_learned_by_the_next_model(env, tmp_path: Path) -> None:
    """An owner adds a class: people answer it at once (consensus widens its fit), the backlog scored
    before the first model stays consistent, and the next model predicts it; the old versions' labels
    keep their meaning (classes are only appended)."""
    bus, store = env
    project = Project("p", CLASSES[:2], budget_labels=40, budget_per_items=100, overlap=2)
    store.create_project(project)
    create_topics(bus, "p", 2)
    x, y = clustered(600, seed=3)
    ids = [f"i{k}" for k in range(600)]
    truth = dict(zip(ids, (CLASSES[k] for k in y)))
    selector = Selector(bus, store, project, CONFIG)
    labeling = LabelingService(bus, store, project, CONFIG)
    trainer = Trainer(bus, store, project, CONFIG, tmp_path / "models")
    early = [i for i in ids[:300] if truth[i] != "c"]  # before the class exists, nothing needs it

    def flow(chunk: list[str]) -> None:
        ingest(bus.producer(), store, project, [Item("p", i, f"text {i}", 0.0) for i in chunk])
        score(bus, store, project, chunk, x[[ids.index(i) for i in chunk]])
        while True:
            moved = selector.step()
            for who in ("ann", "bob"):
                for lease in labeling.lease(who, 100):
                    labeling.submit(who, lease.item_id, truth[lease.item_id])
                    moved += 1
            moved += labeling.resolve() + trainer.step()
            if not moved:
                break

    flow(early[:20])  # a backlog before any model
    grown = store.update_project(dataclasses.replace(store.get_project("p"), classes=CLASSES), "owner", 1.0)
    for stage in (selector, trainer):
        stage.check_project(force=True)
    check_backlog_caches(selector)
    for start in range(20, len(early), 50):
        flow(early[start:start + 50])
    late = ids[300:]
    for start in range(0, len(late), 50):
        flow(late[start:start + 50])
    trainer.maybe_train(force=True)
    assert labeling.project == grown  # the submits of "c" made the service read the project again
    human = {label.item_id: label.label for label in store.labels("p", "human")}
    assert "c" in human.values() and all(truth[i] == label for i, label in human.items())
    meta = json.loads((Path(store.current_model("p").path) / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    selector.step()
    check_backlog_caches(selector)
    model_c = [label for label in store.labels("p", "model") if label.label == "c"]
    assert all(truth[label.item_id] == "c" for label in model_c)


@pytest.mark.parametrize("threshold, certify, audit, early", [(None, 0.5, 0.1, 0.5), (None, 0.2, 0.6, 0.6),
                                                              (0.99, 0.5, 0.1, 0.1)],
                         ids=["uncertified", "uncertified-audit-higher", "certified"])
def test_probes_land_above_the_candidate_at_the_certify_probability_until_a_threshold_is_certified(
        env, tmp_path: Path, threshold: float | None, certify: float, audit: float, early: float) -> None:
    """With a candidate threshold (and ``probe_start`` 0), people check only the items above it (where the next
    threshold's evidence is needed): at ``certify_probability`` (never below the audit probability) while no
    threshold is certified, at the audit probability after; the items below get the minimum chance,
    as plain label tasks."""
    from winnow.core.ml.head import OnnxHead

    bus, store = env
    project, x = _full_budget_project(bus, store)
    folder = tmp_path / "v1"
    torch_head = Head(HeadConfig(dim=16, n_classes=len(CLASSES)))
    save_model(folder, torch_head, {"version": "v1", "classes": list(CLASSES), "temperature": 1.0,
                                    "threshold": threshold, "candidate_threshold": 0.0})
    confidence = OnnxHead(folder).logits(x).mean(1)  # [n, C] logits of the one member
    confidence = np.exp(confidence - confidence.max(1, keepdims=True))
    confidence = (confidence / confidence.sum(1, keepdims=True)).max(1)
    candidate = float(np.median(confidence))
    save_model(tmp_path / "v2", torch_head, {"version": "v2", "classes": list(CLASSES), "temperature": 1.0,
                                            "threshold": threshold, "candidate_threshold": candidate})
    store.register_model(ModelVersion("p", "v2", str(tmp_path / "v2"), 0.0, 0, 1.0,
                                      float("inf") if threshold is None else threshold))
    config = dataclasses.replace(CONFIG, certify_probability=certify, audit_probability=audit, min_probability=0.02,
                                 probe_start=0.0, select_batch=10_000)  # no picks: only the arrival look draws
    selector = Selector(bus, store, project, config)
    ids = _arrive_all(bus, store, project, selector, x)
    above = {i for i, c in zip(ids, confidence) if c >= candidate}
    tasks = store.tasks("p")
    probes = [t for t in tasks if t.kind == "holdout"]
    assert probes and all(t.item_id in above and t.probability == early for t in probes)
    assert all(t.item_id not in above and t.probability == 0.02 for t in tasks if t.kind == "label")
    drawn = len(probes) / len(above)
    assert abs(drawn - early) < 4 * np.sqrt(early * (1 - early) / len(above))  # drawn at that rate
    selector.close()


@pytest.mark.parametrize("reachable", [True, False])
def test_no_probes_while_the_checks_rule_the_target_out_for_the_model(env, tmp_path: Path, reachable: bool) -> None:
    """A model with neither threshold nor candidate has every arriving item probed (the uniform sample
    its first candidate is found on), unless its checks already rule the target out
    (``ThresholdChoice.reachable`` False): then every item gets the minimum chance, as a plain label task."""
    bus, store = env
    project, x = _full_budget_project(bus, store)
    folder = tmp_path / "v1"
    save_model(folder, Head(HeadConfig(dim=16, n_classes=len(CLASSES))),
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": None,
                "candidate_threshold": None, "threshold_choice": {"reachable": reachable}})
    store.register_model(ModelVersion("p", "v1", str(folder), 0.0, 0, 1.0, float("inf")))
    config = dataclasses.replace(CONFIG, certify_probability=0.3, min_probability=0.02, select_batch=10_000)
    selector = Selector(bus, store, project, config)
    _arrive_all(bus, store, project, selector, x)
    assert selector.reachable is reachable
    tasks = store.tasks("p")
    assert tasks and {(t.kind, t.probability) for t in tasks} == ({("holdout", 0.3)} if reachable else {("label", 0.02)})
    selector.close()


def test_the_selector_decides_with_the_workers_scores_where_it_runs_the_same_version_and_score(env, tmp_path) -> None:
    """items.scored carries the prelabel worker's probabilities and uncertainty: the selector decides
    with them where the worker ran its version and uncertainty score and they are sound, and scores the
    stored embedding with its own head elsewhere (another version, another score, a NaN, a wrong length,
    probabilities that do not sum to one)."""
    bus, store = env
    project, x = _full_budget_project(bus, store)
    folder = tmp_path / "v1"
    save_model(folder, Head(HeadConfig(dim=16, n_classes=len(CLASSES))),  # its own scores clear no threshold
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": 0.999,
                "candidate_threshold": 0.999})
    store.register_model(ModelVersion("p", "v1", str(folder), 0.0, 0, 1.0, 0.999))
    config = dataclasses.replace(CONFIG, audit_probability=0.1, min_probability=0.001, select_batch=10_000)
    selector = Selector(bus, store, project, config)
    sure = (0.9996, 0.0002, 0.0002)  # class "a", above the threshold
    groups = {"carried": ("v1", sure, "margin"), "other-version": ("v0", sure, "margin"),
              "other-score": ("v1", sure, "entropy"), "nan": ("v1", (0.9996, float("nan"), 0.0002), "margin"),
              "short": ("v1", (0.9996, 0.0004), "margin"), "unnormalised": ("v1", (0.9996, 0.5, 0.0002), "margin")}
    messages, ids = [], {}
    for name, (version, probs, score) in groups.items():
        ids[name] = [f"{name}-{k}" for k in range(40)]
        messages += [Scored(i, version, "a", probs[0], probs, 0.001, score) for i in ids[name]]
    every = [i for group in ids.values() for i in group]
    ingest(bus.producer(), store, project, [Item("p", i, f"text {i}", 0.0) for i in every])
    store.put_embeddings("p", every, x[:len(every)])
    with bus.producer() as producer:
        producer.publish_many(topic("p", "items.scored"), ITEMS_SCORED.keyed(messages))
    while selector.step():
        pass
    model = {label.item_id: label for label in store.labels("p", "model")}
    audits = {t.item_id for t in store.tasks("p") if t.kind == "audit"}
    assert all((i in model) != (i in audits) for i in ids["carried"])  # decided at arrival: labeled or checked
    assert {model[i].label for i in ids["carried"] if i in model} == {"a"} and audits
    others = [i for name, group in ids.items() if name != "carried" for i in group]
    assert not any(i in model or i in audits for i in others)  # the head's own scores: below its threshold
    assert sum(i in selector.backlog for i in others) >= len(others) - 3  # waiting (a few drawn at the minimum)
    selector.close()


@pytest.mark.parametrize("share", [None, 0.5, 0.9])
def test_check_share_scales_an_arrival_looks_chances_down_to_its_share_of_the_credit(env, share) -> None:
    """Budget 25 per 100: 100 arrivals earn 25 labels. Probes at 0.2 on 90 of them and the floor on 10 would
    spend 18.2; a share of 0.5 caps the look at 12.5, keeping the chances' proportions; 0.9 (22.5) and no
    share leave them as they are."""
    bus, store = env
    project = Project("p", CLASSES, budget_labels=25, budget_per_items=100)
    store.create_project(project)
    create_topics(bus, "p", 2)
    selector = Selector(bus, store, project, dataclasses.replace(CONFIG, check_share=share))
    chances = np.array([0.2] * 90 + [0.02] * 10)
    capped = selector._capped(chances)
    if share == 0.5:
        assert capped.sum() == pytest.approx(12.5) and np.allclose(capped / chances, 12.5 / 18.2)
    else:
        assert np.array_equal(capped, chances)
    selector.close()


def test_a_model_version_names_the_encoder_its_head_was_fitted_on(env, tmp_path: Path) -> None:
    bus, store = env
    project = Project("p", CLASSES, budget_labels=30, budget_per_items=100)
    _, _, _, trainer = _stream_through(bus, store, project, CONFIG, tmp_path, n=200)
    assert json.loads((Path(store.models("p")[-1].path) / "meta.json").read_text())["encoder"] is None
    store.bind_encoder("p", "crc")  # as the project's first prelabel worker does
    model = trainer.maybe_train(force=True, again=True)
    assert json.loads((Path(model.path) / "meta.json").read_text())["encoder"] == "crc"


@pytest.mark.parametrize("model_wrong", [True, False], ids=["refuted", "standing"])
def test_a_threshold_its_own_audits_refute_is_withdrawn_and_labels_nothing_more(env, tmp_path: Path,
                                                                                 model_wrong: bool) -> None:
    """A version auto-accepts the first 120 arrivals (threshold 0), half of them checked by people. When
    people contradict every checked label, the anytime lower bound on its wrong labels puts their
    precision below the 0.98 target: the selector withdraws the threshold (audit log, certified quality),
    the next arrivals wait for people or the next version, and a restarted selector keeps it withdrawn.
    When people agree with every check, the threshold stands and keeps labeling."""
    from winnow.core.loop.quality import certified_quality

    bus, store = env
    project, ids, x = _ingested(bus, store, 240, budget_labels=100)
    _model(store, tmp_path, 0.0)
    config = dataclasses.replace(CONFIG, audit_probability=0.5, select_batch=20)
    selector = Selector(bus, store, project, config)
    selector.refute_check_s = 0.0  # every select_batch arrivals, however fast the test runs
    score(bus, store, project, ids[:120], x[:120])
    while selector.step():
        pass
    first = {label.item_id for label in store.labels("p")}
    audits = [t for t in store.tasks("p") if t.kind == "audit"]
    assert len(first) > 30 and len(audits) > 30
    store.put_labels([Label("p", t.item_id, next(c for c in CLASSES if c != t.model_label) if model_wrong
                            else t.model_label, "human", "ann", 1.0, None, "majority", "v1", 1.0, f"{t.item_id}:h")
                      for t in audits])
    score(bus, store, project, ids[120:], x[120:])
    while selector.step():
        pass
    later = {label.item_id for label in store.labels("p") if label.source == "model"} - first
    withdrawn = [json.loads(d) for _, _, action, d in store.audit_log("p") if action == "threshold_withdrawn"]
    if model_wrong:
        assert later == set() and np.isinf(selector.threshold)
        assert len(withdrawn) == 1 and withdrawn[0]["version"] == "v1"
        assert withdrawn[0]["precision_upper"] < 0.98 and withdrawn[0]["errors_seen"] == len(audits)
        assert certified_quality(store, "p").thresholds_withdrawn == ("v1",)
        restarted = Selector(bus, store, project, config)
        assert np.isinf(restarted.threshold)
        restarted.close()
    else:
        assert len(later) > 30 and selector.threshold == 0.0 and withdrawn == []
        assert certified_quality(store, "p").thresholds_withdrawn == ()
    selector.close()


def test_two_selector_replicas_split_the_stream_keep_the_budget_and_a_close_waits_for_both(env, tmp_path: Path) -> None:
    """Each replica decides the items of its shard (a hash of the id) and spends the project's rate on its
    own arrivals, so together they keep the budget; a restarted replica rebuilds its shard's backlog
    only; a close is served once both closed their shard, with their counts summed, and every item ends
    with exactly one final label or task."""
    from winnow.core.loop.topics import shard

    bus, store = env
    project, ids, x = _ingested(bus, store, 300, budget_labels=10)
    _model(store, tmp_path, None)  # no certified threshold: items wait in the backlogs
    configs = [dataclasses.replace(CONFIG, selector_replicas=2, selector_replica=r, select_batch=5) for r in (0, 1)]
    replicas = [Selector(bus, store, project, c) for c in configs]
    assert {s.group for s in replicas} == {"selector.p.0-of-2", "selector.p.1-of-2"}
    score(bus, store, project, ids, x)
    for selector in replicas:
        while selector.step():
            pass
    tasks = store.tasks("p")
    for r, selector in enumerate(replicas):
        assert selector.backlog.ids and all(shard(i, 2) == r for i in selector.backlog.ids)
        mine = sum(shard(i, 2) == r for i in ids)
        assert 0 < sum(shard(t.item_id, 2) == r for t in tasks) <= mine // 10  # the rate, on its own arrivals
    assert sorted([*replicas[0].backlog.ids, *replicas[1].backlog.ids, *(t.item_id for t in tasks)]) == sorted(ids)
    restarted = Selector(bus, store, project, configs[1])
    assert sorted(restarted.backlog.ids) == sorted(replicas[1].backlog.ids)
    assert restarted.budget.credit == pytest.approx(replicas[1].budget.credit)
    restarted.close()

    request_close(store, "p", "operator", 5.0)
    assert replicas[0].close_if_requested() is not None  # its shard is closed ...
    assert stream_status(store, "p").state == "closing"  # ... but the other's is not
    assert replicas[0].close_if_requested() is None  # and it does not close its part twice
    part = replicas[1].close_if_requested()
    status = stream_status(store, "p")
    assert status.state == "closed" and status.low_confidence == len(store.labels("p"))
    assert part is not None and status.tasks >= part["tasks"]
    labels = [label.item_id for label in store.labels("p")]
    queued = [t.item_id for t in store.open_tasks("p")]
    assert len(set(labels)) == len(labels) and not set(labels) & set(queued)
    assert sorted(labels + queued) == sorted(ids)
    assert len(store.tasks("p")) <= 30  # 10 per 100 of 300
    for selector in replicas:
        selector.close()


def test_a_replica_beyond_the_replicas_is_refused_naming_the_field() -> None:
    from winnow.core.domain.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        LoopConfig(selector_replicas=2, selector_replica=2)
    assert err.value.field == "selector_replica"


@pytest.mark.parametrize("self_training", [False, True])
def test_retention_drops_the_vectors_the_model_labeled_and_keeps_what_is_read_again(env, tmp_path: Path,
                                                                                 self_training: bool) -> None:
    """``embedding_retention_s``: the trainer drops the vectors of items the model labeled that long ago;
    people's, undecided items' and (with self-training) auto-accepted items' vectors stay."""
    bus, store = env
    project, ids, x = _ingested(bus, store, 8, budget_labels=10)
    store.put_embeddings("p", ids, x)
    now = 1000.0
    store.put_labels([Label("p", "i0", "a", "model", "v1", 0.99, 0.9, "auto_accept", "v1", now - 100, "i0:m", 0.1),
                      Label("p", "i1", "a", "model", "v1", 0.4, 0.9, "low_confidence", "v1", now - 100, "i1:m", 0.0),
                      Label("p", "i2", "a", "human", "ann", 1.0, None, "majority", "v1", now - 100, "i2:h"),
                      Label("p", "i3", "a", "model", "v1", 0.99, 0.9, "auto_accept", "v1", now - 1, "i3:m", 0.1)])
    keep = Trainer(bus, store, project, LoopConfig(), tmp_path / "models", clock=lambda: now)
    assert keep.drop_old_embeddings() == 0  # unset: every vector is kept
    config = dataclasses.replace(CONFIG, embedding_retention_s=10.0, self_training=self_training)
    trainer = Trainer(bus, store, project, config, tmp_path / "models", clock=lambda: now)
    assert trainer.drop_old_embeddings() == (1 if self_training else 2)
    gone = {"i1"} if self_training else {"i0", "i1"}
    assert store.embedded_ids("p", ids) == [i for i in ids if i not in gone]
    keep.close()
    trainer.close()


@pytest.mark.parametrize("to_certify, near, expected", [(40.0, 0.5, 0.5), (400.0, 0.5, 0.3), (40.0, None, 0.3),
                                                        (None, 0.5, 0.3), (40.0, 0.2, 0.3)],
                         ids=["near", "far", "unset", "no-candidate", "never-slower"])
def test_probes_sprint_only_where_a_certificate_is_near(env, tmp_path: Path, to_certify, near, expected) -> None:
    """Before a certificate, probes go at ``near_certify_probability`` while the model's candidate is at
    most ``rule_out_items`` (298 for 0.98 at 95%) more right checks from one, else at ``certify_probability``;
    a sprint below ``certify_probability`` leaves it as it is."""
    bus, store = env
    project, x = _full_budget_project(bus, store)
    folder = tmp_path / "v1"
    save_model(folder, Head(HeadConfig(dim=16, n_classes=len(CLASSES))),
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": None,
                "candidate_threshold": 0.0, "threshold_choice": {"reachable": True, "to_certify": to_certify}})
    store.register_model(ModelVersion("p", "v1", str(folder), 0.0, 0, 1.0, float("inf")))
    config = dataclasses.replace(CONFIG, certify_probability=0.3, near_certify_probability=near,
                                 min_probability=0.02, select_batch=10_000)
    selector = Selector(bus, store, project, config)
    _arrive_all(bus, store, project, selector, x)
    tasks = store.tasks("p")
    assert tasks and {(t.kind, t.probability) for t in tasks} == {("holdout", expected)}
    selector.close()


@pytest.mark.parametrize("how", ["restored", "swapped"])
@pytest.mark.parametrize("recertify, expected", [(0.05, 0.05), (0.01, 0.03), (None, 0.3)],
                         ids=["set", "never-below-audits", "unset"])
def test_after_a_first_certificate_a_version_without_a_threshold_probes_at_recertify_probability(
        env, tmp_path: Path, how, recertify, expected) -> None:
    """Once a version of the project certified a threshold, a later version without one probes its candidate
    region at ``recertify_probability`` (at least the audit probability), not the first certificate's
    sprint; unset (the default), it sprints again. Known whether the certified version came before a restart (the store's
    versions) or through a swap."""
    bus, store = env
    project, x = _full_budget_project(bus, store)
    _sure_of_a(tmp_path / "v0", "v0", 0.9, None)
    certified = ModelVersion("p", "v0", str(tmp_path / "v0"), 0.0, 0, 1.0, 0.9)
    save_model(tmp_path / "v1", Head(HeadConfig(dim=16, n_classes=len(CLASSES))),
               {"version": "v1", "classes": list(CLASSES), "temperature": 1.0, "threshold": None,
                "candidate_threshold": 0.0, "threshold_choice": {"reachable": True, "to_certify": 40.0}})
    uncertified = ModelVersion("p", "v1", str(tmp_path / "v1"), 1.0, 0, 1.0, float("inf"))
    assert LoopConfig().recertify_probability == 0.03
    config = dataclasses.replace(CONFIG, certify_probability=0.3, near_certify_probability=None, audit_probability=0.03,
                                 min_probability=0.02, recertify_probability=recertify, select_batch=10_000)
    if how == "restored":
        store.register_model(certified)
        store.register_model(uncertified)
        selector = Selector(bus, store, project, config)
    else:
        selector = Selector(bus, store, project, config)
        for model in (certified, uncertified):
            store.register_model(model)
            selector._swap(model)
    assert selector.version == "v1" and not np.isfinite(selector.threshold)
    _arrive_all(bus, store, project, selector, x)
    tasks = store.tasks("p")
    assert tasks and {(t.kind, t.probability) for t in tasks} == {("holdout", expected)}
    selector.close()


def test_a_refused_recertify_probability_names_the_field() -> None:
    from winnow.core.domain.errors import InvalidInput

    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InvalidInput) as err:
            LoopConfig(recertify_probability=bad)
        assert err.value.field == "recertify_probability"


@pytest.mark.parametrize("how", ["restored", "swapped"])
@pytest.mark.parametrize("thresholds, patience, expected", [
    ((0.9, None), 2, 0.05), ((0.9, None, None), 2, 0.3), ((0.9, None, None), None, 0.05),
    ((0.9, None, 0.9, None), 2, 0.05), ((None, None, 0.9, None, None), 2, 0.3)],
    ids=["one-miss", "patience-spent", "no-patience", "a-later-certificate-starts-again", "misses-before-count-not"])
def test_after_recertify_patience_versions_without_a_threshold_the_sprint_comes_back(
        env, tmp_path: Path, how, thresholds, patience, expected) -> None:
    """``recertify_patience``: once a version certified a threshold, ``recertify_patience`` versions in a row
    without one (counted from the last that certified) put probes back at ``certify_probability``; fewer,
    or unset, and they stay at ``recertify_probability``. The same after a restart (the store's versions)
    and through swaps."""
    bus, store = env
    project, x = _full_budget_project(bus, store)
    models = _versions_of_a(tmp_path, thresholds)
    assert LoopConfig().recertify_patience == 3
    config = dataclasses.replace(CONFIG, certify_probability=0.3, near_certify_probability=None, audit_probability=0.03,
                                 min_probability=0.02, recertify_probability=0.05, recertify_patience=patience,
                                 select_batch=10_000)
    if how == "restored":
        for model in models:
            store.register_model(model)
        selector = Selector(bus, store, project, config)
    else:
        selector = Selector(bus, store, project, config)
        for model in models:
            store.register_model(model)
            selector._swap(model)
    assert selector.version == models[-1].version and not np.isfinite(selector.threshold)
    _arrive_all(bus, store, project, selector, x)
    tasks = store.tasks("p")
    assert tasks and {(t.kind, t.probability) for t in tasks} == {("holdout", expected)}
    selector.close()


@pytest.mark.parametrize("thresholds, patience, expected", [((0.9, None), None, 0.05), ((0.9, None, None), 3, 0.05),
                                                             ((0.9, None, None), 2, 0.3)],
                         ids=["still-certified-once", "withdrawn-is-no-miss", "patience-spent"])
def test_a_restart_counts_a_withdrawn_threshold_as_certified_as_its_swap_did(env, tmp_path: Path, thresholds,
                                                                            patience, expected) -> None:
    """A version whose audits withdrew its threshold had certified one when it was swapped in: after a restart
    it still counts as the project's first certificate and starts the count of misses again, as it did for the
    selector that never restarted."""
    bus, store = env
    project, x = _full_budget_project(bus, store)
    for model in _versions_of_a(tmp_path, thresholds):
        store.register_model(model)
    store.audit("p", "selector", "threshold_withdrawn", json.dumps({"version": "v0", "threshold": 0.9}), 0.0)
    config = dataclasses.replace(CONFIG, certify_probability=0.3, near_certify_probability=None, audit_probability=0.03,
                                 min_probability=0.02, recertify_probability=0.05, recertify_patience=patience,
                                 select_batch=10_000)
    selector = Selector(bus, store, project, config)
    assert "v0" in selector._withdrawn and selector._certified_once
    _arrive_all(bus, store, project, selector, x)
    tasks = store.tasks("p")
    assert tasks and {(t.kind, t.probability) for t in tasks} == {("holdout", expected)}
    selector.close()


def test_a_refused_recertify_patience_names_the_field() -> None:
    from winnow.core.domain.errors import InvalidInput

    for bad in (0, -1):
        with pytest.raises(InvalidInput) as err:
            LoopConfig(recertify_patience=bad)
        assert err.value.field == "recertify_patience"


def _sure_of_a(folder: Path, version: str, threshold: float | None, checks: tuple[np.ndarray, np.ndarray] | None,
               candidate: float | None = None) -> None:
    """Save a version whose head gives class "a" the logit ``6 * x[0]`` (the others 0: confidence
    ``e^(6 x0) / (e^(6 x0) + 2)``), with ``threshold`` (None: none certified), its candidate (``threshold``
    unless given) and, when given, the checks it was chosen on."""
    from winnow.core.ml.training import Checks

    head = Head(HeadConfig(dim=16, n_classes=len(CLASSES)))
    with torch.no_grad():
        head.out_weight.zero_()
        head.out_bias.zero_()
        head.out_weight[0, 0, 0] = 6.0

    def extra(tmp: Path) -> None:
        if checks is not None:
            Checks(checks[0], checks[1], np.ones(len(checks[0]))).save(tmp)

    save_model(folder, head, {"version": version, "classes": list(CLASSES), "temperature": 1.0, "threshold": threshold,
                              "candidate_threshold": threshold if candidate is None else candidate}, extra)


def _versions_of_a(folder: Path, thresholds: Sequence[float | None]) -> list[ModelVersion]:
    """Versions v0, v1, ... saved by ``_sure_of_a`` under ``folder``, oldest first, with these thresholds (None:
    none certified) and candidate 0 (every item above it)."""
    models = []
    for k, threshold in enumerate(thresholds):
        _sure_of_a(folder / f"v{k}", f"v{k}", threshold, None, candidate=0.0)
        models.append(ModelVersion("p", f"v{k}", str(folder / f"v{k}"), float(k), 0, 1.0,
                                   float("inf") if threshold is None else threshold))
    return models


def _at_confidence(confidence: np.ndarray) -> np.ndarray:
    """Vectors [n, 16] that ``_sure_of_a`` gives these confidences."""
    x0 = np.log(2 * confidence / (1 - confidence)) / 6.0
    x = np.zeros((len(confidence), 16), np.float32)
    x[:, 0], x[:, 1] = x0, np.sqrt(1 - x0**2)
    return x


@pytest.mark.parametrize("start, floor", [(0.0, 0.5), (0.5, 0.75)], ids=["at-the-candidate", "halfway-to-1"])
def test_probes_start_probe_start_of_the_way_from_the_candidate_to_one(env, tmp_path: Path, start, floor) -> None:
    """``probe_start``: before a certificate, items at or above ``candidate + (1 - candidate) * probe_start``
    are probes (``certify_probability``); those between the candidate and there go at ``min_probability``."""
    bus, store = env
    project, _ = _full_budget_project(bus, store)
    _sure_of_a(tmp_path / "v1", "v1", None, None, candidate=0.5)
    store.register_model(ModelVersion("p", "v1", str(tmp_path / "v1"), 0.0, 0, 1.0, float("inf")))
    config = dataclasses.replace(CONFIG, certify_probability=0.3, near_certify_probability=None,
                                 min_probability=0.02, probe_start=start, select_batch=10_000)
    selector = Selector(bus, store, project, config)
    assert selector.probe_floor == pytest.approx(floor)
    confidence = np.repeat([0.45, 0.6, 0.7, 0.8, 0.9], 120)
    ids = _arrive_all(bus, store, project, selector, _at_confidence(confidence))
    chance = {t.item_id: t.probability for t in store.tasks("p")}
    by_confidence = {c: {chance[i] for i, ci in zip(ids, confidence) if ci == c and i in chance}
                     for c in np.unique(confidence)}
    for c, chances in by_confidence.items():
        assert chances <= ({0.3} if c >= floor else {0.02}), (c, chances)
    assert by_confidence[0.9] == {0.3} and by_confidence[0.45] == {0.02}
    assert by_confidence[0.6] == ({0.3} if start == 0.0 else {0.02})
    selector.close()


def test_a_refused_probe_start_names_the_field() -> None:
    from winnow.core.domain.errors import InvalidInput

    for bad in (-0.1, 1.0):
        with pytest.raises(InvalidInput) as err:
            LoopConfig(probe_start=bad)
        assert err.value.field == "probe_start"


@pytest.mark.parametrize("mode, backlog, labeled", [("arrival", "crowded", True), ("mix", "crowded", False),
                                                    ("mix", "spread", True), ("mix", "no-checks", True),
                                                    ("mix", "damaged", False)])
def test_the_backlog_is_labeled_at_a_threshold_its_own_mix_certifies(env, tmp_path: Path, mode, backlog,
                                                                     labeled) -> None:
    """``backlog_threshold``: a version's threshold is certified on checks mostly far above it. A backlog
    crowded just above it, where its checks were 90% right, is labeled at it with ``arrival``; with ``mix``
    the checks weighed to the backlog's mix certify none of it, so it waits, and the close gives it
    ``low_confidence`` labels. A backlog spread like the checks is labeled either way, and so is one under a
    version written without its checks; under one whose checks cannot be read, it waits."""
    bus, store = env
    n = 220
    if backlog == "crowded":
        confidence = np.full(n, 0.915)
    else:
        confidence = np.where(np.arange(n) % 11 == 0, 0.915, 0.995)
    project, ids, _ = _ingested(bus, store, n, budget_labels=25)
    store.put_embeddings("p", ids, _at_confidence(confidence))
    checks = (np.r_[np.full(100, 0.91), np.full(1000, 0.99)], np.r_[np.arange(100) < 90, np.ones(1000, bool)])
    _sure_of_a(tmp_path / "v1", "v1", 0.9, None if backlog == "no-checks" else checks)
    if backlog == "damaged":
        (tmp_path / "v1" / "checks.npz").write_bytes(b"not a numpy file")
    store.register_model(ModelVersion("p", "v1", str(tmp_path / "v1"), 0.0, 0, 1.0, 0.9))
    config = dataclasses.replace(CONFIG, backlog_threshold=mode, select_batch=10_000, audit_probability=0.03)
    selector = Selector(bus, store, project, config)  # the restored head looks at the backlog
    auto = [label for label in store.labels("p") if label.aggregation == "auto_accept"]
    tasks = store.tasks("p")
    if labeled:
        # mix: the lowest confidence the weighed checks certify (0.91), not the version's own
        cut = 0.91 if backlog == "spread" else 0.9
        assert len(auto) + len(tasks) == n and all(label.threshold == cut for label in auto)
    else:
        assert not auto and not tasks and len(selector.backlog) == n
        request_close(store, "p", "test", 0.0)
        assert selector.close_if_requested() is not None
        final = store.labels("p")
        assert {label.aggregation for label in final} == {"low_confidence"}
        assert len(final) + len(store.tasks("p")) == n
        assert all(label.threshold is None for label in final)  # below a backlog threshold of +inf
    selector.close()
