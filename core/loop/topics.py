"""Bus topic names: one topic per stage of each project (``winnow.<project>.<stage>``) and the
consumer group of each stage."""

from __future__ import annotations

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


def consumer_group(stage: str, project: str) -> str:
    """The consumer group of one stage of one project, e.g. ``prelabel.banking``: a rebalance among
    one project's workers never pauses another project's."""
    return f"{stage}.{project}"
