"""winnow bench select: every run picks its budget of unlabeled rows and is measured the same way."""

import json
from pathlib import Path

import numpy as np
import pytest
from winnow.bench.select import coverage, pool, run_select_benchmark


def test_coverage_is_the_k_center_objective() -> None:
    x, _ = pool(500, 0)
    everything = coverage(x, np.arange(500))
    # a unit row's product with itself rounds to within ~1e-6 of 1 in float32: sqrt(2 - 2 s) ~ 1e-3
    assert everything[0] == pytest.approx(0.0, abs=2e-3) and everything[1] == pytest.approx(0.0, abs=1e-3)
    one, many = coverage(x, np.array([0])), coverage(x, np.arange(0, 500, 5))
    assert many[0] <= one[0] and many[1] < one[1]


def test_the_benchmark_runs_each_method_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "select.json"
    result = run_select_benchmark(out, sizes=(2000,), budget=40, implementations=("winnow",))
    saved = json.loads(out.read_text())
    assert [r["method"] for r in saved["runs"]] == ["kcenter", "badge", "random"]
    for run in saved["runs"]:
        assert run["n"] == 2000 and run["implementation"] == "winnow" and run["budget"] == 40
        assert run["wall_s"] > 0 and run["peak_rss_mb"] > run["data_mb"] > 0
        assert 0 < run["coverage_mean"] <= run["coverage_max"] <= 2
    kcenter, _, random = result["runs"]
    assert kcenter["coverage_max"] < random["coverage_max"]  # k-center minimises exactly this
    assert out.with_suffix(".png").is_file()
