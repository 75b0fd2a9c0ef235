from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SetGoldRequest(_message.Message):
    __slots__ = ("project", "answers")
    class AnswersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    project: str
    answers: _containers.ScalarMap[str, str]
    def __init__(self, project: _Optional[str] = ..., answers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetGoldResponse(_message.Message):
    __slots__ = ("gold_items",)
    GOLD_ITEMS_FIELD_NUMBER: _ClassVar[int]
    gold_items: int
    def __init__(self, gold_items: _Optional[int] = ...) -> None: ...

class AnnotatorQualityRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class AnnotatorQuality(_message.Message):
    __slots__ = ("annotator", "answers", "gold_accuracy", "estimated_accuracy")
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    GOLD_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    annotator: str
    answers: int
    gold_accuracy: float
    estimated_accuracy: float
    def __init__(self, annotator: _Optional[str] = ..., answers: _Optional[int] = ..., gold_accuracy: _Optional[float] = ..., estimated_accuracy: _Optional[float] = ...) -> None: ...

class AnnotatorQualityResponse(_message.Message):
    __slots__ = ("annotators",)
    ANNOTATORS_FIELD_NUMBER: _ClassVar[int]
    annotators: _containers.RepeatedCompositeFieldContainer[AnnotatorQuality]
    def __init__(self, annotators: _Optional[_Iterable[_Union[AnnotatorQuality, _Mapping]]] = ...) -> None: ...

class DisagreementsRequest(_message.Message):
    __slots__ = ("project", "limit")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project: str
    limit: int
    def __init__(self, project: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Disagreement(_message.Message):
    __slots__ = ("item_id", "answers", "final_label", "model_label")
    class AnswersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    FINAL_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_LABEL_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    answers: _containers.ScalarMap[str, str]
    final_label: str
    model_label: str
    def __init__(self, item_id: _Optional[str] = ..., answers: _Optional[_Mapping[str, str]] = ..., final_label: _Optional[str] = ..., model_label: _Optional[str] = ...) -> None: ...

class DisagreementsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Disagreement]
    def __init__(self, items: _Optional[_Iterable[_Union[Disagreement, _Mapping]]] = ...) -> None: ...

class GoldItemsRequest(_message.Message):
    __slots__ = ("project", "limit")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project: str
    limit: int
    def __init__(self, project: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GoldItem(_message.Message):
    __slots__ = ("item_id", "text", "label", "answers", "matched")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    label: str
    answers: int
    matched: int
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., label: _Optional[str] = ..., answers: _Optional[int] = ..., matched: _Optional[int] = ...) -> None: ...

class GoldItemsResponse(_message.Message):
    __slots__ = ("items", "total")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GoldItem]
    total: int
    def __init__(self, items: _Optional[_Iterable[_Union[GoldItem, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...
