"""Encoder benchmark: each sentence encoder (and int8 export) side by side on one labeled dataset in one
run: sentences/s on this machine, cosine of an int8 export to its fp32 vectors, the test accuracy of a
head fitted on every training label, and the label benchmark's pool reference (the final-label
accuracy margin picks reach with a quarter of the items labeled by people; ``bench.labels``), so the
choice of encoder is read in the unit the labels are paid in.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.bench.labels import pool_reference
from winnow.core.data.datasets import Dataset
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.settings import COMPARED_ENCODERS, LoopConfig
from winnow.core.ml.runtime import make_runtime
from winnow.core.ml.scoring import mean_probs
from winnow.core.ml.training import fit_head, head_logits


def parse_encoder(text: str) -> tuple[str, bool]:
    """``NAME`` or ``NAME:int8`` (the int8 export of a BERT or MPNet encoder) -> (name or path, int8)."""
    name, int8 = (text.removesuffix(":int8"), True) if text.endswith(":int8") else (text, False)
    if not name:
        raise InvalidInput("encoders", f"{text!r}: expected NAME or NAME:int8")
    return name, int8


def run_encoder_benchmark(train: Dataset, test: Dataset, out: Path, config: LoopConfig,
                          encoders: Sequence[str] = COMPARED_ENCODERS, seeds: int = 3, human_fraction: float = 0.25,
                          speed_texts: int = 2000, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every encoder of ``encoders`` (``NAME[:int8]``) on ``train``/``test``; write ``out``
    (JSON) and its PNG. Vectors are computed afresh (no embedding cache), on the CPU."""
    if train.labels is None or test.labels is None:
        raise InvalidInput("label_col", "the encoder benchmark needs labeled training and test rows")
    started = time.perf_counter()
    y, y_test = np.array(train.label_ids()), np.array(test.label_ids())
    sample = list(train.texts[:speed_texts])
    runs, fp32_vectors = [], {}
    with tempfile.TemporaryDirectory(prefix="winnow-bench-encoders-") as cache:
        for text in encoders:
            name, int8 = parse_encoder(text)
            if progress is not None:
                progress(text)
            encoder = make_runtime("onnx", "cpu", cache_dir=Path(cache), embedding_cache=False, encoder=name,
                                   int8=int8).encoder
            encoder.encode(sample[:64])  # warm-up: sessions, allocations
            t0 = time.perf_counter()
            encoder.encode(sample)
            per_s = len(sample) / (time.perf_counter() - t0)
            x, x_test = encoder.encode(list(train.texts)), encoder.encode(list(test.texts))
            if not int8:
                fp32_vectors[name] = x
            head = fit_head(x, y, len(train.classes), config.train)
            test_accuracy = float((mean_probs(head_logits(head, x_test), 1.0).argmax(1) == y_test).mean())
            labels = int(round(human_fraction * len(y)))
            references = [pool_reference(x, y, len(train.classes), labels, config, s)["final_label_accuracy"]
                          for s in range(seeds)]
            cosine = None
            if int8 and name in fp32_vectors:
                cos = (x * fp32_vectors[name]).sum(1)
                cosine = {"mean": float(cos.mean()), "min": float(cos.min())}
            runs.append({"encoder": text, "encoder_id": encoder.encoder_id, "dim": int(encoder.dim),
                         "sentences_per_s": per_s, "cosine_to_fp32": cosine,
                         "test_accuracy_all_labels": test_accuracy,
                         "pool_reference_final_label_accuracy": float(np.mean(references)),
                         "pool_reference_worst": float(min(references)), "pool_reference_seeds": references})
    result = {"encoders": runs, "details": {
        "dataset": train.source, "test_dataset": test.source, "items": len(y), "test_items": len(y_test),
        "human_fraction": human_fraction, "seeds": seeds, "speed_texts": len(sample), "threads": "ONNX Runtime default",
        "total_wall_s": time.perf_counter() - started, "environment": environment()}}
    write_json(out, result)
    _plot(Path(out).with_suffix(".png"), runs, Path(train.source).name)
    return result


def _plot(path: Path, runs: list[dict], dataset: str) -> None:
    fig, (speed, quality) = new_figure((10, 4), ncols=2)
    names = [r["encoder"] for r in runs]
    speed.barh(names, [r["sentences_per_s"] for r in runs], color="tab:blue")
    speed.set_xlabel("sentences/s (CPU)")
    quality.barh(names, [r["pool_reference_final_label_accuracy"] for r in runs], color="tab:green",
                 label="final labels, pool reference")
    quality.scatter([r["test_accuracy_all_labels"] for r in runs], names, color="black", zorder=3,
                    label="test accuracy, every label")
    quality.set_xlim(0.85, 1.0)
    quality.set_xlabel("accuracy")
    quality.legend(loc="lower left", fontsize=8)
    for ax in (speed, quality):
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Encoders on {dataset}")
    save_figure(fig, path)
