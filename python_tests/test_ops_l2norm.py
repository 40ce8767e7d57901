"""omnikern.l2_normalize: the Triton kernel (interpreter on CPU) and the torch path vs the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from helpers import assert_close_verbose, assert_no_worse_than_torch

from omnikern.ops import l2_normalize
from omnikern.ops.l2norm import _l2_normalize_bwd_op, _l2_normalize_fwd_op
from omnikern.ops.reference import l2_normalize_ref

IMPLS = ["triton", "torch"]

# (dtype, tol): the kernel must be no worse than torch's own F.normalize in that dtype, plus tol.
DTYPES = [
    (torch.float32, 1e-6),
    (torch.float16, 1e-3),
    (torch.bfloat16, 8e-3),
]

SHAPES = [
    (4, 256),  # aligned
    (7, 33),  # odd rows and width: exercises the masks
    (1, 1),
    (65, 384),  # more rows than one program handles
]


def _check(x: torch.Tensor, impl: str, tol: float, dim: int = -1) -> None:
    x = x.detach().requires_grad_(True)
    y = l2_normalize(x, dim=dim, impl=impl)
    grad_out = torch.randn_like(y)
    (y * grad_out).sum().backward()

    truth_x = x.detach().double().requires_grad_(True)
    truth = l2_normalize_ref(truth_x, dim=dim)
    (truth * grad_out.double()).sum().backward()

    torch_x = x.detach().clone().requires_grad_(True)
    torch_y = F.normalize(torch_x, dim=dim)
    (torch_y * grad_out).sum().backward()

    assert y.dtype == x.dtype and y.shape == x.shape
    assert_no_worse_than_torch(y, torch_y, truth, tol, name="y")
    assert_no_worse_than_torch(x.grad, torch_x.grad, truth_x.grad, tol * 4, name="grad")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype, tol, impl):
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    _check(x, impl, tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_other_dim_and_noncontiguous(impl):
    x = torch.randn(6, 5, 3, device=DEVICE).transpose(0, 2)  # (3, 5, 6), not contiguous
    _check(x, impl, 1e-6, dim=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_rows_do_not_overflow(impl):
    """F.normalize squares in the input precision: fp32 rows of 1e20 and fp16 rows of 6e4 come out as
    zeros. The norm is taken of the row scaled by its max, so these rows normalise correctly."""
    x32 = torch.full((2, 8), 1e20, device=DEVICE)
    x16 = torch.full((2, 8), 6e4, device=DEVICE, dtype=torch.float16)
    for x in (x32, x16):
        y = l2_normalize(x, impl=impl)
        assert_close_verbose(y.float(), torch.full_like(y, 8 ** -0.5, dtype=torch.float32), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_row_is_clamped_not_nan(impl):
    """A zero row has norm 0 < eps: output 0 and gradient grad/eps (torch's clamp_min convention)."""
    x = torch.zeros(3, 16, device=DEVICE, requires_grad=True)
    y = l2_normalize(x, impl=impl)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y))
    reference_x = torch.zeros(3, 16, device=DEVICE, dtype=torch.float64, requires_grad=True)
    l2_normalize_ref(reference_x).sum().backward()
    assert_close_verbose(x.grad.double(), reference_x.grad, atol=0, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_propagates_to_its_row_only(impl):
    x = torch.randn(3, 10, device=DEVICE)
    x[1, 4] = float("nan")
    y = l2_normalize(x, impl=impl)
    assert torch.isnan(y[1]).all()
    assert torch.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch(impl):
    x = torch.randn(0, 12, device=DEVICE, requires_grad=True)
    y = l2_normalize(x, impl=impl)
    y.sum().backward()
    assert y.shape == (0, 12) and x.grad.shape == (0, 12)


def test_gradcheck_float64():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: l2_normalize(t, impl="torch"), (x,))


@pytest.mark.parametrize("use_triton", [True, False])
def test_opcheck(use_triton):
    x = torch.randn(5, 9, device=DEVICE, requires_grad=True)
    torch.library.opcheck(_l2_normalize_fwd_op, (x, 1e-12, use_triton))
    y, norm = _l2_normalize_fwd_op(x.detach(), 1e-12, use_triton)
    torch.library.opcheck(_l2_normalize_bwd_op, (torch.randn_like(y), x.detach(), norm, 1e-12, use_triton))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """The op is one opaque node to dynamo: compiled forward and backward equal eager (inductor
    generates C++ for the matmul around it on CPU)."""

    def model(x, w):
        return l2_normalize(x @ w).sum(dim=0)

    x = torch.randn(6, 10, device=DEVICE)
    w = torch.randn(10, 12, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(x, w)
    out.sum().backward()
    grad_compiled = w.grad.clone()
    w.grad = None
    expected = model(x, w)
    expected.sum().backward()
    assert_close_verbose(out, expected, atol=1e-6, rtol=1e-6)
    assert_close_verbose(grad_compiled, w.grad, atol=1e-6, rtol=1e-6)


def test_fake_tensor_shapes():
    """Meta tensors (no data) go through the op's registered fake implementation, as torch.compile's
    tracing does; public API only (FakeTensorMode lives in a private module)."""
    with torch.device("meta"):
        x = torch.empty(4, 3, 7, dtype=torch.float16)
        y = l2_normalize(x, dim=1)
        assert y.shape == (4, 3, 7) and y.dtype == torch.float16


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        (dict(x=torch.ones(3, dtype=torch.int64)), TypeError, "x must be float16"),
        (dict(x=torch.tensor(1.0)), ValueError, "x must have at least one dimension"),
        (dict(x=torch.ones(2, 3), dim=2), ValueError, "dim must be in"),
        (dict(x=torch.ones(2, 3), eps=0.0), ValueError, "eps must be a positive"),
        (dict(x=torch.ones(2, 3), impl="cuda"), ValueError, "impl must be"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        l2_normalize(**kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_gpu_large_rows_and_widths(dtype, tol):
    """Sizes the interpreter cannot afford: many programs, rows up to the fused-block limit."""
    for shape in [(65537, 256), (3, 32768), (1000, 1000)]:
        _check(torch.randn(shape, device="cuda", dtype=dtype), "triton", tol)


@pytest.mark.gpu
def test_gpu_compile_inductor_with_triton_around_the_op():
    x = torch.randn(64, 96, device="cuda")
    w = torch.randn(96, 128, device="cuda", requires_grad=True)
    compiled = torch.compile(lambda a, b: l2_normalize(torch.relu(a @ b)).square().sum(), fullgraph=True)
    expected = l2_normalize_ref(torch.relu(x @ w.detach())).square().sum()
    assert_close_verbose(compiled(x, w).detach(), expected, atol=1e-4, rtol=1e-4)
