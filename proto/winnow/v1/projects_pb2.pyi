from winnow.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CreateProjectRequest(_message.Message):
    __slots__ = ("name", "classes", "budget_labels", "budget_per_items", "precision_target", "strategy", "overlap", "guideline_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_TARGET_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    GUIDELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    budget_labels: int
    budget_per_items: int
    precision_target: float
    strategy: str
    overlap: int
    guideline_version: str
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., budget_labels: _Optional[int] = ..., budget_per_items: _Optional[int] = ..., precision_target: _Optional[float] = ..., strategy: _Optional[str] = ..., overlap: _Optional[int] = ..., guideline_version: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class ProjectStats(_message.Message):
    __slots__ = ("project", "items", "labels_by_source", "human_fraction", "open_tasks", "current_model_version", "threshold")
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
    project: str
    items: int
    labels_by_source: _containers.ScalarMap[str, int]
    human_fraction: float
    open_tasks: int
    current_model_version: str
    threshold: float
    def __init__(self, project: _Optional[str] = ..., items: _Optional[int] = ..., labels_by_source: _Optional[_Mapping[str, int]] = ..., human_fraction: _Optional[float] = ..., open_tasks: _Optional[int] = ..., current_model_version: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class ExportLabelsRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...
