"""The store over TLS to PostgreSQL, through the DSN alone: a server this test starts with a
certificate it makes; ``sslmode=verify-full`` with the CA connects encrypted, without it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from winnow.core.domain.records import Project
from winnow.core.testing.certs import TestCa
from winnow.services.serve import open_store

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "postgres-local.sh"

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def tls_server(postgres_dsn: str) -> Iterator[tuple[str, Path]]:
    """(DSN, CA file) of a PostgreSQL server offering TLS. ``postgres_dsn`` first: its failure (no
    packages) says why, and the binaries are installed."""
    folder = Path(tempfile.mkdtemp(prefix="winnow-pgtls-"))  # the server user must reach it
    os.chmod(folder, 0o755)
    ca = TestCa()
    server = ca.issue("postgres", server=True)
    certs = folder / "certs"
    certs.mkdir()
    (certs / "server.crt").write_bytes(server.cert)
    (certs / "server.key").write_bytes(server.key)
    (folder / "ca.pem").write_bytes(ca.pem)
    env = {**os.environ, "POSTGRES_SSL_DIR": str(certs)}
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder / "pg")], env=env, capture_output=True,
                             text=True, timeout=600)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield started.stdout.strip().splitlines()[-1], folder / "ca.pem"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder / "pg")], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_store_speaks_tls_when_the_dsn_asks(tls_server: tuple[str, Path]) -> None:
    dsn, ca = tls_server
    other_ca = ca.with_name("other-ca.pem")
    other_ca.write_bytes(TestCa("someone else").pem)
    store = open_store(f"{dsn}?sslmode=verify-full&sslrootcert={ca}")
    try:
        store.create_project(Project("tls", ("a", "b")))
        assert [p.name for p in store.list_projects()] == ["tls"]
        with store.dialect.transaction(write=False) as tx:
            assert tx.one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == (True,)
    finally:
        store.close()
    with pytest.raises(psycopg.OperationalError):  # a CA that did not sign the server's certificate
        open_store(f"{dsn}?sslmode=verify-full&sslrootcert={other_ca}")
