"""Shared assertions for the tests."""

from __future__ import annotations

import torch


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> None:
    """``torch.testing.assert_close`` that also prints the worst mismatches (index, got, want)."""
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    except AssertionError as error:
        diff = (actual.double() - expected.double()).abs().flatten()
        worst = torch.topk(diff.nan_to_num(float("inf")), k=min(5, diff.numel())).indices
        rows = [
            f"  [{tuple(int(v) for v in torch.unravel_index(i, actual.shape))}] "
            f"got {actual.flatten()[i].item():.6g} want {expected.flatten()[i].item():.6g}"
            for i in worst
        ]
        raise AssertionError(f"{name} mismatch\n" + "\n".join(rows) + f"\n{error}") from None


def assert_no_worse_than_torch(
    actual: torch.Tensor, torch_result: torch.Tensor, truth: torch.Tensor, tol: float, name: str = ""
) -> None:
    """The low-precision rule: |actual − truth| ≤ |torch − truth| + tol, elementwise."""
    err = (actual.double() - truth.double()).abs()
    bound = (torch_result.double() - truth.double()).abs() + tol
    bad = err > bound
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())} elements worse than torch + {tol}; first at {idx}: "
            f"got {actual[tuple(idx)].item():.6g}, torch {torch_result[tuple(idx)].item():.6g}, "
            f"truth {truth[tuple(idx)].item():.6g}"
        )
