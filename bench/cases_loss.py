"""Benchmark cases for the sampled-softmax loss (fwd+bwd): omnikern (the Triton kernel on CUDA, the
chunked torch path on CPU) vs the materialised reference (eager on the same bf16 inputs, and
torch.compile of it), the chunked torch path on CUDA, and Inf-CL.

The GPU goals each have a row: fwd+bwd at B = N = 16,384, D = 256, bf16 against the eager and
compiled reference and Inf-CL; all six Matryoshka prefixes at D = 512 against ``dims=[512]``
(``time_vs_baseline``); peak extra memory at B = N = 65,536, D = 512; and one correctness check
(loss and every gradient against the reference) at the first size.

Inf-CL (PyPI ``inf-cl``, CUDA only) computes the in-batch contrastive log-sum-exp only: no id masks,
no logQ correction, no random negatives, no Matryoshka prefixes, fixed scale. Its rows are a speed
reference for the core tiled LSE, not a like-for-like loss. Where it is not importable its row says so.

Order: cheapest and most important first, torch.compile last (its first compile is the slowest
step of the family on a fresh machine and a device run may be cut short).
"""

from __future__ import annotations

import math

import torch
from harness import Case

from omnikern.ops import sampled_softmax_loss
from omnikern.ops.reference import DEFAULT_DIM_WEIGHTS, sampled_softmax_loss_ref

# Loss and gradient tolerances of the bf16 check: the test suite's (python_tests/test_ops_loss.py),
# against the reference in fp32 on the same rounded inputs.
ATOL, RTOL = 2e-5, 1.6e-2


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


def _call(fn, inputs: dict, dims):
    out = fn(
        inputs["query"], inputs["pos"], log_scale=inputs["log_scale"], query_ids=inputs["query_ids"],
        pos_ids=inputs["pos_ids"], neg_mode="in_batch", dims=dims,
    )  # fmt: skip
    return out[0] if isinstance(out, tuple) else out


def _fwd_bwd(fn, inputs: dict, dims):
    def run():
        for key in ("query", "pos", "log_scale"):
            inputs[key].grad = None
        _call(fn, inputs, dims).backward()

    return run


def _check(inputs: dict, dims) -> dict:
    """omnikern's loss and gradients vs the reference (fp32 on the same rounded inputs)."""
    results = {}
    for name, fn, cast in (
        ("omnikern", lambda *a, **k: sampled_softmax_loss(*a, impl="auto", **k), False),
        ("reference", sampled_softmax_loss_ref, True),
    ):
        leaves = {k: (inputs[k].detach().float() if cast else inputs[k].detach()).requires_grad_(True)
                  for k in ("query", "pos")}  # fmt: skip
        t = inputs["log_scale"].detach().clone().requires_grad_(True)
        loss = _call(fn, {**inputs, **leaves, "log_scale": t}, dims)
        loss.backward()
        results[name] = (loss.detach().double(), {k: v.grad.double() for k, v in leaves.items()} | {"t": t.grad.double()})
    (got, got_grads), (want, want_grads) = results["omnikern"], results["reference"]
    loss_err = float((got - want).abs() / want.abs().clamp_min(1e-30))
    out = {"loss": float(got), "loss_rel_err": loss_err}
    ok = loss_err <= RTOL
    for key in want_grads:
        scale = float(want_grads[key].abs().max())
        err = float((got_grads[key] - want_grads[key]).abs().max())
        out[f"grad_{key}_max_err_over_scale"] = err / max(scale, 1e-30)
        ok = ok and err <= ATOL + RTOL * scale
    return {"ok": ok, **out, "tol_rel": RTOL}


def _inf_cl_case(inputs: dict, size: str) -> Case:
    try:
        from inf_cl import cal_inf_loss  # noqa: PLC0415 - optional peer
    except ImportError as error:
        return Case("sampled_softmax_loss", "inf-cl", "fwd+bwd", size, lambda: None,
                    skipped=f"inf_cl is not importable ({error}); pip install --no-deps inf-cl")  # fmt: skip
    scale = math.exp(inputs["log_scale"].item())

    def run():
        inputs["query"].grad = inputs["pos"].grad = None
        q = torch.nn.functional.normalize(inputs["query"], dim=-1)
        k = torch.nn.functional.normalize(inputs["pos"], dim=-1)
        labels = torch.arange(q.shape[0], device=q.device)
        cal_inf_loss(q, k, labels=labels, scale=scale).mean().backward()

    return Case("sampled_softmax_loss", "inf-cl", "fwd+bwd", size, run, extra={"note": "in-batch LSE only"})


def cases(device: str, quick: bool):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    if device == "cuda":
        # (B, D, dims, providers); B = N (in-batch negatives).
        main_b, big_b = (4096, 16384) if quick else (16384, 65536)
        specs = [
            (main_b, 256, [256], ["omnikern", "reference", "check", "chunked-torch", "inf-cl"]),
            (main_b, 512, [512], ["omnikern"]),
            (main_b, 512, None, ["omnikern"]),
            (big_b, 512, [512], ["omnikern", "chunked-torch"]),
        ]
    else:
        main_b = 1024 if quick else 2048
        specs = [(main_b, 256, [256], ["omnikern", "reference", "check"]), (main_b, 256, None, ["omnikern", "reference"])]

    def size_of(B: int, D: int, dims) -> str:
        tag = f"dims={dims[0]}" if dims else f"{sum(d <= D for d in DEFAULT_DIM_WEIGHTS)} prefixes"
        return f"B=N={B} D={D} {dtype_name} {tag}"

    providers = {
        # "omnikern" is impl="auto": the Triton kernel on CUDA, the chunked torch path on CPU.
        "omnikern": lambda *a, **k: sampled_softmax_loss(*a, impl="auto", **k),
        "chunked-torch": lambda *a, **k: sampled_softmax_loss(*a, impl="torch", **k),
        "reference": sampled_softmax_loss_ref,
    }
    inputs_by_shape: dict[tuple[int, int], dict] = {}
    for B, D, dims, names in specs:
        # One input set per shape, made when first needed (B = 65,536 is last: its inputs wait).
        if (B, D) not in inputs_by_shape:
            inputs_by_shape.clear()  # the previous shape's tensors are no longer needed
            inputs_by_shape[(B, D)] = _inputs(B, D, dtype, device)
        inputs = inputs_by_shape[(B, D)]
        size = size_of(B, D, dims)
        prefix_dims = dims or [d for d in DEFAULT_DIM_WEIGHTS if d <= D]
        # GEMM-bound: per prefix d, fwd 2·B·N·d, bwd recompute + dq + dc 6·B·N·d.
        flops = 8 * B * B * sum(prefix_dims)
        extra = None if dims else {"baseline_size": size_of(B, D, [D])}
        for name in names:
            if name == "check":
                yield Case("sampled_softmax_loss", "omnikern", "check", size, lambda i=inputs, d=dims: _check(i, d), check=True)
            elif name == "inf-cl":
                yield _inf_cl_case(inputs, size)
            else:
                yield Case("sampled_softmax_loss", name, "fwd+bwd", size, _fwd_bwd(providers[name], inputs, dims),
                           flops=flops, extra=extra)  # fmt: skip

    # torch.compile of the reference at the first size (the materialised reference holds several
    # B × B fp32 matrices per prefix: only at the first size, which fits).
    B, D, dims, _ = specs[0]
    inputs = _inputs(B, D, dtype, device)
    compiled_ref = torch.compile(sampled_softmax_loss_ref)
    yield Case("sampled_softmax_loss", "torch.compile", "fwd+bwd", size_of(B, D, dims),
               _fwd_bwd(compiled_ref, inputs, dims), flops=8 * B * B * D)  # fmt: skip
