"""Bus topic names: one topic per stage of each project (``winnow.<project>.<stage>``) and the
consumer group of each stage."""

from __future__ import annotations

import hashlib

from winnow.core.ports.bus import Bus

STAGES = ("items.raw", "items.scored", "tasks", "labels", "models", "dead-letter")
# the topics whose records can hold an item's text (from producers that write items.raw themselves):
# compacted, so an erase's tombstones remove them (see ``Bus.erase``); the others carry ids and labels
TEXT_STAGES = ("items.raw", "dead-letter")
ITEM_KEYED = ("items.raw", "items.scored", "tasks", "labels", "dead-letter")  # keyed by item id


def topic(project: str, stage: str) -> str:
    """Bus topic of one project's stage, e.g. ``winnow.banking.items.raw``."""
    return f"winnow.{project}.{stage}"


def create_topics(bus: Bus, project: str, partitions: int) -> None:
    for stage in STAGES:
        bus.create_topic(topic(project, stage), 1 if stage == "models" else partitions, compact=stage in TEXT_STAGES)


def consumer_group(stage: str, project: str, replica: int = 0, replicas: int = 1) -> str:
    """The consumer group of one stage of one project, e.g. ``prelabel.banking``: a rebalance among
    one project's workers never pauses another project's. A stage split into ``replicas`` by shard
    gives each replica a group of its own (``selector.banking.0-of-2``): each reads every message and
    keeps its shard's."""
    return f"{stage}.{project}" if replicas == 1 else f"{stage}.{project}.{replica}-of-{replicas}"


def shard(item_id: str, shards: int) -> int:
    """The shard of an item among ``shards`` (a stable hash of its id: the same in every process and
    on every restart, whatever the bus's partitioning)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big") % shards
