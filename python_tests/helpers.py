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


def assert_same_answer(index, embedding, scores, ids, expected_scores, expected_ids, eps: float, k: int | None = None) -> None:
    """A search answer agrees with the in-process one for the in-process ``embedding`` (Q, D):
    ids equal up to swaps among near-ties, scores within the bound that a query move of ``eps``
    per coordinate allows (:mod:`omnikern.parity`). For answers from another process or runtime,
    whose embeddings differ from the in-process ones by rounding (``eps`` is the embedding
    tolerance the tests assert elsewhere)."""
    import numpy as np

    from omnikern.parity import compare_topk, score_tolerance

    tol = score_tolerance(index, np.asarray(embedding, dtype=np.float64), eps)
    result = compare_topk(expected_scores, expected_ids, scores, ids, tol)
    assert result.ok, result.summary()


def assert_group_gone(pgid: int) -> None:
    """No process of the server's process group is left (the server and its python-backend stubs)."""
    from omnikern.serve.server import group_processes

    leftover = group_processes(pgid)
    assert leftover == [], f"processes left behind in group {pgid}: {leftover}"


def running_server(repo, startup_timeout_s: float):
    """Starts the real tritonserver on ``repo``, yields it, and always stops it, checking that no
    process of its group is left behind. For module-scoped fixtures: ``yield from running_server(...)``."""
    from omnikern.serve import TritonServer

    triton = TritonServer(repo, startup_timeout_s=startup_timeout_s, stop_timeout_s=5)
    try:
        triton.start()
        yield triton
    finally:
        pgid = triton.pid
        triton.stop()
        if pgid is not None:
            assert_group_gone(pgid)


def minilm_tower_and_index(directory, rows: int):
    """The serving tests' model: the MiniLM query tower with a seeded projection (zero-shot) and an
    Int8Index of ``rows`` seeded random unit vectors (ids ``i·1000 + 7``) saved as
    ``directory/index.safetensors``. Returns ``(tower, index)``."""
    from omnikern import Int8Index
    from omnikern.models.encoders import QueryTower, minilm_path
    from omnikern.text.wordpiece import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.from_tokenizer_json(minilm_path() / "tokenizer.json")
    torch.manual_seed(0)
    tower = QueryTower.from_pretrained(tokenizer=tokenizer).eval()
    index = Int8Index(tower.output_dim)
    generator = torch.Generator().manual_seed(1)
    index.add(torch.nn.functional.normalize(torch.randn(rows, tower.output_dim, generator=generator), dim=1),
              torch.arange(rows, dtype=torch.int64) * 1000 + 7)
    index.save(directory / "index.safetensors")
    return tower, index
