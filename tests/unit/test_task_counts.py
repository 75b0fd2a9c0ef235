"""What the label benchmark says people's tasks were for (``task_counts``)."""

from winnow.core.data.simulate import task_counts
from winnow.core.domain.records import Task


def _task(kind: str, probability: float) -> Task:
    return Task("p", f"{kind}-{probability}", 0.5, "v1", 0.0, kind, probability)


def test_picks_floor_draws_probes_and_audits_are_told_apart_and_gold_is_not_counted():
    tasks = [_task("label", 1.0), _task("label", 1.0), _task("label", 0.02), _task("holdout", 0.2),
             _task("audit", 0.1), _task("audit", 0.1), _task("audit", 0.1), _task("gold", 1.0)]
    assert task_counts(tasks) == {"picks": 2, "floor": 1, "probes": 1, "audits": 3}


def test_no_tasks_counts_nothing():
    assert task_counts([]) == {"picks": 0, "floor": 0, "probes": 0, "audits": 0}
