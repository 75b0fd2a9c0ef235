"""Roles per project, the actions each allows, and the ``Principal`` a call acts as.

A principal is one credential's identity: a name, a role and the one project it belongs to (the
global ``admin`` has none and may do everything everywhere). Every API method names its action and
its project and asks :meth:`Principal.require` before it touches the store, so a principal of one
project can neither see nor change another, and a refusal never says whether that project exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from winnow.core.domain.errors import PermissionDenied


class Action(str, Enum):
    """Everything the API lets a caller do, one value per right (several RPCs may share one)."""

    CREATE_PROJECT = "create_project"  # admin only: projects are made before anyone belongs to them
    SETTINGS = "settings"  # change a project's settings
    INGEST = "ingest"
    CLOSE = "close"
    LABEL = "label"  # lease, submit, skip, heartbeat, each on the caller's own leases
    STATS = "stats"
    EXPORT = "export"
    VERSIONS = "versions"
    PROMOTE = "promote"
    GOLD = "gold"
    QUALITY = "quality"  # annotator quality and disagreements
    TOKENS = "tokens"  # create, list and revoke the project's tokens
    AUDIT = "audit"  # read the audit trail
    ERASE = "erase"


_VIEW = frozenset({Action.STATS, Action.EXPORT, Action.VERSIONS})
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    "viewer": _VIEW,
    "reviewer": _VIEW | {Action.GOLD, Action.QUALITY},
    # a producer watches the stream it feeds (its state, what is labeled), nothing of the labels
    "producer": frozenset({Action.INGEST, Action.CLOSE, Action.STATS}),
    "annotator": frozenset({Action.LABEL}),
    "owner": frozenset(Action) - {Action.CREATE_PROJECT},
    "admin": frozenset(Action),
}
ROLES = tuple(ROLE_ACTIONS)
PROJECT_ROLES = tuple(r for r in ROLES if r != "admin")


@dataclass(frozen=True)
class Principal:
    """Who a call acts as. ``project`` is None only for the global admin (and the anonymous caller
    of a server run ``--insecure``, which trusts every caller: then ``anonymous`` is True and the
    annotator a request names is taken as given)."""

    name: str
    role: str
    project: str | None
    token_id: str = ""
    anonymous: bool = False

    def can(self, action: Action, project: str | None) -> bool:
        if action not in ROLE_ACTIONS[self.role]:
            return False
        return self.project is None or self.project == project

    def require(self, action: Action, project: str | None) -> None:
        """PermissionDenied unless this principal may do ``action`` on ``project``. The message names
        the action and the caller, never the project: a refusal reads the same whether or not
        another project of that name exists."""
        if not self.can(action, project):
            raise PermissionDenied(f"{self.role} {self.name!r} may not {action.value} here")

    def projects(self, names: list[str]) -> list[str]:
        """The names among ``names`` this principal belongs to (all of them for the admin)."""
        return list(names) if self.project is None else [n for n in names if n == self.project]


ANONYMOUS = Principal("anonymous", "admin", None, anonymous=True)
