"""One error tree for the whole library; services map it to gRPC status codes in one place."""

from __future__ import annotations


class WinnowError(Exception):
    """Base of every error Winnow raises on purpose."""


class InvalidInput(WinnowError):
    """A caller gave a value that cannot be used; ``field`` names it (maps to INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(WinnowError):
    """A named thing (project, item, model version, task) does not exist (maps to NOT_FOUND)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelFileError(WinnowError):
    """A model file is missing, truncated or not a model Winnow can run."""


class EmptyPoolError(WinnowError):
    """A selector was asked to pick from no candidates."""


class BusError(WinnowError):
    """The message bus failed (broker unreachable, log corrupt)."""


class Unauthenticated(WinnowError):
    """A call came without a credential, or with one that is unknown, expired or revoked (maps to
    UNAUTHENTICATED). The message never says which."""


class PermissionDenied(WinnowError):
    """The caller is known but its role does not allow the action on that project (maps to
    PERMISSION_DENIED); the message never says whether another project exists."""


class LeaseRequired(WinnowError):
    """An answer or a skip came for an item the annotator holds no live lease on (maps to
    FAILED_PRECONDITION): lease it (again) first."""
