"""Pooling token embeddings into one vector per sequence, in C++ over numpy buffers (no torch needed).

With ``m = attention_mask[b] != 0`` and ``n = Σ m`` (attended positions), each mode gives one (H,)
vector per sequence; several modes are concatenated in the order given:

- ``cls``:       ``x[b, 0]``, whatever the mask says (the [CLS] position).
- ``mean``:      ``Σ_l m_l x[b, l] / max(n, 1e-9)``; a fully masked row gives 0.
- ``mean_sqrt``: ``Σ_l m_l x[b, l] / sqrt(max(n, 1e-9))``; a fully masked row gives 0 (not NaN).
- ``max``:       ``max_l`` over attended positions; a fully masked row gives 0; NaN propagates.

Masked positions are skipped, never multiplied by 0, so NaN/inf there cannot leak into the result.
float16 inputs are widened to float32 element by element and every sum accumulates in float32, in
position order; each sequence is pooled by one thread, so the result does not depend on
``num_threads``. The plain-torch truth is ``omnikern.text.reference.pool_ref``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omnikern import _C
from omnikern._checks import check_int

POOL_MODES = ("cls", "mean", "mean_sqrt", "max")

_EMBEDDING_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_MASK_DTYPES = (np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.bool_), np.dtype(np.uint8))


def _is_torch_tensor(value: Any) -> bool:
    # Checked by module name so that numpy-only callers (the Triton python backend) never import torch.
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _to_numpy(value: Any, name: str, allowed: tuple[np.dtype, ...]) -> np.ndarray:
    if _is_torch_tensor(value):
        import torch

        if value.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad, but pool() is inference-only (no gradient); "
                             "use omnikern.text.reference.pool_ref for training")
        if value.dtype == torch.bfloat16 and name == "token_embeddings":
            value = value.float()  # numpy has no bfloat16; widening is exact
        array = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
    # The C++ side reads plain C-order native-endian buffers: other layouts are copied here.
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {array.dtype}")
    return np.ascontiguousarray(array)


def pool(
    token_embeddings: Any,
    attention_mask: Any,
    modes: str | Sequence[str] = ("mean",),
    num_threads: int = 0,
) -> Any:
    """Returns pooled embeddings (B, H * len(modes)) float32, of the same kind as ``token_embeddings``.

    Equals ``omnikern.text.reference.pool_ref(token_embeddings, attention_mask, modes)`` up to float32
    summation order. A torch input gives a torch tensor on the input's device (computed on CPU); a numpy
    input gives a numpy array. Inference only: no gradient flows through this function.

    Args:
        token_embeddings: (B, L, H) float32 or float16 (torch bfloat16 is widened to float32), L >= 1.
            Non-contiguous or non-native-endian inputs are copied first.
        attention_mask: (B, L) int64, int32, bool or uint8; nonzero means "attend".
        modes: one of ``"cls"``, ``"mean"``, ``"mean_sqrt"``, ``"max"``, or a sequence of them.
        num_threads: threads for the batch (0 = all cores); the result is the same for any value.

    Raises:
        TypeError: an input is not a numpy array / torch tensor, or has an unsupported dtype.
        ValueError: wrong shapes, L == 0, empty or unknown ``modes``, negative ``num_threads``, or an
            input that requires grad while grad mode is on.
    """
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    if not modes:
        raise ValueError("modes must name at least one pooling mode, got an empty sequence")
    for mode in modes:
        if mode not in POOL_MODES:
            raise ValueError(f"modes must hold items from {POOL_MODES}, got {mode!r}")
    check_int("num_threads", num_threads, 0)

    embeddings = _to_numpy(token_embeddings, "token_embeddings", _EMBEDDING_DTYPES)
    mask = _to_numpy(attention_mask, "attention_mask", _MASK_DTYPES)
    if embeddings.ndim != 3:
        raise ValueError(f"token_embeddings must have shape (B, L, H), got {embeddings.shape}")
    if mask.ndim != 2 or mask.shape != embeddings.shape[:2]:
        raise ValueError(f"attention_mask must have shape (B, L) = {embeddings.shape[:2]}, got {mask.shape}")
    if embeddings.shape[1] == 0:
        raise ValueError(f"token_embeddings must have at least one position (L >= 1), got {embeddings.shape}")

    out = _C.pool(embeddings, mask, list(modes), num_threads)
    if _is_torch_tensor(token_embeddings):
        import torch

        return torch.from_numpy(out).to(token_embeddings.device)
    return out
