"""Label-economics benchmark: how many human labels Winnow needs, and how good every final label is.

Streams every row of a labeled CSV once (seeded shuffle) through the embedded loop with noise-free
simulated annotators, twice side by side in one invocation: the chosen strategy and random
selection, with the same auto-accept. Writes the JSON result and a learning-curve PNG.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.data.datasets import Dataset
from winnow.core.data.simulate import StreamReport, run_stream
from winnow.core.domain.records import Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.ml.runtime import Runtime


def plot_curves(path: Path, reports: list[StreamReport], title: str) -> None:
    """Human labels against model test accuracy, one line per run."""
    fig, ax = new_figure((7, 4.5))
    for report in reports:
        points = [p for p in report.curve if p.get("test_accuracy") is not None]
        if points:
            ax.plot([p["human_labels"] for p in points], [p["test_accuracy"] for p in points], marker=".",
                    label=f"{report.strategy}: {report.human_labels} human labels, "
                          f"final labels {report.final_label_accuracy:.3f} accurate")
    ax.set_xlabel("human labels")
    ax.set_ylabel("model accuracy on the test set")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def run_labels_benchmark(
    train: Dataset,
    test: Dataset | None,
    runtime: Runtime,
    out: Path,
    project: Project,
    config: LoopConfig,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run the strategy and the random baseline on the same stream; write ``out`` (JSON) and its PNG."""
    started = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory(prefix="winnow-bench-") as tmp:
        for name, strategy in (("winnow", project.strategy), ("random", "random")):
            run_project = Project(**{**project.__dict__, "strategy": strategy})
            reports.append(run_stream(
                train, Path(tmp) / name, runtime, run_project, config, test=test, seed=seed,
                progress=None if progress is None else (lambda k, _r, name=name: progress(name, k, len(train))),
            ))
    winnow, random = reports
    result = {
        **winnow.summary(),
        "random": random.summary(),
        "details": {
            "dataset": train.source,
            "test_dataset": None if test is None else test.source,
            "classes": len(train.classes),
            "strategy": project.strategy,
            "budget": f"{project.budget_labels} per {project.budget_per_items} items",
            "precision_target": project.precision_target,
            "seed": seed,
            "runs": {name: {
                "auto_accepted": r.auto_accepted, "low_confidence": r.low_confidence,
                "annotations": r.annotations, "model_versions": r.model_versions, "curve": r.curve,
            } for name, r in (("winnow", winnow), ("random", random))},
            "total_wall_s": time.perf_counter() - started,
            "environment": environment(),
        },
    }
    write_json(out, result)
    plot_curves(Path(out).with_suffix(".png"), reports, f"Label economics: {Path(train.source).name}")
    return result
