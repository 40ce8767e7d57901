"""omnikern.SampledSoftmaxLoss: temperature handling, sketch-based corrections, the in-batch cap and
distributed gathering, against the reference loss fed with corrections from the Python sketch."""

from __future__ import annotations

import io
import math
import os

import pytest
import torch
from conftest import DEVICE
from helpers import assert_close_verbose

from omnikern import SampledSoftmaxLoss
from omnikern.ops.loss import SampledSoftmaxLossOutput
from omnikern.ops.reference import (
    CountMinSketchRef,
    logq_from_counts_ref,
    sampled_softmax_loss_ref,
)

WIDTH = 61  # narrow sketches: collisions make the estimates differ from exact counts


def with_components(module, *args, **kwargs):
    """The module's whole output: components, temperature and the unmasked-negative counts."""
    return module(*args, count_unmasked=True, **kwargs)


def make_batch(B=13, R=11, D=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=gen)
    return {
        "query": query,
        "pos": torch.randn(B, D, generator=gen) + 2 * query,
        "neg": torch.randn(R, D, generator=gen),
        "query_ids": torch.randint(0, 5, (B,), generator=gen),
        "pos_ids": torch.randint(0, 7, (B,), generator=gen),
        "neg_ids": torch.randint(0, 7, (R,), generator=gen),
    }


class ReferencePipeline:
    """The module's job written plainly: Python sketches, then the reference loss."""

    def __init__(self, neg_mode: str):
        self.neg_mode = neg_mode
        self.sketches = {name: CountMinSketchRef(WIDTH, 2) for name in ("query", "pair", "cand", "neg")}

    def logq(self, batch, keep=None):
        s = self.sketches
        q_ids, p_ids, n_ids = (batch[k].tolist() for k in ("query_ids", "pos_ids", "neg_ids"))
        pair_keys = [p + 17 * q for p, q in zip(p_ids, q_ids)]
        s["query"].update(q_ids)
        s["pair"].update(pair_keys)
        s["cand"].update(p_ids)
        s["neg"].update(n_ids)
        cand_ids = p_ids if keep is None else [p_ids[i] for i in keep]
        pos_logq = torch.tensor(s["pair"].query(pair_keys)).double().log() - torch.tensor(s["query"].query(q_ids)).double().log()
        cand_counts, neg_counts = torch.tensor(s["cand"].query(cand_ids)), torch.tensor(s["neg"].query(n_ids))
        cand_total, neg_total = s["cand"].num_seen, s["neg"].num_seen
        num_cand, num_neg = len(cand_ids), len(n_ids)
        if self.neg_mode == "mixed_concat":
            cand_total = neg_total = cand_total + neg_total
            num_cand = num_neg = num_cand + num_neg
        return {
            "pos_logq": pos_logq,
            "candidate_logq": logq_from_counts_ref(cand_counts, cand_total, num_cand),
            "neg_logq": logq_from_counts_ref(neg_counts, neg_total, num_neg),
        }


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize(
    "neg_mode, impl",
    [("mixed_sum", "triton"), ("mixed_sum", "torch"), ("mixed_concat", "triton"), ("in_batch", "torch"), ("random", "torch")],
)
def test_module_matches_reference_pipeline_over_steps(neg_mode, impl):
    """Two steps: the sketches accumulate (no decay) and are updated before they are queried."""
    module = SampledSoftmaxLoss(neg_mode=neg_mode, sketch_width=WIDTH, impl=impl).to(DEVICE)
    pipeline = ReferencePipeline(neg_mode)
    for step in range(2):
        batch = make_batch(seed=step)
        weights = torch.rand(13) if step == 1 else None
        leaves = [batch[k].clone().requires_grad_(True) for k in ("query", "pos", "neg")]
        ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
        # The module runs on DEVICE, the reference pipeline on the CPU: every input follows its side.
        result = with_components(module, 
            *(x.to(DEVICE) for x in leaves), **{k: v.to(DEVICE) for k, v in ids.items()},
            weights=None if weights is None else weights.to(DEVICE),
        )  # fmt: skip
        assert isinstance(result, SampledSoftmaxLossOutput)
        got = grads_of(result.total, leaves + [module.log_scale])

        t = module.log_scale.detach().cpu().requires_grad_(True)  # the reference's copy, on the CPU
        want_loss, want_components = sampled_softmax_loss_ref(
            *leaves, log_scale=t, neg_mode=neg_mode, weights=weights, **ids, **pipeline.logq(batch)
        )
        want = grads_of(want_loss, leaves + [t])
        assert_close_verbose(result.total.detach().cpu(), want_loss.detach(), atol=1e-5, rtol=1e-5, name="loss")
        for name, g, w in zip(("query", "pos", "neg", "t"), got, want):
            assert_close_verbose(g.cpu(), w, atol=1e-5, rtol=1e-4, name=name)
        assert sorted(result.components) == sorted(want_components)
        assert module.query_sketch.counts.tolist() == pipeline.sketches["query"].counts


def test_pair_key_wraps_like_int64():
    """Ids near the int64 extremes: ``pos_id + 17·query_id`` wraps around in torch; the Python
    reference (unbounded ints, wrapped when hashed) must land in the same buckets."""
    module = SampledSoftmaxLoss(sketch_width=WIDTH, impl="torch", dims=[32])
    pipeline = ReferencePipeline("mixed_sum")
    batch = make_batch()
    big = 2**63 - 1
    batch["query_ids"] = torch.tensor([big - i % 3 for i in range(13)])
    batch["pos_ids"] = torch.tensor([-(2**63) + i % 4 for i in range(13)])
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    result = with_components(module, batch["query"], batch["pos"], batch["neg"], **ids)
    logq = pipeline.logq(batch)
    want, _ = sampled_softmax_loss_ref(
        batch["query"], batch["pos"], batch["neg"], log_scale=torch.tensor(-math.log(0.07)), dims=[32], **ids, **logq
    )
    assert_close_verbose(result.total.detach(), want.float(), atol=1e-5, rtol=1e-5)
    assert module.pair_sketch.counts.tolist() == pipeline.sketches["pair"].counts


@pytest.mark.parametrize("neg_mode", ["mixed_sum", "mixed_concat"])
def test_no_random_negatives_this_step(neg_mode):
    """The model container passes neg=None, neg_ids=None when a batch has no random negatives:
    the random term is 0 and the in-batch one is unchanged; the negative sketch sees nothing."""
    batch = make_batch()
    module = SampledSoftmaxLoss(neg_mode=neg_mode, sketch_width=WIDTH, impl="torch")
    result = with_components(module, batch["query"], batch["pos"], None, query_ids=batch["query_ids"], pos_ids=batch["pos_ids"])
    assert torch.isfinite(result.total) and int(module.neg_sketch.num_seen) == 0
    if neg_mode == "mixed_sum":
        assert all(v.item() == 0.0 for k, v in result.components.items() if k.startswith("random@"))
        assert result.unmasked_negatives["random"].item() == 0.0


def test_temperature_init_and_in_place_clamp():
    """Init 0.07 (scale 14.29). A parameter pushed above log(100) is clamped in place before the
    forward, and its gradient is the ordinary one (not zeroed as a functional clamp would)."""
    module = SampledSoftmaxLoss(impl="torch", logq_correction=False)
    assert module.log_scale.item() == pytest.approx(-math.log(0.07))
    assert module.temperature == pytest.approx(0.07)
    batch = make_batch()
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    with torch.no_grad():
        module.log_scale.fill_(math.log(250.0))
    result = with_components(module, batch["query"], batch["pos"], batch["neg"], **ids)
    assert module.log_scale.item() == pytest.approx(math.log(100.0))
    assert result.scale.item() == pytest.approx(100.0, rel=1e-6)
    result.total.backward()
    assert module.log_scale.grad is not None and module.log_scale.grad.abs().item() > 0
    t = torch.tensor(math.log(100.0), requires_grad=True)
    want, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], batch["neg"], log_scale=t, **ids)
    want.backward()
    assert module.log_scale.grad.item() == pytest.approx(t.grad.item(), rel=1e-4)


def test_one_module_called_twice_in_one_forward():
    """Two calls before one backward (one module for two candidate keys): the in-place clamp must
    not invalidate the first call's graph; the gradient is the sum of both calls' gradients."""
    module = SampledSoftmaxLoss(impl="torch", logq_correction=False)
    a, b = make_batch(seed=1), make_batch(seed=2)
    ids = ("query_ids", "pos_ids", "neg_ids")
    first = with_components(module, a["query"], a["pos"], a["neg"], **{k: a[k] for k in ids})
    second = with_components(module, b["query"], b["pos"], b["neg"], **{k: b[k] for k in ids})
    (first.total + second.total).backward()
    t = module.log_scale.detach().clone().requires_grad_(True)
    want = sum(sampled_softmax_loss_ref(x["query"], x["pos"], x["neg"], log_scale=t, **{k: x[k] for k in ids})[0]
               for x in (a, b))
    want.backward()
    assert module.log_scale.grad.item() == pytest.approx(t.grad.item(), rel=1e-4)


@pytest.mark.parametrize("neg_mode", ["mixed_sum", "in_batch"])
def test_reference_impl_equals_the_fused_module(neg_mode):
    """impl="reference" (materialised logits) and the fused path give the same loss, components
    and gradients, with the same sketch corrections, step after step."""
    fused = SampledSoftmaxLoss(neg_mode=neg_mode, sketch_width=WIDTH, impl="torch")
    reference = SampledSoftmaxLoss(neg_mode=neg_mode, sketch_width=WIDTH, impl="reference")
    for step in range(2):
        batch = make_batch(seed=10 + step)
        ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
        results = []
        for module in (fused, reference):
            leaves = [batch[k].clone().requires_grad_(True) for k in ("query", "pos", "neg")]
            result = with_components(module, *leaves, **ids)
            results.append((result, grads_of(result.total, leaves + [module.log_scale])))
        (got, got_grads), (want, want_grads) = results
        assert_close_verbose(got.total.detach(), want.total.detach(), atol=1e-5, rtol=1e-5, name="loss")
        assert sorted(got.components) == sorted(want.components)
        for name, g, w in zip(("query", "pos", "neg", "t"), got_grads, want_grads):
            assert_close_verbose(g, w, atol=1e-5, rtol=1e-4, name=name)
    with pytest.raises(ValueError, match="impl"):
        SampledSoftmaxLoss(impl="fused")


def test_cap_on_in_batch_negatives():
    """k sampled positives serve as in-batch candidates: K = k in logQ, the candidate sketch still
    sees every positive id, and only the sampled columns are masked and counted."""
    B, k = 13, 5
    batch = make_batch(B=B)
    ids = {key: batch[key] for key in ("query_ids", "pos_ids", "neg_ids")}
    module = SampledSoftmaxLoss(neg_mode="mixed_sum", sketch_width=WIDTH, max_in_batch_negatives=k, impl="torch")
    torch.manual_seed(5)
    keep = torch.randperm(B)[:k]
    torch.manual_seed(5)
    result = with_components(module, batch["query"], batch["pos"], batch["neg"], **ids)
    assert int(module.candidate_sketch.num_seen) == B

    pipeline = ReferencePipeline("mixed_sum")
    logq = pipeline.logq(batch, keep=keep.tolist())
    t = torch.tensor(-math.log(0.07))
    want, _ = sampled_softmax_loss_ref(
        batch["query"], batch["pos"], batch["neg"], log_scale=t, candidates=batch["pos"][keep],
        candidate_ids=batch["pos_ids"][keep], candidate_query_ids=batch["query_ids"][keep], **ids, **logq,
    )  # fmt: skip
    assert_close_verbose(result.total.detach(), want.float(), atol=1e-5, rtol=1e-5)
    masked = (batch["pos_ids"][keep][None] == batch["pos_ids"][:, None]) | (
        batch["query_ids"][keep][None] == batch["query_ids"][:, None]
    )
    assert result.unmasked_negatives["in_batch"].item() == pytest.approx((~masked).sum().item() / B)


def test_diagnostics_and_logq_off():
    batch = make_batch()
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    module = SampledSoftmaxLoss(neg_mode="mixed_concat", logq_correction=False, dims=[16, 32], dim_weights=[0.5, 1.0], impl="torch")
    assert not hasattr(module, "query_sketch")
    result = with_components(module, batch["query"], batch["pos"], batch["neg"], **ids)
    want, want_components = sampled_softmax_loss_ref(
        batch["query"], batch["pos"], batch["neg"], log_scale=torch.tensor(-math.log(0.07)), neg_mode="mixed_concat",
        dims=[16, 32], dim_weights=[0.5, 1.0], **ids,
    )  # fmt: skip
    assert_close_verbose(result.total.detach(), want, atol=1e-5, rtol=1e-5)
    assert sorted(result.components) == ["mixed_concat@16", "mixed_concat@32"]
    # components are the ops' (differentiable); their weighted sum is the loss
    weighted = 0.5 * result.components["mixed_concat@16"] + 1.0 * result.components["mixed_concat@32"]
    assert_close_verbose(weighted, result.total, atol=1e-6, rtol=1e-6)
    assert result.dims == [16, 32] and result.dim_weights == [0.5, 1.0]
    assert result.temperature.item() == pytest.approx(0.07, rel=1e-6)
    inb = (batch["pos_ids"][None] != batch["pos_ids"][:, None]) & (batch["query_ids"][None] != batch["query_ids"][:, None])
    rnd = batch["neg_ids"][None] != batch["pos_ids"][:, None]
    expected = (inb.sum() + rnd.sum()).item() / 13
    assert result.unmasked_negatives["mixed_concat"].item() == pytest.approx(expected)


def test_drop_in_returns_the_loss_tensor():
    # Like nn.CrossEntropyLoss: a scalar tensor by default, the same value as the full output's total;
    # the O(B·N) unmasked count only when asked for.
    batch = make_batch()
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    torch.manual_seed(0)
    plain = SampledSoftmaxLoss(dims=[16, 32], logq_correction=False, impl="torch")
    torch.manual_seed(0)
    other = SampledSoftmaxLoss(dims=[16, 32], logq_correction=False, impl="torch")
    loss = plain(batch["query"], batch["pos"], batch["neg"], **ids)
    assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.requires_grad
    out = other(batch["query"], batch["pos"], batch["neg"], **ids, return_components=True)
    assert isinstance(out, SampledSoftmaxLossOutput) and out.unmasked_negatives == {}
    assert loss.item() == out.total.item()
    assert out.dims == [16, 32] and out.temperature.item() == pytest.approx(0.07, rel=1e-6)
    counted = other(batch["query"], batch["pos"], batch["neg"], **ids, count_unmasked=True)
    assert sorted(counted.unmasked_negatives) == ["in_batch", "random"]
    loss.backward()
    assert plain.log_scale.grad is not None and torch.isfinite(plain.log_scale.grad)


def test_state_dict_round_trip_keeps_sketches_and_temperature():
    batch = make_batch()
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    module = SampledSoftmaxLoss(sketch_width=WIDTH, sketch_dtype=torch.int32, impl="torch")
    module(batch["query"], batch["pos"], batch["neg"], **ids)
    with torch.no_grad():
        module.log_scale.fill_(3.0)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = SampledSoftmaxLoss(sketch_width=WIDTH, sketch_dtype=torch.int32, impl="torch")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.log_scale.item() == 3.0
    for name in ("query_sketch", "pair_sketch", "candidate_sketch", "neg_sketch"):
        assert torch.equal(getattr(restored, name).counts, getattr(module, name).counts)
        assert int(getattr(restored, name).num_seen) == int(getattr(module, name).num_seen)
    a = module(batch["query"], batch["pos"], batch["neg"], **ids)
    b = restored(batch["query"], batch["pos"], batch["neg"], **ids)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(neg_mode="hard"), ValueError, "neg_mode must be one of"),
        (dict(temperature=0.0), ValueError, "temperature must be a positive"),
        (dict(max_scale=-1.0), ValueError, "max_scale must be a positive"),
        (dict(max_in_batch_negatives=0), ValueError, "max_in_batch_negatives must be an int >= 1 or None"),
        (dict(impl="cuda"), ValueError, "impl must be"),
        (dict(dims=[8, 8]), ValueError, "dims must not repeat"),
        (dict(sketch_width=0), ValueError, "width must be an int >= 1"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        SampledSoftmaxLoss(**kwargs)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(neg=None), ValueError, "neg_ids needs neg"),
        (dict(query_ids=torch.zeros(13, dtype=torch.int32)), TypeError, "query_ids must be an int64 tensor"),
        (dict(pos_ids=torch.zeros(12, dtype=torch.int64)), ValueError, r"pos_ids must have shape \(13,\)"),
        (dict(neg_ids=torch.zeros(3, dtype=torch.int64)), ValueError, r"neg_ids must have shape \(11,\)"),
        (dict(pos=torch.randn(13, 16)), ValueError, "query and pos must have the same embedding dim"),
    ],
)
def test_bad_forward_input_leaves_sketches_untouched(changes, error, match):
    batch = make_batch()
    batch.update(changes)
    module = SampledSoftmaxLoss(sketch_width=WIDTH, impl="torch")
    with pytest.raises(error, match=match):
        module(batch["query"], batch["pos"], batch["neg"], query_ids=batch["query_ids"], pos_ids=batch["pos_ids"], neg_ids=batch["neg_ids"])
    if "pos" not in changes:  # shape checks of the embeddings themselves happen in the functional
        assert int(module.query_sketch.num_seen) == 0


# ---- distributed: 2 gloo processes vs one process holding the whole batch ----

ROWS = {0: (5, 4), 1: (3, 6)}  # (B, R) per rank: different row counts on purpose


def _rank_slices():
    b0, r0 = ROWS[0]
    b1, r1 = ROWS[1]
    return {0: (slice(0, b0), slice(0, r0)), 1: (slice(b0, b0 + b1), slice(r0, r0 + r1))}


def _distributed_worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        full = make_batch(B=8, R=10, D=32, seed=7)
        rows, negs = _rank_slices()[rank]
        module = SampledSoftmaxLoss(neg_mode="mixed_sum", sketch_width=WIDTH, impl="torch")
        leaves = [full["query"][rows].clone().requires_grad_(True), full["pos"][rows].clone().requires_grad_(True)]
        neg = full["neg"][negs].clone().requires_grad_(True)
        result = with_components(module, 
            leaves[0], leaves[1], neg, query_ids=full["query_ids"][rows], pos_ids=full["pos_ids"][rows], neg_ids=full["neg_ids"][negs]
        )
        # The whole batch's mean is the row-count-weighted sum of the ranks' means.
        (result.total * (leaves[0].shape[0] / 8)).backward()
        torch.save(
            {
                "loss": result.total.detach() * (leaves[0].shape[0] / 8),
                "query": leaves[0].grad, "pos": leaves[1].grad, "neg": neg.grad, "t": module.log_scale.grad,
                "sketch": module.candidate_sketch.counts.clone(),
            },  # fmt: skip
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        # Both ranks done with every collective before either tears gloo down: a rank destroying the
        # group while the other is still in the backward's gather can abort the process in gloo.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_gather_matches_single_process(tmp_path):
    """Positives and negatives gathered with gradient (5 + 3 rows, 4 + 6 negatives): loss, input
    gradients, temperature gradient and sketches equal one process holding all 8 rows."""
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    full = make_batch(B=8, R=10, D=32, seed=7)
    module = SampledSoftmaxLoss(neg_mode="mixed_sum", sketch_width=WIDTH, impl="torch")
    leaves = [full[k].clone().requires_grad_(True) for k in ("query", "pos", "neg")]
    result = with_components(module, *leaves, query_ids=full["query_ids"], pos_ids=full["pos_ids"], neg_ids=full["neg_ids"])
    result.total.backward()

    slices = _rank_slices()
    assert_close_verbose(ranks[0]["loss"] + ranks[1]["loss"], result.total.detach(), atol=1e-6, rtol=1e-5, name="loss")
    for r in range(2):
        rows, negs = slices[r]
        assert_close_verbose(ranks[r]["query"], leaves[0].grad[rows], atol=1e-6, rtol=1e-4, name=f"query grad rank {r}")
        assert_close_verbose(ranks[r]["pos"], leaves[1].grad[rows], atol=1e-6, rtol=1e-4, name=f"pos grad rank {r}")
        assert_close_verbose(ranks[r]["neg"], leaves[2].grad[negs], atol=1e-6, rtol=1e-4, name=f"neg grad rank {r}")
        assert torch.equal(ranks[r]["sketch"], module.candidate_sketch.counts)
    # Each rank holds its own rows' part of dL/dt; a DDP all-reduce sums them.
    assert_close_verbose(ranks[0]["t"] + ranks[1]["t"], module.log_scale.grad, atol=1e-6, rtol=1e-4, name="t grad")


# ---- fixed temperature and calls without ids (the sentence-transformers convention) ----


def mnrl_formula(query, pos, neg, scale):
    """MultipleNegativesRankingLoss written out: row i's softmax over every positive and every
    negative (cosine × scale), target its own positive; duplicates count as negatives."""
    q = torch.nn.functional.normalize(query.double(), dim=-1)
    docs = torch.cat([pos] + ([neg] if neg is not None else [])).double()
    logits = scale * q @ torch.nn.functional.normalize(docs, dim=-1).T
    return torch.nn.functional.cross_entropy(logits, torch.arange(query.shape[0]))


def test_fixed_temperature_is_a_buffer_and_not_clamped():
    """learn_temperature=False: t is a buffer (same state_dict key), used as given even above
    max_scale, receives no gradient and is not among parameters()."""
    batch = make_batch()
    module = SampledSoftmaxLoss(neg_mode="in_batch", temperature=0.005, learn_temperature=False,
                                logq_correction=False, impl="torch")
    assert list(module.parameters()) == [] and "log_scale" in dict(module.named_buffers())
    assert module.temperature == pytest.approx(0.005) and "learn_temperature=False" in repr(module)
    query = batch["query"].clone().requires_grad_(True)
    out = module(query, batch["pos"], query_ids=batch["query_ids"], pos_ids=batch["pos_ids"], return_components=True)
    assert out.scale.item() == pytest.approx(200.0, rel=1e-6)  # not clamped to 100
    out.total.backward()
    assert query.grad is not None and module.log_scale.grad is None and not module.log_scale.requires_grad
    # The same key as the learned parameter: checkpoints move between the two kinds.
    learned = SampledSoftmaxLoss(logq_correction=False, impl="torch")
    learned.load_state_dict(module.state_dict())
    assert learned.log_scale.item() == pytest.approx(math.log(200.0))
    with pytest.raises(TypeError, match="learn_temperature"):
        SampledSoftmaxLoss(learn_temperature="no")


@pytest.mark.parametrize(
    "neg_mode, with_neg, impl", [("in_batch", False, "auto"), ("mixed_concat", True, "auto"), ("mixed_concat", False, "torch")]
)
def test_no_ids_masks_only_the_own_positive(neg_mode, with_neg, impl):
    """Without ids, a duplicated positive is a negative (as in MNRL): the loss and gradients equal
    the written-out MNRL formula, also for a fixed scale of 20."""
    batch = make_batch(B=9, R=7, D=16, seed=3)
    batch["pos"][4] = batch["pos"][2]  # a duplicate: masked with ids, a negative without
    leaves = [batch["query"].clone().requires_grad_(True), batch["pos"].clone().requires_grad_(True)]
    neg = batch["neg"].clone().requires_grad_(True) if with_neg else None
    module = SampledSoftmaxLoss(neg_mode=neg_mode, temperature=0.05, learn_temperature=False, dims=[16], dim_weights=[1.0],
                                logq_correction=False, impl=impl)
    out = module(*leaves, neg, count_unmasked=True)
    got = out.total
    got_grads = torch.autograd.grad(got, leaves + ([neg] if with_neg else []))
    want_leaves = [x.detach().double().requires_grad_(True) for x in leaves + ([neg] if with_neg else [])]
    want = mnrl_formula(want_leaves[0], want_leaves[1], want_leaves[2] if with_neg else None, 20.0)
    want_grads = torch.autograd.grad(want, want_leaves)
    assert_close_verbose(got.detach().double(), want.detach(), atol=1e-6, rtol=1e-5, name="loss")
    for name, g, w in zip(("query", "pos", "neg"), got_grads, want_grads):
        assert_close_verbose(g.double(), w, atol=1e-6, rtol=1e-4, name=name)
    # Every column but the own positive survives.
    survivors = sum(v.item() for v in out.unmasked_negatives.values())
    assert survivors == pytest.approx(9 - 1 + (7 if with_neg else 0))


@pytest.mark.parametrize(
    "kwargs, ids, match",
    [
        (dict(logq_correction=True), {}, "query_ids and pos_ids are required with logq_correction"),
        (dict(logq_correction=False), {"pos_ids": torch.arange(13)}, "query_ids=None"),
        (dict(logq_correction=False), {"query_ids": torch.arange(13)}, "pos_ids=None"),
        (dict(logq_correction=False), {"neg_ids": torch.arange(11)}, "neg_ids needs query_ids and pos_ids"),
    ],
)
def test_missing_ids(kwargs, ids, match):
    batch = make_batch()
    module = SampledSoftmaxLoss(impl="torch", sketch_width=WIDTH, **kwargs)
    with pytest.raises(ValueError, match=match):
        module(batch["query"], batch["pos"], batch["neg"], **ids)
    if module.logq_correction:
        assert int(module.query_sketch.num_seen) == 0
