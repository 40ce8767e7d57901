"""omnikern.ops._triton: the device guard every Triton launch runs under.

On CPU (the interpreter) the guard is a no-op, and each wrapper is checked to launch its kernels
inside it, with the device of its tensors. On a node with two GPUs the ops run on cuda:1 while the
current device is 0.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import CUDA, DEVICE

import omnikern
from omnikern.ops import _triton, int8, l2norm, loss, sketch
from omnikern.ops.int8 import int8_topk, quantize_int8
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import sampled_softmax_loss
from omnikern.ops.reference import count_min_multipliers_ref
from omnikern.ops.sketch import count_min_query, count_min_update_

KERNELS = {
    l2norm: ["_l2norm_fwd_kernel", "_l2norm_bwd_kernel"],
    int8: ["_int8_quantize_kernel", "_int8_topk_kernel"],
    loss: ["_lse_fwd_kernel", "_lse_bwd_kernel"],
    sketch: ["_sketch_update_kernel", "_sketch_query_kernel"],
}


def test_device_guard_is_a_noop_on_cpu(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("device_guard touched torch.cuda for a CPU tensor")

    monkeypatch.setattr(torch.cuda, "device", no_cuda)
    monkeypatch.setattr(torch.cuda, "set_device", no_cuda)
    x = torch.ones(3)
    guard = _triton.device_guard(x)
    assert isinstance(guard, contextlib.nullcontext)
    with guard:
        assert x.sum().item() == 3.0


def test_device_guard_names_a_bad_argument():
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor, got list"):
        _triton.device_guard([1, 2])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_guard_makes_the_tensor_device_current():
    x = torch.ones(3, device="cuda")
    with _triton.device_guard(x):
        assert torch.cuda.current_device() == x.device.index


class _Recorder:
    """Stands in for ``_triton.device_guard`` and for every kernel: records the guard's device and
    fails a launch made outside the guard."""

    def __init__(self):
        self.active: list[torch.device] = []
        self.launches: list[tuple[str, torch.device]] = []

    @contextlib.contextmanager
    def guard(self, tensor: torch.Tensor):
        self.active.append(tensor.device)
        try:
            yield
        finally:
            self.active.pop()

    def wrap(self, name: str, kernel):
        recorder = self

        class Checked:
            def __getitem__(self, grid):
                launch = kernel[grid]

                def run(*args, **kwargs):
                    assert recorder.active, f"{name} launched outside _triton.device_guard"
                    recorder.launches.append((name, recorder.active[-1]))
                    return launch(*args, **kwargs)

                return run

        return Checked()


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(_triton, "device_guard", rec.guard)
    for module, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(module, name, rec.wrap(name, getattr(module, name)))
    return rec


def _loss_batch(B=5, D=24):
    g = torch.Generator().manual_seed(0)
    return dict(
        query=torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(),
        pos=torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(),
        query_ids=torch.arange(B, device=DEVICE),
        pos_ids=torch.arange(100, 100 + B, device=DEVICE),
    )


def _run_l2norm():
    x = torch.randn(6, 40, device=DEVICE, requires_grad=True)
    y = l2_normalize(x, impl="triton")
    y.sum().backward()
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(6, device=DEVICE))
    return x.device


def _run_quantize():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], device=DEVICE)
    codes, scales = quantize_int8(x, impl="triton")
    assert codes.tolist() == [[64, -127, 32], [0, 0, 0]]
    return x.device


def _run_topk():
    codes = torch.tensor([[10, 0], [0, 10], [-10, 0]], dtype=torch.int8, device=DEVICE)
    scales = torch.ones(3, device=DEVICE)
    scores, ids = int8_topk(torch.tensor([[1.0, 0.1]], device=DEVICE), codes, scales, 2, impl="triton")
    assert ids.tolist() == [[0, 1]]
    return codes.device


def _run_loss():
    b = _loss_batch()
    t = torch.tensor(0.0, device=DEVICE, requires_grad=True)
    total = sampled_softmax_loss(b["query"], b["pos"], log_scale=t, query_ids=b["query_ids"], pos_ids=b["pos_ids"],
                                 neg_mode="in_batch", dims=[8, 24], impl="triton")
    total.backward()
    expected = sampled_softmax_loss(b["query"], b["pos"], log_scale=t, query_ids=b["query_ids"], pos_ids=b["pos_ids"],
                                    neg_mode="in_batch", dims=[8, 24], impl="torch")
    torch.testing.assert_close(total, expected)
    assert b["query"].grad is not None and b["pos"].grad is not None
    return b["query"].device


def _run_sketch():
    counts = torch.zeros((3, 64), dtype=torch.int32, device=DEVICE)
    mult = torch.tensor(count_min_multipliers_ref(3), dtype=torch.int64, device=DEVICE)
    ids = torch.tensor([5, 5, 7], device=DEVICE)
    count_min_update_(counts, ids, mult, impl="triton")
    assert count_min_query(counts, ids, mult, impl="triton").tolist() == [2, 2, 1]
    return counts.device


@pytest.mark.parametrize(
    "run, expected",
    [
        (_run_l2norm, ["_l2norm_fwd_kernel", "_l2norm_bwd_kernel"]),
        (_run_quantize, ["_int8_quantize_kernel"]),
        (_run_topk, ["_int8_quantize_kernel", "_int8_topk_kernel"]),
        (_run_loss, ["_lse_fwd_kernel", "_lse_bwd_kernel", "_lse_bwd_kernel"]),
        (_run_sketch, ["_sketch_update_kernel", "_sketch_query_kernel"]),
    ],
    ids=["l2norm", "quantize", "topk", "loss", "sketch"],
)
def test_every_launch_runs_under_the_guard_of_its_tensors(recorder, run, expected):
    device = run()
    assert [name for name, _ in recorder.launches] == expected
    assert all(d == device for _, d in recorder.launches), recorder.launches


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ops_run_on_the_second_gpu_while_device_0_is_current():
    """Rank 1 of a node before set_device: its tensors are on cuda:1, the current device is 0.
    Each op gives the torch path's answer on cuda:1 and leaves the current device alone."""
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    g = torch.Generator().manual_seed(0)

    x = torch.randn(33, 200, generator=g).to(dev)
    torch.testing.assert_close(l2_normalize(x, impl="triton"), l2_normalize(x, impl="torch"))

    codes, scales = quantize_int8(x, impl="triton")
    want_codes, want_scales = quantize_int8(x, impl="torch")
    assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)
    query = torch.randn(4, 200, generator=g).to(dev)
    got = int8_topk(query, codes, scales, 5, impl="triton")
    want = int8_topk(query, codes, scales, 5, impl="torch")
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])

    q = torch.randn(40, 64, generator=g).to(dev).requires_grad_()
    p = torch.randn(40, 64, generator=g).to(dev).requires_grad_()
    t = torch.tensor(1.0, device=dev, requires_grad=True)
    ids = dict(query_ids=torch.arange(40, device=dev), pos_ids=torch.arange(40, device=dev) + 1000)
    results = {}
    for impl in ("triton", "torch"):
        total = sampled_softmax_loss(q, p, log_scale=t, neg_mode="in_batch", dims=[32, 64], impl=impl, **ids)
        results[impl] = (total, *torch.autograd.grad(total, (q, p, t)))
    for got_t, want_t in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got_t, want_t, atol=1e-5, rtol=1e-4)

    counts = torch.zeros((2, 128), dtype=torch.int32, device=dev)
    mult = torch.tensor(count_min_multipliers_ref(2), dtype=torch.int64, device=dev)
    sketch_ids = torch.tensor([3, 3, 3, 9], device=dev)
    count_min_update_(counts, sketch_ids, mult, impl="triton")
    assert count_min_query(counts, sketch_ids, mult, impl="triton").tolist() == [3, 3, 3, 1]

    torch.cuda.synchronize(dev)
    assert torch.cuda.current_device() == 0


def test_one_impl_vocabulary_each_op_names_its_subset():
    from omnikern.ops._triton import IMPLS, check_impl

    assert check_impl("cpp", ("auto", "cpp")) == "cpp"
    with pytest.raises(ValueError, match=r"^impl must be 'auto', 'triton' or 'torch', got 'cpp'$"):
        check_impl("cpp")
    with pytest.raises(ValueError, match="impl must be 'auto', 'triton', 'torch' or 'cpp', got 'reference'"):
        omnikern.int8_topk(torch.ones(1, 4), torch.ones(2, 4, dtype=torch.int8), torch.ones(2), 1, impl="reference")
    with pytest.raises(ValueError, match="impl must be 'auto', 'triton', 'torch' or 'reference', got 'cpp'"):
        omnikern.SampledSoftmaxLoss(impl="cpp")
    assert set(IMPLS) == {"auto", "triton", "torch", "cpp", "reference"}
