"""Search inside a torch.distributed job where each rank holds one shard of the index.

:func:`search`: every rank searches its own shard (an :class:`~omnikern.index.Int8Index` or a
:class:`~omnikern.sharded_index.ShardedIndex`) with the same queries, the per-rank top-k lists
(scores and ids, each ``(Q, k)``) are all-gathered, and every rank merges them the same way: by
score, ties by rank and then by the shard's own order. The answer equals one ``Int8Index`` holding
the ranks' rows concatenated in rank order. It runs on whatever process group the job already has
(gloo on CPU, NCCL on GPUs); without one it is a plain search.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from omnikern._checks import check_int
from omnikern.index import _as_tensor


def _world(group) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def search(queries, k: int, index, *, group=None, dim: int | None = None, exclude_ids=None,
           impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(scores float32 (Q, k), ids int64 (Q, k))`` over every rank's shard, the same on
    every rank (module docstring). Call it on every rank of ``group`` with the same ``queries``,
    ``k``, ``dim`` and ``exclude_ids`` (a collective). A rank with an empty shard takes part and
    contributes nothing. Re-ranking is per index (``index.search(..., rerank=)``), not offered here:
    each rank's exact re-rank of its own shortlist would not be the single index's.

    Raises:
        ValueError: bad ``k``, or every shard is empty.
    """
    check_int("k", k)
    queries = _as_tensor(queries, "queries")
    rank, world = _world(group)
    if len(index):
        scores, ids = index.search(queries, k, dim, exclude_ids=exclude_ids, impl=impl)
    else:
        scores = torch.full((queries.shape[0], k), float("-inf"))
        ids = torch.full((queries.shape[0], k), -1, dtype=torch.int64)
    if world == 1:
        if not len(index):
            raise ValueError("the index is empty: add vectors before searching")
        return scores, ids
    # NCCL gathers CUDA tensors; gloo CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    scores, ids = scores.to(device).float().contiguous(), ids.to(device).contiguous()
    all_scores = [torch.empty_like(scores) for _ in range(world)]
    all_ids = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(all_scores, scores, group=group)
    dist.all_gather(all_ids, ids, group=group)
    merged_scores, merged_ids = torch.cat(all_scores, dim=1), torch.cat(all_ids, dim=1)
    if bool((merged_ids < 0).all()):
        raise ValueError("the index is empty on every rank: add vectors before searching")
    # Concatenated in rank order, each list already best-first with ties in shard order: a stable
    # sort by score breaks ties by rank, then shard order. Missing slots (-inf) sort last.
    merged_scores, order = torch.sort(merged_scores, dim=1, descending=True, stable=True)
    return merged_scores[:, :k].cpu(), merged_ids.gather(1, order[:, :k]).cpu()
