"""Retrieval metrics for query sets against an index of the whole catalogue.

For query ``q`` with relevant recipes ``T`` (``Query.targets``) and recipes to leave out ``I``
(``Query.ignore``: relevant recipes of the other split, dropped from the ranking — "filtered"
ranking), score every index entry ``s_j = <q, x_j>`` and define the rank of a target ``t`` as

    rank(t) = 1 + #{ j ∉ I, j ≠ t : s_j ≥ s_t }

(ties count against the target, the published rule "1 + number of index entries scoring at least
as high"). Per query:

* ``hit@k``       = 1 if some target has rank ≤ k,
* ``recall@k``    = #{t : rank(t) ≤ k} / |T|,
* ``precision@k`` = #{t : rank(t) ≤ k} / k,
* ``mrr``         = 1 / min_t rank(t),

averaged over the queries of each kind. :func:`evaluate_exact` computes them from exact scores;
:func:`evaluate_topk` from an index's sorted top-K lists (e.g. ``omnikern.Int8Index``), where a
target outside the returned list counts as not found (``mrr`` becomes MRR@K; ties are ordered as
the index returned them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from omnikern.data.queries import Query

DEFAULT_KS = (10, 100)


def _summarise(per_query: list[tuple[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)
    for kind, values in per_query:
        for group in (kind, "all"):
            counts[group] += 1
            for name, value in values.items():
                sums[group][name] += value
    return {group: {name: total / counts[group] for name, total in sorted(metrics.items())} | {"count": counts[group]}
            for group, metrics in sorted(sums.items())}


def _metrics_from_ranks(ranks: np.ndarray, num_targets: int, ks: Sequence[int]) -> dict[str, float]:
    out = {"mrr": float(1.0 / ranks.min()) if ranks.size and np.isfinite(ranks.min()) else 0.0}
    for k in ks:
        found = int((ranks <= k).sum())
        out[f"hit@{k}"] = float(found > 0)
        out[f"recall@{k}"] = found / num_targets
        out[f"precision@{k}"] = found / k
    return out


def _check(queries: Sequence[Query], ks: Sequence[int], rows: int, index_size: int | None) -> None:
    if len(queries) != rows:
        raise ValueError(f"queries has {len(queries)} entries for {rows} rows of embeddings/results")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    for query in queries:
        if not query.targets:
            raise ValueError(f"query {query.text!r} has no targets")
        if index_size is not None and max(query.targets + query.ignore) >= index_size:
            raise ValueError(f"query {query.text!r} refers to recipe {max(query.targets + query.ignore)} beyond the "
                             f"index of {index_size}")


def evaluate_exact(query_emb: torch.Tensor, index_emb: torch.Tensor, queries: Sequence[Query],
                   ks: Sequence[int] = DEFAULT_KS, chunk: int = 256) -> dict[str, dict[str, float]]:
    """Returns ``{kind: {metric: mean}}`` (plus ``"all"``; each with ``count``) by exact inner products.

    Args:
        query_emb: (Q, D) query embeddings, row i for ``queries[i]``.
        index_emb: (N, D) index embeddings, row j for catalogue recipe j.
        queries: the queries (targets/ignore are catalogue indices).
        ks: cut-offs for hit/recall/precision.
        chunk: queries scored at once.

    Raises:
        ValueError: shapes disagree, bad ``ks``, or a query refers past the index.
    """
    if query_emb.dim() != 2 or index_emb.dim() != 2 or query_emb.shape[1] != index_emb.shape[1]:
        raise ValueError(f"query_emb (Q, D) and index_emb (N, D) must share D, got {tuple(query_emb.shape)} and "
                         f"{tuple(index_emb.shape)}")
    _check(queries, ks, query_emb.shape[0], index_emb.shape[0])
    index = index_emb.float()
    per_query = []
    for start in range(0, len(queries), chunk):
        scores = (query_emb[start:start + chunk].float() @ index.T).numpy()
        for row, query in zip(scores, queries[start:start + chunk]):
            row = row.copy()
            row[list(query.ignore)] = -np.inf
            target_scores = row[list(query.targets)]
            # rank(t) = 1 + #{j ≠ t, not ignored : s_j ≥ s_t}; the count below includes t itself.
            ranks = (row[None, :] >= target_scores[:, None]).sum(1).astype(np.float64)
            per_query.append((query.kind, _metrics_from_ranks(ranks, len(query.targets), ks)))
    return _summarise(per_query)


def evaluate_topk(topk_indices: torch.Tensor | np.ndarray, queries: Sequence[Query],
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Returns the metrics of :func:`evaluate_exact` from sorted top-K index results.

    Args:
        topk_indices: (Q, K) catalogue indices, best first (``-1`` = no result). Ask the index for
            ``K ≥ max(ks) + max |ignore|`` so that filtering leaves ``max(ks)`` results.
        queries: the queries, row i for ``queries[i]``.

    Raises:
        ValueError: shapes disagree or bad ``ks``.
    """
    top = np.asarray(topk_indices)
    if top.ndim != 2:
        raise ValueError(f"topk_indices must be (Q, K), got shape {top.shape}")
    _check(queries, ks, top.shape[0], None)
    per_query = []
    for row, query in zip(top, queries):
        ignore = set(query.ignore)
        kept = [j for j in row.tolist() if j >= 0 and j not in ignore]
        position = {j: p + 1 for p, j in enumerate(kept)}
        ranks = np.array([position.get(t, np.inf) for t in query.targets], dtype=np.float64)
        per_query.append((query.kind, _metrics_from_ranks(ranks, len(query.targets), ks)))
    return _summarise(per_query)


# ---------------------------------------------------------------------------------------------
# Relevant sets by candidate position, with bootstrap intervals (datasets in the documented format)
# ---------------------------------------------------------------------------------------------


def rank_metrics(query_emb: torch.Tensor, candidate_emb: torch.Tensor, relevant: Sequence[Sequence[int]],
                 ks: Sequence[int] = DEFAULT_KS, chunk: int = 256,
                 ignore: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Returns per-query ``recall@k`` for each k and ``mrr``, arrays (Q,), by exact inner products
    of query row i against every candidate, ranking ``relevant[i]`` (candidate rows) with the rule
    of the module docstring (ties count against the relevant row). ``ignore[i]``: candidate rows
    left out of query i's ranking (filtered ranking; rows that are also relevant stay).

    Raises:
        ValueError: shapes disagree, bad ``ks``, a query with no relevant row or one out of range.
    """
    if query_emb.dim() != 2 or candidate_emb.dim() != 2 or query_emb.shape[1] != candidate_emb.shape[1]:
        raise ValueError(f"query_emb (Q, D) and candidate_emb (N, D) must share D, got {tuple(query_emb.shape)} and "
                         f"{tuple(candidate_emb.shape)}")
    if len(relevant) != query_emb.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} entries for {query_emb.shape[0]} queries")
    if ignore is not None and len(ignore) != len(relevant):
        raise ValueError(f"ignore has {len(ignore)} entries for {len(relevant)} queries")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    n = candidate_emb.shape[0]
    for i, rows in enumerate(relevant):
        if not len(rows) or min(rows) < 0 or max(rows) >= n:
            raise ValueError(f"relevant[{i}] must be a non-empty list of candidate rows in [0, {n}), got {list(rows)[:5]}")
    out = {f"recall@{k}": np.zeros(len(relevant)) for k in ks} | {"mrr": np.zeros(len(relevant))}
    candidates = candidate_emb.float()
    for start in range(0, len(relevant), chunk):
        scores = (query_emb[start:start + chunk].float() @ candidates.T).numpy()
        for offset, row in enumerate(scores):
            i = start + offset
            targets = np.asarray(relevant[i], dtype=np.int64)
            if ignore is not None and len(ignore[i]):
                dropped = np.setdiff1d(np.asarray(ignore[i], dtype=np.int64), targets)
                row[dropped] = -np.inf
            ranks = (row[None, :] >= row[targets][:, None]).sum(1)
            out["mrr"][i] = 1.0 / ranks.min()
            for k in ks:
                out[f"recall@{k}"][i] = (ranks <= k).sum() / targets.size
    return out


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Returns the percentile bootstrap interval of the mean of ``values`` (queries resampled with
    replacement ``resamples`` times, seeded)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not values.size:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarise_with_intervals(per_query: dict[str, np.ndarray], resamples: int = 1000,
                             seed: int = 0) -> dict[str, float | list[float]]:
    """Returns ``{metric: mean, metric + "_ci": [lo, hi]}`` from :func:`rank_metrics`' arrays."""
    out: dict[str, float | list[float]] = {}
    for name, values in per_query.items():
        out[name] = float(np.mean(values))
        out[name + "_ci"] = list(bootstrap_interval(values, resamples, seed=seed))
    return out
