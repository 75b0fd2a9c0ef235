from winnow.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeaseTasksRequest(_message.Message):
    __slots__ = ("project", "annotator", "max_tasks")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    project: str
    annotator: str
    max_tasks: int
    def __init__(self, project: _Optional[str] = ..., annotator: _Optional[str] = ..., max_tasks: _Optional[int] = ...) -> None: ...

class LeaseTasksResponse(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[_records_pb2.Lease]
    def __init__(self, leases: _Optional[_Iterable[_Union[_records_pb2.Lease, _Mapping]]] = ...) -> None: ...

class SubmitLabelRequest(_message.Message):
    __slots__ = ("project", "annotator", "item_id", "label", "strength", "reason")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    project: str
    annotator: str
    item_id: str
    label: str
    strength: str
    reason: str
    def __init__(self, project: _Optional[str] = ..., annotator: _Optional[str] = ..., item_id: _Optional[str] = ..., label: _Optional[str] = ..., strength: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SubmitLabelResponse(_message.Message):
    __slots__ = ("recorded", "final_labels")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    FINAL_LABELS_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    final_labels: int
    def __init__(self, recorded: _Optional[bool] = ..., final_labels: _Optional[int] = ...) -> None: ...

class SkipRequest(_message.Message):
    __slots__ = ("project", "annotator", "item_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    annotator: str
    item_id: str
    def __init__(self, project: _Optional[str] = ..., annotator: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class SkipResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("project", "annotator", "item_ids")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    project: str
    annotator: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, project: _Optional[str] = ..., annotator: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("extended",)
    EXTENDED_FIELD_NUMBER: _ClassVar[int]
    extended: int
    def __init__(self, extended: _Optional[int] = ...) -> None: ...
