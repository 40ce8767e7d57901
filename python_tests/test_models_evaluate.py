"""Retrieval metrics: hand-computed ranks (ties against the target, filtered entries), and the
top-K path agreeing with exact search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnikern.data.queries import Query
from omnikern.models.evaluate import evaluate_exact, evaluate_topk


def q(kind, targets, ignore=()):
    return Query(text=f"{kind}{targets}", kind=kind, id=1, targets=tuple(targets), ignore=tuple(ignore))


def scores_as_embeddings(scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Query rows one-hot, index = scoresᵀ: <q_i, x_j> = scores[i][j] exactly."""
    s = torch.tensor(scores)
    return torch.eye(s.shape[0]), s.T.contiguous()


def test_exact_metrics_by_hand():
    query_emb, index_emb = scores_as_embeddings([
        [0.9, 0.5, 0.7, 0.1, 0.7],   # target 2: entries 0 and 4 (tie) score ≥ 0.7 → rank 3
        [0.9, 0.5, 0.7, 0.1, 0.2],   # target 2, entry 0 ignored → rank 1
        [0.1, 0.9, 0.3, 0.8, 0.2],   # targets 3 (rank 2) and 0 (rank 5)
    ])
    queries = [q("known_item", [2]), q("known_item", [2], ignore=[0]), q("category", [3, 0])]
    out = evaluate_exact(query_emb, index_emb, queries, ks=(1, 2))
    ki, cat = out["known_item"], out["category"]
    assert ki["count"] == 2 and cat["count"] == 1 and out["all"]["count"] == 3
    assert ki["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    assert ki["hit@1"] == pytest.approx(0.5) and ki["hit@2"] == pytest.approx(0.5)
    assert cat["mrr"] == pytest.approx(0.5)
    assert cat["recall@2"] == pytest.approx(0.5) and cat["precision@2"] == pytest.approx(0.5)
    assert cat["hit@1"] == 0.0 and cat["recall@1"] == 0.0
    assert out["all"]["mrr"] == pytest.approx((1 / 3 + 1 + 0.5) / 3)


def assert_metrics_close(got, want):
    assert got.keys() == want.keys()
    for group in want:
        assert got[group] == pytest.approx(want[group]), group


def test_topk_agrees_with_exact_without_ties():
    g = torch.Generator().manual_seed(0)
    index = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    query_emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    rng = np.random.default_rng(0)
    queries = []
    for i in range(12):
        picks = rng.choice(60, size=5, replace=False).tolist()
        queries.append(q("category" if i % 2 else "known_item", sorted(picks[: 1 + i % 3]), sorted(picks[3:])))
    exact = evaluate_exact(query_emb, index, queries, ks=(5, 10), chunk=5)
    order = torch.argsort(query_emb @ index.T, dim=1, descending=True)
    assert_metrics_close(evaluate_topk(order, queries, ks=(5, 10)), exact)
    assert exact["all"]["hit@10"] > 0 and exact["all"]["count"] == 12
    # A short list: targets beyond it are not found; recall can only drop.
    short = evaluate_topk(order[:, :12], queries, ks=(5, 10))
    assert short["all"]["recall@10"] == pytest.approx(exact["all"]["recall@10"])
    assert short["all"]["mrr"] <= exact["all"]["mrr"]


def test_topk_filters_ignored_and_missing_results():
    top = np.array([[4, 0, 2, -1], [3, 3, -1, -1]])
    out = evaluate_topk(top, [q("known_item", [2], ignore=[4]), q("known_item", [1])], ks=(2,))
    assert out["known_item"]["hit@2"] == pytest.approx(0.5)  # row 0: 4 dropped → [0, 2], rank 2
    assert out["known_item"]["mrr"] == pytest.approx(0.25)


def test_bad_input():
    query_emb, index_emb = scores_as_embeddings([[0.1, 0.2]])
    with pytest.raises(ValueError, match="queries"):
        evaluate_exact(query_emb, index_emb, [q("known_item", [0]), q("known_item", [1])])
    with pytest.raises(ValueError, match="share D"):
        evaluate_exact(query_emb, index_emb[:, :0], [q("known_item", [0])])
    with pytest.raises(ValueError, match="ks"):
        evaluate_exact(query_emb, index_emb, [q("known_item", [0])], ks=(0,))
    with pytest.raises(ValueError, match="beyond the index"):
        evaluate_exact(query_emb, index_emb, [q("known_item", [5])])
    with pytest.raises(ValueError, match="no targets"):
        evaluate_topk(np.zeros((1, 3), dtype=np.int64), [q("known_item", [])])
    with pytest.raises(ValueError, match="topk_indices"):
        evaluate_topk(np.zeros(3), [q("known_item", [0])])
