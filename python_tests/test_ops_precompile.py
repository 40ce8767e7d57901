"""omnikern.ops.warmup (omnikern/ops/precompile.py): tiny calls that launch every kernel in the specialisation the real shapes get.

Under the interpreter nothing is compiled, so the tests compare what would be: every launch's
constexprs, pointer dtypes and the class (== 1, multiple of 16, other) of each specialised integer
argument, for the warm-up against calls at other (real) sizes. Each real launch must have been
seen in the warm-up.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import DEVICE

from omnikern.ops import int8, l2norm, loss, sketch, warmup
from omnikern.ops.int8 import int8_topk, quantize_int8
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import sampled_softmax_loss
from omnikern.ops.reference import count_min_multipliers_ref
from omnikern.ops.sketch import count_min_query, count_min_update_

# The integer arguments each kernel leaves unspecialised (do_not_specialize): free to differ.
UNSPECIALISED = {
    "_l2norm_fwd_kernel": {"B"},
    "_l2norm_bwd_kernel": {"B"},
    "_int8_quantize_kernel": {"N"},
    "_int8_topk_kernel": {"Q", "N"},
    "_lse_fwd_kernel": set(),  # B and N specialised: the warm-up compiles their classes
    "_lse_bwd_kernel": set(),
    "_sketch_update_kernel": {"n", "depth"},
    "_sketch_query_kernel": {"n", "depth"},
}
MODULES = {l2norm: ["_l2norm_fwd_kernel", "_l2norm_bwd_kernel"], int8: ["_int8_quantize_kernel", "_int8_topk_kernel"],
           loss: ["_lse_fwd_kernel", "_lse_bwd_kernel"], sketch: ["_sketch_update_kernel", "_sketch_query_kernel"]}


def _int_class(value: int) -> str:
    return "1" if value == 1 else ("16k" if value % 16 == 0 else "other")


@pytest.fixture
def launches(monkeypatch):
    """The specialisation key of every kernel launch, in a list the test can clear."""
    seen: list[tuple] = []

    def spy(name, kernel):
        params = list(inspect.signature(kernel.fn).parameters)

        class Spy:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    key = []
                    for pname, arg in zip(params, args):
                        if isinstance(arg, torch.Tensor):
                            key.append((pname, str(arg.dtype)))
                        elif isinstance(arg, bool) or not isinstance(arg, int):
                            key.append((pname, type(arg).__name__))
                        elif pname not in UNSPECIALISED[name]:
                            key.append((pname, _int_class(arg)))
                    seen.append((name, tuple(key), tuple(sorted(kwargs.items()))))
                    return kernel[grid](*args, **kwargs)

                return run

        return Spy()

    for module, names in MODULES.items():
        for name in names:
            monkeypatch.setattr(module, name, spy(name, getattr(module, name)))
    return seen


def test_training_warmup_covers_every_launch_of_real_batches(launches):
    dim = 48
    labels = warmup(DEVICE, dim=dim, l2norm=True, neg_modes=["mixed_sum", "in_batch"], loss_dims=[16, 48], sketch=(2, 64))
    assert labels == [
        f"l2_normalize {torch.float32} dim=48",
        f"sampled_softmax_loss {torch.float32} dim=48 mixed_sum dims=[16, 48]",
        f"sampled_softmax_loss {torch.float32} dim=48 in_batch dims=[16, 48]",
        f"count_min depth=2 width=64 {torch.int64}",
    ]
    warm = set(launches)
    assert {name for name, *_ in warm} == {"_l2norm_fwd_kernel", "_l2norm_bwd_kernel", "_lse_fwd_kernel", "_lse_bwd_kernel",
                                           "_sketch_update_kernel", "_sketch_query_kernel"}
    launches.clear()

    g = torch.Generator().manual_seed(1)
    for B, R in ((37, 21), (2, 3), (32, 64), (48, 7)):  # exactly 1 query or negative is not covered (warmup docstring)
        x = torch.randn(B, dim, generator=g).to(DEVICE).requires_grad_()
        l2_normalize(x).sum().backward()
        q, p, n = (torch.randn(rows, dim, generator=g).to(DEVICE).requires_grad_() for rows in (B, B, R))
        t = torch.tensor(0.3, device=DEVICE, requires_grad=True)
        ids = torch.arange(B, device=DEVICE)
        for mode in ("mixed_sum", "in_batch"):
            neg = None if mode == "in_batch" else n
            neg_ids = None if mode == "in_batch" else torch.arange(R, device=DEVICE) + 1000
            sampled_softmax_loss(q, p, neg, log_scale=t, query_ids=ids, pos_ids=ids + 500, neg_ids=neg_ids,
                                 neg_mode=mode, dims=[16, 48]).backward()
        counts = torch.zeros((2, 64), dtype=torch.int64, device=DEVICE)
        mult = torch.tensor(count_min_multipliers_ref(2), dtype=torch.int64, device=DEVICE)
        batch_ids = torch.randint(0, 10**6, (B * 3,), generator=g).to(DEVICE)
        count_min_update_(counts, batch_ids, mult)
        assert bool((count_min_query(counts, batch_ids, mult) >= 1).all())
    real = set(launches)
    assert len(real) >= 6
    assert real <= warm, f"launches the warm-up missed: {sorted(real - warm)}"


def test_serving_warmup_covers_every_query_block_and_k(launches):
    dim = 40
    labels = warmup(DEVICE, dim=dim, topk_k=[3, 10], topk_dims=[None, 24], topk_queries=40)
    # Query counts 16, 32 and 40 reach the three query blocks (16, 32, 64).
    assert len(labels) == 3 * 2 * 2 and labels[0] == "int8_topk k=3 dim=None queries=16"
    assert labels[-1] == "int8_topk k=10 dim=24 queries=40"
    warm = set(launches)
    launches.clear()

    g = torch.Generator().manual_seed(2)
    codes, scales = quantize_int8(torch.randn(100, dim, generator=g).to(DEVICE))
    for Q in (1, 17, 40):
        query = torch.randn(Q, dim, generator=g).to(DEVICE)
        for k in (3, 10):
            for d in (None, 24):
                scores, ids = int8_topk(query, codes, scales, k, d)
                assert ids.shape == (Q, k) and bool((ids >= 0).all())
    real = set(launches)
    assert real <= warm, f"launches the warm-up missed: {sorted(real - warm)}"
    assert len({launch for launch in real if launch[0] == "_int8_topk_kernel"}) == 3 * 2 * 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dim=0), ValueError, "dim must be an int >= 1, got 0"),
        (dict(dim=8, dtype=torch.int8), TypeError, "dtype must be float16, bfloat16, float32 or float64, got torch.int8"),
        (dict(dim=8, neg_modes=["all"]), ValueError, "neg_modes must hold values of"),
        (dict(dim=8, topk_k=[0]), ValueError, "topk_k must be an int >= 1, got 0"),
        (dict(dim=8, topk_k=[1], topk_dims=[9]), ValueError, r"topk_dims must be an int in \[1, 8\] or None, got 9"),
        (dict(dim=8, topk_k=[1], topk_queries=0), ValueError, "topk_queries must be an int >= 1, got 0"),
        (dict(dim=8, sketch=(2,)), ValueError, r"sketch must be None or \(depth, width\)"),
        (dict(dim=8, sketch=(2, 8), sketch_dtype=torch.int16), TypeError, "sketch_dtype must be torch.int32 or torch.int64"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        warmup(DEVICE, **kwargs)


def test_nothing_requested_runs_nothing(launches):
    assert warmup(DEVICE, dim=8) == []
    assert launches == []
