"""Are two top-k answers the same answer? Tie-aware comparison of search results.

Two runs of the same model rarely give bit-identical query embeddings: a served model batches
rows differently from an in-process call, onnxruntime and torch reduce in other orders, a new
torch or transformers release takes another attention path. The embeddings then differ by
~1e-7, and candidates whose scores lie closer than that can swap places; after int8 quantisation
of the query such a move can flip the rounding of a coordinate and move scores by ~1e-4. Asking
for identical ids then fails on a near-tie, not on a bug.

:func:`score_tolerance` bounds how far any score can move when each query coordinate moves by at
most ``eps``, from the arithmetic of :meth:`omnikern.Int8Index.search`; :func:`compare_topk`
accepts two answers when every difference between them is explained by such a bound, and reports
everything else as a disagreement.

The bound. A score is ``⟨q̂, x̂⟩`` where ``q̂`` is the query as the search scores it and ``x̂`` an
item as stored, so by Cauchy–Schwarz it moves by at most ``‖q̂' − q̂‖ · max_x ‖x̂‖``. Per mode:

* ``dim=None``, no rerank: ``q̂ = s · c`` with ``s = max|q| / 127`` and ``c = round(q / s)``
  (:func:`omnikern.ops.quantize_int8`). For every ``q'`` with ``|q' − q| ≤ eps`` per coordinate,
  ``s'`` lies in ``s ± eps / 127`` and each code in the rounding of an interval; ``|s'c' − sc|`` per
  coordinate is largest at a corner of that box. Most codes cannot change (then the coordinate
  moves by ``≤ eps · |c| / 127``); a code near a rounding boundary may flip by one step ``s``.
* ``dim=d``, no rerank: the cosine of int8 prefixes, ``q̂ = c[:d] / ‖c[:d]‖`` (own scale), items unit
  length; ``‖u' − u‖ ≤ 2 ‖c' − c‖ / ‖c‖`` with the code box as above.
* ``rerank``: the float query (or its unit prefix): ``‖q' − q‖ ≤ √D · eps`` (prefix:
  ``2 √d · eps / ‖q[:d]‖``). Only the re-scored shortlist is covered: an item that one run's int8
  shortlist missed altogether shows up as a disagreement.

Scores are float32: each side's last rounding adds at most ``2⁻²⁴ · |score|``, and the bound adds
four such ulps of the largest possible score; the code box is widened by ``1e-6`` of a step for
the float32 division in the quantiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from omnikern._checks import check_int
from omnikern.index import Int8Index
from omnikern.ops.int8 import dequantize_int8

# How far a served query embedding may lie from the in-process one, per coordinate: the same fp32
# weights run by onnxruntime instead of torch, or in other batch shapes, differ by rounding alone
# (~1e-7 to 1e-6 measured on unit-length 512-d embeddings); the tests assert 1e-5, and a real
# defect (a wrong mask, position or weight) moves them by > 1e-3.
SERVED_EMBEDDING_EPS = 1e-5

_FLOAT32_ULP = 2.0 ** -24
_DIVISION_SLACK = 1e-6  # code units: the quantiser divides in float32


def _as_numpy(x, name: str, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Q, k), got shape {array.shape}")
    return array.astype(dtype, copy=False)


def _code_box(q: np.ndarray, eps: float):
    """For rows ``q`` (Q, D) float64: ``(s_lo, s_hi, c_lo, c_hi)``, the range of int8 scales and
    codes that :func:`omnikern.ops.quantize_int8` can give any ``q'`` within ``eps`` of ``q`` per
    coordinate (``q`` itself included)."""
    peak = np.abs(q).max(axis=1, keepdims=True)
    s_lo, s_hi = np.maximum(peak - eps, 0.0) / 127.0, (peak + eps) / 127.0
    with np.errstate(divide="ignore", invalid="ignore"):
        corners = np.stack([(q - eps) / s_lo, (q - eps) / s_hi, (q + eps) / s_lo, (q + eps) / s_hi])
    t_lo, t_hi = corners.min(axis=0), corners.max(axis=0)
    slack = _DIVISION_SLACK * (1 + np.maximum(np.abs(t_lo), np.abs(t_hi)))
    return s_lo, s_hi, np.clip(np.rint(t_lo - slack), -127, 127), np.clip(np.rint(t_hi + slack), -127, 127)


def score_tolerance(index: Int8Index, queries, eps: float, *, dim: int | None = None, rerank: int = 0) -> np.ndarray:
    """Per query (Q,): the most that ``index.search(q', ..., dim=dim, rerank=rerank)`` can score any
    item differently from ``q = queries[i]``, over every ``q'`` with ``|q' − q| ≤ eps`` in each
    coordinate (module docstring). ``inf`` where ``q`` is within ``eps`` of zero.

    Raises:
        TypeError: ``index`` is not an :class:`~omnikern.Int8Index`.
        ValueError: ``queries`` is not (Q, index.dim) and finite; ``eps`` is not finite and >= 0;
            bad ``dim``.
    """
    if not isinstance(index, Int8Index):
        raise TypeError(f"index must be an omnikern.Int8Index, got {type(index).__name__}")
    q = queries.detach().cpu().double().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries, np.float64)
    if q.ndim != 2 or q.shape[1] != index.dim or not np.isfinite(q).all():
        raise ValueError(f"queries must be finite (Q, {index.dim}), got shape {q.shape}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    check_int("dim", dim, 1, index.dim, none_ok=True)
    if dim is not None:
        q = q[:, :dim]
        items = 1.0  # cosine scores: both sides are unit vectors
        largest = np.ones(q.shape[0])
    elif rerank:
        items = float(index.vectors.double().norm(dim=1).max())
        largest = np.linalg.norm(q, axis=1) * items
    else:
        items = float(dequantize_int8(index.codes, index.scales).double().norm(dim=1).max())
        largest = np.linalg.norm(q, axis=1) * items
    width = math.sqrt(q.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if rerank and dim is None:
            move = np.full(q.shape[0], width * eps)
        elif rerank:
            move = 2 * width * eps / np.linalg.norm(q, axis=1)
        else:
            s_lo, s_hi, c_lo, c_hi = _code_box(q, eps)
            # Any two members of the box: |s1·c1 − s2·c2| ≤ s1·|c1 − c2| + |s1 − s2|·|c2|.
            steps = c_hi - c_lo
            if dim is None:
                per_coordinate = s_hi * steps + (s_hi - s_lo) * np.maximum(np.abs(c_lo), np.abs(c_hi))
                move = np.sqrt((per_coordinate ** 2).sum(axis=1))
            else:
                nearest = np.where((c_lo <= 0) & (c_hi >= 0), 0.0, np.minimum(np.abs(c_lo), np.abs(c_hi)))
                shortest = np.sqrt((nearest ** 2).sum(axis=1))  # the smallest code norm in the box
                move = 2 * np.sqrt((steps ** 2).sum(axis=1)) / shortest
            move = np.where(s_lo[:, 0] > 0, move, np.inf)
    move = np.where(np.isfinite(move), move, np.inf)
    return move * items + 4 * _FLOAT32_ULP * largest


@dataclass(frozen=True)
class TopkAgreement:
    """What :func:`compare_topk` found. ``ok`` is False only on a real disagreement."""

    rows: int
    identical_rows: int  # same ids in the same order
    tie_rows: int  # ids differ, every difference a swap among scores within the tolerance
    disagreements: list[str] = field(default_factory=list)  # one line per failing row
    max_score_difference: float = 0.0  # over the ids both answers hold

    @property
    def ok(self) -> bool:
        return not self.disagreements

    def summary(self) -> str:
        text = (f"{self.identical_rows}/{self.rows} rows identical, {self.tie_rows} differ only among near-ties, "
                f"{len(self.disagreements)} disagree; largest score difference {self.max_score_difference:.2e}")
        return text + "".join(f"\n  {line}" for line in self.disagreements[:5])


def _scores_by_id(scores: np.ndarray, ids: np.ndarray) -> dict[int, float]:
    """One answer row as {id: score}, empty slots (id -1) left out."""
    valid = ids >= 0
    return dict(zip(ids[valid].tolist(), scores[valid].tolist()))


def _row_disagreement(sa, ia, sb, ib, score_a: dict, score_b: dict, tol: float) -> str | None:
    """Why row a and row b are not the same answer within ``tol``, or None when they are
    (``score_a``/``score_b``: the rows by :func:`_scores_by_id`)."""
    va, vb = ia >= 0, ib >= 0
    if va.sum() != vb.sum():
        return f"{int(va.sum())} vs {int(vb.sum())} results"
    sa, ia, sb, ib = sa[va], ia[va], sb[vb], ib[vb]
    if len(set(ia.tolist())) != len(ia) or len(set(ib.tolist())) != len(ib):
        return "an id appears twice in one answer"
    worst = np.abs(sa.astype(np.float64) - sb.astype(np.float64)).max(initial=0.0)
    if worst > tol:  # the i-th best score moves by no more than any one score does
        return f"the scores by rank differ by {worst:.3g} > tolerance {tol:.3g}"
    for item in score_a.keys() & score_b.keys():
        if abs(score_a[item] - score_b[item]) > tol:
            return f"id {item} scored {score_a[item]:.7g} vs {score_b[item]:.7g} (tolerance {tol:.3g})"
    # An id only one answer holds must have been a near-tie with the other answer's last place:
    # its score in the other run is at most that last score, and moved by at most tol.
    for only, scores, other_last in ((score_a.keys() - score_b.keys(), score_a, sb[-1] if len(sb) else -np.inf),
                                     (score_b.keys() - score_a.keys(), score_b, sa[-1] if len(sa) else -np.inf)):
        for item in only:
            if scores[item] > other_last + tol:
                return f"id {item} (score {scores[item]:.7g}) is missing from the other answer, whose last score is {other_last:.7g}"
    return None


def compare_topk(scores_a, ids_a, scores_b, ids_b, tolerance) -> TopkAgreement:
    """Compares two ``(scores (Q, k), ids (Q, k))`` answers, best first, ``-1`` ids in empty slots.

    Row i agrees when both hold the same number of results, every id both hold is scored within
    ``tolerance[i]`` by the two, the i-th best scores are within it, and every id that only one
    holds scores within it of the other's last place (a near-tie at the cut). Differences in order
    are then swaps among near-ties.

    Args:
        tolerance: a float or (Q,) array, e.g. from :func:`score_tolerance`; 0 asks for equality.

    Raises:
        ValueError: shapes differ or are not 2-D; a negative or non-finite tolerance.
    """
    sa, sb = _as_numpy(scores_a, "scores_a", np.float64), _as_numpy(scores_b, "scores_b", np.float64)
    ia, ib = _as_numpy(ids_a, "ids_a", np.int64), _as_numpy(ids_b, "ids_b", np.int64)
    if not sa.shape == ia.shape == sb.shape == ib.shape:
        raise ValueError(f"scores and ids must share one (Q, k) shape, got {sa.shape}, {ia.shape}, {sb.shape}, {ib.shape}")
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (sa.shape[0],))
    if not np.isfinite(tol).all() or (tol < 0).any():
        raise ValueError("tolerance must be finite and >= 0")
    identical = ties = 0
    lines: list[str] = []
    worst = 0.0
    for row in range(sa.shape[0]):
        score_a, score_b = _scores_by_id(sa[row], ia[row]), _scores_by_id(sb[row], ib[row])
        worst = max([worst] + [abs(score_a[i] - score_b[i]) for i in score_a.keys() & score_b.keys()])
        reason = _row_disagreement(sa[row], ia[row], sb[row], ib[row], score_a, score_b, float(tol[row]))
        if reason is not None:
            lines.append(f"row {row}: {reason}")
        elif np.array_equal(ia[row], ib[row]):
            identical += 1
        else:
            ties += 1
    return TopkAgreement(sa.shape[0], identical, ties, lines, worst)
