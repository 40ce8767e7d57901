"""Datasets in the documented format (docs/data-format.md): read, check, stream and write.

A dataset is a directory ``DATA/{entities,train,eval}/`` of Parquet (or JSON Lines) files.
:meth:`Dataset.open` checks every file once, streaming Parquet one row group at a time
(``ParquetFile.iter_batches``) and JSON Lines a block of lines at a time, so that no split is ever
held in memory whole: what stays is the entity ids, a type code per id and the counts of the
report. The entity tables (:class:`EntityTable`) and the pairs (:class:`Pairs`) are read on
demand; :meth:`Dataset.iter_entities` streams the catalogue for embedding it.

Every problem is a ``ValueError`` (a missing directory: ``FileNotFoundError``) naming the file,
the row group and row (Parquet, rows from 0 within the file) or the line (JSON Lines, from 1),
the column, what was expected and what was found::

    DATA/train/a.parquet: row group 0, row 12: column 'entity_id': expected the id of an entity in entities/, found 999

Rows are only ever skipped by the two documented rules (:data:`SKIP_RULES`), and counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnikern._atomic import write_dir_atomic
from omnikern._checks import check_int

ENTITIES, TRAIN, EVAL = "entities", "train", "eval"
SPLITS = (ENTITIES, TRAIN, EVAL)
PAIR_SPLITS = (TRAIN, EVAL)
ENTITY_ID, ENTITY_TYPE, LEGACY = "entity_id", "entity_type", "legacy_embedding"
QUERY, TASK, WEIGHT = "query", "task", "weight"
# The only rules that skip rows (train/ and eval/), in the order they are applied.
SKIP_RULES = ("empty_query", "zero_weight")
DEFAULT_BATCH_ROWS = 65_536
_EXTENSIONS = (".parquet", ".jsonl")
_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Column types
# ---------------------------------------------------------------------------------------------


def _is_str(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_str(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_text(t: pa.DataType) -> bool:
    return _is_str(t) or (_is_list(t) and _is_str(t.value_type))


def _is_float_list(t: pa.DataType) -> bool:
    return _is_list(t) and pa.types.is_floating(t.value_type)


def _is_int(t: pa.DataType) -> bool:
    return t in _INT_TYPES


def _strings(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _error(where: str, column: str, expected: str, found: str) -> ValueError:
    return ValueError(f"{where}: column {column!r}: expected {expected}, found {found}")


def _finite32(values: np.ndarray) -> np.ndarray:
    """Whether each value is finite once cast to float32 (1e39 is not)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.isfinite(np.asarray(values, dtype=np.float64).astype(np.float32))


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


# ---------------------------------------------------------------------------------------------
# Files: Parquet by row groups, JSON Lines by blocks of lines
# ---------------------------------------------------------------------------------------------


class _File:
    """One data file: its arrow schema, its batches (with the file row of their first row), and
    where a file row is (for messages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ignored_json: dict[str, str] = {}  # JSON Lines columns of a kind no rule reads
        if path.suffix == ".parquet":
            try:
                # No pre-buffering: the reader would keep every row group it has read (the whole
                # file, once every column was read) for as long as the dataset is open.
                self._parquet = pq.ParquetFile(path, pre_buffer=False)
            except (pa.ArrowInvalid, OSError) as error:
                raise ValueError(f"{path}: expected a Parquet file, found: {error}") from None
            self.schema = self._parquet.schema_arrow
            meta = self._parquet.metadata
            self.num_rows = meta.num_rows
            self._group_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        else:
            self._parquet = None
            self.schema, self.num_rows = self._infer_json_schema()

    def where(self, row: int) -> str:
        """``"<file>: row group <g>, row <r>"`` (Parquet) or ``"<file>: line <n>"`` (JSON Lines)."""
        if self._parquet is not None:
            group = int(np.searchsorted(self._group_starts, row, side="right")) - 1
            return f"{self.path}: row group {group}, row {row}"
        for index, (line_no, _) in enumerate(self._json_lines()):
            if index == row:
                return f"{self.path}: line {line_no}"
        raise IndexError(row)

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[tuple[pa.RecordBatch, int]]:
        """Yields ``(batch, first file row)`` over the file in order, with the given columns."""
        columns = [c for c in columns if c in self.schema.names]
        if self._parquet is not None:
            for group in range(self._parquet.num_row_groups):
                start = int(self._group_starts[group])
                reader = self._parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
                while True:
                    try:
                        batch = next(reader)
                    except StopIteration:
                        break
                    except (pa.ArrowException, OSError) as error:
                        raise ValueError(f"{self.path}: row group {group}: expected readable Parquet data, found: "
                                         f"{error}") from None
                    yield batch, start
                    start += batch.num_rows
            return
        schema = pa.schema([self.schema.field(c) for c in columns])
        rows: list[dict] = []
        start = 0
        for _, record in self._json_lines():
            rows.append(record)
            if len(rows) == batch_rows:
                yield self._json_batch(rows, schema), start
                start += len(rows)
                rows = []
        if rows:
            yield self._json_batch(rows, schema), start

    # JSON Lines ---------------------------------------------------------------------------------

    def _json_lines(self) -> Iterator[tuple[int, dict]]:
        with open(self.path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{self.path}: line {line_no}: expected a JSON object, found: {error}") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{self.path}: line {line_no}: expected a JSON object, found "
                                     f"{type(record).__name__}")
                yield line_no, record

    @staticmethod
    def _json_kind(value: object) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, int):
            return "integer"
        if isinstance(value, float):
            return "number"
        if isinstance(value, str):
            return "string"
        if isinstance(value, list):
            items = {_File._json_kind(v) for v in value} - {None}
            if not items:
                return "list"  # empty or all null: fits either list kind
            if items == {"string"}:
                return "list of strings"
            if items <= {"integer", "number"}:
                return "list of numbers"
            return "list of mixed values"
        return type(value).__name__ if not isinstance(value, dict) else "object"

    _RESERVED_JSON = {ENTITY_ID: ("integer",), ENTITY_TYPE: ("string",), QUERY: ("string",), TASK: ("string",),
                      WEIGHT: ("integer", "number"), LEGACY: ("list of numbers", "list")}

    def _infer_json_schema(self) -> tuple[pa.Schema, int]:
        kinds: dict[str, tuple[str, int]] = {}  # column -> (kind, first line)
        rows = 0
        for line_no, record in self._json_lines():
            rows += 1
            for key, value in record.items():
                kind = self._json_kind(value)
                if kind is None:
                    continue
                allowed = self._RESERVED_JSON.get(key)
                if allowed is not None and kind not in allowed:
                    expected = {"integer": "an integer", "string": "a string", "list of numbers": "a list of numbers"}
                    raise _error(f"{self.path}: line {line_no}", key, expected[allowed[0]], f"{kind} {value!r:.60}")
                if key == ENTITY_ID and not _INT64_MIN <= value <= _INT64_MAX:
                    raise _error(f"{self.path}: line {line_no}", key, "an int64 id", f"{value} (out of range)")
                if kind == "integer" and key != ENTITY_ID:
                    kind = "number"
                seen = kinds.get(key)
                if seen is None or seen[0] == "list":
                    kinds[key] = (kind, line_no)
                elif seen[0] == kind or (kind == "list" and seen[0].startswith("list")):
                    pass
                elif {seen[0], kind} <= {"string", "list of strings"} and key not in self._RESERVED_JSON:
                    kinds[key] = ("list of strings", seen[1])  # text: a string is a list of one
                else:
                    what = "a string or a list of strings" if seen[0] in ("string", "list of strings") else seen[0]
                    raise _error(f"{self.path}: line {line_no}", key, f"{what} (as on line {seen[1]})", kind)
        types = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(),
                 "list of strings": pa.list_(pa.string()), "list of numbers": pa.list_(pa.float64()),
                 "list": pa.list_(pa.string())}
        fields = []
        for key, (kind, _) in kinds.items():
            if kind in types:
                fields.append(pa.field(key, pa.list_(pa.float64()) if key == LEGACY else types[kind]))
            else:
                self.ignored_json[key] = f"JSON {kind}"
        return pa.schema(fields), rows

    @staticmethod
    def _json_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
        arrays = []
        for f in schema:
            values = [r.get(f.name) for r in rows]
            if pa.types.is_list(f.type) and _is_str(f.type.value_type):
                values = [[v] if isinstance(v, str) else v for v in values]
            arrays.append(pa.array(values, type=f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _split_files(root: Path, split: str) -> list[_File]:
    directory = root / split
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; a dataset has entities/, train/ and eval/ "
                                f"(docs/data-format.md)")
    files = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith((".", "_")):
            continue
        if not path.is_file() or path.suffix not in _EXTENSIONS:
            raise ValueError(f"{path}: unexpected file; expected *.parquet or *.jsonl (names starting with '.' or "
                             f"'_' are ignored)")
        files.append(_File(path))
    if not files:
        raise ValueError(f"{directory}: empty split: expected at least one row, found 0 files")
    return files


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class EntityBatch:
    """A block of entities of one type, as :meth:`Dataset.iter_entities` streams them.

    Attributes:
        entity_type: the type of every row.
        ids: (B,) int64 entity ids.
        texts: text field -> B strings (list values joined by ``" "``).
        legacy: (B, d) float32 legacy vectors, or None when the type has none.
        dense: (B, k) float32 dense features (columns ``dense_names``), or None.
        dense_names: the dense feature columns, in order.
    """

    entity_type: str
    ids: np.ndarray
    texts: dict[str, list[str]]
    legacy: np.ndarray | None
    dense: np.ndarray | None
    dense_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class EntityTable:
    """Every entity of one type, in file order.

    Attributes:
        entity_type: the type.
        ids: (N,) int64.
        text_fields: the text fields used for this type (``Dataset.open(text_fields=...)``).
        legacy: (N, d) float32, or None when the type has no legacy vectors.
        dense: (N, k) float32, or None; dense_names: its columns.
    """

    def __init__(self, entity_type: str, batches: Sequence[EntityBatch], text_fields: Sequence[str],
                 legacy_dim: int | None, dense_names: Sequence[str]) -> None:
        self.entity_type = entity_type
        self.text_fields = tuple(text_fields)
        self.dense_names = tuple(dense_names)
        self.ids = np.concatenate([b.ids for b in batches]) if batches else np.empty(0, np.int64)
        self._texts = {f: [t for b in batches for t in b.texts[f]] for f in self.text_fields}
        self.legacy = None if legacy_dim is None else (
            np.concatenate([b.legacy for b in batches]) if batches else np.empty((0, legacy_dim), np.float32))
        self.dense = None if not self.dense_names else (
            np.concatenate([b.dense for b in batches]) if batches else np.empty((0, len(self.dense_names)), np.float32))
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        legacy = "none" if self.legacy is None else f"{self.legacy.shape[1]}-d"
        return (f"EntityTable({self.entity_type!r}, {len(self)} rows, text_fields={list(self.text_fields)}, "
                f"legacy={legacy}, dense={list(self.dense_names)})")

    def texts(self, field_name: str) -> list[str]:
        """Returns the N texts of one text field (list values joined by ``" "``, null as ``""``)."""
        if field_name not in self._texts:
            raise ValueError(f"field must be a text field of entity type {self.entity_type!r} "
                             f"({', '.join(self.text_fields) or 'none'}), got {field_name!r}")
        return self._texts[field_name]

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Returns the rows (int64) of ``ids`` in this table.

        Raises:
            ValueError: some ids are not entities of this type (the message lists up to 5).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._sorted, ids)
        clipped = np.minimum(pos, max(len(self) - 1, 0))
        found = (pos < len(self)) & (self._sorted[clipped] == ids) if len(self) else np.zeros(ids.shape, bool)
        if not found.all():
            missing = ids[~found]
            raise ValueError(f"ids must be entities of type {self.entity_type!r}, got {int(missing.size)} unknown: "
                             f"{missing[:5].tolist()}")
        return self._order[clipped]


@dataclass
class Pairs:
    """The (query, entity) rows of one split that no skip rule dropped, in file order.

    Attributes:
        query: the query strings.
        entity_id: (P,) int64.
        entity_type: the entity's type per row.
        task: the task per row (the column, else the entity's type).
        weight: (P,) float32 (the column, else 1).
    """

    query: list[str]
    entity_id: np.ndarray
    entity_type: list[str]
    task: list[str]
    weight: np.ndarray

    def __len__(self) -> int:
        return int(self.entity_id.shape[0])


# ---------------------------------------------------------------------------------------------
# The entity scan
# ---------------------------------------------------------------------------------------------


@dataclass
class _Column:
    """What one column holds for one entity type, over every file that holds the type."""

    kind: str                                   # "text", "legacy" or "dense"
    kind_file: int                              # the file that fixed the kind
    files: set = field(default_factory=set)     # files having the column
    first_valid: tuple[int, int] | None = None  # (file, row)
    first_null: tuple[int, int] | None = None
    length: int | None = None                   # legacy vector length
    length_at: tuple[int, int] | None = None


@dataclass
class _Type:
    name: str
    code: int
    count: int = 0
    first_row: dict = field(default_factory=dict)  # file -> first row of the type in it
    columns: dict = field(default_factory=dict)    # column -> _Column


def _column_kind(name: str, t: pa.DataType) -> str | None:
    if name == LEGACY:
        return "legacy"
    if _is_text(t):
        return "text"
    if pa.types.is_floating(t):
        return "dense"
    return None



def _require_columns(file: _File, columns) -> None:
    """Raises the file's error for the first of ``(name, expected type, check)`` that is missing or
    of another type."""
    schema = file.schema
    for name, expected, ok in columns:
        if name not in schema.names:
            raise _error(str(file.path), name, f"a column of type {expected}",
                         f"no such column (columns: {', '.join(schema.names) or 'none'})")
        if not ok(schema.field(name).type):
            raise _error(str(file.path), name, expected, str(schema.field(name).type))

class Dataset:
    """A checked dataset directory (docs/data-format.md). Build it with :meth:`open`.

    Attributes:
        path: the directory.
        entity_types: sorted entity types.
        entities: entity type -> :class:`EntityTable` (each read on first use, then kept).
        report: counts per entity type, split, task and skip rule, and the ignored columns (a
            JSON-ready dict; ``str(dataset)`` prints it).
    """

    def __init__(self, path: Path, batch_rows: int) -> None:
        self.path = path
        self.batch_rows = batch_rows
        self._types: dict[str, _Type] = {}
        self._text_fields: dict[str, tuple[str, ...]] = {}
        self._files: dict[str, list[_File]] = {}
        self._ignored: dict[str, list[str]] = {}
        self._splits: dict[str, dict] = {}
        self._cache: dict[str, EntityTable] = {}

    # Opening -----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, text_fields: Mapping[str, Sequence[str]] | None = None,
             batch_rows: int = DEFAULT_BATCH_ROWS) -> Dataset:
        """Returns the dataset at ``path`` after checking every file (streaming, once).

        Args:
            path: the dataset directory (``entities/``, ``train/``, ``eval/``).
            text_fields: entity type -> the text fields to use; types not named use all their
                string and list<string> columns (the default for every type).
            batch_rows: rows per batch while reading.

        Raises:
            FileNotFoundError: ``path`` or one of its three directories is missing.
            ValueError: any rule of docs/data-format.md is broken (the message names the file,
                row group/row or line, column, expectation and finding).
        """
        check_int("batch_rows", batch_rows, 1)
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such dataset directory (docs/data-format.md)")
        dataset = cls(root, batch_rows)
        for split in SPLITS:
            dataset._files[split] = _split_files(root, split)
        dataset._scan_entities()
        dataset._choose_text_fields(text_fields)
        for split in PAIR_SPLITS:
            dataset._splits[split] = dataset._scan_pairs(split, collect=False)[0]
        return dataset

    def _where(self, split: str, at: tuple[int, int]) -> str:
        return self._files[split][at[0]].where(at[1])

    def _note_ignored(self, file: _File, name: str, found: str) -> None:
        self._ignored.setdefault(str(file.path), []).append(f"{name} ({found})")

    def _scan_entities(self) -> None:
        files = self._files[ENTITIES]
        all_ids, all_codes, file_rows = [], [], []
        for fi, file in enumerate(files):
            schema = file.schema
            _require_columns(file, ((ENTITY_ID, "int64", _is_int), (ENTITY_TYPE, "string", _is_str)))
            kinds: dict[str, str] = {}
            for f in schema:
                if f.name in (ENTITY_ID, ENTITY_TYPE):
                    continue
                kind = _column_kind(f.name, f.type)
                if kind == "legacy" and not _is_float_list(f.type):
                    raise _error(str(file.path), LEGACY, "a fixed-size list<float32> (or a list of floats)", str(f.type))
                if kind is None:
                    self._note_ignored(file, f.name, str(f.type))
                else:
                    kinds[f.name] = kind
            for name, found in file.ignored_json.items():
                self._note_ignored(file, name, found)
            types_here: set[str] = set()
            for batch, start in file.batches([ENTITY_ID, ENTITY_TYPE, *kinds], self.batch_rows):
                ids_arr = batch.column(ENTITY_ID)
                if ids_arr.null_count:
                    row = start + _first(~np.asarray(ids_arr.is_valid()))
                    raise _error(file.where(row), ENTITY_ID, "an id", "null")
                types_arr = _strings(batch.column(ENTITY_TYPE))
                bad = ~np.asarray(types_arr.is_valid()) | np.asarray(pc.equal(pc.utf8_length(types_arr), 0).fill_null(True))
                if bad.any():
                    i = _first(bad)
                    raise _error(file.where(start + i), ENTITY_TYPE, "a non-empty entity type",
                                 "null" if types_arr[i].as_py() is None else "''")
                ids = ids_arr.cast(pa.int64()).to_numpy()
                codes = np.empty(len(ids), dtype=np.int32)
                type_names = types_arr.to_numpy(zero_copy_only=False)
                for name in pc.unique(types_arr).to_pylist():
                    mask = type_names == name
                    state = self._types.get(name)
                    if state is None:
                        state = self._types[name] = _Type(name, len(self._types))
                    codes[mask] = state.code
                    rows = np.flatnonzero(mask)
                    state.count += rows.size
                    state.first_row.setdefault(fi, start + int(rows[0]))
                    types_here.add(name)
                    for column, kind in kinds.items():
                        self._check_entity_column(file, fi, batch, start, mask, state, column, kind)
                all_ids.append(ids)
                all_codes.append(codes)
            file_rows.append(file.num_rows)
        self._finish_entities(files, all_ids, all_codes, file_rows)

    def _check_entity_column(self, file: _File, fi: int, batch: pa.RecordBatch, start: int, mask: np.ndarray,
                             state: _Type, column: str, kind: str) -> None:
        col = state.columns.get(column)
        if col is None:
            col = state.columns[column] = _Column(kind, fi)
        elif col.kind != kind:
            raise _error(str(file.path), column, f"a {col.kind} column for entity type {state.name!r} (as in "
                         f"{self._files[ENTITIES][col.kind_file].path})", f"{batch.schema.field(column).type}")
        col.files.add(fi)
        array = batch.column(column)
        valid = np.asarray(array.is_valid())
        rows = np.flatnonzero(mask & valid)
        nulls = np.flatnonzero(mask & ~valid)
        if rows.size and col.first_valid is None:
            col.first_valid = (fi, start + int(rows[0]))
        if nulls.size and col.first_null is None:
            col.first_null = (fi, start + int(nulls[0]))
        if not rows.size or kind == "text":
            return
        sub = array.take(pa.array(rows))
        if kind == "dense":
            values = sub.cast(pa.float64()).to_numpy(zero_copy_only=False)
            bad = ~_finite32(values)
            if bad.any():
                i = _first(bad)
                raise _error(file.where(start + int(rows[i])), column, "a finite float32 value", repr(float(values[i])))
            return
        # The legacy vector: one length per type, no null element, every value finite in float32.
        if pa.types.is_fixed_size_list(sub.type):
            lengths = np.full(rows.size, sub.type.list_size, dtype=np.int64)
        else:
            lengths = pc.list_value_length(sub).to_numpy(zero_copy_only=False).astype(np.int64)
        if col.length is None:
            col.length, col.length_at = int(lengths[0]), (fi, start + int(rows[0]))
        wrong = lengths != col.length
        if wrong.any():
            i = _first(wrong)
            raise _error(file.where(start + int(rows[i])), LEGACY, f"a vector of length {col.length} (as for entity "
                         f"type {state.name!r} at {self._where(ENTITIES, col.length_at)})", f"length {int(lengths[i])}")
        flat = sub.flatten()
        values = flat.cast(pa.float64()).to_numpy(zero_copy_only=False) if flat.null_count == 0 else None
        if values is None or not _finite32(values).all():
            for i in range(rows.size):  # the error path: find the row and the position
                vector = sub[i].as_py()
                for p, v in enumerate(vector):
                    if v is None or not _finite32(np.array([v]))[0]:
                        raise _error(file.where(start + int(rows[i])), LEGACY, "finite float32 values",
                                     f"{'null' if v is None else repr(v)} at position {p}")

    def _finish_entities(self, files: list[_File], all_ids, all_codes, file_rows) -> None:
        ids = np.concatenate(all_ids) if all_ids else np.empty(0, np.int64)
        codes = np.concatenate(all_codes) if all_codes else np.empty(0, np.int32)
        if ids.size == 0:
            raise ValueError(f"{self.path / ENTITIES}: empty split: expected at least one row, found 0 rows in "
                             f"{len(files)} files")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if dup.size:
            second = order[dup + 1]
            k = int(np.argmin(second))
            starts = np.cumsum([0] + file_rows)

            def where(position: int) -> str:
                fi = int(np.searchsorted(starts, position, side="right")) - 1
                return files[fi].where(int(position - starts[fi]))

            raise _error(where(int(second[k])), ENTITY_ID, "a unique id",
                         f"{int(sorted_ids[dup[k]])} again (first at {where(int(order[dup[k]]))})")
        self._sorted_ids = sorted_ids
        self._sorted_codes = codes[order]
        self._type_names = [t.name for t in sorted(self._types.values(), key=lambda t: t.code)]
        # Legacy and dense columns: every row of a type has a value, or none has.
        for state in self._types.values():
            for column, col in state.columns.items():
                if col.kind == "text" or col.first_valid is None:
                    continue
                missing = [(fi, row) for fi, row in state.first_row.items() if fi not in col.files]
                candidates = missing + ([col.first_null] if col.first_null else [])
                if candidates:
                    at = min(candidates)
                    what = "a vector" if col.kind == "legacy" else "a value"
                    raise _error(self._where(ENTITIES, at), column, f"{what} (entity type {state.name!r} has one at "
                                 f"{self._where(ENTITIES, col.first_valid)})",
                                 "null" if at == col.first_null else "no such column in this file")

    def _choose_text_fields(self, chosen: Mapping[str, Sequence[str]] | None) -> None:
        chosen = dict(chosen or {})
        unknown = sorted(set(chosen) - set(self._types))
        if unknown:
            raise ValueError(f"text_fields: unknown entity type {unknown[0]!r}; entity types: "
                             f"{', '.join(sorted(self._types))}")
        for name, state in self._types.items():
            available = [c for c, col in state.columns.items() if col.kind == "text" and col.first_valid is not None]
            fields = chosen.get(name)
            if fields is None:
                self._text_fields[name] = tuple(available)
                continue
            if isinstance(fields, str):
                raise ValueError(f"text_fields[{name!r}] must be a list of column names, got the string {fields!r}")
            for f in fields:
                if f not in available:
                    raise ValueError(f"text_fields: entity type {name!r} has no text field {f!r}; its text fields are: "
                                     f"{', '.join(sorted(available)) or 'none'}")
            self._text_fields[name] = tuple(fields)

    # Pairs -------------------------------------------------------------------------------------

    def _scan_pairs(self, split: str, collect: bool) -> tuple[dict, Pairs | None]:
        files = self._files[split]
        skipped = Counter({rule: 0 for rule in SKIP_RULES})
        tasks: Counter = Counter()
        rows_read = 0
        out: dict[str, list] = {"query": [], "entity_id": [], "entity_type": [], "task": [], "weight": []}
        type_names = pa.array(self._type_names, type=pa.string())
        for file in files:
            schema = file.schema
            _require_columns(file, ((QUERY, "string", _is_str), (ENTITY_ID, "int64", _is_int)))
            if TASK in schema.names and not _is_str(schema.field(TASK).type):
                raise _error(str(file.path), TASK, "string", str(schema.field(TASK).type))
            if WEIGHT in schema.names:
                t = schema.field(WEIGHT).type
                if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                    raise _error(str(file.path), WEIGHT, "float32", str(t))
            for f in schema:
                if f.name not in (QUERY, ENTITY_ID, TASK, WEIGHT):
                    self._note_ignored(file, f.name, str(f.type))
            for name, found in file.ignored_json.items():
                self._note_ignored(file, name, found)
            for batch, start in file.batches([QUERY, ENTITY_ID, TASK, WEIGHT], self.batch_rows):
                n = batch.num_rows
                rows_read += n
                ids_arr = batch.column(ENTITY_ID)
                if ids_arr.null_count:
                    raise _error(file.where(start + _first(~np.asarray(ids_arr.is_valid()))), ENTITY_ID, "an id", "null")
                ids = ids_arr.cast(pa.int64()).to_numpy()
                pos = np.searchsorted(self._sorted_ids, ids)
                clipped = np.minimum(pos, self._sorted_ids.size - 1)
                unknown = (pos >= self._sorted_ids.size) | (self._sorted_ids[clipped] != ids)
                if unknown.any():
                    i = _first(unknown)
                    raise _error(file.where(start + i), ENTITY_ID, "the id of an entity in entities/", str(int(ids[i])))
                codes = self._sorted_codes[clipped]
                if WEIGHT in batch.schema.names:
                    weights = batch.column(WEIGHT).cast(pa.float64()).fill_null(1.0).to_numpy(zero_copy_only=False)
                    bad = ~_finite32(weights) | (weights < 0)
                    if bad.any():
                        i = _first(bad)
                        raise _error(file.where(start + i), WEIGHT, "a finite weight >= 0", repr(float(weights[i])))
                else:
                    weights = np.ones(n, dtype=np.float64)
                queries = _strings(batch.column(QUERY))
                empty = np.asarray(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(queries)), 0).fill_null(True))
                zero = ~empty & (weights == 0)
                skipped["empty_query"] += int(empty.sum())
                skipped["zero_weight"] += int(zero.sum())
                keep = ~(empty | zero)
                entity_types = pa.DictionaryArray.from_arrays(pa.array(codes), type_names).dictionary_decode()
                if TASK in batch.schema.names:
                    given = _strings(batch.column(TASK))
                    has = pc.fill_null(pc.greater(pc.utf8_length(given), 0), False)
                    task = pc.if_else(has, given, entity_types)
                else:
                    task = entity_types
                kept_task = task.filter(pa.array(keep))
                for value, count in zip(*(lambda vc: (vc.field(0).to_pylist(), vc.field(1).to_pylist()))(
                        pc.value_counts(kept_task))):
                    tasks[value] += count
                if collect:
                    mask = pa.array(keep)
                    out["query"] += queries.filter(mask).to_pylist()
                    out["entity_id"].append(ids[keep])
                    out["entity_type"] += entity_types.filter(mask).to_pylist()
                    out["task"] += kept_task.to_pylist()
                    out["weight"].append(weights[keep].astype(np.float32))
        kept = sum(tasks.values())
        if kept == 0:
            found = f"0 rows in {len(files)} files" if rows_read == 0 else (
                f"{rows_read} rows, all skipped ({', '.join(f'{r} {c}' for r, c in skipped.items() if c)})")
            raise ValueError(f"{self.path / split}: empty split: expected at least one row, found {found}")
        summary = {"rows": rows_read, "pairs": kept, "tasks": dict(sorted(tasks.items())), "skipped": dict(skipped)}
        if not collect:
            return summary, None
        pairs = Pairs(query=out["query"], entity_id=np.concatenate(out["entity_id"]), entity_type=out["entity_type"],
                      task=out["task"], weight=np.concatenate(out["weight"]))
        return summary, pairs

    # Public API --------------------------------------------------------------------------------

    @property
    def entity_types(self) -> list[str]:
        return sorted(self._types)

    @property
    def entities(self) -> Mapping[str, EntityTable]:
        return _Entities(self)

    def text_fields(self, entity_type: str) -> tuple[str, ...]:
        """Returns the text fields used for ``entity_type``."""
        self._check_type(entity_type)
        return self._text_fields[entity_type]

    def legacy_dim(self, entity_type: str) -> int | None:
        """Returns the length of ``entity_type``'s legacy vectors, or None when it has none."""
        self._check_type(entity_type)
        col = self._types[entity_type].columns.get(LEGACY)
        return None if col is None or col.first_valid is None else col.length

    def dense_names(self, entity_type: str) -> tuple[str, ...]:
        """Returns the dense feature columns of ``entity_type``, in order of appearance."""
        self._check_type(entity_type)
        return tuple(c for c, col in self._types[entity_type].columns.items()
                     if col.kind == "dense" and col.first_valid is not None)

    def num_entities(self, entity_type: str | None = None) -> int:
        """Returns the number of entities (of one type, or all)."""
        if entity_type is None:
            return int(self._sorted_ids.size)
        self._check_type(entity_type)
        return self._types[entity_type].count

    def _check_type(self, entity_type: str) -> None:
        if entity_type not in self._types:
            raise ValueError(f"entity_type must be one of {self.entity_types}, got {entity_type!r}")

    def _check_split(self, split: str) -> None:
        if split not in PAIR_SPLITS:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")

    def pairs(self, split: str) -> Pairs:
        """Returns the kept (query, entity) rows of ``split`` ("train" or "eval"), read now."""
        self._check_split(split)
        return self._scan_pairs(split, collect=True)[1]

    def tasks(self, split: str) -> dict[str, int]:
        """Returns the number of kept rows per task in ``split``, sorted by task."""
        self._check_split(split)
        return dict(self._splits[split]["tasks"])

    def iter_entities(self, batch_rows: int = DEFAULT_BATCH_ROWS,
                      entity_types: Sequence[str] | None = None) -> Iterator[EntityBatch]:
        """Yields the entities as :class:`EntityBatch` es of one type and at most ``batch_rows``
        rows each, in file order, streamed from the files (for catalogues larger than memory).

        Args:
            batch_rows: the largest batch.
            entity_types: only these types (default: all).
        """
        check_int("batch_rows", batch_rows, 1)
        wanted = self.entity_types if entity_types is None else list(entity_types)
        for t in wanted:
            self._check_type(t)
        for fi, file in enumerate(self._files[ENTITIES]):
            here = [t for t in wanted if fi in self._types[t].first_row]
            if not here:
                continue
            columns = {ENTITY_ID, ENTITY_TYPE}
            for t in here:
                columns |= set(self._text_fields[t]) | set(self.dense_names(t))
                if self.legacy_dim(t) is not None:
                    columns.add(LEGACY)
            for batch, _ in file.batches(sorted(columns), batch_rows):
                names = _strings(batch.column(ENTITY_TYPE)).to_numpy(zero_copy_only=False)
                for t in here:
                    rows = np.flatnonzero(names == t)
                    if rows.size:
                        yield self._entity_batch(batch, rows, t)

    def _entity_batch(self, batch: pa.RecordBatch, rows: np.ndarray, entity_type: str) -> EntityBatch:
        take = pa.array(rows)
        ids = batch.column(ENTITY_ID).take(take).cast(pa.int64()).to_numpy()
        texts = {}
        for name in self._text_fields[entity_type]:
            if name not in batch.schema.names:
                texts[name] = [""] * rows.size
                continue
            values = _strings(batch.column(name).take(take)) if _is_str(batch.schema.field(name).type) else (
                batch.column(name).take(take))
            if _is_str(values.type):
                texts[name] = [v or "" for v in values.to_pylist()]
            else:
                texts[name] = [" ".join(s for s in v if s) if v else "" for v in values.to_pylist()]
        legacy = None
        dim = self.legacy_dim(entity_type)
        if dim is not None:
            flat = batch.column(LEGACY).take(take).flatten().cast(pa.float32())
            legacy = flat.to_numpy(zero_copy_only=False).reshape(rows.size, dim)
        names = self.dense_names(entity_type)
        dense = None
        if names:
            dense = np.stack([batch.column(n).take(take).cast(pa.float32()).to_numpy(zero_copy_only=False)
                              for n in names], axis=1)
        return EntityBatch(entity_type, ids, texts, legacy, dense, names)

    def _load_table(self, entity_type: str) -> EntityTable:
        if entity_type not in self._cache:
            batches = list(self.iter_entities(self.batch_rows, [entity_type]))
            self._cache[entity_type] = EntityTable(entity_type, batches, self._text_fields[entity_type],
                                                   self.legacy_dim(entity_type), self.dense_names(entity_type))
        return self._cache[entity_type]

    @property
    def report(self) -> dict:
        """Counts per entity type (rows, text fields, legacy length, dense features), per split
        (rows read, pairs kept, per task, skipped per rule) and the ignored columns per file."""
        return {
            "path": str(self.path),
            "entities": {t: {"count": self._types[t].count, "text_fields": list(self._text_fields[t]),
                             "legacy_dim": self.legacy_dim(t), "dense": list(self.dense_names(t))}
                         for t in self.entity_types},
            "splits": {s: {k: dict(v) if isinstance(v, dict) else v for k, v in self._splits[s].items()}
                       for s in PAIR_SPLITS},
            "ignored_columns": {f: list(c) for f, c in self._ignored.items()},
        }

    def __str__(self) -> str:
        r = self.report
        lines = [f"dataset {r['path']}: {self.num_entities()} entities of {len(r['entities'])} types, "
                 f"tasks {', '.join(sorted(set(self.tasks(TRAIN)) | set(self.tasks(EVAL))))}"]
        for t, e in r["entities"].items():
            legacy = f"{e['legacy_dim']}-d" if e["legacy_dim"] else "none"
            lines.append(f"  {t}: {e['count']} entities; text fields: {', '.join(e['text_fields']) or 'none'}; "
                         f"legacy: {legacy}; dense: {', '.join(e['dense']) or 'none'}")
        for s, info in r["splits"].items():
            skipped = ", ".join(f"{rule} {n}" for rule, n in info["skipped"].items())
            lines.append(f"  {s}: {info['pairs']} pairs of {info['rows']} rows (skipped: {skipped}); per task: "
                         + ", ".join(f"{task} {n}" for task, n in info["tasks"].items()))
        for f, cols in r["ignored_columns"].items():
            lines.append(f"  ignored columns in {f}: {', '.join(cols)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, entity_types={self.entity_types})"


class _Entities(Mapping):
    """``dataset.entities``: entity type -> :class:`EntityTable`, each read on first access."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def __getitem__(self, entity_type: str) -> EntityTable:
        if entity_type not in self._dataset._types:
            raise KeyError(f"no entity type {entity_type!r}; entity types: {self._dataset.entity_types}")
        return self._dataset._load_table(entity_type)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dataset.entity_types)

    def __len__(self) -> int:
        return len(self._dataset._types)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

Rows = pa.Table | Iterable[Mapping[str, object]]


def _table_from_rows(rows: Rows, types: Mapping[str, pa.DataType]) -> pa.Table:
    if isinstance(rows, pa.Table):
        table = rows
    else:
        rows = list(rows)
        if any(not isinstance(r, Mapping) for r in rows):
            raise ValueError("rows must be a pyarrow.Table or a list of dicts (one per row)")
        keys = list(dict.fromkeys(k for r in rows for k in r))
        table = pa.table({k: pa.array([r.get(k) for r in rows], type=types.get(k)) for k in keys})
    for name, t in types.items():
        if name in table.column_names and table.schema.field(name).type != t:
            table = table.set_column(table.column_names.index(name), name, table.column(name).cast(t))
    return table


def _tidy_entities(table: pa.Table) -> pa.Table:
    """One entity type's table: all-null columns dropped, floats as float32, the legacy vectors
    as a fixed-size list<float32> when they all have one length."""
    for name in list(table.column_names):
        column = table.column(name)
        if column.null_count == len(column) and name not in (ENTITY_ID, ENTITY_TYPE):
            table = table.drop_columns([name])
        elif name != LEGACY and pa.types.is_floating(column.type) and column.type != pa.float32():
            table = table.set_column(table.column_names.index(name), name, column.cast(pa.float32()))
    if LEGACY in table.column_names:
        column = table.column(LEGACY)
        if _is_float_list(column.type) and not pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
            lengths = set(pc.list_value_length(column).to_pylist())
            if len(lengths) == 1:
                fixed = pa.list_(pa.float32(), lengths.pop())
                flat = pc.list_flatten(column).cast(pa.float32())
                array = pa.FixedSizeListArray.from_arrays(flat.combine_chunks(), type=fixed)
                table = table.set_column(table.column_names.index(LEGACY), LEGACY, array)
    return table


def _write_parts(table: pa.Table, directory: Path, stem: str, rows_per_file: int, row_group_rows: int | None) -> None:
    for part, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), directory / f"{stem}-{part:05d}.parquet",
                       row_group_size=row_group_rows)


def write_dataset(out_dir: str | Path, entities: Rows, train: Rows, eval: Rows, *, rows_per_file: int = 1_000_000,
                  row_group_rows: int | None = None) -> Path:
    """Writes a dataset in the documented format to ``out_dir`` and returns its path.

    Entities go to ``entities/<type>-NNNNN.parquet`` (one set of files per entity type, each with
    only the columns that type uses; ``legacy_embedding`` as a fixed-size list<float32>), pairs to
    ``train/part-NNNNN.parquet`` and ``eval/part-NNNNN.parquet``. Everything is written to a
    temporary directory beside ``out_dir``, checked with :meth:`Dataset.open`, then renamed over
    ``out_dir`` (replacing an earlier one).

    Args:
        out_dir: the dataset directory to write.
        entities / train / eval: a ``pyarrow.Table`` or a list of row dicts each (docs/data-format.md
            names the columns).
        rows_per_file: rows per Parquet file.
        row_group_rows: rows per row group (default: pyarrow's).

    Raises:
        ValueError: the rows break a rule of the format (the message is :meth:`Dataset.open`'s,
            naming the file that would have been written) or a bad argument.
    """
    check_int("rows_per_file", rows_per_file, 1)
    check_int("row_group_rows", row_group_rows, 1, none_ok=True)
    target = Path(out_dir)
    entity_table = _table_from_rows(entities, {ENTITY_ID: pa.int64(), ENTITY_TYPE: pa.string()})
    pair_types = {QUERY: pa.string(), ENTITY_ID: pa.int64(), TASK: pa.string(), WEIGHT: pa.float32()}
    pair_tables = {TRAIN: _table_from_rows(train, pair_types), EVAL: _table_from_rows(eval, pair_types)}
    if ENTITY_TYPE not in entity_table.column_names:
        raise ValueError(f"entities: column {ENTITY_TYPE!r}: expected a column of type string, found no such column")

    def write(tmp: Path) -> None:
        for split in SPLITS:
            (tmp / split).mkdir()
        types = [t for t in pc.unique(entity_table.column(ENTITY_TYPE)).to_pylist() if t is not None]
        stems: set[str] = set()
        for i, t in enumerate(types):
            stem = re.sub(r"[^\w.-]", "_", t) or "type"
            stem = stem if stem not in stems else f"{stem}_{i}"
            stems.add(stem)
            part = entity_table.filter(pc.equal(entity_table.column(ENTITY_TYPE), t))
            _write_parts(_tidy_entities(part), tmp / ENTITIES, stem, rows_per_file, row_group_rows)
        if entity_table.column(ENTITY_TYPE).null_count or not types:
            # Rows without a type (or no rows): written as they are, for Dataset.open to report.
            rest = entity_table.filter(pc.invert(pc.is_valid(entity_table.column(ENTITY_TYPE))))
            _write_parts(rest, tmp / ENTITIES, "untyped", rows_per_file, row_group_rows)
        for split, table in pair_tables.items():
            _write_parts(table, tmp / split, "part", rows_per_file, row_group_rows)
        try:
            Dataset.open(tmp)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"write_dataset: the rows do not form a valid dataset: "
                             f"{str(error).replace(str(tmp), str(target))}") from None

    write_dir_atomic(target, write)
    return target
