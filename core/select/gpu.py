"""Pool selection's kernels in PyTorch on a CUDA device: exact k-center traversal, the similarity to
labeled anchors, and spherical k-means. They need no FAISS GPU build (the GPU image has none), and
they give what the CPU paths give (:func:`winnow.core.select.strategies.farthest_first`,
:func:`winnow.core.select.index.kmeans`), in float32.

On a GPU the classic farthest-first loop is the fast one: each pick is one matrix-vector product over
the pool held on the device (1,000,000 x 384 in float32 is 1.5 GB, read in about half a millisecond),
and no pick waits for the host, so the CPU path's lazy bounds would only add work.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import numpy as np
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.index import as_vectors, kmeans_input

DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl")  # a loaded NVIDIA driver
BLOCK = 65_536  # rows per matrix product where a product of all rows at once would not fit


@cache
def cuda_count() -> int:
    """CUDA devices torch sees (0 without torch's CUDA build or a GPU). Where no NVIDIA driver is
    loaded, torch is not imported to learn it (the CPU path stays light: 1.5 s and 400 MB less)."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in DRIVER_FILES):
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_device(device: int | None) -> int:
    """The CUDA device to select on: an id ``>= 0``, or ``-1`` for the CPU; ``None`` means device 0
    when torch sees a GPU, else the CPU. InvalidInput("device") for an id torch does not see."""
    count = cuda_count()
    if device is None:
        return 0 if count else -1
    if isinstance(device, bool) or not isinstance(device, int) or not -1 <= device < count:
        raise InvalidInput("device", f"{device!r} is not -1 (CPU) or a CUDA device id below {count}")
    return device


def _on(device):
    """The torch device of a CUDA id; a ``torch.device`` passes as it is (the tests run these kernels
    on the CPU too, where no GPU is)."""
    import torch

    if isinstance(device, torch.device):
        return device
    if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < cuda_count():
        raise InvalidInput("device", f"{device!r} is not a CUDA device id below {cuda_count()}")
    return torch.device("cuda", device)


def max_similarity_cuda(queries: np.ndarray, vectors: np.ndarray, device: int = 0) -> np.ndarray:
    """Highest cosine of each query ``[q, D]`` to any of ``vectors`` ``[m, D]`` on CUDA ``device``:
    float32 ``[q]``, ``-inf`` when there are none (as :func:`~winnow.core.select.index.max_similarity_to`)."""
    import torch

    x = as_vectors("queries", queries)
    v = as_vectors("vectors", vectors, x.shape[1])
    if not len(v) or not len(x):
        return np.full(len(x), -np.inf, np.float32)
    dev = _on(device)
    vt = torch.from_numpy(v).to(dev)
    out = torch.empty(len(x), dtype=torch.float32, device=dev)
    for start in range(0, len(x), BLOCK):
        part = torch.from_numpy(x[start:start + BLOCK]).to(dev, non_blocking=True)
        out[start:start + BLOCK] = (part @ vt.T).amax(dim=1)
    return out.cpu().numpy()


def farthest_first_cuda(x: np.ndarray, min_dist: np.ndarray, n: int, first: int | None = None,
                        device: int = 0) -> np.ndarray:
    """``n`` rows of ``x`` (float32 ``[N, D]``, unit rows) by farthest-first traversal on CUDA
    ``device``, as :func:`~winnow.core.select.strategies.farthest_first` picks them: each the row whose
    squared distance (``2 - 2 cos``) to its nearest centre is largest, given ``min_dist`` [N] (to the
    anchors; inf where there are none); ``first`` is the first pick, if given. int64 ``[n]``."""
    import torch

    x = as_vectors("x", x)
    if not 1 <= n <= len(x):
        raise InvalidInput("n", f"must be between 1 and the number of rows {len(x)}, got {n!r}")
    dev = _on(device)
    xt = torch.from_numpy(x).to(dev)  # [N, D]
    dist = torch.from_numpy(np.ascontiguousarray(min_dist, np.float32)).to(dev)  # [N]
    picks = torch.empty(n, dtype=torch.int64, device=dev)
    gone = torch.tensor(-torch.inf, device=dev)
    for t in range(n):
        # a 0-d tensor: the loop never waits for the device
        pick = torch.tensor(first, device=dev) if t == 0 and first is not None else torch.argmax(dist)
        picks[t] = pick
        torch.minimum(dist, 2.0 - 2.0 * (xt @ xt[pick]), out=dist)
        dist[pick] = gone
    return picks.cpu().numpy()


def kmeans_cuda(vectors: np.ndarray, k: int, seed: int, niter: int = 20,
                device: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (Lloyd: cosine assignment, unit-norm centroids) on CUDA ``device``, started
    from ``k`` distinct rows drawn with ``seed``; a centroid left with no rows keeps its place.
    Deterministic for a seed, data and device (up to float ties). Returns centroids float32 ``[k, D]``
    and each row's nearest centroid int64 ``[n]`` (as :func:`~winnow.core.select.index.kmeans`)."""
    import torch

    x = kmeans_input(vectors, k, niter)
    dev = _on(device)
    xt = torch.from_numpy(x).to(dev)  # [n, D]
    start = np.random.default_rng(seed).choice(len(x), k, replace=False)
    centroids = xt[torch.from_numpy(start).to(dev)].clone()  # [k, D]
    assignment = torch.empty(len(x), dtype=torch.int64, device=dev)

    def assign() -> None:
        for s in range(0, len(x), BLOCK):
            assignment[s:s + BLOCK] = (xt[s:s + BLOCK] @ centroids.T).argmax(dim=1)

    for _ in range(niter):
        assign()
        sums = torch.zeros_like(centroids).index_add_(0, assignment, xt)
        norms = sums.norm(dim=1, keepdim=True)
        centroids = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centroids)
    assign()
    return centroids.cpu().numpy(), assignment.cpu().numpy()
