"""The one place that knows how Triton kernels run here: on a CUDA device, or under the interpreter.

The Triton interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors with numpy. It must be
switched on in the environment **before the first** ``import triton`` (triton reads it when its
``jit`` decorator wraps a kernel), which is why ``python_tests/conftest.py`` sets it when no CUDA
device is present. This module never sets it itself: a library changing global state at import
would surprise its users.

Facts about the interpreter that kernels must respect (torch 2.13 CPU + triton 3.7.1):

* bf16 ``tl.dot`` is silently wrong: kernels take ``UPCAST_BF16: tl.constexpr`` from
  :func:`upcast_bf16` and cast bf16 tiles to fp32 before a dot when it is set;
* ``tl.atomic_add`` works for fp32/fp16 but not bf16;
* ``triton.autotune`` with more than one config fails: wrap config lists with
  :func:`autotune_configs`;
* ``tl.device_assert`` is a no-op, so kernels rely on host-side validation;
* every inner-loop step costs ~2 ms, so tests use small shapes and large blocks;
* ``range()`` bounds must be constexprs. The interpreter holds every runtime scalar (a kernel
  argument, a program id, a loaded value) as a one-element array; triton <= 3.6 turns it into a
  Python int with ``int(array)``, which numpy 2.4 rejects (and numpy 1.25-2.3 warns about). So a
  loop over runtime bounds is a ``while`` loop. An innermost loop that feeds ``tl.dot`` keeps
  ``for ... in range()`` when compiled, so that the compiler can pipeline its loads (it pipelines
  ``for`` loops only): such kernels take ``INTERPRET: tl.constexpr`` from :func:`interpreting`
  and choose the loop form with it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")

# Kernels that keep a whole row in registers: above this, the public functions fall back to torch.
MAX_FUSED_BLOCK = 32768

# The one vocabulary of every op's and module's ``impl`` argument: "auto" (the best path for the
# tensors' device), "triton" (the kernel), "torch" (plain or chunked torch), "cpp" (the C++
# extension, int8 top-k on CPU), "reference" (the materialising truth, the loss module only).
# Each op accepts the subset it has and names that subset when refusing a value.
IMPLS = ("auto", "triton", "torch", "cpp", "reference")
GPU_OR_TORCH = ("auto", "triton", "torch")


def check_impl(impl: object, accepted: Sequence[str] = GPU_OR_TORCH) -> str:
    """Returns ``impl`` when it is one of ``accepted`` (a subset of :data:`IMPLS`).

    Raises:
        ValueError: otherwise, listing what this op accepts.
    """
    if impl not in accepted:
        choices = ", ".join(repr(a) for a in accepted[:-1]) + f" or {accepted[-1]!r}"
        raise ValueError(f"impl must be {choices}, got {impl!r}")
    return impl


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_supported(*tensors: torch.Tensor) -> bool:
    """True when a Triton kernel can run on these tensors: all on CUDA, or all on CPU while
    interpreting."""
    if not tensors:
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)


def resolve_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Turn a user's ``impl`` choice (``"auto" | "triton" | "torch"``) into ``"triton"`` or ``"torch"``.

    ``"auto"`` picks the Triton kernel where it can run (CUDA, or the interpreter), else torch.

    Raises:
        ValueError: ``impl`` is unknown, or ``"triton"`` was asked for where no kernel can run.
    """
    check_impl(impl)
    if impl == "torch":
        return "torch"
    supported = kernel_supported(*tensors)
    if impl == "triton" and not supported:
        devices = sorted({str(t.device) for t in tensors})
        raise ValueError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
            f"imported, for CPU tensors), got tensors on {devices}"
        )
    return "triton" if supported else "torch"


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context to launch a kernel on ``tensor`` under: its CUDA device made current.

    A Triton launch compiles for, loads into and queues on the *current* CUDA device and stream,
    not the device of its arguments, and a ``torch.library.custom_op`` written in Python gets no
    device guard from the dispatcher. On a multi-GPU node where rank r's tensors are on cuda:r but
    the current device is still 0, an unguarded launch would run on device 0. For a CPU tensor
    (the interpreter, or the compile-only sm_90 check) this is a no-op, and it never touches CUDA.

    Raises:
        TypeError: ``tensor`` is not a tensor.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def upcast_bf16(dtype: torch.dtype) -> bool:
    """Whether a kernel must cast bf16 tiles to fp32 before ``tl.dot`` (only when interpreting)."""
    return dtype == torch.bfloat16 and interpreting()


def autotune_configs(configs: Sequence[T]) -> list[T]:
    """The configs to autotune over: all of them on a GPU, only the first when interpreting."""
    if not configs:
        raise ValueError("configs must not be empty")
    return list(configs[:1]) if interpreting() else list(configs)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def num_warps_for(block: int) -> int:
    """A warp count for a kernel whose program handles ``block`` elements per row."""
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4
