"""The token role of the SQL store: API tokens as hashes, with their role, project and lifetime
(see :class:`winnow.core.ports.store.Tokens` for the contract)."""

from __future__ import annotations

from winnow.core.access.tokens import TokenInfo, check_grant
from winnow.core.adapters.sql.base import SqlBase
from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.validation import check_finite, check_text

_COLUMNS = "token_id, token_hash, role, project, name, created_at, expires_at, revoked_at"


class SqlTokens(SqlBase):
    def add_token(self, info: TokenInfo) -> None:
        """Store a token's record. InvalidInput for a bad role, project or name (``check_grant``) or a
        token id already used; NotFound("project") for a project that does not exist."""
        check_grant(info.role, info.project, info.name)
        check_text("token_id", info.token_id, info.token_hash)
        check_finite("created_at", info.created_at, info.expires_at)
        with self._tx() as tx:
            if info.project is not None:
                self._project(tx, info.project)
            if not tx.run(f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                          "ON CONFLICT (token_id) DO NOTHING",
                          (info.token_id, info.token_hash, info.role, info.project, info.name, info.created_at,
                           info.expires_at, info.revoked_at)):
                raise InvalidInput("token_id", f"token id {info.token_id[:100]!r} is taken")

    def token(self, token_id: str) -> TokenInfo:
        check_text("token_id", token_id)
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM tokens WHERE token_id = ?", (token_id,))
        if row is None:
            raise NotFound("token_id", f"no token {token_id[:100]!r}")
        return TokenInfo(*row)

    def tokens(self, project: str | None = None, name: str | None = None) -> list[TokenInfo]:
        """Every token (of ``project`` only, named ``name`` only, when given), oldest first."""
        check_text("name", name)
        where, params = [], []
        with self._tx(write=False) as tx:
            if project is not None:
                self._project(tx, project)
                where.append("project = ?")
                params.append(project)
            if name is not None:
                where.append("name = ?")
                params.append(name)
            rows = tx.all(f"SELECT {_COLUMNS} FROM tokens {'WHERE ' + ' AND '.join(where) if where else ''} "
                          "ORDER BY created_at, token_id", tuple(params))
        return [TokenInfo(*r) for r in rows]

    def revoke_token(self, token_id: str, now: float) -> TokenInfo:
        """Revoke the token from ``now`` on (a token revoked earlier keeps its first time)."""
        check_text("token_id", token_id)
        check_finite("now", now)
        with self._tx() as tx:
            tx.run("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL", (now, token_id))
            row = tx.one(f"SELECT {_COLUMNS} FROM tokens WHERE token_id = ?", (token_id,))
        if row is None:
            raise NotFound("token_id", f"no token {token_id[:100]!r}")
        return TokenInfo(*row)
