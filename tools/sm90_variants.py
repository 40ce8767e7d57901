"""The kernel variants that the sm_90 compile check compiles: those the tests, the bench and users reach.

Each variant calls a public omnikern function (``impl="triton"``, with a backward pass where the
op has one) on small CPU tensors. ``sm90_compile_check.py`` intercepts every launch, so each
kernel gets the constexprs, num_warps and integer specialisation that its real wrapper picks.

What makes two launches different kernels, read from the wrappers in ``omnikern/ops``:

* l2norm, quantize: BLOCK_D = next_pow2(D), which also sets BLOCK_B and num_warps; the dtype.
* int8_topk: K_PAD = next_pow2(min(k, N)), EXTRACT (K_PAD <= 32), BLOCK_N = max(128, K_PAD),
  BLOCK_Q (from next_pow2(Q) and K_PAD), BLOCK_D (from dim), NORMALIZE (dim given), HAS_EXCLUDE;
  the query dtype reaches the quantize kernel.
* loss: the dtype, NUM_P (prefixes <= D), P_PAD, USE_QMASK (in-batch vs random negatives),
  BLOCK_DO = clamp(next_pow2(D), 64, 256); the backward compiles A_IS_QUERY True and False.
* sketch: the count dtype; depth == 1.
* every integer argument (sizes, strides) is specialised as == 1, a multiple of 16, or neither.

Sizes are scaled down where that changes none of these. :func:`_rows` keeps a row count's residue
mod 16, so its specialisation stays the same, and it never goes below k. So B = N = 65,536
compiles the same kernels as B = N = 4,096.

Labels say where a variant comes from: ``tests`` (the parametrisations in python_tests/,
transcribed; on a GPU they run with the interpreter off), ``bench`` (bench/cases_*.py and the
issue-13 GPU goals), ``grid`` (the k, Q, D, dtype and prefix-count values a user can reach).
``quick`` marks the CI set. It holds every bench kernel, the test kernels that are cheap to
compile, and the grid's boundaries. ``--full`` compiles everything (an hour or more on 2 cores,
mostly for the fp32 loss backward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from omnikern.ops import int8_topk, l2_normalize, quantize_int8, sampled_softmax_loss
from omnikern.ops.sketch import count_min_query, count_min_update_

# The published Matryoshka set (omnikern.ops.reference.DEFAULT_DIM_WEIGHTS), used by dims=None.
PUBLISHED = [16, 32, 64, 128, 256, 512]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass(frozen=True)
class Variant:
    label: str
    quick: bool
    run: Callable[[], object]


def _rows(n: int) -> int:
    """A row count with n's specialisation class (== 1, a multiple of 16, neither), at most ~4k."""
    return n if n <= 4096 else 4096 + n % 16


# ----------------------------------------------------------------------------------------------
# One call per op
# ----------------------------------------------------------------------------------------------


def _l2norm(B: int, D: int, dtype: str) -> Callable[[], object]:
    def run():
        x = torch.randn(_rows(B), D, dtype=DTYPES[dtype], requires_grad=True)
        l2_normalize(x, impl="triton").sum().backward()

    return run


def _quantize(N: int, D: int, dtype: str) -> Callable[[], object]:
    return lambda: quantize_int8(torch.randn(_rows(N), D, dtype=DTYPES[dtype]), impl="triton")


def _topk(Q: int, N: int, D: int, k: int, dim: int | None = None, exclude: bool = False, dtype: str = "fp32"):
    def run():
        query = torch.randn(_rows(Q), D, dtype=DTYPES[dtype])
        codes = torch.zeros(max(_rows(N), min(N, k)), D, dtype=torch.int8)
        excl = torch.zeros(query.shape[0], dtype=torch.int64) if exclude else None
        int8_topk(query, codes, torch.ones(codes.shape[0]), k, dim, excl, impl="triton")

    return run


def _loss(B: int, R: int, D: int, dims: list[int] | None, dtype: str, neg_mode: str = "in_batch"):
    def run():
        B_, R_ = _rows(B), _rows(R)
        q, p = (torch.randn(B_, D, dtype=DTYPES[dtype], requires_grad=True) for _ in range(2))
        neg = torch.randn(R_, D, dtype=DTYPES[dtype], requires_grad=True) if neg_mode != "in_batch" else None
        ids = torch.arange(B_)
        out = sampled_softmax_loss(
            q, p, neg, log_scale=torch.zeros((), requires_grad=True), query_ids=ids, pos_ids=ids,
            neg_ids=None if neg is None else torch.arange(R_) + B_, neg_mode=neg_mode, dims=dims, impl="triton",
        )  # fmt: skip
        out.backward()

    return run


def _sketch(n: int, width: int, depth: int, dtype: str) -> Callable[[], object]:
    def run():
        counts = torch.zeros(depth, width, dtype=torch.int64 if dtype == "i64" else torch.int32)
        ids = torch.randint(0, 1 << 40, (_rows(n),))
        multipliers = torch.randint(1, 1 << 62, (depth,)) | 1
        count_min_update_(counts, ids, multipliers, impl="triton")
        count_min_query(counts, ids, multipliers, impl="triton")

    return run


# ----------------------------------------------------------------------------------------------
# The variants
# ----------------------------------------------------------------------------------------------


def _l2norm_variants() -> list[Variant]:
    out = []
    for dtype in ("fp32", "fp16", "bf16"):
        for B, D in ((4, 256), (7, 33), (1, 1), (65, 384)):  # test_ops_l2norm SHAPES
            out.append(Variant(f"tests: l2norm {B}x{D} {dtype}", quick=D in (256, 33), run=_l2norm(B, D, dtype)))
        for B, D in ((65537, 256), (3, 32768), (1000, 1000)):  # test_ops_l2norm, GPU only
            out.append(Variant(f"tests(gpu): l2norm {B}x{D} {dtype}", quick=D == 32768 and dtype != "fp16", run=_l2norm(B, D, dtype)))
    for dtype in ("fp32", "bf16"):
        for B, D in ((4096, 256), (65536, 512), (262144, 256)):  # bench/cases_l2norm.py
            out.append(Variant(f"bench: l2norm {B}x{D} {dtype}", quick=True, run=_l2norm(B, D, dtype)))
    for dtype in ("fp32", "fp16", "bf16"):
        for D in (16, 64, 128, 768, 1024, 2048, 4096, 8192):  # every BLOCK_D and warp count
            out.append(Variant(f"grid: l2norm 4096x{D} {dtype}", quick=dtype == "bf16" and D in (768, 8192), run=_l2norm(4096, D, dtype)))
    return out


def _int8_variants() -> list[Variant]:
    out = []
    # test_ops_int8 TOPK_CASES: (Q, N, D, k, dim, exclude); the tests' queries are fp32.
    for Q, N, D, k, dim, excl in (
        (5, 300, 70, 10, None, True), (3, 257, 33, 1, None, False), (4, 100, 64, 100, 17, True),
        (2, 50, 31, 16, 31, False), (6, 45, 40, 64, None, True), (1, 1, 1, 3, None, False), (70, 100, 16, 32, None, True),
    ):  # fmt: skip
        out.append(Variant(f"tests: int8_topk Q={Q} N={N} D={D} k={k} dim={dim} exclude={excl}", quick=True, run=_topk(Q, N, D, k, dim, excl)))
    out.append(Variant("tests: int8_topk Q=3 N=70 D=40 k=40 exclude", quick=True, run=_topk(3, 70, 40, 40, None, True)))
    out.append(Variant("tests: index search Q=20 N=2000 D=32 k=305", quick=False, run=_topk(20, 2000, 32, 305)))
    for dtype in ("fp32", "fp16", "bf16", "fp64"):  # test_ops_int8 quantize: every float dtype, odd widths
        out.append(Variant(f"tests: quantize_int8 33x70 {dtype}", quick=dtype in ("fp32", "bf16"), run=_quantize(33, 70, dtype)))
    # bench/cases_int8.py and the issue-13 goal: N = 10M, D = 256, k = 10, Q = 1,024 batched and 1 at a time.
    out.append(Variant("bench: quantize_int8 corpus 10M x 256 fp32", quick=True, run=_quantize(10_000_000, 256, "fp32")))
    out.append(Variant("bench: int8_topk N=10M D=256 k=10 Q=1024", quick=True, run=_topk(1024, 10_000_000, 256, 10)))
    out.append(Variant("bench: int8_topk N=10M D=256 k=10 Q=1", quick=True, run=_topk(1, 10_000_000, 256, 10)))
    # grid: every K_PAD the Triton kernel takes (1 … MAX_TRITON_K, both merge strategies) × the
    # BLOCK_Q classes (Q = 1, 16, 32, >= 64); larger k take the torch path.
    for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        for Q in (1, 16, 32, 1024):
            # --quick: the merge-strategy boundary (32 / 64) and the largest k, batched and single.
            quick = k in (32, 64, 128, 256, 512) and Q in (1, 1024)
            out.append(Variant(f"grid: int8_topk k={k} Q={Q} D=256", quick=quick, run=_topk(Q, 1 << 20, 256, k)))
    out.append(Variant("grid: int8_topk k=10 Q=1024 D=256", quick=True, run=_topk(1024, 1 << 20, 256, 10)))
    # BLOCK_D 32 / 64 / 128 through Matryoshka prefixes (NORMALIZE), with and without exclusions, half queries.
    for dim in (16, 64, 128, 512):
        for Q in (1, 1024):
            out.append(Variant(f"grid: int8_topk k=10 Q={Q} D=512 dim={dim}", quick=Q == 1024 and dim in (64, 128), run=_topk(Q, 1 << 20, 512, 10, dim)))
    for D in (64, 128, 384, 768):
        out.append(Variant(f"grid: int8_topk k=10 Q=1024 D={D}", quick=D == 768, run=_topk(1024, 1 << 20, D, 10)))
    for k in (10, 100, 512):
        out.append(Variant(f"grid: int8_topk k={k} Q=1024 D=256 exclude", quick=k == 10, run=_topk(1024, 1 << 20, 256, k, None, True)))
    for dtype in ("fp16", "bf16"):
        out.append(Variant(f"grid: int8_topk k=10 Q=1024 D=256 {dtype} queries", quick=dtype == "bf16", run=_topk(1024, 1 << 20, 256, 10, dtype=dtype)))
    return out


def _loss_variants() -> list[Variant]:
    out = []
    # python_tests/test_ops_loss.py (fp32 unless noted; make_batch B=37, R=45, D=64; check() uses
    # mixed_sum, so both USE_QMASK values). The fp32 backward spills heavily and compiles in 15-50 s
    # per kernel, so --quick takes one fp32 case (below) and these are --full only.
    out.append(Variant("tests: loss B=37 R=45 D=64 published dims mixed_sum fp32", quick=False, run=_loss(37, 45, 64, None, "fp32", "mixed_sum")))
    for D, dims in ((64, [64]), (48, [16, 48]), (40, [8, 24, 40, 512]), (20, None)):
        out.append(Variant(f"tests: loss D={D} dims={dims} mixed_sum fp32", quick=False, run=_loss(37, 45, D, dims, "fp32", "mixed_sum")))
    for dtype in ("fp16", "bf16"):
        out.append(Variant(f"tests: loss B=33 R=40 D=48 published dims mixed_sum {dtype}", quick=False, run=_loss(33, 40, 48, None, dtype, "mixed_sum")))
    for B, R, D in ((1, 1, 16), (1, 7, 33), (65, 9, 17), (64, 64, 32), (3, 0, 16)):
        out.append(Variant(f"tests: loss B={B} R={R} D={D} dims=[{D}] mixed_sum fp32", quick=False, run=_loss(B, R, D, [D], "fp32", "mixed_sum")))
    for dims in ([64, 150], [32, 96, 140, 150]):
        out.append(Variant(f"tests: loss D=150 dims={dims} mixed_sum fp32", quick=False, run=_loss(37, 45, 150, dims, "fp32", "mixed_sum")))
    out.append(Variant("tests: models loss B=13 R=11 D=32 dims=[16, 32] mixed_concat fp32", quick=False, run=_loss(13, 11, 32, [16, 32], "fp32", "mixed_concat")))
    # --quick: one kernel triple per code path the tests take: IEEE fp32 dots with random negatives
    # (USE_QMASK off), fp16 with two prefixes, BLOCK_DO = 64 and 128.
    out.append(Variant("tests: loss B=37 R=45 D=64 dims=[64] random fp32", quick=True, run=_loss(37, 45, 64, [64], "fp32", "random")))
    out.append(Variant("tests: loss B=33 D=48 published dims in_batch fp16", quick=True, run=_loss(33, 0, 48, None, "fp16")))
    out.append(Variant("grid: loss D=128 published dims in_batch bf16", quick=True, run=_loss(4096, 0, 128, None, "bf16")))
    # bench/cases_loss.py on a GPU (bf16, in-batch, dims=[D] and all prefixes) and the issue-13 goals
    # (B = N = 16,384 and 65,536; six prefixes at D = 512).
    for D in (256, 512):
        for dims in ([D], None):
            out.append(Variant(f"bench: loss B=N=16384 D={D} dims={dims or 'published'} in_batch bf16", quick=True, run=_loss(16384, 0, D, dims, "bf16")))
    # grid: dtype × D (BLOCK_DO 64 / 128 / 256, D chunks beyond 256) × one prefix or the published set,
    # random negatives too (USE_QMASK off); up to MAX_PREFIXES = 8 custom prefixes.
    for dtype in ("bf16", "fp16", "fp32"):
        for D in (64, 128, 256, 512, 768, 1024):
            for dims in ([D], None):
                out.append(Variant(f"grid: loss D={D} dims={dims or 'published'} mixed_sum {dtype}", quick=False, run=_loss(4096, 4096, D, dims, dtype, "mixed_sum")))
    eight = [8, 16, 32, 64, 128, 256, 384, 512]
    for dtype in ("bf16", "fp32"):
        out.append(Variant(f"grid: loss D=512 dims={eight} in_batch {dtype}", quick=False, run=_loss(4096, 0, 512, eight, dtype)))
    return out


def _sketch_variants() -> list[Variant]:
    out = []
    for dtype in ("i64", "i32"):
        out.append(Variant(f"tests: sketch n=200 width=97 depth=3 {dtype}", quick=True, run=_sketch(200, 97, 3, dtype)))
        out.append(Variant(f"bench: sketch n=1M width=2^20 depth=2 {dtype}", quick=dtype == "i64", run=_sketch(1 << 20, 1 << 20, 2, dtype)))
        out.append(Variant(f"grid: sketch n=1 width=65536 depth=1 {dtype}", quick=True, run=_sketch(1, 65536, 1, dtype)))
        out.append(Variant(f"grid: sketch n=4097 width=65536 depth=2 {dtype}", quick=False, run=_sketch(4097, 65536, 2, dtype)))
    return out


def variants(mode: str = "quick") -> list[Variant]:
    """The variants of ``mode`` ("quick": the CI set; "full": all), cheapest ops first."""
    every = [*_sketch_variants(), *_l2norm_variants(), *_int8_variants(), *_loss_variants()]
    return every if mode == "full" else [v for v in every if v.quick]
