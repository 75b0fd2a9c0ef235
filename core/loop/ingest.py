"""Ingest: validate a batch of items, store it and publish it onto items.raw."""

from __future__ import annotations

import logging
from typing import Sequence

from winnow.core.domain.records import Item, Project, to_json
from winnow.core.domain.validation import validate_items
from winnow.core.loop.topics import topic
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


def ingest(bus: Bus, store: Store, project: Project, items: Sequence[Item]) -> int:
    """Validate, store and publish items onto items.raw; returns how many were new (ids are idempotent)."""
    validate_items(project, items)
    new = store.add_items(items)
    bus.publish_many(topic(project.name, "items.raw"), [(i.item_id, to_json(i)) for i in items])
    bus.flush()
    return new
