"""The truth: one plain, readable torch function per omnikern op, with the op's arguments.

Tests and ``bench/`` compare every kernel and fast path against these. Nothing here imports
triton, and nothing here is clever: materialise, compute in high precision, return.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalize_ref(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize`` in float64 (so the squared norm cannot overflow), cast back to ``x.dtype``."""
    return F.normalize(x.double(), p=2.0, dim=dim, eps=eps).to(x.dtype)
