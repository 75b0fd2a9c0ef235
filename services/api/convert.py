"""Messages <-> records: one generic conversion each way, and ``ProjectStats``, the API's own record."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from winnow.core.loop.close import StreamStatus

M = TypeVar("M", bound=Message)
R = TypeVar("R")


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


def _enum_prefix(field: FieldDescriptor) -> str:
    return field.enum_type.values[0].name.removesuffix("UNSPECIFIED")  # e.g. "LABEL_SOURCE_"


def to_message(record: object, message_cls: type[M]) -> M:
    """The message with ``record``'s fields: None leaves a field unset, enums go by name ("human")."""
    fields = message_cls.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if value is None:
            continue
        field = fields[f.name]
        if field.enum_type is not None:
            value = field.enum_type.values_by_name[_enum_prefix(field) + value.upper()].number
        elif field.message_type is not None and dataclasses.is_dataclass(value):
            value = to_message(value, type(getattr(message_cls(), f.name)))
        values[f.name] = value
    return message_cls(**values)


_type_hints = functools.cache(typing.get_type_hints)  # evaluating a record's annotations costs more than a message


def from_message(message: Message, record_cls: type[R]) -> R:
    """The record with ``message``'s fields (the inverse of :func:`to_message`)."""
    fields = message.DESCRIPTOR.fields_by_name
    hints = _type_hints(record_cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record_cls):  # type: ignore[arg-type]
        field, value = fields[f.name], getattr(message, f.name)
        if field.message_type is not None and dataclasses.is_dataclass(hints[f.name]):
            value = from_message(value, hints[f.name])  # a nested record
        elif field.message_type is struct_pb2.Struct.DESCRIPTOR:
            value = json_format.MessageToDict(value)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = dict(value)
        elif field.is_repeated:
            value = tuple(value)
        elif field.has_presence and not message.HasField(f.name):
            value = None
        elif field.enum_type is not None:
            value = field.enum_type.values_by_number[value].name.removeprefix(_enum_prefix(field)).lower()
        values[f.name] = value
    return record_cls(**values)
