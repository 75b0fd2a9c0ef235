"""Erasure: an owner's erase of items, and what each worker does when it learns of one.

``erase`` removes the items from the store (text, embedding, tasks, leases, answers, gold, label; the
id stays, marked erased, so no redelivery brings the item back) and then from the bus: the SQLite
log overwrites their records, Kafka gets tombstones on its compacted topics. Items ingested through
the API never put their text on the bus (see :mod:`winnow.core.loop.ingest`). The workers learn of
erasures from the store (``ErasureWatch``): the prelabel worker drops the cached embedding of each
erased text, the selector drops the items from its backlog and rebuilds its near-duplicate guard,
both drop the items' vectors from the neighbour vote of the version they run, and the trainer
rewrites the vote of every version on disk without them (``forget_in_versions``). Later model
versions train without the items; the erase names the versions that may have learned from them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Collection, Sequence

from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.limits import MAX_HEARTBEAT_IDS, check_keys
from winnow.core.loop.topics import ITEM_KEYED, topic
from winnow.core.ml.neighbours import BLEND_FILE, NeighbourBlend
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Erasure, Store

MAX_ERASE_IDS = MAX_HEARTBEAT_IDS  # ids per erase call


def erase(bus: Bus, store: Store, project: str, item_ids: Sequence[str], actor: str, now: float) -> Erasure:
    """Erase the items from the store, then from every item-keyed topic of the project (an erase
    repeated after a failure on the bus does the bus part again)."""
    if not item_ids:
        raise InvalidInput("item_ids", "is empty")
    if len(item_ids) > MAX_ERASE_IDS:
        raise InvalidInput("item_ids", f"over {MAX_ERASE_IDS} ids in one call; split them")
    check_keys("item_ids", item_ids)
    erasure = store.erase_items(project, item_ids, actor, now)
    keys = [*erasure.erased, *erasure.already]
    for stage in ITEM_KEYED:
        bus.erase(topic(project, stage), keys)
    return erasure


class ErasureWatch:
    """The erasures a worker has not handled yet, read from the store at most every ``every_s``."""

    def __init__(self, store: Store, project: str, from_start: bool, every_s: float) -> None:
        """``from_start``: the first call returns every erasure on record (a worker whose own state,
        such as a disk cache, outlives it); else only those after this moment (state rebuilt from
        the store, where the erased items are gone)."""
        self.store, self.project, self.every_s = store, project, every_s
        seen = [] if from_start else store.erasures(project)
        self._after = seen[-1][0] if seen else 0
        self._next = 0.0 if from_start else time.monotonic() + every_s

    def new(self, force: bool = False) -> list[tuple[str, str | None]]:
        """``(item_id, text_sha256)`` of the items erased since the last call (checked only when due)."""
        if not force and time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.every_s
        rows = self.store.erasures(self.project, self._after)
        if rows:
            self._after = rows[-1][0]
        return [(item_id, digest) for _, item_id, digest in rows]


def forget_in_versions(store: Store, project: str, item_ids: Collection[str]) -> list[str]:
    """Rewrite the neighbour vote (``neighbours.npz``) of every version of ``project`` that holds a
    vector of ``item_ids`` without those rows, atomically; the versions rewritten. The one change a
    version folder ever gets: its head and threshold stay as they were trained."""
    rewritten = []
    for model in store.models(project):
        folder = Path(model.path)
        if (folder / BLEND_FILE).exists() and NeighbourBlend.holds_any(folder, item_ids):  # ids alone first
            NeighbourBlend.load(folder).without(item_ids).save(folder)
            rewritten.append(model.version)
    return rewritten
