"""Benchmark cases for row-wise L2 normalisation: omnikern vs F.normalize (eager and compiled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from harness import Case

from omnikern.ops import l2_normalize
from omnikern.ops.reference import l2_normalize_ref


def cases(device: str, quick: bool) -> list[Case]:
    sizes = [(4096, 256)] if quick else [(4096, 256), (65536, 512), (262144, 256)]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    compiled = torch.compile(lambda x: F.normalize(x, dim=-1))
    out: list[Case] = []
    for rows, dim in sizes:
        for dtype in dtypes:
            x = torch.randn(rows, dim, device=device, dtype=dtype)
            size = f"{rows}x{dim} {str(dtype).removeprefix('torch.')}"
            traffic = 2 * x.numel() * x.element_size()  # read x, write y
            providers = {
                "omnikern": lambda x=x: l2_normalize(x),
                "torch": lambda x=x: F.normalize(x, dim=-1),
                "torch.compile": lambda x=x: compiled(x),
                "reference": lambda x=x: l2_normalize_ref(x),
            }
            for provider, fn in providers.items():
                out.append(Case("l2_normalize", provider, "fwd", size, fn, bytes_moved=traffic))

            # fwd+bwd: read x, write y, read dy, (re-read x), write dx
            grad = torch.randn_like(x)
            x_req = x.detach().requires_grad_(True)

            def fwd_bwd(fn, x_req=x_req, grad=grad):
                x_req.grad = None
                fn(x_req).backward(grad)

            out.append(Case("l2_normalize", "omnikern", "fwd+bwd", size, lambda f=fwd_bwd: f(l2_normalize), bytes_moved=3 * traffic))
            out.append(Case("l2_normalize", "torch", "fwd+bwd", size, lambda f=fwd_bwd: f(lambda t: F.normalize(t, dim=-1)), bytes_moved=3 * traffic))
    return out
