"""Selectors (a contract every strategy passes, plus known answers), the guard and the budget."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from winnow.core.domain.errors import EmptyPoolError, InvalidInput
from winnow.core.select.index import blocked_max_similarity
from winnow.core.select.strategies import (
    STRATEGIES,
    Badge,
    BudgetController,
    Candidates,
    ClusterMargin,
    KCenterGreedy,
    NearDuplicateGuard,
    RandomStrategy,
    Strategy,
    UncertaintyStrategy,
    make_strategy,
)

DIM, N_CLASSES = 16, 4


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(
    seed: int, sizes: tuple[int, ...] = (20, 20, 20, 20), spread: float = 0.05
) -> tuple[Candidates, np.ndarray]:
    """Tight clusters around orthogonal axes, random probabilities, least-confidence scores.

    Returns (candidates without anchors, cluster label [n]).
    """
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(len(sizes)), sizes)
    emb = unit_rows(np.eye(DIM)[label] + spread * rng.normal(size=(len(label), DIM)))
    probs = rng.dirichlet(np.ones(N_CLASSES), size=len(label))  # [n, C]
    return Candidates(emb, probs, 1.0 - probs.max(axis=1)), label


def with_anchors(candidates: Candidates, anchors: np.ndarray) -> Candidates:
    return Candidates(candidates.embeddings, candidates.probs, candidates.uncertainty, anchors)


class SelectorContract:
    """What every Strategy promises; each strategy's test class subclasses this."""

    name: str
    strategy_class: type[Strategy]

    def make(self) -> Strategy:
        return make_strategy(self.name)

    def test_registered_under_its_name(self):
        assert self.name in STRATEGIES
        assert type(self.make()) is self.strategy_class

    @pytest.mark.parametrize("n", [1, 7, 80])
    def test_distinct_valid_indices_in_range(self, n):
        candidates, _ = planted(0)
        picks = self.make().select(candidates, n, np.random.default_rng(0))
        assert picks.dtype == np.int64 and picks.shape == (n,)
        assert len(np.unique(picks)) == n
        assert ((picks >= 0) & (picks < len(candidates))).all()

    def test_n_above_pool_size_returns_the_whole_pool(self):
        candidates, _ = planted(1, sizes=(3, 2))
        picks = self.make().select(candidates, 50, np.random.default_rng(0))
        np.testing.assert_array_equal(np.sort(picks), np.arange(5))

    def test_single_candidate(self):
        candidates, _ = planted(1, sizes=(1,))
        picks = self.make().select(candidates, 3, np.random.default_rng(0))
        np.testing.assert_array_equal(picks, [0])

    def test_deterministic_for_a_seed(self):
        candidates, _ = planted(2)
        first = self.make().select(candidates, 10, np.random.default_rng(42))
        second = self.make().select(candidates, 10, np.random.default_rng(42))
        np.testing.assert_array_equal(first, second)

    def test_works_with_anchors(self):
        candidates, _ = planted(3)
        anchors = unit_rows(np.random.default_rng(3).normal(size=(6, DIM)))
        picks = self.make().select(with_anchors(candidates, anchors), 10, np.random.default_rng(0))
        assert len(np.unique(picks)) == 10

    def test_identical_candidates_still_give_distinct_picks(self):
        emb = np.tile(unit_rows(np.ones((1, DIM))), (12, 1))
        probs = np.tile([[0.7, 0.1, 0.1, 0.1]], (12, 1))
        candidates = Candidates(emb, probs, np.full(12, 0.3), emb[:2])
        for n in (5, 12):
            picks = self.make().select(candidates, n, np.random.default_rng(0))
            assert len(np.unique(picks)) == n

    def test_empty_pool_raises(self):
        empty = Candidates(np.empty((0, DIM)), np.empty((0, N_CLASSES)), np.empty(0))
        with pytest.raises(EmptyPoolError):
            self.make().select(empty, 5, np.random.default_rng(0))

    @pytest.mark.parametrize("n", [0, -3, 2.5])
    def test_bad_batch_size_raises(self, n):
        candidates, _ = planted(0)
        with pytest.raises(InvalidInput) as err:
            self.make().select(candidates, n, np.random.default_rng(0))
        assert err.value.field == "n"


class TestRandomSelector(SelectorContract):
    name, strategy_class = "random", RandomStrategy

    def test_different_seeds_differ(self):
        candidates, _ = planted(0)
        picks = [self.make().select(candidates, 10, np.random.default_rng(s)) for s in (1, 2)]
        assert not np.array_equal(*picks)


class TestUncertaintySelector(SelectorContract):
    name, strategy_class = "uncertainty", UncertaintyStrategy

    def test_top_n_with_ties_by_index(self):
        emb = unit_rows(np.random.default_rng(0).normal(size=(6, DIM)))
        candidates = Candidates(emb, np.full((6, 2), 0.5), [0.1, 0.9, 0.5, 0.9, 0.2, 0.5])
        picks = self.make().select(candidates, 4, np.random.default_rng(0))
        np.testing.assert_array_equal(picks, [1, 3, 2, 5])


def kcenter_reference(x: np.ndarray, anchors: np.ndarray, n: int) -> list[int]:
    """Farthest-first from scratch: full distance matrix every step."""
    picks: list[int] = []
    for _ in range(n):
        centres = np.vstack([anchors, x[picks]])
        dist = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1).min(1)
        dist[picks] = -1.0
        picks.append(int(np.argmax(dist)))
    return picks


class TestKCenterGreedy(SelectorContract):
    name, strategy_class = "kcenter", KCenterGreedy

    def test_known_order_on_the_circle(self):
        degrees = np.array([10.0, 90.0, 180.0, 200.0, 300.0])
        rad = np.deg2rad(degrees)
        emb = np.stack([np.cos(rad), np.sin(rad)], axis=1)
        candidates = Candidates(emb, np.full((5, 2), 0.5), np.zeros(5), [[1.0, 0.0]])  # anchor 0°
        # 180° is farthest from 0°; then 90° (90° from both centres), then 300° (60° from 0°)
        picks = self.make().select(candidates, 3, np.random.default_rng(0))
        np.testing.assert_array_equal(picks, [2, 1, 4])

    def test_picks_the_planted_far_cluster_first(self):
        candidates, label = planted(4, sizes=(100, 3))  # main cluster on e0, far cluster on e1
        main = candidates.embeddings[label == 0]
        picks = self.make().select(with_anchors(candidates, main[::5]), 1, np.random.default_rng(0))
        assert label[picks[0]] == 1
        picks = self.make().select(with_anchors(candidates, main[::5]), 3, np.random.default_rng(0))
        assert label[picks[0]] == 1

    @pytest.mark.parametrize("n_anchors", [0, 3])
    def test_matches_a_from_scratch_reference(self, n_anchors):
        rng = np.random.default_rng(5)
        emb = unit_rows(rng.normal(size=(60, 8)))
        anchors = unit_rows(rng.normal(size=(n_anchors, 8))) if n_anchors else None
        candidates = Candidates(emb, np.full((60, 2), 0.5), np.zeros(60), anchors)
        picks = self.make().select(candidates, 15, np.random.default_rng(0))
        if n_anchors == 0:  # the first centre is random; the rest follows from it
            anchors = emb[picks[:1]]
            assert picks[1:].tolist() == kcenter_reference(emb, anchors, 14)
        else:
            assert picks.tolist() == kcenter_reference(emb, anchors, 15)


class TestClusterMargin(SelectorContract):
    name, strategy_class = "cluster_margin", ClusterMargin

    def test_picks_span_planted_clusters(self):
        candidates, label = planted(6)
        # cluster 0 is the most uncertain of all, so plain uncertainty takes only from it
        unc = np.where(label == 0, 0.9, 0.5) + 0.01 * np.random.default_rng(6).random(len(label))
        candidates = Candidates(candidates.embeddings, candidates.probs, unc)
        top = UncertaintyStrategy().select(candidates, 4, np.random.default_rng(0))
        assert set(label[top]) == {0}
        for seed in range(5):
            picks = ClusterMargin(pool_factor=20).select(candidates, 4, np.random.default_rng(seed))
            assert len(set(label[picks])) >= 3
            assert label[picks[0]] == 0 and picks[0] == np.argmax(unc)  # most uncertain first

    def test_pool_factor_one_is_plain_uncertainty(self):
        candidates, _ = planted(7)
        picks = ClusterMargin(pool_factor=1).select(candidates, 8, np.random.default_rng(0))
        expected = UncertaintyStrategy().select(candidates, 8, np.random.default_rng(0))
        np.testing.assert_array_equal(picks, expected)

    def test_picks_come_from_the_uncertain_pool(self):
        candidates, _ = planted(8)
        picks = ClusterMargin(pool_factor=3).select(candidates, 5, np.random.default_rng(0))
        pool = np.argsort(-candidates.uncertainty, kind="stable")[:15]
        assert set(picks) <= set(pool)
        assert np.all(np.diff(candidates.uncertainty[picks]) <= 0)  # in order of uncertainty

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [({"pool_factor": 0}, "pool_factor"), ({"niter": 0}, "niter"), ({"device": 99}, "device")],
    )
    def test_rejects_bad_arguments(self, kwargs, field):
        with pytest.raises(InvalidInput) as err:
            ClusterMargin(**kwargs)
        assert err.value.field == field


class TestBadge(SelectorContract):
    name, strategy_class = "badge", Badge

    def test_first_pick_is_the_largest_gradient(self):
        candidates, _ = planted(9)
        probs = np.tile([[0.97, 0.01, 0.01, 0.01]], (len(candidates), 1))
        probs[37] = [0.34, 0.33, 0.33, 0.0]
        candidates = Candidates(candidates.embeddings, probs, 1.0 - probs.max(1))
        assert self.make().select(candidates, 5, np.random.default_rng(0))[0] == 37

    def test_picks_cover_planted_clusters(self):
        candidates, label = planted(10)
        # equally unsure everywhere, so gradient distances follow the embedding clusters
        mix = np.random.default_rng(10).dirichlet(np.ones(N_CLASSES), size=len(label))
        probs = 0.9 * np.array([0.4, 0.3, 0.2, 0.1]) + 0.1 * mix
        candidates = Candidates(candidates.embeddings, probs, 1.0 - probs.max(1))
        for seed in range(5):
            picks = self.make().select(candidates, 4, np.random.default_rng(seed))
            assert len(set(label[picks])) >= 3

    @pytest.mark.parametrize("block", [1, 64])
    def test_draws_as_k_means_plus_plus_on_explicit_gradient_embeddings(self, block):
        """The second and third picks follow the D^2 distribution of the written-out gradient
        embeddings (total variation over 20,000 seeds), with bounds folded after every pick (block 1)
        and with the lazy rejection sampling between folds (block 64)."""
        rng = np.random.default_rng(11)
        emb = unit_rows(rng.normal(size=(8, 5)))
        probs = rng.dirichlet(np.ones(3), size=8)
        a = probs - np.eye(3)[probs.argmax(1)]
        g = (a[:, :, None] * emb[:, None, :]).reshape(8, -1)  # [N, C*D]
        first = int(np.argmax((g * g).sum(1)))
        d2 = lambda rows: ((g[:, None, :] - g[rows][None, :, :]) ** 2).sum(-1).min(1)  # noqa: E731
        expected = np.zeros((8, 8))
        p1 = d2([first]) / d2([first]).sum()
        for j in range(8):
            if p1[j] > 0:
                p2 = d2([first, j]) / d2([first, j]).sum()
                expected[j] = p1[j] * p2
        seen = np.zeros((8, 8))
        for seed in range(20_000):
            picks = Badge(block=block)._select(Candidates(emb, probs, np.zeros(8)), 3, np.random.default_rng(seed))
            assert picks[0] == first and len(set(picks.tolist())) == 3
            seen[picks[1], picks[2]] += 1
        tv = 0.5 * np.abs(seen / seen.sum() - expected).sum()
        assert tv < 0.03, tv


def test_make_selector_rejects_unknown_names_and_arguments():
    with pytest.raises(InvalidInput) as err:
        make_strategy("entropy_magic")
    assert err.value.field == "strategy" and "entropy_magic" in str(err.value)
    with pytest.raises(InvalidInput) as err:
        make_strategy("random", pool_factor=3)
    assert err.value.field == "strategy"
    assert make_strategy("cluster_margin", pool_factor=4).pool_factor == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"probs": np.ones((3, 2))}, "probs"),
        ({"uncertainty": np.ones(4)}, "uncertainty"),
        ({"uncertainty": np.array([0.1, np.nan, 0.2, 0.3, 0.4])}, "uncertainty"),
        ({"anchors": np.ones((2, DIM + 1))}, "anchors"),
        ({"embeddings": np.ones(5 * DIM)}, "embeddings"),
    ],
)
def test_candidates_reject_inconsistent_shapes(kwargs, field):
    fields = {
        "embeddings": unit_rows(np.ones((5, DIM))),
        "probs": np.full((5, 2), 0.5),
        "uncertainty": np.zeros(5),
    }
    with pytest.raises(InvalidInput) as err:
        Candidates(**(fields | kwargs))
    assert err.value.field == field


def test_candidates_default_anchors_are_empty():
    candidates, _ = planted(0, sizes=(3,))
    assert candidates.anchors.shape == (0, DIM) and candidates.anchors.dtype == np.float32


def perturbed(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly cosine ``cos`` from unit vector ``v``."""
    u = rng.normal(size=v.shape)
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    return (cos * v + np.sqrt(1.0 - cos**2) * u).astype(np.float32)


class TestNearDuplicateGuard:
    def setup_method(self):
        self.rng = np.random.default_rng(12)
        self.known = unit_rows(self.rng.normal(size=(10, 64)))
        self.guard = NearDuplicateGuard(64, threshold=0.95)
        self.guard.add(self.known)

    def test_catches_a_perturbed_copy_not_an_unrelated_vector(self):
        copy = perturbed(self.known[3], 0.99, self.rng)
        unrelated = unit_rows(self.rng.normal(size=(1, 64)))[0]
        np.testing.assert_array_equal(self.guard.is_duplicate(np.stack([copy, unrelated])), [1, 0])

    def test_threshold_is_inclusive(self):
        guard = NearDuplicateGuard(2, threshold=0.6)
        guard.add(np.array([[1.0, 0.0]]))
        batch = np.array([[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]], np.float32)
        np.testing.assert_array_equal(guard.is_duplicate(batch), [1, 0, 0])

    def test_validation(self):
        with pytest.raises(InvalidInput, match="threshold"):
            NearDuplicateGuard(4, threshold=1.5)
        with pytest.raises(InvalidInput, match="queries: expected dimension 64"):
            self.guard.is_duplicate(np.ones((2, 3)))
        with pytest.raises(InvalidInput, match="vectors: expected dimension 64"):
            self.guard.add(np.ones((2, 3)))
        with pytest.raises(InvalidInput, match="since"):
            self.guard.max_similarity(self.known, since=11)
        assert len(self.guard) == 10  # a refused add leaves nothing half-written

    @pytest.mark.parametrize("seed", range(20))
    def test_a_check_from_a_mark_on_and_the_earlier_one_give_the_whole_search(self, seed):
        # what the stream selector does per backlog row: checked against the first m items, later against the
        # rest only; the higher of the two is the highest cosine to all of them, whatever the growth in between
        rng = np.random.default_rng(seed)
        guard, whole = NearDuplicateGuard(64), []
        queries = unit_rows(rng.normal(size=(30, 64)))
        seen, marks = np.full(30, -np.inf, np.float32), np.zeros(30, np.int64)
        for _ in range(6):
            batch = unit_rows(rng.normal(size=(int(rng.integers(0, 200)), 64)))
            guard.add(batch)
            whole.append(batch)
            rows = np.flatnonzero(rng.random(30) < 0.5)
            for r in rows.tolist():
                seen[r] = max(seen[r], guard.max_similarity(queries[r:r + 1], int(marks[r]))[0])
                marks[r] = len(guard)
        every = np.concatenate(whole)
        checked = marks == len(guard)
        np.testing.assert_allclose(seen[checked], (queries[checked] @ every.T).max(1), rtol=1e-5)

    def test_blocks_cover_every_vector(self):
        # more vectors than one block of pairs holds: the products are split, the answer is not
        vectors = unit_rows(self.rng.normal(size=(3000, 8)))
        queries = unit_rows(self.rng.normal(size=(700, 8)))
        np.testing.assert_allclose(blocked_max_similarity(queries, vectors, block=64, cells=1000),
                                   (queries @ vectors.T).max(1), rtol=1e-5)


@pytest.mark.parametrize(("labels", "per_items"), [(25, 100), (1, 3), (2, 7), (0, 5), (4, 4)])
@pytest.mark.parametrize("batches", [[1] * 50, [7, 13, 1, 0, 29, 50], [100, 100, 3]])
def test_budget_admits_exactly_its_rate(labels, per_items, batches):
    budget = BudgetController(labels, per_items)
    seen = spent = 0
    for size in batches:
        budget.observe(size)
        seen += size
        spent += budget.grant(10**9)
        assert spent == seen * labels // per_items


@given(
    labels=st.integers(0, 50),
    extra=st.integers(0, 100),
    steps=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10)), max_size=30),
)
def test_budget_never_exceeds_its_rate_and_keeps_unspent_credit(labels, extra, steps):
    per_items = labels + extra + 1
    budget = BudgetController(labels, per_items)
    seen = spent = 0
    for arriving, requested in steps:
        budget.observe(arriving)
        seen += arriving
        granted = budget.grant(requested)
        spent += granted
        assert 0 <= granted <= requested
        assert spent + budget.credit == Fraction(seen * labels, per_items)
        assert budget.whole == int(budget.credit)
        assert budget.observed == seen and budget.earned() == seen * labels // per_items
        assert budget.earned(0.25) == int(0.25 * seen * labels // per_items) <= budget.earned()
    spent += budget.grant(10**9)
    assert spent == seen * labels // per_items


@pytest.mark.parametrize(
    ("args", "field"),
    [((-1, 10), "labels"), ((11, 10), "labels"), ((1, 0), "per_items")],
)
def test_budget_validation(args, field):
    with pytest.raises(InvalidInput) as err:
        BudgetController(*args)
    assert err.value.field == field
    budget = BudgetController(1, 2)
    with pytest.raises(InvalidInput, match="n_items"):
        budget.observe(-1)
    with pytest.raises(InvalidInput, match="requested"):
        budget.grant(1.5)


@pytest.mark.parametrize("name", ["uncertainty", "cluster_margin"])
def test_a_strategys_shortlist_picks_what_the_whole_pool_picks(name: str) -> None:
    """The selector hands these strategies only the ``shortlist(n)`` most uncertain candidates (in pool
    order): they pick the same items as from the whole pool, so a pick costs what it takes."""
    from winnow.core.select.strategies import Candidates, make_strategy

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs = rng.dirichlet(np.ones(4), 3000)
    unc = rng.random(3000)  # distinct: no ties at the shortlist's edge
    strategy = make_strategy(name)
    full = strategy.select(Candidates(x, probs, unc), 25, np.random.default_rng(9))
    rows = np.sort(np.argpartition(-unc, strategy.shortlist(25) - 1)[: strategy.shortlist(25)])
    short = rows[strategy.select(Candidates(x[rows], probs[rows], unc[rows]), 25, np.random.default_rng(9))]
    np.testing.assert_array_equal(np.sort(short), np.sort(full))
    assert make_strategy("kcenter").shortlist(25) is None and make_strategy("badge").shortlist(25) is None


def test_kcenter_with_the_anchors_similarity_given_picks_as_with_the_anchors() -> None:
    """The stream selector hands k-center its guard's similarities instead of the anchors themselves:
    the same picks, and the first is no longer random once anything is labeled or queued."""
    from winnow.core.select.index import VectorIndex
    from winnow.core.select.strategies import Candidates, make_strategy

    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    anchors = x[:40]
    index = VectorIndex(8)
    index.add(np.arange(40), anchors)
    probs, unc = np.full((460, 1), 1.0), np.zeros(460)
    kcenter = make_strategy("kcenter")
    given_anchors = kcenter.select(Candidates(x[40:], probs, unc, anchors), 20, np.random.default_rng(0))
    given_similarity = kcenter.select(Candidates(x[40:], probs, unc, anchor_similarity=index.max_similarity(x[40:])),
                                      20, np.random.default_rng(1))  # another rng: nothing random is left
    np.testing.assert_array_equal(given_anchors, given_similarity)
    with pytest.raises(InvalidInput) as e:
        Candidates(x[40:], probs, unc, anchor_similarity=np.zeros(3))
    assert e.value.field == "anchor_similarity"


@pytest.mark.parametrize("seed", range(5))
def test_kcenter_with_bounded_anchor_distances_picks_as_with_exact_ones(seed: int) -> None:
    """Many anchors: their distances start as bounds from a sample of them and are made exact only for
    the rows a scan reaches; the picks are those of the exact distances."""
    from winnow.core.select.index import max_similarity_to
    from winnow.core.select.strategies import anchor_bounds, farthest_first

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM))
    x = unit_rows(centres[rng.integers(0, 30, 12_000)] + 0.5 * rng.standard_normal((12_000, DIM)))
    anchors = unit_rows(centres[rng.integers(0, 30, 600)] + 0.5 * rng.standard_normal((600, DIM)))
    exact = farthest_first(x, 2.0 - 2.0 * max_similarity_to(x, anchors), 80)
    # a sample of 10 anchors leaves most clusters without one: their rows' bounds are far too high, and
    # the scans go past the rows ordered after a fold (4,096) before the exact best shows
    bounds, refine = anchor_bounds(x, anchors, sample=10)
    assert (bounds >= 2.0 - 2.0 * max_similarity_to(x, anchors) - 1e-6).all()  # bounds, never below
    refined = []
    picks = farthest_first(x, bounds, 80, refine=lambda rows: refined.append(len(rows)) or refine(rows),
                           refine_ahead=256)
    assert picks.tolist() == exact.tolist() and sum(refined) > 4096
    strategy = KCenterGreedy(device=-1)
    strategy.lazy_anchors = 100
    candidates = Candidates(x, np.full((len(x), 2), 0.5), np.zeros(len(x)), anchors)
    assert strategy.select(candidates, 80, np.random.default_rng(0)).tolist() == exact.tolist()
