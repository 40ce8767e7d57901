"""Count-min sketch: torch path and Triton kernels (interpreter on CPU) against the Python reference."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import DEVICE, given, settings, st

from omnikern import CountMinSketch
from omnikern.ops.reference import CountMinSketchRef, count_min_bucket_ref, count_min_multipliers_ref
from omnikern.ops.sketch import count_min_buckets, count_min_query, count_min_update_

IMPLS = ["triton", "torch"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Ids where wrap-around and the arithmetic shift matter: signs, int64 extremes, powers of two,
# and values whose product with a multiplier overflows many times.
ADVERSARIAL = [
    0, 1, -1, 2, -2, 17, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1,
    2**31 - 1, 2**31, -(2**31), 2**32, -(2**32), 2**62, -(2**62), 2**63 - 2**32, 123456789012345678,
    -987654321987654321, 0x5555555555555555, -0x5555555555555556,
]  # fmt: skip


def test_multipliers_follow_the_spec_seed():
    import random

    rng = random.Random(19980115)
    assert count_min_multipliers_ref(3) == [rng.randint(1, 2**63 - 1) for _ in range(3)]
    sketch = CountMinSketch(width=8, depth=3)
    assert sketch.multipliers.tolist() == count_min_multipliers_ref(3)


def test_reference_hash_by_hand():
    """The spec's hash written out once more with explicit 64-bit arithmetic, for one id."""
    a = count_min_multipliers_ref(1)[0]
    x = -5
    h = (x * a) % 2**64  # as unsigned
    h = h - 2**64 if h >= 2**63 else h
    h = (h + (h >> 32)) % 2**64
    h = h - 2**64 if h >= 2**63 else h
    assert count_min_bucket_ref(x, a, 1000) == (h & (2**31 - 1)) % 1000


@pytest.mark.parametrize("width", [1, 7, 1 << 16])
def test_buckets_bit_identical_to_python(width):
    gen = torch.Generator().manual_seed(0)
    random_ids = torch.randint(INT64_MIN, INT64_MAX, (200,), generator=gen, dtype=torch.int64).tolist()
    ids = ADVERSARIAL + random_ids
    multipliers = count_min_multipliers_ref(4)
    got = count_min_buckets(torch.tensor(ids), torch.tensor(multipliers), width)
    want = [[count_min_bucket_ref(x, a, width) for x in ids] for a in multipliers]
    assert got.tolist() == want


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


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("count_dtype", [torch.int64, torch.int32])
def test_update_and_query_match_reference(impl, count_dtype):
    """Random and adversarial ids with many duplicates, over several updates, on a narrow table
    (collisions make the min matter)."""
    gen = torch.Generator().manual_seed(1)
    width, depth = 97, 3
    ref = CountMinSketchRef(width, depth)
    sketch = CountMinSketch(width=width, depth=depth, count_dtype=count_dtype, impl=impl).to(DEVICE)
    for step in range(3):
        batch = ADVERSARIAL * (step + 1) + torch.randint(-50, 50, (300,), generator=gen).tolist()
        ref.update(batch)
        sketch.update(torch.tensor(batch, device=DEVICE))
        assert sketch.counts.tolist() == ref.counts
        assert int(sketch.num_seen) == ref.num_seen
        probe = ADVERSARIAL + list(range(-60, 60)) + [10**15]
        got = sketch.query(torch.tensor(probe, device=DEVICE))
        assert got.dtype == count_dtype
        assert got.tolist() == ref.query(probe)


@pytest.mark.parametrize("impl", IMPLS)
def test_more_ids_than_one_block(impl):
    """The kernels use 1024-id blocks: 2500 ids (a partial last block), all duplicates of 3 ids."""
    ids = torch.tensor([5, -5, INT64_MIN], device=DEVICE).repeat(834)[:2500]
    sketch = CountMinSketch(width=64, depth=2, impl=impl).to(DEVICE)
    sketch.update(ids)
    ref = CountMinSketchRef(64, 2)
    ref.update(ids.tolist())
    assert sketch.counts.tolist() == ref.counts
    assert sketch.query(ids[:3]).tolist() == ref.query([5, -5, INT64_MIN])


def test_never_undercounts():
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 500, (3000,), generator=gen)
    sketch = CountMinSketch(width=128, depth=2, impl="torch")
    sketch.update(ids)
    true = torch.bincount(ids, minlength=500)
    est = sketch.query(torch.arange(500))
    assert (est >= true).all()
    assert (est > true).any()  # 500 ids in 128 buckets: collisions exist


def test_empty_update_and_query():
    sketch = CountMinSketch(width=16, depth=2)
    sketch.update(torch.empty(0, dtype=torch.int64))
    assert int(sketch.num_seen) == 0
    assert sketch.query(torch.empty(0, dtype=torch.int64)).shape == (0,)


def test_state_dict_round_trip():
    sketch = CountMinSketch(width=50, depth=2, count_dtype=torch.int32)
    sketch.update(torch.tensor(ADVERSARIAL))
    buffer = io.BytesIO()
    torch.save(sketch.state_dict(), buffer)
    buffer.seek(0)
    restored = CountMinSketch(width=50, depth=2, count_dtype=torch.int32)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.counts, sketch.counts) and restored.counts.dtype == torch.int32
    assert int(restored.num_seen) == len(ADVERSARIAL)
    probe = torch.tensor(ADVERSARIAL)
    assert torch.equal(restored.query(probe), sketch.query(probe))
    restored.reset()
    assert int(restored.counts.sum()) == 0 and int(restored.num_seen) == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(width=0), ValueError, "width must be an int >= 1"),
        (dict(depth=-1), ValueError, "depth must be an int >= 1"),
        (dict(width=2**30, depth=2), ValueError, "width · depth must be below 2"),
        (dict(count_dtype=torch.float32), TypeError, "count_dtype must be"),
        (dict(impl="gpu"), ValueError, "impl must be"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        CountMinSketch(**kwargs)


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (torch.zeros(3, dtype=torch.int32), TypeError, "ids must be int64"),
        (torch.zeros(3), TypeError, "ids must be int64"),
        (torch.zeros(2, 2, dtype=torch.int64), ValueError, "ids must be 1-D"),
        ([1, 2], TypeError, "ids must be a torch.Tensor"),
        (torch.zeros(3, dtype=torch.int64, device="meta"), ValueError, "ids must be on the sketch's device"),
    ],
)
def test_bad_ids(ids, error, match):
    sketch = CountMinSketch(width=8, depth=2, impl="torch")
    with pytest.raises(error, match=match):
        sketch.update(ids)
    with pytest.raises(error, match=match):
        count_min_query(sketch.counts, ids, sketch.multipliers)
    with pytest.raises(error, match=match):
        count_min_update_(sketch.counts, ids, sketch.multipliers)
