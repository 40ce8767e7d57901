"""All-gather across ranks with gradient, for rows whose count differs per rank.

Forward: every rank gets the concatenation, in rank order, of every rank's rows.
Backward: the gradient of the concatenation is summed over ranks (each rank's loss used all rows)
and each rank keeps the slice of its own rows — a reduce-scatter of the sum, done as an all-reduce
plus a slice because ``reduce_scatter`` needs equal-sized pieces. A no-op without an initialised
process group or with one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size(group=None) -> int:
    """Number of ranks in ``group`` (1 without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _row_counts(x: torch.Tensor, group) -> list[int]:
    # The row counts must be known on the host to size the buffers: one small sync per gather.
    local = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.zeros_like(local) for _ in range(world_size(group))]
    dist.all_gather(counts, local, group=group)
    return [int(c.item()) for c in counts]


def _gather_padded(x: torch.Tensor, counts: list[int], group) -> torch.Tensor:
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    return torch.cat([piece[:n] for piece, n in zip(pieces, counts)])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        counts = _row_counts(x, group)
        rank = dist.get_rank(group)
        ctx.group = group
        ctx.start = sum(counts[:rank])
        ctx.rows = x.shape[0]
        return _gather_padded(x, counts, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.rows], None


def all_gather_rows(x: torch.Tensor, group=None) -> torch.Tensor:
    """Returns every rank's rows of ``x`` (rows may differ per rank) concatenated in rank order.

    Differentiable when ``x`` requires grad: the gradient of a rank's rows is the sum over ranks of
    the gradients reaching their copies. Integer tensors (ids) are gathered without gradient. With
    one process (or no process group) ``x`` itself is returned.
    """
    if world_size(group) == 1:
        return x
    if x.requires_grad:
        return _AllGatherWithGrad.apply(x, group)
    return _gather_padded(x, _row_counts(x, group), group)
