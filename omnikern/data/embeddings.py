"""The embeddings directory (what ``omnikern embed`` writes) and the index sets built from it.

::

    EMB/rank-00000-part-00000.parquet   entity_id int64, entity_type string,
                                        embedding fixed_size_list<float32>[D]
    EMB/rank-00000.json                 one rank's completion record: its files with rows, bytes,
                                        sha256 and rows per entity type
    EMB/manifest.json                   {"format": "omnikern.Embeddings", "version": "1", "dim": D,
                                         "world": P, "files": [...every rank's files...]}

Each rank of a sharded ``embed`` writes its own parts (each atomically) and then its record; a
rank whose record and files are all present and intact is complete, and a rerun skips it, so a
rank that died is rerun alone. When every rank's record is there, :func:`finalize_embeddings`
writes the manifest. :func:`read_embeddings` checks the manifest and streams the parts one Parquet
row group at a time; :func:`build_index_set` turns them into one
:class:`~omnikern.sharded_index.ShardedIndex` per entity type.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from omnikern._atomic import check_listed_file, listed_file, write_bytes_atomic, write_text_atomic
from omnikern._checks import check_int
from omnikern.index import Int8Index
from omnikern.sharded_index import ShardedIndex, check_entity_type_name, write_index_set

FORMAT, VERSION, MANIFEST = "omnikern.Embeddings", "1", "manifest.json"
DEFAULT_ROWS_PER_FILE = 1_000_000


def _record_path(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.json"


class EmbeddingWriter:
    """Writes one rank's embeddings as Parquet parts, then its completion record (module docstring).

    Args:
        directory: the embeddings directory (created).
        dim: embedding width D.
        rank, world: this rank and the number of ranks.
        rows_per_file: rows per part (parts are flushed when they reach it).
    """

    def __init__(self, directory: str | os.PathLike, dim: int, rank: int = 0, world: int = 1,
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE) -> None:
        check_int("dim", dim)
        check_int("world", world)
        check_int("rank", rank, 0, world - 1)
        check_int("rows_per_file", rows_per_file)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dim, self.rank, self.world, self.rows_per_file = dim, rank, world, rows_per_file
        self.files: list[dict] = []
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._closed = False

    def write(self, entity_ids, entity_type: str | Sequence[str], embeddings) -> None:
        """Adds rows: ``entity_ids`` (n,) int64, one type for all or one per row, ``embeddings`` (n, D).

        Raises:
            TypeError / ValueError: wrong dtypes or shapes, non-finite values, a closed writer.
        """
        if self._closed:
            raise ValueError("the writer is closed")
        ids = np.asarray(entity_ids)
        if ids.dtype != np.int64 or ids.ndim != 1:
            raise TypeError(f"entity_ids must be a 1-d int64 array, got {ids.dtype} of shape {ids.shape}")
        vectors = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings,
                             dtype=np.float32)
        if vectors.shape != (ids.shape[0], self.dim):
            raise ValueError(f"embeddings must be ({ids.shape[0]}, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("embeddings must be finite, got NaN or inf")
        types = [entity_type] * ids.shape[0] if isinstance(entity_type, str) else list(entity_type)
        if len(types) != ids.shape[0]:
            raise ValueError(f"entity_type must be one string or one per row, got {len(types)} for {ids.shape[0]} rows")
        table = pa.table({
            "entity_id": pa.array(ids, pa.int64()),
            "entity_type": pa.array(types, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.dim),
        })
        self._pending.append(table)
        self._rows += table.num_rows
        while self._rows >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        part, rest = table.slice(0, rows), table.slice(rows)
        self._pending, self._rows = ([rest] if rest.num_rows else []), rest.num_rows
        name = f"rank-{self.rank:05d}-part-{len(self.files):05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, row_group_size=min(rows, 65_536))
        write_bytes_atomic(self.directory / name, sink.getvalue().to_pybytes())
        types = Counter(part.column("entity_type").to_pylist())
        self.files.append({**listed_file(self.directory / name), "rows": part.num_rows,
                           "entity_types": dict(sorted(types.items()))})

    def close(self) -> Path:
        """Flushes the last part and writes the rank's completion record; returns its path."""
        if not self._closed:
            if self._rows:
                self._flush(self._rows)
            record = {"format": FORMAT, "version": VERSION, "dim": self.dim, "rank": self.rank, "world": self.world,
                      "files": self.files}
            write_text_atomic(_record_path(self.directory, self.rank), json.dumps(record, indent=1))
            self._closed = True
        return _record_path(self.directory, self.rank)

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:  # a failed rank leaves no record, so a rerun redoes it
            self.close()


def is_rank_complete(directory: str | os.PathLike, rank: int) -> bool:
    """Whether ``rank`` has written its record and every file it lists is present and intact."""
    directory = Path(directory)
    path = _record_path(directory, rank)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for entry in record["files"]:
            check_listed_file(directory, entry, path)
    except (ValueError, KeyError, TypeError, FileNotFoundError):
        return False
    return True


def finalize_embeddings(directory: str | os.PathLike, world: int) -> Path:
    """Writes ``manifest.json`` from the ``world`` ranks' records and returns its path.

    Raises:
        FileNotFoundError: some ranks have no record yet (named).
        ValueError: the records disagree on the width or the number of ranks.
    """
    directory = Path(directory)
    check_int("world", world)
    missing = [r for r in range(world) if not _record_path(directory, r).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: ranks {missing} of {world} have not finished (no rank-NNNNN.json)")
    records = [json.loads(_record_path(directory, r).read_text(encoding="utf-8")) for r in range(world)]
    dims, worlds = {r["dim"] for r in records}, {r["world"] for r in records}
    if len(dims) != 1 or worlds != {world}:
        raise ValueError(f"{directory}: the rank records disagree (dims {sorted(dims)}, worlds {sorted(worlds)}; "
                         f"expected world {world})")
    manifest = {"format": FORMAT, "version": VERSION, "dim": dims.pop(), "world": world,
                "files": [entry for r in records for entry in r["files"]]}
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=1))
    return directory / MANIFEST


class Embeddings:
    """A checked embeddings directory (:func:`read_embeddings`): ``dim``, ``files``,
    ``entity_types`` (sorted), :meth:`count` and :meth:`iter_batches`."""

    def __init__(self, directory: Path, manifest: dict) -> None:
        self.directory, self.dim, self.files = directory, int(manifest["dim"]), list(manifest["files"])
        counts: Counter = Counter()
        for entry in self.files:
            counts.update(entry.get("entity_types", {}))
        self._counts = dict(counts)
        self.entity_types = sorted(counts)

    def count(self, entity_type: str | None = None) -> int:
        """Rows in all (or of one entity type)."""
        return sum(self._counts.values()) if entity_type is None else self._counts.get(entity_type, 0)

    def iter_batches(self, entity_type: str | None = None,
                     batch_rows: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yields ``(ids int64 (n,), entity types (n,) object, vectors float32 (n, D))``, file by
        file and row group by row group (only one type's rows with ``entity_type``)."""
        for entry in self.files:
            if entity_type is not None and not entry.get("entity_types", {}).get(entity_type):
                continue
            path = self.directory / entry["file"]
            file = pq.ParquetFile(path)
            schema = file.schema_arrow
            expected = {"entity_id": pa.int64(), "entity_type": pa.string(),
                        "embedding": pa.list_(pa.float32(), self.dim)}
            for name, kind in expected.items():
                if name not in schema.names or schema.field(name).type != kind:
                    found = schema.field(name).type if name in schema.names else "no such column"
                    raise ValueError(f"{path}: column {name!r}: expected {kind}, found {found}")
            for batch in file.iter_batches(batch_size=batch_rows, columns=list(expected)):
                ids = batch.column(0).to_numpy()
                types = batch.column(1).to_numpy(zero_copy_only=False)
                vectors = batch.column(2).flatten().to_numpy().reshape(-1, self.dim)
                if entity_type is not None:
                    keep = types == entity_type
                    ids, types, vectors = ids[keep], types[keep], vectors[keep]
                if ids.size:
                    yield ids, types, vectors


def read_embeddings(directory: str | os.PathLike, verify: bool = True) -> Embeddings:
    """Opens an embeddings directory after checking its manifest (and, with ``verify``, every
    file's size and checksum).

    Raises:
        FileNotFoundError: no manifest (the message says to finish every rank) or a missing file.
        ValueError: a damaged manifest or file (named).
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {directory} is not a finished embeddings directory "
                                "(omnikern embed writes it when every rank has finished)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r} version {VERSION}")
        check_int("dim", manifest["dim"])
        files = manifest["files"]
        if not isinstance(files, list):
            raise ValueError("'files' is not a list")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a valid embeddings manifest: {error}") from None
    if verify:
        for entry in files:
            check_listed_file(directory, entry, path)
    return Embeddings(directory, manifest)


def build_index_set(embeddings_dir: str | os.PathLike, out: str | os.PathLike,
                    entity_types: Sequence[str] | None = None, shards: int = 1, keep_float: bool = False,
                    progress: bool = True) -> dict[str, ShardedIndex]:
    """Builds one :class:`~omnikern.sharded_index.ShardedIndex` of ``shards`` shards per entity
    type from an embeddings directory and writes them as an index set at ``out``.

    Rows go to shards in file order, ``ceil(n / shards)`` per shard, streamed: at most one shard's
    float vectors in memory at a time, beyond the int8 codes being built.

    Raises:
        ValueError: an unknown entity type (the types present are named), a duplicate id within a
            type (named), more shards than rows; FileNotFoundError: see :func:`read_embeddings`.
    """
    check_int("shards", shards)
    embeddings = read_embeddings(embeddings_dir)
    wanted = embeddings.entity_types if not entity_types else list(entity_types)
    unknown = sorted(set(wanted) - set(embeddings.entity_types))
    if unknown:
        raise ValueError(f"entity types {unknown} have no embeddings in {embeddings_dir}; it has "
                         f"{embeddings.entity_types}")
    for t in wanted:
        check_entity_type_name(t)
    indexes = {}
    for t in wanted:
        total = embeddings.count(t)
        if shards > total:
            raise ValueError(f"shards must be at most the number of {t!r} rows ({total}), got {shards}")
        per_shard = -(-total // shards)
        parts: list[Int8Index] = [Int8Index(embeddings.dim, keep_float)]
        seen: list[np.ndarray] = []
        bar = tqdm(total=total, desc=f"indexing {t}", unit="row", disable=not progress)
        for ids, _, vectors in embeddings.iter_batches(t):
            seen.append(ids)
            start = 0
            while start < ids.size:
                room = per_shard - len(parts[-1])
                if room == 0:
                    parts.append(Int8Index(embeddings.dim, keep_float))
                    continue
                take = slice(start, start + room)
                try:
                    parts[-1].add(torch.from_numpy(vectors[take].copy()), torch.from_numpy(ids[take].copy()))
                except ValueError as error:  # duplicate ids within a shard
                    raise ValueError(f"entity type {t!r} in {embeddings_dir}: {error}") from None
                start += room
            bar.update(ids.size)
        bar.close()
        all_ids = np.concatenate(seen)
        unique, counts = np.unique(all_ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"entity type {t!r} has duplicate entity ids in {embeddings_dir}, e.g. "
                             f"{unique[counts > 1][:5].tolist()}")
        indexes[t] = ShardedIndex(parts)
    write_index_set(out, indexes)
    return indexes
