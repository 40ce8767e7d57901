"""Benchmark cases for pooling: omnikern's C++ pool (numpy in, GIL released, all cores) vs torch.

Pooling runs where serving runs, on the CPU, so the cases are CPU-only: on a CUDA run this family
contributes nothing (the GPU path pools with torch inside the model).
"""

from __future__ import annotations

import torch
from harness import Case

from omnikern.text import pool
from omnikern.text.reference import pool_ref


def _torch_pool(x: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """The usual eager torch pooling (sentence-transformers style: multiply by the mask, fill -1e9 for max)."""
    x = x.float()
    m = mask.unsqueeze(-1).to(x.dtype)
    outs = []
    for mode in modes:
        if mode == "cls":
            outs.append(x[:, 0])
        elif mode in ("mean", "mean_sqrt"):
            count = m.sum(dim=1).clamp(min=1e-9)
            outs.append((x * m).sum(dim=1) / (count if mode == "mean" else count.sqrt()))
        else:
            outs.append(x.masked_fill(m == 0, -1e9).amax(dim=1))
    return torch.cat(outs, dim=-1)


def cases(device: str, quick: bool) -> list[Case]:
    if device != "cpu":
        return []
    shapes = [(256, 64, 384)] if quick else [(256, 64, 384), (1024, 128, 384), (64, 512, 768)]
    mode_sets = [("mean",), ("cls", "mean", "max")]
    dtypes = [torch.float32, torch.float16]
    compiled = torch.compile(_torch_pool, dynamic=False)
    out: list[Case] = []
    for B, L, H in shapes:
        for dtype in dtypes:
            x = torch.randn(B, L, H).to(dtype)
            lengths = torch.randint(1, L + 1, (B,))
            mask = (torch.arange(L)[None, :] < lengths[:, None]).to(torch.int64)
            x_np, mask_np = x.numpy(), mask.numpy()
            for modes in mode_sets:
                size = f"{B}x{L}x{H} {str(dtype).removeprefix('torch.')} {'+'.join(modes)}"
                # read x and the mask once, write (B, H * n_modes) float32
                traffic = x.numel() * x.element_size() + mask.numel() * 8 + B * H * len(modes) * 4
                providers = {
                    "omnikern": lambda m=modes, x_np=x_np, mask_np=mask_np: pool(x_np, mask_np, m),
                    "torch": lambda m=modes, x=x, mask=mask: _torch_pool(x, mask, m),
                    "torch.compile": lambda m=modes, x=x, mask=mask: compiled(x, mask, m),
                    "reference": lambda m=modes, x=x, mask=mask: pool_ref(x, mask, m),
                }
                for provider, fn in providers.items():
                    out.append(
                        Case("pool", provider, "fwd", size, fn, bytes_moved=traffic,
                             extra={"threads": torch.get_num_threads(), "input": "numpy" if provider == "omnikern" else "torch"})
                    )
                # One core each: the per-core rate is what a serving instance gets.
                out.append(
                    Case("pool", "omnikern", "fwd 1 thread", size,
                         lambda m=modes, x_np=x_np, mask_np=mask_np: pool(x_np, mask_np, m, num_threads=1),
                         bytes_moved=traffic)
                )
                out.append(
                    Case("pool", "torch", "fwd 1 thread", size, lambda m=modes, x=x, mask=mask: _one_thread(_torch_pool, x, mask, m),
                         bytes_moved=traffic)
                )
    return out


def _one_thread(fn, *args):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(previous)


