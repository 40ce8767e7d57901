"""Count-min sketch: hash, update and query of int64 ids (frequency estimates for the logQ correction).

Maths
-----
``counts`` is a (depth, width) table. Row i hashes an int64 id x with its multiplier ``a_i``:

    h = x · a_i            (int64, wrapping)
    h = h + (h >> 32)      (arithmetic shift, wrapping)
    bucket = (h & (2^31 − 1)) mod width

``update(x)`` adds 1 to ``counts[i, bucket_i(x)]`` for every element and row (duplicates count);
``query(x) = min_i counts[i, bucket_i(x)]``, an estimate that never undercounts. The truth is
``omnikern.ops.reference.CountMinSketchRef`` (plain Python ints, explicit wrap-around).

Kernels
-------
One program per ``BLOCK`` ids; it loops over the depth rows, hashing in int64 registers, and either
``tl.atomic_add``s 1 into the table (update; duplicates inside a block are summed by the atomics)
or gathers and takes the running minimum (query). The torch path does the same with tensor ops
(``index_put_(accumulate=True)`` for the update) and is what CPU tensors use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnikern.ops import _triton

HASH_MASK = 2**31 - 1
COUNT_DTYPES = (torch.int32, torch.int64)

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _bucket(x, a, width):
    # int64 products wrap (two's complement), and >> on a signed int is arithmetic: the hash of docs/loss.md, "Count-min sketch".
    h = x * a
    h = h + (h >> 32)
    return (h & 2147483647) % width


# Integer specialisation: n (ids in the call) and depth are not specialised. n masks a 1-D load of
# ids whose cost is nothing beside the depth scattered atomics (or gathers) per id, and it changes
# with every batch size; depth only bounds the row loop (see also the query kernel). width stays
# specialised: it is the table's row step (a stride) and fixed per sketch, so one class.
@triton.jit(do_not_specialize=["n", "depth"])
def _sketch_update_kernel(
    # pointers
    ids_ptr,
    mult_ptr,
    counts_ptr,
    # sizes
    n,
    width,
    depth,
    # meta
    BLOCK: tl.constexpr,
):
    """counts (depth, width) += one-hot buckets of ids (n,), every row."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(ids_ptr + offs, mask=mask, other=0)
    # Advance a row pointer instead of indexing with i · width: that product is int32 and overflows
    # once depth × width >= 2^31 counters; a pointer step of width is 64-bit address arithmetic.
    # A while loop: depth is a runtime value, not a range() bound for the interpreter (see _triton).
    row_ptr = counts_ptr
    i = 0
    while i < depth:
        a = tl.load(mult_ptr + i)
        bucket = _bucket(x, a, width)
        ones = tl.full((BLOCK,), 1, counts_ptr.dtype.element_ty)
        tl.atomic_add(row_ptr + bucket, ones, mask=mask)
        row_ptr += width
        i += 1


# n and depth are not specialised (see the update kernel); for depth there is one more reason:
# triton 3.6 crashed compiling this loop for sm_90 with depth specialised to 1 (TritonGPUCoalesce;
# tools/sm90_compile_check.py found it).
@triton.jit(do_not_specialize=["n", "depth"])
def _sketch_query_kernel(
    # pointers
    ids_ptr,
    mult_ptr,
    counts_ptr,
    out_ptr,
    # sizes
    n,
    width,
    depth,
    # meta
    BLOCK: tl.constexpr,
):
    """out (n,) = min over rows of counts[i, bucket_i(ids)]."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(ids_ptr + offs, mask=mask, other=0)
    a = tl.load(mult_ptr)
    best = tl.load(counts_ptr + _bucket(x, a, width), mask=mask, other=0)
    row_ptr = counts_ptr  # a row pointer, not i · width (int32; see _sketch_update_kernel)
    i = 1
    while i < depth:  # not range(): see the update kernel
        row_ptr += width
        a = tl.load(mult_ptr + i)
        best = tl.minimum(best, tl.load(row_ptr + _bucket(x, a, width), mask=mask, other=0))
        i += 1
    tl.store(out_ptr + offs, best, mask=mask)


# ----------------------------------------------------------------------------------------------
# Functional API (checked, then Triton or torch)
# ----------------------------------------------------------------------------------------------

_BLOCK = 1024


def count_min_buckets(ids: torch.Tensor, multipliers: torch.Tensor, width: int) -> torch.Tensor:
    """Returns the (depth, n) int64 buckets of int64 ``ids`` (n,), one row per multiplier (torch)."""
    h = ids[None, :] * multipliers[:, None]  # int64 multiply wraps on every torch backend
    h = h + (h >> 32)
    return (h & HASH_MASK) % width


def _check(counts: torch.Tensor, ids: torch.Tensor, multipliers: torch.Tensor) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        raise TypeError(f"ids must be int64, got {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if ids.device != counts.device:
        raise ValueError(f"ids must be on the sketch's device {counts.device}, got {ids.device}")
    if counts.dim() != 2 or counts.dtype not in COUNT_DTYPES:
        raise ValueError(f"counts must be a 2-D int32/int64 table, got {counts.dtype} {tuple(counts.shape)}")
    if multipliers.shape != (counts.shape[0],) or multipliers.dtype != torch.int64:
        raise ValueError(f"multipliers must be int64 of shape ({counts.shape[0]},), got {multipliers.dtype} {tuple(multipliers.shape)}")


def count_min_update_(counts: torch.Tensor, ids: torch.Tensor, multipliers: torch.Tensor, *, impl: str = "auto") -> None:
    """Adds every id of ``ids`` (n,) to the sketch table ``counts`` (depth, width) in place."""
    _check(counts, ids, multipliers)
    if ids.numel() == 0:
        return
    use_triton = _triton.resolve_impl(impl, counts, ids) == "triton"
    ids = ids.contiguous()
    if use_triton:
        assert counts.is_contiguous()
        depth, width = counts.shape
        grid = (triton.cdiv(ids.numel(), _BLOCK),)
        with _triton.device_guard(counts):
            _sketch_update_kernel[grid](ids, multipliers, counts, ids.numel(), width, depth, BLOCK=_BLOCK)
        return
    buckets = count_min_buckets(ids, multipliers, counts.shape[1])
    rows = torch.arange(counts.shape[0], device=counts.device)[:, None].expand_as(buckets)
    ones = torch.ones(buckets.shape, dtype=counts.dtype, device=counts.device)
    counts.index_put_((rows.reshape(-1), buckets.reshape(-1)), ones.reshape(-1), accumulate=True)


def count_min_query(counts: torch.Tensor, ids: torch.Tensor, multipliers: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Returns the (n,) estimates ``min_i counts[i, bucket_i(id)]`` in ``counts``' dtype."""
    _check(counts, ids, multipliers)
    out = torch.empty(ids.shape, dtype=counts.dtype, device=counts.device)
    if ids.numel() == 0:
        return out
    use_triton = _triton.resolve_impl(impl, counts, ids) == "triton"
    ids = ids.contiguous()
    if use_triton:
        depth, width = counts.shape
        grid = (triton.cdiv(ids.numel(), _BLOCK),)
        with _triton.device_guard(counts):
            _sketch_query_kernel[grid](ids, multipliers, counts, out, ids.numel(), width, depth, BLOCK=_BLOCK)
        return out
    buckets = count_min_buckets(ids, multipliers, counts.shape[1])
    return counts.gather(1, buckets).amin(0)
