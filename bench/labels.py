"""Label-economics benchmark: how many human labels Winnow needs, how good every final label is, and
whether the system's own certified bound held.

Streams every row of a labeled CSV once (a seeded shuffle per seed) through the embedded loop with
simulated annotators (noise-free by default), side by side in one invocation: the chosen strategy
and random selection, through the same code with the same auto-accept and the same estimators.
Each seed is reported, then the mean over seeds (today's keys) and the worst. Writes the JSON
result and a PNG that shows, over the stream, the human labels spent, the certified bound and the
true accuracy of the final labels, Winnow against random.

Beside them, two references say where the points between Winnow and a target go:

- ``pool_reference`` (:func:`pool_reference`): the final-label accuracy the same encoder and head
  reach with the same number of human labels when the whole dataset is there at once and every label
  goes to margin picks, with nothing spent on checks. It tells a target the stream misses from one the
  encoder cannot reach.
- ``uncertified_reference``: the same stream, strategy and budget with the checks all but off
  (``UNCERTIFIED`` probabilities: no threshold is certified, so every model label comes from the last
  model at close, and nothing is vouched for). Winnow against it is what certifying costs: the labels
  spent on checks, and the labels auto-accepted during the stream by earlier models.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.data.datasets import Dataset
from winnow.core.data.simulate import StreamReport, run_stream
from winnow.core.domain.records import Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.ml.runtime import Runtime
from winnow.core.ml.scoring import margin_uncertainty
from winnow.core.ml.training import train

# the uncertified reference's chances of a check (the least the settings allow is above 0)
UNCERTIFIED = {"audit_probability": 1e-3, "certify_probability": 1e-3, "recertify_probability": 1e-3,
               "min_probability": 1e-3}


def plot_curves(path: Path, reports: list[StreamReport], title: str) -> None:
    """Human labels against model test accuracy, one line per run (the demo's learning curve)."""
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


def plot_stream(path: Path, runs: dict[str, StreamReport], title: str, reference: float | None = None) -> None:
    """Over the stream (seed 0): human labels spent, and the final labels' true accuracy against the
    system's certified lower bound, one colour per run (``reference``: the pool reference's final-label
    accuracy, a grey line)."""
    fig, (spent, quality) = new_figure((11, 4.5), ncols=2)
    for (name, report), colour in zip(runs.items(), ("tab:blue", "tab:orange")):
        points = report.stream
        x = [p["items"] for p in points]
        spent.plot(x, [p["tasks"] for p in points], color=colour, label=f"{name}: {report.human_labels} human labels")
        acc = [(p["items"], p["accuracy"]) for p in points if p["accuracy"] is not None]
        bound = [(p["items"], p["certified_accuracy_lower_bound"]) for p in points
                 if p["certified_accuracy_lower_bound"] is not None]
        if acc:
            quality.plot(*zip(*acc), color=colour, label=f"{name}: true accuracy of final labels")
        if bound:
            quality.plot(*zip(*bound), color=colour, linestyle="--", label=f"{name}: certified lower bound")
    spent.set_xlabel("items streamed")
    spent.set_ylabel("human labels spent (tasks drawn)")
    spent.legend(loc="upper left", fontsize=8)
    quality.set_xlabel("items streamed")
    quality.set_ylabel("final labels so far")
    if reference is not None:
        quality.axhline(reference, color="grey", linestyle=":", label=f"pool reference (no checks): {reference:.3f}")
    quality.set_ylim(0.5, 1.0)
    quality.legend(loc="lower right", fontsize=8)
    for ax in (spent, quality):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, path)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def summarize(reports: Sequence[StreamReport]) -> dict:
    """Mean over seeds of every summary key (None when a seed has none), the worst final-label
    accuracy, and whether the certified bounds held in every seed."""
    per_seed = [r.summary() for r in reports]
    out = {key: _mean([s[key] for s in per_seed]) for key in StreamReport.KEYS}
    out["items"] = per_seed[0]["items"]
    out["worst_final_label_accuracy"] = min(s["final_label_accuracy"] for s in per_seed)
    out["first_certified_at_fraction_worst"] = (None if any(s["first_certified_at_fraction"] is None for s in per_seed)
                                                else max(s["first_certified_at_fraction"] for s in per_seed))
    out["bound_held"] = all(
        (s["certified_accuracy_lower_bound"] is None or s["certified_accuracy_lower_bound"] <= s["final_label_accuracy"])
        and (s["certified_auto_accept_precision_lower_bound"] is None or s["auto_accept_precision"] is None
             or s["certified_auto_accept_precision_lower_bound"] <= s["auto_accept_precision"])
        for s in per_seed)
    out["seeds"] = per_seed
    return out


def _model_probs(embeddings: np.ndarray, labels: np.ndarray, labeled: np.ndarray, n_classes: int,
                 config: LoopConfig, rows: np.ndarray) -> np.ndarray:
    """The probabilities ``[len(rows), C]`` a version fitted on the ``labeled`` rows gives ``rows``: the
    same fit as the trainer's (``train``: the head, and its neighbours' vote where it helps)."""
    # the threshold is unused
    return train(embeddings[labeled], labels[labeled], n_classes, 0.98, config.train).probs(embeddings[rows])


def pool_reference(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, human_labels: int,
                   config: LoopConfig, seed: int, batch: int = 200) -> dict:
    """What the same encoder and model (the head, and its neighbours' vote where it helps) reach when a
    selector sees the whole dataset at once and spends every label on its most uncertain items (margin
    sampling in batches of ``batch`` from a random start, no checks for the certificate), the model
    labeling the rest: the reference the stream's final-label accuracy is read against. Not an upper
    bound in theory (a better selector may pass it); the targets a dataset cannot reach even here are
    out of any selector's reach on that encoder.

    ``embeddings`` float32 ``[n, D]``, ``labels`` int ``[n]`` (the truth); returns
    ``{"human_labels", "human_fraction", "final_label_accuracy", "model_label_accuracy"}``."""
    n = len(labels)
    human_labels = int(min(max(human_labels, 1), n))
    rng = np.random.default_rng(seed)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, min(config.first_model_labels, human_labels), replace=False)] = True
    while labeled.sum() < human_labels:
        rest = np.flatnonzero(~labeled)
        score = margin_uncertainty(_model_probs(embeddings, labels, labeled, n_classes, config, rest))
        take = min(batch, human_labels - int(labeled.sum()))
        labeled[rest[np.argsort(-score, kind="stable")[:take]]] = True
    rest = np.flatnonzero(~labeled)
    right = int((_model_probs(embeddings, labels, labeled, n_classes, config, rest).argmax(1) == labels[rest]).sum())
    return {"human_labels": int(labeled.sum()), "human_fraction": float(labeled.sum() / n),
            "final_label_accuracy": float((labeled.sum() + right) / n),
            "model_label_accuracy": float(right / len(rest)) if len(rest) else None}


def run_labels_benchmark(
    train: Dataset,
    test: Dataset | None,
    runtime: Runtime,
    out: Path,
    project: Project,
    config: LoopConfig,
    seed: int = 0,
    seeds: int = 1,
    noise: Sequence[float] = (0.0,),
    gold: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run the strategy and the random baseline on the same streams (seeds ``seed .. seed + seeds - 1``);
    write ``out`` (JSON) and its PNG. ``noise``: one simulated annotator per error rate; ``gold``:
    rows given as known answers; the project's ``overlap`` is the answers asked per item."""
    started = time.perf_counter()
    reports: dict[str, list[StreamReport]] = {"winnow": [], "random": [], "uncertified": []}
    with tempfile.TemporaryDirectory(prefix="winnow-bench-") as tmp:
        for s in range(seed, seed + seeds):
            for name, strategy, checks in (("winnow", project.strategy, {}), ("random", "random", {}),
                                           ("uncertified", project.strategy, UNCERTIFIED)):
                run_project = Project(**{**project.__dict__, "strategy": strategy})
                run_config = LoopConfig(**{**config.__dict__, "seed": s, **checks})
                reports[name].append(run_stream(
                    train, Path(tmp) / f"{name}-{s}", runtime, run_project, run_config, test=test, noise=noise,
                    gold=gold, seed=s, progress=None if progress is None else
                    (lambda k, _r, label=f"{name} seed {s}": progress(label, k, len(train))),
                ))
    winnow, random = summarize(reports["winnow"]), summarize(reports["random"])
    uncertified = summarize(reports["uncertified"])
    # the pool reference at the human labels each Winnow seed spent (the truth read only here)
    embeddings, truth = runtime.encoder.encode(list(train.texts)), np.array(train.label_ids())
    references = [pool_reference(embeddings, truth, len(train.classes), r.human_labels, config, s)
                  for s, r in zip(range(seed, seed + seeds), reports["winnow"])]
    result = {
        **winnow,
        "random": random,
        "pool_reference": {
            "final_label_accuracy": float(np.mean([r["final_label_accuracy"] for r in references])),
            "worst_final_label_accuracy": float(min(r["final_label_accuracy"] for r in references)),
            "human_fraction": float(np.mean([r["human_fraction"] for r in references])),
            "seeds": references,
        },
        "uncertified_reference": {**uncertified, "probabilities": UNCERTIFIED},
        "details": {
            "dataset": train.source,
            "test_dataset": None if test is None else test.source,
            "classes": len(train.classes),
            "strategy": project.strategy,
            "budget": f"{project.budget_labels} per {project.budget_per_items} items",
            "precision_target": project.precision_target,
            "overlap": project.overlap,
            "noise": list(noise),
            "gold": gold,
            "seeds": list(range(seed, seed + seeds)),
            "encoder": runtime.encoder.encoder_id,  # the features every arm's model is fitted on
            "settings": dataclasses.asdict(config),  # the loop's settings, the trainer's among them
            "runs": {name: [{
                "seed": s, "auto_accepted": r.auto_accepted, "low_confidence": r.low_confidence,
                "tasks_by_kind": r.tasks_by_kind, "annotations": r.annotations, "model_versions": r.model_versions,
                "quality": r.quality,
                "annotators": r.annotators, "curve": r.curve, "stream": r.stream,
            } for s, r in zip(range(seed, seed + seeds), runs)] for name, runs in reports.items()},
            "total_wall_s": time.perf_counter() - started,
            "environment": environment(),
        },
    }
    write_json(out, result)
    plot_stream(Path(out).with_suffix(".png"), {name: reports[name][0] for name in ("winnow", "random")},
                f"Label economics: {Path(train.source).name}, seed {seed}",
                reference=references[0]["final_label_accuracy"])
    return result
