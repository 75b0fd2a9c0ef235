"""Moving a project's labels out and in: ``export_rows`` (final labels with text, provenance and every
answer, for :mod:`winnow.core.data.formats`) and ``import_tasks`` (a Label Studio export into a
project: its items, people's answers, known answers as gold, and final labels with the provenance the
file carries, or a majority of its answers where it carries none)."""

from __future__ import annotations

from collections import Counter

from winnow.core.data.formats import Imported, parse_time, rows
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Label, Project
from winnow.core.domain.validation import validate_items
from winnow.core.loop.gold import add_gold
from winnow.core.loop.ingest import ingest
from winnow.core.loop.labels_out import write_final_labels
from winnow.core.ports.bus import Producer
from winnow.core.ports.store import Store

LABEL_SOURCES = ("human", "model", "gold")


def export_rows(store: Store, project: str, actor: str, now: float) -> list[dict]:
    """Every final label of the project with its item's text and answers (audited as an export)."""
    labels = store.labels(project)
    ids = [label.item_id for label in labels]
    items = store.find_items(project, ids) if ids else []
    data = rows(labels, {i.item_id: i.text for i in items}, store.annotations(project, ids) if ids else [],
                {i.item_id: i.responses for i in items if i.responses})
    store.audit(project, actor, "export_labels", f"{len(data)} labels", now, ids)
    return data


def _label(project: Project, item_id: str, given: list[str], who: list[str], meta: dict | None,
           now: float) -> Label:
    """The final label an imported task gets: as its Winnow provenance says, else the majority answer."""
    if meta is not None:
        source = meta.get("source")
        if source not in LABEL_SOURCES or meta.get("label") not in project.classes:
            raise InvalidInput(f"item {item_id[:100]}: meta.winnow", "has no valid source and label")
        created = meta.get("created_at")
        return Label(project.name, item_id, meta["label"], source, str(meta.get("source_id", "")),
                     float(meta.get("confidence") or 1.0), meta.get("threshold"), str(meta.get("aggregation")),
                     str(meta.get("guideline_version") or project.guideline_version),
                     parse_time(created, f"item {item_id[:100]}: meta.winnow.created_at") if created else now,
                     f"{item_id}:import:{source}", meta.get("probability"))
    top, votes = Counter(given).most_common(1)[0]
    return Label(project.name, item_id, top, "human", ",".join(sorted(set(who))), votes / len(given), None,
                 "imported_majority", project.guideline_version, now, f"{item_id}:import:human")


def import_tasks(producer: Producer, store: Store, project: Project, imported: Imported, actor: str,
                 now: float, as_gold: bool = False) -> dict[str, int]:
    """Write an imported Label Studio export into ``project``: items (ingested, so the loop sees
    them), answers, gold (its ground-truth annotations, or every answered item with ``as_gold``) and
    final labels. Everything is checked before anything is written. Returns counts."""
    validate_items(project, imported.items)
    by_item: dict[str, list] = {}
    for a in imported.answers:
        by_item.setdefault(a.item_id, []).append(a)
    gold = dict(imported.gold)
    if as_gold:
        for item_id, given in by_item.items():
            gold.setdefault(item_id, Counter(a.label for a in given).most_common(1)[0][0])
    # the provenance the file carries wins (gold items too); else a majority of the answers; a gold
    # item without provenance gets its label from ``add_gold``
    labels = [_label(project, item_id, [], [], meta, now) for item_id, meta in imported.provenance.items()]
    labels += [_label(project, item_id, [a.label for a in given], [a.annotator for a in given], None, now)
               for item_id, given in by_item.items() if item_id not in imported.provenance and item_id not in gold]
    new = ingest(producer, store, project, imported.items)
    for a in imported.answers:
        store.add_annotation(a)
    written = write_final_labels(producer, store, labels)
    if gold:
        add_gold(producer, store, project, gold, actor, now)
    producer.flush()
    store.audit(project.name, actor, "import", f"{len(imported.items)} items, {len(imported.answers)} answers, "
                f"{len(gold)} gold, {written} labels", now, [i.item_id for i in imported.items])
    return {"items": len(imported.items), "new_items": new, "answers": len(imported.answers), "gold": len(gold),
            "labels": written}
