"""The embeddings directory: writer, rank records, manifest, streaming reader, index sets built from
it, and every damage named."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omnikern.data.embeddings import (
    EmbeddingWriter,
    build_index_set,
    finalize_embeddings,
    is_rank_complete,
    read_embeddings,
)
from omnikern.index import Int8Index
from omnikern.sharded_index import read_index_set


def rows(n, d=6, start=0, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(start, start + n, dtype=np.int64), rng.standard_normal((n, d)).astype(np.float32)


def write_two_ranks(directory, d=6):
    with EmbeddingWriter(directory, d, rank=0, world=2, rows_per_file=7) as writer:
        ids, vectors = rows(10, d)
        writer.write(ids, "pin", vectors)
        ids2, vectors2 = rows(5, d, start=100, seed=1)
        writer.write(ids2, ["product"] * 5, vectors2)
    with EmbeddingWriter(directory, d, rank=1, world=2) as writer:
        ids3, vectors3 = rows(4, d, start=200, seed=2)
        writer.write(ids3, "pin", torch.from_numpy(vectors3))
    finalize_embeddings(directory, 2)
    return {"pin": (np.concatenate([ids, ids3]), np.concatenate([vectors, vectors3])), "product": (ids2, vectors2)}


def test_round_trip_by_rank_and_part(tmp_path):
    written = write_two_ranks(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["manifest.json", "rank-00000-part-00000.parquet", "rank-00000-part-00001.parquet",
                     "rank-00000-part-00002.parquet", "rank-00000.json", "rank-00001-part-00000.parquet",
                     "rank-00001.json"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [f["rows"] for f in manifest["files"]] == [7, 7, 1, 4]
    emb = read_embeddings(tmp_path)
    assert emb.count() == 19 and emb.count("pin") == 14 and emb.entity_types == ["pin", "product"]
    for t, (ids, vectors) in written.items():
        got = list(emb.iter_batches(t, batch_rows=3))
        assert all(len(b[0]) <= 3 for b in got)
        assert np.array_equal(np.concatenate([b[0] for b in got]), ids)
        assert np.array_equal(np.concatenate([b[2] for b in got]), vectors)
        assert set(np.concatenate([b[1] for b in got])) == {t}


def test_rank_records_and_reruns(tmp_path):
    with EmbeddingWriter(tmp_path, 4, rank=0, world=2) as writer:
        ids, vectors = rows(3, 4)
        writer.write(ids, "pin", vectors)
    assert is_rank_complete(tmp_path, 0) and not is_rank_complete(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match=r"ranks \[1\] of 2 have not finished"):
        finalize_embeddings(tmp_path, 2)
    part = tmp_path / "rank-00000-part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-3])
    assert not is_rank_complete(tmp_path, 0)
    # A writer that fails leaves no record: the rank is redone.
    with pytest.raises(ValueError, match="embeddings must be finite"):
        with EmbeddingWriter(tmp_path, 4, rank=1, world=2) as writer:
            writer.write(np.arange(2), "pin", np.full((2, 4), np.nan, np.float32))
    assert not (tmp_path / "rank-00001.json").exists()


def test_writer_refuses_bad_rows(tmp_path):
    writer = EmbeddingWriter(tmp_path, 4)
    with pytest.raises(TypeError, match="entity_ids must be a 1-d int64 array, got int32"):
        writer.write(np.arange(2, dtype=np.int32), "pin", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"embeddings must be \(2, 4\), got \(2, 3\)"):
        writer.write(np.arange(2), "pin", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="one string or one per row, got 1 for 2 rows"):
        writer.write(np.arange(2), ["pin"], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 0\], got 1"):
        EmbeddingWriter(tmp_path, 4, rank=1, world=1)


def test_reader_names_the_damage(tmp_path):
    write_two_ranks(tmp_path)
    part = tmp_path / "rank-00001-part-00000.parquet"
    original = part.read_bytes()
    part.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match=f"{part}: its size or checksum differs"):
        read_embeddings(tmp_path)
    part.unlink()
    with pytest.raises(FileNotFoundError, match=f"{part}: no such file"):
        read_embeddings(tmp_path)
    # A file of another layout, listed in a consistent manifest, is named with its column.
    pq.write_table(pa.table({"entity_id": pa.array([1], pa.int64()), "entity_type": ["pin"],
                             "embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))}), part)
    emb = read_embeddings(tmp_path, verify=False)
    with pytest.raises(ValueError, match=f"{part}: column 'embedding': expected fixed_size_list"):
        list(emb.iter_batches("pin"))
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a valid embeddings manifest"):
        read_embeddings(tmp_path)


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_index_set_from_embeddings(tmp_path, shards):
    written = write_two_ranks(tmp_path / "emb")
    built = build_index_set(tmp_path / "emb", tmp_path / "idx", shards=shards, progress=False)
    loaded = read_index_set(tmp_path / "idx")
    for t, (ids, vectors) in written.items():
        assert len(built[t].shards) == shards and len(loaded[t]) == len(ids)
        one = Int8Index(6)
        one.add(torch.from_numpy(vectors), torch.from_numpy(ids))
        q = torch.from_numpy(vectors[:3])
        want, got = one.search(q, 4, impl="cpp"), loaded[t].search(q, 4, impl="cpp")
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    only = build_index_set(tmp_path / "emb", tmp_path / "idx2", ["product"], progress=False)
    assert list(only) == ["product"]
    with pytest.raises(ValueError, match=r"shards must be at most the number of 'product' rows \(5\), got 6"):
        build_index_set(tmp_path / "emb", tmp_path / "idx3", ["product"], shards=6, progress=False)


def test_duplicate_ids_are_named(tmp_path):
    for rank in range(2):
        with EmbeddingWriter(tmp_path, 3, rank=rank, world=2) as writer:
            writer.write(np.array([5, 6 + rank]), "pin", np.ones((2, 3), np.float32))
    finalize_embeddings(tmp_path, 2)
    with pytest.raises(ValueError, match=r"entity type 'pin' .*ids must be new, got ids already in the index: \[5\]"):
        build_index_set(tmp_path, tmp_path / "idx", progress=False)
    with pytest.raises(ValueError, match=r"entity type 'pin' has duplicate entity ids .* \[5\]"):
        build_index_set(tmp_path, tmp_path / "idx", shards=2, progress=False)
