"""A simulated stream (``run_stream``, what the label benchmark and the demo run) decides the same way
on a fast machine and a slow one: its selector re-reads the current version's audits every
``select_batch`` arrivals, never only when enough of this machine's seconds have passed."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import winnow.core.loop.selector as selector_module
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.data.datasets import Dataset
from winnow.core.data.simulate import run_stream
from winnow.core.domain.records import Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.ml.encoder import Encoder
from winnow.core.ml.runtime import OnnxRuntime

CLASSES = ("a", "b")


class ClassEncoder(Encoder):
    """Pseudo-embeddings that carry the class a text names (``"a 17"``): a model learns it, so a
    threshold is certified during a short stream (no model weights)."""

    encoder_id = "class/test"
    dim = 8

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            label, number = text.split()
            v = np.random.default_rng(int(number)).standard_normal(self.dim) * 0.3
            v[CLASSES.index(label)] += 3.0
            rows.append(v / np.linalg.norm(v))
        return np.array(rows, dtype=np.float32)


def _stream(workdir: Path, monkeypatch: pytest.MonkeyPatch, step_s: float) -> tuple[int, list]:
    """One seeded stream of 1,200 items, the selector's clock moving ``step_s`` seconds each time it is
    read (0: a machine so fast that no time passes); how many times its version's audits were read, and
    its final labels."""
    ticks = itertools.count()
    monkeypatch.setattr(selector_module.time, "monotonic", lambda: step_s * next(ticks))
    reads = [0]
    original = selector_module.family_trials

    def counted(*args, **kwargs):
        reads[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(selector_module, "family_trials", counted)
    labels = [CLASSES[k % 2] for k in range(1200)]
    data = Dataset(tuple(f"{y} {k}" for k, y in enumerate(labels)), tuple(labels), CLASSES, "synthetic")
    project = Project("p", CLASSES, 25, 100, 0.95, "uncertainty", 1)
    report = run_stream(data, workdir, OnnxRuntime(ClassEncoder()), project,
                        LoopConfig(seed=0, first_model_labels=40, retrain_min_new=20), seed=0)
    assert report.first_certified_at_fraction is not None and report.first_certified_at_fraction < 0.8
    return reads[0], [(x.item_id, x.label, x.aggregation) for x in report_labels(workdir)]


def report_labels(workdir: Path) -> list:
    store = SqliteStore(workdir / "store.sqlite")
    try:
        return sorted(store.labels("p"), key=lambda x: x.item_id)
    finally:
        store.close()


def test_a_simulated_stream_reads_its_audits_every_select_batch_however_fast_the_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_reads, fast = _stream(tmp_path / "fast", monkeypatch, step_s=0.0)
    # after the first certificate at least a fifth of the 1,200 arrivals remain: a read per 25 of them
    assert fast_reads >= 8
    slow_reads, slow = _stream(tmp_path / "slow", monkeypatch, step_s=100.0)
    assert slow_reads == fast_reads and slow == fast
