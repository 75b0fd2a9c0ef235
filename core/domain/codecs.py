"""The bus schema: one codec per topic, turning a frozen record into its ``winnow.v1`` protobuf bytes and back.

Records stay dataclasses in process; protobuf exists only at the edges (here for the bus, and the
same ``to_message``/``from_message`` mapping serves the gRPC layer). The mapping is by field name:
a field that is None stays unset (proto3 ``optional``), an enum goes by the lower-case tail of its
value name (``LABEL_SOURCE_HUMAN`` <-> ``"human"``), a ``google.protobuf.Struct`` is a dict (its one
number type makes every number a float), a repeated field is a tuple. Decoding ignores fields it
does not know (a newer writer's), so producers can add fields before consumers learn them.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Mapping, TypeVar

from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Label, ModelVersion, Scored, Task
from winnow.v1 import records_pb2

R = TypeVar("R")
M = TypeVar("M", bound=Message)

_PLAIN, _OPTIONAL, _ENUM, _STRUCT, _RECORD, _REPEATED, _MAP, _RECORDS = range(8)


def _plain(value: Any) -> Any:
    """A Struct, ListValue or scalar as plain dicts, lists and scalars (NaN and infinities kept,
    which ``json_format`` refuses)."""
    if isinstance(value, struct_pb2.Struct):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(v) for v in value]
    return value


def _enum_prefix(field: FieldDescriptor) -> str:
    """What the enum's value names start with: ``LABEL_SOURCE_`` (from ``LABEL_SOURCE_UNSPECIFIED``)."""
    return field.enum_type.values[0].name.removesuffix("UNSPECIFIED")


@dataclass(frozen=True)
class _Plan:
    """How the fields of one record class map onto one message class (computed once per pair)."""

    record: type
    message: type[Message]
    fields: tuple[tuple[str, int, Any], ...]  # (name, kind, enum prefix or nested record class)

    def to_message(self, record: object) -> Message:
        values: dict[str, Any] = {}
        structs: list[tuple[str, Mapping[str, Any]]] = []
        for name, kind, extra in self.fields:
            value = getattr(record, name)
            if value is None:
                continue
            if kind == _ENUM:
                enum = self.message.DESCRIPTOR.fields_by_name[name].enum_type
                number = enum.values_by_name.get(extra + str(value).upper())
                if number is None:
                    raise InvalidInput(name, f"{value!r:.80} is not a {enum.name} value")
                value = number.number
            elif kind == _STRUCT:
                structs.append((name, value))
                continue
            elif kind == _RECORD:
                value = to_message(value, type(getattr(self.message(), name)))
            elif kind == _RECORDS:
                value = [to_message(v, extra[1]) for v in value]
            values[name] = value
        try:
            message = self.message(**values)
            for name, value in structs:
                getattr(message, name).update(value)
        except (TypeError, ValueError) as e:
            raise InvalidInput(self.record.__name__, f"cannot be encoded as {self.message.__name__}: {e}") from e
        return message

    def from_message(self, message: Message) -> object:
        values: dict[str, Any] = {}
        for name, kind, extra in self.fields:
            value = getattr(message, name)
            if kind == _OPTIONAL:
                value = value if message.HasField(name) else None
            elif kind == _ENUM:
                enum = message.DESCRIPTOR.fields_by_name[name].enum_type
                known = enum.values_by_number.get(value)
                if known is None or known.number == 0:
                    raise InvalidInput(name, f"{value} is not a known {enum.name} value")
                value = known.name.removeprefix(extra).lower()
            elif kind == _STRUCT:
                value = _plain(value)
            elif kind == _RECORD:
                value = from_message(value, extra)
            elif kind == _RECORDS:
                value = tuple(from_message(v, extra[0]) for v in value)
            elif kind == _REPEATED:
                value = tuple(value)
            elif kind == _MAP:
                value = dict(value)
            values[name] = value
        return self.record(**values)


@functools.cache
def _plan(record_cls: type, message_cls: type[Message]) -> _Plan:
    by_name = message_cls.DESCRIPTOR.fields_by_name
    hints = typing.get_type_hints(record_cls)
    fields = []
    for f in dataclasses.fields(record_cls):
        field = by_name.get(f.name)
        if field is None:
            raise TypeError(f"{message_cls.__name__} has no field {f.name!r} of {record_cls.__name__}")
        extra: Any = None
        if field.message_type is struct_pb2.Struct.DESCRIPTOR:
            kind = _STRUCT
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            kind = _MAP
        elif field.message_type is not None and dataclasses.is_dataclass(hints[f.name]):
            kind, extra = _RECORD, hints[f.name]
        elif field.is_repeated and field.message_type is not None:  # a tuple of records
            kind = _RECORDS
            extra = (typing.get_args(hints[f.name])[0], message_factory.GetMessageClass(field.message_type))
        elif field.is_repeated:
            kind = _REPEATED
        elif field.enum_type is not None:
            kind, extra = _ENUM, _enum_prefix(field)
        elif field.has_presence:
            kind = _OPTIONAL
        else:
            kind = _PLAIN
        fields.append((f.name, kind, extra))
    return _Plan(record_cls, message_cls, tuple(fields))


def to_message(record: object, message_cls: type[M]) -> M:
    """The message with ``record``'s fields: None leaves a field unset, enums go by name ("human").

    ``InvalidInput`` names the record field that has no protobuf form (an unknown enum name, a wrong type).
    """
    return _plan(type(record), message_cls).to_message(record)  # type: ignore[return-value]


def from_message(message: Message, record_cls: type[R]) -> R:
    """The record with ``message``'s fields (the inverse of :func:`to_message`); an unset or unknown
    enum value raises ``InvalidInput`` naming the field."""
    return _plan(record_cls, type(message)).from_message(message)  # type: ignore[return-value]


class Codec(Generic[R]):
    """One topic's record type on the wire: ``encode(record) -> bytes``, ``decode(bytes) -> record``.

    ``key_field`` is the record field that keys its messages (so the messages of one item, or one
    project's models, keep their order on one partition); ``required`` are string fields a message
    must carry to be usable, checked on decode.
    """

    def __init__(self, record: type[R], message: type[Message], key_field: str, required: tuple[str, ...]) -> None:
        self.record, self.message, self.key_field, self.required = record, message, key_field, required

    def encode(self, record: R) -> bytes:
        if type(record) is not self.record:
            raise InvalidInput("record", f"expected a {self.record.__name__}, got {type(record).__name__}")
        return to_message(record, self.message).SerializeToString()

    def decode(self, data: bytes) -> R:
        """The record in ``data``; ``InvalidInput`` (naming the field, or ``value`` for bytes that are
        not a message of this type) for a message a stage cannot use: it goes to the dead-letter topic."""
        message = self.message()
        try:
            message.ParseFromString(data)
        except (DecodeError, TypeError) as e:  # TypeError: not bytes at all
            raise InvalidInput("value", f"not a winnow.v1.{self.message.__name__} message: {e}") from e
        for name in self.required:
            if not getattr(message, name):
                raise InvalidInput(name, f"a {self.message.__name__} message has no {name}")
        return from_message(message, self.record)

    def keyed(self, records: Iterable[R]) -> list[tuple[str, bytes]]:
        """``(key, encoded record)`` pairs, ready for ``Producer.publish_many``."""
        return [(getattr(r, self.key_field), self.encode(r)) for r in records]


ITEMS_RAW: Codec[Item] = Codec(Item, records_pb2.Item, "item_id", ("project", "item_id"))
ITEMS_SCORED: Codec[Scored] = Codec(Scored, records_pb2.Scored, "item_id", ("item_id",))
TASKS: Codec[Task] = Codec(Task, records_pb2.Task, "item_id", ("project", "item_id"))
LABELS: Codec[Label] = Codec(Label, records_pb2.Label, "item_id", ("project", "item_id", "label"))
MODELS: Codec[ModelVersion] = Codec(ModelVersion, records_pb2.ModelVersion, "project", ("project", "version", "path"))

#: The codec of each stage topic (``winnow.<project>.<stage>``); the dead-letter topic carries
#: the original bytes of whatever could not be decoded, so it has none.
CODECS: Mapping[str, Codec[Any]] = {
    "items.raw": ITEMS_RAW, "items.scored": ITEMS_SCORED, "tasks": TASKS, "labels": LABELS, "models": MODELS,
}


def codec_for(stage: str) -> Codec[Any]:
    """The codec of a stage topic; ``InvalidInput("stage")`` for one that carries no records."""
    codec = CODECS.get(stage)
    if codec is None:
        raise InvalidInput("stage", f"{stage!r:.80} has no codec; the record topics are {sorted(CODECS)}")
    return codec
