"""`winnow demo`: Banking77 through the whole embedded loop with simulated annotators, then a summary.

Shows progress bars, ends with a summary table and a learning-curve PNG (human labels against model
accuracy, Winnow against random selection on the same stream).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from winnow.bench.common import write_json
from winnow.bench.labels import plot_curves
from winnow.core.data.datasets import Dataset, banking77
from winnow.core.data.simulate import run_stream
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Project
from winnow.core.ml.runtime import make_runtime


def run_demo(args: argparse.Namespace) -> int:
    from winnow.services.cli import _loop_config

    console = Console()
    train, test = banking77()
    if args.items is not None:
        n = int(args.items)
        if not 1 <= n <= len(train):
            raise InvalidInput("items", f"must be between 1 and {len(train)}, got {n}")
        if n < len(train):  # a seeded sample across all intents (the file is sorted by intent)
            rows = sorted(np.random.default_rng(int(args.seed)).permutation(len(train))[:n])
            train = Dataset(tuple(train.texts[k] for k in rows), tuple(train.labels[k] for k in rows), train.classes,
                            train.source)
    noise = [float(x) for x in str(args.noise).split(",") if x.strip()]
    labels, per = args.budget
    out = Path(args.out_dir)
    if out.exists():
        shutil.rmtree(out)
    console.print(f"[bold]Winnow demo[/]: {len(train)} Banking77 items, {len(noise)} simulated annotators "
                  f"(error rates {noise}), overlap {args.overlap}, {args.gold} gold items, budget {labels}/{per}, "
                  f"precision target {args.precision}")
    runtime = make_runtime(args.engine, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    reports = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        for name, strategy in (("winnow", args.strategy), ("random", "random")):
            task = bar.add_task(f"{name:>7} ({strategy})", total=len(train))
            project = Project("banking77", train.classes, labels, per, float(args.precision), strategy,
                              int(args.overlap))
            reports.append(run_stream(train, out / name, runtime, project, _loop_config(args),
                                      test=test, noise=noise, gold=int(args.gold), seed=int(args.seed),
                                      progress=lambda k, _r, task=task: bar.update(task, completed=k)))
    table = Table(title="Winnow demo: every item has exactly one final label")
    table.add_column("")
    for report in reports:
        table.add_column(report.strategy, justify="right")
    rows = [("items", "items"), ("human labels", "human_labels"), ("human fraction", "human_fraction"),
            ("annotations (with overlap, gold)", "annotations"), ("auto-accepted by the model", "auto_accepted"),
            ("model labels below threshold at close", "low_confidence"), ("gold items", "gold"),
            ("final label accuracy", "final_label_accuracy"), ("auto-accept precision", "auto_accept_precision"),
            ("model test accuracy", "model_test_accuracy"), ("model versions", "model_versions"),
            ("wall seconds", "wall_s")]
    for title, key in rows:
        cells = [getattr(r, key) for r in reports]
        table.add_row(title, *("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells))
    console.print(table)
    quality = Table(title="annotators (Winnow run): simulated, measured on gold, estimated by Dawid-Skene")
    for column in ("annotator", "answers", "simulated accuracy", "gold accuracy", "estimated accuracy"):
        quality.add_column(column, justify="right")
    for name, q in reports[0].annotators.items():
        quality.add_row(name, *("-" if q.get(k) is None else f"{q[k]:.3f}" if isinstance(q[k], float) else str(q[k])
                                for k in ("answers", "simulated_accuracy", "gold_accuracy", "estimated_accuracy")))
    console.print(quality)
    plot_curves(out / "learning_curve.png", reports, "Winnow demo: Banking77")
    write_json(out / "summary.json", {name: {**r.summary(), "curve": r.curve, "annotators": r.annotators}
                                      for name, r in zip(("winnow", "random"), reports)})
    console.print(f"learning curve: {out / 'learning_curve.png'}; store and models under {out}/")
    return 0
