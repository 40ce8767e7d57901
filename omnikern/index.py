"""An int8 embedding index: add vectors with int64 ids, search the top k, save and load.

Rows are stored as per-row int8 codes (:func:`omnikern.ops.quantize_int8`) with their float32
scales and int64 ids: N·(D + 4 + 8) bytes, plus 4·N·D for the optional float copy that re-ranking
uses (storage grows by doubling, so up to twice that is reserved after many adds; a loaded index
holds exactly N rows). Search runs :func:`omnikern.ops.int8_topk` (Triton on a GPU, the C++ kernel on CPU).

File format: a safetensors file with tensors ``codes`` (N, D) int8, ``scales`` (N,) float32,
``ids`` (N,) int64 and, with ``keep_float``, ``vectors`` (N, D) float32. The metadata holds
``format``, ``version``, ``dim``, ``keep_float``, ``count`` and ``sha256``: the SHA-256 of every
tensor's name, dtype, shape and bytes in name order, so that a truncated or corrupted file fails
to load with a ``ValueError`` instead of returning wrong results. Files are written to a temporary
name in the same directory and renamed over the target, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save

from omnikern._atomic import write_bytes_atomic
from omnikern._checks import check_int
from omnikern.ops.int8 import int8_topk, quantize_int8

_FORMAT = "omnikern.Int8Index"
_VERSION = "1"


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{list(t.shape)}:".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def rerank_shortlist(queries: torch.Tensor, candidates: torch.Tensor, pos: torch.Tensor, k: int,
                     dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-scores an int8 shortlist exactly and returns its best ``k``: ``(scores float32 (Q, k),
    pos (Q, k))``.

    Args:
        queries: (Q, D) float queries; candidates: (Q, m, D) the shortlist's float vectors;
        pos: (Q, m) the shortlist's positions (insertion order; -1 = missing slot), which also
            order equal scores (lower first); dim: None (inner product) or the prefix for cosine.
    """
    d = queries.shape[1] if dim is None else dim
    q = queries[:, :d].double()
    cand = candidates[:, :, :d].double()
    exact = torch.einsum("qd,qmd->qm", q, cand)
    if dim is not None:
        denom = q.norm(dim=1, keepdim=True) * cand.norm(dim=2)
        exact = torch.where(denom > 0, exact / torch.where(denom > 0, denom, 1.0), torch.zeros_like(exact))
    exact = torch.where(pos >= 0, exact, torch.full_like(exact, float("-inf")))
    # Order by position first, then a stable sort by score: equal scores keep lower position first.
    by_pos = torch.argsort(torch.where(pos >= 0, pos, torch.iinfo(torch.int64).max), dim=1, stable=True)
    exact, pos = exact.gather(1, by_pos), pos.gather(1, by_pos)
    values, order = torch.sort(exact, dim=1, descending=True, stable=True)
    values, pos = values[:, :k], pos.gather(1, order[:, :k])
    if values.shape[1] < k:
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], dim=1)
        pos = torch.cat([pos, pos.new_full((pos.shape[0], pad), -1)], dim=1)
    pos = torch.where(torch.isinf(values) & (values < 0), torch.full_like(pos, -1), pos)
    return values.float(), pos


class Int8Index:
    """Exact top-k search over int8-quantised embeddings, addressed by int64 ids.

    Args:
        dim: embedding width D (>= 1).
        keep_float: also keep the float32 vectors (4·D more bytes per row) so that
            ``search(..., rerank=m)`` can re-score an m-long int8 shortlist exactly.
        device: where codes live and search runs ("cpu" or a CUDA device).

    Example::

        index = Int8Index(256, keep_float=True)
        index.add(item_embeddings, item_ids)
        scores, ids = index.search(query_embeddings, k=10, rerank=40)
    """

    def __init__(self, dim: int, keep_float: bool = False, *, device: str | torch.device = "cpu") -> None:
        check_int("dim", dim, 1)
        self.dim = dim
        self.keep_float = bool(keep_float)
        self.device = torch.device(device)
        self._size = 0
        # Capacity doubles on growth so that many small adds stay linear overall.
        self._codes = torch.empty((0, dim), dtype=torch.int8, device=self.device)
        self._scales = torch.empty(0, dtype=torch.float32, device=self.device)
        self._ids = torch.empty(0, dtype=torch.int64, device=self.device)
        self._vectors = torch.empty((0, dim), dtype=torch.float32, device=self.device) if self.keep_float else None

    def __repr__(self) -> str:
        return f"Int8Index(dim={self.dim}, keep_float={self.keep_float}, size={len(self)}, device={self.device})"

    def __len__(self) -> int:
        return self._size

    # Views of the filled part.
    @property
    def codes(self) -> torch.Tensor:
        """(N, D) int8 codes."""
        return self._codes[: self._size]

    @property
    def scales(self) -> torch.Tensor:
        """(N,) float32 row scales."""
        return self._scales[: self._size]

    @property
    def ids(self) -> torch.Tensor:
        """(N,) int64 ids, in insertion order."""
        return self._ids[: self._size]

    @property
    def vectors(self) -> torch.Tensor | None:
        """(N, D) float32 vectors when ``keep_float``, else None."""
        return None if self._vectors is None else self._vectors[: self._size]

    def _reserve(self, n: int) -> None:
        if n <= self._codes.shape[0]:
            return
        cap = max(n, 2 * self._codes.shape[0], 1024)

        def grow(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((cap,) + tuple(t.shape[1:]))
            out[: self._size] = t[: self._size]
            return out

        self._codes, self._scales, self._ids = grow(self._codes), grow(self._scales), grow(self._ids)
        if self._vectors is not None:
            self._vectors = grow(self._vectors)

    def add(self, vectors, ids) -> None:
        """Adds ``vectors`` (M, D) float with int64 ``ids`` (M,), which must be new and distinct.

        Raises:
            TypeError: ``vectors`` is not floating, or ``ids`` not int64.
            ValueError: shapes do not match, NaN/inf in ``vectors``, duplicate ``ids``.
        """
        vectors, ids = _as_tensor(vectors, "vectors"), _as_tensor(ids, "ids")
        if not vectors.is_floating_point():
            raise TypeError(f"vectors must be a floating tensor, got {vectors.dtype}")
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64, got {ids.dtype}")
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (M, {self.dim}), got {tuple(vectors.shape)}")
        if ids.shape != vectors.shape[:1]:
            raise ValueError(f"ids must have shape ({vectors.shape[0]},), one per vector, got {tuple(ids.shape)}")
        if not bool(torch.isfinite(vectors).all()):
            raise ValueError("vectors must be finite, got NaN or inf")
        vectors, ids = vectors.to(self.device), ids.to(self.device)
        if ids.unique().numel() != ids.numel():
            raise ValueError("ids must be distinct, got duplicates within the batch")
        clash = torch.isin(ids, self.ids)
        if bool(clash.any()):
            raise ValueError(f"ids must be new, got ids already in the index: {ids[clash][:5].tolist()}")
        codes, scales = quantize_int8(vectors)
        m, n = vectors.shape[0], self._size
        self._reserve(n + m)
        self._codes[n : n + m] = codes
        self._scales[n : n + m] = scales
        self._ids[n : n + m] = ids
        if self._vectors is not None:
            self._vectors[n : n + m] = vectors.float()
        self._size = n + m

    def remove(self, ids) -> int:
        """Removes the rows with these int64 ids (unknown ids are ignored); returns how many went.

        Raises:
            TypeError: ``ids`` is not int64.
        """
        ids = _as_tensor(ids, "ids")
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64, got {ids.dtype}")
        keep = ~torch.isin(self.ids, ids.to(self.device).flatten())
        removed = self._size - int(keep.sum())
        if removed:
            n = self._size - removed
            self._codes[:n] = self.codes[keep].clone()
            self._scales[:n] = self.scales[keep].clone()
            self._ids[:n] = self.ids[keep].clone()
            if self._vectors is not None:
                self._vectors[:n] = self.vectors[keep].clone()
            self._size = n
        return removed

    def search(
        self, queries, k: int, dim: int | None = None, rerank: int = 0, *, exclude_ids=None, impl: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(scores float32 (Q, k), ids int64 (Q, k))``, best first.

        Scores are those of :func:`omnikern.ops.int8_topk` (``dim=None``: the dequantised inner
        product; ``dim=d``: the cosine of the dequantised d-column prefixes). With ``rerank = m > 0``
        the int8 search returns a shortlist of ``max(m, k)`` rows that is re-scored with the float
        vectors (inner product, or cosine of the float prefixes with ``dim``), recovering the exact
        order within the shortlist. Ties: lower insertion position first. Missing slots (k > N) hold
        score ``-inf`` and id ``-1``. ``exclude_ids`` (Q,) int64 leaves out one id per query (e.g.
        the query's own item; ids not in the index exclude nothing).

        Raises:
            ValueError: empty index, bad ``k``/``dim``/``rerank``, ``rerank`` without ``keep_float``,
                query shape or NaN (see :func:`omnikern.ops.int8_topk`).
        """
        queries = _as_tensor(queries, "queries")
        if self._size == 0:
            raise ValueError("the index is empty: add vectors before searching")
        check_int("rerank", rerank, 0)
        if rerank and not self.keep_float:
            raise ValueError(f"rerank={rerank} needs the float vectors: build the index with keep_float=True")
        check_int("k", k)
        scores, pos = self.search_positions(queries, max(k, rerank) if rerank else k, dim, exclude_ids=exclude_ids,
                                            impl=impl)
        if rerank:
            queries = queries.to(self.device)
            scores, pos = rerank_shortlist(queries, self.vectors[pos.clamp_min(0)], pos, k, dim)
        ids = torch.where(pos >= 0, self.ids[pos.clamp_min(0)], torch.full_like(pos, -1))
        return scores, ids

    def search_positions(self, queries, k: int, dim: int | None = None, *, exclude_ids=None,
                         impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 search of :meth:`search` without re-ranking, returning row positions (insertion
        order, -1 for missing slots) instead of ids: what a sharded index merges.

        Raises:
            ValueError: as :meth:`search`.
        """
        queries = _as_tensor(queries, "queries")
        if self._size == 0:
            raise ValueError("the index is empty: add vectors before searching")
        check_int("k", k)
        queries = queries.to(self.device)
        exclude = None if exclude_ids is None else self._positions(exclude_ids, queries.shape[0])
        return int8_topk(queries, self.codes, self.scales, k, dim, exclude, impl=impl)

    def _positions(self, exclude_ids, num_queries: int) -> torch.Tensor:
        """Row positions (Q,) of the ids to exclude, -1 where an id is not in the index."""
        ids = _as_tensor(exclude_ids, "exclude_ids")
        if ids.dtype != torch.int64:
            raise TypeError(f"exclude_ids must be int64, got {ids.dtype}")
        if ids.shape != (num_queries,):
            raise ValueError(f"exclude_ids must have shape ({num_queries},), one id per query, got {tuple(ids.shape)}")
        ids = ids.to(self.device)
        sorted_ids, order = torch.sort(self.ids)
        at = torch.searchsorted(sorted_ids, ids).clamp_max(self._size - 1)
        return torch.where(sorted_ids[at] == ids, order[at], torch.full_like(ids, -1))

    # ------------------------------------------------------------------------------------------
    # Persistence
    # ------------------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"codes": self.codes.cpu(), "scales": self.scales.cpu(), "ids": self.ids.cpu()}
        if self.keep_float:
            tensors["vectors"] = self.vectors.cpu()
        return {name: t.contiguous() for name, t in tensors.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the index to ``path`` (safetensors + checksum), atomically."""
        tensors = self._tensors()
        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "dim": str(self.dim),
            "keep_float": "1" if self.keep_float else "0",
            "count": str(self._size),
            "sha256": _checksum(tensors),
        }
        write_bytes_atomic(path, save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Int8Index:
        """Reads an index written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is truncated, corrupted (checksum mismatch), not an omnikern
                index, or inconsistent.
        """
        path = Path(path)
        data = path.read_bytes()

        def bad(reason: str) -> ValueError:
            return ValueError(f"{path} is not a valid omnikern Int8Index file: {reason}")

        if len(data) < 8:
            raise bad(f"file is {len(data)} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len > len(data) - 8:
            raise bad(f"header length {header_len} exceeds the file size {len(data)} (truncated?)")
        try:
            header = json.loads(data[8 : 8 + header_len])
            metadata = header.get("__metadata__") or {}
        except (ValueError, AttributeError) as error:
            raise bad(f"unreadable header ({error})") from None
        if not isinstance(metadata, dict) or metadata.get("format") != _FORMAT:
            raise bad("missing or wrong 'format' in the metadata")
        if metadata.get("version") != _VERSION:
            raise bad(f"unsupported version {metadata.get('version')!r}, expected {_VERSION!r}")
        try:
            tensors = load(data)
        except Exception as error:  # safetensors raises its own error type for malformed files
            raise bad(f"malformed safetensors data ({error})") from None
        try:
            dim, count = int(metadata["dim"]), int(metadata["count"])
            keep_float = {"0": False, "1": True}[metadata["keep_float"]]
            expected = {
                "codes": (torch.int8, (count, dim)),
                "scales": (torch.float32, (count,)),
                "ids": (torch.int64, (count,)),
            }
            if keep_float:
                expected["vectors"] = (torch.float32, (count, dim))
        except (KeyError, ValueError) as error:
            raise bad(f"bad metadata ({error})") from None
        if set(tensors) != set(expected):
            raise bad(f"tensors {sorted(tensors)} do not match the metadata, expected {sorted(expected)}")
        for name, (dtype, shape) in expected.items():
            if tensors[name].dtype != dtype or tuple(tensors[name].shape) != shape:
                raise bad(f"tensor {name!r} is {tensors[name].dtype} {tuple(tensors[name].shape)}, expected {dtype} {shape}")
        if _checksum(tensors) != metadata.get("sha256"):
            raise bad("checksum mismatch: the tensor data is corrupted")
        if dim < 1:
            raise bad(f"dim must be >= 1, got {dim}")
        index = cls(dim, keep_float, device=device)
        index._codes = tensors["codes"].to(index.device)
        index._scales = tensors["scales"].to(index.device)
        index._ids = tensors["ids"].to(index.device)
        if keep_float:
            index._vectors = tensors["vectors"].to(index.device)
        index._size = count
        return index
