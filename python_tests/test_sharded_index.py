"""ShardedIndex answers exactly as one Int8Index over the same rows; its directory and index sets
round-trip and refuse damage, naming the file."""

from __future__ import annotations

import json

import pytest
import torch

import omnikern
from omnikern.index import Int8Index
from omnikern.sharded_index import ShardedIndex, read_index_set, write_index_set


def corpus(n: int = 103, d: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, d, generator=g)
    if n > 90:  # exact duplicates, in different shards of 4: ties across shards
        vectors[40] = vectors[3]
        vectors[90] = vectors[3]
        vectors[41] = vectors[40]
    ids = torch.randperm(10 * n, generator=g)[:n].to(torch.int64)
    return vectors, ids


def single(vectors, ids, keep_float=False):
    index = Int8Index(vectors.shape[1], keep_float)
    index.add(vectors, ids)
    return index


@pytest.mark.parametrize("shards", [1, 2, 4, 7])
@pytest.mark.parametrize("k", [1, 7, 30, 200])
def test_equal_to_one_index(shards, k):
    vectors, ids = corpus()
    queries = torch.cat([vectors[[3, 40, 5]], torch.randn(5, vectors.shape[1], generator=torch.Generator().manual_seed(1))])
    one, many = single(vectors, ids), ShardedIndex.build(vectors, ids, shards)
    assert [len(s) for s in many.shards] == [(i + 1) * 103 // shards - i * 103 // shards for i in range(shards)]
    # The C++ kernel (the interpreter's Triton kernel is slow; one case below runs it).
    for kwargs in ({}, {"dim": 8}, {"exclude_ids": ids[[3, 40, 5, 0, 1, 2, 99, 100]]},
                   {"exclude_ids": torch.full((8,), -12345, dtype=torch.int64)}):
        want = one.search(queries, k, impl="cpp", **kwargs)
        got = many.search(queries, k, impl="cpp", **kwargs)
        assert torch.equal(got[1], want[1]), kwargs
        assert torch.equal(got[0], want[0]), kwargs
    # The duplicates of row 3 come back in insertion order, across shards.
    _, found = many.search(vectors[3:4], 4, impl="cpp")
    if k >= 4:
        assert found[0, :4].tolist() == ids[[3, 40, 41, 90]].tolist()


@pytest.mark.parametrize("shards", [1, 3, 5])
@pytest.mark.parametrize(("k", "rerank"), [(5, 20), (10, 10), (3, 150), (120, 30)])
def test_rerank_equal_to_one_index(shards, k, rerank):
    vectors, ids = corpus(seed=2)
    queries = torch.randn(6, vectors.shape[1], generator=torch.Generator().manual_seed(3))
    one, many = single(vectors, ids, True), ShardedIndex.build(vectors, ids, shards, keep_float=True)
    for dim in (None, 12):
        want, got = one.search(queries, k, dim, rerank, impl="cpp"), many.search(queries, k, dim, rerank, impl="cpp")
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_equal_under_the_default_kernel():
    vectors, ids = corpus(n=40)
    one, many = single(vectors, ids, True), ShardedIndex.build(vectors, ids, 3, keep_float=True)
    for want, got in ((one.search(vectors[:2], 5), many.search(vectors[:2], 5)),
                      (one.search(vectors[:2], 3, rerank=8), many.search(vectors[:2], 3, rerank=8))):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_unequal_and_empty_shards():
    vectors, ids = corpus(n=30)
    parts = [single(vectors[:2], ids[:2]), Int8Index(vectors.shape[1]), single(vectors[2:], ids[2:])]
    many = ShardedIndex(parts)
    want = single(vectors, ids).search(vectors[:4], 40)
    got = many.search(vectors[:4], 40)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[1][0, -1] == -1 and got[0][0, -1] == float("-inf")  # 40 > 30 rows: padded
    with pytest.raises(ValueError, match="the index is empty"):
        ShardedIndex([Int8Index(4)]).search(torch.ones(1, 4), 1)


def test_bad_arguments():
    vectors, ids = corpus(n=10)
    with pytest.raises(ValueError, match=r"shards must be at most the number of rows \(10\), got 11"):
        ShardedIndex.build(vectors, ids, 11)
    with pytest.raises(ValueError, match="shards must be an int >= 1, got 0"):
        ShardedIndex.build(vectors, ids, 0)
    with pytest.raises(ValueError, match="ids must be distinct"):
        ShardedIndex.build(vectors, torch.zeros(10, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="shards must share dim"):
        ShardedIndex([Int8Index(4), Int8Index(5)])
    with pytest.raises(TypeError, match="non-empty sequence of Int8Index"):
        ShardedIndex([])
    with pytest.raises(ValueError, match="rerank=5 needs the float vectors"):
        ShardedIndex.build(vectors, ids, 2).search(vectors[:1], 1, rerank=5)
    assert omnikern.ShardedIndex is ShardedIndex


def test_save_load_round_trip_and_damage(tmp_path):
    vectors, ids = corpus()
    many = ShardedIndex.build(vectors, ids, 3, keep_float=True)
    many.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["count"] == 103 and [s["file"] for s in manifest["shards"]] == [
        f"shard-0000{i}-of-00003.safetensors" for i in range(3)]
    loaded = ShardedIndex.load(tmp_path / "idx")
    q = vectors[:5]
    assert all(torch.equal(a, b) for a, b in zip(loaded.search(q, 9, rerank=20), many.search(q, 9, rerank=20)))
    shard = tmp_path / "idx" / "shard-00001-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{shard}: its size or checksum differs"):
        ShardedIndex.load(tmp_path / "idx")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard}: no such file"):
        ShardedIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a valid sharded index manifest"):
        ShardedIndex.load(tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match="not a sharded index directory"):
        ShardedIndex.load(tmp_path)


def test_index_sets(tmp_path):
    vectors, ids = corpus()
    pins, products = single(vectors[:50], ids[:50]), ShardedIndex.build(vectors[50:], ids[50:], 2)
    write_index_set(tmp_path / "set", {"pin": pins, "product": products})
    found = read_index_set(tmp_path / "set")
    assert sorted(found) == ["pin", "product"] and len(found["product"].shards) == 2
    assert torch.equal(found["pin"].search(vectors[:3], 5)[1], pins.search(vectors[:3], 5)[1])
    assert list(read_index_set(tmp_path / "set", ["product"])) == ["product"]
    with pytest.raises(ValueError, match=r"entity types \['board'\] are not in the index set"):
        read_index_set(tmp_path / "set", ["board"])
    # A plain Int8Index file or sharded directory reads as one "item" index.
    pins.save(tmp_path / "one.safetensors")
    assert list(read_index_set(tmp_path / "one.safetensors")) == ["item"]
    assert list(read_index_set(tmp_path / "set" / "pin")) == ["item"]
    with pytest.raises(FileNotFoundError, match="neither an Int8Index file nor an index directory"):
        read_index_set(tmp_path)
    with pytest.raises(ValueError, match="cannot name an index directory"):
        write_index_set(tmp_path / "bad", {"../x": pins})
    with pytest.raises(ValueError, match="must share their dim"):
        write_index_set(tmp_path / "bad", {"a": pins, "b": Int8Index(3)})
