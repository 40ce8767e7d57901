"""Benchmark cases for row-wise L2 normalisation: omnikern vs F.normalize (eager and compiled), and
one correctness check at the largest size against the reference (values and gradient).

Order: the torch.compile rows come last, because their first compile is the slowest part of the
family on a fresh machine and a device run may be cut short."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from harness import Case

from omnikern.ops import l2_normalize
from omnikern.ops.reference import l2_normalize_ref


def _check(x: torch.Tensor) -> dict:
    """omnikern vs the fp32 reference at bench size: forward values and the gradient of a random
    upstream gradient (both in the input's dtype, compared in fp32)."""
    x_req = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)
    y = l2_normalize(x_req)
    y.backward(grad)
    x_ref = x.detach().float().requires_grad_(True)
    y_ref = l2_normalize_ref(x_ref)
    y_ref.backward(grad.float())
    fwd_err = (y.float() - y_ref).abs().max().item()
    bwd_err = ((x_req.grad.float() - x_ref.grad).abs().max() / x_ref.grad.abs().max()).item()
    # One rounding of the output / gradient dtype (fp32: a few ulps of accumulation).
    tol = 1e-5 if x.dtype == torch.float32 else 2 * torch.finfo(x.dtype).eps
    return {"ok": fwd_err <= tol and bwd_err <= 4 * tol, "max_abs_err_fwd": fwd_err, "max_rel_err_grad": bwd_err, "tol": tol}


def cases(device: str, quick: bool) -> list[Case]:
    sizes = [(4096, 256)] if quick else [(4096, 256), (65536, 512), (262144, 256)]
    dtypes = [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float32]
    # dynamic=False: one specialised graph per shape, as a fixed-shape training step would use.
    compiled = torch.compile(lambda x: F.normalize(x, dim=-1), dynamic=False)
    out: list[Case] = []
    late: list[Case] = []
    for rows, dim in sizes:
        for dtype in dtypes:
            x = torch.randn(rows, dim, device=device, dtype=dtype)
            size = f"{rows}x{dim} {str(dtype).removeprefix('torch.')}"
            traffic = 2 * x.numel() * x.element_size()  # read x, write y
            providers = {
                "omnikern": lambda x=x: l2_normalize(x),
                "torch": lambda x=x: F.normalize(x, dim=-1),
                "reference": lambda x=x: l2_normalize_ref(x),
            }
            for provider, fn in providers.items():
                out.append(Case("l2_normalize", provider, "fwd", size, fn, bytes_moved=traffic))
            late.append(Case("l2_normalize", "torch.compile", "fwd", size, lambda x=x: compiled(x), bytes_moved=traffic))

            # fwd+bwd: read x, write y, read dy, (re-read x), write dx
            grad = torch.randn_like(x)
            x_req = x.detach().requires_grad_(True)

            def fwd_bwd(fn, x_req=x_req, grad=grad):
                x_req.grad = None
                fn(x_req).backward(grad)

            out.append(Case("l2_normalize", "omnikern", "fwd+bwd", size, lambda f=fwd_bwd: f(l2_normalize), bytes_moved=3 * traffic))
            out.append(Case("l2_normalize", "torch", "fwd+bwd", size, lambda f=fwd_bwd: f(lambda t: F.normalize(t, dim=-1)), bytes_moved=3 * traffic))
            if (rows, dim) == sizes[-1]:
                out.append(Case("l2_normalize", "omnikern", "check", size, lambda x=x: _check(x), check=True))
    return out + late
