"""WinnowError <-> gRPC status, in one place.

The server side maps every raised error to a status: a WinnowError to its code with a message
naming the field (the bad value clipped), bytes that are not a valid request message to
INVALID_ARGUMENT, anything unexpected to INTERNAL with one log line and nothing of the payload.
The client side (:func:`winnow_errors`) raises the same WinnowError back from the status.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from winnow.core.domain.errors import (
    BusError,
    EmptyPoolError,
    InvalidInput,
    LeaseRequired,
    ModelFileError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    WinnowError,
)
from winnow.core.domain.limits import clip

log = logging.getLogger(__name__)

# The one mapping from core errors to gRPC codes (any other WinnowError is INTERNAL); the client
# maps back by the class name sent in the trailing metadata.
ERROR_CODES: dict[type[WinnowError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ModelFileError: grpc.StatusCode.FAILED_PRECONDITION,
    EmptyPoolError: grpc.StatusCode.FAILED_PRECONDITION,
    BusError: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    LeaseRequired: grpc.StatusCode.FAILED_PRECONDITION,
}
ERROR_CLASS_KEY = "winnow-error"  # trailing metadata: the WinnowError subclass name
ERROR_FIELD_KEY = "winnow-field"  # trailing metadata: the field an InvalidInput or NotFound names
# a status message is sent percent-encoded in metadata (up to 12 bytes per character), and all the
# metadata must fit in 8 KiB: 400 characters stay under 5 KiB however exotic they are
MAX_DETAILS_CHARS = 400
INTERNAL_DETAILS = "internal error (logged on the server)"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Undecodable:
    """What the request deserializer hands a servicer in place of bytes that are not a valid message
    (grpc would otherwise log a traceback and answer INTERNAL)."""

    message_type: str  # e.g. "winnow.v1.Item"
    reason: str  # the parser's words, e.g. "String field had bad UTF-8"; never the bytes

    def error(self) -> InvalidInput:
        return InvalidInput("request", f"not a valid {self.message_type} message: {self.reason}")


def request_decoder(message_cls: type[M]) -> Callable[[bytes], M | Undecodable]:
    """A request deserializer for ``message_cls`` that returns :class:`Undecodable` instead of raising."""
    name = message_cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> M | Undecodable:
        try:
            return message_cls.FromString(data)
        except (DecodeError, UnicodeDecodeError, ValueError, RecursionError) as error:
            reason = str(error).rpartition(": ")[2] if isinstance(error, DecodeError) else type(error).__name__
            return Undecodable(name, clip(reason, 100))

    return decode


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def abort(context: grpc.ServicerContext, rpc: str, error: Exception) -> NoReturn:
    """End the call with ``error``'s status (the one place errors become statuses)."""
    if isinstance(error, WinnowError):
        code = next((c for cls, c in ERROR_CODES.items() if isinstance(error, cls)), grpc.StatusCode.INTERNAL)
    else:
        code = grpc.StatusCode.INTERNAL
    if code is grpc.StatusCode.INTERNAL:  # a bug: one line to find it by, nothing of the payload
        log.error("rpc %s failed code=INTERNAL error=%s at=%s", rpc, type(error).__name__, _where(error))
        context.abort(code, INTERNAL_DETAILS)
    metadata = [(ERROR_CLASS_KEY, type(error).__name__)]
    if isinstance(error, (InvalidInput, NotFound)):
        metadata.append((ERROR_FIELD_KEY, error.field))
    log.info("rpc %s failed code=%s error=%s", rpc, code.name, type(error).__name__)
    context.set_trailing_metadata(metadata)
    context.abort(code, clip(str(error), MAX_DETAILS_CHARS))


def _decoded(requests: Iterable[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


def _guarded(rpc: str, responses: Iterable[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    try:
        yield from responses
    except Exception as error:
        abort(context, rpc, error)


def guarded(behaviour: Callable[[Any, grpc.ServicerContext], Any], rpc: str
            ) -> Callable[[Any, grpc.ServicerContext], Any]:
    """``behaviour`` (one RPC of any servicer, ours or grpc's health and reflection) with every
    error, raised before or while streaming, turned into a status by :func:`abort`, and an
    undecodable request (or one undecodable message of a client stream) into INVALID_ARGUMENT
    naming "request"."""

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            if not isinstance(request, Message):  # a client stream
                request = _decoded(request)
            result = behaviour(request, context)
        except Exception as error:
            abort(context, rpc, error)
        return result if result is None or isinstance(result, Message) else _guarded(rpc, result, context)

    return handler


_ERROR_CLASSES = {cls.__name__: cls for cls in ERROR_CODES}


@contextmanager
def winnow_errors() -> Iterator[None]:
    """Client side: raise a failed call as the WinnowError the server raised (InvalidInput,
    NotFound, ...) with the same message; any other failure as WinnowError naming the code."""
    try:
        yield
    except grpc.RpcError as error:
        details = error.details() or ""  # type: ignore[attr-defined]
        metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
        cls = _ERROR_CLASSES.get(metadata.get(ERROR_CLASS_KEY, ""))
        if cls in (InvalidInput, NotFound) and ERROR_FIELD_KEY in metadata:
            field = metadata[ERROR_FIELD_KEY]
            raise cls(field, details.removeprefix(f"{field}: ")) from error
        if cls is not None and cls not in (InvalidInput, NotFound):
            raise cls(details) from error
        raise WinnowError(f"{error.code().name}: {details}") from error  # type: ignore[attr-defined]
