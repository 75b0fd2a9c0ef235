"""Gold: known answers for items already ingested, given by a reviewer (or the demo's operator).

Each gold answer is the item's final label (source "gold") and a gold task that every annotator
answers once: their answers on it measure them (``LabelingService.annotator_quality``, the certified
human error rate of ``quality``).
"""

from __future__ import annotations

from collections.abc import Mapping

from winnow.core.domain.records import Label, Project, Task
from winnow.core.loop.labels_out import write_final_labels
from winnow.core.ports.bus import Producer
from winnow.core.ports.store import Store

GOLD_PRIORITY = 1e9  # gold tasks come first: every annotator is measured from the start


def add_gold(producer: Producer, store: Store, project: Project, answers: Mapping[str, str], actor: str,
             now: float) -> int:
    """Record the answers (InvalidInput "label" outside the schema, NotFound "item_id": nothing is
    written), write them as final labels where the item has none (published through ``producer``;
    the caller flushes) and queue their gold tasks. Returns how many gold items the project has."""
    store.set_gold(project.name, answers)
    write_final_labels(producer, store, [
        Label(project.name, item_id, answer, "gold", actor, 1.0, None, "gold", project.guideline_version, now,
              f"{item_id}:gold") for item_id, answer in answers.items()])
    store.add_tasks([Task(project.name, item_id, GOLD_PRIORITY, None, now, "gold") for item_id in answers])
    return len(store.gold(project.name))
