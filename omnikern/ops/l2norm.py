"""Row-wise L2 normalisation: ``y = x / max(‖x‖₂, eps)`` over the last dimension.

Every tower of the model ends with it, and the loss and the index expect unit rows.

Maths
-----
Forward, per row: ``n = ‖x‖``, ``r = 1 / max(n, eps)``, ``y = r·x``.
To keep ``x·x`` from overflowing fp32 (``F.normalize`` returns zeros for rows of 1e20, and for fp16
rows of 6e4 once squared in half precision), the norm is taken of the row divided by its largest
magnitude ``m``: ``n = m·‖x / m‖``.

Backward: where ``n >= eps``, ``∂y/∂x = r·(I − y yᵀ)``, so ``dx = r·(dy − y·(y·dy))``; where the
clamp is active, ``r = 1/eps`` is a constant and ``dx = r·dy`` (the same convention as
``torch.clamp_min``'s gradient).

Tiling
------
One program normalises ``BLOCK_B`` rows, each held whole in registers (``BLOCK_D`` =
next power of two ≥ D), so ``x`` is read once and ``y`` written once: 2·B·D·itemsize bytes forward,
3·B·D·itemsize backward, plus 4 bytes per row for the saved norm. Rows wider than
``MAX_FUSED_BLOCK`` go to the torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from omnikern.ops import _triton

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

# Integer specialisation (Triton compiles one variant per "== 1" / "multiple of 16" class of each
# int argument): B, the row count, is left out. It only masks rows, and a row mask is constant
# along the contiguous D axis, so it never limits vectorisation; the fp32 norm per row is 4 bytes
# against D·itemsize. Specialised, every new batch size class (1, a multiple of 16, other) would
# be another compile. D stays specialised: it masks the contiguous axis, and 16 | D lets the row
# loads and stores be 16-byte vectors (D is fixed by the model: one class). The strides too.


@triton.jit(do_not_specialize=["B"])
def _l2norm_fwd_kernel(
    # pointers
    x_ptr,
    y_ptr,
    norm_ptr,
    # sizes
    B,
    D,
    # strides (the last dimension is contiguous)
    stride_xb,
    stride_yb,
    # scalars
    eps,
    # meta
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """x (B, D) -> y (B, D) in x's dtype, norm (B,) fp32."""
    pid_b = tl.program_id(0).to(tl.int64)  # int64 before stride products: B·D may pass 2^31
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask = mask_b[:, None] & (offs_d[None, :] < D)

    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_d[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    # n = m·‖x/m‖ with m = max|x|: no overflow of x·x for large rows (see module docstring).
    row_max = tl.max(tl.abs(x), axis=1)
    safe_max = tl.where(row_max > 0, row_max, 1.0)
    scaled = x / safe_max[:, None]
    norm = tl.sqrt(tl.sum(scaled * scaled, axis=1)) * safe_max
    inv_norm = 1.0 / tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL)
    y = x * inv_norm[:, None]

    tl.store(y_ptr + offs_b[:, None] * stride_yb + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(norm_ptr + offs_b, norm, mask=mask_b)


@triton.jit(do_not_specialize=["B"])  # see _l2norm_fwd_kernel
def _l2norm_bwd_kernel(
    # pointers
    grad_y_ptr,
    x_ptr,
    norm_ptr,
    grad_x_ptr,
    # sizes
    B,
    D,
    # strides (the last dimension is contiguous)
    stride_gyb,
    stride_xb,
    stride_gxb,
    # scalars
    eps,
    # meta
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """grad_y (B, D), x (B, D), norm (B,) -> grad_x (B, D) in x's dtype."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask = mask_b[:, None] & (offs_d[None, :] < D)

    grad_y = tl.load(grad_y_ptr + offs_b[:, None] * stride_gyb + offs_d[None, :], mask=mask, other=0.0)
    grad_y = grad_y.to(tl.float32)
    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    norm = tl.load(norm_ptr + offs_b, mask=mask_b, other=1.0)

    inv_norm = 1.0 / tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL)
    y = x * inv_norm[:, None]
    # dx = r·(dy − y·(y·dy)) where the norm is not clamped; r·dy where it is.
    y_dot_grad = tl.sum(y * grad_y, axis=1)
    y_dot_grad = tl.where(norm >= eps, y_dot_grad, 0.0)
    grad_x = inv_norm[:, None] * (grad_y - y * y_dot_grad[:, None])

    tl.store(
        grad_x_ptr + offs_b[:, None] * stride_gxb + offs_d[None, :],
        grad_x.to(grad_x_ptr.dtype.element_ty),
        mask=mask,
    )


# ----------------------------------------------------------------------------------------------
# Launchers (2-D, last dimension contiguous)
# ----------------------------------------------------------------------------------------------


def _block_sizes(D: int) -> tuple[int, int]:
    block_d = _triton.next_power_of_2(D)
    # Aim at ~4k elements per program; never fewer than one row.
    block_b = max(1, min(64, 4096 // block_d))
    return block_b, block_d


def _l2norm_fwd(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, D = x.shape
    y = torch.empty_like(x)
    norm = torch.empty(B, dtype=torch.float32, device=x.device)
    if B == 0:
        return y, norm
    block_b, block_d = _block_sizes(D)
    grid = (triton.cdiv(B, block_b),)
    with _triton.device_guard(x):
        _l2norm_fwd_kernel[grid](
            x, y, norm, B, D, x.stride(0), y.stride(0), eps,
            BLOCK_B=block_b, BLOCK_D=block_d, num_warps=_triton.num_warps_for(block_d),
        )
    return y, norm


def _l2norm_bwd(grad_y: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
    B, D = x.shape
    grad_x = torch.empty_like(x)
    if B == 0:
        return grad_x
    block_b, block_d = _block_sizes(D)
    grid = (triton.cdiv(B, block_b),)
    with _triton.device_guard(x):
        _l2norm_bwd_kernel[grid](
            grad_y, x, norm, grad_x, B, D, grad_y.stride(0), x.stride(0), grad_x.stride(0), eps,
            BLOCK_B=block_b, BLOCK_D=block_d, num_warps=_triton.num_warps_for(block_d),
        )
    return grad_x


# The torch path: same maths, used on CPU without the interpreter, for fp64 and for very wide rows.


def _l2norm_fwd_torch(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    compute = x if x.dtype == torch.float64 else x.float()
    norm = torch.linalg.vector_norm(compute, dim=-1)
    # Squares overflow (inf) for rows near 1e20 and underflow (0) for rows near 1e-20: redo only
    # those rows with the max-scaled norm, so the common case stays one fast pass.
    suspect = ~torch.isfinite(norm) | (norm < 1e-18)
    if suspect.any():
        rows = compute[suspect]
        row_max = rows.abs().amax(dim=-1, keepdim=True) if rows.shape[-1] else rows.new_zeros(rows.shape[0], 1)
        safe_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))
        norm[suspect] = torch.linalg.vector_norm(rows / safe_max, dim=-1) * safe_max.squeeze(-1)
    y = compute / norm.clamp_min(eps).unsqueeze(-1)
    return y.to(x.dtype), norm


def _l2norm_bwd_torch(grad_y: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_y, x_c, norm = grad_y.to(compute_dtype), x.to(compute_dtype), norm.to(compute_dtype)
    inv_norm = 1.0 / norm.clamp_min(eps)
    y = x_c * inv_norm.unsqueeze(-1)
    y_dot_grad = torch.where(norm >= eps, (y * grad_y).sum(-1), torch.zeros_like(norm))
    grad_x = inv_norm.unsqueeze(-1) * (grad_y - y * y_dot_grad.unsqueeze(-1))
    return grad_x.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Op registration: autograd, fake tensors and torch.compile see one opaque op per direction.
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("omnikern::l2_normalize_fwd", mutates_args=())
def _l2_normalize_fwd_op(x: torch.Tensor, eps: float, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton:
        return _l2norm_fwd(x, eps)
    return _l2norm_fwd_torch(x, eps)


@_l2_normalize_fwd_op.register_fake
def _(x: torch.Tensor, eps: float, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    norm_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=norm_dtype)


@torch.library.custom_op("omnikern::l2_normalize_bwd", mutates_args=())
def _l2_normalize_bwd_op(
    grad_y: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float, use_triton: bool
) -> torch.Tensor:
    if use_triton:
        return _l2norm_bwd(grad_y.contiguous(), x, norm, eps)
    return _l2norm_bwd_torch(grad_y, x, norm, eps)


@_l2_normalize_bwd_op.register_fake
def _(grad_y: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float, use_triton: bool) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    x, eps, use_triton = inputs
    _, norm = output
    ctx.save_for_backward(x, norm)
    ctx.eps = eps
    ctx.use_triton = use_triton
    ctx.mark_non_differentiable(norm)


def _backward(ctx, grad_y: torch.Tensor, _grad_norm: torch.Tensor | None):
    x, norm = ctx.saved_tensors
    grad_x = _l2_normalize_bwd_op(grad_y, x, norm, ctx.eps, ctx.use_triton)
    return grad_x, None, None


_l2_normalize_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12, *, impl: str = "auto") -> torch.Tensor:
    """Returns ``x`` scaled to unit L2 norm along ``dim``, in ``x``'s dtype and shape.

    Equals ``omnikern.ops.reference.l2_normalize_ref(x, dim, eps)``: ``F.normalize`` computed in
    float64, i.e. ``x / max(‖x‖₂, eps)``. Unlike ``F.normalize`` it does not return zeros for rows
    whose squared norm overflows (fp32 rows near 1e20, fp16 rows near 6e4). NaN or inf in a row
    gives NaN in that row, as in torch.

    Args:
        x: floating tensor (fp16, bf16, fp32 or fp64), any shape with at least one dimension.
        dim: the dimension to normalise over.
        eps: lower bound of the norm (> 0); rows with a smaller norm are divided by ``eps``.
        impl: ``"auto"`` (Triton kernel on CUDA or under the interpreter, else torch),
            ``"triton"`` or ``"torch"``. fp64 and rows wider than 32768 always use torch.

    Returns:
        Tensor of ``x``'s shape and dtype; differentiable.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: bad ``dim``, ``eps`` or ``impl``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape {tuple(x.shape)}, got {dim}")
    if not (isinstance(eps, (int, float)) and eps > 0 and eps != float("inf")):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    use_triton = _triton.resolve_impl(impl, x) == "triton"
    if x.dtype == torch.float64 or x.shape[dim] > _triton.MAX_FUSED_BLOCK:
        use_triton = False

    moved = x.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1]).contiguous()
    y, _ = _l2_normalize_fwd_op(rows, float(eps), use_triton)
    return y.reshape(moved.shape).movedim(-1, dim)
