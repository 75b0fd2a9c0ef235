"""Validation rules that need no database: one copy of each rule and each error message."""

from __future__ import annotations

from typing import Sequence

from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.records import Item, Project

MAX_TEXT_BYTES = 64 * 1024


def validate_items(project: Project, items: Sequence[Item]) -> None:
    """Check a batch before anything is written; errors name the field and the item."""
    seen: set[str] = set()
    for item in items:
        if item.project != project.name:
            raise NotFound("project", f"item {item.item_id!r} names project {item.project!r}, not {project.name!r}")
        if not item.item_id or not item.item_id.strip():
            raise InvalidInput("item_id", "an item has no id")
        if item.item_id in seen:
            raise InvalidInput("item_id", f"{item.item_id!r} appears twice in one batch")
        seen.add(item.item_id)
        if not item.text.strip():
            raise InvalidInput("text", f"item {item.item_id!r} has empty text")
        if len(item.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput("text", f"item {item.item_id!r} is {len(item.text.encode())} bytes, over {MAX_TEXT_BYTES}")
