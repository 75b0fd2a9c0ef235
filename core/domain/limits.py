"""Upper bounds on what a caller may send, the one project-name rule, and the helper that shortens
echoed values: checked in core, so the API, the stores and both buses agree.

| limit                       | value               | why                                                     |
|-----------------------------|---------------------|---------------------------------------------------------|
| project name                | 1-229 of [A-Za-z0-9._-], first a letter or digit | Kafka's topic characters; the   |
|                             |                     | longest topic, ``winnow.<name>.items.scored``, fits 249 |
| classes per project         | 1,000               | the head's output layer and every probability vector    |
| class name                  | 256 bytes UTF-8     | a label on every record                                 |
| guideline version           | 128 bytes UTF-8     | copied into every label                                 |
| overlap                     | 1-100               | most people asked per item (adaptive overlap)           |
| budget_per_items            | 1-1,000,000         |                                                         |
| item id, annotator, version | 512 bytes UTF-8     | keys on the bus and in every index                      |
| item text                   | 64 KiB UTF-8        | ``validation.MAX_TEXT_BYTES``                           |
| items per ingest call       | 10,000              | one call is validated and written in one transaction    |
| bytes per ingest call       | 64 MiB              | held in memory until all of it is validated             |
| tasks per lease call        | 1,000               |                                                         |
| item ids per heartbeat      | 1,000               |                                                         |
| times (``ingested_at``)     | finite, 0 to 1e10 s | 0 means "now"; NaN and infinities never reach a store   |

No string may hold a NUL character (PostgreSQL refuses it; SQLite would truncate it in places).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Project

TOPIC_PREFIX = "winnow."
LONGEST_TOPIC_SUFFIX = ".items.scored"  # the longest stage suffix in ``winnow.core.loop.topics`` (a test checks)
MAX_TOPIC_CHARS = 249  # Kafka's limit on a topic name
MAX_PROJECT_NAME_CHARS = MAX_TOPIC_CHARS - len(TOPIC_PREFIX) - len(LONGEST_TOPIC_SUFFIX)  # 229
# Kafka's legal topic characters; the first is a letter or digit, so "." and ".." are never names
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]+")

MAX_CLASSES = 1000
MAX_CLASS_NAME_BYTES = 256
MAX_GUIDELINE_VERSION_BYTES = 128
MAX_GUIDELINE_BYTES = 64 * 1024  # the guideline's text
MAX_OVERLAP = 100
MAX_BUDGET_PER_ITEMS = 1_000_000
MAX_KEY_BYTES = 512  # item ids, annotators, model versions
MAX_ITEMS_PER_CALL = 10_000
MAX_LEASE_TASKS = 1000
MAX_HEARTBEAT_IDS = 1000
MAX_TIME_S = 1e10  # year 2286
MAX_INGEST_BYTES = 64 * 1024 * 1024  # an Ingest call is held in memory until all of it is validated

ECHO_CHARS = 100  # how much of a bad value an error message repeats


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters plus ``...(N chars)`` when longer."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` clipped to ``limit`` characters: what an error message may echo of a caller's
    value (a whole one could overflow gRPC's 8 KiB of metadata)."""
    return clip(repr(value), limit)


def check_string(field: str, value: str, max_bytes: int, *, required: bool = True) -> None:
    """InvalidInput(field) for an empty (when ``required``), over-long or NUL-holding string."""
    if required and not value.strip():
        raise InvalidInput(field, "is empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidInput(field, f"is {size} bytes, over the limit of {max_bytes}: {shorten(value)}")
    if "\x00" in value:
        raise InvalidInput(field, f"holds a NUL character: {shorten(value)}")


def check_project_name(name: str, field: str = "name") -> None:
    """InvalidInput(field) unless ``name`` is 1-229 of ``[A-Za-z0-9._-]``, starting with a letter or digit.

    The one rule for both buses: every topic ``winnow.<name>.<stage>`` is then a legal Kafka topic.
    Use ``field="project"`` where the name arrives as a reference to a project.
    """
    if not name:
        raise InvalidInput(field, "project name is empty")
    if len(name) > MAX_PROJECT_NAME_CHARS:
        raise InvalidInput(field, f"project name is {len(name)} chars, over the limit of {MAX_PROJECT_NAME_CHARS}: "
                                  f"{shorten(name)}")
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(field, f"project name {shorten(name)} must be letters, digits, '.', '_' or '-', "
                                  "starting with a letter or digit")


def check_topic_name(topic: str) -> None:
    """InvalidInput("topic") unless ``topic`` is 1-249 of Kafka's legal characters (and not "." or "..")."""
    if len(topic) > MAX_TOPIC_CHARS or not TOPIC_PATTERN.fullmatch(topic) or topic in (".", ".."):
        raise InvalidInput("topic", f"{shorten(topic)} is not a legal topic name: 1-{MAX_TOPIC_CHARS} of "
                                    "letters, digits, '.', '_' or '-'")


def check_project_limits(project: Project) -> None:
    """InvalidInput naming the field for a project over any limit: name, classes, class names,
    overlap, budget_per_items, guideline_version (the store's ``validate_project`` checks the rest)."""
    check_project_name(project.name)
    if len(project.classes) > MAX_CLASSES:
        raise InvalidInput("classes", f"{len(project.classes)} classes, over the limit of {MAX_CLASSES}")
    for name in project.classes:
        check_string("classes", name, MAX_CLASS_NAME_BYTES)
    if not 1 <= project.overlap <= MAX_OVERLAP:
        raise InvalidInput("overlap", f"must be in [1, {MAX_OVERLAP}], got {project.overlap}")
    if not 1 <= project.budget_per_items <= MAX_BUDGET_PER_ITEMS:
        raise InvalidInput("budget_per_items",
                           f"must be in [1, {MAX_BUDGET_PER_ITEMS}], got {project.budget_per_items}")
    check_string("guideline_version", project.guideline_version, MAX_GUIDELINE_VERSION_BYTES)
    check_string("guideline", project.guideline, MAX_GUIDELINE_BYTES, required=False)
    check_time("created_at", project.created_at)


def check_time(field: str, value: float) -> None:
    """InvalidInput(field) for a time that is NaN, infinite, negative or past ``MAX_TIME_S``."""
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TIME_S):
        raise InvalidInput(field, f"must be a finite time in [0, {MAX_TIME_S:.0f}] s, got {value!r}")


def check_count(field: str, count: int, limit: int) -> None:
    """InvalidInput(field) for more than ``limit`` things in one call."""
    if count > limit:
        raise InvalidInput(field, f"{count} in one call, over the limit of {limit}; split the call")


def check_items(items: Sequence[Item]) -> None:
    """InvalidInput naming the field for a batch over any limit: the count, an item id, a NUL in
    the text, an ``ingested_at`` that is not a finite time (the text's size is ``validate_items``'s)."""
    check_count("items", len(items), MAX_ITEMS_PER_CALL)
    for item in items:
        check_project_name(item.project, "project")
        check_string("item_id", item.item_id, MAX_KEY_BYTES)
        if "\x00" in item.text:
            raise InvalidInput("text", f"item {shorten(item.item_id)} holds a NUL character")
        check_time("ingested_at", item.ingested_at)


def check_keys(field: str, values: Iterable[str]) -> None:
    """InvalidInput(field) for an empty, over-long or NUL-holding key (item id, annotator, version)."""
    for value in values:
        check_string(field, value, MAX_KEY_BYTES)
