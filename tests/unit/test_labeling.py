"""The labeling service's adaptive overlap on a real SQLite store and bus: one answer settles an item,
a disagreement asks one more person, up to the project's overlap; consensus then makes the label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.topics import create_topics
from winnow.core.ml.consensus import OneCoinFit

P = "p"


@pytest.fixture
def labeling(tmp_path: Path):
    store, bus = SqliteStore(tmp_path / "store.sqlite"), SqliteBus(tmp_path / "bus.sqlite")
    project = Project(P, ("a", "b", "c"), overlap=3)
    store.create_project(project)
    create_topics(bus, P, 1)
    store.add_items([Item(P, f"i{k}", f"text {k}", 0.0) for k in range(4)])
    store.add_tasks([Task(P, "i0", 0.5, "v1", 0.0, "label", 1.0, "a", None, 1),  # an uncertain pick
                     Task(P, "i1", 0.5, "v1", 0.0, "audit", 0.1, "a", "auto_accept", 1),  # a check
                     Task(P, "i2", 0.5, "v1", 0.0, "label", 1.0, "a", None, 1),
                     Task(P, "i3", 0.5, None, 0.0, "label")])  # no wanted: the project's overlap
    service = LabelingService(bus, store, project, LoopConfig())
    # what a fit of many answers learned: these people are right 99% of the time, the model 60% on its
    # picks and 97% on its checks (never stale in these tests: it saw a million answers)
    service._fit = OneCoinFit(np.full(3, 1 / 3), {"x": 0.99, "y": 0.99, "z": 0.99, "w": 0.99}, 0.99,
                              "dawid_skene_one_coin", 10**6, {("label", "v1"): 0.6, ("audit", "v1"): 0.97})
    yield service, store
    bus.close()
    store.close()


def _answer(service: LabelingService, who: str, answers: dict[str, str]) -> list[str]:
    """``who`` leases what it can and answers the items named in ``answers``; returns the items leased."""
    leased = [lease.item_id for lease in service.lease(who, 10)]
    for item_id in leased:
        if item_id in answers:
            service.submit(who, item_id, answers[item_id])
    return leased


def test_a_third_answer_is_asked_exactly_when_two_disagree(labeling) -> None:
    service, store = labeling
    assert sorted(_answer(service, "x", {"i0": "b", "i1": "b", "i2": "a", "i3": "a"})) == ["i0", "i1", "i2", "i3"]
    # i0: one answer of a reliable person settles a pick against a model right 60% of the time there;
    # i2 agrees with the model; i1: the only answer contradicts a model right 97% of the time on its
    # checks: a second person is asked;
    # i3: a task with no wanted asks the project's overlap (3)
    assert service.resolve() == 2 and {x.item_id for x in store.labels(P)} == {"i0", "i2"}
    assert sorted(_answer(service, "y", {"i1": "c", "i3": "a"})) == ["i1", "i3"]
    assert service.resolve() == 0  # i1: two answers disagree, so a third is asked
    assert [t.wanted for t in store.open_tasks(P, ["i1"])] == [3]
    assert sorted(_answer(service, "z", {"i1": "c", "i3": "a"})) == ["i1", "i3"]
    assert service.resolve() == 2
    labels = {x.item_id: x for x in store.labels(P)}
    assert labels["i1"].label == "c" and labels["i1"].source_id == "x,y,z"
    assert _answer(service, "w", {}) == []  # the cap: nobody else is asked


def test_two_agreeing_answers_settle_an_item_against_the_model(labeling) -> None:
    service, store = labeling
    _answer(service, "x", {"i1": "b"})
    _answer(service, "y", {"i1": "b"})
    service.resolve()
    assert {x.item_id: x.label for x in store.labels(P)}["i1"] == "b"
    assert [t.wanted for t in store.tasks(P) if t.item_id == "i1"] == [2]


def test_a_task_that_asks_two_answers_waits_for_the_second(labeling) -> None:
    service, store = labeling
    store.add_items([Item(P, "j0", "text j0", 0.0)])
    store.add_tasks([Task(P, "j0", 0.5, None, 0.0, "holdout", 0.1, None, None, 2)])  # a probe before any model
    _answer(service, "x", {"j0": "a"})
    assert "j0" not in {x.item_id for x in store.labels(P)} and service.resolve() == 0
    _answer(service, "y", {"j0": "a"})
    service.resolve()
    assert {x.item_id: x.label for x in store.labels(P)}["j0"] == "a"


class CountingStore:
    """The store, counting the reads of every answer of the project (what made submits grow with history)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store, self.full_reads = store, 0

    def annotations(self, project, item_ids=None):
        self.full_reads += item_ids is None
        return self.store.annotations(project, item_ids)

    def __getattr__(self, name):
        return getattr(self.store, name)


def _crowd(tmp_path: Path, items: int, refit: int):
    store, bus = SqliteStore(tmp_path / "store.sqlite"), SqliteBus(tmp_path / "bus.sqlite")
    project = Project(P, ("a", "b", "c", "d"), overlap=3)
    store.create_project(project)
    create_topics(bus, P, 1)
    store.add_items([Item(P, f"i{k}", f"text {k}", 0.0) for k in range(items)])
    store.add_tasks([Task(P, f"i{k}", 0.5, None, 0.0) for k in range(items)])
    counting = CountingStore(store)
    config = LoopConfig(consensus_refit_answers=refit)
    service = LabelingService(bus, counting, project, config)  # type: ignore[arg-type]
    return service, counting, store, bus


def _answer_all(service: LabelingService, who: str, answer) -> list[str]:
    """``who`` leases (50 at a time, the cap) and answers until nothing is left; the items answered."""
    done: list[str] = []
    while leases := service.lease(who, 50):
        for lease in leases:
            service.submit(who, lease.item_id, answer(lease.item_id))
            service.resolve()
            done.append(lease.item_id)
    return done


def test_a_submit_reads_only_its_items_answers_between_scheduled_refits(tmp_path: Path) -> None:
    service, counting, store, bus = _crowd(tmp_path, 60, refit=30)
    rng = np.random.default_rng(1)
    try:
        truth = {f"i{k}": "abcd"[k % 4] for k in range(60)}
        answered = 0
        for who, accuracy in (("x", 1.0), ("y", 0.9), ("z", 0.8)):
            answered += len(_answer_all(service, who, lambda i, q=accuracy: truth[i] if rng.random() < q
                                        else "abcd"[("abcd".index(truth[i]) + 1) % 4]))
        # a full read only for the first fit, then once per 30 new answers (a tenth of all is less here)
        assert answered == 180 and 1 <= counting.full_reads <= 2 + 60 // 30
        assert len(store.labels(P)) == 60
        assert sum(1 for label in store.labels(P) if label.label == truth[label.item_id]) >= 58
    finally:
        bus.close()
        store.close()


@pytest.mark.parametrize("seed", range(5))
def test_incremental_consensus_is_as_right_as_a_full_refit(tmp_path: Path, seed: int) -> None:
    from winnow.core.ml.consensus import dawid_skene

    service, counting, store, bus = _crowd(tmp_path, 200, refit=50)
    rng = np.random.default_rng(seed)
    try:
        truth = {f"i{k}": "abcd"[int(rng.integers(0, 4))] for k in range(200)}
        for who, accuracy in (("x", 0.95), ("y", 0.75), ("z", 0.6)):
            _answer_all(service, who, lambda i, q=accuracy: truth[i] if rng.random() < q
                        else "abcd"[int(rng.integers(0, 4))])
        answers = store.annotations(P)
        items = sorted({a.item_id for a in answers})
        names = sorted({a.annotator for a in answers})
        full = dawid_skene(np.array([items.index(a.item_id) for a in answers]),
                           np.array([names.index(a.annotator) for a in answers]),
                           np.array(["abcd".index(a.label) for a in answers]), len(items), len(names), 4)
        final = {label.item_id: label.label for label in store.labels(P)}
        right_full = sum(truth[i] == "abcd"[full.labels[k]] for k, i in enumerate(items))
        right_incremental = sum(truth[i] == label for i, label in final.items())
        assert len(final) == 200 and right_incremental >= right_full - 3, (right_full, right_incremental)
    finally:
        bus.close()
        store.close()


@pytest.mark.parametrize("seed", range(2))
def test_annotator_accuracy_is_estimated_without_the_bias_of_adaptive_overlap(tmp_path: Path, seed: int) -> None:
    """People right 0.95, 0.90 and 0.85 of the time answer a stream of picks and checks; an answer that
    contradicts the model's label asks a second person where the fit doubts it (most often on checks,
    where the model is right 0.97 of the time), so the items with several answers are mostly the slips.
    The service's estimates read the model's label on the tasks: each is within 0.06 of the truth
    (three standard deviations at this many answers; the bias over many seeds is tested in
    test_consensus.py), and the best is ranked above the worst. A fit of the people's answers alone
    (what the service did before) puts them far too low."""
    from winnow.core.ml.consensus import dawid_skene

    rng = np.random.default_rng(seed)
    classes = tuple("abcdefghij")
    store, bus = SqliteStore(tmp_path / "store.sqlite"), SqliteBus(tmp_path / "bus.sqlite")
    project = Project(P, classes, overlap=3)
    store.create_project(project)
    create_topics(bus, P, 1)
    n = 1500
    truth = {f"i{k}": classes[int(rng.integers(0, len(classes)))] for k in range(n)}

    def other(label: str) -> str:
        return classes[(classes.index(label) + 1 + int(rng.integers(0, len(classes) - 1))) % len(classes)]

    tasks = []
    for item_id, label in truth.items():
        if rng.random() < 0.6:  # a check: the model labels the item, right 0.97 of the time
            model_label = label if rng.random() < 0.97 else other(label)
            tasks.append(Task(P, item_id, 0.5, "v1", 0.0, "audit", 0.1, model_label, "auto_accept", 1))
        else:  # a pick: the model is unsure there, its suggestion right 0.6 of the time
            suggestion = label if rng.random() < 0.6 else other(label)
            tasks.append(Task(P, item_id, 0.5, "v1", 0.0, "label", 1.0, suggestion, None, 1))
    store.add_items([Item(P, i, f"text {i}", 0.0) for i in truth])
    store.add_tasks(tasks)
    service = LabelingService(bus, store, project, LoopConfig(consensus_refit_answers=100))
    accuracy = {"x": 0.95, "y": 0.90, "z": 0.85}
    try:
        while True:
            moved = 0
            for who in rng.permutation(list(accuracy)):
                for lease in service.lease(str(who), 20):
                    right = rng.random() < accuracy[who]
                    answer = truth[lease.item_id] if right else other(truth[lease.item_id])
                    service.submit(str(who), lease.item_id, answer)
                    moved += 1
                service.resolve()
            if not moved:
                break
        quality = service.annotator_quality()
        estimated = {who: quality[who]["estimated_accuracy"] for who in accuracy}
        assert estimated["x"] > estimated["z"], estimated
        assert all(abs(estimated[who] - q) < 0.06 for who, q in accuracy.items()), estimated
        answers = store.annotations(P)
        assert n < len(answers) < 1.5 * n  # little overlap: most items have one answer
        items, names = sorted(truth), sorted(accuracy)
        people_only = dawid_skene(np.array([items.index(a.item_id) for a in answers]),
                                  np.array([names.index(a.annotator) for a in answers]),
                                  np.array([classes.index(a.label) for a in answers]),
                                  len(items), len(names), len(classes)).annotator_accuracy
        assert np.mean([accuracy[who] - people_only[k] for k, who in enumerate(names)]) > 0.1, people_only
    finally:
        bus.close()
        store.close()


def test_a_submit_asks_again_with_the_last_fit_and_never_fits(tmp_path: Path) -> None:
    """A submit decides whether to ask again with the fit it has (provisional before the first): a fit
    made at a project's first answer would judge every later answer by one, until the next refit. The
    fit is made where the labels are (``resolve``)."""
    store, bus = SqliteStore(tmp_path / "store.sqlite"), SqliteBus(tmp_path / "bus.sqlite")
    project = Project(P, ("a", "b", "c"), overlap=3)
    store.create_project(project)
    create_topics(bus, P, 1)
    store.add_items([Item(P, f"i{k}", f"text {k}", 0.0) for k in range(2)])
    store.add_tasks([Task(P, "i0", 0.5, "v1", 0.0, "label", 1.0, "a", None, 1),
                     Task(P, "i1", 0.5, "v1", 0.0, "label", 1.0, "a", None, 1)])
    service = LabelingService(bus, store, project, LoopConfig())
    try:
        _answer(service, "x", {"i0": "b", "i1": "a"})
        assert service._fit is None
        # provisional: people and the model alike at 0.8, so an answer against the model is in doubt
        assert [t.wanted for t in store.open_tasks(P, ["i0"])] == [2]
        service.resolve()  # i1 agreed with the model: settled, and the first fit is made here
        assert service._fit is not None and {x.item_id for x in store.labels(P)} == {"i1"}
    finally:
        bus.close()
        store.close()
