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
        # a quarter of the arrivals went to people (drawn at arrival or picked from the backlog) but for less than
        # a batch of credit (25) and the close's reserve (5% of the credit of every item that reached the selector:
        # the version has a threshold); the rest wait
        reserve = 0.05 * (int(size) + 300) * 25 / 100
        assert int(size) + 3 * 75 <= run["backlog_after"] < int(size) + 3 * 75 + 25 + reserve
    assert result["details"]["guard"] == 400
    assert result["details"]["neighbour_bank"] == 0 and result["details"]["scores_carried"] is True


def test_the_selector_benchmark_runs_a_version_with_a_neighbours_vote(tmp_path: Path) -> None:
    """With --bank the version blends its head with a vote of that many labeled vectors; the selector takes
    the worker's scores (--carried true) or scores every arrival itself, and decides the same items either way."""
    after = {}
    for carried in (True, False):
        result = run_selector_benchmark(tmp_path / f"{carried}.json", sizes=(500,), arrivals=100, steps=2,
                                        strategy="uncertainty", guard=50, bank=200, carried=carried)
        assert result["details"]["neighbour_bank"] == 200 and result["details"]["scores_carried"] is carried
        after[carried] = result["details"]["runs"]["500"]["backlog_after"]
        assert main(["bench", "selector", "--sizes", "200", "--arrivals", "40", "--steps", "2", "--guard", "30",
                     "--bank", "60", "--carried", str(carried).lower(), "--out", str(tmp_path / "cli.json")]) == 0
    assert after[True] == after[False] and 500 + 2 * 75 <= after[True] < 500 + 2 * 100  # at most 25 in 100 decided
    assert main(["bench", "selector", "--bank", "-1", "--out", str(tmp_path / "x.json")]) == 2
    assert main(["bench", "selector", "--sizes", "200", "--arrivals", "40", "--steps", "2", "--guard", "30", "--out",
                 str(tmp_path / "cli.json")]) == 0
    assert main(["bench", "selector", "--sizes", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert main(["bench", "selector", "--guard", "-1", "--out", str(tmp_path / "x.json")]) == 2
