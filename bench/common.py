"""What every benchmark result carries: machine, versions, seed; and writing JSON + PNG side by side."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


def environment() -> dict:
    """Machine and library versions, so a result says where it was measured."""
    versions = {}
    for dist in ("winnow", "numpy", "torch", "onnxruntime", "faiss-cpu", "faiss-gpu", "kafka-python", "grpcio"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort
        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    torch = sys.modules.get("torch")  # imported by whatever ran the benchmark; never imported here
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": "CUDAExecutionProvider" in providers,
        "onnxruntime_providers": providers,
        "versions": versions,
        "commit": _commit(),
        # a seed's stream reproduces only on the same number of threads (their sums round differently)
        "torch_threads": torch.get_num_threads() if torch is not None else None,
    }


def _commit() -> str | None:
    """The checkout's commit (with ``+changes`` when its tracked files differ from it), or None where this
    code is not the top of a git checkout (an installed wheel, even inside another repository)."""
    root = Path(__file__).resolve().parent.parent
    try:
        top, head = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.split()
        if Path(top).resolve() != root:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=10).returncode != 0
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return f"{head}+changes" if dirty else head


def standard(value: Any) -> Any:
    """``value`` as standard JSON types: NaN and infinities become None (null), NumPy scalars and
    arrays become numbers and lists, paths become strings; dict keys become strings."""
    if isinstance(value, dict):
        return {str(k): standard(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [standard(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` as standard JSON (no NaN or Infinity: they are null), atomically (temp file +
    rename), so a failed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(standard(result), indent=2, sort_keys=False, allow_nan=False) + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def new_figure(size: tuple[float, float], ncols: int = 1):
    """A matplotlib figure and its axes (``ncols`` side by side) drawn off-screen (the Agg backend:
    no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=size)


def save_figure(fig, path: Path) -> None:
    """Lay out, write ``path`` as a PNG (120 dpi) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
