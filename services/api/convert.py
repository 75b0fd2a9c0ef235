"""Messages <-> records: one generic conversion each way, and ``ProjectStats``, the API's own record."""

from __future__ import annotations

from dataclasses import dataclass

from winnow.core.domain.codecs import from_message, to_message
from winnow.core.loop.close import StreamStatus
from winnow.core.loop.evaluation import ModelWinRate
from winnow.core.loop.quality import Quality

__all__ = ["CertifiedQuality", "ProjectStats", "from_message", "to_message"]  # the conversion is the bus codecs' (one mapping)


@dataclass(frozen=True)
class CertifiedQuality:
    """The certified bounds of :class:`~winnow.core.loop.quality.Quality`, flat, as the API sends them."""

    confidence: float
    accuracy_lower_bound: float | None
    auto_accepted_precision_lower_bound: float | None
    auto_accepted: int
    auto_accepted_errors_upper: int
    model_labels: int
    model_errors_upper: int
    model_errors_estimate: float
    audits: int
    audits_pending: int
    human_error: str
    human_error_rate_upper: float
    target_met_items: int | None = None
    target_met_human_labels: int | None = None
    thresholds_withdrawn: tuple[str, ...] = ()

    @staticmethod
    def of(q: Quality) -> "CertifiedQuality":
        return CertifiedQuality(q.confidence, q.accuracy_lower_bound, q.auto_accepted_precision_lower_bound,
                                q.auto_accepted.labels, q.auto_accepted.hidden_errors_upper, q.model.labels,
                                q.model.hidden_errors_upper, q.model.estimate, q.model.drawn, q.model.pending,
                                q.human_error, q.human_error_rate_upper,
                                None if q.target_met is None else q.target_met["items"],
                                None if q.target_met is None else q.target_met["human_labels"],
                                q.thresholds_withdrawn)


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
    quality: CertifiedQuality  # the certified bounds on the final labels
    win_rates: tuple[ModelWinRate, ...] = ()  # preference projects: each pair of models (model evaluation)
