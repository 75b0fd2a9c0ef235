"""API tokens: minted at random, shown once, kept only as a hash, expiring and revocable.

A token reads ``wn_<id>_<secret>``: the id (12 hex characters) names its row and appears in lists
and the audit trail; the secret (32 random bytes) is never stored. The store keeps the SHA-256 of
the whole token, which is enough for a random 256-bit secret (a slow password hash protects
guessable passwords, not random keys) and lets every call be checked in microseconds. A presented
token is compared with the stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from winnow.core.access.roles import ROLES, Principal
from winnow.core.domain.errors import InvalidInput, NotFound, Unauthenticated
from winnow.core.domain.limits import MAX_KEY_BYTES, MAX_TIME_S, check_project_name, check_string

PREFIX = "wn_"
_TOKEN = re.compile(r"wn_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
MAX_TOKEN_CHARS = 64  # anything longer is refused before it is hashed


@dataclass(frozen=True)
class TokenInfo:
    """What the store keeps of a token (never the token): its id, whose it is and its lifetime.
    ``name`` is the identity the holder acts as (an annotator's labels carry it)."""

    token_id: str
    token_hash: str
    role: str
    project: str | None
    name: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.project, self.token_id)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_grant(role: str, project: str | None, name: str) -> None:
    """InvalidInput naming the field when a token for ``role`` on ``project`` named ``name`` cannot
    exist: the admin has no project, every other role has one."""
    if role not in ROLES:
        raise InvalidInput("role", f"{role[:100]!r} is not one of {', '.join(ROLES)}")
    if role == "admin" and project is not None:
        raise InvalidInput("project", "the admin role is global: give no project")
    if role != "admin":
        if project is None:
            raise InvalidInput("project", f"a token of role {role} belongs to one project: name it")
        check_project_name(project, "project")
    check_string("name", name, MAX_KEY_BYTES)


def mint(role: str, project: str | None, name: str | None, now: float,
         expires_in_s: float | None = None) -> tuple[str, TokenInfo]:
    """A new token and the record to store for it (the token itself is returned once, here).
    ``name`` defaults to ``<role>-<id>``."""
    token_id = secrets.token_hex(6)
    name = name if name else f"{role}-{token_id}"
    check_grant(role, project, name)
    if expires_in_s is not None and not 0 < expires_in_s <= MAX_TIME_S:
        raise InvalidInput("expires_in_s", f"must be in (0, {MAX_TIME_S:g}], got {expires_in_s}")
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    info = TokenInfo(token_id, digest(token), role, project, name, now,
                     None if expires_in_s is None else now + expires_in_s)
    return token, info


def token_id_of(token: str) -> str:
    """The id part of a well-formed token; Unauthenticated (saying nothing more) otherwise."""
    match = _TOKEN.fullmatch(token) if len(token) <= MAX_TOKEN_CHARS else None
    if match is None:
        raise Unauthenticated("a bearer token is required: send 'authorization: Bearer wn_...'")
    return match.group(1)


def authenticate(find, token: str, now: float) -> Principal:
    """The principal ``token`` stands for. ``find(token_id)`` returns the stored TokenInfo or raises
    NotFound. Unauthenticated, with one message for all of them, when the token is malformed,
    unknown, does not match its hash, has expired or was revoked."""
    token_id = token_id_of(token)
    try:
        info = find(token_id)
    except NotFound:
        info = None
    if info is None or not hmac.compare_digest(info.token_hash, digest(token)) or not info.live(now):
        raise Unauthenticated("the token is unknown, expired or revoked")
    return info.principal()


def issue(store, actor: str, role: str, project: str | None, name: str | None, now: float,
          expires_in_s: float | None = None) -> tuple[str, TokenInfo]:
    """Mint a token, store its record and audit it (under ``actor``); returns the token, shown once.
    ``store`` holds the ``Tokens`` and ``AuditLog`` roles."""
    token, info = mint(role, project, name, now, expires_in_s)
    store.add_token(info)
    store.audit(project, actor, "token_create", f"{info.role} {info.name}", now, [info.token_id])
    return token, info


def revoke(store, actor: str, token_id: str, now: float) -> TokenInfo:
    """Revoke a token and audit it; NotFound("token_id") when there is none."""
    info = store.revoke_token(token_id, now)
    store.audit(info.project, actor, "token_revoke", f"{info.role} {info.name}", now, [token_id])
    return info
