"""An int8 index split into shards, searched together; and index sets (one index per entity type).

:class:`ShardedIndex` holds S :class:`~omnikern.index.Int8Index` shards and answers exactly as one
``Int8Index`` holding the shards' rows in shard order would: each shard returns its own top-m
(``m = k``, or ``max(k, rerank)`` for a re-ranked search) with positions, the shortlists are merged
by score with ties by global position (shard order, then the shard's own insertion order), and a
re-ranked search re-scores the merged global shortlist, as the single index re-scores its own.
Shards are searched in parallel: one thread per shard (the C++ and torch kernels release the GIL;
under the Triton interpreter, which is not thread-safe, one after the other), each shard on its own
device when it was loaded with several.

On disk a sharded index is a directory::

    INDEX/manifest.json                   {"format": "omnikern.ShardedIndex", "version": "1", "dim": D,
                                           "count": N, "keep_float": false,
                                           "shards": [{"file": "shard-00000-of-00004.safetensors",
                                                       "count": n, "bytes": b, "sha256": "<file bytes>"}, ...]}
    INDEX/shard-00000-of-00004.safetensors  an Int8Index.save file

An **index set** (what ``omnikern index build`` writes and a served repository loads) is a
directory with ``index_set.json`` ``{"format": "omnikern.IndexSet", "version": "1",
"entity_types": {"pin": "pin", ...}}`` naming one sharded-index subdirectory per entity type.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from omnikern._atomic import check_listed_file, listed_file, write_text_atomic
from omnikern._checks import check_int
from omnikern.index import Int8Index, _as_tensor, rerank_shortlist
from omnikern.ops._triton import interpreting

MANIFEST, SET_FILE = "manifest.json", "index_set.json"
_FORMAT, _SET_FORMAT, _VERSION = "omnikern.ShardedIndex", "omnikern.IndexSet", "1"
_TYPE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ShardedIndex:
    """Several :class:`~omnikern.index.Int8Index` shards searched as one (module docstring).

    Args:
        shards: the shards, in order (one or more; same ``dim`` and ``keep_float``).

    Example::

        index = ShardedIndex.build(vectors, ids, shards=4)
        scores, found = index.search(queries, k=10)   # == Int8Index over all rows
        index.save("catalogue.index")
    """

    def __init__(self, shards: Sequence[Int8Index]) -> None:
        shards = list(shards)
        if not shards or not all(isinstance(s, Int8Index) for s in shards):
            raise TypeError("shards must be a non-empty sequence of Int8Index")
        dims, floats = {s.dim for s in shards}, {s.keep_float for s in shards}
        if len(dims) != 1 or len(floats) != 1:
            raise ValueError(f"shards must share dim and keep_float, got dims {sorted(dims)}, keep_float {sorted(floats)}")
        self.shards = shards
        self.dim = dims.pop()
        self.keep_float = floats.pop()
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def __repr__(self) -> str:
        return f"ShardedIndex(dim={self.dim}, count={len(self)}, shards={[len(s) for s in self.shards]})"

    @property
    def ids(self) -> torch.Tensor:
        """Every row's id, in global (shard, position) order, on the CPU (a copy)."""
        return torch.cat([s.ids.cpu() for s in self.shards])

    @classmethod
    def build(cls, vectors, ids, shards: int, keep_float: bool = False, *,
              device: str | torch.device = "cpu") -> ShardedIndex:
        """Returns the rows split into ``shards`` contiguous shards, in input order: shard s holds
        rows ``[s·N // S, (s + 1)·N // S)``.

        Raises:
            ValueError: ``shards`` < 1 or more shards than rows; anything ``Int8Index.add`` refuses.
        """
        check_int("shards", shards)
        vectors, ids = _as_tensor(vectors, "vectors"), _as_tensor(ids, "ids")
        n = vectors.shape[0] if vectors.dim() else 0
        if shards > n:
            raise ValueError(f"shards must be at most the number of rows ({n}), got {shards}")
        if ids.dtype == torch.int64 and ids.dim() == 1 and ids.unique().numel() != ids.numel():
            raise ValueError("ids must be distinct, got duplicates")
        out = []
        for s in range(shards):
            lo, hi = s * n // shards, (s + 1) * n // shards
            index = Int8Index(vectors.shape[1], keep_float, device=device)
            index.add(vectors[lo:hi], ids[lo:hi])
            out.append(index)
        return cls(out)

    # -- search --------------------------------------------------------------------------------

    def _map(self, fn, items):
        # The Triton interpreter keeps global state and is not thread-safe: one shard at a time there.
        if len(items) == 1 or interpreting():
            return [fn(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="omnikern-shard")
        return list(self._pool.map(fn, items))

    def search(self, queries, k: int, dim: int | None = None, rerank: int = 0, *, exclude_ids=None,
               impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(scores float32 (Q, k), ids int64 (Q, k))`` on the CPU, equal to
        :meth:`Int8Index.search` of one index holding every shard's rows in shard order (same
        scores, same ids, same order of ties, ``-inf``/``-1`` padding).

        Raises:
            ValueError: as :meth:`Int8Index.search`.
        """
        queries = _as_tensor(queries, "queries")
        check_int("rerank", rerank, 0)
        if rerank and not self.keep_float:
            raise ValueError(f"rerank={rerank} needs the float vectors: build the index with keep_float=True")
        check_int("k", k)
        m = max(k, rerank) if rerank else k
        exclude = None if exclude_ids is None else _as_tensor(exclude_ids, "exclude_ids")

        if not len(self):
            raise ValueError("the index is empty: add vectors before searching")

        def one(shard: Int8Index):
            if not len(shard):  # an empty shard contributes nothing
                rows = queries.shape[0]
                return torch.full((rows, m), float("-inf")), torch.full((rows, m), -1, dtype=torch.int64)
            scores, pos = shard.search_positions(queries, m, dim, exclude_ids=exclude, impl=impl)
            return scores.cpu(), pos.cpu()

        results = self._map(one, self.shards)
        offsets = torch.tensor([0] + [len(s) for s in self.shards]).cumsum(0)
        scores = torch.cat([s for s, _ in results], dim=1)
        shard_of = torch.cat([torch.full_like(p, i) for i, (_, p) in enumerate(results)], dim=1)
        local = torch.cat([p for _, p in results], dim=1)
        glob = torch.where(local >= 0, local + offsets[shard_of], torch.full_like(local, -1))
        # Concatenated in shard order, each shortlist already in (score, position) order: a stable
        # sort by score alone breaks ties by global position. Missing slots (-inf) sort last.
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
        scores, glob = scores[:, :m], glob.gather(1, order[:, :m])
        shard_of, local = shard_of.gather(1, order[:, :m]), local.gather(1, order[:, :m])
        if rerank:
            vectors = torch.zeros((*glob.shape, self.dim), dtype=torch.float32)
            for i, shard in enumerate(self.shards):
                mask = (shard_of == i) & (local >= 0)
                if bool(mask.any()):
                    vectors[mask] = shard.vectors[local[mask].to(shard.device)].cpu()
            scores, glob = rerank_shortlist(queries.cpu(), vectors, glob, k, dim)
            # Back from global positions to (shard, position).
            shard_of = (torch.searchsorted(offsets, glob.clamp_min(0), right=True) - 1).clamp_max(len(self.shards) - 1)
            local = torch.where(glob >= 0, glob - offsets[shard_of], torch.full_like(glob, -1))
        scores, shard_of, local = scores[:, :k], shard_of[:, :k], local[:, :k]
        ids = torch.full_like(local, -1)
        for i, shard in enumerate(self.shards):
            mask = (shard_of == i) & (local >= 0)
            if bool(mask.any()):
                ids[mask] = shard.ids[local[mask].to(shard.device)].cpu()
        return scores, ids

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes the shards and then ``manifest.json`` into ``directory`` (each file atomically;
        the manifest last, so a directory with a manifest is complete). Returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        entries = []
        total = len(self.shards)
        for i, shard in enumerate(self.shards):
            name = f"shard-{i:05d}-of-{total:05d}.safetensors"
            shard.save(directory / name)
            entries.append({**listed_file(directory / name), "count": len(shard)})
        manifest = {"format": _FORMAT, "version": _VERSION, "dim": self.dim, "count": len(self),
                    "keep_float": self.keep_float, "shards": entries}
        write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu",
             devices: Sequence[str | torch.device] | None = None) -> ShardedIndex:
        """Reads a directory written by :meth:`save`; ``devices`` places shard i on
        ``devices[i % len(devices)]`` (one GPU per shard where there are several).

        Raises:
            FileNotFoundError: no manifest or a shard file missing.
            ValueError: a manifest or shard that is damaged or disagrees (the message names the file).
        """
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; {directory} is not a sharded index directory")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
                raise ValueError(f"format {manifest.get('format')!r} version {manifest.get('version')!r}, expected "
                                 f"{_FORMAT!r} version {_VERSION!r}")
            dim, count, entries = int(manifest["dim"]), int(manifest["count"]), list(manifest["shards"])
            if not entries:
                raise ValueError("no shards")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a valid sharded index manifest: {error}") from None
        placement = list(devices) if devices else [device]
        shards = []
        for i, entry in enumerate(entries):
            file = check_listed_file(directory, entry, path)
            shard = Int8Index.load(file, device=placement[i % len(placement)])
            if len(shard) != entry.get("count") or shard.dim != dim:
                raise ValueError(f"{file}: holds {len(shard)} rows of dim {shard.dim}, {path} says "
                                 f"{entry.get('count')} of dim {dim}")
            shards.append(shard)
        index = cls(shards)
        if len(index) != count:
            raise ValueError(f"{path}: the shards hold {len(index)} rows, the manifest says {count}")
        return index


# ---------------------------------------------------------------------------------------------
# Index sets: one index per entity type
# ---------------------------------------------------------------------------------------------


def check_entity_type_name(name: str) -> str:
    """Returns ``name`` if it can name a directory of an index set (``[A-Za-z0-9_.-]``, not
    starting with '.' or '-'), else raises ``ValueError``."""
    if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
        raise ValueError(f"entity type {name!r} cannot name an index directory: use letters, digits, '_', '.' "
                         "and '-', not starting with '.' or '-'")
    return name


def write_index_set(directory: str | os.PathLike, indexes: Mapping[str, ShardedIndex | Int8Index]) -> Path:
    """Writes one sharded index per entity type under ``directory`` and then ``index_set.json``.

    Raises:
        ValueError: no index, a bad entity type name, or indexes of different dims.
    """
    if not indexes:
        raise ValueError("indexes must hold at least one entity type")
    for name in indexes:
        check_entity_type_name(name)
    dims = {t: i.dim for t, i in indexes.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"the indexes of one set must share their dim, got {dims}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, index in sorted(indexes.items()):
        (index if isinstance(index, ShardedIndex) else ShardedIndex([index])).save(directory / name)
    body = {"format": _SET_FORMAT, "version": _VERSION, "entity_types": {t: t for t in sorted(indexes)}}
    write_text_atomic(directory / SET_FILE, json.dumps(body, indent=1))
    return directory


def read_index_set(path: str | os.PathLike, entity_types: Sequence[str] | None = None, *,
                   device: str | torch.device = "cpu",
                   devices: Sequence[str | torch.device] | None = None) -> dict[str, ShardedIndex | Int8Index]:
    """Returns entity type -> index from an index set directory, or ``{"item": index}`` from a
    single sharded index directory or an ``Int8Index`` file (so older indexes keep working).

    Args:
        entity_types: only these types (an unknown one is a ``ValueError`` naming the types present).

    Raises:
        FileNotFoundError / ValueError: nothing readable at ``path`` (named).
    """
    path = Path(path)
    if path.is_file():
        found: dict[str, ShardedIndex | Int8Index] = {"item": Int8Index.load(path, device=device)}
    elif (path / MANIFEST).is_file():
        found = {"item": ShardedIndex.load(path, device=device, devices=devices)}
    elif (path / SET_FILE).is_file():
        try:
            body = json.loads((path / SET_FILE).read_text(encoding="utf-8"))
            if body.get("format") != _SET_FORMAT or body.get("version") != _VERSION:
                raise ValueError(f"format {body.get('format')!r}, expected {_SET_FORMAT!r} version {_VERSION}")
            names = dict(body["entity_types"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path / SET_FILE} is not a valid index set: {error}") from None
        wanted = list(names) if entity_types is None else list(entity_types)
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"entity types {unknown} are not in the index set {path}; it has {sorted(names)}")
        found = {t: ShardedIndex.load(path / check_entity_type_name(names[t]), device=device, devices=devices)
                 for t in wanted}
        return found
    else:
        raise FileNotFoundError(f"{path}: neither an Int8Index file nor an index directory ({MANIFEST} or {SET_FILE})")
    if entity_types is not None and list(entity_types) != ["item"]:
        raise ValueError(f"{path} holds one index (no entity types), asked for {list(entity_types)}")
    return found
