"""omnikern.ops.sampled_softmax_loss: the Triton kernels (interpreter on CPU) and the chunked torch
path against the materialised reference, on loss and on gradients wrt query, pos, neg and t."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import CUDA, DEVICE
from helpers import assert_close_verbose

from omnikern.ops import loss as loss_mod
from omnikern.ops import sampled_softmax_loss
from omnikern.ops.loss import _lse_bwd_op, _lse_fwd_op, resolve_prefixes
from omnikern.ops.reference import sampled_softmax_loss_ref

IMPLS = ["triton", "torch"]

# (dtype, atol, rtol) for the loss and for gradients, against the reference run in float32 on the
# same (rounded) input values: the kernel accumulates in fp32, so only the gradient's final cast
# to the input dtype and the summation order differ.
DTYPES = [
    (torch.float32, 1e-5, 1e-4),
    (torch.float16, 2e-5, 2e-3),
    (torch.bfloat16, 2e-5, 1.6e-2),
]


def make_batch(B=37, R=45, D=64, dtype=torch.float32, id_range=8, device=DEVICE, seed=0):
    """Random (query, pos, neg) with few distinct ids, so that both masking rules fire."""
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "query": torch.randn(B, D, generator=gen),
        "pos": torch.randn(B, D, generator=gen),
        "neg": torch.randn(R, D, generator=gen),
        "query_ids": torch.randint(0, id_range, (B,), generator=gen),
        "pos_ids": torch.randint(0, id_range + 2, (B,), generator=gen),
        "neg_ids": torch.randint(0, id_range + 2, (R,), generator=gen),
    }
    # Make the positives resemble their queries, so the loss is not at its chance value.
    batch["pos"] = batch["pos"] + 2 * batch["query"]
    batch = {k: v.to(device) for k, v in batch.items()}
    for k in ("query", "pos", "neg"):
        batch[k] = batch[k].to(dtype)
    return batch


def logq_for(batch, seed=1):
    gen = torch.Generator().manual_seed(seed)
    B, R = batch["query"].shape[0], batch["neg"].shape[0]
    return {
        "pos_logq": torch.randn(B, generator=gen).to(DEVICE),
        "candidate_logq": torch.randn(B, generator=gen).to(DEVICE),
        "neg_logq": torch.randn(R, generator=gen).to(DEVICE),
    }


def run(fn, batch, log_scale, **kwargs):
    """Loss and gradients (query, pos, neg, t) of one implementation."""
    leaves = {k: batch[k].detach().clone().requires_grad_(True) for k in ("query", "pos", "neg")}
    t = log_scale.detach().clone().requires_grad_(True)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    out = fn(leaves["query"], leaves["pos"], leaves["neg"], log_scale=t, **ids, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in leaves.items()}
    grads["t"] = t.grad
    return loss.detach(), grads


def check(batch, impl, atol=1e-5, rtol=1e-4, log_scale=2.0, **kwargs):
    t = torch.tensor(log_scale, device=DEVICE)
    truth_batch = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
    want, want_grads = run(sampled_softmax_loss_ref, truth_batch, t, **kwargs)
    got, got_grads = run(lambda *a, **k: sampled_softmax_loss(*a, impl=impl, **k), batch, t, **kwargs)
    assert torch.isfinite(want)
    assert_close_verbose(got.double(), want.double(), atol=atol, rtol=rtol, name="loss")
    for name in want_grads:
        assert got_grads[name].dtype == (batch[name].dtype if name != "t" else t.dtype)
        scale = want_grads[name].abs().amax().item() if want_grads[name].numel() else 0.0
        assert_close_verbose(got_grads[name].double(), want_grads[name].double(), atol=atol + rtol * scale, rtol=rtol, name=f"grad {name}")
    return got


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "neg_mode, use_weights, use_logq",
    [
        ("in_batch", False, False),
        ("in_batch", True, True),
        ("random", True, True),
        ("random", False, False),
        ("mixed_sum", True, False),
        ("mixed_sum", False, True),
        ("mixed_concat", False, True),
        ("mixed_concat", True, False),
    ],
)
def test_modes_weights_logq(neg_mode, use_weights, use_logq, impl):
    batch = make_batch()
    kwargs = {"neg_mode": neg_mode}
    if use_weights:
        kwargs["weights"] = torch.rand(37, device=DEVICE) * 2
    if use_logq:
        kwargs.update(logq_for(batch))
    check(batch, impl, **kwargs)


def test_masking_matters_in_test_data():
    """The test batch has duplicate ids: dropping either mask rule changes the reference loss."""
    batch = make_batch()  # on DEVICE: every tensor below follows it
    t = torch.tensor(2.0, device=DEVICE)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    base, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], batch["neg"], log_scale=t, **ids)
    unique_pos = dict(ids, pos_ids=torch.arange(37, device=DEVICE) + 1000, neg_ids=torch.arange(45, device=DEVICE) + 5000)
    no_pos_rule, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], batch["neg"], log_scale=t, **unique_pos)
    unique_query = dict(ids, query_ids=torch.arange(37, device=DEVICE) + 9000)
    no_query_rule, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], batch["neg"], log_scale=t, **unique_query)
    assert abs(base.item() - no_pos_rule.item()) > 1e-3
    assert abs(base.item() - no_query_rule.item()) > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "D, dims, dim_weights",
    [
        (64, [64], [1.0]),  # the full embedding only
        (48, [16, 48], [0.3, 1.0]),  # prefix ends not at block boundaries
        (40, [8, 24, 40, 512], None),  # a prefix below 16; 512 > D is skipped
        (20, None, None),  # the published set: only 16 <= 20
    ],
)
def test_prefix_sets(D, dims, dim_weights, impl):
    batch = make_batch(B=21, R=19, D=D)
    check(batch, impl, dims=dims, dim_weights=dim_weights, **logq_for(batch))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[1:])
def test_half_precision(dtype, atol, rtol, impl):
    batch = make_batch(B=33, R=40, D=48, dtype=dtype)
    check(batch, impl, atol=atol, rtol=rtol, weights=torch.rand(33, device=DEVICE), **logq_for(batch))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("B, R, D", [(1, 1, 16), (1, 7, 33), (65, 9, 17), (64, 64, 32), (3, 0, 16)])
def test_shapes(B, R, D, impl):
    """B = 1, one negative, B and N not multiples of the blocks (32 under the interpreter), D odd,
    and no random negatives at all (that term is then 0: only the positive column is left)."""
    check(make_batch(B=B, R=R, D=D), impl, dims=[D])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dims", [[64, 150], [32, 96, 140, 150]])
def test_wide_embeddings_split_over_d_chunks(dims, impl):
    """D = 150 > the backward's D chunk (128 under the interpreter, four sub-chunks of 32):
    gradients come from two chunk programs; prefixes end on a sub-chunk boundary (32, 96), inside
    one (140, in the second chunk), and at D."""
    batch = make_batch(B=9, R=7, D=150)
    check(batch, impl, dims=dims, dim_weights=[0.5] * (len(dims) - 1) + [1.0], **logq_for(batch))


def test_chunked_torch_path_uses_several_chunks(monkeypatch):
    """Tiny chunks, so the online log-sum-exp and the tiled backward cross chunk boundaries."""
    monkeypatch.setattr(loss_mod, "CHUNK_ROWS", 5)
    monkeypatch.setattr(loss_mod, "CHUNK_COLS", 7)
    batch = make_batch(B=23, R=30, D=32)
    check(batch, "torch", weights=torch.rand(23, device=DEVICE), **logq_for(batch))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("neg_mode", ["random", "mixed_sum", "mixed_concat"])
def test_no_random_negatives(neg_mode, impl):
    """neg=None means R = 0: the random softmax holds only the positive (its CE is 0), so
    mixed_sum / mixed_concat reduce to the in-batch loss and random gives 0."""
    batch = make_batch(B=10, R=1, D=16)
    t = torch.tensor(2.0, device=DEVICE)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids")}
    out = sampled_softmax_loss(batch["query"], batch["pos"], None, log_scale=t, neg_mode=neg_mode, dims=[16], impl=impl, return_components=True, **ids)
    in_batch, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], log_scale=t, neg_mode="in_batch", dims=[16], **ids)
    want = 0.0 if neg_mode == "random" else in_batch.item()
    assert out.total.item() == pytest.approx(want, abs=1e-6)
    ref, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], None, log_scale=t, neg_mode=neg_mode, dims=[16], **ids)
    assert ref.item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_explicit_candidates(impl):
    """A capped in-batch set: candidates are a subset of pos with their own ids."""
    batch = make_batch(B=30, R=12, D=32)
    keep = torch.tensor([0, 3, 4, 9, 17, 25, 29], device=DEVICE)

    def with_candidates(fn):
        def call(query, pos, neg, **kw):
            return fn(
                query, pos, neg, candidates=pos[keep], candidate_ids=kw["pos_ids"][keep],
                candidate_query_ids=kw["query_ids"][keep], candidate_logq=torch.linspace(-1, 1, 7, device=DEVICE), **kw,
            )  # fmt: skip

        return call

    t = torch.tensor(2.5, device=DEVICE)
    want, want_grads = run(with_candidates(sampled_softmax_loss_ref), batch, t)
    got, got_grads = run(with_candidates(lambda *a, **k: sampled_softmax_loss(*a, impl=impl, **k)), batch, t)
    assert_close_verbose(got, want, atol=1e-5, rtol=1e-4, name="loss")
    for name in want_grads:
        assert_close_verbose(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4, name=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_row_contributes_zero(impl):
    """A row whose every negative shares its positive id has only the positive left: ℓ = 0 there,
    with no NaN from −inf − (−inf) in the online log-sum-exp or in exp(z − lse) in the backward."""
    batch = make_batch(B=4, R=6, D=16)
    batch["pos_ids"] = torch.tensor([7, 1, 2, 3], device=DEVICE)
    batch["neg_ids"] = torch.full((6,), 7, device=DEVICE)
    batch["query_ids"] = torch.arange(4, device=DEVICE)
    got = check(batch, impl, neg_mode="random", dims=[16])
    assert torch.isfinite(got)


@pytest.mark.parametrize("impl", IMPLS)
def test_confident_logits_at_max_scale(impl):
    """At the clamp (scale 100) with near-duplicate vectors the logits reach ±100: the online
    log-sum-exp must not overflow, and the gradients must match the reference."""
    batch = make_batch(B=20, R=20, D=32)
    batch["neg"] = batch["query"][:20] + 1e-3 * batch["neg"]
    check(batch, impl, log_scale=math.log(100.0), dims=[32], atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_weights_give_zero_not_nan(impl):
    batch = make_batch(B=5, R=4, D=16)
    out = check(batch, impl, weights=torch.zeros(5, device=DEVICE), dims=[16])
    assert out.item() == 0.0


# The interpreter runs kernels in numpy, which warns on inf·0 and NaN arithmetic; a GPU does not.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", ["nan_query", "inf_neg", "nan_candidate_pos"])
def test_nonfinite_embeddings_give_nan_loss(bad, impl):
    """Documented behaviour: NaN or ±inf in a used prefix of any row makes the loss NaN (as in the
    reference), even where the kernel's max or exp would have dropped it; no error, no host sync."""
    batch = make_batch(B=6, R=5, D=16)
    if bad == "nan_query":
        batch["query"][2, 3] = float("nan")
    elif bad == "inf_neg":
        batch["neg"][1, 0] = float("inf")
    else:
        batch["pos"][4, 7] = float("nan")
    t = torch.tensor(2.0, device=DEVICE)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    got = sampled_softmax_loss(batch["query"], batch["pos"], batch["neg"], log_scale=t, impl=impl, dims=[16], **ids)
    want, _ = sampled_softmax_loss_ref(batch["query"], batch["pos"], batch["neg"], log_scale=t, dims=[16], **ids)
    assert torch.isnan(want) and torch.isnan(got)


def test_auto_uses_triton_when_interpreting_or_cuda():
    batch = make_batch(B=3, R=2, D=16)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    out = sampled_softmax_loss(batch["query"], batch["pos"], batch["neg"], log_scale=torch.tensor(1.0, device=DEVICE), **ids)
    assert out.shape == () and torch.isfinite(out)


def test_components_add_up_to_the_loss():
    batch = make_batch(B=9, R=8, D=64)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    t = torch.tensor(2.0, device=DEVICE)
    out = sampled_softmax_loss(batch["query"], batch["pos"], batch["neg"], log_scale=t, return_components=True, **ids)
    _, want = sampled_softmax_loss_ref(batch["query"], batch["pos"], batch["neg"], log_scale=t, **ids)
    assert out.dims == [16, 32, 64] and out.dim_weights == [0.05, 0.05, 0.05]
    assert sorted(out.components) == sorted(want) == sorted(f"{term}@{d}" for term in ("in_batch", "random") for d in (16, 32, 64))
    for name, value in want.items():
        assert_close_verbose(out.components[name], value, atol=1e-5, rtol=1e-5, name=name)
    total = sum(0.05 * v for v in out.components.values())
    assert_close_verbose(out.total, total, atol=1e-6, rtol=1e-6)


def _gradcheck_inputs():
    gen = torch.Generator().manual_seed(3)
    q, p, n = (torch.randn(r, 6, dtype=torch.float64, generator=gen, requires_grad=True) for r in (4, 4, 5))
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    ids = dict(
        query_ids=torch.tensor([0, 1, 0, 2]), pos_ids=torch.tensor([5, 6, 7, 5]), neg_ids=torch.tensor([5, 1, 2, 7, 9])
    )
    return (q, p, n, t), ids


@pytest.mark.parametrize("which", ["reference", "torch"])
@pytest.mark.parametrize("neg_mode", ["mixed_sum", "mixed_concat"])
def test_gradcheck_float64(which, neg_mode, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_ROWS", 3)
    monkeypatch.setattr(loss_mod, "CHUNK_COLS", 2)
    inputs, ids = _gradcheck_inputs()
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    logq = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)

    def fn(q, p, n, t):
        kw = dict(log_scale=t, neg_mode=neg_mode, weights=weights, neg_logq=logq, dims=[3, 6], dim_weights=[0.5, 1.0], **ids)
        if which == "reference":
            return sampled_softmax_loss_ref(q, p, n, **kw)[0]
        return sampled_softmax_loss(q, p, n, impl="torch", **kw)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("use_triton", [True, False])
def test_opcheck(use_triton):
    batch = make_batch(B=5, R=6, D=20)
    q, c = batch["query"], batch["neg"]
    rq = torch.rand(2, 5, device=DEVICE) + 0.5
    rc = torch.rand(2, 6, device=DEVICE) + 0.5
    t = torch.tensor(1.5, device=DEVICE)
    corr = torch.randn(6, device=DEVICE)
    ids = (batch["pos_ids"], batch["query_ids"], batch["neg_ids"], batch["neg_ids"])
    args = (q, c, rq, rc, t, corr, *ids, [0, 16, 20], True, use_triton)
    grad_args = tuple(x.clone().requires_grad_(True) for x in (q, c, rq, rc, t))
    torch.library.opcheck(_lse_fwd_op, grad_args + args[5:])
    lse = _lse_fwd_op(*args)
    torch.library.opcheck(_lse_bwd_op, (torch.randn_like(lse), lse, *args))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """The lse op is one opaque node per direction: compiled loss and gradients equal eager (inductor
    generates code for the O(B·D) torch work around it). Two prefixes on purpose: with one shared
    inverse-norm tensor for the positive logits and the op, inductor got the query gradient wrong."""
    batch = make_batch(B=8, R=6, D=32)
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}

    def model(q, w, p, n, t):
        return sampled_softmax_loss(q @ w, p, n, log_scale=t, dims=[16, 32], **ids)

    w = torch.eye(32, device=DEVICE, requires_grad=True)
    t = torch.tensor(2.0, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(batch["query"], w, batch["pos"], batch["neg"], t)
    out.backward()
    grads = (w.grad.clone(), t.grad.clone())
    w.grad = t.grad = None
    expected = model(batch["query"], w, batch["pos"], batch["neg"], t)
    expected.backward()
    assert_close_verbose(out, expected, atol=1e-6, rtol=1e-6)
    assert_close_verbose(grads[0], w.grad, atol=1e-6, rtol=1e-6)
    assert_close_verbose(grads[1], t.grad, atol=1e-6, rtol=1e-6)


def test_fake_tensor_shapes():
    """Meta tensors (no data) go through the op's registered fake implementation, as torch.compile's
    tracing does; public API only (FakeTensorMode lives in a private module)."""
    with torch.device("meta"):
        q, p, n = torch.empty(5, 64, dtype=torch.bfloat16), torch.empty(5, 64, dtype=torch.bfloat16), torch.empty(7, 64, dtype=torch.bfloat16)
        ids = dict(query_ids=torch.zeros(5, dtype=torch.int64), pos_ids=torch.zeros(5, dtype=torch.int64), neg_ids=torch.zeros(7, dtype=torch.int64))
        out = sampled_softmax_loss(q, p, n, log_scale=torch.zeros(()), return_components=True, **ids)
        assert out.total.shape == () and out.total.dtype == torch.float32
        assert len(out.components) == 6


def test_resolve_prefixes():
    assert resolve_prefixes(None, None, 256) == ([16, 32, 64, 128, 256], [0.05, 0.05, 0.05, 0.05, 1.0])
    assert resolve_prefixes([64, 8], [1.0, 2.0], 64) == ([8, 64], [2.0, 1.0])
    with pytest.raises(ValueError, match="dims has no prefix dim <= the embedding dim 8"):
        resolve_prefixes(None, None, 8)


def _bad(**changes):
    batch = make_batch(B=4, R=3, D=16, device="cpu")
    kwargs = dict(
        query=batch["query"], pos=batch["pos"], neg=batch["neg"], log_scale=torch.tensor(1.0),
        query_ids=batch["query_ids"], pos_ids=batch["pos_ids"], neg_ids=batch["neg_ids"], impl="torch",
    )  # fmt: skip
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(query=[[1.0]]), TypeError, "query must be a torch.Tensor"),
        (dict(query=torch.ones(4, 16, dtype=torch.int64)), TypeError, "query must be float16"),
        (dict(pos=torch.randn(4, 8)), ValueError, "query and pos must have the same embedding dim, got 16 and 8"),
        (dict(pos=torch.randn(5, 16)), ValueError, "query and pos must have the same number of rows, got 4 and 5"),
        (dict(neg=torch.randn(3, 12)), ValueError, "query and neg must have the same embedding dim"),
        (dict(pos=torch.randn(4, 16, dtype=torch.float16)), TypeError, "pos must have query's dtype"),
        (dict(query=torch.randn(16)), ValueError, "query must be 2-D"),
        (dict(query=torch.randn(0, 16), pos=torch.randn(0, 16)), ValueError, "query must hold at least one row"),
        (dict(query_ids=torch.zeros(4, dtype=torch.int32)), TypeError, "query_ids must be int64"),
        (dict(pos_ids=torch.zeros(4)), TypeError, "pos_ids must be int64"),
        (dict(pos_ids=torch.zeros(5, dtype=torch.int64)), ValueError, r"pos_ids must have shape \(4,\)"),
        (dict(neg_ids=torch.zeros(4, dtype=torch.int64)), ValueError, r"neg_ids must have shape \(3,\)"),
        (dict(neg_ids=None), ValueError, "neg_ids is required"),
        (dict(neg=None), ValueError, "neg_ids needs neg"),
        (dict(neg_mode="hard"), ValueError, "neg_mode must be one of"),
        (dict(weights=torch.ones(3)), ValueError, r"weights must have shape \(4,\)"),
        (dict(neg_logq=torch.ones(4)), ValueError, r"neg_logq must have shape \(3,\)"),
        (dict(log_scale=1.0), TypeError, "log_scale must be a floating tensor"),
        (dict(dims=[32, 64]), ValueError, "dims has no prefix dim <= the embedding dim 16"),
        (dict(dims=[8, 8]), ValueError, "dims must not repeat"),
        (dict(dims=[8], dim_weights=[1.0, 2.0]), ValueError, "dim_weights must have one weight per dim"),
        (dict(candidates=torch.randn(2, 16)), ValueError, "candidates needs candidate_ids"),
        (dict(impl="gpu"), ValueError, "impl must be"),
        (dict(neg=torch.randn(3, 16, device="meta")), ValueError, "neg must be on query's device"),
        (dict(pos_ids=torch.zeros(4, dtype=torch.int64, device="meta")), ValueError, "pos_ids must be on query's device"),
    ],
)
def test_bad_input(changes, error, match):
    with pytest.raises(error, match=match):
        sampled_softmax_loss(**_bad(**changes))


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from omnikern.ops import loss as L

target = GPUTarget("cuda", 90, 32)
ids = {name: "*i64" for name in ("row_pos_ids_ptr", "row_q_ids_ptr", "col_ids_ptr", "col_q_ids_ptr")}
meta = dict(NUM_P=2, P_PAD=2, USE_QMASK=True, BLOCK_D=64, UPCAST_BF16=False, IEEE=False, INTERPRET=False)
fwd = {"q_ptr": "*bf16", "c_ptr": "*bf16", "rq_ptr": "*fp32", "rc_ptr": "*fp32", "log_scale_ptr": "*fp32",
       "corr_ptr": "*fp32", **ids, "bounds_ptr": "*i32", "lse_ptr": "*fp32",
       "B": "i32", "N": "i32", "stride_qb": "i32", "stride_cn": "i32"}
fwd_meta = dict(meta, BLOCK_B=64, BLOCK_N=64)
fwd.update({k: "constexpr" for k in fwd_meta})
kernel = triton.compile(ASTSource(L._lse_fwd_kernel, fwd, constexprs=fwd_meta), target=target, options={"num_warps": 4})
print("fwd", kernel.metadata.shared)
bwd = {"a_ptr": "*bf16", "b_ptr": "*bf16", "ra_ptr": "*fp32", "rb_ptr": "*fp32", "log_scale_ptr": "*fp32",
       "corr_ptr": "*fp32", **ids, "bounds_ptr": "*i32", "lse_ptr": "*fp32", "grad_lse_ptr": "*fp32",
       "grad_a_ptr": "*bf16", "grad_ra_ptr": "*fp32", "grad_scale_ptr": "*fp32",
       "B": "i32", "N": "i32", "D": "i32", "stride_a": "i32", "stride_b": "i32", "stride_ga": "i32"}
for a_is_query in (True, False):
    bwd_meta = dict(meta, A_IS_QUERY=a_is_query, BLOCK_A=64, BLOCK_LOOP=64, BLOCK_DO=256)
    signature = dict(bwd, **{k: "constexpr" for k in bwd_meta})
    kernel = triton.compile(ASTSource(L._lse_bwd_kernel, signature, constexprs=bwd_meta), target=target, options={"num_warps": 8})
    print("bwd", kernel.metadata.shared)
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The interpreter accepts things the GPU compiler rejects: compile the bf16 kernels ahead of
    time for an H100 (sm_90; triton ships ptxas, no GPU needed) and check their shared memory."""
    import subprocess
    import sys

    if CUDA:
        pytest.skip("a GPU runs the kernels for real in the other tests")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr:
        pytest.skip("this triton has no bundled ptxas")
    assert done.returncode == 0, done.stderr[-3000:]
    shared = [int(line.split()[1]) for line in done.stdout.splitlines()]
    assert len(shared) == 3 and max(shared) <= 100 * 1024, done.stdout


@pytest.mark.parametrize("impl", IMPLS)
def test_never_materialises_rows_by_candidates(impl, monkeypatch):
    """Every tensor created in forward and backward is far smaller than B × N (here 150 × 140 with
    64 × 64 tiles for the torch path): the logits live only tile by tile."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, t.numel())
            return out

    monkeypatch.setattr(loss_mod, "CHUNK_ROWS", 64)
    monkeypatch.setattr(loss_mod, "CHUNK_COLS", 64)
    batch = make_batch(B=150, R=140, D=16)
    leaves = [batch[k].clone().requires_grad_(True) for k in ("query", "pos", "neg")]
    ids = {k: batch[k] for k in ("query_ids", "pos_ids", "neg_ids")}
    t = torch.tensor(2.0, device=DEVICE, requires_grad=True)
    with LargestTensor():
        loss = sampled_softmax_loss(*leaves, log_scale=t, impl=impl, neg_mode="mixed_concat", dims=[16], **ids)
        loss.backward()
    assert torch.isfinite(loss)
    assert 0 < LargestTensor.largest <= 64 * 64, LargestTensor.largest


def test_prefix_bounds_are_copied_to_the_device_once(monkeypatch):
    """Forward and backward of two steps read one cached bounds tensor: no host-to-device copy per
    call (that copy would break CUDA-graph capture)."""
    seen = []
    kernels = {name: getattr(loss_mod, name) for name in ("_lse_fwd_kernel", "_lse_bwd_kernel")}

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                seen.append(args[10])  # bounds_ptr, the 11th argument of both kernels
                return self.kernel[grid](*args, **kwargs)

            return run

    for name, kernel in kernels.items():
        monkeypatch.setattr(loss_mod, name, Spy(kernel))
    batch = make_batch(B=6, R=0, D=24)
    for _ in range(2):
        t = torch.tensor(0.5, device=DEVICE, requires_grad=True)
        total = sampled_softmax_loss(batch["query"], batch["pos"], log_scale=t, query_ids=batch["query_ids"],
                                     pos_ids=batch["pos_ids"], neg_mode="in_batch", dims=[8, 24], impl="triton")
        total.backward()
    assert len(seen) == 6  # (fwd, bwd dq, bwd dc) × 2 steps
    assert all(b is seen[0] for b in seen)
    assert seen[0].tolist() == [0, 8, 24] and seen[0].dtype == torch.int32 and seen[0].device == batch["query"].device
    assert loss_mod._bounds_tensor((0, 8, 24), batch["query"].device) is seen[0]
    assert loss_mod._bounds_tensor((0, 24), batch["query"].device) is not seen[0]
