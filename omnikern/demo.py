"""``omnikern demo``: the main job on embedded defaults.

Today it checks every op built so far against its reference on this machine and times it against
torch; the model and serving issues grow it into train → evaluate → export → serve → query.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from omnikern.ops import l2_normalize
from omnikern.ops.reference import l2_normalize_ref
from omnikern.text import string_id_hash


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def run_demo(quick: bool = True) -> int:
    """Runs the checks, prints a table, and returns 0 when every check passed."""
    rows, dim = (4096, 256) if quick else (65536, 512)
    x = torch.randn(rows, dim)
    y = l2_normalize(x)
    error = (y.double() - l2_normalize_ref(x).double()).abs().max().item()
    ok = error < 1e-6
    ours = _median_ms(lambda: l2_normalize(x), 11)
    theirs = _median_ms(lambda: F.normalize(x, dim=-1), 11)

    ids = string_id_hash(["crème brûlée", "", "pad thai"])
    ok &= ids[1] == 0 and len(set(ids.tolist())) == 3

    print(f"omnikern demo on {'CUDA' if torch.cuda.is_available() else 'CPU'}, torch {torch.__version__}")
    print(f"{'op':<16}{'shape':<16}{'max |err|':>12}{'ms':>10}{'torch ms':>10}")
    print(f"{'l2_normalize':<16}{str((rows, dim)):<16}{error:>12.2e}{ours:>10.3f}{theirs:>10.3f}")
    print(f"string ids: {ids.tolist()}")
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1
