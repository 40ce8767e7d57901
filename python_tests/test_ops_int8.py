"""int8 quantisation and int8 top-k: Triton kernel (interpreter on CPU), C++ and torch paths
against ``reference.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CUDA, DEVICE
from helpers import assert_topk_matches

from omnikern import _C
from omnikern.ops.int8 import dequantize_int8, int8_topk, quantize_int8
from omnikern.ops.reference import dequantize_int8_ref, int8_topk_ref, quantize_int8_ref

# Paths that can run here: the kernel (GPU, or the interpreter), C++ (CPU only) and torch.
IMPLS = ["triton", "torch"] + ([] if CUDA else ["cpp"])


def _unit(n: int, d: int) -> torch.Tensor:
    x = torch.randn(n, d)
    return x / x.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# quantize_int8
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
# aligned, odd, a single column and a wide row
@pytest.mark.parametrize("shape", [(64, 256), (7, 33), (3, 1), (5, 1000)])
def test_quantize_matches_reference(impl, dtype, shape):
    x = (torch.randn(shape) * 3).to(dtype).to(DEVICE)
    codes, scales = quantize_int8(x, impl=impl)
    want_codes, want_scales = quantize_int8_ref(x.cpu())
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert torch.equal(codes.cpu(), want_codes)
    assert torch.equal(scales.cpu(), want_scales)
    # Dequantisation error is at most half a step per element.
    back = dequantize_int8(codes, scales).cpu()
    assert torch.equal(back, dequantize_int8_ref(want_codes, want_scales))
    assert ((back - x.cpu().float()).abs() <= scales.cpu()[:, None] / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_quantize_rounds_half_to_even_and_clamps(impl):
    """With scale 1 (max 127) the halves must round to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2."""
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, -127.0, 126.5]], device=DEVICE)
    codes, scales = quantize_int8(x, impl=impl)
    assert scales.item() == 1.0
    assert codes.cpu().tolist() == [[127, 0, 2, 2, 0, -2, -127, 126]]
    assert codes.min() >= -127  # never -128


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_quantize_zero_row_has_zero_scale(impl):
    x = torch.randn(4, 9, device=DEVICE)
    x[2] = 0
    codes, scales = quantize_int8(x, impl=impl)
    assert scales[2].item() == 0.0 and (codes[2] == 0).all()
    empty_codes, empty_scales = quantize_int8(torch.zeros(0, 5, device=DEVICE), impl=impl)
    assert empty_codes.shape == (0, 5) and empty_scales.shape == (0,)


def test_quantize_bad_inputs():
    with pytest.raises(TypeError, match="x"):
        quantize_int8(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="x"):
        quantize_int8(torch.ones(3))
    with pytest.raises(ValueError, match="x"):
        quantize_int8(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="impl"):
        quantize_int8(torch.ones(2, 3), impl="cuda")
    with pytest.raises(TypeError, match="codes"):
        dequantize_int8(torch.ones(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="scales"):
        dequantize_int8(torch.ones(2, 3, dtype=torch.int8), torch.ones(3))


# ---------------------------------------------------------------------------------------------
# int8_topk
# ---------------------------------------------------------------------------------------------

# (Q, N, D, k, dim, with_exclude): odd sizes, k = 1, k = N, k > N, prefixes, exclusions.
TOPK_CASES = [
    (5, 300, 70, 10, None, True),
    (3, 257, 33, 1, None, False),
    (4, 100, 64, 100, 17, True),  # k = N, prefix
    (2, 50, 31, 16, 31, False),  # dim = D: the full cosine
    (6, 45, 40, 64, None, True),  # k > N
    (1, 1, 1, 3, None, False),
    (70, 100, 16, 32, None, True),  # two query blocks; k = 32, the largest merged by row maxima
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", TOPK_CASES)
def test_topk_matches_reference(impl, case):
    Q, N, D, k, dim, with_exclude = case
    codes, scales = quantize_int8_ref(_unit(N, D))
    codes, scales = codes.to(DEVICE), scales.to(DEVICE)
    query = _unit(Q, D).to(DEVICE)
    exclude = torch.randint(-1, N, (Q,), device=DEVICE) if with_exclude else None
    scores, indices = int8_topk(query, codes, scales, k, dim, exclude, impl=impl)
    assert_topk_matches(scores, indices, query, codes, scales, k, dim, exclude, name=f"{impl} {case}")


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_exact_ties_go_to_lower_index(impl):
    """Duplicate rows give bit-identical scores: they must come back in increasing index order."""
    base, base_scales = quantize_int8_ref(_unit(9, 24))
    order = torch.randint(0, 9, (120,))
    codes, scales = base[order].to(DEVICE), base_scales[order].to(DEVICE)
    query = _unit(4, 24).to(DEVICE)
    scores, indices = int8_topk(query, codes, scales, 30, impl=impl)
    want_s, want_i = int8_topk_ref(query.cpu(), codes.cpu(), scales.cpu(), 30)
    assert torch.equal(indices.cpu(), want_i)
    for q in range(4):
        for j in range(29):
            if scores[q, j] == scores[q, j + 1]:
                assert indices[q, j] < indices[q, j + 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_zero_rows_and_zero_query(impl):
    """Zero corpus rows score 0; a zero query scores 0 everywhere, so it returns 0, 1, 2, ..."""
    x = _unit(32, 16)
    x[[3, 17, 30]] = 0
    codes, scales = quantize_int8_ref(x)
    codes, scales = codes.to(DEVICE), scales.to(DEVICE)
    query = _unit(3, 16)
    query[1] = 0
    query = query.to(DEVICE)
    for dim in (None, 5):
        scores, indices = int8_topk(query, codes, scales, 32, dim, impl=impl)
        assert_topk_matches(scores, indices, query, codes, scales, 32, dim, name=f"{impl} dim={dim}")
        assert indices[1].cpu().tolist() == list(range(32))
        assert (scores[1] == 0).all()


def test_topk_triton_and_cpp_are_bit_identical():
    """The kernel and the C++ path do the same float32 operations: identical scores and indices."""
    codes, scales = quantize_int8_ref(_unit(500, 40))
    query, exclude = _unit(20, 40), torch.randint(-1, 500, (20,))
    for dim in (None, 13):
        want = int8_topk(query, codes, scales, 10, dim, exclude, impl="cpp")
        got = int8_topk(query.to(DEVICE), codes.to(DEVICE), scales.to(DEVICE), 10, dim, exclude.to(DEVICE), impl="triton")
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1]), dim


def test_topk_triton_large_k_bitonic_path():
    """k > 32 takes the kernel's bitonic tl.topk merge (slow in the interpreter: one case)."""
    codes, scales = quantize_int8_ref(_unit(70, 40))
    codes, scales = codes.to(DEVICE), scales.to(DEVICE)
    query = _unit(3, 40).to(DEVICE)
    exclude = torch.tensor([5, -1, 69], device=DEVICE)
    scores, indices = int8_topk(query, codes, scales, 40, None, exclude, impl="triton")
    assert_topk_matches(scores, indices, query, codes, scales, 40, None, exclude, name="bitonic")


def test_topk_cpp_k_1024_and_thread_counts_and_isas():
    """k = 1024 works; results are identical for any thread count and for AVX2 vs scalar."""
    codes, scales = quantize_int8_ref(_unit(5003, 48))
    query = _unit(7, 48)
    scores, indices = int8_topk(query, codes, scales, 1024, impl="cpp", num_threads=2)
    assert_topk_matches(scores, indices, query, codes, scales, 1024, name="k=1024")
    exclude = np.array([0, -1, 5002, 7, -1, 3, 100], dtype=np.int64)
    args = (query.numpy(), codes.numpy(), scales.numpy(), 48, exclude, 13)
    want = _C.int8_topk(*args, num_threads=1, isa="scalar")
    isas = ["scalar"] + {"scalar": [], "avx2": ["avx2"], "avx512vnni": ["avx2", "avx512vnni"]}[_C.int8_best_isa()]
    for isa in isas:
        for threads in (1, 2, 3, 5):
            got = _C.int8_topk(*args, num_threads=threads, isa=isa)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (isa, threads)
    # The prefix-cosine mode (scales None) too.
    args = (query.numpy(), codes.numpy(), None, 19, exclude, 13)
    want = _C.int8_topk(*args, num_threads=1, isa="scalar")
    for isa in isas:
        got = _C.int8_topk(*args, num_threads=3, isa=isa)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), isa
    # The C++ quantiser equals the reference bit for bit.
    x = torch.randn(50, 37) * 5
    x[3] = 0
    x[4, :3] = torch.tensor([127.0, 0.5, 2.5]) / 127 * 3
    got_codes, got_scales = _C.quantize_int8(x.numpy())
    want_codes, want_scales = quantize_int8_ref(x)
    assert np.array_equal(got_codes, want_codes.numpy()) and np.array_equal(got_scales, want_scales.numpy())


def test_topk_cpp_handles_minus_128_codes():
    """Codes made elsewhere may hold -128; the AVX2 sign trick must still be exact."""
    codes = torch.randint(-128, 128, (300, 64), dtype=torch.int8)
    codes[:, 0] = -128
    scales = torch.rand(300) * 0.01
    query = torch.randn(5, 64)
    scores, indices = int8_topk(query, codes, scales, 10, impl="cpp")
    assert_topk_matches(scores, indices, query, codes, scales, 10, name="-128")


def test_topk_empty_query_batch_and_custom_op():
    codes, scales = quantize_int8_ref(_unit(20, 8))
    scores, indices = int8_topk(torch.zeros(0, 8), codes, scales, 3, impl="torch")
    assert scores.shape == (0, 3) and indices.shape == (0, 3)
    from omnikern.ops.int8 import _int8_topk_op

    query = _unit(2, 8)
    for impl in ("torch",) + (() if CUDA else ("cpp",)):
        torch.library.opcheck(_int8_topk_op, (query, codes, scales, None, 3, 8, False, impl, 1))
        torch.library.opcheck(_int8_topk_op, (query, codes, scales, torch.tensor([1, -1]), 3, 5, True, impl, 1))


def test_topk_bad_inputs():
    codes, scales = quantize_int8_ref(_unit(10, 8))
    query = _unit(2, 8)
    with pytest.raises(TypeError, match="query"):
        int8_topk(query.to(torch.int32), codes, scales, 3)
    with pytest.raises(TypeError, match="codes"):
        int8_topk(query, codes.float(), scales, 3)
    with pytest.raises(TypeError, match="scales"):
        int8_topk(query, codes, scales.double(), 3)
    with pytest.raises(ValueError, match="embedding dim"):
        int8_topk(_unit(2, 9), codes, scales, 3)
    with pytest.raises(ValueError, match="k"):
        int8_topk(query, codes, scales, 0)
    with pytest.raises(TypeError, match="k"):
        int8_topk(query, codes, scales, 2.0)
    with pytest.raises(ValueError, match="dim"):
        int8_topk(query, codes, scales, 3, dim=9)
    with pytest.raises(ValueError, match="query"):
        int8_topk(torch.full((2, 8), float("nan")), codes, scales, 3)
    with pytest.raises(ValueError, match="codes"):
        int8_topk(query, codes[:0], scales[:0], 3)
    with pytest.raises(ValueError, match="scales"):
        int8_topk(query, codes, scales[:5], 3)
    with pytest.raises(TypeError, match="exclude"):
        int8_topk(query, codes, scales, 3, exclude=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="exclude"):
        int8_topk(query, codes, scales, 3, exclude=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="exclude"):
        int8_topk(query, codes, scales, 3, exclude=torch.tensor([0]))
    with pytest.raises(ValueError, match="impl"):
        int8_topk(query, codes, scales, 3, impl="faiss")
    with pytest.raises(ValueError, match="k"):
        int8_topk(query, codes, scales, 2048, impl="triton")


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from omnikern.ops import int8 as I, sketch as S

target = GPUTarget("cuda", 90, 32)
topk = {"q_ptr": "*i8", "qf_ptr": "*fp32", "x_ptr": "*i8", "xf_ptr": "*fp32", "excl_ptr": "*i64", "out_ptr": "*i64",
        "Q": "i32", "N": "i32", "DIM": "i32", "rows_per_split": "i32",
        "stride_qq": "i32", "stride_xn": "i32", "stride_os": "i32", "stride_oq": "i32"}
# The launcher's compiled configurations for 64 queries at k = 10 (row maxima) and k = 64 (bitonic).
for k_pad, block_n, extract in ((16, 128, True), (64, 128, False)):
    meta = dict(NORMALIZE=True, HAS_EXCLUDE=True, BLOCK_Q=64, BLOCK_N=block_n, BLOCK_D=128, K_PAD=k_pad,
                EXTRACT=extract, INTERPRET=False)
    signature = dict(topk, **{k: "constexpr" for k in meta})
    kernel = triton.compile(ASTSource(I._int8_topk_kernel, signature, constexprs=meta), target=target, options={"num_warps": 8})
    print("topk", kernel.metadata.shared)
sketch = {"ids_ptr": "*i64", "mult_ptr": "*i64", "counts_ptr": "*i64", "n": "i32", "width": "i32", "depth": "i32", "BLOCK": "constexpr"}
triton.compile(ASTSource(S._sketch_update_kernel, sketch, constexprs={"BLOCK": 1024}), target=target, options={"num_warps": 4})
query = dict(sketch, out_ptr="*i64")
triton.compile(ASTSource(S._sketch_query_kernel, query, constexprs={"BLOCK": 1024}), target=target, options={"num_warps": 4})
print("sketch 0")
"""


def test_kernels_compile_for_sm90():
    """The interpreter runs the kernels' INTERPRET branches only: compile the top-k kernel (its
    compiled loop form) and the sketch kernels ahead of time for an H100 (sm_90; triton ships
    ptxas, no GPU needed) and check that the shared memory fits (at most 227 KB per block)."""
    import os
    import subprocess
    import sys

    if CUDA:
        pytest.skip("a GPU runs the kernels for real in the other tests")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr:
        pytest.skip("this triton has no bundled ptxas")
    assert done.returncode == 0, done.stderr[-3000:]
    shared = [int(line.split()[1]) for line in done.stdout.splitlines()]
    assert len(shared) == 3 and max(shared) <= 227 * 1024, done.stdout
