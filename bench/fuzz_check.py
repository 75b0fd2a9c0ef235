"""Whether a store and its bus agree after a fuzz run: no half-written project, item, label or task."""

from __future__ import annotations

import math
from pathlib import Path

from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain import limits
from winnow.core.domain.errors import WinnowError
from winnow.core.loop.topics import STAGES, topic

MAX_PROBLEMS = 20


def _topic_keys(bus: SqliteBus, name: str) -> list[str]:
    """Every key on ``name`` from the start (a fresh consumer group)."""
    keys: list[str] = []
    with bus.consumer([name], "fuzz-check") as consumer:
        while batch := consumer.poll(10_000, timeout_s=0.5):
            keys += [m.key for m in batch]
    return keys


def check_store(store_path: Path, bus_path: Path) -> dict:
    """Check, for every project row: its name is legal and every stage topic exists; the items on
    items.raw are exactly the stored items (none stored without its message, none published without
    its row); stored items have finite times, ids and texts within the limits; every annotation,
    label and open task is of a stored item; no item has two final labels; every answer is a class.

    Returns counts, up to ``MAX_PROBLEMS`` problems, and ``consistent`` (no problem found).
    """
    problems: list[str] = []
    counts = {"projects": 0, "items": 0, "raw_messages": 0, "annotations": 0, "labels": 0, "open_tasks": 0}

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text[:300])
        counts["problems"] = counts.get("problems", 0) + 1

    store, bus = SqliteStore(store_path), SqliteBus(bus_path)
    try:
        for project in store.list_projects():
            name = project.name
            counts["projects"] += 1
            try:
                limits.check_project_limits(project)
            except WinnowError as error:
                problem(f"project row over a limit: {error}")
            for stage in STAGES:
                try:
                    bus.consumer([topic(name, stage)], "fuzz-check-topics").close()
                except WinnowError:
                    problem(f"project {limits.shorten(name)} has a row but no {stage} topic")
            raw = set(_topic_keys(bus, topic(name, "items.raw")))
            counts["raw_messages"] += len(raw)
            items = {item.item_id: item for item in store.get_items(name, sorted(raw))} if raw else {}
            stored = store.count_items(name)
            counts["items"] += stored
            if missing := raw - set(items):
                problem(f"{len(missing)} ids on {name}'s items.raw have no row, e.g. {limits.shorten(min(missing))}")
            if stored != len(items):
                problem(f"{stored} items stored in {name} but {len(items)} of them on items.raw")
            for item in items.values():
                if not (math.isfinite(item.ingested_at) and 0 < item.ingested_at <= limits.MAX_TIME_S):
                    problem(f"item {limits.shorten(item.item_id)} has ingested_at {item.ingested_at!r}")
                if "\x00" in item.item_id + item.text or not item.text.strip() or not item.item_id.strip():
                    problem(f"item {limits.shorten(item.item_id)} has an empty or NUL-holding id or text")
            answers = store.annotations(name)
            labels = store.labels(name)
            tasks = store.open_tasks(name)
            counts["annotations"] += len(answers)
            counts["labels"] += len(labels)
            counts["open_tasks"] += len(tasks)
            for kind, ids in (("annotation", [a.item_id for a in answers]), ("label", [x.item_id for x in labels]),
                              ("open task", [t.item_id for t in tasks])):
                if orphans := set(ids) - set(items):
                    problem(f"{len(orphans)} {kind}s in {name} of items not stored, "
                            f"e.g. {limits.shorten(min(orphans))}")
            if len({x.item_id for x in labels}) != len(labels):
                problem(f"an item of {name} has two final labels")
            if wrong := {a.label for a in answers} - set(project.classes):
                problem(f"answers in {name} outside its classes: {limits.shorten(sorted(wrong))}")
    finally:
        store.close()
        bus.close()
    return {"consistent": not problems, **counts, "problems": problems}
