"""Operator settings of the labeling loop (the parts that are not a project's schema)."""

from __future__ import annotations

from dataclasses import dataclass, field

from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.scoring import SCORE_NAMES


@dataclass(frozen=True)
class TrainConfig:
    """How a head is fitted on the embeddings of every human-labelled item.

    A linear single-member head (the default) is multinomial logistic regression fitted to
    convergence with L-BFGS: mean cross-entropy + ``l2 / 2 * |W|^2`` on inputs scaled by
    ``input_scale`` (the scale is folded into the saved weights). On Banking77 with 2,500
    margin-sampled labels this gave 0.929 test accuracy against 0.920 for 300 AdamW steps, at
    less than half the CPU time. MLP heads and ensembles (for BALD) use full-batch AdamW.
    """

    hidden: int = 0
    members: int = 1
    dropout: float = 0.0
    l2: float = 3e-3
    input_scale: float = 10.0
    max_iter: int = 100
    lr: float = 0.01
    weight_decay: float = 1e-2
    steps: int = 300
    warm_steps: int = 150
    folds: int = 10
    confidence_level: float = 0.95
    min_support: int = 30
    seed: int = 0


@dataclass(frozen=True)
class LoopConfig:
    """Operator settings of the loop that are not part of a project's schema.

    ``holdout_share`` of the human budget goes to items drawn uniformly from the stream (before
    auto-accept sees them): the auto-accept threshold is estimated on those alone, because the
    items the selector picks are the hard ones and would bias the estimate.
    """

    first_model_labels: int = 100
    retrain_growth: float = 0.15
    retrain_min_new: int = 50
    select_batch: int = 25
    holdout_share: float = 0.15
    near_duplicate: float = 0.97
    uncertainty: str = "margin"
    lease_s: float = 600.0
    partitions: int = 4
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.uncertainty not in SCORE_NAMES:
            raise InvalidInput("uncertainty", f"{self.uncertainty!r} is not one of {SCORE_NAMES}")
