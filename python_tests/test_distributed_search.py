"""omnikern.distributed.search with 2 and 3 gloo processes on CPU, each rank holding one shard:
every rank returns what one Int8Index over all rows returns (ties across ranks, exclude_ids, a
rank with a ShardedIndex, a rank with an empty shard)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import spawn_ranks

from omnikern import distributed
from omnikern.index import Int8Index

WORKER = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_distributed_search import corpus, QUERIES, K
from omnikern import distributed
from omnikern.index import Int8Index
from omnikern.sharded_index import ShardedIndex
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
vectors, ids = corpus()
bounds = {bounds!r}
lo, hi = bounds[rank], bounds[rank + 1]
if rank == 1 and hi - lo >= 2:
    shard = ShardedIndex.build(vectors[lo:hi], ids[lo:hi], 2)
else:
    shard = Int8Index(vectors.shape[1])
    if hi > lo:
        shard.add(vectors[lo:hi], ids[lo:hi])
queries = vectors[QUERIES]
out = {{}}
for k in K:
    out[f"plain{{k}}"] = distributed.search(queries, k, shard, impl="cpp")
    out[f"excl{{k}}"] = distributed.search(queries, k, shard, exclude_ids=ids[QUERIES], impl="cpp")
    out[f"dim{{k}}"] = distributed.search(queries, k, shard, dim=8, impl="cpp")
torch.save(out, {out!r} + f"/rank{{rank}}.pt")
dist.barrier()
dist.destroy_process_group()
"""

QUERIES = [3, 40, 7, 59]
K = [1, 5, 70]


def corpus(n: int = 60, d: int = 16):
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(n, d, generator=g)
    vectors[40] = vectors[3]  # duplicates in different ranks' shards: ties across ranks
    vectors[55] = vectors[3]
    ids = torch.randperm(1000, generator=g)[:n].to(torch.int64)
    return vectors, ids


@pytest.mark.parametrize("bounds", [[0, 30, 60], [0, 20, 45, 60], [0, 25, 25, 60]],
                         ids=["2 ranks", "3 ranks", "3 ranks, one empty"])
def test_ranks_answer_as_one_index(bounds, tmp_path):
    world = len(bounds) - 1
    spawn_ranks(WORKER.format(tests=str(Path(__file__).parent), bounds=bounds, out=str(tmp_path)), world, 120)
    vectors, ids = corpus()
    one = Int8Index(vectors.shape[1])
    one.add(vectors, ids)
    queries = vectors[QUERIES]
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k in K:
            for name, kwargs in (("plain", {}), ("excl", {"exclude_ids": ids[QUERIES]}), ("dim", {"dim": 8})):
                want = one.search(queries, k, impl="cpp", **kwargs)
                scores, found = got[f"{name}{k}"]
                assert torch.equal(found, want[1]), (rank, name, k)
                assert torch.equal(scores, want[0]), (rank, name, k)
    # The three copies of row 3 come back in rank order.
    assert got["plain5"][1][0, :3].tolist() == ids[[3, 40, 55]].tolist()


def test_without_a_process_group_it_is_a_plain_search():
    vectors, ids = corpus()
    index = Int8Index(vectors.shape[1])
    index.add(vectors, ids)
    want = index.search(vectors[:3], 4, impl="cpp")
    got = distributed.search(vectors[:3], 4, index, impl="cpp")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="the index is empty"):
        distributed.search(vectors[:3], 4, Int8Index(16))
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        distributed.search(vectors[:3], 0, index)
