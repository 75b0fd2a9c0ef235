from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_LABEL: _ClassVar[TaskKind]
    TASK_KIND_HOLDOUT: _ClassVar[TaskKind]
    TASK_KIND_GOLD: _ClassVar[TaskKind]
    TASK_KIND_AUDIT: _ClassVar[TaskKind]

class LabelSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_SOURCE_UNSPECIFIED: _ClassVar[LabelSource]
    LABEL_SOURCE_HUMAN: _ClassVar[LabelSource]
    LABEL_SOURCE_MODEL: _ClassVar[LabelSource]
    LABEL_SOURCE_GOLD: _ClassVar[LabelSource]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_LABEL: TaskKind
TASK_KIND_HOLDOUT: TaskKind
TASK_KIND_GOLD: TaskKind
TASK_KIND_AUDIT: TaskKind
LABEL_SOURCE_UNSPECIFIED: LabelSource
LABEL_SOURCE_HUMAN: LabelSource
LABEL_SOURCE_MODEL: LabelSource
LABEL_SOURCE_GOLD: LabelSource

class Project(_message.Message):
    __slots__ = ("name", "classes", "budget_labels", "budget_per_items", "precision_target", "strategy", "overlap", "guideline_version", "created_at", "guideline", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_TARGET_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    budget_labels: int
    budget_per_items: int
    precision_target: float
    strategy: str
    overlap: int
    guideline_version: str
    created_at: float
    guideline: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., budget_labels: _Optional[int] = ..., budget_per_items: _Optional[int] = ..., precision_target: _Optional[float] = ..., strategy: _Optional[str] = ..., overlap: _Optional[int] = ..., guideline_version: _Optional[str] = ..., created_at: _Optional[float] = ..., guideline: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("text", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    model: str
    def __init__(self, text: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("project", "item_id", "text", "ingested_at", "responses")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    project: str
    item_id: str
    text: str
    ingested_at: float
    responses: _containers.RepeatedCompositeFieldContainer[Response]
    def __init__(self, project: _Optional[str] = ..., item_id: _Optional[str] = ..., text: _Optional[str] = ..., ingested_at: _Optional[float] = ..., responses: _Optional[_Iterable[_Union[Response, _Mapping]]] = ...) -> None: ...

class Scored(_message.Message):
    __slots__ = ("item_id", "model_version", "label", "confidence", "probs", "uncertainty", "uncertainty_score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    model_version: str
    label: str
    confidence: float
    probs: _containers.RepeatedScalarFieldContainer[float]
    uncertainty: float
    uncertainty_score: str
    def __init__(self, item_id: _Optional[str] = ..., model_version: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., probs: _Optional[_Iterable[float]] = ..., uncertainty: _Optional[float] = ..., uncertainty_score: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("project", "item_id", "priority", "model_version", "created_at", "kind", "probability", "model_label", "family", "wanted")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_LABEL_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    WANTED_FIELD_NUMBER: _ClassVar[int]
    project: str
    item_id: str
    priority: float
    model_version: str
    created_at: float
    kind: TaskKind
    probability: float
    model_label: str
    family: str
    wanted: int
    def __init__(self, project: _Optional[str] = ..., item_id: _Optional[str] = ..., priority: _Optional[float] = ..., model_version: _Optional[str] = ..., created_at: _Optional[float] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., probability: _Optional[float] = ..., model_label: _Optional[str] = ..., family: _Optional[str] = ..., wanted: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("project", "item_id", "annotator", "text", "kind", "expires_at", "suggestion", "responses")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    project: str
    item_id: str
    annotator: str
    text: str
    kind: TaskKind
    expires_at: float
    suggestion: str
    responses: _containers.RepeatedCompositeFieldContainer[Response]
    def __init__(self, project: _Optional[str] = ..., item_id: _Optional[str] = ..., annotator: _Optional[str] = ..., text: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., expires_at: _Optional[float] = ..., suggestion: _Optional[str] = ..., responses: _Optional[_Iterable[_Union[Response, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("project", "item_id", "label", "source", "source_id", "confidence", "threshold", "aggregation", "guideline_version", "created_at", "idempotency_key", "probability")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    project: str
    item_id: str
    label: str
    source: LabelSource
    source_id: str
    confidence: float
    threshold: float
    aggregation: str
    guideline_version: str
    created_at: float
    idempotency_key: str
    probability: float
    def __init__(self, project: _Optional[str] = ..., item_id: _Optional[str] = ..., label: _Optional[str] = ..., source: _Optional[_Union[LabelSource, str]] = ..., source_id: _Optional[str] = ..., confidence: _Optional[float] = ..., threshold: _Optional[float] = ..., aggregation: _Optional[str] = ..., guideline_version: _Optional[str] = ..., created_at: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("project", "version", "path", "created_at", "n_train", "temperature", "threshold", "metrics")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    N_TRAIN_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    project: str
    version: str
    path: str
    created_at: float
    n_train: int
    temperature: float
    threshold: float
    metrics: _struct_pb2.Struct
    def __init__(self, project: _Optional[str] = ..., version: _Optional[str] = ..., path: _Optional[str] = ..., created_at: _Optional[float] = ..., n_train: _Optional[int] = ..., temperature: _Optional[float] = ..., threshold: _Optional[float] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
