"""gRPC over TLS and mutual TLS, with certificates the test makes: a client without the CA (or
without its own certificate, where one is required) cannot connect; with them, every call works."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import InvalidInput, Unauthenticated, WinnowError
from winnow.core.domain.records import Item
from winnow.core.testing.certs import TestCa
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import ServerTls, create_server
from winnow.services.client import WinnowClient

CA = TestCa()
OTHER_CA = TestCa("someone else's CA")
SERVER = CA.issue("winnow server", server=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[str, str, SqliteStore]]:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    yield bus, store  # type: ignore[misc]
    bus.close()
    store.close()


def _serve(world, tls: ServerTls):
    bus, store = world
    server, port = create_server(bus, store, Authenticator(store), tls=tls)
    server.start()
    return server, f"localhost:{port}", issue(store, "test", "admin", None, "admin", time.time())[0]


def test_tls_needs_the_ca_and_then_the_whole_api_works(world) -> None:
    server, target, admin = _serve(world, ServerTls(SERVER.cert, SERVER.key))
    try:
        for settings in ({}, {"tls": True}, {"tls_ca": OTHER_CA.pem}):  # plaintext, system roots, a wrong CA
            with WinnowClient(target, admin, timeout_s=5, **settings) as client, \
                    pytest.raises(WinnowError, match="UNAVAILABLE"):
                client.whoami()
        with WinnowClient(target, admin, timeout_s=10, tls_ca=CA.pem) as client:
            assert client.whoami().role == "admin"
            client.create_project("p", ("a", "b"))
            assert client.ingest([Item("p", "i0", "hello")]) == 1
            assert client.stats("p").items == 1
    finally:
        server.stop(1.0).wait()


def test_mutual_tls_refuses_a_client_without_a_certificate_its_ca_signed(world) -> None:
    server, target, admin = _serve(world, ServerTls(SERVER.cert, SERVER.key, client_ca=CA.pem))
    mine, theirs = CA.issue("alice", server=False), OTHER_CA.issue("alice", server=False)
    try:
        for settings in ({"tls_ca": CA.pem},  # no client certificate
                         {"tls_ca": CA.pem, "tls_cert": theirs.cert, "tls_key": theirs.key}):
            with WinnowClient(target, admin, timeout_s=5, **settings) as client, pytest.raises(WinnowError):
                client.whoami()
        with WinnowClient(target, admin, timeout_s=10, tls_ca=CA.pem, tls_cert=mine.cert, tls_key=mine.key) as client:
            assert client.whoami().role == "admin"  # a bearer token, when sent, names the caller
            client.create_project("p", ("a", "b"))
            client.create_project("q", ("a", "b"))
        store = world[1]
        cert_only = {"tls_ca": CA.pem, "tls_cert": mine.cert, "tls_key": mine.key}
        with WinnowClient(target, None, timeout_s=10, **cert_only) as client:
            with pytest.raises(Unauthenticated, match="ask an owner"):  # no identity named alice yet
                client.whoami()
            _, first = issue(store, "test", "annotator", "p", "alice", time.time())
            assert (client.whoami().name, client.whoami().role, client.whoami().project) == ("alice", "annotator", "p")
            _, second = issue(store, "test", "viewer", "q", "alice", time.time())
            with pytest.raises(Unauthenticated, match="send a bearer token"):  # two identities: which one?
                client.whoami()
            store.revoke_token(second.token_id, time.time())
            assert client.whoami().token_id == first.token_id
            store.revoke_token(first.token_id, time.time())  # revoking the record revokes the certificate
            with pytest.raises(Unauthenticated):
                client.whoami()
    finally:
        server.stop(1.0).wait()


def test_tls_files_are_checked_before_anything_starts(tmp_path: Path) -> None:
    cert, key = SERVER.write(tmp_path, "server")
    assert ServerTls.load(None, None) is None
    assert ServerTls.load(cert, key).cert == SERVER.cert
    for args, flag in [((cert, None), "--tls-key"), ((None, key), "--tls-cert"),
                       ((None, None, cert), "--tls-client-ca"), ((tmp_path / "none.crt", key), "--tls-cert"),
                       ((cert, key, tmp_path / "none.crt"), "--tls-client-ca")]:
        with pytest.raises(InvalidInput) as refused:
            ServerTls.load(*args)
        assert refused.value.field == flag
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(InvalidInput, match="not a PEM file"):
        ServerTls.load(cert, tmp_path / "junk.key")
