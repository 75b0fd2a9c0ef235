"""Pool selection benchmark: Winnow's pool strategies against scikit-activeml's (when installed),
side by side in one invocation, on the same pools.

Each pool is ``n`` synthetic unit vectors (a mixture of Gaussian clusters, seeded) with 1% of its rows
labeled; every run picks ``budget`` of the others. Each run goes in a fresh child process, so its
``peak_rss_mb`` is that run's own high-water mark (the pool's ``data_mb`` included). Coverage is
measured the same way for every run: each point's Euclidean distance to the nearest picked or
labeled point (max and mean), the k-center objective.

Methods: ``kcenter`` (Winnow's ``KCenterGreedy``, scikit-activeml's ``CoreSet``), ``badge``
(Winnow's, on the probabilities of a random linear head), ``random`` (Winnow's; the coverage
baseline). small-text's ``GreedyCoreset`` is not run: 365 s at 20,000 points on this machine when
last measured (../shared/FACTS.md), about 3,000 s at 100,000.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import resource
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json

DIM, CLUSTERS, LABELED_SHARE = 384, 100, 0.01
METHODS = {"winnow": ("kcenter", "badge", "random"), "scikit-activeml": ("kcenter",)}


def pool(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors float32 ``[n, DIM]`` and the labeled rows (1%, at least one)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    x = centres[rng.integers(0, CLUSTERS, n)] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labeled = rng.choice(n, max(1, int(LABELED_SHARE * n)), replace=False)
    return x, labeled


def coverage(x: np.ndarray, centres: np.ndarray) -> tuple[float, float]:
    """Max and mean distance of every row of ``x`` to the nearest of ``centres`` (rows of ``x``)."""
    from winnow.core.select.index import max_similarity_to

    d = np.sqrt(np.maximum(2.0 - 2.0 * max_similarity_to(x, x[centres]).astype(np.float64), 0.0))
    return float(d.max()), float(d.mean())


def _select(implementation: str, method: str, x: np.ndarray, labeled: np.ndarray, budget: int,
            seed: int) -> np.ndarray:
    """Rows of ``x`` picked (never labeled ones)."""
    free = np.setdiff1d(np.arange(len(x)), labeled)
    if implementation == "scikit-activeml":
        from skactiveml.pool import CoreSet
        from skactiveml.utils import MISSING_LABEL

        y = np.full(len(x), MISSING_LABEL)
        y[labeled] = 0
        return np.asarray(CoreSet(random_state=seed).query(x, y, batch_size=budget), np.int64)
    from winnow.core.select.strategies import Candidates, make_strategy

    if method == "badge":
        logits = x[free] @ np.random.default_rng(seed).standard_normal((DIM, 10)).astype(np.float32) * 4
        probs = np.exp(logits - logits.max(1, keepdims=True))
        candidates = Candidates(x[free], probs / probs.sum(1, keepdims=True), np.zeros(len(free)))
    else:
        candidates = Candidates(x[free], np.ones((len(free), 1)), np.zeros(len(free)), x[labeled])
    return free[make_strategy(method).select(candidates, budget, np.random.default_rng(seed))]


def _child(n: int, implementation: str, method: str, budget: int, seed: int) -> dict:
    x, labeled = pool(n, seed)
    started = time.perf_counter()
    picked = _select(implementation, method, x, labeled, budget, seed)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if len(np.intersect1d(picked, labeled)) or len(np.unique(picked)) != budget:
        raise AssertionError(f"{implementation} {method}: picks repeat or include labeled rows")
    cover_max, cover_mean = coverage(x, np.concatenate([labeled, picked]))
    return {"n": n, "method": method, "implementation": implementation, "budget": budget, "wall_s": wall,
            "peak_rss_mb": peak, "data_mb": x.nbytes / 2**20, "coverage_max": cover_max, "coverage_mean": cover_mean}


def available() -> dict[str, bool]:
    return {"winnow": True, "scikit-activeml": importlib.util.find_spec("skactiveml") is not None}


def run_select_benchmark(out: Path, sizes: Sequence[int] = (20_000, 100_000), budget: int = 1000, seed: int = 0,
                         implementations: Sequence[str] = ("winnow", "scikit-activeml"),
                         progress: Callable[[dict], None] = lambda _: None) -> dict:
    """Every (size, implementation, method) in its own child process (module doc); JSON at ``out``
    (``runs``: ``n``, ``method``, ``implementation``, ``wall_s``, ``peak_rss_mb``, ``coverage_max``,
    ``coverage_mean``) and a PNG beside it."""
    present = available()
    runs, skipped = [], []
    context = multiprocessing.get_context("spawn")
    for n in sizes:
        for implementation in implementations:
            if not present.get(implementation, False):
                skipped.append({"implementation": implementation,
                                "why": "not installed (pip install 'winnow[compare]')"})
                continue
            for method in METHODS[implementation]:
                with context.Pool(1) as child:
                    run = child.apply(_child, (n, implementation, method, budget, seed))
                runs.append(run)
                progress(run)
    result = {"runs": runs, "skipped": skipped,
              "details": {"budget": budget, "dim": DIM, "clusters": CLUSTERS, "labeled_share": LABELED_SHARE,
                          "seed": seed, "environment": environment()}}
    write_json(out, result)
    fig, (wall, cover) = new_figure((11, 4), ncols=2)
    for implementation in implementations:
        for method in METHODS.get(implementation, ()):
            rows = [r for r in runs if r["implementation"] == implementation and r["method"] == method]
            if rows:
                label = f"{implementation} {method}"
                wall.plot([r["n"] for r in rows], [r["wall_s"] for r in rows], marker="o", label=label)
                cover.plot([r["n"] for r in rows], [r["coverage_max"] for r in rows], marker="o", label=label)
    wall.set(xscale="log", yscale="log", xlabel="pool size", ylabel=f"seconds to pick {budget}")
    cover.set(xscale="log", xlabel="pool size", ylabel="coverage: max distance to a pick or label")
    for ax in (wall, cover):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, Path(out).with_suffix(".png"))
    return result
