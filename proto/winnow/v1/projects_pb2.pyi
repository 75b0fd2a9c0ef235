from winnow.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_STATE_UNSPECIFIED: _ClassVar[StreamState]
    STREAM_STATE_OPEN: _ClassVar[StreamState]
    STREAM_STATE_CLOSING: _ClassVar[StreamState]
    STREAM_STATE_CLOSED: _ClassVar[StreamState]
STREAM_STATE_UNSPECIFIED: StreamState
STREAM_STATE_OPEN: StreamState
STREAM_STATE_CLOSING: StreamState
STREAM_STATE_CLOSED: StreamState

class EraseItemsRequest(_message.Message):
    __slots__ = ("project", "item_ids")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    project: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, project: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ErasureReport(_message.Message):
    __slots__ = ("erased", "already_erased", "model_versions")
    ERASED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_ERASED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    erased: _containers.RepeatedScalarFieldContainer[str]
    already_erased: _containers.RepeatedScalarFieldContainer[str]
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, erased: _Optional[_Iterable[str]] = ..., already_erased: _Optional[_Iterable[str]] = ..., model_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseStreamRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("project", "state", "requested_at", "closed_at", "tasks", "low_confidence", "unlabeled")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LOW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    UNLABELED_FIELD_NUMBER: _ClassVar[int]
    project: str
    state: StreamState
    requested_at: float
    closed_at: float
    tasks: int
    low_confidence: int
    unlabeled: int
    def __init__(self, project: _Optional[str] = ..., state: _Optional[_Union[StreamState, str]] = ..., requested_at: _Optional[float] = ..., closed_at: _Optional[float] = ..., tasks: _Optional[int] = ..., low_confidence: _Optional[int] = ..., unlabeled: _Optional[int] = ...) -> None: ...

class CertifiedQuality(_message.Message):
    __slots__ = ("confidence", "accuracy_lower_bound", "auto_accepted_precision_lower_bound", "auto_accepted", "auto_accepted_errors_upper", "model_labels", "model_errors_upper", "model_errors_estimate", "audits", "audits_pending", "human_error", "human_error_rate_upper", "target_met_items", "target_met_human_labels", "thresholds_withdrawn")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    AUTO_ACCEPTED_PRECISION_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    AUTO_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AUTO_ACCEPTED_ERRORS_UPPER_FIELD_NUMBER: _ClassVar[int]
    MODEL_LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ERRORS_UPPER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ERRORS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    AUDITS_FIELD_NUMBER: _ClassVar[int]
    AUDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    HUMAN_ERROR_FIELD_NUMBER: _ClassVar[int]
    HUMAN_ERROR_RATE_UPPER_FIELD_NUMBER: _ClassVar[int]
    TARGET_MET_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TARGET_MET_HUMAN_LABELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    accuracy_lower_bound: float
    auto_accepted_precision_lower_bound: float
    auto_accepted: int
    auto_accepted_errors_upper: int
    model_labels: int
    model_errors_upper: int
    model_errors_estimate: float
    audits: int
    audits_pending: int
    human_error: str
    human_error_rate_upper: float
    target_met_items: int
    target_met_human_labels: int
    thresholds_withdrawn: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, confidence: _Optional[float] = ..., accuracy_lower_bound: _Optional[float] = ..., auto_accepted_precision_lower_bound: _Optional[float] = ..., auto_accepted: _Optional[int] = ..., auto_accepted_errors_upper: _Optional[int] = ..., model_labels: _Optional[int] = ..., model_errors_upper: _Optional[int] = ..., model_errors_estimate: _Optional[float] = ..., audits: _Optional[int] = ..., audits_pending: _Optional[int] = ..., human_error: _Optional[str] = ..., human_error_rate_upper: _Optional[float] = ..., target_met_items: _Optional[int] = ..., target_met_human_labels: _Optional[int] = ..., thresholds_withdrawn: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateProjectRequest(_message.Message):
    __slots__ = ("name", "classes", "budget_labels", "budget_per_items", "precision_target", "strategy", "overlap", "guideline_version", "guideline", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_TARGET_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
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
    guideline: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., budget_labels: _Optional[int] = ..., budget_per_items: _Optional[int] = ..., precision_target: _Optional[float] = ..., strategy: _Optional[str] = ..., overlap: _Optional[int] = ..., guideline_version: _Optional[str] = ..., guideline: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class ProjectStats(_message.Message):
    __slots__ = ("project", "items", "labels_by_source", "human_fraction", "open_tasks", "current_model_version", "threshold", "stream", "quality", "win_rates")
    class LabelsBySourceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LABELS_BY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    HUMAN_FRACTION_FIELD_NUMBER: _ClassVar[int]
    OPEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    WIN_RATES_FIELD_NUMBER: _ClassVar[int]
    project: str
    items: int
    labels_by_source: _containers.ScalarMap[str, int]
    human_fraction: float
    open_tasks: int
    current_model_version: str
    threshold: float
    stream: StreamStatus
    quality: CertifiedQuality
    win_rates: _containers.RepeatedCompositeFieldContainer[ModelWinRate]
    def __init__(self, project: _Optional[str] = ..., items: _Optional[int] = ..., labels_by_source: _Optional[_Mapping[str, int]] = ..., human_fraction: _Optional[float] = ..., open_tasks: _Optional[int] = ..., current_model_version: _Optional[str] = ..., threshold: _Optional[float] = ..., stream: _Optional[_Union[StreamStatus, _Mapping]] = ..., quality: _Optional[_Union[CertifiedQuality, _Mapping]] = ..., win_rates: _Optional[_Iterable[_Union[ModelWinRate, _Mapping]]] = ...) -> None: ...

class ModelWinRate(_message.Message):
    __slots__ = ("model_a", "model_b", "estimate", "lower", "upper", "confidence", "comparisons", "items", "pending", "unreachable", "method")
    MODEL_A_FIELD_NUMBER: _ClassVar[int]
    MODEL_B_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model_a: str
    model_b: str
    estimate: float
    lower: float
    upper: float
    confidence: float
    comparisons: int
    items: int
    pending: int
    unreachable: int
    method: str
    def __init__(self, model_a: _Optional[str] = ..., model_b: _Optional[str] = ..., estimate: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., confidence: _Optional[float] = ..., comparisons: _Optional[int] = ..., items: _Optional[int] = ..., pending: _Optional[int] = ..., unreachable: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class ExportLabelsRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects",)
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[_records_pb2.Project]
    def __init__(self, projects: _Optional[_Iterable[_Union[_records_pb2.Project, _Mapping]]] = ...) -> None: ...

class GetProjectRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class UpdateProjectRequest(_message.Message):
    __slots__ = ("project", "budget_labels", "budget_per_items", "precision_target", "strategy", "overlap", "guideline_version", "guideline", "add_classes")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_TARGET_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_FIELD_NUMBER: _ClassVar[int]
    ADD_CLASSES_FIELD_NUMBER: _ClassVar[int]
    project: str
    budget_labels: int
    budget_per_items: int
    precision_target: float
    strategy: str
    overlap: int
    guideline_version: str
    guideline: str
    add_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, project: _Optional[str] = ..., budget_labels: _Optional[int] = ..., budget_per_items: _Optional[int] = ..., precision_target: _Optional[float] = ..., strategy: _Optional[str] = ..., overlap: _Optional[int] = ..., guideline_version: _Optional[str] = ..., guideline: _Optional[str] = ..., add_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportRow(_message.Message):
    __slots__ = ("item_id", "text", "label", "source", "source_id", "aggregation", "confidence", "threshold", "probability", "guideline_version", "created_at", "answers", "responses", "answer_details")
    class AnswersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnswerDetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AnswerDetail
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AnswerDetail, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_DETAILS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    label: str
    source: str
    source_id: str
    aggregation: str
    confidence: float
    threshold: float
    probability: float
    guideline_version: str
    created_at: str
    answers: _containers.ScalarMap[str, str]
    responses: _containers.RepeatedCompositeFieldContainer[_records_pb2.Response]
    answer_details: _containers.MessageMap[str, AnswerDetail]
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., label: _Optional[str] = ..., source: _Optional[str] = ..., source_id: _Optional[str] = ..., aggregation: _Optional[str] = ..., confidence: _Optional[float] = ..., threshold: _Optional[float] = ..., probability: _Optional[float] = ..., guideline_version: _Optional[str] = ..., created_at: _Optional[str] = ..., answers: _Optional[_Mapping[str, str]] = ..., responses: _Optional[_Iterable[_Union[_records_pb2.Response, _Mapping]]] = ..., answer_details: _Optional[_Mapping[str, AnswerDetail]] = ...) -> None: ...

class AnswerDetail(_message.Message):
    __slots__ = ("strength", "reason")
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    strength: str
    reason: str
    def __init__(self, strength: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
