"""Sampled-softmax loss with learned temperature, logQ correction, id masks and Matryoshka prefixes.

The training objective of OmniSearchSage (``docs/loss.md``). The truth is
``omnikern.ops.reference.sampled_softmax_loss_ref``; this module computes the same numbers without
ever holding a B × N logit matrix.

Maths
-----
For a prefix ``d_k`` write ``r_k(x) = 1 / max(‖x[:d_k]‖, eps)`` (the inverse prefix norm) and
``raw_k(i, j) = <q_i[:d_k], c_j[:d_k]>``. The logit of row i against candidate j at prefix k is

    z_k(i, j) = s · raw_k(i, j) · r_k(q_i) · r_k(c_j) − logq_j,      s = exp(t),

with masked candidates (``id(c_j) == pos_id(i)``, and for in-batch candidates also
``query_id(c_j) == query_id(i)``) left out. Each candidate set (in-batch, random) is reduced to one
number per row and prefix, ``lse_k(i) = log Σ_j exp z_k(i, j)`` (−inf when all are masked). The rest
is O(B·D) and stays in torch autograd: the positive logit ``z⁺`` and

    ℓ_k(i) = log(exp z⁺_k(i) + Σ_sets exp lse_k^set(i)) − z⁺_k(i).

Masking a logit to the dtype's most negative finite value (docs/loss.md) or leaving it out are the same
thing here: the positive column is never masked, so its exp term dominates the lowest float's by far.

Backward of ``lse`` with upstream ``γ_k(i) = ∂L/∂lse_k(i)``: ``g_k(i, j) = γ_k(i) · softmax_j z_k(i, ·)``
(recomputed from the saved ``lse``) and

    ∂L/∂q_i[:d_k]  += s · r_k(q_i) · Σ_j g_k(i, j) · r_k(c_j) · c_j[:d_k]
    ∂L/∂c_j[:d_k]  += s · r_k(c_j) · Σ_i g_k(i, j) · r_k(q_i) · q_i[:d_k]
    ∂L/∂r_k(q_i)    = s · Σ_j g_k(i, j) · raw_k(i, j) · r_k(c_j)      (and symmetrically for r_k(c_j))
    ∂L/∂t           = Σ_k Σ_ij g_k(i, j) · s · raw_k · r_k(q_i) · r_k(c_j)

The inverse norms are computed in torch, so autograd carries ``∂r/∂x`` (the same function as
``F.normalize``, including its ``eps`` clamp).

Tiling
------
All prefixes share one pass over D: the prefix dot products are partial sums of the full one, so the
D loop runs segment by segment ``[d_{k−1}, d_k)`` and, at the end of each segment, the running
``raw`` tile is turned into prefix-k logits and folded into prefix k's online log-sum-exp
(``m``, ``l`` per row and prefix, kept as a ``(BLOCK_B, P_PAD)`` register tile).

* forward: one program per ``BLOCK_B`` query rows, looping over candidate tiles of ``BLOCK_N``; it
  writes only ``lse`` (P, B).
* backward, ``dq`` kernel: one program per (row block, D chunk of ``BLOCK_DO``); it recomputes each
  logit tile over the full D and accumulates its chunk of ``dq``, plus ``∂L/∂r(q)`` and the per-row
  temperature gradient (first chunk only).
* backward, ``dc`` kernel: the same with rows and candidates swapped.
No atomics; each backward kernel recomputes the logits once per D chunk (256 wide on a GPU), so
at D ≤ 256 fwd+bwd costs about five B·N·D GEMMs against the materialised version's three, but
moves O((B + N)·D) bytes instead of several B × N fp32 matrices. fp16/bf16 tiles go to ``tl.dot``
as they are (fp32 accumulation); the gradient dots take fp32 ``g`` (tf32 on a GPU), because
softmax probabilities times 1/B underflow fp16. fp32 inputs use IEEE fp32 dots (no tf32), exact
but slow on tensor-core GPUs.

Matryoshka cost: the logit GEMM runs once over D for every prefix, the exp/LSE work is per prefix.
In the backward, a D chunk is four sub-chunks with an accumulator each: the prefixes covering the
whole chunk sum their weight tiles and share one dot per sub-chunk, and a shorter prefix pays one
dot per sub-chunk it reaches. For the published six prefixes at D = 512 that is 13 sub-chunk dots
against 8 for the 512-d loss alone (the recomputed logits are shared).

On CPU without the interpreter a chunked torch path computes the same ``lse`` and gradients with
``(CHUNK_ROWS, CHUNK_COLS)`` tiles (forward, then recomputed in backward), never materialising
B × N either: its extra memory is a few CHUNK_ROWS × CHUNK_COLS tiles.

NaN / inf: an input row with NaN or ±inf in a used prefix makes the loss NaN (in every
implementation, as in the reference); nothing is checked on the host because that needs a sync.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from omnikern._checks import check_int
from omnikern.ops import _triton
from omnikern.ops.reference import DEFAULT_DIM_WEIGHTS, NEG_MODES

NORM_EPS = 1e-12  # F.normalize's default
MAX_PREFIXES = 8
# Tile of the torch path: (rows, candidates) logits held at once. Big tiles on purpose: each torch
# op has a fixed cost (a thread-pool round trip, milliseconds on a busy machine), so small tiles
# are slow; 2048 × 4096 fp32 is 32 MB per tile buffer, a few of them live at a time.
CHUNK_ROWS = 2048
CHUNK_COLS = 4096

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dot_tile(acc, a_ptr, b_ptr, offs_a, offs_b, mask_a, mask_b, stride_a, stride_b, d0, hi,
              BLOCK_D: tl.constexpr, UPCAST_BF16: tl.constexpr, IEEE: tl.constexpr):
    """acc += a[offs_a, d0:d0+BLOCK_D] @ b[offs_b, d0:d0+BLOCK_D]ᵀ, columns >= hi as 0."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    mask_d = offs_d < hi
    a = tl.load(a_ptr + offs_a[:, None] * stride_a + offs_d[None, :], mask=mask_a[:, None] & mask_d[None, :], other=0.0)
    b = tl.load(b_ptr + offs_b[:, None] * stride_b + offs_d[None, :], mask=mask_b[:, None] & mask_d[None, :], other=0.0)
    if UPCAST_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        # fp32 inputs: no tf32 rounding, so the kernel matches the fp32 reference.
        acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, tl.trans(b), acc)
    return acc


@triton.jit
def _accumulate_dot(
    acc,
    a_ptr,
    b_ptr,
    offs_a,
    offs_b,
    mask_a,
    mask_b,
    stride_a,
    stride_b,
    lo,
    hi,
    BLOCK_D: tl.constexpr,
    UPCAST_BF16: tl.constexpr,
    IEEE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """acc (len(offs_a), len(offs_b)) += a[offs_a, lo:hi] @ b[offs_b, lo:hi]ᵀ, fp32."""
    if INTERPRET:
        # lo and hi are loaded values: not range() bounds for the interpreter (see _triton).
        d0 = lo
        while d0 < hi:
            acc = _dot_tile(acc, a_ptr, b_ptr, offs_a, offs_b, mask_a, mask_b, stride_a, stride_b, d0, hi, BLOCK_D, UPCAST_BF16, IEEE)
            d0 += BLOCK_D
    else:
        # A for loop, so that the compiler pipelines the tile loads (it does for fp32 on sm_90).
        for d0 in range(lo, hi, BLOCK_D):
            acc = _dot_tile(acc, a_ptr, b_ptr, offs_a, offs_b, mask_a, mask_b, stride_a, stride_b, d0, hi, BLOCK_D, UPCAST_BF16, IEEE)
    return acc


@triton.jit
def _grad_dot(acc, w, b_ptr, offs_l, mask_l, stride_b, col_lo, col_hi, BLOCK_SUB: tl.constexpr, IEEE: tl.constexpr):
    """acc (rows, BLOCK_SUB) += w (rows, loop) @ b[offs_l, col_lo : col_lo + BLOCK_SUB], columns >= col_hi as 0.

    w is fp32 (softmax probabilities times 1/B underflow fp16), so the b tile is upcast too.
    """
    offs = col_lo + tl.arange(0, BLOCK_SUB)
    b = tl.load(b_ptr + offs_l[:, None] * stride_b + offs[None, :], mask=mask_l[:, None] & (offs[None, :] < col_hi), other=0.0)
    b = b.to(tl.float32)
    if IEEE:
        acc = tl.dot(w, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(w, b, acc)
    return acc


@triton.jit
def _valid_pairs(row_pos, row_q, col_ids, col_q, mask_rows, mask_cols, USE_QMASK: tl.constexpr):
    """(rows, cols) bool: in range and not masked by the id rules (rows are queries)."""
    valid = mask_rows[:, None] & mask_cols[None, :] & (col_ids[None, :] != row_pos[:, None])
    if USE_QMASK:
        valid = valid & (col_q[None, :] != row_q[:, None])
    return valid


# Integer specialisation of the loss kernels: B (queries) and N (candidates) stay specialised (== 1,
# a multiple of 16, other). Unspecialised they cost registers: compiled for sm_90 at 4 warps the bf16
# forward with one prefix went from 0 to 112 B of spills, with six from 876 to 1,312 B
# (tools/sm90_compile_check.py, 2026-12-04), and this is the hot path. The price is one compile per
# class seen (~14 s for an fp32 backward): omnikern.ops.warmup compiles the multiple-of-16 and the
# other class of both up front. D (backward) masks the contiguous axis of the gradient stores (16 | D
# gives vector stores) and is fixed by the model; the strides stay specialised too.
@triton.jit
def _lse_fwd_kernel(
    # pointers
    q_ptr,
    c_ptr,
    rq_ptr,
    rc_ptr,
    log_scale_ptr,
    corr_ptr,
    row_pos_ids_ptr,
    row_q_ids_ptr,
    col_ids_ptr,
    col_q_ids_ptr,
    bounds_ptr,
    lse_ptr,
    # sizes
    B,
    N,
    # strides (the last dimension is contiguous)
    stride_qb,
    stride_cn,
    # meta
    NUM_P: tl.constexpr,
    P_PAD: tl.constexpr,
    USE_QMASK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST_BF16: tl.constexpr,
    IEEE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """q (B, D), c (N, D), rq (P, B), rc (P, N), corr (N,), bounds (P+1,) int32 -> lse (P, B) fp32."""
    pid_b = tl.program_id(0).to(tl.int64)  # int64 before stride products: B·D may pass 2^31
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    scale = tl.exp(tl.load(log_scale_ptr).to(tl.float32))
    row_pos = tl.load(row_pos_ids_ptr + offs_b, mask=mask_b, other=0)
    row_q = tl.load(row_q_ids_ptr + offs_b, mask=mask_b, other=0)
    prefix = tl.arange(0, P_PAD)
    # Online log-sum-exp state of every prefix: column k of m_all / l_all belongs to prefix k.
    m_all = tl.full((BLOCK_B, P_PAD), float("-inf"), tl.float32)
    l_all = tl.zeros((BLOCK_B, P_PAD), tl.float32)

    # A while loop: N is a runtime value, not a range() bound for the interpreter (see _triton).
    n0 = 0
    while n0 < N:
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < N
        col_ids = tl.load(col_ids_ptr + offs_n, mask=mask_n, other=0)
        col_q = tl.load(col_q_ids_ptr + offs_n, mask=mask_n, other=0)
        valid = _valid_pairs(row_pos, row_q, col_ids, col_q, mask_b, mask_n, USE_QMASK)
        corr = tl.load(corr_ptr + offs_n, mask=mask_n, other=0.0)
        raw = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
        for k in tl.static_range(NUM_P):
            # raw_k = raw_{k-1} + <q[d_{k-1}:d_k], c[d_{k-1}:d_k]>: one pass over D for all prefixes.
            lo = tl.load(bounds_ptr + k)
            hi = tl.load(bounds_ptr + k + 1)
            raw = _accumulate_dot(
                raw, q_ptr, c_ptr, offs_b, offs_n, mask_b, mask_n, stride_qb, stride_cn, lo, hi, BLOCK_D, UPCAST_BF16, IEEE, INTERPRET
            )
            rq = tl.load(rq_ptr + k * B + offs_b, mask=mask_b, other=0.0)
            rc = tl.load(rc_ptr + k * N + offs_n, mask=mask_n, other=0.0)
            logit = scale * raw * rq[:, None] * rc[None, :] - corr[None, :]
            logit = tl.where(valid, logit, float("-inf"))

            sel = prefix[None, :] == k
            m_old = tl.max(tl.where(sel, m_all, float("-inf")), axis=1)
            l_old = tl.sum(tl.where(sel, l_all, 0.0), axis=1)
            m_new = tl.maximum(m_old, tl.max(logit, axis=1))
            # Rows with nothing valid so far keep m = −inf; shift them by 0 so exp never sees −inf − (−inf).
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_new = l_old * tl.exp(m_old - m_safe) + tl.sum(tl.exp(logit - m_safe[:, None]), axis=1)
            m_all = tl.where(sel, m_new[:, None], m_all)
            l_all = tl.where(sel, l_new[:, None], l_all)
        n0 += BLOCK_N

    # l = 0 (every candidate masked) gives log 0 = −inf, the empty log-sum-exp.
    # (the where keeps log(0) out of the interpreter, which would warn).
    lse = tl.where(l_all > 0, m_all + tl.log(tl.where(l_all > 0, l_all, 1.0)), float("-inf"))
    lse_ptrs = lse_ptr + prefix[None, :] * B + offs_b[:, None]
    tl.store(lse_ptrs, lse, mask=mask_b[:, None] & (prefix[None, :] < NUM_P))


@triton.jit  # B and N specialised: see _lse_fwd_kernel
def _lse_bwd_kernel(
    # pointers; "a" is the side whose gradient this program writes, "b" the side it loops over
    a_ptr,
    b_ptr,
    ra_ptr,
    rb_ptr,
    log_scale_ptr,
    corr_ptr,
    row_pos_ids_ptr,
    row_q_ids_ptr,
    col_ids_ptr,
    col_q_ids_ptr,
    bounds_ptr,
    lse_ptr,
    grad_lse_ptr,
    grad_a_ptr,
    grad_ra_ptr,
    grad_scale_ptr,
    # sizes
    B,
    N,
    D,
    # strides (the last dimension is contiguous)
    stride_a,
    stride_b,
    stride_ga,
    # meta
    A_IS_QUERY: tl.constexpr,
    NUM_P: tl.constexpr,
    P_PAD: tl.constexpr,
    USE_QMASK: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_LOOP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    UPCAST_BF16: tl.constexpr,
    IEEE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """One kernel for both gradients.

    A_IS_QUERY: a = q (B, D), b = c (N, D); writes dq (B, D), ∂L/∂rq (P, B) and the per-row
    temperature gradient (B,). Otherwise a = c, b = q; writes dc (N, D) and ∂L/∂rc (P, N).
    Program (pid_a, pid_d) owns BLOCK_A rows of a and the D chunk [pid_d·BLOCK_DO, +BLOCK_DO).
    """
    pid_a = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    if A_IS_QUERY:
        A = B
        LOOP = N
    else:
        A = N
        LOOP = B
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    mask_a = offs_a < A
    # This program's D chunk, as four sub-chunks with one accumulator each, so a short prefix
    # pays only for the sub-chunks it reaches.
    BLOCK_SUB: tl.constexpr = BLOCK_DO // 4
    chunk_lo = pid_d * BLOCK_DO
    chunk_full = tl.minimum(chunk_lo + BLOCK_DO, D)
    last_hi = tl.load(bounds_ptr + NUM_P)
    scale = tl.exp(tl.load(log_scale_ptr).to(tl.float32))
    prefix = tl.arange(0, P_PAD)
    if A_IS_QUERY:
        a_pos = tl.load(row_pos_ids_ptr + offs_a, mask=mask_a, other=0)
        a_q = tl.load(row_q_ids_ptr + offs_a, mask=mask_a, other=0)
    else:
        a_pos = tl.load(col_ids_ptr + offs_a, mask=mask_a, other=0)
        a_q = tl.load(col_q_ids_ptr + offs_a, mask=mask_a, other=0)
        a_corr = tl.load(corr_ptr + offs_a, mask=mask_a, other=0.0)

    acc0 = tl.zeros((BLOCK_A, BLOCK_SUB), tl.float32)
    acc1 = tl.zeros((BLOCK_A, BLOCK_SUB), tl.float32)
    acc2 = tl.zeros((BLOCK_A, BLOCK_SUB), tl.float32)
    acc3 = tl.zeros((BLOCK_A, BLOCK_SUB), tl.float32)
    grad_r_all = tl.zeros((BLOCK_A, P_PAD), tl.float32)

    # A while loop: LOOP is a runtime value, not a range() bound for the interpreter (see _triton).
    l0 = 0
    while l0 < LOOP:
        offs_l = (l0 + tl.arange(0, BLOCK_LOOP)).to(tl.int64)
        mask_l = offs_l < LOOP
        # The tile is always laid out (a, loop); rows of the softmax are queries, so for the dc
        # program they are its columns.
        if A_IS_QUERY:
            l_ids = tl.load(col_ids_ptr + offs_l, mask=mask_l, other=0)
            l_q = tl.load(col_q_ids_ptr + offs_l, mask=mask_l, other=0)
            valid = _valid_pairs(a_pos, a_q, l_ids, l_q, mask_a, mask_l, USE_QMASK)
            corr = tl.load(corr_ptr + offs_l, mask=mask_l, other=0.0)[None, :]
        else:
            l_pos = tl.load(row_pos_ids_ptr + offs_l, mask=mask_l, other=0)
            l_q = tl.load(row_q_ids_ptr + offs_l, mask=mask_l, other=0)
            # _valid_pairs laid out (candidates, queries): the same rules, transposed.
            valid = mask_a[:, None] & mask_l[None, :] & (a_pos[:, None] != l_pos[None, :])
            if USE_QMASK:
                valid = valid & (a_q[:, None] != l_q[None, :])
            corr = a_corr[:, None]
        raw = tl.zeros((BLOCK_A, BLOCK_LOOP), tl.float32)
        # Prefixes that cover the whole chunk add their weights here and share one set of dots.
        w_full = tl.zeros((BLOCK_A, BLOCK_LOOP), tl.float32)
        for k in tl.static_range(NUM_P):
            lo = tl.load(bounds_ptr + k)
            hi = tl.load(bounds_ptr + k + 1)
            raw = _accumulate_dot(
                raw, a_ptr, b_ptr, offs_a, offs_l, mask_a, mask_l, stride_a, stride_b, lo, hi, BLOCK_D, UPCAST_BF16, IEEE, INTERPRET
            )
            ra = tl.load(ra_ptr + k * A + offs_a, mask=mask_a, other=0.0)
            rb = tl.load(rb_ptr + k * LOOP + offs_l, mask=mask_l, other=0.0)
            if A_IS_QUERY:
                lse = tl.load(lse_ptr + k * B + offs_a, mask=mask_a, other=0.0)[:, None]
                grad_lse = tl.load(grad_lse_ptr + k * B + offs_a, mask=mask_a, other=0.0)[:, None]
            else:
                lse = tl.load(lse_ptr + k * B + offs_l, mask=mask_l, other=0.0)[None, :]
                grad_lse = tl.load(grad_lse_ptr + k * B + offs_l, mask=mask_l, other=0.0)[None, :]
            # A row with every candidate masked has lse = −inf and no valid entry: shift it by 0 so that
            # exp(z − lse) stays finite before the where (inf·0 would be NaN).
            lse = tl.where(lse == float("-inf"), 0.0, lse)
            logit = raw * (scale * ra)[:, None] * rb[None, :] - corr
            # g = γ · softmax: exp(z − lse), zero where masked (and where lse = −inf, nothing is valid).
            g = tl.where(valid, grad_lse * tl.exp(logit - lse), 0.0)
            weighted = g * rb[None, :]
            # ∂L/∂r_k(a) = s · Σ_loop g · raw · r_k(b)
            grad_r = tl.sum(weighted * raw, axis=1) * scale
            grad_r_all += tl.where(prefix[None, :] == k, grad_r[:, None], 0.0)
            # ∂L/∂a[:d_k] += (s·r_k(a) · g · r_k(b)) @ b[:d_k], for this program's D chunk only:
            # a prefix covering the chunk joins w_full; a shorter one takes the sub-chunks it reaches.
            w = weighted * (scale * ra)[:, None]
            if hi >= chunk_full:
                w_full += w
            else:
                if chunk_lo < hi:
                    acc0 = _grad_dot(acc0, w, b_ptr, offs_l, mask_l, stride_b, chunk_lo, hi, BLOCK_SUB, IEEE)
                if chunk_lo + BLOCK_SUB < hi:
                    acc1 = _grad_dot(acc1, w, b_ptr, offs_l, mask_l, stride_b, chunk_lo + BLOCK_SUB, hi, BLOCK_SUB, IEEE)
                if chunk_lo + 2 * BLOCK_SUB < hi:
                    acc2 = _grad_dot(acc2, w, b_ptr, offs_l, mask_l, stride_b, chunk_lo + 2 * BLOCK_SUB, hi, BLOCK_SUB, IEEE)
                if chunk_lo + 3 * BLOCK_SUB < hi:
                    acc3 = _grad_dot(acc3, w, b_ptr, offs_l, mask_l, stride_b, chunk_lo + 3 * BLOCK_SUB, hi, BLOCK_SUB, IEEE)
        if last_hi >= chunk_full:
            acc0 = _grad_dot(acc0, w_full, b_ptr, offs_l, mask_l, stride_b, chunk_lo, chunk_full, BLOCK_SUB, IEEE)
            acc1 = _grad_dot(acc1, w_full, b_ptr, offs_l, mask_l, stride_b, chunk_lo + BLOCK_SUB, chunk_full, BLOCK_SUB, IEEE)
            acc2 = _grad_dot(acc2, w_full, b_ptr, offs_l, mask_l, stride_b, chunk_lo + 2 * BLOCK_SUB, chunk_full, BLOCK_SUB, IEEE)
            acc3 = _grad_dot(acc3, w_full, b_ptr, offs_l, mask_l, stride_b, chunk_lo + 3 * BLOCK_SUB, chunk_full, BLOCK_SUB, IEEE)
        l0 += BLOCK_LOOP

    offs_sub = tl.arange(0, BLOCK_SUB)
    out_ty = grad_a_ptr.dtype.element_ty
    grad_rows = grad_a_ptr + offs_a[:, None] * stride_ga
    cols = chunk_lo + offs_sub
    tl.store(grad_rows + cols[None, :], acc0.to(out_ty), mask=mask_a[:, None] & (cols[None, :] < D))
    cols = chunk_lo + BLOCK_SUB + offs_sub
    tl.store(grad_rows + cols[None, :], acc1.to(out_ty), mask=mask_a[:, None] & (cols[None, :] < D))
    cols = chunk_lo + 2 * BLOCK_SUB + offs_sub
    tl.store(grad_rows + cols[None, :], acc2.to(out_ty), mask=mask_a[:, None] & (cols[None, :] < D))
    cols = chunk_lo + 3 * BLOCK_SUB + offs_sub
    tl.store(grad_rows + cols[None, :], acc3.to(out_ty), mask=mask_a[:, None] & (cols[None, :] < D))
    # The per-row reductions are the same in every D chunk: the first chunk writes them.
    first = pid_d == 0
    tl.store(
        grad_ra_ptr + prefix[None, :] * A + offs_a[:, None],
        grad_r_all,
        mask=first & mask_a[:, None] & (prefix[None, :] < NUM_P),
    )
    if A_IS_QUERY:
        # ∂L/∂t = s·Σ g · raw · r(q) r(c) = Σ_k ∂L/∂r_k(q_i) · r_k(q_i), per row.
        ra_all = tl.load(ra_ptr + prefix[None, :] * A + offs_a[:, None], mask=mask_a[:, None] & (prefix[None, :] < NUM_P), other=0.0)
        grad_scale_rows = tl.sum(grad_r_all * ra_all, axis=1)
        tl.store(grad_scale_ptr + offs_a, grad_scale_rows, mask=first & mask_a)


# ----------------------------------------------------------------------------------------------
# Launchers (Triton)
# ----------------------------------------------------------------------------------------------


def _blocks(D: int) -> tuple[int, int, int, int]:
    """(BLOCK_ROWS, BLOCK_LOOP, BLOCK_D, BLOCK_DO): tiles of rows, candidates, the D loop, the D chunk."""
    if _triton.interpreting():
        # The interpreter charges per step: big tiles, few steps. D chunks of 128 so that the tests
        # (D = 150) cover a backward split over several chunks.
        return 32, 32, 32, max(64, min(128, _triton.next_power_of_2(D)))
    # D chunks of up to 256, so D <= 256 recomputes each logit tile once per backward kernel.
    # Compiled for sm_90 (python_tests/test_ops_loss.py::test_kernels_compile_for_sm90) the bf16
    # backward uses 48 KB of shared memory at BLOCK_DO = 256, 8 warps, six prefixes. Not tuned on
    # a GPU (none was available).
    return 64, 64, 64, max(64, min(256, _triton.next_power_of_2(D)))


def _warps(num_p: int, dtype: torch.dtype) -> int:
    """Warps per program. Each prefix keeps its own (rows, P_PAD) running state and fp32 dots keep
    wider operand tiles: at 4 warps those variants spilled registers when compiled for sm_90 (bf16
    forward with 4-6 prefixes 400-876 B, fp32 one prefix 224 B; tools/sm90_compile_check.py), at 8
    warps the state is spread over twice the threads. Spills measured without a GPU; the speed of
    the change is owed to the next GPU run."""
    return 8 if num_p > 1 or dtype == torch.float32 else 4


def _prefix_pad(num_p: int) -> int:
    # The per-prefix state is a (rows, P_PAD) tile; keep it at least 2 wide (no 1-wide aranges).
    return max(2, _triton.next_power_of_2(num_p))


def _dot_flags(dtype: torch.dtype) -> dict:
    return {"UPCAST_BF16": _triton.upcast_bf16(dtype), "IEEE": dtype == torch.float32, "INTERPRET": _triton.interpreting()}


@functools.lru_cache(maxsize=64)
def _bounds_tensor(bounds: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The prefix bounds (P+1,) int32 on ``device``, made once per (bounds, device).

    Built per call it would be a host-to-device copy on every forward and backward, which a CUDA
    graph cannot capture (and a step that pays for nothing). A trainer uses one or two prefix sets,
    so the cache stays tiny. The kernels only read it; nothing may write to it.
    """
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def _contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    # The kernels index rows by stride(0) with unit column stride, and (P, rows) tables as k·rows + i.
    # Compiled graphs may hand the op other layouts than eager does, so every call normalises here.
    return [t.contiguous() for t in tensors]


def _lse_fwd_triton(q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask):
    q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids = _contiguous(
        q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids
    )
    B, _ = q.shape
    N = c.shape[0]
    num_p = len(bounds) - 1
    lse = torch.empty((num_p, B), device=q.device, dtype=torch.float32)
    if B == 0:
        return lse
    if N == 0:
        return lse.fill_(float("-inf"))
    bounds_t = _bounds_tensor(tuple(bounds), q.device)
    block_b, block_n, block_d, _ = _blocks(q.shape[1])
    grid = (triton.cdiv(B, block_b),)
    with _triton.device_guard(q):
        _lse_fwd_kernel[grid](
            q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds_t, lse,
            B, N, q.stride(0), c.stride(0),
            NUM_P=num_p, P_PAD=_prefix_pad(num_p), USE_QMASK=use_qmask,
            BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=_warps(num_p, q.dtype), **_dot_flags(q.dtype),
        )  # fmt: skip
    return lse


def _lse_bwd_triton(grad_lse, lse, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask):
    grad_lse, lse, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids = _contiguous(
        grad_lse, lse, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids
    )
    B, D = q.shape
    N = c.shape[0]
    num_p = len(bounds) - 1
    # The kernels write every element (D chunks past every prefix write zeros), so no memset,
    # except when there is nothing to launch.
    alloc = torch.empty_like if B > 0 and N > 0 and D > 0 else torch.zeros_like
    grad_q, grad_c, grad_rq, grad_rc = alloc(q), alloc(c), alloc(rq), alloc(rc)
    grad_scale_rows = alloc(rq[0] if rq.shape[0] else rq.new_empty(B))
    if B > 0 and N > 0 and D > 0:
        bounds_t = _bounds_tensor(tuple(bounds), q.device)
        block_rows, block_loop, block_d, block_do = _blocks(D)
        grad_lse = grad_lse.contiguous().float()
        common = dict(
            NUM_P=num_p, P_PAD=_prefix_pad(num_p), USE_QMASK=use_qmask, BLOCK_D=block_d, BLOCK_DO=block_do,
            num_warps=8 if block_do >= 256 else _warps(num_p, q.dtype), **_dot_flags(q.dtype),
        )  # fmt: skip
        ids = (row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds_t, lse, grad_lse)
        grid_q = (triton.cdiv(B, block_rows), triton.cdiv(D, block_do))
        grid_c = (triton.cdiv(N, block_loop), triton.cdiv(D, block_do))
        with _triton.device_guard(q):
            _lse_bwd_kernel[grid_q](
                q, c, rq, rc, log_scale, corr, *ids, grad_q, grad_rq, grad_scale_rows,
                B, N, D, q.stride(0), c.stride(0), grad_q.stride(0),
                A_IS_QUERY=True, BLOCK_A=block_rows, BLOCK_LOOP=block_loop, **common,
            )  # fmt: skip
            _lse_bwd_kernel[grid_c](
                c, q, rc, rq, log_scale, corr, *ids, grad_c, grad_rc, grad_scale_rows,
                B, N, D, c.stride(0), q.stride(0), grad_c.stride(0),
                A_IS_QUERY=False, BLOCK_A=block_loop, BLOCK_LOOP=block_rows, **common,
            )  # fmt: skip
    # ∂L/∂t = ∂L/∂s · s, already folded into the per-row sums.
    grad_log_scale = grad_scale_rows.sum().to(log_scale.dtype).reshape(log_scale.shape)
    return grad_q, grad_c, grad_rq, grad_rc, grad_log_scale


# ----------------------------------------------------------------------------------------------
# Chunked torch path (CPU): the same maths on (CHUNK_ROWS, CHUNK_COLS) tiles
# ----------------------------------------------------------------------------------------------


def _torch_tiles(q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask):
    """Yields (rows, cols, k, logit_k, q_tile, c_tile, scale) for every tile and prefix, in
    the compute dtype; masked logits are −inf. ``logit_k`` is a fresh tensor the caller may modify."""
    compute = rq.dtype
    scale = log_scale.to(compute).exp()
    B, N = q.shape[0], c.shape[0]
    for r0 in range(0, B, CHUNK_ROWS):
        rows = slice(r0, min(r0 + CHUNK_ROWS, B))
        q_tile = q[rows].to(compute)
        for c0 in range(0, N, CHUNK_COLS):
            cols = slice(c0, min(c0 + CHUNK_COLS, N))
            c_tile = c[cols].to(compute)
            masked = col_ids[None, cols] == row_pos_ids[rows, None]
            if use_qmask:
                masked |= col_q_ids[None, cols] == row_q_ids[rows, None]
            neg_corr = -corr[None, cols].to(compute)
            if len(bounds) == 2:
                # One prefix: fold the scales into the (rows, D) and (cols, D) operands, so the
                # matmul writes the finished logits (no (rows, cols) passes for the scaling).
                hi = bounds[1]
                q_scaled = q_tile[:, :hi] * (scale * rq[0, rows, None])
                c_scaled = c_tile[:, :hi] * rc[0, cols, None]
                logit = torch.addmm(neg_corr, q_scaled, c_scaled.T).masked_fill_(masked, float("-inf"))
                yield rows, cols, 0, logit, q_tile, c_tile, scale
                continue
            raw = torch.zeros((q_tile.shape[0], c_tile.shape[0]), dtype=compute, device=q.device)
            for k in range(len(bounds) - 1):
                lo, hi = bounds[k], bounds[k + 1]
                raw = raw.addmm_(q_tile[:, lo:hi], c_tile[:, lo:hi].T)
                logit = raw * (scale * rq[k, rows, None])
                logit.mul_(rc[k, None, cols]).add_(neg_corr).masked_fill_(masked, float("-inf"))
                yield rows, cols, k, logit, q_tile, c_tile, scale


def _lse_fwd_torch(q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask):
    lse = torch.full((len(bounds) - 1, q.shape[0]), float("-inf"), dtype=rq.dtype, device=q.device)
    tiles = _torch_tiles(q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask)
    for rows, _, k, logit, *_ in tiles:
        # log-sum-exp in place in the tile buffer; rows with nothing unmasked (max = −inf) are
        # shifted by 0 and give log 0 = −inf.
        row_max = logit.amax(dim=1)
        row_max = row_max.masked_fill_(row_max == float("-inf"), 0.0)
        tile_lse = logit.sub_(row_max[:, None]).exp_().sum(dim=1).log_().add_(row_max)
        lse[k, rows] = torch.logaddexp(lse[k, rows], tile_lse)
    return lse


def _lse_bwd_torch(grad_lse, lse, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask):
    compute = rq.dtype
    grad_q = torch.zeros(q.shape, dtype=compute, device=q.device)
    grad_c = torch.zeros(c.shape, dtype=compute, device=q.device)
    grad_rq = torch.zeros_like(rq)
    grad_rc = torch.zeros_like(rc)
    grad_lse = grad_lse.to(compute)
    # Rows with every candidate masked have lse = −inf and only −inf logits: shift them by 0 so that
    # exp(−inf − 0) = 0 rather than exp(−inf + inf) = NaN.
    lse = lse.masked_fill(lse == float("-inf"), 0.0)
    tiles = _torch_tiles(q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask)
    for rows, cols, k, logit, q_tile, c_tile, scale in tiles:
        hi = bounds[k + 1]
        # g = γ · exp(z − lse), in place in the logit buffer (masked entries: exp(−inf) = 0).
        g = logit.sub_(lse[k, rows, None]).exp_().mul_(grad_lse[k, rows, None])
        # ∂L/∂q[:d_k] = s·r(q) ∘ (g @ (r(c) ∘ c[:d_k])): the scales go on the (N, D) side, not on g.
        from_c = g @ (rc[k, cols, None] * c_tile[:, :hi])
        from_q = g.T @ (rq[k, rows, None] * q_tile[:, :hi])
        grad_q[rows, :hi] += (scale * rq[k, rows, None]) * from_c
        grad_c[cols, :hi] += (scale * rc[k, cols, None]) * from_q
        # ∂L/∂r(q_i) = s·Σ_j g_ij raw_ij r(c_j) = s·<q_i[:d_k], from_c_i>, since raw_ij = <q_i, c_j>:
        # O(rows·D) from the matmul above instead of another pass over the (rows, cols) tile.
        grad_rq[k, rows] += scale * (q_tile[:, :hi] * from_c).sum(1)
        grad_rc[k, cols] += scale * (c_tile[:, :hi] * from_q).sum(1)
    # ∂L/∂t = s·Σ g ∘ raw ∘ r(q) r(c)ᵀ = Σ_k Σ_i ∂L/∂r_k(q_i) · r_k(q_i).
    grad_log_scale = (grad_rq * rq).sum()
    return grad_q.to(q.dtype), grad_c.to(c.dtype), grad_rq, grad_rc, grad_log_scale.to(log_scale.dtype).reshape(log_scale.shape)


# ----------------------------------------------------------------------------------------------
# Op registration: autograd, fake tensors and torch.compile see one opaque op per direction.
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("omnikern::masked_cosine_lse_fwd", mutates_args=())
def _lse_fwd_op(
    q: torch.Tensor,
    c: torch.Tensor,
    rq: torch.Tensor,
    rc: torch.Tensor,
    log_scale: torch.Tensor,
    corr: torch.Tensor,
    row_pos_ids: torch.Tensor,
    row_q_ids: torch.Tensor,
    col_ids: torch.Tensor,
    col_q_ids: torch.Tensor,
    bounds: list[int],
    use_qmask: bool,
    use_triton: bool,
) -> torch.Tensor:
    """lse (P, B): per prefix, log Σ_j exp(s·cos_k(q_i, c_j) − corr_j) over unmasked candidates."""
    args = (q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask)
    if use_triton:
        return _lse_fwd_triton(*args)
    with torch.no_grad():
        return _lse_fwd_torch(*args)


@_lse_fwd_op.register_fake
def _(q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask, use_triton):
    return q.new_empty((len(bounds) - 1, q.shape[0]), dtype=rq.dtype)


@torch.library.custom_op("omnikern::masked_cosine_lse_bwd", mutates_args=())
def _lse_bwd_op(
    grad_lse: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    c: torch.Tensor,
    rq: torch.Tensor,
    rc: torch.Tensor,
    log_scale: torch.Tensor,
    corr: torch.Tensor,
    row_pos_ids: torch.Tensor,
    row_q_ids: torch.Tensor,
    col_ids: torch.Tensor,
    col_q_ids: torch.Tensor,
    bounds: list[int],
    use_qmask: bool,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dc, drq, drc, dlog_scale) from the upstream gradient of lse, logits recomputed."""
    args = (grad_lse, lse, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask)
    if use_triton:
        return _lse_bwd_triton(*args)
    with torch.no_grad():
        return _lse_bwd_torch(*args)


@_lse_bwd_op.register_fake
def _(grad_lse, lse, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask, use_triton):
    # Contiguous, whatever the inputs' layout, as both implementations return.
    return q.new_empty(q.shape), c.new_empty(c.shape), rq.new_empty(rq.shape), rc.new_empty(rc.shape), log_scale.new_empty(log_scale.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids, bounds, use_qmask, use_triton = inputs
    ctx.save_for_backward(output, q, c, rq, rc, log_scale, corr, row_pos_ids, row_q_ids, col_ids, col_q_ids)
    ctx.bounds = bounds
    ctx.use_qmask = use_qmask
    ctx.use_triton = use_triton


def _backward(ctx, grad_lse: torch.Tensor):
    lse, *saved = ctx.saved_tensors
    grad_q, grad_c, grad_rq, grad_rc, grad_log_scale = _lse_bwd_op(
        grad_lse, lse, *saved, ctx.bounds, ctx.use_qmask, ctx.use_triton
    )
    # corr (logQ) and the ids are constants of the step: no gradient.
    return grad_q, grad_c, grad_rq, grad_rc, grad_log_scale, None, None, None, None, None, None, None, None


_lse_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class SampledSoftmaxLossOutput:
    """What :func:`sampled_softmax_loss` and :class:`omnikern.SampledSoftmaxLoss` return with
    ``return_components=True`` (without it, both return ``total`` alone).

    Attributes:
        total: scalar, ``Σ_dim dim_weight · Σ_term components[f"{term}@{dim}"]``; differentiable.
        components: per logit matrix (``term`` in ``in_batch | random | mixed_concat``) and prefix
            ``dim``, the (weighted) mean cross-entropy before the dim weight; differentiable.
        dims: the prefix dims used, ascending; ``dim_weights`` their weights.
        temperature, scale: the module's ``1 / scale`` and ``scale = exp(t)`` after its clamp
            (detached scalars; None from the functional, whose ``log_scale`` is the caller's).
        unmasked_negatives: per term, the mean number of negative columns per row that survive
            the id masks (detached); filled by the module only with ``count_unmasked=True``.
    """

    total: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    dims: list[int] = field(default_factory=list)
    dim_weights: list[float] = field(default_factory=list)
    temperature: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    unmasked_negatives: dict[str, torch.Tensor] = field(default_factory=dict)


def resolve_prefixes(
    dims: Sequence[int] | None, dim_weights: Sequence[float] | None, embed_dim: int
) -> tuple[list[int], list[float]]:
    """The Matryoshka prefixes to use: ``(dims ascending, weights)``, dims above ``embed_dim`` dropped.

    ``dims=None`` means the published set ``{16, 32, 64, 128, 256, 512}``; ``dim_weights=None`` gives
    each dim its published weight (1.0 for dims outside that set).

    Raises:
        ValueError: bad or duplicated dims, mismatched ``dim_weights``, or no dim ≤ ``embed_dim``.
    """
    if dims is None:
        dims = list(DEFAULT_DIM_WEIGHTS)
    dims = list(dims)
    if dim_weights is None:
        dim_weights = [DEFAULT_DIM_WEIGHTS.get(d, 1.0) for d in dims]
    dim_weights = list(dim_weights)
    if len(dim_weights) != len(dims):
        raise ValueError(f"dim_weights must have one weight per dim, got {len(dim_weights)} weights for dims {dims}")
    for d in dims:
        check_int("dims", d, 1)
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims must not repeat, got {dims}")
    for w in dim_weights:
        if not (isinstance(w, (int, float)) and math.isfinite(w)):
            raise ValueError(f"dim_weights must be finite numbers, got {dim_weights}")
    pairs = sorted((d, float(w)) for d, w in zip(dims, dim_weights) if d <= embed_dim)
    if not pairs:
        raise ValueError(f"dims has no prefix dim <= the embedding dim {embed_dim}, got dims {dims}")
    if len(pairs) > MAX_PREFIXES:
        raise ValueError(f"dims may hold at most {MAX_PREFIXES} prefixes <= {embed_dim}, got {len(pairs)}")
    return [d for d, _ in pairs], [w for _, w in pairs]


def _check_embeddings(name: str, x, query: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
    if query is not None:
        if x.device != query.device:
            raise ValueError(f"{name} must be on query's device {query.device}, got {x.device}")
        if x.dtype != query.dtype:
            raise TypeError(f"{name} must have query's dtype {query.dtype}, got {x.dtype}")
        if x.shape[1] != query.shape[1]:
            raise ValueError(f"query and {name} must have the same embedding dim, got {query.shape[1]} and {x.shape[1]}")


def _check_vector(name: str, x, rows: int, query: torch.Tensor, *, ids: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ids and x.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {x.dtype}")
    if not ids and x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},) to match its embeddings, got {tuple(x.shape)}")
    if x.device != query.device:
        raise ValueError(f"{name} must be on query's device {query.device}, got {x.device}")


def _inverse_prefix_norms(x: torch.Tensor, dims: list[int], compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(norms, 1 / max(norms, eps)), both (P, rows): the F.normalize of every prefix, differentiable."""
    x = x.to(compute)
    norms = torch.stack([torch.linalg.vector_norm(x[:, :d], dim=-1) for d in dims])
    return norms, 1.0 / norms.clamp_min(NORM_EPS)


def sampled_softmax_loss(
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
    dims: Sequence[int] | None = None,
    dim_weights: Sequence[float] | None = None,
    impl: str = "auto",
    return_components: bool = False,
) -> torch.Tensor | SampledSoftmaxLossOutput:
    """Returns the sampled-softmax loss (a scalar), or a :class:`SampledSoftmaxLossOutput`.

    Equals ``omnikern.ops.reference.sampled_softmax_loss_ref`` with the same arguments, without
    materialising any (rows × candidates) logit matrix. The frequency corrections are inputs here
    (``SampledSoftmaxLoss`` computes them from count-min sketches); ``log_scale`` is used as given
    (the module clamps its parameter in place before calling).

    Args:
        query, pos: (B, D) float16/bfloat16/float32/float64; row i is a (query, positive) pair.
        neg: (R, D) random negatives for ``random``, ``mixed_sum`` and ``mixed_concat``; None means
            R = 0 (the random softmax then holds only the positive and contributes 0).
        log_scale: scalar tensor ``t``; logits are scaled by ``exp(t)``. Gets a gradient.
        query_ids, pos_ids: (B,) int64. neg_ids: (R,) int64, needed with ``neg``.
        weights: optional (B,) per-row weights; the loss is ``Σ w_i ℓ_i / max(Σ|w|, 1e-12)``.
        neg_mode: ``in_batch | random | mixed_sum | mixed_concat``.
        candidates, candidate_ids, candidate_query_ids: the in-batch negatives (M, D), (M,), (M,);
            default ``pos, pos_ids, query_ids`` (give them for a cap on in-batch negatives or for
            positives gathered from other ranks).
        pos_logq (B,), candidate_logq (M,), neg_logq (R,): subtracted from the positive / candidate
            logits after scaling (None: no correction).
        dims, dim_weights: Matryoshka prefixes (see :func:`resolve_prefixes`).
        impl: ``"auto"`` (Triton on CUDA or under the interpreter, else the chunked torch path),
            ``"triton"`` or ``"torch"``. float64 always uses torch.
        return_components: return a :class:`SampledSoftmaxLossOutput` instead of the scalar.

    Raises:
        TypeError: a non-tensor, a non-floating embedding, non-int64 ids, mismatched dtypes.
        ValueError: mismatched shapes or devices, an empty batch, a missing ``neg``, bad options.
    """
    _check_embeddings("query", query, None)
    _check_embeddings("pos", pos, query)
    B, D = query.shape
    if B == 0:
        raise ValueError("query must hold at least one row, got an empty batch (shape (0, D))")
    if pos.shape[0] != B:
        raise ValueError(f"query and pos must have the same number of rows, got {B} and {pos.shape[0]}")
    if neg_mode not in NEG_MODES:
        raise ValueError(f"neg_mode must be one of {NEG_MODES}, got {neg_mode!r}")
    _check_vector("query_ids", query_ids, B, query, ids=True)
    _check_vector("pos_ids", pos_ids, B, query, ids=True)
    uses_random = neg_mode != "in_batch"
    uses_in_batch = neg_mode != "random"
    if neg is None and neg_ids is not None:
        raise ValueError("neg_ids needs neg, got neg=None")
    if neg is not None:
        _check_embeddings("neg", neg, query)
        if neg_ids is None:
            raise ValueError("neg_ids is required with neg, got None")
        _check_vector("neg_ids", neg_ids, neg.shape[0], query, ids=True)
    if candidates is None:
        if candidate_ids is not None or candidate_query_ids is not None:
            raise ValueError("candidate_ids and candidate_query_ids need candidates, got candidates=None")
        candidates, candidate_ids, candidate_query_ids = pos, pos_ids, query_ids
    else:
        _check_embeddings("candidates", candidates, query)
        if candidate_ids is None or candidate_query_ids is None:
            raise ValueError("candidates needs candidate_ids and candidate_query_ids, got None")
        _check_vector("candidate_ids", candidate_ids, candidates.shape[0], query, ids=True)
        _check_vector("candidate_query_ids", candidate_query_ids, candidates.shape[0], query, ids=True)
    if weights is not None:
        _check_vector("weights", weights, B, query, ids=False)
    for name, logq, rows in (
        ("pos_logq", pos_logq, B),
        ("candidate_logq", candidate_logq, candidates.shape[0]),
        ("neg_logq", neg_logq, None if neg is None else neg.shape[0]),
    ):
        if logq is not None:
            if rows is None:
                raise ValueError(f"{name} needs neg, got neg=None")
            _check_vector(name, logq, rows, query, ids=False)
    if uses_random and neg is None:
        # No random negatives: the random softmax has only the positive column (its loss is 0).
        neg = query.new_empty((0, D))
        neg_ids = query_ids.new_empty((0,))
    if not isinstance(log_scale, torch.Tensor) or log_scale.numel() != 1 or log_scale.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"log_scale must be a floating tensor with one element, got {log_scale!r}")
    if log_scale.device != query.device:
        raise ValueError(f"log_scale must be on query's device {query.device}, got {log_scale.device}")
    dims, dim_weights = resolve_prefixes(dims, dim_weights, D)

    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    tensors = [query, pos, candidates] + ([neg] if neg is not None else [])
    use_triton = _triton.resolve_impl(impl, *tensors) == "triton" and compute == torch.float32
    bounds = [0, *dims]
    log_scale = log_scale.reshape(())

    norms_q, inv_q = _inverse_prefix_norms(query, dims, compute)
    norms_p, inv_p = _inverse_prefix_norms(pos, dims, compute)
    # Positive logits (P, B), one prefix sum each: O(B·Σd_k), negligible beside the candidates.
    products = query.to(compute) * pos.to(compute)
    raw_pos = torch.stack([products[:, :d].sum(-1) for d in dims])
    # The positive logits take their own copy of the query's inverse norms: when one tensor fed both
    # this product and the lse op, torch 2.13's inductor CPU backend returned a wrong query
    # gradient for two or more prefixes (aot_eager was right); see test_torch_compile_fullgraph.
    _, inv_q_pos = _inverse_prefix_norms(query, dims, compute)
    l_pos = log_scale.to(compute).exp() * raw_pos * inv_q_pos * inv_p
    if pos_logq is not None:
        l_pos = l_pos - pos_logq.to(compute)[None, :]
    guard = norms_q.sum() + norms_p.sum()

    def lse_over(c, c_ids, c_query_ids, logq, use_qmask):
        nonlocal guard
        norms_c, inv_c = _inverse_prefix_norms(c, dims, compute)
        guard = guard + norms_c.sum()
        corr = torch.zeros(c.shape[0], dtype=compute, device=c.device) if logq is None else logq.detach().to(compute)
        return _lse_fwd_op(
            query.contiguous(), c.contiguous(), inv_q, inv_c, log_scale, corr.contiguous(),
            pos_ids.contiguous(), query_ids.contiguous(), c_ids.contiguous(), c_query_ids.contiguous(),
            bounds, use_qmask, use_triton,
        )  # fmt: skip

    sets: dict[str, torch.Tensor] = {}
    if uses_in_batch:
        sets["in_batch"] = lse_over(candidates, candidate_ids, candidate_query_ids, candidate_logq, True)
    if uses_random:
        # Random negatives are masked by the positive id only; the query-id rule is for in-batch ones.
        sets["random"] = lse_over(neg, neg_ids, neg_ids, neg_logq, False)
    if neg_mode == "mixed_concat":
        # One softmax over [pos | in-batch | random]: the two negative sums add up.
        sets = {"mixed_concat": torch.logaddexp(sets["in_batch"], sets["random"])}

    if weights is None:
        row_weights = torch.full((B,), 1.0 / B, dtype=compute, device=query.device)
    else:
        w = weights.to(compute)
        row_weights = w / w.abs().sum().clamp_min(1e-12)
    # NaN or ±inf anywhere in a used prefix makes the loss NaN (0·inf = NaN), as in the reference,
    # whatever the kernel's max/exp did with it; 0·finite adds nothing and no gradient.
    total = (guard * 0.0).to(compute)
    components: dict[str, torch.Tensor] = {}
    for term, lse in sets.items():
        # ℓ = log(exp z⁺ + exp lse) − z⁺, per prefix and row.
        per_row = torch.logaddexp(l_pos, lse) - l_pos
        per_dim = (per_row * row_weights[None, :]).sum(-1)
        for k, (dim, dim_weight) in enumerate(zip(dims, dim_weights)):
            components[f"{term}@{dim}"] = per_dim[k]
            total = total + dim_weight * per_dim[k]
    if return_components:
        return SampledSoftmaxLossOutput(total=total, components=components, dims=dims, dim_weights=dim_weights)
    return total
