"""A generated two-type "shop" dataset in the documented format (docs/data-format.md).

Unlike the recipe catalogue it has several entity types, list-valued text fields, a type without
legacy vectors, a dense feature, per-pair weights, several tasks and skewed popularity (a few
entities get most pairs, so logQ correction matters). The test suite generates small ones;
``omnikern data shop`` writes one of any size to try the pipeline on (``bench/catalogue_shop.py``
measures a model trained on it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omnikern.data.dataset import write_dataset

SHOP_WORDS = ("linen", "wool", "denim", "summer", "winter", "boho", "vintage", "minimal", "garden", "kitchen",
              "lamp", "rug", "chair", "shirt", "dress", "boots", "mug", "vase", "shelf", "basket", "cotton", "oak")


def shop_rows(num_products: int = 60, num_boards: int = 20, legacy_dim: int = 8, num_train: int = 400,
              num_eval: int = 80, seed: int = 0) -> dict[str, list[dict]]:
    """Returns the rows of a two-type shop dataset: ``{"entities", "train", "eval"}``, lists of dicts.

    * ``product`` (ids 1000+i): ``title`` (string), ``tags`` and ``details`` (list<string>; some
      empty lists and nulls), ``legacy_embedding`` (``legacy_dim`` floats), ``price`` (a dense float).
    * ``board`` (ids 5000+j, or 1000 + num_products + j past 4,000 products): ``title`` and ``pins`` (list<string>), no legacy vector, no price.
    * pairs: entities drawn with Zipf-like popularity (p ∝ 1/rank^1.1, so a few entities have most
      pairs and logQ matters); the query is two or three words of the entity's text; product pairs
      have task ``product_search``, board pairs have no task (the default: ``board``) except every
      fifth, ``board_browse``; weights from {0.5, 1, 2}, and a few train rows with an empty query or
      weight 0 (to be skipped).
    """
    rng = np.random.default_rng(seed)
    entities: list[dict] = []
    words_of: dict[int, list[str]] = {}
    for i in range(num_products):
        words = [str(w) for w in rng.choice(SHOP_WORDS, size=4, replace=False)]
        tags = None if i % 11 == 5 else ([] if i % 7 == 3 else words[2:] + [f"sku{i}"])
        entities.append({"entity_id": 1000 + i, "entity_type": "product", "title": f"{words[0]} {words[1]} {i}",
                         "tags": tags, "details": [f"made of {words[2]}", f"size {i % 5}"],
                         "legacy_embedding": [float(v) for v in rng.standard_normal(legacy_dim).astype(np.float32)],
                         "price": float(np.float32(rng.uniform(1, 200)))})
        words_of[1000 + i] = words
    board_base = 5000 if num_products <= 4000 else 1000 + num_products
    for j in range(num_boards):
        words = [str(w) for w in rng.choice(SHOP_WORDS, size=3, replace=False)]
        entities.append({"entity_id": board_base + j, "entity_type": "board", "title": " ".join(words[:2]),
                         "pins": [f"pin {words[2]} {k}" for k in range(j % 4)]})
        words_of[board_base + j] = words
    ids = np.array([e["entity_id"] for e in entities])
    popularity = 1.0 / np.arange(1, len(ids) + 1) ** 1.1
    popularity = popularity[rng.permutation(len(ids))]
    popularity /= popularity.sum()

    def pairs(count: int, skips: bool) -> list[dict]:
        rows = []
        for k, entity in enumerate(rng.choice(ids, size=count, p=popularity)):
            entity = int(entity)
            words = words_of[entity]
            query = " ".join(str(w) for w in rng.choice(words, size=int(rng.integers(2, 4)), replace=False))
            row = {"query": query, "entity_id": entity, "weight": float(rng.choice([0.5, 1.0, 2.0]))}
            if entity < board_base:
                row["task"] = "product_search"
            elif k % 5 == 0:
                row["task"] = "board_browse"
            if skips and k % 50 == 7:
                row["query"] = "  "
            elif skips and k % 50 == 9:
                row["weight"] = 0.0
            rows.append(row)
        return rows

    return {"entities": entities, "train": pairs(num_train, skips=True), "eval": pairs(num_eval, skips=False)}


def write_shop(out_dir: str | Path, **kwargs) -> Path:
    """Writes :func:`shop_rows` (``kwargs``: its sizes and seed) as a dataset and returns its path."""
    rows = shop_rows(**kwargs)
    return write_dataset(out_dir, rows["entities"], rows["train"], rows["eval"])
