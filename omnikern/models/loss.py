"""The training loss as modules: ``CountMinSketch`` and ``SampledSoftmaxLoss`` (docs/loss.md).

``SampledSoftmaxLoss`` owns the learned temperature and four count-min sketches (query ids,
(query, pos) pairs, in-batch candidate ids, random-negative ids). Each forward:

1. clamps the temperature parameter in place (``t ≤ log max_scale``), outside autograd (a fixed
   temperature, ``learn_temperature=False``, is a buffer and is used as given);
2. gathers positives and random negatives across ranks with gradient (ids without), after
   sampling at most ``max_in_batch_negatives`` of this rank's positives as in-batch candidates;
3. updates the sketches with every gathered id, then queries them for the logQ corrections;
4. calls :func:`omnikern.ops.sampled_softmax_loss` (kernel on GPU, chunked torch on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omnikern._checks import check_int
from omnikern.ops._triton import check_impl
from omnikern.ops.distributed import all_gather_rows, world_size
from omnikern.ops.loss import SampledSoftmaxLossOutput, resolve_prefixes, sampled_softmax_loss
from omnikern.ops.reference import (
    COUNT_MIN_SEED,
    NEG_MODES,
    count_min_multipliers_ref,
    sampled_softmax_loss_ref,
)
from omnikern.ops.sketch import COUNT_DTYPES, count_min_query, count_min_update_

# Multiplier of the query id in the (query, pos) pair key ``pos_id + 17·query_id`` (int64 wrap).
PAIR_KEY_MULTIPLIER = 17
# Ids made up for calls without ids (no id masking): row i of rank r is r·2^40 + i for queries and
# positives, −1 − (r·2^40 + j) for random negatives, so every id is unique across ranks and a
# negative id never equals a positive one. Only each row's own positive column is then masked.
_RANK_ID_STRIDE = 1 << 40
# "reference" runs the materialising plain-torch loss (the fused path's truth) inside the module.
LOSS_IMPLS = ("auto", "triton", "torch", "reference")


class CountMinSketch(nn.Module):
    """A count-min sketch of int64 ids: ``update(ids)`` counts them, ``query(ids)`` estimates counts.

    Estimates never undercount; they overcount by at most ``e·num_seen / width`` with probability
    ``1 − e^−depth``. State (``counts`` (depth, width), ``num_seen``, ``multipliers``) lives in
    buffers, so it moves with ``.to(device)`` and is saved and loaded with ``state_dict``. Hashes
    are bit-identical to ``omnikern.ops.reference.CountMinSketchRef``. Memory: depth × width ×
    itemsize (the published 2 × 2^26 int64 is 1 GiB); int32 counts halve it but wrap once one
    bucket passes 2^31 − 1, so keep int64 for runs that see billions of ids.

    Args:
        width: buckets per row (>= 1); depth: hash rows (>= 1); depth × width < 2^31.
        count_dtype: ``torch.int64`` (default) or ``torch.int32``.
        seed: seed of the multipliers (``random.Random(seed).randint(1, 2**63 − 1)`` per row).
        impl: ``"auto" | "triton" | "torch"`` for update and query (see ``_triton.resolve_impl``).
    """

    counts: torch.Tensor
    num_seen: torch.Tensor
    multipliers: torch.Tensor

    def __init__(
        self,
        width: int = 2**20,
        depth: int = 2,
        count_dtype: torch.dtype = torch.int64,
        seed: int = COUNT_MIN_SEED,
        impl: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_int("width", width)
        check_int("depth", depth)
        if width * depth >= 2**31:
            raise ValueError(f"width · depth must be below 2^31, got {width} · {depth}")
        if count_dtype not in COUNT_DTYPES:
            raise TypeError(f"count_dtype must be torch.int32 or torch.int64, got {count_dtype}")
        check_impl(impl)
        self.width, self.depth, self.impl = width, depth, impl
        self.register_buffer("counts", torch.zeros((depth, width), dtype=count_dtype, device=device))
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.int64, device=device))
        multipliers = torch.tensor(count_min_multipliers_ref(depth, seed), dtype=torch.int64, device=device)
        self.register_buffer("multipliers", multipliers)

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Counts every element of the int64 ``ids`` (n,) (duplicates count), in place."""
        count_min_update_(self.counts, ids, self.multipliers, impl=self.impl)
        self.num_seen += ids.numel()

    @torch.no_grad()
    def query(self, ids: torch.Tensor) -> torch.Tensor:
        """Returns the (n,) count estimates of int64 ``ids`` (n,), in the counts' dtype."""
        return count_min_query(self.counts, ids, self.multipliers, impl=self.impl)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`query`."""
        return self.query(ids)

    def reset(self) -> None:
        """Forget everything seen."""
        self.counts.zero_()
        self.num_seen.zero_()

    def extra_repr(self) -> str:
        return f"width={self.width}, depth={self.depth}, count_dtype={self.counts.dtype}"


@torch.no_grad()
def _mean_unmasked(row_pos, row_query, col_ids, col_query, max_elements: int = 1 << 24) -> torch.Tensor:
    """Mean over rows of the number of columns not masked by the id rules, in row chunks of at most
    ``max_elements`` comparisons (no B × N)."""
    chunk = max(1, max_elements // max(col_ids.shape[0], 1))
    total = torch.zeros((), dtype=torch.float64, device=row_pos.device)
    for start in range(0, row_pos.shape[0], chunk):
        stop = start + chunk
        masked = col_ids[None, :] == row_pos[start:stop, None]
        if col_query is not None:
            masked |= col_query[None, :] == row_query[start:stop, None]
        total += (~masked).sum()
    return (total / max(row_pos.shape[0], 1)).float()


class SampledSoftmaxLoss(nn.Module):
    """Sampled-softmax loss with learned temperature, logQ correction, id masks and Matryoshka prefixes.

    A drop-in for ``nn.CrossEntropyLoss`` over a logits matrix: ``loss_fn(query, pos, neg,
    query_ids=…, pos_ids=…, neg_ids=…)`` returns the scalar loss tensor, without materialising any
    logits. ``return_components=True`` returns a :class:`~omnikern.ops.loss.SampledSoftmaxLossOutput`
    instead (the per-term, per-prefix components and the temperature), and ``count_unmasked=True``
    adds the number of negatives that survive the id masks (O(B·N) id comparisons, so off by
    default). The maths is ``omnikern.ops.reference.sampled_softmax_loss_ref`` with corrections
    from this module's sketches.

    Ids are optional: without ``query_ids`` and ``pos_ids`` nothing is masked but each row's own
    positive (every other column, duplicates included, is a negative, as in sentence-transformers'
    ``MultipleNegativesRankingLoss``); the logQ correction needs ids.

    Args:
        neg_mode: ``in_batch | random | mixed_sum`` (default, the published one) ``| mixed_concat``.
        temperature: initial temperature (0.07 → scale 14.29); learned as ``t = log(1/temperature)``.
        learn_temperature: False keeps ``t = log(1/temperature)`` fixed: a buffer (saved in the
            ``state_dict`` under the same name), not a parameter, and not clamped.
        max_scale: a learned scale is clamped in place to at most this (100) before every forward.
        dims, dim_weights: Matryoshka prefixes; default ``{16: .05, 32: .05, 64: .05, 128: .05,
            256: 1, 512: 1}``, dims above the embedding dim skipped.
        logq_correction: use the count-min-sketch corrections (logQ on negatives, pair/query
            correction on positives).
        max_in_batch_negatives: cap k on the in-batch candidates each rank contributes (sampled
            without replacement per forward); None for all.
        sketch_width, sketch_depth, sketch_dtype: size of each of the four sketches.
        impl: ``"auto" | "triton" | "torch"`` for the loss and the sketches, or ``"reference"``:
            the plain-torch loss that materialises every logit matrix
            (``omnikern.ops.reference.sampled_softmax_loss_ref``; sketches on torch) — the truth
            the fused path is compared against, also in training.
        process_group: the group to gather across (None: the default group when initialised).
    """

    def __init__(
        self,
        neg_mode: str = "mixed_sum",
        temperature: float = 0.07,
        learn_temperature: bool = True,
        max_scale: float = 100.0,
        dims: list[int] | None = None,
        dim_weights: list[float] | None = None,
        logq_correction: bool = True,
        max_in_batch_negatives: int | None = None,
        sketch_width: int = 2**20,
        sketch_depth: int = 2,
        sketch_dtype: torch.dtype = torch.int64,
        impl: str = "auto",
        process_group=None,
    ) -> None:
        super().__init__()
        if neg_mode not in NEG_MODES:
            raise ValueError(f"neg_mode must be one of {NEG_MODES}, got {neg_mode!r}")
        if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        if not (isinstance(max_scale, (int, float)) and 0 < max_scale < math.inf):
            raise ValueError(f"max_scale must be a positive finite number, got {max_scale!r}")
        check_int("max_in_batch_negatives", max_in_batch_negatives, none_ok=True)
        check_impl(impl, LOSS_IMPLS)
        if dims is not None or dim_weights is not None:
            resolve_prefixes(dims, dim_weights, max(dims) if dims else 1)  # validate early
        if not isinstance(learn_temperature, bool):
            raise TypeError(f"learn_temperature must be a bool, got {learn_temperature!r}")
        self.neg_mode = neg_mode
        self.learn_temperature = learn_temperature
        self.max_log_scale = math.log(max_scale)
        self.dims, self.dim_weights = dims, dim_weights
        self.logq_correction = logq_correction
        self.max_in_batch_negatives = max_in_batch_negatives
        self.impl = impl
        self.process_group = process_group
        if learn_temperature:
            # t = log(1 / temperature), clamped to log(max_scale) at init as before every forward.
            self.log_scale = nn.Parameter(torch.tensor(min(-math.log(temperature), self.max_log_scale)))
        else:
            self.register_buffer("log_scale", torch.tensor(-math.log(temperature)))
        if logq_correction:
            sketch = dict(width=sketch_width, depth=sketch_depth, count_dtype=sketch_dtype,
                          impl="torch" if impl == "reference" else impl)
            self.query_sketch = CountMinSketch(**sketch)
            self.pair_sketch = CountMinSketch(**sketch)
            self.candidate_sketch = CountMinSketch(**sketch)
            self.neg_sketch = CountMinSketch(**sketch)

    @property
    def temperature(self) -> float:
        """The current temperature ``1 / exp(t)`` (a host read: for logging, not inside a step)."""
        t = self.log_scale.detach()
        return math.exp(-float(t.clamp(max=self.max_log_scale) if self.learn_temperature else t))

    def _logq(self, sketch: CountMinSketch, ids: torch.Tensor, total: torch.Tensor, num_columns: int) -> torch.Tensor:
        # log Q(c) = log cnt(c) − log total + log K
        counts = sketch.query(ids).double()
        return (counts.log() - total.double().log() + math.log(num_columns)).float()

    def _made_up_ids(self, query: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None):
        """Ids for a call without ids: unique per row and rank (``_RANK_ID_STRIDE``), so that only
        each row's own positive matches it; a tensor-shape problem is left to the functional."""
        rank = torch.distributed.get_rank(self.process_group) if world_size(self.process_group) > 1 else 0
        base = rank * _RANK_ID_STRIDE
        def made_up(x: torch.Tensor) -> torch.Tensor:
            return base + torch.arange(x.shape[0], dtype=torch.int64, device=query.device)

        neg_ids = None if neg is None else -1 - made_up(neg)
        return made_up(query), made_up(pos), neg_ids

    def forward(
        self,
        query: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor | None = None,
        *,
        query_ids: torch.Tensor | None = None,
        pos_ids: torch.Tensor | None = None,
        neg_ids: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        return_components: bool = False,
        count_unmasked: bool = False,
    ) -> torch.Tensor | SampledSoftmaxLossOutput:
        """Returns the scalar loss of one batch, or with ``return_components`` (or
        ``count_unmasked``) its :class:`~omnikern.ops.loss.SampledSoftmaxLossOutput` (class docstring).

        Args:
            query, pos: (B, D) on one device; neg: (R, D) random negatives (not for ``in_batch``;
                None means none this step: the random term is then 0).
            query_ids, pos_ids: (B,) int64; neg_ids: (R,) int64 (with ``neg``); or all three None:
                no id masking (only a row's own positive is masked among the in-batch columns),
                and no logQ correction. weights: optional (B,).
            return_components: return the output object instead of the loss tensor.
            count_unmasked: fill its ``unmasked_negatives`` (implies ``return_components``).
        """
        if query_ids is None and pos_ids is None:
            if neg_ids is not None:
                raise ValueError("neg_ids needs query_ids and pos_ids, got query_ids=None and pos_ids=None")
            if self.logq_correction:
                raise ValueError(
                    "query_ids and pos_ids are required with logq_correction=True (the corrections count ids), "
                    "got query_ids=None and pos_ids=None"
                )
            query_ids, pos_ids, neg_ids = self._made_up_ids(query, pos, neg)
        elif query_ids is None or pos_ids is None:
            missing = "query_ids" if query_ids is None else "pos_ids"
            raise ValueError(f"query_ids and pos_ids must be given together (or neither, for no id masking), got {missing}=None")
        if self.learn_temperature:
            with torch.no_grad():
                # Clamp the parameter itself (docs/loss.md, "Temperature"): a functional clamp would zero dL/dt
                # at the bound. Through .data, so that autograd's version counter does not move: a second call
                # in the same forward (one module for two candidate keys) must not invalidate the first call's
                # graph, and there the clamp is a no-op anyway (no optimiser step in between).
                self.log_scale.data.clamp_(max=self.max_log_scale)
        uses_in_batch = self.neg_mode != "random"
        uses_random = self.neg_mode != "in_batch"
        if self.neg_mode == "in_batch":
            neg, neg_ids = None, None
        # The functional checks everything; check ids here too, before the gathers and sketches use them.
        for name, ids in (("query_ids", query_ids), ("pos_ids", pos_ids)) + ((("neg_ids", neg_ids),) if neg_ids is not None else ()):
            if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
                raise TypeError(f"{name} must be an int64 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")

        if neg is None and neg_ids is not None:
            raise ValueError("neg_ids needs neg, got neg=None")
        for name, ids, rows in (("query_ids", query_ids, query.shape[0]), ("pos_ids", pos_ids, pos.shape[0])):
            if ids.shape != (rows,):
                raise ValueError(f"{name} must have shape ({rows},) to match its embeddings, got {tuple(ids.shape)}")
        if neg is not None and (neg_ids is None or neg_ids.shape != (neg.shape[0],)):
            raise ValueError(f"neg_ids must have shape ({neg.shape[0]},) to match neg, got {getattr(neg_ids, 'shape', None)}")

        if uses_random and neg is None:
            # No random negatives this step: an empty set (the random term is then 0).
            neg, neg_ids = query.new_empty((0, query.shape[1])), query_ids.new_empty((0,))

        # In-batch candidates: at most k of this rank's positives, then gathered from all ranks.
        cand, cand_ids, cand_query_ids = pos, pos_ids, query_ids
        k = self.max_in_batch_negatives
        if uses_in_batch and k is not None and pos.shape[0] > k:
            keep = torch.randperm(pos.shape[0], device=pos.device)[:k]
            cand, cand_ids, cand_query_ids = pos[keep], pos_ids[keep], query_ids[keep]
        group = self.process_group
        if uses_in_batch:
            cand = all_gather_rows(cand, group)
            cand_ids, cand_query_ids = all_gather_rows(cand_ids, group), all_gather_rows(cand_query_ids, group)
        all_query_ids, all_pos_ids = all_gather_rows(query_ids, group), all_gather_rows(pos_ids, group)
        if neg is not None:
            neg, neg_ids = all_gather_rows(neg, group), all_gather_rows(neg_ids, group)

        logq: dict[str, torch.Tensor] = {}
        if self.logq_correction:
            # Update with every (gathered) id first, then query: the batch counts itself.
            self.query_sketch.update(all_query_ids)
            self.pair_sketch.update(all_pos_ids + PAIR_KEY_MULTIPLIER * all_query_ids)
            self.candidate_sketch.update(all_pos_ids)
            if neg is not None:
                self.neg_sketch.update(neg_ids)
            # Positive: log(C(q, p) / C(q)).
            pair = self.pair_sketch.query(pos_ids + PAIR_KEY_MULTIPLIER * query_ids).double()
            logq["pos_logq"] = (pair.log() - self.query_sketch.query(query_ids).double().log()).float()
            num_cand = cand.shape[0]
            num_neg = neg.shape[0] if neg is not None else 0
            cand_total, neg_total = self.candidate_sketch.num_seen, self.neg_sketch.num_seen
            if self.neg_mode == "mixed_concat":
                # One matrix: counts side by side, totals summed, K = all negative columns.
                cand_total = neg_total = cand_total + neg_total
                num_cand = num_neg = num_cand + num_neg
            if uses_in_batch and cand.shape[0] > 0:
                logq["candidate_logq"] = self._logq(self.candidate_sketch, cand_ids, cand_total, num_cand)
            if uses_random and neg is not None and neg.shape[0] > 0:
                logq["neg_logq"] = self._logq(self.neg_sketch, neg_ids, neg_total, num_neg)

        args = dict(log_scale=self.log_scale, query_ids=query_ids, pos_ids=pos_ids, neg_ids=neg_ids, weights=weights,
                    neg_mode=self.neg_mode, candidates=cand, candidate_ids=cand_ids, candidate_query_ids=cand_query_ids,
                    dims=self.dims, dim_weights=self.dim_weights, **logq)
        if self.impl == "reference":
            total, components = sampled_softmax_loss_ref(query, pos, neg, **args)
        else:
            out = sampled_softmax_loss(query, pos, neg, impl=self.impl, return_components=True, **args)
            total, components = out.total, out.components
        if not (return_components or count_unmasked):
            return total

        unmasked: dict[str, torch.Tensor] = {}
        if count_unmasked:
            if uses_in_batch:
                unmasked["in_batch"] = _mean_unmasked(pos_ids, query_ids, cand_ids, cand_query_ids)
            if uses_random and neg is not None:
                unmasked["random"] = _mean_unmasked(pos_ids, query_ids, neg_ids, None)
            if self.neg_mode == "mixed_concat":
                unmasked = {"mixed_concat": unmasked["in_batch"] + unmasked["random"]}
        dims, dim_weights = resolve_prefixes(self.dims, self.dim_weights, query.shape[1])
        scale = self.log_scale.detach().exp()
        return SampledSoftmaxLossOutput(total=total, components=dict(components), dims=dims, dim_weights=dim_weights,
                                        temperature=1.0 / scale, scale=scale, unmasked_negatives=unmasked)

    def extra_repr(self) -> str:
        return (
            f"neg_mode={self.neg_mode!r}, learn_temperature={self.learn_temperature}, "
            f"max_scale={math.exp(self.max_log_scale):.4g}, dims={self.dims}, "
            f"logq_correction={self.logq_correction}, max_in_batch_negatives={self.max_in_batch_negatives}"
        )
