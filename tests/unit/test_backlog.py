"""The selector's Backlog keeps each item's row in step through any sequence of adds, drops and
rescores (checked against a plain dict-of-rows model); a drop moves O(dropped) rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from winnow.core.loop.backlog import Backlog

D, C = 4, 3


def rows(rng: np.random.Generator, start: int, m: int):
    ids = [f"i{start + k}" for k in range(m)]
    emb = rng.standard_normal((m, D)).astype(np.float32)
    probs = rng.dirichlet(np.ones(C), m)
    unc = rng.random(m)
    return ids, emb, probs, unc


ops = st.lists(st.tuples(st.sampled_from(["add", "drop", "rescore", "raise", "top"]), st.integers(0, 200)),
               max_size=30)


@settings(max_examples=150, deadline=None)
@given(ops=ops, seed=st.integers(0, 2**31 - 1))
def test_rows_stay_in_step_with_a_plain_model(ops, seed) -> None:
    rng = np.random.default_rng(seed)
    backlog, model, next_id = Backlog(), {}, 0  # model: id -> (emb, probs, unc)
    dup: dict[str, float] = {}
    for op, m in ops:
        if op == "add":
            ids, emb, probs, unc = rows(rng, next_id, m % 70)
            next_id += m % 70
            backlog.add(ids, emb, probs, unc)
            model.update((i, (e, p, u)) for i, e, p, u in zip(ids, emb, probs, unc))
            dup.update((i, (-np.inf, 0)) for i in ids)
        elif op == "raise" and model:
            chosen = np.flatnonzero(rng.random(len(backlog)) < 0.5)
            similarity = rng.random(len(chosen)).astype(np.float32)
            for item_id, s in zip(backlog.id_at(chosen), similarity):
                dup[item_id] = (max(dup[item_id][0], s), m)
            backlog.raise_dup(chosen, similarity, m)
        elif op == "top":
            # the k most uncertain rows, as a sort of the whole backlog gives them (ties either way): through
            # drops, adds (above and below a cutoff kept from an earlier call) and rescores
            k = m % 40 + 1
            top = backlog.most_uncertain(k)
            assert len(top) == min(k, len(backlog)) and (np.diff(top) > 0).all()
            values = np.sort(np.array([model[i][2] for i in backlog.id_at(top)]))
            np.testing.assert_array_equal(values, np.sort(np.array([u for _, _, u in model.values()]))[::-1][:k][::-1])
        elif op == "drop" and model:
            remove = rng.random(len(backlog)) < (m % 10) / 10
            for item_id in backlog.id_at(np.flatnonzero(remove)):
                del model[item_id]
            backlog.drop(remove)
        elif op == "rescore" and model:
            probs, unc = rng.dirichlet(np.ones(C), len(model)), rng.random(len(model))
            backlog.rescore(probs, unc)
            for item_id, p, u in zip(backlog.ids, probs, unc):
                model[item_id] = (model[item_id][0], p, u)
        assert len(backlog) == len(model) and sorted(backlog.ids) == sorted(model)
        for k, item_id in enumerate(backlog.ids):
            emb, probs, unc = model[item_id]
            np.testing.assert_array_equal(backlog.emb[k], emb)
            np.testing.assert_array_equal(backlog.probs[k], probs)
            assert backlog.unc[k] == unc and backlog.conf[k] == probs.max()
            assert (backlog.dup[k], backlog.dup_at[k]) == dup[item_id]
        assert all(item_id in backlog for item_id in model)
        assert backlog.id_at(np.arange(len(backlog))) == backlog.ids


def test_a_drop_moves_only_rows_from_the_end_into_the_holes() -> None:
    rng = np.random.default_rng(1)
    backlog = Backlog()
    backlog.add(*rows(rng, 0, 6))
    backlog.drop(np.array([False, True, False, False, True, False]))
    assert backlog.ids == ["i0", "i5", "i2", "i3"]  # i5 filled i1's hole; i4 was dropped at the end
    backlog.drop(np.array([False, False, False, True]))
    assert backlog.ids == ["i0", "i5", "i2"]


def test_bad_rows_are_refused_and_leave_the_backlog_unchanged() -> None:
    rng = np.random.default_rng(0)
    backlog = Backlog()
    backlog.add(*rows(rng, 0, 3))
    ids, emb, probs, unc = rows(rng, 3, 2)
    with pytest.raises(ValueError, match="disagree"):
        backlog.add(ids, emb[:1], probs, unc)
    with pytest.raises(ValueError, match="already in the backlog"):
        backlog.add(["i1", "i9"], emb, probs, unc)
    with pytest.raises(ValueError, match="drop mask"):
        backlog.drop(np.zeros(5, bool))
    with pytest.raises(ValueError, match="rescore"):
        backlog.rescore(probs, unc)
    assert backlog.ids == ["i0", "i1", "i2"]
    assert "i9" not in backlog
