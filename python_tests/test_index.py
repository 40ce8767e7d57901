"""Int8Index: search against exact fp32 search (recall), re-ranking, add/remove, save/load and
corrupted files."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA, DEVICE

from omnikern import Int8Index
from omnikern.ops.reference import int8_topk_ref, quantize_int8_ref

# The index search path: the GPU kernel when there is one, else the C++ kernel (the interpreter
# would take minutes on these sizes).
IMPL = "auto" if CUDA else "cpp"


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _random_data(n: int, d: int) -> torch.Tensor:
    return _normalised(torch.randn(n, d))


def _clustered_data(n: int, d: int, clusters: int = 64) -> torch.Tensor:
    centers = torch.randn(clusters, d)
    assign = torch.randint(0, clusters, (n,))
    return _normalised(centers[assign] + 0.35 * torch.randn(n, d))


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.numel()


def _faiss_sq8_recall(base: torch.Tensor, queries: torch.Tensor, truth: torch.Tensor, k: int) -> float | None:
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexScalarQuantizer(base.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(base.numpy())
    index.add(base.numpy())
    _, found = index.search(queries.numpy(), k)
    return _recall(torch.from_numpy(found), truth)


# faiss SQ8's recall@10 on the seeded data below (faiss-cpu 1.15.1): the bar where faiss is not
# installed. A fixed bar of 0.95 would be above what SQ8 itself reaches on the clustered data.
FAISS_SQ8_RECALL = {"random": 0.9805, "clustered": 0.9365}


@pytest.mark.parametrize("data", ["random", "clustered"])
def test_recall_at_10_against_exact_fp32(data):
    """int8 recall@10 is at least faiss SQ8's on the same data (its recorded recall without faiss);
    re-ranking a 4·k shortlist with the float vectors restores >= 0.999."""
    n, d, q, k = 20000, 64, 200, 10
    make = _random_data if data == "random" else _clustered_data
    base, queries = make(n + q, d).split([n, q])
    truth = torch.topk(queries @ base.T, k, dim=1).indices
    index = Int8Index(d, keep_float=True, device=DEVICE)
    index.add(base, torch.arange(n, dtype=torch.int64) + 1000)
    _, ids = index.search(queries, k, impl=IMPL)
    recall = _recall(ids.cpu() - 1000, truth)
    bar = _faiss_sq8_recall(base, queries, truth, k)
    if bar is None:
        bar = FAISS_SQ8_RECALL[data]
    assert recall >= bar, f"int8 recall {recall:.4f}, faiss SQ8 {bar:.4f}"
    _, ids = index.search(queries, k, rerank=4 * k, impl=IMPL)
    assert _recall(ids.cpu() - 1000, truth) >= 0.999


def test_search_matches_reference_and_maps_ids():
    base = _random_data(300, 24)
    ids = torch.randperm(10_000)[:300].to(torch.int64)
    index = Int8Index(24)
    index.add(base[:100], ids[:100])
    index.add(base[100:], ids[100:])  # two adds grow the storage
    assert len(index) == 300
    queries = _random_data(5, 24)
    codes, scales = quantize_int8_ref(base)
    for dim in (None, 7):
        scores, found = index.search(queries, 8, dim=dim, impl=IMPL)
        want_s, want_i = int8_topk_ref(queries, codes, scales, 8, dim)
        assert torch.equal(found.cpu(), ids[want_i])
        torch.testing.assert_close(scores.cpu(), want_s, atol=1e-6, rtol=0)
    # k > N pads with -inf / -1.
    scores, found = index.search(queries, 305, impl=IMPL)
    assert (found[:, 300:] == -1).all() and torch.isinf(scores[:, 300:]).all()
    assert sorted(found[0, :300].tolist()) == sorted(ids.tolist())


def test_exclude_ids_leaves_out_the_query_item():
    base = _random_data(200, 16)
    ids = torch.arange(200, dtype=torch.int64) * 7 + 5
    index = Int8Index(16, keep_float=True)
    index.add(base, ids)
    queries = base[[0, 10, 20]]
    _, found = index.search(queries, 3, impl=IMPL)
    assert found[:, 0].tolist() == ids[[0, 10, 20]].tolist()  # a vector's best match is itself
    exclude = torch.tensor([5, 75, 999])  # the last id is not in the index: nothing excluded
    for rerank in (0, 12):
        _, found = index.search(queries, 3, rerank=rerank, exclude_ids=exclude, impl=IMPL)
        assert 5 not in found[0].tolist() and 75 not in found[1].tolist()
        assert found[2, 0].item() == ids[20].item()
    with pytest.raises(ValueError, match="exclude_ids"):
        index.search(queries, 3, exclude_ids=torch.tensor([1, 2]), impl=IMPL)
    with pytest.raises(TypeError, match="exclude_ids"):
        index.search(queries, 3, exclude_ids=torch.tensor([1, 2, 3], dtype=torch.int32), impl=IMPL)


def test_rerank_orders_by_exact_float_scores():
    base = _clustered_data(2000, 32)
    queries = _clustered_data(10, 32)
    index = Int8Index(32, keep_float=True)
    index.add(base, torch.arange(2000, dtype=torch.int64))
    for dim in (None, 16):
        scores, found = index.search(queries, 5, dim=dim, rerank=2000, impl=IMPL)
        b, qq = base[:, : dim or 32].double(), queries[:, : dim or 32].double()
        exact = qq @ b.T
        if dim is not None:
            exact = exact / (qq.norm(dim=1, keepdim=True) * b.norm(dim=1))
        want_s, want_i = torch.sort(exact, dim=1, descending=True, stable=True)
        assert torch.equal(found, want_i[:, :5])
        torch.testing.assert_close(scores, want_s[:, :5].float())


def test_remove_and_add_again():
    base = _random_data(50, 8)
    index = Int8Index(8, keep_float=True)
    index.add(base, torch.arange(50, dtype=torch.int64))
    assert index.remove(torch.tensor([3, 7, 99])) == 2
    assert len(index) == 48
    _, found = index.search(base[[3, 7, 8]], 48, impl=IMPL)
    assert not torch.isin(found, torch.tensor([3, 7])).any()
    assert found[2, 0].item() == 8
    index.add(base[[3]], torch.tensor([3]))
    _, found = index.search(base[[3]], 1, rerank=4, impl=IMPL)
    assert found.item() == 3


@pytest.mark.parametrize("keep_float", [False, True])
def test_save_load_round_trip(tmp_path, keep_float):
    pytest.importorskip("safetensors")
    index = Int8Index(12, keep_float=keep_float)
    index.add(_random_data(40, 12), torch.arange(100, 140, dtype=torch.int64))
    index.remove(torch.tensor([105]))
    path = tmp_path / "index.safetensors"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.safetensors"]  # no temp file left
    loaded = Int8Index.load(path)
    assert (loaded.dim, loaded.keep_float, len(loaded)) == (12, keep_float, 39)
    assert torch.equal(loaded.codes, index.codes) and torch.equal(loaded.scales, index.scales)
    assert torch.equal(loaded.ids, index.ids)
    if keep_float:
        assert torch.equal(loaded.vectors, index.vectors)
    queries = _random_data(3, 12)
    assert all(torch.equal(a, b) for a, b in zip(loaded.search(queries, 5, impl=IMPL), index.search(queries, 5, impl=IMPL)))
    loaded.add(_random_data(2, 12), torch.tensor([1, 2]))  # a loaded index can grow
    assert len(loaded) == 41


def test_empty_index_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    index = Int8Index(16, keep_float=True)
    index.save(tmp_path / "empty.safetensors")
    loaded = Int8Index.load(tmp_path / "empty.safetensors", device=DEVICE)
    assert len(loaded) == 0 and loaded.keep_float and loaded.codes.device.type == DEVICE
    loaded.add(_random_data(3, 16), torch.arange(3, dtype=torch.int64))  # an empty loaded index can grow
    assert len(loaded) == 3


def test_kernel_path_matches_torch():
    """Search through the Triton kernel (the interpreter on CPU) returns what the torch path returns."""
    index = Int8Index(16, keep_float=True, device=DEVICE)
    index.add(_random_data(50, 16), torch.arange(50, dtype=torch.int64) * 3)
    queries = _random_data(4, 16)
    scores, ids = index.search(queries, 5, impl="triton")
    want_s, want_ids = index.search(queries, 5, impl="torch")
    assert torch.equal(ids, want_ids) and torch.equal(scores, want_s)


def _saved_bytes(tmp_path) -> tuple[bytes, object]:
    pytest.importorskip("safetensors")
    index = Int8Index(4, keep_float=True)
    index.add(_random_data(5, 4), torch.arange(5, dtype=torch.int64))
    path = tmp_path / "small.safetensors"
    index.save(path)
    return path.read_bytes(), path


def test_truncated_and_bad_header_files_raise(tmp_path):
    data, path = _saved_bytes(tmp_path)
    for cut in (0, 5, 8, 20, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid omnikern Int8Index"):
            Int8Index.load(path)
    path.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(ValueError, match="header length"):
        Int8Index.load(path)
    path.write_bytes(data[:8] + b"[" + data[9:])
    with pytest.raises(ValueError, match="header"):
        Int8Index.load(path)
    with pytest.raises(FileNotFoundError):
        Int8Index.load(tmp_path / "missing.safetensors")


def test_every_bit_flip_is_detected(tmp_path):
    """Flipping one bit anywhere (header or tensor bytes) raises ValueError, never loads garbage."""
    data, path = _saved_bytes(tmp_path)
    for pos in range(len(data)):
        for bit in (0x01, 0x80):
            corrupted = bytearray(data)
            corrupted[pos] ^= bit
            path.write_bytes(bytes(corrupted))
            with pytest.raises(ValueError, match="not a valid omnikern Int8Index"):
                Int8Index.load(path)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dim"):
        Int8Index(0)
    index = Int8Index(8)
    with pytest.raises(ValueError, match="empty"):
        index.search(torch.randn(2, 8), 3)
    with pytest.raises(TypeError, match="vectors"):
        index.add(torch.ones(2, 8, dtype=torch.int32), torch.arange(2))
    with pytest.raises(TypeError, match="ids"):
        index.add(torch.randn(2, 8), torch.arange(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="vectors"):
        index.add(torch.randn(2, 7), torch.arange(2))
    with pytest.raises(ValueError, match="ids"):
        index.add(torch.randn(2, 8), torch.arange(3))
    with pytest.raises(ValueError, match="vectors"):
        index.add(torch.full((2, 8), float("nan")), torch.arange(2))
    with pytest.raises(ValueError, match="ids"):
        index.add(torch.randn(2, 8), torch.tensor([4, 4]))
    index.add(torch.randn(3, 8), torch.arange(3))
    with pytest.raises(ValueError, match="ids"):
        index.add(torch.randn(1, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="rerank"):
        index.search(torch.randn(2, 8), 3, rerank=12)
    with pytest.raises(ValueError, match="k"):
        index.search(torch.randn(2, 8), 0)
    with pytest.raises(ValueError, match="embedding dim"):
        index.search(torch.randn(2, 9), 3, impl=IMPL)
    with pytest.raises(ValueError, match="query"):
        index.search(torch.full((1, 8), float("nan")), 3, impl=IMPL)
    with pytest.raises(ValueError, match="dim"):
        index.search(torch.randn(2, 8), 3, dim=9, impl=IMPL)
    with pytest.raises(TypeError, match="queries"):
        index.search([[0.0] * 8], 3)
