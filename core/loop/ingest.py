"""Ingest: validate a batch of items, store it and publish it onto items.raw."""

from __future__ import annotations

import logging
from typing import Sequence

from winnow.core.domain.codecs import ITEMS_RAW
from winnow.core.domain.records import Item, Project
from winnow.core.domain.validation import validate_items
from winnow.core.loop.topics import topic
from winnow.core.ports.bus import Producer
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


def ingest(producer: Producer, store: Store, project: Project, items: Sequence[Item]) -> int:
    """Validate, store and publish items onto items.raw; returns how many were new (ids are idempotent).

    Returns once the items are durable on the bus (``producer`` is flushed; a failed publish raises
    ``BusError``, and the caller's retry is idempotent). ``producer`` must be the caller's alone while
    this runs (``ProducerPool.lease`` where callers are concurrent), so that its flush reports exactly
    this call's messages.
    """
    validate_items(project, items)
    new = store.add_items(items)
    producer.publish_many(topic(project.name, "items.raw"), ITEMS_RAW.keyed(items))
    producer.flush()
    return new
