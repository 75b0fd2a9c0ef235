"""winnow bench selector: step cost against the backlog, keyed by size as a string."""

import json
from pathlib import Path

from winnow.bench.selector import run_selector_benchmark
from winnow.services.cli import main


def test_the_selector_benchmark_reports_each_size(tmp_path: Path) -> None:
    out = tmp_path / "selector.json"
    result = run_selector_benchmark(out, sizes=(300, 3000), arrivals=100, steps=3, strategy="uncertainty", guard=400)
    saved = json.loads(out.read_text())
    assert set(saved["step_s"]) == set(saved["arrivals_per_s"]) == {"300", "3000"}
    assert all(s > 0 for s in saved["step_s"].values()) and out.with_suffix(".png").is_file()
    for size, run in result["details"]["runs"].items():
        assert len(run["steps_s"]) == 3
        # a quarter of the arrivals went to people (drawn at arrival or picked from the backlog); the rest wait
        assert run["backlog_after"] == int(size) + 3 * 75
    assert result["details"]["guard"] == 400
    assert main(["bench", "selector", "--sizes", "200", "--arrivals", "40", "--steps", "2", "--guard", "30", "--out",
                 str(tmp_path / "cli.json")]) == 0
    assert main(["bench", "selector", "--sizes", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert main(["bench", "selector", "--guard", "-1", "--out", str(tmp_path / "x.json")]) == 2
