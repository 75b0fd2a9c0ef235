"""The storage benchmark on a tiny run: every call kind timed, JSON and PNG written, bad sizes refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from winnow.bench.storage import run_storage_benchmark
from winnow.core.domain.errors import InvalidInput
from winnow.services.cli import main

KINDS = {"bus publish_many+flush", "bus publish+flush", "bus poll+commit", "store add_items",
         "store put_embeddings", "store get_embeddings", "store add_tasks", "store lease_tasks", "store put_labels"}


def test_a_tiny_run_times_every_call_kind_and_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "storage.json"
    result = run_storage_benchmark(out, items=1500, repeats=2)  # lease pages: 1,000 then 500
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert out.with_suffix(".png").stat().st_size > 0
    assert set(result["per_s"]) == KINDS and all(rate > 0 for rate in result["per_s"].values())
    assert all(len(runs) == 2 for runs in result["details"]["runs_per_s"].values())


def test_bad_sizes_are_refused_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "storage.json"
    with pytest.raises(InvalidInput, match="items"):
        run_storage_benchmark(out, items=0)
    with pytest.raises(InvalidInput, match="repeats"):
        run_storage_benchmark(out, repeats=0)
    assert main(["bench", "storage", "--items", "abc", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["winnow: error: --items: 'abc' is not an integer"]
    assert not out.exists()
