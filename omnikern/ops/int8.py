"""Int8 quantisation and int8 scoring with a fused top-k: the k best corpus rows per query.

Maths
-----
Quantisation is symmetric and per row, in float32: ``scale = max|x| / 127``,
``code = clamp(round_half_even(x / scale), -127, 127)``; an all-zero row gets scale 0 and codes 0.
Since every code is in [-127, 127], a dot product over D ≤ 1040 columns is below 2^24 in
magnitude: exact in int32 and in float32.

A search quantises the queries the same way (``qc, sq``) and scores corpus row i by

* full width (``dim=None``): ``s = (float(qc · c_i) · sq) · scale_i``, the dequantised inner
  product (≈ the cosine for unit vectors);
* a Matryoshka prefix (``dim=d``): the query's first d columns are **re-quantised** (their own
  max-abs scale) and ``s = (float(qc[:d] · c_i[:d]) · (1/‖qc[:d]‖)) · (1/‖c_i[:d]‖)``, the cosine of
  the two dequantised prefixes (the scales cancel). A zero prefix gives inverse norm 0, score 0.

The float ops are done in float32 in exactly that order (and ``+ 0.0`` turns ``-0`` into ``+0``) by
the Triton kernel, the C++ path and the torch path, so all three give bit-identical scores.
``omnikern.ops.reference.int8_topk_ref`` computes the same scores in float64.

Order: higher score first, equal scores lower index first. Each (score, index) pair is packed into
one int64 key that sorts the same way: the float's bits mapped to an int32 that orders like the
float (negative floats have their 31 low bits flipped) in the high half, ``2^32 - 1 - index`` in
the low half. Keys are unique, so any top-k of keys is deterministic. Missing slots (k larger than
the candidates) are the smallest int64 and come back as score ``-inf``, index ``-1``.

Tiling (Triton)
---------------
Program (pid_q, pid_s) takes ``BLOCK_Q`` queries and one contiguous split of the corpus. For each
``BLOCK_N``-row tile it accumulates ``tl.dot`` of int8 (BLOCK_Q, BLOCK_D) × (BLOCK_D, BLOCK_N)
into int32 over the columns, applies the factors, packs keys and — only if some key beats its
row's current k-th best — merges the tile into the running list of ``K_PAD`` keys: for k <= 32 by
taking row maxima K_PAD times (cheap reductions), above that by a bitonic ``tl.topk`` of the tile
and then of the two sorted lists joined. The running list never leaves registers;
each program writes ``BLOCK_Q × K_PAD`` keys, and a small torch ``topk`` over the splits' keys
finishes. The Q × N score matrix is never written.

Traffic and roofline: a pass reads N·D bytes of codes plus 4·N of scales; per query block the
work is 2·BLOCK_Q·N·D int8 ops. On an H100 (1,979 dense int8 TOPS, 3.35 TB/s) one pass over
N = 10M, D = 256 takes 0.78 ms and becomes compute-bound above ≈ 295 queries per pass.

CPU
---
Without a GPU the default is the C++ kernel in ``omnikern._C`` (see ``csrc/scoring/int8_topk.cc``):
corpus blocks sized for L1, one thread per corpus chunk, a bounded heap per query filtered by its
current k-th score, and integer dot products picked at run time: AVX-512 VNNI ``vpdpbusd`` on
repacked 16-row blocks, else AVX2 ``vpmaddubsw``/``vpmaddwd`` (sign trick), else portable C++.
All three give identical results for any thread count. The C++ side also quantises the queries,
so a call does no per-query torch work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnikern.ops import _triton

# Shared memory of the bitonic merge (k > _EXTRACT_MAX_K): tl.topk over the joined running list and
# tile top, [BLOCK_Q, 2·K_PAD] int64, is staged through shared memory, BLOCK_Q · 2·K_PAD · 8 B.
# Compiled for sm_90, BLOCK_Q = 64 with K_PAD = 256 (and 32 × 512, 16 × 1024) took 262,144 B, over
# the 232,448 B a block may use on sm_90 (166,912 B on sm_80), so those launches failed on a GPU.
# Budget: BLOCK_Q · K_PAD <= 8192, i.e. 8192 · 2 · 8 = 131,072 B (128 KiB), which fits sm_80 and
# sm_90 with room for the int8 dot operands. tl.dot needs BLOCK_Q >= 16, so K_PAD <= 8192 / 16 = 512.
_SORT_KEYS_PER_BLOCK = 8192
_MIN_BLOCK_Q = 16
# Largest k the Triton kernel takes (K_PAD <= 512, above); larger k use the torch path on a GPU.
MAX_TRITON_K = _SORT_KEYS_PER_BLOCK // _MIN_BLOCK_Q
# Integer dot products are exact in float32 below 2^24 = 127² · 1040.
_MAX_FP32_EXACT_DIM = 1040
_SENTINEL = -(2**63)
# Up to this k the kernel merges by repeated row maxima; above it, by bitonic tl.topk.
_EXTRACT_MAX_K = 32

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


# N, the row count, is not specialised: it only masks rows (constant along the contiguous D
# axis, so vectorisation does not depend on it), and for the query side of a search N is the batch
# size, which would otherwise compile a variant per class (1, multiple of 16, other). D keeps its
# specialisation: it masks the contiguous axis (16 | D gives 16-byte loads); it is fixed per model.
@triton.jit(do_not_specialize=["N"])
def _int8_quantize_kernel(
    # pointers
    x_ptr,
    codes_ptr,
    scales_ptr,
    # sizes
    N,
    D,
    # strides (the last dimension is contiguous)
    stride_xn,
    stride_cn,
    # meta
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """x (N, D) float -> codes (N, D) int8, scales (N,) fp32; one whole row per program row."""
    pid_n = tl.program_id(0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask = mask_n[:, None] & (offs_d[None, :] < D)

    x = tl.load(x_ptr + offs_n[:, None] * stride_xn + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    # Correctly rounded divisions (div_rn), so the codes equal torch's bit for bit.
    scale = tl.div_rn(tl.max(tl.abs(x), axis=1), 127.0)
    safe = tl.where(scale > 0, scale, 1.0)
    v = tl.div_rn(x, safe[:, None])
    # Round half to even: for |v| < 2^22, v + 1.5·2^23 lies where the float spacing is exactly 1,
    # so the addition itself rounds v to the nearest integer, ties to even.
    r = (v + 12582912.0) - 12582912.0
    r = tl.minimum(tl.maximum(r, -127.0), 127.0)
    r = tl.where(scale[:, None] > 0, r, 0.0)
    tl.store(codes_ptr + offs_n[:, None] * stride_cn + offs_d[None, :], r.to(tl.int8), mask=mask)
    tl.store(scales_ptr + offs_n, scale, mask=mask_n)


@triton.jit
def _int8_dot_tile(acc, sumsq, q_ptr, x_ptr, offs_q, offs_n, mask_q, mask_n, d0, DIM, stride_qq, stride_xn,
                   NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    """acc (BLOCK_Q, BLOCK_N) += q[offs_q, d0:d0+BLOCK_D] @ x[offs_n, d0:d0+BLOCK_D]ᵀ (int32), and with
    NORMALIZE sumsq (BLOCK_N,) += the rows' squared codes over the same columns; columns >= DIM as 0."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    q = tl.load(q_ptr + offs_q[:, None] * stride_qq + offs_d[None, :], mask=mask_q[:, None] & mask_d[None, :], other=0)
    x = tl.load(x_ptr + offs_n[None, :] * stride_xn + offs_d[:, None], mask=mask_d[:, None] & mask_n[None, :], other=0)
    # int8 × int8 -> int32 on tensor cores; exact.
    acc = tl.dot(q, x, acc, out_dtype=tl.int32)
    if NORMALIZE:
        xi = x.to(tl.int32)
        sumsq += tl.sum(xi * xi, axis=0)
    return acc, sumsq


# Integer specialisation, per argument:
# - Q (queries) and N (corpus rows) are not specialised. Q masks query rows and N only caps the
#   last split's end; both masks are constant along the contiguous D axis of the code tiles, so
#   their divisibility never enabled wider loads (it would only for the 4-byte per-row factors and
#   excludes, against D bytes of codes per row). Specialised, a server would compile a new variant
#   when a batch of 1 query (Q == 1) or of a size that is not a multiple of 16 first arrives.
# - DIM stays specialised: it masks the contiguous axis of the int8 loads (16 | DIM gives 16-byte
#   vectors) and is fixed per index (one class).
# - rows_per_split stays: the launcher makes it a multiple of BLOCK_N (>= 128), so it is always in
#   the same class and tells the compiler that every split starts aligned.
# - The strides stay (row alignment); the launcher pads the output's query axis to a multiple of
#   BLOCK_Q so that stride_os = Q_pad·K_PAD does not change class with Q.
@triton.jit(do_not_specialize=["Q", "N"])
def _int8_topk_kernel(
    # pointers
    q_ptr,  # (Q, >= DIM) int8 query codes
    qf_ptr,  # (Q,) fp32 query factors
    x_ptr,  # (N, >= DIM) int8 corpus codes
    xf_ptr,  # (N,) fp32 row factors (unused when NORMALIZE)
    excl_ptr,  # (Q,) int64 row to skip per query (unused unless HAS_EXCLUDE)
    out_ptr,  # (S, Q, K_PAD) int64 keys
    # sizes
    Q,
    N,
    DIM,
    rows_per_split,
    # strides (the last dimension is contiguous)
    stride_qq,
    stride_xn,
    stride_os,
    stride_oq,
    # meta
    NORMALIZE: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
    EXTRACT: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Top K_PAD keys per query over rows [pid_s·rows_per_split, +rows_per_split); see the module
    docstring for the key layout."""
    pid_q = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < Q
    qf = tl.load(qf_ptr + offs_q, mask=mask_q, other=0.0)
    if HAS_EXCLUDE:
        excl = tl.load(excl_ptr + offs_q, mask=mask_q, other=-1)
    row_start = pid_s * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, N)

    # The smallest int64: below every real key (a real key's high half is never -2^31).
    neg_k = tl.full([BLOCK_Q, K_PAD], -9223372036854775807, tl.int64) - 1
    neg = tl.full([BLOCK_Q, BLOCK_N], -9223372036854775807, tl.int64) - 1
    offs_k = tl.arange(0, K_PAD)
    best = neg_k
    # This split's rows are runtime bounds, not range() bounds for the interpreter (see _triton): a
    # while loop. So is the loop over DIM when interpreting; compiled, that innermost loop (it feeds
    # tl.dot) stays a for loop, which the compiler can pipeline.
    n0 = row_start
    while n0 < row_end:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < row_end
        acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.int32)
        sumsq = tl.zeros([BLOCK_N], dtype=tl.int32)
        if INTERPRET:
            d0 = 0
            while d0 < DIM:
                acc, sumsq = _int8_dot_tile(acc, sumsq, q_ptr, x_ptr, offs_q, offs_n, mask_q, mask_n, d0, DIM,
                                            stride_qq, stride_xn, NORMALIZE, BLOCK_D)
                d0 += BLOCK_D
        else:
            for d0 in range(0, DIM, BLOCK_D):
                acc, sumsq = _int8_dot_tile(acc, sumsq, q_ptr, x_ptr, offs_q, offs_n, mask_q, mask_n, d0, DIM,
                                            stride_qq, stride_xn, NORMALIZE, BLOCK_D)
        if NORMALIZE:
            # 1 / ‖c_i[:d]‖ with correctly rounded ops, as the C++ path computes it.
            inv = tl.div_rn(1.0, tl.sqrt_rn(tl.maximum(sumsq, 1).to(tl.float32)))
            xf = tl.where(sumsq > 0, inv, 0.0)
        else:
            xf = tl.load(xf_ptr + offs_n, mask=mask_n, other=0.0)
        # s = (float(dot) · qf) · xf, then + 0 so that -0 becomes +0 (its bits would sort below +0).
        score = acc.to(tl.float32) * qf[:, None] * xf[None, :] + 0.0
        bits = score.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        keys = (ordered.to(tl.int64) << 32) | (4294967295 - offs_n.to(tl.int64))
        valid = mask_q[:, None] & mask_n[None, :]
        if HAS_EXCLUDE:
            valid = valid & (offs_n[None, :] != excl[:, None])
        keys = tl.where(valid, keys, neg)
        # Most tiles hold nothing better than the current k-th best of any row: skip the merge.
        kth = tl.min(best, axis=1)
        if tl.max((keys > kth[:, None]).to(tl.int32)) > 0:
            if EXTRACT:
                # Small k: pull the K_PAD largest keys of (running list ∪ tile) one at a time with
                # row maxima; keys are unique, so each step removes exactly one key per row.
                old = best
                for i in range(K_PAD):
                    top = tl.maximum(tl.max(keys, axis=1), tl.max(old, axis=1))
                    best = tl.where(offs_k[None, :] == i, top[:, None], best)
                    keys = tl.where(keys == top[:, None], neg, keys)
                    old = tl.where(old == top[:, None], neg_k, old)
            else:
                # Large k: bitonic top-k of the tile, then of the two sorted lists side by side.
                tile_top = tl.topk(keys, K_PAD, dim=1)
                both = tl.reshape(tl.join(best, tile_top), [BLOCK_Q, 2 * K_PAD])
                best = tl.topk(both, K_PAD, dim=1)
        n0 += BLOCK_N

    out_ptrs = out_ptr + pid_s * stride_os + offs_q[:, None] * stride_oq + offs_k[None, :]
    tl.store(out_ptrs, best, mask=mask_q[:, None])


# ----------------------------------------------------------------------------------------------
# Launchers and the torch / C++ paths
# ----------------------------------------------------------------------------------------------


def _quantize_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    N, D = x.shape
    codes = torch.empty((N, D), dtype=torch.int8, device=x.device)
    scales = torch.empty(N, dtype=torch.float32, device=x.device)
    if N == 0 or D == 0:
        scales.zero_()
        return codes, scales
    block_d = _triton.next_power_of_2(D)
    block_n = max(1, min(64, 4096 // block_d))
    grid = (triton.cdiv(N, block_n),)
    with _triton.device_guard(x):
        _int8_quantize_kernel[grid](
            x, codes, scales, N, D, x.stride(0), codes.stride(0),
            BLOCK_N=block_n, BLOCK_D=block_d, num_warps=_triton.num_warps_for(block_d),
        )
    return codes, scales


def _quantize_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The same float32 operations as the kernel (torch.round is half-to-even).
    x32 = x.float()
    N, D = x32.shape
    # Divide by a tensor, not the Python float 127: on CUDA torch divides by a scalar as a
    # multiplication by its reciprocal, which is not correctly rounded (seen on an H200: scales one
    # ulp off the kernel and the reference). Tensor by tensor is IEEE division on every device.
    amax = x32.abs().amax(dim=1) if D > 0 else x32.new_zeros(N)
    scales = amax / torch.full_like(amax, 127.0)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(x32 / safe[:, None]).clamp_(-127, 127)
    codes = torch.where((scales > 0)[:, None], codes, torch.zeros_like(codes))
    return codes.to(torch.int8), scales


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (scores float32, indices int64); the sentinel gives (-inf, -1)."""
    valid = keys != _SENTINEL
    high = (keys >> 32).to(torch.int32)
    bits = torch.where(high >= 0, high, high ^ 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    indices = 4294967295 - (keys & 0xFFFFFFFF)
    scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    indices = torch.where(valid, indices, torch.full_like(indices, -1))
    return scores, indices


def _encode_keys(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    bits = scores.contiguous().view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    return (ordered << 32) | (4294967295 - indices)


def _finish(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (Q, M) -> the k best as (scores, indices), padded with (-inf, -1) past M."""
    Q, M = keys.shape
    top = torch.topk(keys, min(k, M), dim=1, sorted=True).values  # keys are unique: deterministic
    if k > M:
        top = torch.cat([top, top.new_full((Q, k - M), _SENTINEL)], dim=1)
    return _decode_keys(top)


def _topk_tiles(Q: int, k_pad: int, dim: int, interpreting: bool) -> tuple[int, int, int, bool]:
    """(BLOCK_Q, BLOCK_N, BLOCK_D, EXTRACT) of the top-k kernel for Q queries and K_PAD <= 512."""
    block_d = min(256 if interpreting else 128, max(32, _triton.next_power_of_2(dim)))
    extract = k_pad <= _EXTRACT_MAX_K
    block_n = max(256 if interpreting else 128, k_pad)
    if interpreting and not extract:
        block_n = k_pad  # the interpreter's bitonic sort costs per element: keep tiles small
    # Keep the running lists (BLOCK_Q × K_PAD int64) and the tile within a register budget; the
    # bitonic merge also within the shared-memory budget (see _SORT_KEYS_PER_BLOCK).
    block_q = max(_MIN_BLOCK_Q, min(64, _triton.next_power_of_2(Q), 16384 // max(k_pad, block_n)))
    if not extract:
        block_q = max(_MIN_BLOCK_Q, min(block_q, _SORT_KEYS_PER_BLOCK // k_pad))
    return block_q, block_n, block_d, extract


def _topk_triton(
    qcodes: torch.Tensor, qfactors: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
    exclude: torch.Tensor | None, k: int, dim: int, normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    Q, N = qcodes.shape[0], codes.shape[0]
    k_pad = _triton.next_power_of_2(min(k, N))
    interpreting = _triton.interpreting()
    block_q, block_n, block_d, extract = _topk_tiles(Q, k_pad, dim, interpreting)
    num_q_blocks = triton.cdiv(Q, block_q)
    n_tiles = triton.cdiv(N, block_n)
    if interpreting:
        splits = min(2, n_tiles)  # two splits exercise the cross-split merge
    else:
        sms = torch.cuda.get_device_properties(codes.device).multi_processor_count
        splits = max(1, min(n_tiles, (4 * sms) // num_q_blocks))
    rows_per_split = triton.cdiv(n_tiles, splits) * block_n
    splits = triton.cdiv(N, rows_per_split)
    # The query axis padded to whole query blocks (a multiple of 16): keys.stride(0) = q_rows·K_PAD
    # is then in one specialisation class for every Q (see _int8_topk_kernel); the padding rows are
    # never written and never read.
    q_rows = num_q_blocks * block_q
    keys = torch.empty((splits, q_rows, k_pad), dtype=torch.int64, device=codes.device)
    has_exclude = exclude is not None
    with _triton.device_guard(codes):
        _int8_topk_kernel[(num_q_blocks, splits)](
            qcodes, qfactors, codes, scales, exclude if has_exclude else qfactors, keys,
            Q, N, dim, rows_per_split,
            qcodes.stride(0), codes.stride(0), keys.stride(0), keys.stride(1),
            NORMALIZE=normalize, HAS_EXCLUDE=has_exclude,
            BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d, K_PAD=k_pad, EXTRACT=extract, INTERPRET=interpreting,
            num_warps=8 if block_q * block_n >= 8192 else 4,
        )
    return _finish(keys[:, :Q].permute(1, 0, 2).reshape(Q, splits * k_pad), k)


def _sqrt_rn(sumsq: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt of int32 values (torch's float32 CPU sqrt is not always):
    the float64 sqrt rounded to float32 is the correctly rounded float32 result (53 >= 2·24 + 2)."""
    return torch.sqrt(sumsq.double()).float()


def _row_factors_torch(codes: torch.Tensor, dim: int, normalize: bool, scales: torch.Tensor) -> torch.Tensor:
    if not normalize:
        return scales
    prefix = codes[:, :dim]
    sumsq = torch.zeros(codes.shape[0], dtype=torch.int32, device=codes.device)
    for start in range(0, codes.shape[0], 65536):  # bounded temporaries
        block = prefix[start : start + 65536].to(torch.int32)
        sumsq[start : start + 65536] = (block * block).sum(dim=1, dtype=torch.int32)
    return torch.where(sumsq > 0, 1.0 / _sqrt_rn(sumsq), torch.zeros(1, device=codes.device))


def _topk_torch(
    qcodes: torch.Tensor, qfactors: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
    exclude: torch.Tensor | None, k: int, dim: int, normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked torch path: float matmul of the codes (exact, see the module docstring), the same
    float32 score formula, and a top-k of packed keys per chunk."""
    Q, N = qcodes.shape[0], codes.shape[0]
    compute = torch.float32 if dim <= _MAX_FP32_EXACT_DIM else torch.float64
    row_factors = _row_factors_torch(codes, dim, normalize, scales)
    q = qcodes[:, :dim].to(compute)
    chunk = max(k, (1 << 22) // max(Q, 1), 1024)
    best = torch.full((Q, 0), _SENTINEL, dtype=torch.int64, device=codes.device)
    for start in range(0, N, chunk):
        x = codes[start : start + chunk, :dim].to(compute)
        dots = (q @ x.T).float()
        scores = dots * qfactors[:, None] * row_factors[None, start : start + chunk] + 0.0
        idx = torch.arange(start, start + x.shape[0], device=codes.device)
        keys = _encode_keys(scores, idx.expand(Q, -1))
        if exclude is not None:
            keys = torch.where(idx[None, :] == exclude[:, None], torch.full_like(keys, _SENTINEL), keys)
        merged = torch.cat([best, keys], dim=1)
        best = torch.topk(merged, min(k, merged.shape[1]), dim=1, sorted=True).values
    return _finish(best, k)


def _topk_cpp(
    query: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
    exclude: torch.Tensor | None, k: int, dim: int, normalize: bool, num_threads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Imported here: the kernels must import without the C++ extension (the sm_90 compile check
    # loads them from a source tree that has no built _C).
    from omnikern import _C

    # The C++ side quantises the query itself (same float32 ops), checks it is finite and releases
    # the GIL: no per-call torch work that would wake torch's thread pool.
    scores, indices = _C.int8_topk(
        query.float().contiguous().numpy(), codes.contiguous().numpy(), None if normalize else scales.numpy(),
        dim, None if exclude is None else exclude.numpy(), k, num_threads,
    )
    return torch.from_numpy(scores), torch.from_numpy(indices)


def _query_codes(query: torch.Tensor, dim: int, normalize: bool, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (Q, dim) of the query prefix and the per-query factor: its scale, or 1/‖codes‖."""
    qcodes, qscales = _quantize_int8_op(query[:, :dim].contiguous(), use_triton)
    if not normalize:
        return qcodes, qscales
    sumsq = (qcodes.to(torch.int32) ** 2).sum(dim=1, dtype=torch.int32)
    inv = 1.0 / _sqrt_rn(sumsq.clamp_min(1))
    return qcodes, torch.where(sumsq > 0, inv, torch.zeros_like(inv))


# ----------------------------------------------------------------------------------------------
# Op registration: torch.compile and fake tensors see one opaque op per function.
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("omnikern::quantize_int8", mutates_args=())
def _quantize_int8_op(x: torch.Tensor, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton:
        return _quantize_triton(x)
    return _quantize_torch(x)


@_quantize_int8_op.register_fake
def _(x: torch.Tensor, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(x.shape, dtype=torch.int8, device=x.device), x.new_empty(x.shape[:1], dtype=torch.float32)


@torch.library.custom_op("omnikern::int8_topk", mutates_args=())
def _int8_topk_op(
    query: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, exclude: torch.Tensor | None,
    k: int, dim: int, normalize: bool, impl: str, num_threads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "cpp":
        return _topk_cpp(query, codes, scales, exclude, k, dim, normalize, num_threads)
    qcodes, qfactors = _query_codes(query, dim, normalize, use_triton=impl == "triton")
    if impl == "triton":
        return _topk_triton(qcodes, qfactors, codes, scales, exclude, k, dim, normalize)
    return _topk_torch(qcodes, qfactors, codes, scales, exclude, k, dim, normalize)


@_int8_topk_op.register_fake
def _(query, codes, scales, exclude, k, dim, normalize, impl, num_threads):
    Q = query.shape[0]
    return query.new_empty((Q, k), dtype=torch.float32), query.new_empty((Q, k), dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def quantize_int8(x: torch.Tensor, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(codes int8 (N, D), scales float32 (N,))``: symmetric per-row int8 codes of ``x``.

    Equals ``omnikern.ops.reference.quantize_int8_ref(x)`` bit for bit: in float32,
    ``scale = max|x| / 127`` and ``codes = clamp(round_half_even(x / scale), -127, 127)``; an
    all-zero row gets scale 0 and codes 0. ``dequantize_int8(codes, scales) ≈ x``.

    Args:
        x: (N, D) floating tensor (fp16, bf16, fp32, fp64; computed in fp32), finite.
        impl: ``"auto"`` (Triton kernel on CUDA or under the interpreter, else torch),
            ``"triton"`` or ``"torch"``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``x`` is not 2-D or holds NaN/inf; bad ``impl``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite, got NaN or inf")
    use_triton = _triton.resolve_impl(impl, x) == "triton" and x.shape[1] <= _triton.MAX_FUSED_BLOCK
    return _quantize_int8_op(x.contiguous(), use_triton)


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Returns ``codes * scales[:, None]`` as float32 (N, D): the inverse of :func:`quantize_int8`.

    Raises:
        TypeError: ``codes`` is not int8 or ``scales`` not float32.
        ValueError: shapes do not match.
    """
    _check_codes(codes, scales)
    return codes.float() * scales.unsqueeze(1)


def _check_codes(codes: torch.Tensor, scales: torch.Tensor) -> None:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int8:
        raise TypeError(f"codes must be an int8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError(f"scales must be a float32 tensor, got {getattr(scales, 'dtype', type(scales).__name__)}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (N, D), got shape {tuple(codes.shape)}")
    if scales.shape != codes.shape[:1]:
        raise ValueError(f"scales must have shape ({codes.shape[0]},) to match codes, got {tuple(scales.shape)}")


def _resolve_topk_impl(impl: str, k: int, *tensors: torch.Tensor) -> str:
    _triton.check_impl(impl, ("auto", "triton", "torch", "cpp"))
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    if impl == "auto":
        if _triton.kernel_supported(*tensors) and k <= MAX_TRITON_K:
            return "triton"
        return "cpp" if on_cpu else "torch"
    if impl == "triton":
        _triton.resolve_impl("triton", *tensors)  # raises where no kernel can run
        if k > MAX_TRITON_K:
            raise ValueError(f"k must be <= {MAX_TRITON_K} with impl='triton', got {k}; use impl='torch' or 'cpp'")
    if impl == "cpp" and not on_cpu:
        raise ValueError("impl='cpp' needs CPU tensors, got tensors on " + str(sorted({str(t.device) for t in tensors})))
    return impl


def int8_topk(
    query: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    k: int,
    dim: int | None = None,
    exclude: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(scores float32 (Q, k), indices int64 (Q, k))``: the k best rows of ``codes`` per query.

    Equals ``omnikern.ops.reference.int8_topk_ref(query, codes, scales, k, dim, exclude)`` up to
    float32 rounding of the scores (rows whose float64 scores differ by less than ~1e-6 may swap).
    The queries are quantised on the fly with :func:`quantize_int8`. Scores:

    * ``dim=None``: ``sq · scale_i · (qc · c_i)``, the dequantised inner product;
    * ``dim=d`` (Matryoshka prefix, ``1 <= d <= D``): the query's first d columns are re-quantised
      with their own scale, and the score is the cosine of the dequantised prefixes,
      ``(qc[:d] · c_i[:d]) / (‖qc[:d]‖ · ‖c_i[:d]‖)`` (0 for a zero prefix). ``scales`` is unused.

    Order: higher score first, equal scores lower index first. Slots beyond the number of
    candidates (``k > N``, or fewer after ``exclude``) hold score ``-inf`` and index ``-1``.

    Args:
        query: (Q, D) floating tensor, finite; with ``dim`` it may also be (Q, dim).
        codes: (N, D) int8 corpus codes from :func:`quantize_int8` (N >= 1).
        scales: (N,) float32 row scales.
        k: number of results per query, >= 1 (any size; the Triton kernel takes k <= 512, its
            shared-memory budget on sm_80/sm_90; "auto" uses the torch path above that).
        dim: search the first ``dim`` columns only (see above), or None for all D.
        exclude: (Q,) int64, a row index to leave out per query (e.g. the query's own item), or a
            negative value for none; or None.
        impl: ``"auto"`` (Triton on CUDA or under the interpreter; the C++ kernel on CPU
            otherwise), ``"triton"``, ``"cpp"`` (CPU: AVX-512 VNNI, AVX2 or portable C++, chosen
            at run time; ``omnikern._C.int8_best_isa()`` says which) or ``"torch"`` (chunked
            matmul, any device).
        num_threads: threads for ``"cpp"`` (None: ``torch.get_num_threads()``).

    Raises:
        TypeError: wrong dtypes of ``query``, ``codes``, ``scales`` or ``exclude``; ``k`` or
            ``dim`` not an int.
        ValueError: shape mismatches, ``k <= 0``, ``dim`` out of range, NaN/inf in ``query``, an
            empty corpus, ``exclude`` out of range, bad ``impl``.
    """
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"query must be a torch.Tensor, got {type(query).__name__}")
    if query.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"query must be float16, bfloat16, float32 or float64, got {query.dtype}")
    _check_codes(codes, scales)
    if query.dim() != 2:
        raise ValueError(f"query must be 2-D (Q, D), got shape {tuple(query.shape)}")
    N, D = codes.shape
    if N == 0:
        raise ValueError("codes must hold at least one row, got an empty corpus")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
        if not 1 <= dim <= D:
            raise ValueError(f"dim must be in [1, {D}] for codes of width {D}, got {dim}")
    d = D if dim is None else dim
    if query.shape[1] not in (D, d):
        raise ValueError(f"query and codes must have the same embedding dim, got {query.shape[1]} and {D}")
    if query.device != codes.device or scales.device != codes.device:
        raise ValueError(f"query, codes and scales must be on one device, got {query.device}, {codes.device}, {scales.device}")
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.int64:
            raise TypeError(f"exclude must be an int64 tensor or None, got {getattr(exclude, 'dtype', type(exclude).__name__)}")
        if exclude.shape != (query.shape[0],):
            raise ValueError(f"exclude must have shape ({query.shape[0]},), one entry per query, got {tuple(exclude.shape)}")
        if exclude.numel() and int(exclude.max()) >= N:
            raise ValueError(f"exclude entries must be < {N} (the number of rows), got {int(exclude.max())}")
        exclude = exclude.to(codes.device).contiguous()
    if num_threads is None:
        num_threads = torch.get_num_threads()
    resolved = _resolve_topk_impl(impl, k, query, codes, scales)
    # The C++ path checks finiteness itself while quantising (see _topk_cpp).
    if resolved != "cpp" and not bool(torch.isfinite(query).all()):
        raise ValueError("query must be finite, got NaN or inf")

    Q = query.shape[0]
    if Q == 0:
        return query.new_empty((0, k), dtype=torch.float32), query.new_empty((0, k), dtype=torch.int64)
    codes = codes if codes.stride(1) == 1 else codes.contiguous()
    return _int8_topk_op(query, codes, scales.contiguous(), exclude, k, d, dim is not None, resolved, int(num_threads))
