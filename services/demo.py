"""`winnow demo`: Banking77 through the whole embedded loop with simulated annotators, then a summary.

Shows progress bars, ends with a summary table and a learning-curve PNG (human labels against model
accuracy, Winnow against random selection on the same stream).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
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
from winnow.core.domain.settings import Settings
from winnow.core.ml.runtime import make_runtime, set_torch_threads

MARKER = ".winnow-demo"  # written first into a demo's output folder: only such a folder is ever cleared
OWN_ENTRIES = (MARKER, "winnow", "random", "learning_curve.png", "summary.json")


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run streams and where it writes (the loop's settings come in :class:`Settings`)."""

    out_dir: Path = Path("winnow-demo")
    items: int | None = None
    noise: tuple[float, ...] = (0.02, 0.05, 0.10)
    overlap: int = 3  # adaptive: more answers only where they disagree; 1 would certify nothing with noisy people
    gold: int = 20
    strategy: str = "cluster_margin"
    budget_labels: int = 25
    budget_per_items: int = 100
    precision: float = 0.98


def prepare_out_dir(out: Path) -> None:
    """Make ``out`` ready for a new run without deleting anything the demo did not write.

    A missing or empty folder is used as is; an earlier demo's output (it holds the marker file)
    loses only the demo's own entries; any other folder (``.``, a home directory, a project) is
    refused before anything is written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInput("--out-dir", f"{str(out)[:200]!r} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and MARKER not in entries:
        raise InvalidInput("--out-dir", f"{str(out)[:200]!r} is not empty and is not an earlier demo's output; "
                                        "name a new or empty folder")
    for name in OWN_ENTRIES[1:]:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("output of `winnow demo`: a new run clears the entries it wrote here\n")


def run_demo(demo: DemoOptions, settings: Settings) -> int:
    """Stream Banking77 through the winnow strategy and random selection; print and write the summary."""
    console = Console()
    seed = settings.loop.seed
    train, test = banking77()
    if demo.items is not None:
        n = demo.items
        if not 1 <= n <= len(train):
            raise InvalidInput("--items", f"must be between 1 and {len(train)}, got {n}")
        if n < len(train):  # a seeded sample across all intents (the file is sorted by intent)
            rows = sorted(np.random.default_rng(seed).permutation(len(train))[:n])
            train = Dataset(tuple(train.texts[k] for k in rows), tuple(train.labels[k] for k in rows), train.classes,
                            train.source)
    noise = list(demo.noise)
    if not noise:
        raise InvalidInput("--noise", "name at least one simulated annotator's error rate")
    labels, per = demo.budget_labels, demo.budget_per_items
    out = Path(demo.out_dir)
    prepare_out_dir(out)  # refused before the model loads
    set_torch_threads(settings.runtime.engine, settings.runtime.torch_threads)
    runtime = make_runtime(settings.runtime.engine, settings.runtime.device, cache_dir=settings.runtime.cache_dir,
                           encoder=settings.runtime.encoder, int8=settings.runtime.encoder_int8)
    console.print(f"[bold]Winnow demo[/]: {len(train)} Banking77 items, {len(noise)} simulated annotators "
                  f"(error rates {noise}), overlap {demo.overlap}, {demo.gold} gold items, budget {labels}/{per}, "
                  f"precision target {demo.precision}")
    reports = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        for name, strategy in (("winnow", demo.strategy), ("random", "random")):
            task = bar.add_task(f"{name:>7} ({strategy})", total=len(train))
            project = Project("banking77", train.classes, labels, per, demo.precision, strategy, demo.overlap)
            reports.append(run_stream(train, out / name, runtime, project, settings.loop,
                                      test=test, noise=noise, gold=demo.gold, seed=seed,
                                      progress=lambda k, _r, task=task: bar.update(task, completed=k)))
    table = Table(title="Winnow demo: every item has exactly one final label")
    table.add_column("")
    for report in reports:
        table.add_column(report.strategy, justify="right")
    rows = [("items", "items"), ("human labels", "human_labels"), ("human fraction", "human_fraction"),
            ("annotations (with overlap, gold)", "annotations"), ("auto-accepted by the model", "auto_accepted"),
            ("model labels below threshold at close", "low_confidence"), ("gold items", "gold"),
            ("final label accuracy (measured)", "final_label_accuracy"),
            ("final label accuracy, certified lower bound", "certified_accuracy_lower_bound"),
            ("auto-accept precision (measured)", "auto_accept_precision"),
            ("auto-accept precision, certified lower bound", "certified_auto_accept_precision_lower_bound"),
            ("first threshold certified at (share of stream)", "first_certified_at_fraction"),
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
