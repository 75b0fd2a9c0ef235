"""Fixtures shared by every test folder: real servers for the integration tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO / "deploy" / "kafka-local.sh"
KAFKA_START_TIMEOUT_S = 600  # the first start fetches the broker's jars from Maven Central
KAFKA_STOP_TIMEOUT_S = 120


def _server_unavailable(reason: str) -> NoReturn:
    """Fail when CI is set (a missing server must not pass as skipped tests there), else skip."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka broker, for tests marked ``kafka``.

    ``WINNOW_KAFKA_BOOTSTRAP`` names an existing broker; otherwise ``deploy/kafka-local.sh`` starts
    one for the session (in a temporary directory) and stops it when the session ends.
    """
    existing = os.environ.get("WINNOW_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    broker_dir = tmp_path_factory.mktemp("kafka")

    def run(action: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_LOCAL), action, str(broker_dir)],
            capture_output=True, text=True, timeout=timeout_s,
        )

    try:
        started = run("start", KAFKA_START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        run("stop", KAFKA_STOP_TIMEOUT_S)
        _server_unavailable(f"could not start Kafka with {KAFKA_LOCAL}: {exc}")
    lines = started.stdout.strip().splitlines()
    if started.returncode != 0 or not lines:
        stderr_tail = "\n".join(started.stderr.strip().splitlines()[-20:])
        _server_unavailable(f"{KAFKA_LOCAL} start failed (exit {started.returncode}):\n{stderr_tail}")
    try:
        yield lines[-1]
    finally:
        run("stop", KAFKA_STOP_TIMEOUT_S)
