"""The selector's Backlog keeps its rows in step through any sequence of adds, drops, rescores and
guard raises (checked against a plain list-of-rows model)."""

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
    dup = rng.random(m).astype(np.float32)
    return ids, emb, probs, unc, dup


ops = st.lists(st.tuples(st.sampled_from(["add", "drop", "rescore", "raise"]), st.integers(0, 200)),
               max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops=ops, seed=st.integers(0, 2**31 - 1))
def test_rows_stay_in_step_with_a_plain_model(ops, seed) -> None:
    rng = np.random.default_rng(seed)
    backlog, model, next_id = Backlog(), [], 0  # model: list of [id, emb, probs, unc, dup]
    for op, m in ops:
        if op == "add":
            new = rows(rng, next_id, m % 70)
            next_id += m % 70
            backlog.add(*new)
            model += [list(r) for r in zip(*new)]
        elif op == "drop" and model:
            remove = rng.random(len(model)) < (m % 10) / 10
            backlog.drop(remove)
            model = [r for r, gone in zip(model, remove) if not gone]
        elif op == "rescore" and model:
            probs, unc = rng.dirichlet(np.ones(C), len(model)), rng.random(len(model))
            backlog.rescore(probs, unc)
            for r, p, u in zip(model, probs, unc):
                r[2], r[3] = p, u
        elif op == "raise" and model:
            sim = rng.random(len(model)).astype(np.float32)
            backlog.raise_dup(sim)
            for r, s in zip(model, sim):
                r[4] = max(r[4], s)
        assert len(backlog) == len(model)
        assert backlog.ids == [r[0] for r in model]
        if model:
            np.testing.assert_array_equal(backlog.emb, np.stack([r[1] for r in model]))
            np.testing.assert_array_equal(backlog.probs, np.stack([r[2] for r in model]))
            np.testing.assert_array_equal(backlog.unc, np.array([r[3] for r in model]))
            np.testing.assert_array_equal(backlog.dup, np.array([r[4] for r in model], np.float32))
        assert all(r[0] in backlog for r in model)


def test_bad_rows_are_refused_and_leave_the_backlog_unchanged() -> None:
    rng = np.random.default_rng(0)
    backlog = Backlog()
    backlog.add(*rows(rng, 0, 3))
    ids, emb, probs, unc, dup = rows(rng, 3, 2)
    with pytest.raises(ValueError, match="disagree"):
        backlog.add(ids, emb[:1], probs, unc, dup)
    with pytest.raises(ValueError, match="already in the backlog"):
        backlog.add(["i1", "i9"], emb, probs, unc, dup)
    with pytest.raises(ValueError, match="drop mask"):
        backlog.drop(np.zeros(5, bool))
    with pytest.raises(ValueError, match="rescore"):
        backlog.rescore(probs, unc)
    assert backlog.ids == ["i0", "i1", "i2"]
    assert "i9" not in backlog
