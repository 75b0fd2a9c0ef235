"""What every benchmark result carries: machine, versions, seed; and writing JSON + PNG side by side."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path


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
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": "CUDAExecutionProvider" in providers,
        "onnxruntime_providers": providers,
        "versions": versions,
    }


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` atomically (temp file + rename), so a failed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False, default=float) + "\n")
    os.replace(tmp, path)


def new_figure(size: tuple[float, float]):
    """A matplotlib figure and axes drawn off-screen (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_figure(fig, path: Path) -> None:
    """Lay out, write ``path`` as a PNG (120 dpi) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
