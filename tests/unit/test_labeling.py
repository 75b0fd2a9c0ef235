"""The labeling service's adaptive overlap on a real SQLite store and bus: one answer settles an item,
a disagreement asks one more person, up to the project's overlap; consensus then makes the label."""

from __future__ import annotations

from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.topics import create_topics

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
    # i0: one answer settles an uncertain pick, even against the model; i2 agrees with the model;
    # i1: the only answer contradicts an audited (confident) model: a second person is asked;
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
