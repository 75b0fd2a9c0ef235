"""VectorIndex and kmeans on tiny planted data: known neighbours, ids, removal, validation."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.index import VectorIndex, kmeans


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted_clusters(rng: np.random.Generator, n_clusters: int, per: int, dim: int) -> tuple:
    """``n_clusters`` tight groups around orthogonal axes: (vectors [n, dim], label [n])."""
    centres = np.eye(dim, dtype=np.float32)[:n_clusters]
    label = np.repeat(np.arange(n_clusters), per)
    return unit_rows(centres[label] + 0.05 * rng.normal(size=(len(label), dim))), label


@pytest.fixture
def axes() -> np.ndarray:
    return np.eye(4, dtype=np.float32)  # [4, 4]; cos(e_i, e_j) = 0


def test_search_returns_nearest_ids_and_scores(axes):
    index = VectorIndex(4, device=-1)
    index.add(np.array([10, 20, 30, 40]), axes)
    query = unit_rows([[1.0, 0.5, 0.0, 0.0]])
    scores, ids = index.search(query, 2)
    np.testing.assert_array_equal(ids, [[10, 20]])
    np.testing.assert_allclose(scores, [[1 / np.sqrt(1.25), 0.5 / np.sqrt(1.25)]], rtol=1e-6)
    assert len(index) == 4


def test_fewer_than_k_gives_minus_one_and_minus_inf(axes):
    index = VectorIndex(4, device=-1)
    index.add(np.array([7, 8]), axes[:2])
    scores, ids = index.search(axes[:1], 4)
    np.testing.assert_array_equal(ids, [[7, 8, -1, -1]])
    assert np.isneginf(scores[0, 2:]).all()


def test_empty_index(axes):
    index = VectorIndex(4, device=-1)
    assert len(index) == 0
    assert np.isneginf(index.max_similarity(axes)).all()
    assert index.remove(np.array([1])) == 0
    np.testing.assert_array_equal(index.search(axes, 2)[1], -np.ones((4, 2)))


def test_remove_and_readd_same_id_replaces(axes):
    index = VectorIndex(4, device=-1)
    index.add(np.array([1, 2, 3]), axes[:3])
    assert index.remove(np.array([2, 99])) == 1
    assert len(index) == 2
    assert index.max_similarity(axes[1:2])[0] == pytest.approx(0.0, abs=1e-6)
    index.add(np.array([1]), axes[3:4])  # id 1 now points at e3; one copy only
    assert len(index) == 2
    scores, ids = index.search(axes[3:4], 1)
    assert ids[0, 0] == 1 and scores[0, 0] == pytest.approx(1.0)
    assert index.max_similarity(axes[0:1])[0] == pytest.approx(0.0, abs=1e-6)


def test_build_replaces_content(axes):
    index = VectorIndex(4, device=-1)
    index.add(np.array([1, 2]), axes[:2])
    index.build(np.array([5]), axes[2:3])
    assert len(index) == 1
    np.testing.assert_array_equal(index.search(axes[:1], 1)[1], [[5]])


def test_max_similarity_matches_brute_force():
    rng = np.random.default_rng(0)
    base, queries = unit_rows(rng.normal(size=(50, 16))), unit_rows(rng.normal(size=(7, 16)))
    index = VectorIndex(16, device=-1)
    index.add(np.arange(50), base)
    np.testing.assert_allclose(index.max_similarity(queries), (queries @ base.T).max(1), atol=1e-6)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda ix: ix.add(np.array([1]), np.ones((1, 3), np.float32)), "vectors"),
        (lambda ix: ix.add(np.array([1]), np.full((1, 4), np.nan, np.float32)), "vectors"),
        (lambda ix: ix.add(np.array([1, 2]), np.eye(4, dtype=np.float32)[:1]), "ids"),
        (lambda ix: ix.add(np.array([1, 1]), np.eye(4, dtype=np.float32)[:2]), "ids"),
        (lambda ix: ix.add(np.array([[1]]), np.eye(4, dtype=np.float32)[:1]), "ids"),
        (lambda ix: ix.search(np.ones(4, np.float32), 1), "queries"),
        (lambda ix: ix.search(np.array([[np.inf, 0, 0, 0]], np.float32), 1), "queries"),
        (lambda ix: ix.search(np.ones((1, 4), np.float32), 0), "k"),
    ],
)
def test_invalid_input_names_the_field(call, field):
    index = VectorIndex(4, device=-1)
    with pytest.raises(InvalidInput) as err:
        call(index)
    assert err.value.field == field


def test_constructor_validation():
    with pytest.raises(InvalidInput, match="dim"):
        VectorIndex(0)
    with pytest.raises(InvalidInput, match="device"):
        VectorIndex(4, device=faiss.get_num_gpus())


def test_kmeans_recovers_planted_clusters_deterministically():
    vectors, label = planted_clusters(np.random.default_rng(1), 3, 40, 8)
    centroids, assignment = kmeans(vectors, 3, seed=5)
    assert centroids.shape == (3, 8) and assignment.shape == (120,)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)  # spherical
    # each planted cluster lands in one k-means cluster, and the three are different
    mapping = {int(assignment[label == c][0]) for c in range(3)}
    assert len(mapping) == 3
    assert all(len(np.unique(assignment[label == c])) == 1 for c in range(3))
    again = kmeans(vectors, 3, seed=5)
    np.testing.assert_array_equal(again[1], assignment)
    np.testing.assert_array_equal(again[0], centroids)


@pytest.mark.parametrize(("k", "niter", "field"), [(0, 20, "k"), (11, 20, "k"), (2, 0, "niter")])
def test_kmeans_validation(k, niter, field):
    vectors = unit_rows(np.random.default_rng(0).normal(size=(10, 4)))
    with pytest.raises(InvalidInput) as err:
        kmeans(vectors, k, seed=0, niter=niter)
    assert err.value.field == field


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="no GPU visible to FAISS")
def test_gpu_index_and_kmeans_agree_with_cpu():
    rng = np.random.default_rng(3)
    base, queries = unit_rows(rng.normal(size=(500, 32))), unit_rows(rng.normal(size=(20, 32)))
    results = []
    for device in (-1, 0):
        index = VectorIndex(32, device=device)
        index.add(np.arange(500) * 3, base)
        index.remove(np.array([0, 3]))
        results.append(index.search(queries, 5))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    vectors, label = planted_clusters(rng, 3, 40, 8)
    assignment = kmeans(vectors, 3, seed=5, device=0)[1]
    assert all(len(np.unique(assignment[label == c])) == 1 for c in range(3))


def test_set_threads_returns_the_previous_count_and_refuses_nonsense():
    from winnow.core.select.index import set_threads

    before = faiss.omp_get_max_threads()
    try:
        assert set_threads(1) == before
        assert faiss.omp_get_max_threads() == 1
        assert set_threads(2) == 1
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(InvalidInput, match="threads"):
                set_threads(bad)
    finally:
        faiss.omp_set_num_threads(before)


def test_max_similarity_to_matches_the_index_and_is_minus_inf_without_vectors() -> None:
    from winnow.core.select.index import max_similarity_to

    rng = np.random.default_rng(4)
    queries = rng.standard_normal((1000, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    vectors = queries[rng.choice(1000, 70, replace=False)] + 0.1
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(16, -1)
    index.add(np.arange(70), vectors)
    np.testing.assert_allclose(max_similarity_to(queries, vectors, block=128), index.max_similarity(queries), atol=1e-5)
    assert np.isneginf(max_similarity_to(queries, np.zeros((0, 16), np.float32))).all()
    with pytest.raises(InvalidInput) as bad:
        max_similarity_to(queries, np.ones((2, 8), np.float32))
    assert bad.value.field == "vectors"
