"""Benchmark cases for the sampled-softmax loss (fwd+bwd): omnikern (the Triton kernel on CUDA, the
chunked torch path on CPU) vs the materialised reference (eager and torch.compile), the chunked
torch path on CUDA, and Inf-CL.

Inf-CL (PyPI ``inf-cl``, CUDA only) computes the in-batch contrastive log-sum-exp only: no id masks,
no logQ correction, no random negatives, no Matryoshka prefixes, fixed scale. Its rows are a speed
reference for the core tiled LSE, not a like-for-like loss.
"""

from __future__ import annotations

import math

import torch
from harness import Case

from omnikern.ops import sampled_softmax_loss
from omnikern.ops.reference import sampled_softmax_loss_ref


def _inputs(B: int, D: int, dtype: torch.dtype, device: str) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    tensors = {
        "query": torch.randn(B, D, device=device, dtype=dtype, generator=gen).requires_grad_(True),
        "pos": torch.randn(B, D, device=device, dtype=dtype, generator=gen).requires_grad_(True),
    }
    ids = {
        "query_ids": torch.randint(0, B, (B,), device=device, generator=gen),
        "pos_ids": torch.randint(0, B, (B,), device=device, generator=gen),
    }
    return {**tensors, **ids, "log_scale": torch.tensor(math.log(1 / 0.07), device=device, requires_grad=True)}


def _fwd_bwd(fn, inputs: dict, dims: list[int]):
    def run():
        for key in ("query", "pos", "log_scale"):
            inputs[key].grad = None
        out = fn(
            inputs["query"], inputs["pos"], log_scale=inputs["log_scale"], query_ids=inputs["query_ids"],
            pos_ids=inputs["pos_ids"], neg_mode="in_batch", dims=dims,
        )  # fmt: skip
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()

    return run


def _inf_cl_case(inputs: dict, size: str) -> Case | None:
    try:
        from inf_cl import cal_inf_loss  # noqa: PLC0415 - optional peer
    except ImportError:
        return None
    scale = math.exp(inputs["log_scale"].item())

    def run():
        inputs["query"].grad = inputs["pos"].grad = None
        q = torch.nn.functional.normalize(inputs["query"], dim=-1)
        k = torch.nn.functional.normalize(inputs["pos"], dim=-1)
        labels = torch.arange(q.shape[0], device=q.device)
        cal_inf_loss(q, k, labels=labels, scale=scale).mean().backward()

    return Case("sampled_softmax_loss", "inf-cl", "fwd+bwd", size, run, extra={"note": "in-batch LSE only"})


def cases(device: str, quick: bool) -> list[Case]:
    if device == "cpu":
        sizes = [(1024, 256)] if quick else [(2048, 256), (8192, 256)]
        dtypes = [torch.float32]
    else:
        sizes = [(4096, 256)] if quick else [(16384, 256), (65536, 256)]
        dtypes = [torch.bfloat16]
    compiled_ref = torch.compile(sampled_softmax_loss_ref)
    out: list[Case] = []
    for B, D in sizes:
        for dtype in dtypes:
            inputs = _inputs(B, D, dtype, device)
            # The loss is GEMM-bound: fwd 2·B·N·D, bwd recompute + dq + dc = 6·B·N·D.
            flops = 8 * B * B * D
            for dims, tag in (([D], f"dims={D}"), (None, "all prefixes")):
                size = f"B=N={B} D={D} {str(dtype).removeprefix('torch.')} {tag}"
                # "omnikern" is impl="auto": the Triton kernel on CUDA, the chunked torch path on CPU.
                providers = {"omnikern": lambda *a, **k: sampled_softmax_loss(*a, impl="auto", **k)}
                if device == "cuda":
                    providers["chunked-torch"] = lambda *a, **k: sampled_softmax_loss(*a, impl="torch", **k)
                # The materialised reference holds several B × B fp32 matrices per prefix: skip it where
                # that cannot fit (B = 65,536 needs > 17 GB per matrix set).
                if B <= 16384:
                    providers["reference"] = sampled_softmax_loss_ref
                    providers["torch.compile"] = compiled_ref
                for provider, fn in providers.items():
                    out.append(Case("sampled_softmax_loss", provider, "fwd+bwd", size, _fwd_bwd(fn, inputs, dims), flops=flops))
                if device == "cuda" and dims == [D]:
                    inf_cl = _inf_cl_case(inputs, size)
                    if inf_cl is not None:
                        out.append(inf_cl)
    return out
