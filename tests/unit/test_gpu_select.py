"""Pool selection's CUDA kernels (core/select/gpu.py): they pick what the CPU paths pick (run where a GPU
is), and the device is chosen and refused by name everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.gpu import cuda_count, cuda_device, farthest_first_cuda, kmeans_cuda, max_similarity_cuda
from winnow.core.select.index import max_similarity_to
from winnow.core.select.strategies import Candidates, KCenterGreedy, farthest_first

needs_cuda = pytest.mark.skipif(cuda_count() == 0, reason="no CUDA device visible to torch")
# the kernels' code runs on torch's CPU everywhere, and on the GPU where there is one
DEVICES = [pytest.param(torch.device("cpu"), id="torch-cpu"),
           pytest.param(0, id="cuda", marks=[pytest.mark.gpu, needs_cuda])]


def pool(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    x = centres[rng.integers(0, 12, n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_device_is_the_first_gpu_or_the_cpu_and_an_unknown_one_is_refused() -> None:
    assert cuda_device(None) == (0 if cuda_count() else -1)
    assert cuda_device(-1) == -1
    for bad in (cuda_count(), -2, True, "0"):
        with pytest.raises(InvalidInput) as err:
            cuda_device(bad)
        assert err.value.field == "device"
    with pytest.raises(InvalidInput) as err:
        KCenterGreedy(device=cuda_count())
    assert err.value.field == "device"


@pytest.mark.skipif(cuda_count() > 0, reason="checks the refusal where no GPU is")
def test_the_kernels_refuse_a_device_that_is_not_there() -> None:
    x = pool(50)
    for call in (lambda: farthest_first_cuda(x, np.full(50, np.inf, np.float32), 3),
                 lambda: kmeans_cuda(x, 3, 0), lambda: max_similarity_cuda(x, x[:5])):
        with pytest.raises(InvalidInput) as err:
            call()
        assert err.value.field == "device"


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_traversal_picks_what_the_cpu_traversal_picks(device) -> None:
    x = pool(20_000)
    anchors = x[:200]
    similarity = max_similarity_to(x, anchors)
    np.testing.assert_allclose(max_similarity_cuda(x, anchors, device), similarity, atol=1e-5)
    min_dist = 2.0 - 2.0 * similarity
    cpu, gpu = farthest_first(x, min_dist, 300), farthest_first_cuda(x, min_dist, 300, device=device)
    assert (cpu == gpu).mean() > 0.98  # the rest: float ties between equally far rows
    cover = [float((2 - 2 * max_similarity_to(x, np.concatenate([anchors, x[p]]))).max()) for p in (cpu, gpu)]
    assert cover[1] == pytest.approx(cover[0], abs=1e-5)
    assert farthest_first_cuda(x, np.full(len(x), np.inf, np.float32), 5, first=7, device=device)[0] == 7
    with pytest.raises(InvalidInput, match="n"):
        farthest_first_cuda(x[:3], np.zeros(3, np.float32), 4, device=device)


@pytest.mark.gpu
@needs_cuda
def test_k_center_on_the_gpu_picks_what_it_picks_on_the_cpu() -> None:
    x = pool(20_000)
    candidates = Candidates(x, np.ones((len(x), 1)), np.zeros(len(x)), x[:200])
    picks = [KCenterGreedy(device=d).select(candidates, 100, np.random.default_rng(0)) for d in (-1, 0)]
    assert (picks[0] == picks[1]).mean() > 0.98


@pytest.mark.parametrize("device", DEVICES)
def test_torch_kmeans_finds_planted_clusters_and_is_deterministic(device) -> None:
    rng = np.random.default_rng(1)
    centres = np.eye(16, dtype=np.float32)[:4] * 6
    label = rng.integers(0, 4, 4000)
    x = centres[label] + rng.standard_normal((4000, 16), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    found, assignment = kmeans_cuda(x, 4, seed=0, device=device)
    assert found.shape == (4, 16) and np.allclose(np.linalg.norm(found, axis=1), 1, atol=1e-5)
    purity = sum(np.bincount(assignment[label == c]).max() for c in range(4)) / len(x)
    assert purity > 0.97
    np.testing.assert_array_equal(kmeans_cuda(x, 4, seed=0, device=device)[1], assignment)
    with pytest.raises(InvalidInput, match="k"):
        kmeans_cuda(x[:3], 4, seed=0, device=device)
