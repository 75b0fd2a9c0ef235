"""`winnow bench labeling` runs (tiny) and writes the JSON keys the issue names; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from winnow.bench.labeling import run_labeling_benchmark

KEYS = {"annotators", "prior_annotations", "lease_p50_ms", "lease_p99_ms", "submit_p50_ms", "submit_p99_ms",
        "answers_per_s", "errors", "double_leases"}


def test_a_tiny_labeling_benchmark_writes_its_runs(tmp_path: Path) -> None:
    out = tmp_path / "labeling.json"
    result = run_labeling_benchmark(out, annotators=(1, 3), priors=(10, 200), seconds=0.5)
    written = json.loads(out.read_text())
    assert written["runs"] == result["runs"] and len(result["runs"]) == 4
    for run in result["runs"]:
        assert KEYS <= set(run) and run["errors"] == 0 and run["double_leases"] == 0 and run["answers"] > 0
    assert [(r["prior_annotations"], r["annotators"]) for r in result["runs"]] == [(10, 1), (10, 3), (200, 1),
                                                                                    (200, 3)]
    assert out.with_suffix(".png").stat().st_size > 0
