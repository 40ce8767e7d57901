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


# ---- int8 ----


def quantize_int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes of ``x`` (N, D): ``(codes int8 (N, D), scales float32 (N,))``.

    In float32: ``scale = max|x| / 127``, ``codes = clamp(round_half_even(x / scale), -127, 127)``;
    a row whose scale is 0 (all zeros) gets codes 0 and scale 0.
    """
    x32 = x.float()
    amax = x32.abs().amax(dim=-1) if x32.shape[-1] > 0 else x32.new_zeros(x32.shape[:-1])
    scales = amax / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(x32 / safe.unsqueeze(-1)).clamp(-127, 127)
    codes = torch.where((scales > 0).unsqueeze(-1), codes, torch.zeros_like(codes))
    return codes.to(torch.int8), scales


def dequantize_int8_ref(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``codes * scales[:, None]`` in float32, (N, D)."""
    return codes.float() * scales.float().unsqueeze(-1)


def int8_topk_ref(
    query: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    k: int,
    dim: int | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best corpus rows per query: ``(scores float32 (Q, k), indices int64 (Q, k))``.

    The query's first ``d`` columns (``d = dim`` or D) are quantised with :func:`quantize_int8_ref`
    to ``(qc, sq)``; dot products ``qc · codes[:, :d]`` are exact integers (int64). Scores, in float64:

    * ``dim is None``: ``sq · scales[i] · dot`` (the dequantised inner product);
    * ``dim`` given: ``dot / (‖qc‖ · ‖codes[i, :d]‖)``, the cosine of the dequantised prefixes (the
      scales cancel); 0 where either norm is 0.

    ``exclude[q] >= 0`` removes that row for query q. Order: ``torch.sort(stable=True,
    descending=True)``, i.e. higher score first, equal scores lower index first. Slots past the
    number of candidates hold score ``-inf`` and index ``-1``.
    """
    d = codes.shape[1] if dim is None else dim
    qc, sq = quantize_int8_ref(query[:, :d])
    xc = codes[:, :d]
    dots = (qc.long() @ xc.long().T).double()
    if dim is None:
        scores = dots * sq.double().unsqueeze(1) * scales.double().unsqueeze(0)
    else:
        denom = qc.double().norm(dim=1).unsqueeze(1) * xc.double().norm(dim=1).unsqueeze(0)
        scores = torch.where(denom > 0, dots / torch.where(denom > 0, denom, 1.0), torch.zeros_like(dots))
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).flatten()
        scores[rows, exclude[rows]] = float("-inf")
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    values, order = values[:, :k], order[:, :k]
    Q, N = scores.shape
    if k > N:
        values = torch.cat([values, values.new_full((Q, k - N), float("-inf"))], dim=1)
        order = torch.cat([order, order.new_full((Q, k - N), -1)], dim=1)
    order = torch.where(values == float("-inf"), torch.full_like(order, -1), order)
    return values.float(), order
