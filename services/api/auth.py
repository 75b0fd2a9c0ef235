"""Who is calling: the credential of a gRPC call (``authorization: Bearer TOKEN`` in its metadata,
or a client certificate on a mutual-TLS channel) turned into the
:class:`~winnow.core.access.roles.Principal` the API acts for.

``Authenticator(store)`` checks each call's token against the store's hashes (so a revocation takes
effect at the next call); ``Authenticator.insecure()`` trusts every caller as the anonymous admin,
for a server its operator started ``--insecure`` on purpose (tests, a laptop without a network).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from winnow.core.access.roles import ANONYMOUS, Principal
from winnow.core.access.tokens import authenticate
from winnow.core.domain.errors import Unauthenticated
from winnow.core.ports.store import Tokens

AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case
SCHEME = "bearer "


def bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The token of an ``authorization: Bearer TOKEN`` entry; Unauthenticated when there is none."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value[:len(SCHEME)].lower() == SCHEME:
            return value[len(SCHEME):].strip()
    raise Unauthenticated("a bearer token is required: send 'authorization: Bearer wn_...'")


class Authenticator:
    """The principal of each call, from its metadata."""

    def __init__(self, store: Tokens | None, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock

    @classmethod
    def insecure(cls) -> "Authenticator":
        """Every caller is the anonymous admin and names its annotator itself."""
        return cls(None)

    @property
    def secure(self) -> bool:
        return self.store is not None

    def principal(self, metadata: Sequence[tuple[str, str | bytes]] | None,
                  peer: Mapping[str, Sequence[bytes]] | None = None) -> Principal:
        """The caller: the live token in the metadata, or else, on a mutual-TLS channel, the one live
        token whose name is the client certificate's common name (the CA vouches for the name, the
        token record gives the role and can be revoked). Unauthenticated otherwise, with one message
        whatever was wrong."""
        if self.store is None:
            return ANONYMOUS
        names = (peer or {}).get("x509_common_name", ())
        if names and not any(key == AUTHORIZATION for key, _ in metadata or ()):
            name = names[0].decode("utf-8", "replace")
            now = self.clock()
            live = [t for t in self.store.tokens(name=name) if t.live(now)]
            if len(live) != 1:
                raise Unauthenticated(f"no single live identity for the certificate {name[:100]!r}: "
                                      f"{'send a bearer token' if live else 'ask an owner for one'}")
            return live[0].principal()
        return authenticate(self.store.token, bearer(metadata), self.clock())
