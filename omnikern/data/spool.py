"""Entity features written to disk by a streamed pass and memory-mapped: training on a catalogue
larger than memory.

Training needs random access to every entity's featurised inputs (positives by id, negatives by
row). :func:`spool_features` featurises a stream of entity blocks (one Parquet row group at a time)
into flat files, one per text field (the concatenated n-gram ids and the row starts, int64) and one
per dense feature (float32 rows), then maps them read-only as one
:class:`~omnikern.data.batches.EntityFeatures`. The process's memory then holds the entity ids
(8 bytes each) and whatever pages the operating system keeps cached; the files are unlinked as soon
as they are mapped (POSIX keeps a mapped file's data until it is unmapped), so nothing is left
behind, even by a killed run.
"""

from __future__ import annotations

import atexit
import mmap
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from omnikern.data.batches import EntityFeatures, featurise_field

# One block: entity ids (B,), text field -> B texts, dense feature name -> (B, D) float32.
Block = tuple[np.ndarray, Mapping[str, Sequence[str]], Mapping[str, np.ndarray]]


def spool_features(blocks: Iterable[Block], fields: Sequence[str],
                   featurise: Callable[[list[str]], Mapping[str, np.ndarray]],
                   directory: str | os.PathLike) -> EntityFeatures:
    """Featurises ``blocks`` into files under ``directory`` (created; must be empty) and returns them
    memory-mapped as :class:`EntityFeatures`, equal to ``EntityFeatures(ids, texts, featurise,
    dense)`` over the same rows.

    Raises:
        ValueError: a block whose texts or dense rows do not match its ids, dense features that
            change between blocks.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ValueError(f"directory must be empty, {directory} is not")
    ids: list[np.ndarray] = []
    sizes = {f: 0 for f in fields}  # ids written per field so far
    handles = {}
    dense_names: tuple[str, ...] | None = None
    widths: dict[str, int] = {}  # dense feature -> D, fixed by the first block
    try:
        for f in fields:
            handles[f"{f}.ids"] = open(directory / f"{f}.ids", "wb")
            handles[f"{f}.starts"] = open(directory / f"{f}.starts", "wb")
            handles[f"{f}.starts"].write(np.zeros(1, np.int64).tobytes())
        for block_ids, texts, dense in blocks:
            block_ids = np.asarray(block_ids, dtype=np.int64)
            n = block_ids.shape[0]
            if dense_names is None:
                dense_names = tuple(dense)
                for name in dense_names:
                    handles[f"{name}.dense"] = open(directory / f"{name}.dense", "wb")
            if tuple(dense) != dense_names:
                raise ValueError(f"every block must have the dense features {list(dense_names)}, got {list(dense)}")
            ids.append(block_ids)
            for f in fields:
                flat, starts = featurise_field(featurise, texts[f], n, f)
                handles[f"{f}.ids"].write(flat.tobytes())
                handles[f"{f}.starts"].write((sizes[f] + starts[1:]).tobytes())  # the block's starts, shifted
                sizes[f] += flat.shape[0]
            for name in dense_names:
                rows = np.ascontiguousarray(dense[name], dtype=np.float32)
                width = widths.setdefault(name, rows.shape[1] if rows.ndim == 2 else -1)
                if rows.ndim != 2 or rows.shape != (n, width):
                    raise ValueError(f"dense feature {name!r} must be ({n}, {width if width >= 0 else 'D'}) for this "
                                     f"block, got {rows.shape}")
                handles[f"{name}.dense"].write(rows.tobytes())
    except BaseException:
        for handle in handles.values():
            handle.close()
        _remove(directory)  # a failed pass leaves nothing behind
        raise
    for handle in handles.values():
        handle.close()
    all_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
    count = all_ids.shape[0]
    flat = {f: _map(directory / f"{f}.ids", np.int64, (sizes[f],)) for f in fields}
    starts = {f: _map(directory / f"{f}.starts", np.int64, (count + 1,)) for f in fields}
    dense = {}
    for name in dense_names or ():
        dense[name] = _map(directory / f"{name}.dense", np.float32, (count, max(widths.get(name, 0), 0)))
    _remove(directory)
    return EntityFeatures.from_arrays(all_ids, flat, starts, dense)


def _map(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The file as a read-only array backed by a memory map."""
    if not int(np.prod(shape)):  # an empty file cannot be mapped
        return np.empty(shape, dtype)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        # Training reads scattered rows: the hint turns read-ahead off, so a fault on a page that is
        # not in memory reads that page, not its neighbours (what matters once the files outgrow
        # the page cache).
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype).reshape(shape)


def _remove(directory: Path) -> None:
    try:
        shutil.rmtree(directory)
    except OSError:  # where a mapped file cannot be removed (Windows): at exit
        atexit.register(shutil.rmtree, directory, True)
