"""Fixtures shared by every test folder: real Kafka and PostgreSQL servers for the integration tests.

Each server is started once per session by its script under deploy/ (or named by an environment
variable). When it cannot be started, tests fail if CI is set and skip otherwise: a missing server
never passes as skipped tests in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO / "deploy" / "kafka-local.sh"
POSTGRES_LOCAL = REPO / "deploy" / "postgres-local.sh"
START_TIMEOUT_S = 600  # a first start fetches the broker's jars / installs the Debian packages
STOP_TIMEOUT_S = 120


def _server_unavailable(reason: str) -> NoReturn:
    """Fail when CI is set (a missing server must not pass as skipped tests there), else skip."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def _local_server(script: Path, server_dir: str) -> Iterator[str]:
    """``script start DIR`` (its last stdout line is the address), then ``script stop DIR``."""

    def run(action: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), action, server_dir], capture_output=True, text=True,
                              timeout=timeout_s)

    try:
        try:
            started = run("start", START_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _server_unavailable(f"could not start a server with {script}: {exc}")
        lines = started.stdout.strip().splitlines()
        if started.returncode != 0 or not lines:
            stderr_tail = "\n".join(started.stderr.strip().splitlines()[-20:])
            _server_unavailable(f"{script} start failed (exit {started.returncode}):\n{stderr_tail}")
        yield lines[-1]
    finally:
        run("stop", STOP_TIMEOUT_S)


_KAFKA_DIRS: dict[str, Path] = {}  # bootstrap -> the folder of a broker started here (its log segments)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka broker (``WINNOW_KAFKA_BOOTSTRAP``, or one started for the session)."""
    existing = os.environ.get("WINNOW_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    server_dir = tmp_path_factory.mktemp("kafka")
    with _local_server(KAFKA_LOCAL, str(server_dir)) as bootstrap:
        _KAFKA_DIRS[bootstrap] = server_dir
        yield bootstrap


@pytest.fixture(scope="session")
def kafka_log_dir(kafka_bootstrap: str) -> Path | None:
    """The broker's log folder (its segment files, byte for byte) when this session started it."""
    server_dir = _KAFKA_DIRS.get(kafka_bootstrap)
    return None if server_dir is None else server_dir / "data"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL database (``WINNOW_POSTGRES_DSN``, or a server started for the session).

    The server's directory comes from ``tempfile.mkdtemp``, not pytest's tmp_path, whose root is
    private to the user running pytest while the server runs as ``postgres``.
    """
    existing = os.environ.get("WINNOW_POSTGRES_DSN")
    if existing:
        yield existing
        return
    server_dir = tempfile.mkdtemp(prefix="winnow-postgres-")
    try:
        with _local_server(POSTGRES_LOCAL, server_dir) as dsn:
            yield dsn
    finally:
        if not (Path(server_dir) / "data" / "postmaster.pid").exists():  # never delete a live server's files
            shutil.rmtree(server_dir)


@pytest.fixture
def postgres_schema_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN whose search_path is a new, empty schema, dropped (with everything in it) after the test.

    Faster than a database per test, and safe on a shared server named by ``WINNOW_POSTGRES_DSN``.
    """
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_conninfo(postgres_dsn, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


CHROMIUM = Path(os.environ.get("WINNOW_CHROMIUM", "/usr/bin/chromium"))
# as root in a container: no sandbox; no background networking (the machine's network is closed)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium (Debian's, ``WINNOW_CHROMIUM``) driven by Playwright, for the session."""
    if not CHROMIUM.is_file():
        _server_unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
