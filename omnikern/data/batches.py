"""Multi-task training batches over the recipe catalogue.

Recipes are the "items": their learned-tower inputs are the four text fields (title, category,
ingredients, steps) featurised into bags of token ids, and the frozen legacy vector (the fixed
tower's input, also an input feature of the learned tower, as published). Queries are tokenised
for the query tower.

Each step draws, with a seeded ``numpy`` generator:

* **query → recipe** pairs: ``num_pairs · w_item / (w_item + w_query)`` (query, target) pairs drawn
  uniformly with replacement from the training positives, plus ``neg_ratio`` random negatives per
  pair drawn uniformly from the **train** recipes (eval recipes are never shown to the model, not
  even as negatives). One :class:`TaskBatch` with ``candidate_type="item"``: the container trains
  every item tower on it — the learned tower and the fixed (legacy) tower.
* **query → query** pairs: the rest, drawn uniformly from the training query pairs (two queries
  sharing a target), in random orientation, without random negatives (in-batch negatives only):
  ``candidate_type="query"``.

Components plug in: ``featurise(texts) -> {"input_ids" (N,), "offsets" (B,)}`` is the hashed
n-gram featuriser (EmbeddingBag layout, int64), ``tokenizer.encode_batch(texts) ->
{"input_ids", "attention_mask"}`` the query WordPiece.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from omnikern._checks import check_int
from omnikern.data.contract import TaskBatch
from omnikern.data.queries import QuerySets
from omnikern.data.recipes import TEXT_FIELDS, Recipe

LEGACY_FEATURE = "legacy"


class RecipeFeatures:
    """Per-recipe learned-tower inputs, featurised once, gathered per batch.

    Args:
        recipes: the catalogue.
        featurise: ``texts -> {"input_ids" (N,), "offsets" (B,)}`` int64 (EmbeddingBag layout).
        legacy: (len(recipes), D) frozen legacy vectors, row i for recipe i.
        fields: text fields to featurise (default: title, category, ingredients, steps).
    """

    def __init__(self, recipes: Sequence[Recipe], featurise: Callable[[list[str]], Mapping[str, np.ndarray]],
                 legacy: torch.Tensor, fields: Sequence[str] = TEXT_FIELDS) -> None:
        if legacy.dim() != 2 or legacy.shape[0] != len(recipes):
            raise ValueError(f"legacy must be ({len(recipes)}, D), one row per recipe, got {tuple(legacy.shape)}")
        unknown = set(fields) - set(TEXT_FIELDS)
        if unknown:
            raise ValueError(f"fields must be among {TEXT_FIELDS}, got {sorted(unknown)}")
        self.fields = tuple(fields)
        self.legacy = legacy.float().contiguous()
        self.ids = torch.tensor([r.id for r in recipes], dtype=torch.int64)
        texts = [r.text_fields() for r in recipes]
        # Per field: flat ids and row starts (N + 1,), so a batch is a few slices.
        self._flat: dict[str, np.ndarray] = {}
        self._starts: dict[str, np.ndarray] = {}
        for name in self.fields:
            out = featurise([t[name] for t in texts])
            ids = np.asarray(out["input_ids"], dtype=np.int64)
            offsets = np.asarray(out["offsets"], dtype=np.int64)
            if ids.ndim != 1 or offsets.shape != (len(recipes),):
                raise ValueError(f"featurise must return input_ids (N,) and offsets ({len(recipes)},) for field "
                                 f"{name!r}, got {ids.shape} and {offsets.shape}")
            if len(recipes) and (offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > ids.shape[0]):
                raise ValueError(f"featurise returned offsets that are not non-decreasing from 0 for field {name!r}")
            self._flat[name] = ids
            self._starts[name] = np.append(offsets, ids.shape[0])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def gather(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Returns the tower inputs of recipes ``indices`` (B,): ``<field>_input_ids``,
        ``<field>_offsets`` per field and ``legacy`` (B, D)."""
        idx = np.asarray(indices, dtype=np.int64)
        out: dict[str, torch.Tensor] = {}
        for name in self.fields:
            starts, flat = self._starts[name], self._flat[name]
            begin, end = starts[idx], starts[idx + 1]
            lengths = end - begin
            pieces = [flat[b:e] for b, e in zip(begin.tolist(), end.tolist())]
            ids = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
            out[f"{name}_input_ids"] = torch.from_numpy(ids)
            out[f"{name}_offsets"] = torch.from_numpy(np.cumsum(lengths) - lengths)
        out[LEGACY_FEATURE] = self.legacy[torch.from_numpy(idx)]
        return out


def _tokenize(tokenizer: object, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer.encode_batch(texts)
    return {k: torch.as_tensor(np.asarray(enc[k]), dtype=torch.int64) for k in ("input_ids", "attention_mask")}


class MultiTaskSampler:
    """Draws the multi-task batches of one training step (module docstring).

    Args:
        queries: the query sets (only the train side is used).
        features: the catalogue's :class:`RecipeFeatures`.
        tokenizer: query tokenizer with ``encode_batch``.
        num_pairs: pairs per step over all tasks.
        task_weights: ``{"item": w, "query": w}`` proportions (default 4:1, the published
            (8 + 4 + 2) : 2 with the pin/product tasks folded into one).
        neg_ratio: random negatives per query → recipe pair (published 4).
        seed: seeds the generator; the same seed gives the same sequence of batches.
    """

    def __init__(self, queries: QuerySets, features: RecipeFeatures, tokenizer: object, num_pairs: int = 256,
                 task_weights: Mapping[str, float] | None = None, neg_ratio: int = 4, seed: int = 0) -> None:
        weights = dict(task_weights if task_weights is not None else {"item": 4.0, "query": 1.0})
        if set(weights) - {"item", "query"} or any(w < 0 for w in weights.values()) or not sum(weights.values()):
            raise ValueError(f"task_weights must map 'item'/'query' to non-negative weights with a positive sum, "
                             f"got {weights}")
        check_int("num_pairs", num_pairs, 1)
        check_int("neg_ratio", neg_ratio, 0)
        if not hasattr(tokenizer, "encode_batch"):
            raise TypeError(f"tokenizer must have encode_batch(texts), got {type(tokenizer).__name__}")
        total = sum(weights.values())
        self.item_pairs = round(num_pairs * weights.get("item", 0.0) / total)
        self.query_pairs = num_pairs - self.item_pairs
        if self.query_pairs and not queries.train_pairs:
            raise ValueError("task_weights asks for query → query pairs but the query sets have no train_pairs")
        self.queries, self.features, self.tokenizer = queries, features, tokenizer
        self.neg_ratio = neg_ratio
        self.positives = np.asarray(queries.positives("train"), dtype=np.int64).reshape(-1, 2)
        self.pairs = np.asarray(queries.train_pairs, dtype=np.int64).reshape(-1, 2)
        self.negative_pool = np.asarray(queries.train_recipes, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def shard(self, rank: int, world: int) -> None:
        """Keeps only this rank's shard of the positives and pairs: rows ``rank, rank + world, ...``,
        as ``DistributedSampler`` splits a dataset (in place; nothing to do for one rank)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        self.positives = self.positives[rank::world]
        if len(self.pairs):
            self.pairs = self.pairs[rank::world]

    def item_task(self, num_pairs: int) -> TaskBatch:
        """Returns one query → recipe task batch of ``num_pairs`` pairs and their random negatives."""
        rows = self.positives[self.rng.integers(0, len(self.positives), num_pairs)]
        negatives = self.negative_pool[self.rng.integers(0, len(self.negative_pool), num_pairs * self.neg_ratio)]
        recipes = np.concatenate([rows[:, 1], negatives])
        train = self.queries.train
        return TaskBatch(
            candidate_type="item",
            query=_tokenize(self.tokenizer, [train[i].text for i in rows[:, 0]]),
            candidates=self.features.gather(recipes),
            query_ids=torch.tensor([train[i].id for i in rows[:, 0]], dtype=torch.int64),
            candidate_ids=self.features.ids[torch.from_numpy(recipes)],
        )

    def query_task(self, num_pairs: int) -> TaskBatch:
        """Returns one query → query task batch of ``num_pairs`` pairs (in-batch negatives only)."""
        rows = self.pairs[self.rng.integers(0, len(self.pairs), num_pairs)]
        flip = self.rng.random(num_pairs) < 0.5
        rows = np.where(flip[:, None], rows[:, ::-1], rows)
        train = self.queries.train
        return TaskBatch(
            candidate_type="query",
            query=_tokenize(self.tokenizer, [train[i].text for i in rows[:, 0]]),
            candidates=_tokenize(self.tokenizer, [train[j].text for j in rows[:, 1]]),
            query_ids=torch.tensor([train[i].id for i in rows[:, 0]], dtype=torch.int64),
            candidate_ids=torch.tensor([train[j].id for j in rows[:, 1]], dtype=torch.int64),
        )

    def sample(self) -> list[TaskBatch]:
        """Returns the task batches of one step (tasks with zero pairs are left out)."""
        out = []
        if self.item_pairs:
            out.append(self.item_task(self.item_pairs))
        if self.query_pairs:
            out.append(self.query_task(self.query_pairs))
        return out
