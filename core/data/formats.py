"""Exports people already use, and the Label Studio import: final labels with their provenance as
JSONL, CSV and Label Studio JSON; a Label Studio export read back into items, answers and gold.

Every exported row carries the label's provenance (source, who or which model version, how it was
aggregated, under which guideline version, when, with what confidence, threshold and check
probability) and the item's text. Label Studio JSON follows its documented task format: ``data``
(the text), ``annotations`` (one per person, a ``choices`` result each), ``predictions`` (a model's
label with its score); Winnow's provenance rides in each task's ``meta.winnow``. An import reads it
whole before anything is written and names the task (by its position) and field of the first problem.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Annotation, Item, Label, Response

FORMATS = ("jsonl", "csv", "labelstudio", "dpo")
ROW_FIELDS = ("item_id", "text", "label", "source", "source_id", "aggregation", "confidence", "threshold",
              "probability", "guideline_version", "created_at", "answers")
PAIR_FIELDS = ("response_a", "response_b", "model_a", "model_b")
FROM_NAME, TO_NAME = "label", "text"  # the Label Studio labeling config: <Choices name="label" toName="text">


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def parse_time(value: object, where: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 time; InvalidInput(where) otherwise."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidInput(where, f"is not a time: {str(value)[:40]!r}") from None


def rows(labels: Sequence[Label], texts: Mapping[str, str], answers: Iterable[Annotation],
         responses: Mapping[str, Sequence[Response]] | None = None) -> list[dict]:
    """One row per final label: the item's text, the label, its provenance and every person's answer;
    a comparison's row also has its two ``responses`` (``{"text", "model"}``, A then B)."""
    given: dict[str, dict[str, str]] = {}
    said: dict[str, dict[str, dict[str, str]]] = {}  # a comparison's strengths and reasons, by annotator
    for a in answers:
        given.setdefault(a.item_id, {})[a.annotator] = a.label
        if a.strength or a.reason:
            said.setdefault(a.item_id, {})[a.annotator] = {"strength": a.strength, "reason": a.reason}
    out = []
    for x in labels:
        row = {"item_id": x.item_id, "text": texts.get(x.item_id, ""), "label": x.label, "source": x.source,
               "source_id": x.source_id, "aggregation": x.aggregation, "confidence": x.confidence,
               "threshold": x.threshold, "probability": x.probability, "guideline_version": x.guideline_version,
               "created_at": _iso(x.created_at), "answers": given.get(x.item_id, {})}
        if responses and responses.get(x.item_id):
            row["responses"] = [{"text": r.text, "model": r.model} for r in responses[x.item_id]]
        if x.item_id in said:
            row["answer_details"] = said[x.item_id]
        out.append(row)
    return out


def to_dpo(data: list[dict]) -> list[dict]:
    """Preference rows in the layout reward-model and DPO trainers read (TRL's ``prompt``, ``chosen``,
    ``rejected``): one line per comparison whose final label prefers a response (ties and rows without
    responses are left out), with the models that wrote the two responses and the label's provenance
    (who or which reward model version decided, how, with what confidence and certified family)."""
    out = []
    for row in data:
        pair = row.get("responses")
        if not pair or row["label"] not in ("A", "B"):
            continue
        chosen, rejected = (pair[0], pair[1]) if row["label"] == "A" else (pair[1], pair[0])
        out.append({"prompt": row["text"], "chosen": chosen["text"], "rejected": rejected["text"],
                    "id": row["item_id"], "chosen_model": chosen["model"], "rejected_model": rejected["model"],
                    "provenance": {**{k: row[k] for k in ROW_FIELDS if k not in ("item_id", "text")},
                                   "answer_details": row.get("answer_details", {})}})
    return out


def write_jsonl(data: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data)


def write_csv(data: list[dict]) -> str:
    """CSV with a header; ``answers`` as ``annotator:label`` pairs joined by ``;``; comparisons add
    ``response_a``, ``response_b`` and the models that wrote them."""
    pairs = any("responses" in row for row in data)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS + (PAIR_FIELDS if pairs else ()), lineterminator="\n")
    writer.writeheader()
    for row in data:
        pair = row.get("responses") or [{"text": "", "model": ""}] * 2
        flat = {k: v for k, v in row.items() if k not in ("responses", "answer_details")}
        writer.writerow({**flat, "answers": ";".join(f"{who}:{label}" for who, label in sorted(row["answers"].items())),
                         **{k: "" if row[k] is None else row[k] for k in ("threshold", "probability")},
                         **({"response_a": pair[0]["text"], "response_b": pair[1]["text"], "model_a": pair[0]["model"],
                             "model_b": pair[1]["model"]} if pairs else {})})
    return out.getvalue()


def _choice(label: str) -> list[dict]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


def to_label_studio(data: list[dict]) -> list[dict]:
    """Label Studio tasks: the text, one annotation per person's answer (or the gold answer), the
    model's label as a prediction, Winnow's provenance in ``meta.winnow``."""
    tasks = []
    for n, row in enumerate(data, start=1):
        annotations = [{"id": k, "completed_by": who, "result": _choice(label), "created_at": row["created_at"],
                        "ground_truth": False}
                       for k, (who, label) in enumerate(sorted(row["answers"].items()), start=1)]
        if row["source"] == "gold":  # the known answer: Label Studio's ground truth, apart from people's
            annotations.append({"id": len(annotations) + 1, "completed_by": row["source_id"],
                                "result": _choice(row["label"]), "created_at": row["created_at"],
                                "ground_truth": True})
        predictions = ([{"model_version": row["source_id"], "score": row["confidence"],
                         "result": _choice(row["label"])}] if row["source"] == "model" else [])
        provenance = {k: row[k] for k in ROW_FIELDS if k not in ("text", "answers")}
        data = {"text": row["text"], "item_id": row["item_id"]}
        if row.get("responses"):  # Label Studio's pairwise template reads two texts beside the prompt
            data.update(response_a=row["responses"][0]["text"], response_b=row["responses"][1]["text"])
        tasks.append({"id": n, "data": data, "annotations": annotations,
                      "predictions": predictions, "meta": {"winnow": provenance}})
    return tasks


@dataclass(frozen=True)
class Imported:
    """What a Label Studio export holds for a project: items, people's answers, known answers (tasks
    whose annotation is marked ``ground_truth``), and Winnow's provenance where it wrote the file."""

    items: list[Item]
    answers: list[Annotation]
    gold: dict[str, str]
    provenance: dict[str, dict]


def from_label_studio(text: str, project: str, classes: Sequence[str], now: float) -> Imported:
    """Read a Label Studio JSON export (a list of tasks); InvalidInput naming ``task N: field`` for
    the first problem (bad JSON, no text, an unknown class, a repeated id), before anything is used."""
    try:
        tasks = json.loads(text)
    except ValueError as e:
        raise InvalidInput("file", f"is not JSON: {e}") from None
    if not isinstance(tasks, list):
        raise InvalidInput("file", "must be a JSON list of Label Studio tasks")
    known = set(classes)
    items: list[Item] = []
    answers: list[Annotation] = []
    gold: dict[str, str] = {}
    provenance: dict[str, dict] = {}
    seen: set[str] = set()
    for n, task in enumerate(tasks, start=1):
        where = f"task {n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InvalidInput(where, "has no data object")
        data = task["data"]
        body = data.get(TO_NAME)
        if not isinstance(body, str) or not body.strip():
            raise InvalidInput(f"{where}: data.{TO_NAME}", "is missing or empty")
        item_id = str(data.get("item_id") or task.get("id") or "")
        if not item_id:
            raise InvalidInput(f"{where}: id", "is missing (neither data.item_id nor id)")
        if item_id in seen:
            raise InvalidInput(f"{where}: id", f"{item_id[:100]!r} appears twice")
        seen.add(item_id)
        items.append(Item(project, item_id, body, now))
        for k, annotation in enumerate(task.get("annotations") or [], start=1):
            spot = f"{where}: annotations[{k}]"
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            labels = [c for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"
                      for c in (r.get("value") or {}).get("choices") or []]
            if len(labels) != 1:
                raise InvalidInput(spot, f"needs exactly one choice, has {len(labels)}")
            if labels[0] not in known:
                raise InvalidInput(spot, f"{labels[0][:100]!r} is not one of the project's classes")
            who = str(annotation.get("completed_by") or f"labelstudio-{k}")
            if isinstance(annotation.get("completed_by"), dict):  # Label Studio's expanded user object
                who = str(annotation["completed_by"].get("email") or annotation["completed_by"].get("id"))
            when = parse_time(annotation.get("created_at", now), f"{spot}: created_at")
            if annotation.get("ground_truth"):  # a known answer, not a person's answer
                gold[item_id] = labels[0]
            else:
                answers.append(Annotation(project, item_id, who, labels[0], when))
        meta = (task.get("meta") or {}).get("winnow")
        if isinstance(meta, dict):
            provenance[item_id] = meta
    return Imported(items, answers, gold, provenance)
