"""Validation rules that need no database: one copy of each rule and each error message.

Ingest checks a batch with :func:`validate_items`; the stores check every record and argument with
the ``validate_*`` and ``check_*`` functions before they open a transaction, so a refused call
writes nothing.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.limits import MAX_KEY_BYTES, check_items, check_project_limits
from winnow.core.domain.records import (
    PREFERENCE_CLASSES,
    PROJECT_KINDS,
    STRENGTHS,
    Annotation,
    Item,
    Label,
    ModelVersion,
    Project,
    Task,
)

MAX_TEXT_BYTES = 64 * 1024
MAX_RESPONSES = 16  # candidate responses per preference item: 16 give 120 comparisons
MAX_REASON_BYTES = 4096  # a person's reason for a preference


def validate_items(project: Project, items: Sequence[Item], references: bool = False) -> None:
    """Check a batch before anything is written; errors name the field and the item (the limits of
    :func:`~winnow.core.domain.limits.check_items` first: count, ids, NUL, finite times).
    ``references``: the items are references to stored ones (``ingest`` publishes them without text
    or responses): they must have neither, and what they refer to was checked when it was stored."""
    check_items(items)
    seen: set[str] = set()
    for item in items:
        if item.project != project.name:
            raise NotFound("project", f"item {item.item_id!r} names project {item.project!r}, not {project.name!r}")
        if not item.item_id or not item.item_id.strip():
            raise InvalidInput("item_id", "an item has no id")
        if item.item_id in seen:
            raise InvalidInput("item_id", f"{item.item_id!r} appears twice in one batch")
        seen.add(item.item_id)
        if references:
            if item.text or item.responses:
                raise InvalidInput("text", f"item {item.item_id!r} is a reference: it has no text or responses")
            continue
        if not item.text.strip():
            raise InvalidInput("text", f"item {item.item_id!r} has empty text")
        if len(item.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput("text", f"item {item.item_id!r} is {len(item.text.encode())} bytes, over {MAX_TEXT_BYTES}")
        check_responses(project, item)


def check_responses(project: Project, item: Item, stored: bool = False) -> None:
    """InvalidInput("responses") unless a preference project's item has 2 to ``MAX_RESPONSES``
    responses (exactly 2 once ``stored``: a comparison) and a classification project's has none;
    each response's "text" non-empty, without NUL and at most ``MAX_TEXT_BYTES``, its "model" a
    short name."""
    k, where = len(item.responses), f"item {item.item_id[:100]!r}"
    if not project.preference:
        if k:
            raise InvalidInput("responses", f"{where}: project {project.name!r} classifies texts; its items have "
                                            "no responses")
        return
    if k < 2 or k > (2 if stored else MAX_RESPONSES):
        raise InvalidInput("responses", f"{where} has {k} responses; a preference item needs 2 to "
                                        f"{2 if stored else MAX_RESPONSES}")
    for n, response in enumerate(item.responses):
        if not isinstance(response.text, str) or not response.text.strip():
            raise InvalidInput("responses.text", f"{where}: response {n} is empty")
        check_text("responses.text", response.text)
        check_text("responses.model", response.model)
        if len(response.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput("responses.text", f"{where}: response {n} is over {MAX_TEXT_BYTES} bytes")
        if len(response.model.encode()) > MAX_KEY_BYTES:
            raise InvalidInput("responses.model", f"{where}: response {n}'s model name is over {MAX_KEY_BYTES} bytes")


# -- the store's rules (no database access; the stores call these before opening a transaction) --
SOURCES = ("human", "model", "gold")  # Label.source
KINDS = ("label", "audit", "gold", "holdout")  # Task.kind
FAMILIES = (None, "auto_accept", "low_confidence")  # Task.family: the certified families of model labels
# the selection strategies' names (``winnow.core.select.strategies`` registers one class per name
# and refuses to import if the two disagree): validating a project needs no FAISS
STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "kcenter", "cluster_margin", "badge")


def check_text(field: str, *values: str | None) -> None:
    """InvalidInput(field) when a value holds a NUL character (PostgreSQL cannot store one, and
    SQLite would cut strings at it in places); None is allowed (an optional field)."""
    for value in values:
        if value is not None and "\x00" in value:
            raise InvalidInput(field, f"holds a NUL character: {value[:100]!r}")


def check_finite(field: str, *values: float | None) -> None:
    """InvalidInput(field) when a value (a time, a lease length) is NaN or infinite; None is allowed."""
    for value in values:
        if value is not None and not math.isfinite(value):
            raise InvalidInput(field, f"must be finite, got {value!r}")


def validate_project(project: Project) -> None:
    """InvalidInput: "name" (empty), "classes" (none, empty or repeated), "overlap" (below 1),
    "budget_per_items" (below 1), "budget_labels" (outside [0, budget_per_items]),
    "precision_target" (outside (0, 1)), "strategy" (not one of ``STRATEGIES``), "created_at"
    (not finite), and a NUL in "name", "classes" or "guideline_version"; then every limit of
    :func:`~winnow.core.domain.limits.check_project_limits` (the name rule, class count and size,
    overlap, budget_per_items, guideline_version)."""
    check_text("name", project.name)
    check_text("classes", *project.classes)
    check_text("guideline_version", project.guideline_version)
    check_text("guideline", project.guideline)
    check_finite("created_at", project.created_at)
    check_project_limits(project)  # the one name rule (both buses) and the upper bounds
    if not project.classes or any(not c.strip() for c in project.classes):
        raise InvalidInput("classes", f"classes must be non-empty names, got {list(project.classes)}")
    if len(set(project.classes)) != len(project.classes):
        raise InvalidInput("classes", f"classes repeat: {list(project.classes)}")
    if project.overlap < 1:
        raise InvalidInput("overlap", f"overlap must be at least 1, got {project.overlap}")
    if project.budget_per_items < 1:
        raise InvalidInput("budget_per_items", f"must be at least 1, got {project.budget_per_items}")
    if not 0 <= project.budget_labels <= project.budget_per_items:
        raise InvalidInput("budget_labels", f"must be in [0, budget_per_items={project.budget_per_items}], "
                                            f"got {project.budget_labels}")
    if not 0.0 < project.precision_target < 1.0:
        raise InvalidInput("precision_target", f"must be in (0, 1), got {project.precision_target}")
    if project.strategy not in STRATEGIES:
        raise InvalidInput("strategy", f"unknown strategy {project.strategy!r}; expected one of {STRATEGIES}")
    if project.kind not in PROJECT_KINDS:
        raise InvalidInput("kind", f"unknown project kind {project.kind!r}; expected one of {PROJECT_KINDS}")
    if project.preference and tuple(project.classes) != PREFERENCE_CLASSES:
        raise InvalidInput("classes", f"a preference project's classes are {list(PREFERENCE_CLASSES)}, "
                                      f"got {list(project.classes)}")


def validate_item_fields(items: Sequence[Item]) -> None:
    """InvalidInput("item_id" | "text") for an empty id or text, "project" | "item_id" | "text" for a
    NUL, "ingested_at" when not finite (the store's rule; ingest checks more)."""
    for item in items:
        check_text("project", item.project)
        check_text("item_id", item.item_id)
        check_text("text", item.text)
        check_text("responses", *(r.text for r in item.responses), *(r.model for r in item.responses))
        check_finite("ingested_at", item.ingested_at)
        if not item.item_id.strip():
            raise InvalidInput("item_id", f"empty item id in project {item.project!r}")
        if not item.text.strip():
            raise InvalidInput("text", f"item {item.item_id!r} has empty text")


def validate_vectors(item_ids: Sequence[str], vectors: np.ndarray) -> None:
    """InvalidInput("vectors") unless ``vectors`` is [len(item_ids), D]."""
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise InvalidInput("vectors", f"expected [{len(item_ids)}, D], got {list(vectors.shape)}")


def validate_tasks(tasks: Sequence[Task]) -> None:
    """InvalidInput("kind" | "priority") for a kind not in ``KINDS`` or a NaN priority,
    "created_at" when not finite, and a NUL in "project", "item_id" or "model_version"."""
    for t in tasks:
        check_text("project", t.project)
        check_text("item_id", t.item_id)
        check_text("model_version", t.model_version)
        check_finite("created_at", t.created_at)
        if t.kind not in KINDS:
            raise InvalidInput("kind", f"task kind must be one of {list(KINDS)}, got {t.kind!r}")
        if math.isnan(t.priority):
            raise InvalidInput("priority", f"priority of item {t.item_id!r} is NaN")
        if not 0.0 <= t.probability <= 1.0:  # also refuses NaN
            raise InvalidInput("probability", f"probability of item {t.item_id!r} must be in [0, 1], "
                                              f"got {t.probability!r}")
        check_text("model_label", t.model_label)
        if t.wanted is not None and (isinstance(t.wanted, bool) or not isinstance(t.wanted, int) or t.wanted < 1):
            raise InvalidInput("wanted", f"answers wanted for item {t.item_id!r} must be an integer >= 1, got {t.wanted!r}")
        if t.family not in FAMILIES:
            raise InvalidInput("family", f"task family must be one of {list(FAMILIES)}, got {t.family!r}")


def validate_priorities(priorities: Mapping[str, float]) -> None:
    """InvalidInput("priority") when a priority is NaN; "item_id" for a NUL in an id."""
    check_text("item_id", *priorities)
    if any(math.isnan(p) for p in priorities.values()):
        raise InvalidInput("priority", "a priority is NaN")


def validate_annotator(annotator: str) -> None:
    """InvalidInput("annotator") when empty, blank or holding a NUL."""
    check_text("annotator", annotator)
    if not annotator.strip():
        raise InvalidInput("annotator", "annotator is empty")


def validate_lease(annotator: str, lease_s: float, overlap: int) -> None:
    """InvalidInput: "annotator" (empty), "lease_s" (not positive or not finite), "overlap" (below 1)."""
    validate_annotator(annotator)
    if not 0 < lease_s < math.inf:
        raise InvalidInput("lease_s", f"lease_s must be positive and finite, got {lease_s}")
    if overlap < 1:
        raise InvalidInput("overlap", f"overlap must be at least 1, got {overlap}")


def validate_annotation(annotation: Annotation) -> None:
    """InvalidInput: "annotator" (empty), "created_at" (not finite), a NUL in any text field. The
    class is checked against the project by :func:`check_label`."""
    validate_annotator(annotation.annotator)
    check_text("project", annotation.project)
    check_text("item_id", annotation.item_id)
    check_text("label", annotation.label)
    check_text("reason", annotation.reason)
    check_finite("created_at", annotation.created_at)
    if annotation.strength not in STRENGTHS:
        raise InvalidInput("strength", f"must be one of {list(STRENGTHS)}, got {annotation.strength[:40]!r}")
    if len(annotation.reason.encode()) > MAX_REASON_BYTES:
        raise InvalidInput("reason", f"is over {MAX_REASON_BYTES} bytes")


def check_answer(project: Project, annotation: Annotation) -> None:
    """InvalidInput("label") outside the project's classes; "strength" or "reason" on a project that
    classifies (they belong to comparisons), and "strength" on a tie (neither response is better)."""
    check_label(project, annotation.label)
    if not project.preference:
        for name in ("strength", "reason"):
            if getattr(annotation, name):
                raise InvalidInput(name, f"project {project.name!r} classifies texts; a {name} belongs to a comparison")
    elif annotation.strength and annotation.label not in ("A", "B"):
        raise InvalidInput("strength", f"a {annotation.label!r} answer prefers no response; it has no strength")


def validate_label(label: Label) -> None:
    """InvalidInput: "source" (not in ``SOURCES``), "confidence" (outside [0, 1]), "idempotency_key"
    (empty), "created_at" (not finite), "threshold" (NaN; None and inf are allowed), a NUL in any
    text field. The class is checked against the project by :func:`check_label`."""
    for name in ("project", "item_id", "label", "source_id", "aggregation", "guideline_version", "idempotency_key"):
        check_text(name, getattr(label, name))
    if label.source not in SOURCES:
        raise InvalidInput("source", f"source must be one of {list(SOURCES)}, got {label.source!r}")
    if not 0.0 <= label.confidence <= 1.0:
        raise InvalidInput("confidence", f"confidence must be in [0, 1], got {label.confidence}")
    if not label.idempotency_key:
        raise InvalidInput("idempotency_key", f"empty idempotency key for item {label.item_id!r}")
    if label.probability is not None and not 0.0 <= label.probability <= 1.0:
        raise InvalidInput("probability", f"probability must be in [0, 1], got {label.probability!r}")
    check_finite("created_at", label.created_at)
    if label.threshold is not None and math.isnan(label.threshold):
        raise InvalidInput("threshold", f"threshold of item {label.item_id!r} is NaN")


def validate_model(model: ModelVersion) -> None:
    """InvalidInput: a NUL in "project", "version" or "path"; "version" empty; "created_at" or
    "temperature" not finite; "threshold" NaN (inf is kept: nothing could be certified)."""
    check_text("project", model.project)
    check_text("version", model.version)
    check_text("path", model.path)
    if not model.version.strip():
        raise InvalidInput("version", "model version is empty")
    check_finite("created_at", model.created_at)
    check_finite("temperature", model.temperature)
    if math.isnan(model.threshold):
        raise InvalidInput("threshold", f"threshold of model {model.version!r} is NaN")


def check_label(project: Project, label: str) -> None:
    """InvalidInput("label") when ``label`` is not one of the project's classes."""
    if label not in project.classes:
        raise InvalidInput("label", f"{label!r} not in the project's label schema {list(project.classes)}")
