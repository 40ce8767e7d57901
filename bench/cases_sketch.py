"""Benchmark cases for the count-min sketch: update and query of int64 ids, omnikern (Triton atomics
on CUDA, the torch path on CPU) vs the torch path and the plain-Python reference (small sizes only)."""

from __future__ import annotations

import torch
from harness import Case

from omnikern.ops.reference import CountMinSketchRef, count_min_multipliers_ref
from omnikern.ops.sketch import count_min_query, count_min_update_


def cases(device: str, quick: bool) -> list[Case]:
    width, depth = 1 << 20, 2
    sizes = [4096, 1 << 18] if quick else [4096, 1 << 20, 1 << 23]
    multipliers = torch.tensor(count_min_multipliers_ref(depth), dtype=torch.int64, device=device)
    out: list[Case] = []
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
            out.append(Case("count_min_sketch", provider, "update", size,
                            lambda ids=ids, c=counts.clone(), impl=impl: count_min_update_(c, ids, multipliers, impl=impl),
                            bytes_moved=traffic))  # fmt: skip
            out.append(Case("count_min_sketch", provider, "query", size,
                            lambda ids=ids, c=counts, impl=impl: count_min_query(c, ids, multipliers, impl=impl),
                            bytes_moved=traffic))  # fmt: skip
        if n <= 4096:
            ref = CountMinSketchRef(width, depth)
            id_list = ids.tolist()
            out.append(Case("count_min_sketch", "reference", "update", size, lambda r=ref, i=id_list: r.update(i), bytes_moved=traffic))
            out.append(Case("count_min_sketch", "reference", "query", size, lambda r=ref, i=id_list: r.query(i), bytes_moved=traffic))
    return out
