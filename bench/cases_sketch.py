"""Benchmark cases for the count-min sketch: update and query of int64 ids, omnikern (Triton atomics
on CUDA, the torch path on CPU) vs the torch path and the plain-Python reference (small sizes only),
and one exact correctness check at the middle size against the plain-Python reference (~1 µs per id
and row: a few seconds at 2^20 ids)."""

from __future__ import annotations

import torch
from harness import Case

from omnikern.ops.reference import CountMinSketchRef, count_min_multipliers_ref
from omnikern.ops.sketch import count_min_query, count_min_update_


def _check(ids: torch.Tensor, width: int, depth: int, multipliers: torch.Tensor) -> dict:
    """Counts after one update and the query of every id: omnikern must equal the reference exactly."""
    counts = torch.zeros((depth, width), dtype=torch.int64, device=ids.device)
    count_min_update_(counts, ids, multipliers, impl="auto")
    found = count_min_query(counts, ids, multipliers, impl="auto").cpu()
    ref = CountMinSketchRef(width, depth)
    id_list = ids.tolist()
    ref.update(id_list)
    counts_equal = torch.equal(counts.cpu(), torch.tensor(ref.counts, dtype=torch.int64))
    query_mismatches = int((found != torch.tensor(ref.query(id_list), dtype=found.dtype)).sum())
    return {"ok": counts_equal and query_mismatches == 0, "counts_equal": counts_equal, "query_mismatches": query_mismatches}


def cases(device: str, quick: bool):
    width, depth = 1 << 20, 2
    sizes = [4096, 1 << 18] if quick else [4096, 1 << 20, 1 << 23]
    multipliers = torch.tensor(count_min_multipliers_ref(depth), dtype=torch.int64, device=device)
    for n in sizes:
        gen = torch.Generator(device=device).manual_seed(0)
        ids = torch.randint(-(2**62), 2**62, (n,), device=device, generator=gen)
        counts = torch.zeros((depth, width), dtype=torch.int64, device=device)
        count_min_update_(counts, ids, multipliers, impl="torch")
        size = f"n={n} {depth}x{width}"
        # Read the ids, read-modify-write one counter per id and row (8-byte counters).
        traffic = n * 8 + 2 * depth * n * 8
        impls = {"omnikern": "auto"} | ({"torch": "torch"} if device == "cuda" else {})
        for provider, impl in impls.items():
            yield Case("count_min_sketch", provider, "update", size,
                       lambda ids=ids, c=counts.clone(), impl=impl: count_min_update_(c, ids, multipliers, impl=impl),
                       bytes_moved=traffic)  # fmt: skip
            yield Case("count_min_sketch", provider, "query", size,
                       lambda ids=ids, c=counts, impl=impl: count_min_query(c, ids, multipliers, impl=impl),
                       bytes_moved=traffic)  # fmt: skip
        if n <= 4096:
            ref = CountMinSketchRef(width, depth)
            id_list = ids.tolist()
            yield Case("count_min_sketch", "reference", "update", size, lambda r=ref, i=id_list: r.update(i), bytes_moved=traffic)
            yield Case("count_min_sketch", "reference", "query", size, lambda r=ref, i=id_list: r.query(i), bytes_moved=traffic)
        if n == sizes[1]:
            yield Case("count_min_sketch", "omnikern", "check", size,
                       lambda ids=ids: _check(ids, width, depth, multipliers), check=True)  # fmt: skip
