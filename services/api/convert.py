"""Messages <-> records: one generic conversion each way, and ``ProjectStats``, the API's own record."""

from __future__ import annotations

from dataclasses import dataclass

from winnow.core.domain.codecs import from_message, to_message
from winnow.core.loop.close import StreamStatus

__all__ = ["ProjectStats", "from_message", "to_message"]  # the conversion is the bus codecs' (one mapping)


@dataclass(frozen=True)
class ProjectStats:
    """Where a project stands: items in, final labels by source, open tasks, current model."""

    project: str
    items: int
    labels_by_source: dict[str, int]
    human_fraction: float  # human labels / items
    open_tasks: int
    current_model_version: str | None
    threshold: float | None  # auto-accept threshold of the current model
    stream: StreamStatus  # open, closing or closed
