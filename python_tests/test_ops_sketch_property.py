"""Count-min buckets for any int64 ids drawn by hypothesis, against the plain-Python hash.

A module of its own so that the sketch kernel tests run where hypothesis (the ``test`` extra) is
not installed, as on the GPU machine's image.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis (the `test` extra) draws the inputs")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omnikern.ops.reference import count_min_bucket_ref, count_min_multipliers_ref  # noqa: E402
from omnikern.ops.sketch import count_min_buckets  # noqa: E402

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@settings(max_examples=50, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=INT64_MIN, max_value=INT64_MAX), min_size=1, max_size=40),
    width=st.integers(min_value=1, max_value=2**31 - 1),
)
def test_buckets_property(ids, width):
    """Any int64 ids, any width below 2^31: torch buckets equal the Python ones."""
    multipliers = count_min_multipliers_ref(2)
    got = count_min_buckets(torch.tensor(ids, dtype=torch.int64), torch.tensor(multipliers), width)
    assert got.tolist() == [[count_min_bucket_ref(x, a, width) for x in ids] for a in multipliers]
