"""Compile the Triton kernels a trainer or a server will use, once, before the first real step.

Triton compiles a kernel the first time it is launched with a new *specialisation*: its tensor
dtypes, its constexprs (tile sizes, prefix count, flags), and a class of each specialised integer
argument (== 1, a multiple of 16, other). One compile costs 1-127 s on sm_90, so a shape seen for
the first time in the middle of training or at a server's first request stalls it. The kernels
leave most integers that vary from call to call unspecialised (rows, queries, corpus rows, ids;
see the comments above each kernel), so what is left is fixed by the model: the embedding width,
the dtype, the prefix set, the negative mode, k and the query block. The loss kernels keep their
batch and candidate counts specialised (it saves registers on the hot path): for them this module
compiles both the multiple-of-16 and the other class. It runs each op once on tiny tensors in
exactly those classes; the real shapes then hit Triton's cache (in memory, and on disk for the
next process).

What :func:`warmup` covers, per argument:

* ``l2norm``: :func:`~omnikern.ops.l2_normalize` forward and backward on (·, ``dim``) rows of ``dtype``.
* ``neg_modes``: :func:`~omnikern.ops.sampled_softmax_loss` on ``dim``-wide ``dtype`` embeddings for
  each negative mode, with the prefixes ``loss_dims`` (as its ``dims``: None is the published set),
  forward and, with ``loss_backward``, backward (a float32 ``log_scale``, as
  :class:`~omnikern.SampledSoftmaxLoss` holds it).
* ``topk_k``: :func:`~omnikern.ops.int8_topk` (and the query quantisation) for each k, each prefix
  of ``topk_dims`` (None: full width) and ``topk_exclude``, and every query block a batch of up
  to ``topk_queries`` rows reaches (the block is 16, 32 or 64 queries). k above the kernel's limit
  use the torch path and compile nothing.
* ``sketch``: the count-min sketch update and query for a ``(depth, width)`` table of ``sketch_dtype``.

Not covered (each is another compile when it happens): other dtypes or widths, inputs that are
views starting at an address that is not 16-byte aligned (Triton also specialises pointers on
alignment; fresh tensors are aligned), sizes of 2^31 or more (their ints are 64-bit), and a corpus
smaller than k (its padded k is smaller), and a loss batch of exactly one query or one negative.

On a CPU without the interpreter nothing is compiled (the ops take their torch or C++ paths) and
the calls are cheap; under the interpreter they run the kernels on tiny inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnikern._checks import check_int
from omnikern.ops import _triton
from omnikern.ops.int8 import MAX_TRITON_K, int8_topk, quantize_int8
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import sampled_softmax_loss
from omnikern.ops.reference import NEG_MODES, count_min_multipliers_ref
from omnikern.ops.sketch import COUNT_DTYPES, count_min_query, count_min_update_

# Query counts that reach each query block of the top-k kernel (int8._topk_tiles: 16, 32, 64).
_TOPK_QUERY_BLOCKS = (16, 32, 64)
# Rows of the tiny inputs: more than one, so nothing is specialised on a count of 1 by accident.
_ROWS = 3
# (queries, random negatives) of the loss warm-up: both classes of B and of N (see warmup).
_LOSS_SHAPES = [(b, r) for b in (16, 17) for r in (15, 16, 17)]


def warmup(
    device: torch.device | str,
    *,
    dim: int,
    dtype: torch.dtype = torch.float32,
    l2norm: bool = False,
    neg_modes: Sequence[str] = (),
    loss_dims: Sequence[int] | None = None,
    loss_backward: bool = True,
    topk_k: Sequence[int] = (),
    topk_dims: Sequence[int | None] = (None,),
    topk_queries: int = 1,
    topk_exclude: bool = False,
    sketch: tuple[int, int] | None = None,
    sketch_dtype: torch.dtype = torch.int64,
) -> list[str]:
    """Runs each requested op once on tiny inputs on ``device``, so that its kernels are compiled.

    Call it once at start, with the shapes the job will use (see the module docstring for what
    each argument covers). Example, a trainer and a server::

        warmup("cuda:0", dim=256, dtype=torch.bfloat16, l2norm=True, neg_modes=["mixed_sum"], sketch=(2, 2**20))
        warmup("cuda:0", dim=256, topk_k=[10, 100], topk_queries=64)

    Returns:
        One label per op call made, e.g. ``"int8_topk k=10 dim=None queries=16"``.

    Raises:
        TypeError: ``dtype`` is not a floating dtype, or ``sketch_dtype`` not int32/int64.
        ValueError: ``dim``, ``neg_modes``, ``topk_k``, ``topk_dims``, ``topk_queries`` or
            ``sketch`` out of range (the ops' own checks name the rest).
    """
    device = torch.device(device)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    check_int("dim", dim, 1)
    for mode in neg_modes:
        if mode not in NEG_MODES:
            raise ValueError(f"neg_modes must hold values of {NEG_MODES}, got {mode!r}")
    for k in topk_k:
        check_int("topk_k", k, 1)
    for d in topk_dims:
        check_int("topk_dims", d, 1, dim, none_ok=True)
    check_int("topk_queries", topk_queries, 1)
    if sketch is not None and (len(sketch) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sketch)):
        raise ValueError(f"sketch must be None or (depth, width) with ints >= 1, got {sketch!r}")
    if sketch_dtype not in COUNT_DTYPES:
        raise TypeError(f"sketch_dtype must be torch.int32 or torch.int64, got {sketch_dtype}")

    done: list[str] = []
    gen = torch.Generator().manual_seed(0)

    def rand(rows: int, cols: int = dim, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen).to(device=device, dtype=dt)

    if l2norm:
        x = rand(_ROWS).requires_grad_()
        l2_normalize(x).sum().backward()
        done.append(f"l2_normalize {dtype} dim={dim}")

    for mode in neg_modes:
        # B and N are specialised in the loss kernels (see loss.py): batches of 16 and 17 queries with
        # 15 to 17 negatives reach every (B, N) pair of classes, however a mode forms N from them.
        for rows, negatives in _LOSS_SHAPES if mode != "in_batch" else [(16, 0), (17, 0)]:
            query, pos = (rand(rows).requires_grad_() for _ in range(2))
            neg = rand(negatives).requires_grad_() if negatives else None
            log_scale = torch.zeros((), device=device, requires_grad=loss_backward)
            ids = torch.arange(rows, device=device)
            total = sampled_softmax_loss(
                query, pos, neg, log_scale=log_scale, query_ids=ids, pos_ids=ids + rows,
                neg_ids=None if neg is None else torch.arange(negatives, device=device) + 2 * rows,
                neg_mode=mode, dims=loss_dims,
            )  # fmt: skip
            if loss_backward:
                total.backward()
        done.append(f"sampled_softmax_loss {dtype} dim={dim} {mode} dims={loss_dims}")

    if topk_k:
        # The corpus holds max(k) rows, so the padded k (a constexpr) is the one a large corpus gets.
        corpus = rand(max(max(topk_k), _ROWS), dt=torch.float32)
        codes, scales = quantize_int8(corpus)
        blocks = [q for q in _TOPK_QUERY_BLOCKS if q < topk_queries] + [min(topk_queries, _TOPK_QUERY_BLOCKS[-1])]
        for queries in sorted(set(blocks)):
            query = rand(queries, dt=torch.float32)
            exclude = torch.zeros(queries, dtype=torch.int64, device=device) if topk_exclude else None
            for k in topk_k:
                if k > MAX_TRITON_K and _triton.kernel_supported(codes):
                    continue  # the torch path: nothing to compile
                for d in topk_dims:
                    int8_topk(query, codes, scales, k, d, exclude)
                    done.append(f"int8_topk k={k} dim={d} queries={queries}")

    if sketch is not None:
        depth, width = sketch
        # The kernels index a table of any width the same way: a tiny table of the same class
        # (width == 1, a multiple of 16, or other) compiles the same code.
        tiny_width = width if width == 1 else (16 if width % 16 == 0 else 17)
        counts = torch.zeros((depth, tiny_width), dtype=sketch_dtype, device=device)
        multipliers = torch.tensor(count_min_multipliers_ref(depth), dtype=torch.int64, device=device)
        sketch_ids = torch.arange(_ROWS, device=device)
        count_min_update_(counts, sketch_ids, multipliers)
        count_min_query(counts, sketch_ids, multipliers)
        done.append(f"count_min depth={depth} width={width} {sketch_dtype}")

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return done
