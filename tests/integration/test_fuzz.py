"""`winnow bench fuzz` for real, short: `serve all` answers 300 malformed and absurd requests with
statuses (no INTERNAL, no UNKNOWN), never dies, stays healthy and keeps its store consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_short_fuzz_run_finds_no_internal_error_and_a_consistent_store(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, "-m", "winnow.services.cli", "bench", "fuzz", "--requests", "300",
                           "--seed", "7", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["requests"] == 300 and sum(result["by_code"].values()) == 300
    assert result["by_code"].get("INTERNAL", 0) == 0 and result["by_code"].get("UNKNOWN", 0) == 0, result["by_method"]
    assert result["by_code"]["INVALID_ARGUMENT"] > 0 and result["by_code"].get("OK", 0) > 0  # both kinds were sent
    assert result["server_restarts"] == 0 and result["same_process"], result["deaths"]
    assert result["healthy_after"] is True
    assert result["store_consistent"] is True, result["store"]["problems"]
    assert result["store"]["items"] > 0  # the check looked at real rows, not an empty store
    assert result["tracebacks_logged"] == 0 and result["exit_code_on_sigterm"] == 0
    assert result["by_code"].get("UNAUTHENTICATED", 0) > 0  # calls without a valid credential were sent
    assert result["unauthenticated_answers"] == 0, result["unauthenticated_answer_examples"]
