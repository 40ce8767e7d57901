"""int8 top-k on random shapes drawn by hypothesis: the C++ and torch paths against ``reference.py``.

A module of its own so that the int8 kernel tests run where hypothesis (the ``test`` extra) is not
installed, as on the GPU machine's image.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis (the `test` extra) draws the inputs")
from helpers import assert_topk_matches  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omnikern.ops.int8 import int8_topk  # noqa: E402
from omnikern.ops.reference import quantize_int8_ref  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    Q=st.integers(1, 9),
    N=st.integers(1, 300),
    D=st.integers(1, 70),
    extra_k=st.integers(-300, 5),
    prefix=st.booleans(),
    spread=st.sampled_from([1.0, 0.01]),
    seed=st.integers(0, 2**16),
)
def test_topk_cpp_and_torch_match_reference_property(Q, N, D, extra_k, prefix, spread, seed):
    """Random shapes, k from 1 to N + 5, prefixes, exclusions; `spread` 0.01 makes many codes
    equal (ties). The C++ and torch paths agree with the reference and with each other exactly."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    x = torch.where(torch.rand(N, D, generator=gen) < 0.5, x * spread, x)
    codes, scales = quantize_int8_ref(x / x.norm(dim=1, keepdim=True).clamp_min(1e-30))
    query = torch.randn(Q, D, generator=gen)
    query = query / query.norm(dim=1, keepdim=True)
    k = max(1, N + extra_k)
    dim = int(torch.randint(1, D + 1, (1,), generator=gen)) if prefix else None
    exclude = torch.randint(-1, N, (Q,), generator=gen)
    results = {}
    for impl in ("cpp", "torch"):
        scores, indices = int8_topk(query, codes, scales, k, dim, exclude, impl=impl, num_threads=2)
        assert_topk_matches(scores, indices, query, codes, scales, k, dim, exclude, name=impl)
        results[impl] = (scores, indices)
    # Both compute the same float32 operations: bit-identical, not just close.
    assert torch.equal(results["cpp"][0], results["torch"][0]) and torch.equal(results["cpp"][1], results["torch"][1])
