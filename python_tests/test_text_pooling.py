"""omnikern.text.pool (C++) against the plain-torch pool_ref, numpy and torch inputs alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close_verbose

from omnikern import _C
from omnikern.text import pool
from omnikern.text.reference import pool_ref

ALL_MODES = ("cls", "mean", "mean_sqrt", "max")

# (dtype, atol, rtol): float16 inputs are widened exactly, so both sides sum the same float32 values
# and differ only by summation order.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-5, 1e-5)]


def _inputs(B, L, H, dtype=torch.float32, mask_dtype=torch.int64, p_keep=0.7):
    x = torch.randn(B, L, H).to(dtype)
    mask = (torch.rand(B, L) < p_keep).to(mask_dtype)
    return x, mask


@pytest.mark.parametrize(
    "shape",
    [
        (4, 8, 16),
        (3, 17, 33),  # odd sizes everywhere
        (1, 1, 5),  # L = 1
        (9, 64, 384),  # the MiniLM hidden size
    ],
)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("mean_sqrt",), ("max",), ("cls", "max", "mean", "mean_sqrt")])
def test_matches_reference(shape, dtype, atol, rtol, modes):
    x, mask = _inputs(*shape, dtype=dtype)
    want = pool_ref(x, mask, modes)
    got_torch = pool(x, mask, modes)
    got_numpy = pool(x.numpy(), mask.numpy(), modes)
    assert isinstance(got_torch, torch.Tensor) and got_torch.dtype == torch.float32
    assert isinstance(got_numpy, np.ndarray) and got_numpy.dtype == np.float32
    assert got_numpy.shape == (shape[0], shape[2] * len(modes))
    assert_close_verbose(got_torch, want, atol=atol, rtol=rtol, name=f"pool{modes}")
    np.testing.assert_array_equal(got_numpy, got_torch.numpy())


@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_mask_dtypes_agree(mask_dtype):
    x, mask = _inputs(5, 7, 9)
    want = pool(x, mask, ALL_MODES)
    got = pool(x, mask.to(mask_dtype), ALL_MODES)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_nonbinary_mask_means_attend():
    """Any nonzero mask value attends (weight 1): a mask of 2s equals a mask of 1s."""
    x, mask = _inputs(3, 6, 4)
    torch.testing.assert_close(pool(x, mask * 2, ALL_MODES), pool(x, mask, ALL_MODES), atol=0, rtol=0)


def test_order_of_modes_is_the_concatenation_order():
    x, mask = _inputs(2, 5, 3)
    both = pool(x, mask, ("max", "cls"))
    torch.testing.assert_close(both[:, :3], pool(x, mask, "max"), atol=0, rtol=0)
    torch.testing.assert_close(both[:, 3:], pool(x, mask, "cls"), atol=0, rtol=0)


def test_fully_masked_rows_give_zeros_and_cls_ignores_mask():
    """A row with no attended position has no mean or max: all three are defined as 0 (not NaN, not -inf)."""
    x, mask = _inputs(4, 5, 6)
    mask[1] = 0
    mask[3] = 0
    got = pool(x, mask, ALL_MODES)
    want = pool_ref(x, mask, ALL_MODES)
    assert_close_verbose(got, want, atol=1e-5, rtol=1e-5)
    for row in (1, 3):
        torch.testing.assert_close(got[row, :6], x[row, 0])
        assert torch.all(got[row, 6:] == 0)
    assert torch.isfinite(got).all()


def test_nan_in_masked_positions_is_ignored():
    """Masked positions are skipped, not multiplied by 0: NaN/inf padding cannot leak (NaN * 0 = NaN)."""
    x, mask = _inputs(3, 6, 4)
    mask[:, 0] = 1
    mask[:, -1] = 0
    x[:, -1] = float("nan")
    x[0, -2] = float("inf") if mask[0, -2] == 0 else x[0, -2]
    got = pool(x, mask, ALL_MODES)
    assert torch.isfinite(got).all()
    assert_close_verbose(got, pool_ref(x, mask, ALL_MODES), atol=1e-5, rtol=1e-5)


def test_nan_in_attended_position_propagates():
    x, mask = _inputs(2, 4, 3)
    mask[:] = 1
    x[0, 2, 1] = float("nan")
    got = pool(x, mask, ("mean", "max"))
    assert torch.isnan(got[0, [1, 4]]).all()
    assert not torch.isnan(got[0, [0, 2, 3, 5]]).any()
    assert not torch.isnan(got[1]).any()
    assert_close_verbose(got, pool_ref(x, mask, ("mean", "max")), atol=1e-5, rtol=1e-5)


def test_max_of_all_negative_values():
    """The max accumulator starts at -inf, not 0: all-negative rows keep their (negative) maximum."""
    x = -torch.rand(2, 5, 4) - 1.0
    mask = torch.ones(2, 5, dtype=torch.int64)
    got = pool(x, mask, "max")
    assert (got < -1.0).all()
    torch.testing.assert_close(got, x.amax(dim=1), atol=0, rtol=0)


def test_float16_conversion_is_exact_for_every_bit_pattern():
    """Every one of the 65,536 float16 values (subnormals, inf, NaN) widens exactly: cls of L = 1."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = bits.view(np.float16).reshape(1, 1, -1)
    got = pool(x, np.ones((1, 1), dtype=np.int64), "cls")
    np.testing.assert_array_equal(got.reshape(-1), x.astype(np.float32).reshape(-1))


def test_empty_batch_and_zero_hidden():
    out = pool(np.zeros((0, 4, 8), np.float32), np.zeros((0, 4), np.int64), ("mean", "max"))
    assert out.shape == (0, 16) and out.dtype == np.float32
    out = pool(torch.zeros(3, 4, 0), torch.ones(3, 4, dtype=torch.int64), ("cls", "mean"))
    assert tuple(out.shape) == (3, 0)


def test_non_contiguous_inputs_are_copied():
    """Transposed / strided inputs are copied to C order by the wrapper, then pooled as usual."""
    base = torch.randn(6, 10, 8)
    x = base.transpose(1, 2)[:, :, ::2]  # (6, 8, 5), not contiguous
    mask = torch.randint(0, 2, (8, 6), dtype=torch.int64).t()  # (6, 8), not contiguous
    assert not x.is_contiguous() and not mask.is_contiguous()
    got = pool(x, mask, ALL_MODES)
    assert_close_verbose(got, pool_ref(x, mask, ALL_MODES), atol=1e-5, rtol=1e-5)
    got_np = pool(np.asfortranarray(x.numpy()), np.asfortranarray(mask.numpy()), ALL_MODES)
    np.testing.assert_array_equal(got_np, got.numpy())


def test_big_endian_input_is_converted():
    x, mask = _inputs(2, 3, 4)
    x_be = x.numpy().astype(">f4")
    np.testing.assert_array_equal(pool(x_be, mask.numpy(), "mean"), pool(x.numpy(), mask.numpy(), "mean"))


def test_bfloat16_torch_input_is_widened():
    x, mask = _inputs(3, 5, 7, dtype=torch.bfloat16)
    assert_close_verbose(pool(x, mask, ALL_MODES), pool_ref(x, mask, ALL_MODES), atol=1e-5, rtol=1e-5)


def test_thread_count_does_not_change_the_result():
    # L * H = 24,640 elements per row: pool() gives each thread >= 64k elements, so 3 rows per thread.
    x, mask = _inputs(37, 64, 385)
    want = pool(x, mask, ALL_MODES, num_threads=1)
    for threads in (0, 2, 3, 16):
        torch.testing.assert_close(pool(x, mask, ALL_MODES, num_threads=threads), want, atol=0, rtol=0)


def test_reference_gradient_flows_but_pool_refuses_grad():
    x, mask = _inputs(2, 3, 4)
    x.requires_grad_(True)
    pool_ref(x, mask, ("mean", "max")).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="token_embeddings"):
        pool(x, mask)
    with torch.no_grad():
        assert pool(x, mask).shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"token_embeddings": np.zeros((2, 3, 4), np.float64)}, TypeError, "token_embeddings"),
        ({"token_embeddings": np.zeros((2, 3, 4), np.int32)}, TypeError, "token_embeddings"),
        ({"token_embeddings": [[[1.0]]]}, TypeError, "token_embeddings"),
        ({"token_embeddings": np.zeros((2, 3), np.float32)}, ValueError, "token_embeddings"),
        ({"token_embeddings": np.zeros((2, 0, 4), np.float32), "attention_mask": np.zeros((2, 0), np.int64)},
         ValueError, "token_embeddings"),
        ({"attention_mask": np.zeros((2, 3), np.float32)}, TypeError, "attention_mask"),
        ({"attention_mask": np.zeros((2, 4), np.int64)}, ValueError, "attention_mask"),
        ({"attention_mask": np.zeros((3, 3), np.int64)}, ValueError, "attention_mask"),
        ({"attention_mask": np.zeros((2, 3, 1), np.int64)}, ValueError, "attention_mask"),
        ({"modes": ()}, ValueError, "modes"),
        ({"modes": ("mean", "sum")}, ValueError, "modes"),
        ({"num_threads": -1}, ValueError, "num_threads"),
        ({"num_threads": 1.5}, ValueError, "num_threads"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, error, match):
    args = {
        "token_embeddings": np.zeros((2, 3, 4), np.float32),
        "attention_mask": np.ones((2, 3), np.int64),
        "modes": ("mean",),
        "num_threads": 0,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pool(**args)


def test_binding_checks_its_own_inputs():
    """The raw _C.pool (used directly by the Triton python backend) validates too, never crashes."""
    x = np.zeros((2, 3, 4), np.float32)
    mask = np.ones((2, 3), np.int64)
    with pytest.raises(ValueError, match="token_embeddings"):
        _C.pool(np.asfortranarray(np.zeros((2, 3, 4), np.float32)), mask, ["mean"], 0)
    with pytest.raises(ValueError, match="attention_mask"):
        _C.pool(x, mask[:, :2], ["mean"], 0)
    with pytest.raises(TypeError, match="token_embeddings"):
        _C.pool(x.astype(np.float64), mask, ["mean"], 0)
    with pytest.raises(TypeError, match="attention_mask"):
        _C.pool(x, mask.astype(np.int16), ["mean"], 0)
    with pytest.raises(ValueError, match="modes"):
        _C.pool(x, mask, ["median"], 0)
    with pytest.raises(ValueError, match="num_threads"):
        _C.pool(x, mask, ["mean"], -2)
    np.testing.assert_array_equal(_C.pool(x, mask, ["mean"], 0), np.zeros((2, 4), np.float32))
