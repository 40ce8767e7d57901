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
from dataclasses import dataclass

import numpy as np
import torch

from omnikern._checks import check_int
from omnikern.data.contract import TaskBatch
from omnikern.data.queries import QuerySets
from omnikern.data.recipes import TEXT_FIELDS, Recipe

LEGACY_FEATURE = "legacy"


def featurise_field(featurise: Callable[[list[str]], Mapping[str, np.ndarray]], texts: Sequence[str], n: int,
                    name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns one text field of ``n`` entities as ``(flat ids (T,), row starts (n + 1,))`` int64,
    entity i's ids being ``flat[starts[i]:starts[i + 1]]``, checking what ``featurise`` returned.

    Raises:
        ValueError: not ``n`` texts, or ``featurise`` output of the wrong shape or order (named).
    """
    if len(texts) != n:
        raise ValueError(f"text field {name!r} has {len(texts)} values for {n} entities")
    out = featurise(list(texts))
    flat = np.asarray(out["input_ids"], dtype=np.int64)
    offsets = np.asarray(out["offsets"], dtype=np.int64)
    if flat.ndim != 1 or offsets.shape != (n,):
        raise ValueError(f"featurise must return input_ids (N,) and offsets ({n},) for field "
                         f"{name!r}, got {flat.shape} and {offsets.shape}")
    if n and (offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > flat.shape[0]):
        raise ValueError(f"featurise returned offsets that are not non-decreasing from 0 for field {name!r}")
    return flat, np.append(offsets, flat.shape[0])


class EntityFeatures:
    """Per-entity learned-tower inputs of one entity type, featurised once, gathered per batch.

    Args:
        ids: (N,) int64 entity ids, row i for entity i.
        texts: text field -> N strings.
        featurise: ``texts -> {"input_ids" (N,), "offsets" (B,)}`` int64 (EmbeddingBag layout).
        dense: feature name -> (N, D) float rows (the legacy vector, dense features), gathered as is.
    """

    def __init__(self, ids: Sequence[int] | np.ndarray | torch.Tensor, texts: Mapping[str, Sequence[str]],
                 featurise: Callable[[list[str]], Mapping[str, np.ndarray]],
                 dense: Mapping[str, torch.Tensor | np.ndarray] | None = None) -> None:
        self.ids = torch.tensor(np.asarray(ids, dtype=np.int64))
        n = int(self.ids.shape[0])
        self.fields = tuple(texts)
        self.dense = {}
        for name, values in (dense or {}).items():
            values = torch.as_tensor(values).float().contiguous()
            if values.dim() != 2 or values.shape[0] != n:
                raise ValueError(f"dense feature {name!r} must be ({n}, D), one row per entity, got {tuple(values.shape)}")
            self.dense[name] = values
        # Per field: flat ids and row starts (N + 1,), so a batch is a few slices.
        self._flat: dict[str, np.ndarray] = {}
        self._starts: dict[str, np.ndarray] = {}
        for name in self.fields:
            self._flat[name], self._starts[name] = featurise_field(featurise, texts[name], n, name)

    @classmethod
    def from_arrays(cls, ids: np.ndarray, flat: Mapping[str, np.ndarray], starts: Mapping[str, np.ndarray],
                    dense: Mapping[str, np.ndarray] | None = None) -> EntityFeatures:
        """Features featurised already, e.g. memory-mapped files written by a streamed pass:
        per text field the concatenated ids ``flat[f]`` (int64) and the row starts ``starts[f]``
        ((N + 1,) int64, ``starts[f][i]:starts[f][i + 1]`` is entity i's slice); dense features
        (N, D) float32. The arrays are used as they are (not copied)."""
        features = cls.__new__(cls)
        features.ids = torch.tensor(np.asarray(ids, dtype=np.int64))
        n = int(features.ids.shape[0])
        features.fields = tuple(flat)
        for name in features.fields:
            if starts[name].shape != (n + 1,) or int(starts[name][-1]) != flat[name].shape[0]:
                raise ValueError(f"starts of field {name!r} must be ({n + 1},) ending at {flat[name].shape[0]}, "
                                 f"got {starts[name].shape}")
        for name, values in (dense or {}).items():
            if values.ndim != 2 or values.shape[0] != n or values.dtype != np.float32:
                raise ValueError(f"dense feature {name!r} must be ({n}, D) float32, got {values.dtype} {values.shape}")
        features._flat, features._starts, features.dense = dict(flat), dict(starts), dict(dense or {})
        return features

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def gather(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Returns the tower inputs of entities ``indices`` (B,): ``<field>_input_ids``,
        ``<field>_offsets`` per text field and each dense feature (B, D)."""
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
        rows = torch.from_numpy(idx)
        for name, values in self.dense.items():
            out[name] = values[rows] if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values[idx]))
        return out


class RecipeFeatures(EntityFeatures):
    """The recipes' learned-tower inputs: the text fields and the legacy vector (feature ``"legacy"``).

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
        texts = [r.text_fields() for r in recipes]
        super().__init__([r.id for r in recipes], {f: [t[f] for t in texts] for f in fields}, featurise,
                         {LEGACY_FEATURE: legacy})
        self.legacy = self.dense[LEGACY_FEATURE]


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


@dataclass
class QueryTowerEntities:
    """Entities of a type that the query tower embeds (e.g. type ``query``): ids (N,) int64 and
    their N texts, tokenised per batch."""

    ids: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class TaskPairs:
    """The training pairs of one task whose candidates are of one entity type.

    Attributes:
        task: the task name (a task with pairs to several types gives one :class:`TaskPairs` per type).
        candidate_type: the candidates' entity type.
        queries: (P,) int64 rows of the sampler's query texts.
        candidates: (P,) int64 rows of the candidate type's entities.
        weights: (P,) float32 per-pair loss weights.
    """

    task: str
    candidate_type: str
    queries: np.ndarray
    candidates: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.queries.shape[0])


def split_pairs(num_pairs: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Returns each name's share of ``num_pairs`` in proportion to ``weights`` (largest remainders,
    ties by name), so the shares sum to ``num_pairs`` and every step has the same batch shapes.

    Raises:
        ValueError: a name with a positive weight would get no pair (raise ``num_pairs``).
    """
    total = sum(weights.values())
    exact = {name: num_pairs * w / total for name, w in weights.items()}
    shares = {name: int(v) for name, v in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - shares[name]), name))
    for name in by_remainder[: num_pairs - sum(shares.values())]:
        shares[name] += 1
    starved = sorted(name for name, w in weights.items() if w > 0 and shares[name] == 0)
    if starved:
        raise ValueError(f"num_pairs={num_pairs} leaves no pair per step for {starved}: raise train.num_pairs or "
                         f"lower their train.task_weights")
    return shares


class PairSampler:
    """Draws the task batches of one training step over a dataset's tasks.

    Each step every task gets its fixed share of ``num_pairs`` (:func:`split_pairs` of the task
    weights, split between a task's candidate types by their pair counts), drawn uniformly with
    replacement from its pairs, each pair keeping its weight. Candidates embedded by item towers get
    ``neg_ratio`` random negatives per pair, drawn uniformly from every entity of that type;
    candidates of the query tower's type (``query_tower_types``) get in-batch negatives only.

    Args:
        tasks: the pairs, one :class:`TaskPairs` per (task, candidate type).
        query_texts, query_ids: the query strings the pairs point at, and their (Q,) int64 ids.
        features: entity type -> its :class:`EntityFeatures` (item towers) or its
            :class:`QueryTowerEntities` (types embedded by the query tower).
        tokenizer: query tokenizer with ``encode_batch``.
        num_pairs: pairs per step over all tasks.
        task_weights: task -> proportion (tasks left out get none); None: each task's pair count.
        neg_ratio: random negatives per pair of an item-tower type.
        seed: seeds the generator; the same seed gives the same sequence of batches.
        negatives: ``"all"`` draws random negatives from every entity of the type; ``"positives"``
            only from the entities that some training pair has as its positive (entities never
            engaged with are then never shown, not even as negatives — a held-out cold-start split).
    """

    def __init__(self, tasks: Sequence[TaskPairs], query_texts: Sequence[str], query_ids: np.ndarray,
                 features: Mapping[str, EntityFeatures | QueryTowerEntities], tokenizer: object, num_pairs: int = 256,
                 task_weights: Mapping[str, float] | None = None, neg_ratio: int = 4, seed: int = 0,
                 negatives: str = "all") -> None:
        check_int("num_pairs", num_pairs, 1)
        check_int("neg_ratio", neg_ratio, 0)
        if not hasattr(tokenizer, "encode_batch"):
            raise TypeError(f"tokenizer must have encode_batch(texts), got {type(tokenizer).__name__}")
        tasks = [t for t in tasks if len(t)]
        names = sorted({t.task for t in tasks})
        if not tasks:
            raise ValueError("tasks must hold at least one pair")
        if task_weights is None:
            task_weights = {name: float(sum(len(t) for t in tasks if t.task == name)) for name in names}
        unknown = sorted(set(task_weights) - set(names))
        if unknown:
            raise ValueError(f"task_weights names tasks with no training pairs: {unknown}; tasks are {names}")
        if any(not np.isfinite(w) or w < 0 for w in task_weights.values()) or not sum(task_weights.values()):
            raise ValueError(f"task_weights must be non-negative with a positive sum, got {dict(task_weights)}")
        for t in tasks:
            if t.candidate_type not in features:
                raise ValueError(f"task {t.task!r}: no features for candidate type {t.candidate_type!r}")
        # A task's weight is split between its candidate types by their pair counts.
        group_weights = {}
        for t in tasks:
            task_total = sum(len(u) for u in tasks if u.task == t.task)
            group_weights[(t.task, t.candidate_type)] = task_weights.get(t.task, 0.0) * len(t) / task_total
        shares = split_pairs(num_pairs, {f"{k[0]}/{k[1]}": w for k, w in group_weights.items()})
        self.tasks = [(t, shares[f"{t.task}/{t.candidate_type}"]) for t in tasks]
        if negatives not in ("all", "positives"):
            raise ValueError(f"negatives must be 'all' or 'positives', got {negatives!r}")
        # Rows of each type that random negatives come from (None: all of them). Fixed before
        # sharding, so every rank draws from the same pool.
        self.negative_pools: dict[str, np.ndarray | None] = {}
        for t in tasks:
            pool = None if negatives == "all" else np.unique(np.concatenate(
                [u.candidates for u in tasks if u.candidate_type == t.candidate_type]))
            self.negative_pools[t.candidate_type] = pool
        self.query_texts, self.query_ids = list(query_texts), torch.as_tensor(np.asarray(query_ids, dtype=np.int64))
        self.features, self.tokenizer, self.neg_ratio = features, tokenizer, neg_ratio
        self.rng = np.random.default_rng(seed)

    def shard(self, rank: int, world: int) -> None:
        """Keeps only this rank's shard of every task's pairs: rows ``rank, rank + world, ...`` (in
        place; a task with fewer pairs than ranks keeps them all rather than none)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        sharded = []
        for t, share in self.tasks:
            if len(t) >= world:
                t = TaskPairs(t.task, t.candidate_type, t.queries[rank::world], t.candidates[rank::world],
                              t.weights[rank::world])
            sharded.append((t, share))
        self.tasks = sharded

    def task_batch(self, pairs: TaskPairs, num_pairs: int) -> TaskBatch:
        """Returns one task batch of ``num_pairs`` pairs of ``pairs`` (and random negatives for an
        item-tower type)."""
        rows = self.rng.integers(0, len(pairs), num_pairs)
        queries = pairs.queries[rows]
        source = self.features[pairs.candidate_type]
        candidates = pairs.candidates[rows]
        if isinstance(source, EntityFeatures):
            pool = self.negative_pools[pairs.candidate_type]
            negatives = self.rng.integers(0, len(source) if pool is None else len(pool), num_pairs * self.neg_ratio)
            candidates = np.concatenate([candidates, negatives if pool is None else pool[negatives]])
            inputs = source.gather(candidates)
        else:
            inputs = _tokenize(self.tokenizer, [source.texts[j] for j in candidates])
        return TaskBatch(
            candidate_type=pairs.candidate_type,
            query=_tokenize(self.tokenizer, [self.query_texts[i] for i in queries]),
            candidates=inputs,
            query_ids=self.query_ids[torch.from_numpy(queries)],
            candidate_ids=source.ids[torch.from_numpy(candidates)],
            weights=torch.from_numpy(pairs.weights[rows].astype(np.float32)),
        )

    def sample(self) -> list[TaskBatch]:
        """Returns the task batches of one step, one per (task, candidate type) with a share."""
        return [self.task_batch(t, share) for t, share in self.tasks if share]
