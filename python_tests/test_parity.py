"""Tie-aware comparison of top-k answers: the score bound really bounds, and compare_topk tells a
near-tie swap from a disagreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnikern import Int8Index
from omnikern.parity import compare_topk, score_tolerance

N, D = 60, 32


@pytest.fixture(scope="module")
def index():
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    index = Int8Index(D, keep_float=True)
    index.add(vectors, torch.arange(100, 100 + N))
    return index


def _all_scores(index, queries, dim, rerank):
    """Every item's score (Q, N) as the search computes it, in id order."""
    scores, ids = index.search(queries, k=N, dim=dim, rerank=N if rerank else 0, impl="torch")
    order = torch.argsort(ids, dim=1)
    return scores.gather(1, order).double()


@pytest.mark.parametrize("dim,rerank", [(None, False), (12, False), (None, True), (12, True)])
@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_the_bound_holds_for_adversarial_moves(index, dim, rerank, eps):
    """Each coordinate moved by ±eps (random signs, and all +eps, and the worst rounding-flip
    candidates): no item's score moves by more than score_tolerance says."""
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(16, D, generator=g, dtype=torch.float64), dim=1)
    tol = score_tolerance(index, q, eps, dim=dim, rerank=int(rerank))
    assert tol.shape == (16,) and np.isfinite(tol).all() and (tol > 0).all()
    base = _all_scores(index, q.float(), dim, rerank)
    moves = [torch.sign(torch.randn(q.shape, generator=g, dtype=torch.float64)) for _ in range(20)]
    moves += [torch.ones_like(q), -torch.ones_like(q)]
    for move in moves:
        moved = _all_scores(index, (q + eps * move).float(), dim, rerank)
        worst = (moved - base).abs().max(dim=1).values.numpy()
        assert (worst <= tol).all(), (worst - tol).max()


def test_the_bound_is_tight_enough_to_mean_something(index):
    """eps = 0 leaves only float32 rounding; a ~1e-7 move of unit queries allows far less than the
    typical gap between neighbouring scores (~1e-2 here), unless a code can flip."""
    q = torch.nn.functional.normalize(torch.randn(64, D, generator=torch.Generator().manual_seed(2)), dim=1)
    assert (score_tolerance(index, q, 0.0) < 1e-6).all()
    assert (score_tolerance(index, q, 0.0, rerank=40) < 1e-6).all()
    tol = score_tolerance(index, q, 1e-7)
    assert np.median(tol) < 1e-5 and tol.max() < 0.05


def test_zero_query_has_no_bound(index):
    q = torch.zeros(2, D)
    q[1, 0] = 1.0
    tol = score_tolerance(index, q, 1e-3)
    assert np.isinf(tol[0]) and np.isfinite(tol[1])


def test_score_tolerance_bad_input(index):
    q = torch.randn(2, D)
    with pytest.raises(TypeError, match="index"):
        score_tolerance("index", q, 1e-6)
    with pytest.raises(ValueError, match="queries"):
        score_tolerance(index, torch.randn(2, D + 1), 1e-6)
    with pytest.raises(ValueError, match="queries"):
        score_tolerance(index, torch.full((2, D), float("nan")), 1e-6)
    with pytest.raises(ValueError, match="eps"):
        score_tolerance(index, q, -1.0)
    with pytest.raises(ValueError, match="dim"):
        score_tolerance(index, q, 1e-6, dim=D + 1)


# ---- compare_topk ------------------------------------------------------------------------------

S = np.array([[0.9, 0.8, 0.7000, 0.69995, -np.inf]])
I = np.array([[1, 2, 3, 4, -1]])


def test_identical_answers():
    result = compare_topk(S, I, S.copy(), I.copy(), 0.0)
    assert result.ok and result.identical_rows == 1 and result.tie_rows == 0 and result.max_score_difference == 0


def test_swap_among_near_ties_is_agreement_and_a_wide_swap_is_not():
    swapped_ids, swapped_scores = I[:, [0, 1, 3, 2, 4]], np.array([[0.9, 0.8, 0.70001, 0.69998, -np.inf]])
    result = compare_topk(S, I, swapped_scores, swapped_ids, 1e-4)
    assert result.ok and result.tie_rows == 1 and result.max_score_difference == pytest.approx(6e-5)
    assert not compare_topk(S, I, swapped_scores, swapped_ids, 1e-5).ok  # id 4 moved by 6e-5
    wide = compare_topk(S, I, S, I[:, [1, 0, 2, 3, 4]], 1e-4)
    assert not wide.ok and "row 0" in wide.disagreements[0]


def test_a_different_last_place_is_a_near_tie_only_within_the_tolerance():
    other_ids = np.array([[1, 2, 3, 9, -1]])
    near = np.array([[0.9, 0.8, 0.7, 0.69994, -np.inf]])
    assert compare_topk(S, I, near, other_ids, 1e-4).ok
    far = np.array([[0.9, 0.8, 0.7, 0.5, -np.inf]])
    result = compare_topk(S, I, far, other_ids, 1e-4)
    assert not result.ok and ("missing" in result.disagreements[0] or "rank" in result.disagreements[0])


def test_result_counts_and_duplicates_disagree():
    fewer = compare_topk(S, I, np.array([[0.9, 0.8, 0.7, -np.inf, -np.inf]]), np.array([[1, 2, 3, -1, -1]]), 1.0)
    assert not fewer.ok and "results" in fewer.disagreements[0]
    twice = compare_topk(S, I, S, np.array([[1, 2, 3, 3, -1]]), 1.0)
    assert not twice.ok and "twice" in twice.disagreements[0]


def test_per_row_tolerance_and_summary():
    s2, i2 = np.vstack([S, S]), np.vstack([I, I])
    moved = s2.copy()
    moved[:, 0] += 1e-3
    result = compare_topk(s2, i2, moved, i2, np.array([1e-2, 1e-5]))
    assert result.rows == 2 and result.identical_rows == 1 and len(result.disagreements) == 1
    assert result.disagreements[0].startswith("row 1") and "1 disagree" in result.summary()


def test_compare_topk_bad_input():
    with pytest.raises(ValueError, match="shape"):
        compare_topk(S, I, S[:, :3], I[:, :3], 0.0)
    with pytest.raises(ValueError, match="2-D"):
        compare_topk(S[0], I[0], S[0], I[0], 0.0)
    with pytest.raises(ValueError, match="tolerance"):
        compare_topk(S, I, S, I, -1.0)
    with pytest.raises(ValueError, match="tolerance"):
        compare_topk(S, I, S, I, float("nan"))
