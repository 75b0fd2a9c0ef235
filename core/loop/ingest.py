"""Ingest: validate a batch of items, store it and publish references to it onto items.raw.

The bus never carries the text of an item ingested here: items.raw holds the item without its text
(the prelabel worker reads the text from the store), so erasing an item from the store erases its
text everywhere Winnow put it (the claim-check pattern). Producers that write items.raw themselves
put the text on the topic; an erase then leaves a tombstone there (see ``Bus.erase``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from winnow.core.domain.codecs import ITEMS_RAW
from winnow.core.domain.comparisons import comparisons
from winnow.core.domain.limits import check_items
from winnow.core.domain.records import Item, Project
from winnow.core.domain.validation import validate_items
from winnow.core.loop.topics import topic
from winnow.core.ports.bus import Producer
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


def ingest(producer: Producer, store: Store, project: Project, items: Sequence[Item]) -> int:
    """Validate, store and publish references to the items onto items.raw; returns how many were new
    (ids are idempotent; an erased id is skipped). A preference item with more than two responses is
    stored and published as its pairs (:func:`~winnow.core.domain.comparisons.comparisons`).

    Returns once the items are durable on the bus (``producer`` is flushed; a failed publish raises
    ``BusError``, and the caller's retry is idempotent). ``producer`` must be the caller's alone while
    this runs (``ProducerPool.lease`` where callers are concurrent), so that its flush reports exactly
    this call's messages.
    """
    validate_items(project, items)
    items = comparisons(project, items)  # a preference item with more than two responses: its pairs
    check_items(items)
    new = store.add_items(items)
    erased = store.erased_among(project.name, [i.item_id for i in items])  # skipped by the store, not sent on
    references = [dataclasses.replace(i, text="", responses=()) for i in items if i.item_id not in erased]
    producer.publish_many(topic(project.name, "items.raw"), ITEMS_RAW.keyed(references))
    producer.flush()
    return new
