"""Frozen records that cross boundaries (bus, store, API): projects, items, annotations, labels, tasks, models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

LabelSource = Literal["human", "model", "gold"]
PROJECT_KINDS = ("classification", "preference")
# a preference project's label schema: response A is better, B is better, or neither (people may say
# tie; the model labels A or B where it is sure, and may say tie)
PREFERENCE_CLASSES = ("A", "B", "tie")


@dataclass(frozen=True)
class Project:
    """A labeling project (tenant): its label schema and the operator's settings.

    ``budget_labels`` human labels are allowed per ``budget_per_items`` items streamed in;
    ``precision_target`` is what auto-accepted (model) labels must reach; ``overlap`` is the most
    people asked per item (adaptive: one answer, another only where answers disagree or the answer
    contradicts an audited model; tasks with no ``wanted`` ask exactly ``overlap``).
    """

    name: str
    classes: tuple[str, ...]
    budget_labels: int = 25
    budget_per_items: int = 100
    precision_target: float = 0.98
    strategy: str = "cluster_margin"
    overlap: int = 1
    guideline_version: str = "v1"
    created_at: float = 0.0
    guideline: str = ""  # the labeling guideline people read (the labeling page shows it)
    kind: str = "classification"  # or "preference": items are comparisons, the classes PREFERENCE_CLASSES

    def __post_init__(self) -> None:
        if not self.kind:  # unset on the wire (a message from before preference projects)
            object.__setattr__(self, "kind", "classification")

    @property
    def preference(self) -> bool:
        return self.kind == "preference"


@dataclass(frozen=True)
class Response:
    """One candidate response of a preference item, and the model that wrote it ("" when not known)."""

    text: str
    model: str = ""


@dataclass(frozen=True)
class Item:
    """One raw item streamed in by a producer. In a preference project ``text`` is the prompt and
    ``responses`` its candidate responses: a stored item is one comparison, two responses (people are
    asked which is better; see :mod:`winnow.core.domain.comparisons` for items with more)."""

    project: str
    item_id: str
    text: str
    ingested_at: float = 0.0
    responses: tuple[Response, ...] = ()


@dataclass(frozen=True)
class Scored:
    """One item scored by a prelabel worker (topic items.scored): its embedding is in the store.
    ``model_version``, ``label`` and ``confidence`` (the label's calibrated probability) are None
    before the project's first model. ``probs`` are that version's calibrated probabilities of the
    project's classes (empty before it) and ``uncertainty`` the item's uncertainty under the score
    ``uncertainty_score``: the selector decides with them where it runs the same version and score (the
    model, its neighbours' vote included, then runs once per item, in the prelabel workers), and scores
    the stored embedding with its own head elsewhere."""

    item_id: str
    model_version: str | None = None
    label: str | None = None
    confidence: float | None = None
    probs: tuple[float, ...] = ()
    uncertainty: float | None = None
    uncertainty_score: str | None = None


STRENGTHS = ("", "slightly", "much")  # how much better the preferred response is ("": not said)


@dataclass(frozen=True)
class Annotation:
    """One person's answer for one item (several per item with overlap). A comparison's answer may
    say how much better the preferred response is (``strength``, one of ``STRENGTHS``; never on a tie)
    and why (``reason``, free text)."""

    project: str
    item_id: str
    annotator: str
    label: str
    created_at: float
    strength: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Label:
    """The one final label of an item, with its provenance.

    ``source`` is human (consensus of annotations), model (auto-accepted, or given below the
    threshold when the stream closed: ``aggregation == "low_confidence"``) or gold (known answer
    given by the operator). ``source_id`` is the annotators (comma-joined) or the model version.
    ``idempotency_key`` is item id + stage + model version: writing the same key twice is a no-op,
    and an item never gets a second final label.

    ``probability`` (model labels): the chance the item had of going to a person instead, at the
    look that gave it this label. The label belongs to the certified family named by its
    ``aggregation``, whose error bound (:mod:`winnow.core.ml.certify`) covers it; None for a model
    label written before the audit existed (counted as unchecked) and for human and gold labels.
    """

    project: str
    item_id: str
    label: str
    source: LabelSource
    source_id: str
    confidence: float
    threshold: float | None
    aggregation: str
    guideline_version: str
    created_at: float
    idempotency_key: str
    probability: float | None = None


@dataclass(frozen=True)
class Task:
    """An item waiting for people, ranked by priority (higher first).

    ``kind``: label (drawn because the model is unsure), audit (drawn at a look where the model would
    have labeled it: the people's answer checks that label), gold (a known answer, shown to every
    annotator once to measure them) or holdout (a probe: drawn above the model's candidate threshold,
or anywhere while it has none, so that the next threshold has its evidence).

    ``probability`` is the chance the item had of being drawn at that look, set before the draw;
    ``model_label`` the model's label at the look (None before the first model); ``family`` (audit
    tasks) the aggregation the model label would have had (auto_accept or low_confidence).
    ``wanted`` is how many people's answers the task asks for now (adaptive overlap: the labeling
    service raises it where answers disagree, up to the project's ``overlap``); None asks for the
    project's ``overlap`` (fixed overlap).
    """

    project: str
    item_id: str
    priority: float
    model_version: str | None
    created_at: float
    kind: Literal["label", "audit", "gold", "holdout"] = "label"
    probability: float = 1.0
    model_label: str | None = None
    family: str | None = None
    wanted: int | None = None


@dataclass(frozen=True)
class Lease:
    """A task handed to one annotator until ``expires_at`` (then it is handed out again).
    ``suggestion``: the model's label, on ordinary ("label") tasks only."""

    project: str
    item_id: str
    annotator: str
    text: str
    kind: str
    expires_at: float
    suggestion: str | None = None
    responses: tuple[Response, ...] = ()  # a preference task: the two responses, A then B


@dataclass(frozen=True)
class ModelVersion:
    """A registered head version: where its files are and how it scored on held-out gold."""

    project: str
    version: str
    path: str
    created_at: float
    n_train: int
    temperature: float
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrivalDraw:
    """An item's draw at its arrival look, kept for preference projects (model evaluation): its
    chance of a person (``probability``, set before the draw), whether it was drawn, and ``expected``,
    the reward model's expected outcome for response A at that look (``P(A) + P(tie) / 2``; 0.5 before
    the first model). The model then had learned only from answers given before the item arrived."""

    item_id: str
    probability: float
    drawn: bool
    expected: float
