"""Shared assertions for the tests."""

from __future__ import annotations

import functools
import unicodedata

import torch

from omnikern.ops.reference import int8_topk_ref

# int8 top-k: a score may differ from the reference's by this much (float32 rounding of the scale products).
SCORE_TOL = 1e-6


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
    from omnikern.models.towers import QueryTower, minilm_path
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


def assert_topk_matches(scores, indices, query, codes, scales, k, dim=None, exclude=None, name=""):
    """Rank by rank, the score equals the reference's within SCORE_TOL; an index may differ from
    the reference's only if its own reference score is within SCORE_TOL of that rank's score."""
    want_s, want_i = int8_topk_ref(query.cpu(), codes.cpu(), scales.cpu(), k, dim, None if exclude is None else exclude.cpu())
    scores, indices = scores.cpu(), indices.cpu()
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    assert scores.shape == want_s.shape == indices.shape
    finite = torch.isfinite(want_s)
    assert torch.equal(torch.isfinite(scores), finite), f"{name}: padding differs"
    assert torch.equal(indices[~finite], want_i[~finite]), f"{name}: padding indices differ"
    err = (scores[finite].double() - want_s[finite].double()).abs()
    assert err.max().item() <= SCORE_TOL if err.numel() else True, f"{name}: score error {err.max().item():.3g}"
    # Full reference score table to judge swaps.
    N = codes.shape[0]
    all_s, all_i = int8_topk_ref(query.cpu(), codes.cpu(), scales.cpu(), N, dim, None if exclude is None else exclude.cpu())
    table = torch.full((query.shape[0], N), float("-inf"), dtype=torch.float64)
    valid = all_i >= 0
    table[torch.nonzero(valid)[:, 0], all_i[valid]] = all_s[valid].double()
    for q, j in torch.nonzero(indices != want_i).tolist():
        got = indices[q, j].item()
        assert got >= 0, f"{name}: query {q} rank {j}: got padding, want {want_i[q, j].item()}"
        assert abs(table[q, got].item() - want_s[q, j].item()) <= SCORE_TOL, (
            f"{name}: query {q} rank {j}: index {got} (score {table[q, got].item():.9g}) instead of "
            f"{want_i[q, j].item()} (score {want_s[q, j].item():.9g})"
        )
    for q in range(indices.shape[0]):
        row = indices[q][indices[q] >= 0]
        assert row.unique().numel() == row.numel(), f"{name}: duplicate indices in query {q}"
        if exclude is not None and exclude[q] >= 0:
            assert exclude[q].item() not in row.tolist(), f"{name}: excluded row returned for query {q}"


@functools.cache
def ngram_python_disagrees() -> frozenset[str]:
    """Code points whose n-gram treatment differs between Python's unicodedata (the reference) and
    the C++ tables: assigned after Python's version (their combining classes differ too),
    NFKC_Casefold (17.0 vs Python's version) or punctuation (8.0 P* vs Python's P*).
    Computed once per session: the n-gram tests and their property tests both use it."""
    from omnikern import _C
    from omnikern.text.reference import nfkc_casefold_ref

    out = set()
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if unicodedata.category(ch) == "Cn" and _C.unicode_category(cp) != "Cn":
            out.add(ch)
        elif _C.ngram_normalize(ch) != nfkc_casefold_ref(ch):
            out.add(ch)
        elif (unicodedata.category(ch)[0] == "P") != _C.unicode_category(cp, "8.0").startswith("P"):
            out.add(ch)
    return frozenset(out)
