from winnow.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_records_pb2.Item]
    def __init__(self, items: _Optional[_Iterable[_Union[_records_pb2.Item, _Mapping]]] = ...) -> None: ...

class IngestSummary(_message.Message):
    __slots__ = ("received", "new_items")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    NEW_ITEMS_FIELD_NUMBER: _ClassVar[int]
    received: int
    new_items: int
    def __init__(self, received: _Optional[int] = ..., new_items: _Optional[int] = ...) -> None: ...
