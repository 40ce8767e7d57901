"""The truth: one plain, readable torch function per omnikern op, with the op's arguments.

Tests and ``bench/`` compare every kernel and fast path against these. Nothing here imports
triton, and nothing here is clever: materialise, compute in high precision, return.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def l2_normalize_ref(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize`` in float64 (so the squared norm cannot overflow), cast back to ``x.dtype``."""
    return F.normalize(x.double(), p=2.0, dim=dim, eps=eps).to(x.dtype)


# ---- sampled-softmax loss ----

# The published Matryoshka prefixes and their loss weights (docs/loss.md, "Matryoshka prefixes").
DEFAULT_DIM_WEIGHTS: dict[int, float] = {16: 0.05, 32: 0.05, 64: 0.05, 128: 0.05, 256: 1.0, 512: 1.0}
NEG_MODES = ("in_batch", "random", "mixed_sum", "mixed_concat")


def logq_from_counts_ref(counts: torch.Tensor, total: torch.Tensor | float, num_columns: int) -> torch.Tensor:
    """``log Q(c) = log cnt(c) − log total + log K`` for every candidate, in float64 (shape of ``counts``)."""
    counts = counts.double()
    total = torch.as_tensor(total, dtype=torch.float64, device=counts.device)
    return counts.log() - total.log() + counts.new_tensor(float(num_columns)).log()


def sampled_softmax_loss_ref(
    query: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor | None = None,
    *,
    log_scale: torch.Tensor,
    query_ids: torch.Tensor,
    pos_ids: torch.Tensor,
    neg_ids: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    neg_mode: str = "mixed_sum",
    candidates: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
    candidate_query_ids: torch.Tensor | None = None,
    pos_logq: torch.Tensor | None = None,
    candidate_logq: torch.Tensor | None = None,
    neg_logq: torch.Tensor | None = None,
    dims: list[int] | None = None,
    dim_weights: list[float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sampled-softmax loss of docs/loss.md with every logit materialised; returns ``(total, components)``.

    ``components[f"{term}@{dim}"]`` is the (weighted) mean cross-entropy of one logit matrix at one
    prefix, ``term`` in ``in_batch | random | mixed_concat``; ``total = Σ_dim w_dim Σ_term component``.
    In-batch candidates default to ``pos`` (with ``pos_ids`` and ``query_ids``); ``*_logq`` are the
    already-computed corrections subtracted from the positive column / candidate columns (None: 0).
    Computed in float32 (float64 for float64 inputs).
    """
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    if neg is None:  # no random negatives: the random softmax holds only the positive column
        neg, neg_ids = query.new_empty((0, query.shape[1])), query_ids.new_empty((0,))
    if candidates is None:
        candidates, candidate_ids, candidate_query_ids = pos, pos_ids, query_ids
    if dims is None:
        dims = list(DEFAULT_DIM_WEIGHTS)
    if dim_weights is None:
        dim_weights = [DEFAULT_DIM_WEIGHTS.get(d, 1.0) for d in dims]
    # Prefixes longer than the embedding are skipped.
    dims, dim_weights = zip(*[(d, w) for d, w in zip(dims, dim_weights) if d <= query.shape[1]])
    scale = log_scale.to(compute).exp()
    lowest = torch.finfo(compute).min

    def corrected(logq: torch.Tensor | None, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=compute, device=query.device) if logq is None else logq.to(compute)

    # Masks: a negative sharing the row's positive id; in-batch also a negative of the same query.
    inb_mask = candidate_ids[None, :] == pos_ids[:, None]
    inb_mask = inb_mask | (candidate_query_ids[None, :] == query_ids[:, None])
    rnd_mask = neg_ids[None, :] == pos_ids[:, None]

    total = torch.zeros((), dtype=compute, device=query.device)
    components: dict[str, torch.Tensor] = {}
    for dim, dim_weight in zip(dims, dim_weights):
        q = F.normalize(query[:, :dim].to(compute), dim=-1)
        p = F.normalize(pos[:, :dim].to(compute), dim=-1)
        c = F.normalize(candidates[:, :dim].to(compute), dim=-1)
        l_pos = scale * (q * p).sum(-1, keepdim=True) - corrected(pos_logq, q.shape[0])[:, None]
        l_inb = scale * q @ c.T - corrected(candidate_logq, c.shape[0])[None, :]
        l_inb = l_inb.masked_fill(inb_mask, lowest)
        matrices: dict[str, torch.Tensor] = {}
        n = F.normalize(neg[:, :dim].to(compute), dim=-1)
        l_rnd = scale * q @ n.T - corrected(neg_logq, n.shape[0])[None, :]
        l_rnd = l_rnd.masked_fill(rnd_mask, lowest)
        if neg_mode in ("in_batch", "mixed_sum"):
            matrices["in_batch"] = torch.cat([l_pos, l_inb], dim=1)
        if neg_mode in ("random", "mixed_sum"):
            matrices["random"] = torch.cat([l_pos, l_rnd], dim=1)
        if neg_mode == "mixed_concat":
            matrices["mixed_concat"] = torch.cat([l_pos, l_inb, l_rnd], dim=1)
        for term, logits in matrices.items():
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            per_row = F.cross_entropy(logits, target, reduction="none")
            if weights is None:
                value = per_row.mean()
            else:
                w = weights.to(compute)
                value = (w / w.abs().sum().clamp_min(1e-12) * per_row).sum()
            components[f"{term}@{dim}"] = value
            total = total + dim_weight * value
    return total, components


# ---- count-min sketch ----

COUNT_MIN_SEED = 19980115


def count_min_multipliers_ref(depth: int, seed: int = COUNT_MIN_SEED) -> list[int]:
    """The hash multipliers ``a_i``: ``random.Random(seed).randint(1, 2**63 − 1)``, drawn in order."""
    rng = random.Random(seed)
    return [rng.randint(1, 2**63 - 1) for _ in range(depth)]


def _wrap_int64(value: int) -> int:
    """Python int -> the int64 it wraps to (two's complement)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def count_min_bucket_ref(x: int, multiplier: int, width: int) -> int:
    """Bucket of id ``x`` in the row with ``multiplier``: ``h = x·a`` (int64 wrap), ``h += h >> 32``
    (arithmetic shift, int64 wrap), ``h &= 2**31 − 1``, ``h mod width``; plain Python ints."""
    h = _wrap_int64(_wrap_int64(x) * multiplier)
    h = _wrap_int64(h + (h >> 32))
    return (h & (2**31 - 1)) % width


class CountMinSketchRef:
    """A straightforward count-min sketch on Python lists: the truth for ``omnikern.CountMinSketch``."""

    def __init__(self, width: int, depth: int, seed: int = COUNT_MIN_SEED) -> None:
        self.width = width
        self.multipliers = count_min_multipliers_ref(depth, seed)
        self.counts = [[0] * width for _ in range(depth)]
        self.num_seen = 0

    def update(self, ids: list[int]) -> None:
        for x in ids:
            for row, a in zip(self.counts, self.multipliers):
                row[count_min_bucket_ref(x, a, self.width)] += 1
        self.num_seen += len(ids)

    def query(self, ids: list[int]) -> list[int]:
        return [min(row[count_min_bucket_ref(x, a, self.width)] for row, a in zip(self.counts, self.multipliers)) for x in ids]


# ---- int8 ----


def quantize_int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes of ``x`` (N, D): ``(codes int8 (N, D), scales float32 (N,))``.

    In float32: ``scale = max|x| / 127``, ``codes = clamp(round_half_even(x / scale), -127, 127)``;
    a row whose scale is 0 (all zeros) gets codes 0 and scale 0.
    """
    x32 = x.float()
    amax = x32.abs().amax(dim=-1) if x32.shape[-1] > 0 else x32.new_zeros(x32.shape[:-1])
    scales = amax / torch.full_like(amax, 127.0)  # IEEE division on any device (int8.py, _quantize_torch)
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
