"""Exports (JSONL, CSV, Label Studio JSON) with provenance in every row, the Label Studio import, and
the round trip: export, import into a new project, export again: the same labels and provenance."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.data.formats import from_label_studio, to_label_studio, write_csv, write_jsonl
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Annotation, Item, Label, Project
from winnow.core.loop.gold import add_gold
from winnow.core.loop.ingest import ingest
from winnow.core.loop.topics import create_topics
from winnow.core.loop.transfer import export_rows, import_tasks
from winnow.services.cli import main

CLASSES = ("billing", "card", "other")


@pytest.fixture
def world(tmp_path: Path):
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    for name in ("source", "copy"):
        store.create_project(Project(name, CLASSES, overlap=2, guideline_version="g3"))
        create_topics(bus, name, 1)
    source = store.get_project("source")
    producer = bus.producer()
    ingest(producer, store, source, [Item("source", f"i{k}", f"text number {k} ✓", 10.0) for k in range(5)])
    for item_id, answers in {"i0": {"ana": "card", "ben": "card"}, "i1": {"ana": "billing", "ben": "other"}}.items():
        for who, label in answers.items():
            store.add_annotation(Annotation("source", item_id, who, label, 20.0))
    store.put_labels([
        Label("source", "i0", "card", "human", "ana,ben", 0.97, None, "dawid_skene_one_coin", "g3", 30.0, "i0:h"),
        Label("source", "i1", "billing", "human", "ana,ben", 0.6, None, "dawid_skene_one_coin", "g3", 31.0, "i1:h"),
        Label("source", "i2", "other", "model", "v0003", 0.99, 0.95, "auto_accept", "g3", 32.0, "i2:m", 0.1)])
    add_gold(producer, store, source, {"i3": "billing"}, "rita", 33.0)
    producer.flush()
    yield bus, store, producer
    producer.close()
    bus.close()
    store.close()


def test_every_row_carries_its_text_and_provenance(world) -> None:
    _, store, _ = world
    data = export_rows(store, "source", "cli:test", time.time())
    assert [r["item_id"] for r in data] == ["i0", "i1", "i2", "i3"]  # i4 has no final label yet
    i2 = data[2]
    assert (i2["text"], i2["label"], i2["source"], i2["source_id"], i2["aggregation"], i2["threshold"],
            i2["probability"], i2["guideline_version"]) == ("text number 2 ✓", "other", "model", "v0003",
                                                            "auto_accept", 0.95, 0.1, "g3")
    assert data[1]["answers"] == {"ana": "billing", "ben": "other"}
    assert [json.loads(line)["item_id"] for line in write_jsonl(data).splitlines()] == ["i0", "i1", "i2", "i3"]
    table = list(csv.DictReader(io.StringIO(write_csv(data))))
    assert table[1]["answers"] == "ana:billing;ben:other" and table[0]["threshold"] == "" and len(table) == 4
    assert store.audit_trail("source")[-1].action == "export_labels"


def test_label_studio_round_trip_keeps_labels_and_provenance(world) -> None:
    bus, store, producer = world
    first = export_rows(store, "source", "test", time.time())
    tasks = to_label_studio(first)
    assert tasks[0]["annotations"][0]["result"][0]["value"] == {"choices": ["card"]}
    assert tasks[2]["predictions"][0]["model_version"] == "v0003" and tasks[3]["annotations"][0]["ground_truth"]
    imported = from_label_studio(json.dumps(tasks), "copy", CLASSES, 50.0)
    counts = import_tasks(producer, store, store.get_project("copy"), imported, "test", 50.0)
    assert counts == {"items": 4, "new_items": 4, "answers": 4, "gold": 1, "labels": 4}
    again = export_rows(store, "copy", "test", time.time())

    assert again == first
    assert store.gold("copy") == {"i3": "billing"}


@pytest.mark.parametrize(("text", "field"), [
    ("not json", "file"),
    ('{"tasks": []}', "file"),
    ('[{"data": {"text": "a", "item_id": "x"}}, {"data": {"item_id": "y"}}]', "task 2: data.text"),
    ('[{"data": {"text": "a", "item_id": "x"}, "annotations": [{"result": [{"type": "choices", '
     '"value": {"choices": ["nope"]}}]}]}]', "task 1: annotations[1]"),
    ('[{"data": {"text": "a", "item_id": "x"}}, {"data": {"text": "b", "item_id": "x"}}]', "task 2: id"),
    ('[{"data": {"text": "a", "item_id": "x"}, "annotations": [{"result": [{"type": "choices", '
     '"value": {"choices": ["card"]}}], "created_at": "yesterday"}]}]', "task 1: annotations[1]: created_at"),
])
def test_a_bad_label_studio_file_names_the_task_and_writes_nothing(world, text: str, field: str,
                                                                  tmp_path: Path) -> None:
    _, store, _ = world
    with pytest.raises(InvalidInput) as refused:
        from_label_studio(text, "copy", CLASSES, 1.0)
    assert refused.value.field == field
    path = tmp_path / "bad.json"
    path.write_text(text)
    urls = ["--store", f"sqlite:///{tmp_path / 'store.sqlite'}", "--bus", f"sqlite:///{tmp_path / 'bus.sqlite'}"]
    assert main(["import", str(path), "--project", "copy", *urls]) == 2
    assert store.count_items("copy") == 0 and store.labels("copy") == []


def test_export_and_import_commands(world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, store, _ = world
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    out = tmp_path / "labels.json"
    assert main(["export", "--store", store_url, "--project", "source", "--format", "labelstudio", "--out",
                 str(out)]) == 0
    assert len(json.loads(out.read_text())) == 4
    assert main(["export", "--store", store_url, "--project", "source", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith(",".join(("item_id", "text", "label")))
    assert main(["import", str(out), "--project", "copy", "--store", store_url, "--bus",
                 f"sqlite:///{tmp_path / 'bus.sqlite'}"]) == 0
    assert "items 4" in capsys.readouterr().out and len(store.labels("copy")) == 4
