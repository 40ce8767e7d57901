"""A model of your own catalogue: train, evaluate and embed on a dataset in the documented format.

The dataset (docs/data-format.md, :class:`~omnikern.data.dataset.Dataset`) names the entity types,
their text fields, legacy vectors and dense features, and the (query, entity) pairs of each task.
From it this module builds:

* the **model** (:func:`build_catalogue_model`): the query tower (``model.encoder``), and per
  entity type a learned item tower (hashed n-grams of its text fields, its dense features —
  standardised — and its legacy vector when it has one), plus a fixed tower on the legacy vector
  when it has one. Entities of type ``query`` are embedded by the query tower itself (the
  query → query task). One :class:`~omnikern.models.loss.SampledSoftmaxLoss` per candidate key.
  When every other type has legacy vectors of one width and ``model.legacy_init`` is on, training
  starts from them: each learned tower starts as its legacy vector (a residual on it), and the
  query embedding's prefix starts as the least-squares linear map from the encoder's pooled vector
  of an entity's text to its legacy vector, so step 0 already retrieves as the legacy embedding
  does; otherwise the query tower starts from the zero-shot encoder.
* the **training set-up** (:func:`catalogue_trainer`): tasks mixed by ``train.task_weights``
  (default: in proportion to their pairs), weights as loss weights, ``neg_ratio`` random negatives
  of the candidate's type (:class:`~omnikern.data.batches.PairSampler`), for the generic
  :class:`~omnikern.models.trainer.Trainer` (checkpoints, resume, torchrun).
* the **evaluation** (:func:`evaluate_catalogue`): Recall@10, Recall@100 and MRR per task on
  ``eval/``, for the trained query tower against the learned towers and the fixed (legacy)
  vectors, and for the zero-shot encoder on both sides, each with a bootstrap 95% interval.
* the **embeddings** (:func:`iter_embeddings`): every entity through its learned tower, streamed.

A run directory keeps what rebuilding the model needs beside its checkpoints
(``catalogue.json``: the entity types, their fields and dense-feature statistics, and
``ngram_vocabs.json``), so evaluating or embedding checks that the dataset given matches the one
trained on instead of featurising it differently.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omnikern._atomic import write_bytes_atomic
from omnikern._checks import check_int
from omnikern.data.batches import EntityFeatures, PairSampler, QueryTowerEntities, TaskPairs
from omnikern.data.dataset import Dataset, EntityBatch
from omnikern.data.spool import spool_features
from omnikern.models.checkpoint import load_model_state, read_checkpoint_meta
from omnikern.models.components import (
    build_encoder,
    cache_dir,
    load_tokenizer,
    set_trainable_layers,
    truncating,
    warm_frozen_cache,
    wordpiece_featuriser,
)
from omnikern.models.config import Config
from omnikern.models.container import LEARNED, QUERY_KEY, OmniSearchSage, PerKeyLoss
from omnikern.models.encoders import QueryTower, ZeroShotEncoder
from omnikern.models.evaluate import bootstrap_interval, rank_metrics, summarise_with_intervals
from omnikern.models.frozen import CachedPrefixEncoder
from omnikern.models.item_towers import FixedTower, HashEmbeddingBag, LearnedItemTower
from omnikern.models.loss import SampledSoftmaxLoss
from omnikern.models.trainer import Trainer, TrainingSetup
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import resolve_prefixes
from omnikern.text import NGramFeaturizer, NGramVocabs, build_ngram_vocabs, string_id_hash

QUERY_TYPE = "query"  # entities of this type are embedded by the query tower
FIXED = "fixed"
LEGACY_FEATURE, DENSE_FEATURE = "legacy", "dense"
SPEC_FILE, VOCABS_FILE = "catalogue.json", "ngram_vocabs.json"
SPEC_FORMAT = "omnikern.Catalogue"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class TypeSpec:
    """What the model knows about one entity type (saved in ``catalogue.json``)."""

    text_fields: list[str]
    legacy_dim: int | None
    dense: list[str]
    dense_mean: list[float] = field(default_factory=list)
    dense_std: list[float] = field(default_factory=list)


@dataclass
class CatalogueData:
    """A dataset made ready for the model.

    Attributes:
        dataset: the checked dataset.
        tokenizer: the query WordPiece tokenizer.
        types: entity type -> :class:`TypeSpec`.
        featurise: ``texts -> {"input_ids", "offsets"}`` of the item text fields (truncated).
        vocabs: the n-gram vocabularies (None for the WordPiece featuriser).
        vocab_size: the featuriser's id range.
        features: entity type -> its :class:`EntityFeatures` or :class:`QueryTowerEntities`, each
            read and featurised on first access (``embed`` streams the dataset and never asks).
        legacy_dim: the common legacy width when training starts from the legacy vectors, else None.
        legacy_fit: ``(weight (d, H), bias (d,))`` of the query prefix init, when it was fitted.
    """

    dataset: Dataset
    tokenizer: Any
    types: dict[str, TypeSpec]
    featurise: Callable
    vocabs: NGramVocabs | None
    vocab_size: int
    features: Mapping[str, EntityFeatures | QueryTowerEntities]
    legacy_dim: int | None
    legacy_fit: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def item_types(self) -> list[str]:
        """The entity types embedded by learned item towers (every type but ``query``)."""
        return [t for t in self.types if t != QUERY_TYPE]


def open_dataset(config: Config, path: str | Path | None = None) -> Dataset:
    """Opens ``path`` (default ``data.path``) with the config's text fields."""
    path = path if path is not None else config.data.path
    if path is None:
        raise ValueError("data.path is not set: give the dataset directory (omnikern train --data DATA)")
    return Dataset.open(path, text_fields=config.data.text_fields)


def query_ids(texts: Sequence[str]) -> np.ndarray:
    """Returns int64 ids of query texts (a 64-bit hash of ``"query:" + text``: the same text, the same
    id, so that id masking recognises a query that is also a batch's other query)."""
    return string_id_hash(["query:" + t for t in texts], bits=64) if len(texts) else np.empty(0, np.int64)


def entity_documents(texts: dict[str, list[str]]) -> list[str]:
    """Returns one document per entity for the zero-shot encoder: its non-empty text fields, each
    ended by a full stop, joined in field order."""
    fields = list(texts.values())
    if not fields:
        return []
    return [" ".join(f"{v.rstrip('.')}." for v in values if v.strip()) for values in zip(*fields)]


def _type_specs(dataset: Dataset, statistics: bool = True) -> dict[str, TypeSpec]:
    """The dataset's types as :class:`TypeSpec` s; ``statistics`` reads the dense features of every
    entity for their mean and standard deviation (only a new run needs them)."""
    specs = {}
    for t in dataset.entity_types:
        fields = list(dataset.text_fields(t))
        if not fields:
            raise ValueError(f"entity type {t!r} has no text field: its towers need at least one string or "
                             "list<string> column (docs/data-format.md)")
        dense = list(dataset.dense_names(t))
        specs[t] = TypeSpec(fields, dataset.legacy_dim(t), dense)
        if dense and statistics:
            mean, std = _streamed_mean_std(batch.dense for batch in dataset.iter_entities(dataset.batch_rows, [t]))
            specs[t].dense_mean = mean.tolist()
            specs[t].dense_std = np.where(std > 0, std, 1.0).tolist()
    return specs


def _streamed_mean_std(blocks: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and (population) standard deviation over row blocks, merged block by block
    (Chan et al.'s pairwise update: as stable as the two-pass formula)."""
    count, mean, m2 = 0, None, None
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        n = block.shape[0]
        if not n:
            continue
        block_mean = block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n, block_mean, block_m2
            continue
        delta = block_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + block_m2 + delta**2 * (count * n / total)
        count = total
    return mean, np.sqrt(m2 / count)


def _check_specs(saved: dict[str, TypeSpec], found: dict[str, TypeSpec], where: str) -> None:
    """Raises when the dataset's types or columns differ from the ones the run was trained on."""
    if sorted(saved) != sorted(found):
        raise ValueError(f"the dataset has entity types {sorted(found)}, the run {where} was trained on "
                         f"{sorted(saved)}")
    for t, spec in saved.items():
        for name in ("text_fields", "legacy_dim", "dense"):
            if getattr(spec, name) != getattr(found[t], name):
                raise ValueError(f"entity type {t!r}: the dataset has {name} {getattr(found[t], name)}, the run "
                                 f"{where} was trained with {getattr(spec, name)}")


def _featuriser(config: Config, tokenizer, vocabs: NGramVocabs | None):
    name = config.model.featuriser
    if name not in ("auto", "ngram", "wordpiece"):
        raise ValueError(f"model.featuriser must be 'auto', 'ngram' or 'wordpiece', got {name!r}")
    chars = config.data.field_max_chars
    if name == "wordpiece":
        return truncating(wordpiece_featuriser(load_tokenizer(config, None), config.data.field_max_tokens), chars), \
            len(tokenizer)
    featurizer = NGramFeaturizer.from_vocabs(vocabs)
    return truncating(featurizer.featurize, chars), featurizer.vocab_size


def _dense_inputs(spec: TypeSpec, legacy: np.ndarray | None, dense: np.ndarray | None) -> dict[str, np.ndarray]:
    """The float inputs of a learned tower: the legacy vector and the dense features standardised
    with the type's saved statistics, (B, ·) float32 each."""
    features = {}
    if legacy is not None:
        features[LEGACY_FEATURE] = np.array(legacy, dtype=np.float32)  # a copy: arrow buffers are read-only
    if spec.dense:
        scaled = (dense - np.asarray(spec.dense_mean)) / np.asarray(spec.dense_std)
        features[DENSE_FEATURE] = scaled.astype(np.float32)
    return features


def type_features(spec: TypeSpec, ids: np.ndarray, texts: dict[str, list[str]], legacy: np.ndarray | None,
                  dense: np.ndarray | None, featurise) -> EntityFeatures:
    """Returns the learned-tower inputs of some entities of one type, in memory."""
    return EntityFeatures(ids, {f: texts[f] for f in spec.text_fields}, featurise, _dense_inputs(spec, legacy, dense))


def spooled_type_features(config: Config, dataset: Dataset, entity_type: str, spec: TypeSpec,
                          featurise) -> EntityFeatures:
    """Returns the learned-tower inputs of every entity of one type, featurised by a streamed pass
    into memory-mapped files under ``cache_dir/spool`` (:func:`~omnikern.data.spool.spool_features`):
    the catalogue's texts are never all in memory."""
    root = cache_dir(config) / "spool"
    root.mkdir(parents=True, exist_ok=True)
    blocks = ((b.ids, b.texts, _dense_inputs(spec, b.legacy, b.dense))
              for b in dataset.iter_entities(dataset.batch_rows, [entity_type]))
    # Not named after the type: entity types are free-form strings, not always valid file names.
    return spool_features(blocks, spec.text_fields, featurise, tempfile.mkdtemp(prefix="features-", dir=root))


def build_catalogue_data(config: Config, dataset: Dataset | None = None, run_dir: str | Path | None = None,
                         fit_legacy: bool = True, progress: bool = False) -> CatalogueData:
    """Prepares a dataset for the model: types, featuriser, per-type features, and (when training
    starts from the legacy vectors and ``fit_legacy``) the query prefix init.

    Args:
        dataset: the opened dataset (default: :func:`open_dataset` of ``data.path``).
        run_dir: a run directory whose ``catalogue.json`` and n-gram vocabularies to use (and check
            the dataset against); None builds them from the dataset.

    Raises:
        ValueError: the dataset does not fit the config or the run (named).
    """
    dataset = dataset if dataset is not None else open_dataset(config)
    tokenizer = load_tokenizer(config, config.model.query_max_tokens)
    found = _type_specs(dataset, statistics=run_dir is None)
    vocabs = None
    if run_dir is not None:
        saved, vocabs = read_spec(run_dir)
        _check_specs(saved, found, str(run_dir))
        types = saved
    else:
        types = found
        if config.model.featuriser != "wordpiece":
            chars = config.data.field_max_chars
            cap = config.model.ngram_vocab_rows
            check_int("model.ngram_vocab_rows", cap, 1)
            corpus = []
            for t in types:
                if t == QUERY_TYPE:
                    continue
                n = dataset.num_entities(t)
                rows = np.arange(n) if n <= cap else np.arange(cap) * n // cap  # evenly spaced, distinct
                texts, _ = _entity_rows(dataset, t, rows, types[t].text_fields)
                corpus += [text[:chars] for f in types[t].text_fields for text in texts[f]]
            vocabs = build_ngram_vocabs(corpus, caps=tuple(config.model.ngram_caps))
    featurise, vocab_size = _featuriser(config, tokenizer, vocabs)

    def read_features(t: str) -> EntityFeatures | QueryTowerEntities:
        if t == QUERY_TYPE:  # queries are encoded from their text: kept in memory
            table = dataset.entities[t]
            return QueryTowerEntities(torch.tensor(table.ids), table.texts(types[t].text_fields[0]))
        return spooled_type_features(config, dataset, t, types[t], featurise)

    features = _OnFirstUse(list(types), read_features)
    dims = {types[t].legacy_dim for t in types if t != QUERY_TYPE}
    legacy_dim = dims.pop() if config.model.legacy_init and len(dims) == 1 and None not in dims else None
    if legacy_dim is not None and legacy_dim > config.model.output_dim:
        raise ValueError(f"the legacy vectors are {legacy_dim} wide, more than model.output_dim "
                         f"({config.model.output_dim}): the query embedding's prefix cannot start as them")
    data = CatalogueData(dataset, tokenizer, types, featurise, vocabs, int(vocab_size), features, legacy_dim)
    if legacy_dim is not None and fit_legacy:
        data.legacy_fit = fit_legacy_map(config, data, progress=progress)
    return data


def _entity_rows(dataset: Dataset, entity_type: str, rows: np.ndarray,
                 fields: Sequence[str]) -> tuple[dict[str, list[str]], np.ndarray | None]:
    """Returns the texts of ``fields`` and the legacy vectors (or None) of the entities at ``rows``
    (sorted positions in the type's file order), read by a streamed pass."""
    texts: dict[str, list[str]] = {f: [] for f in fields}
    legacy: list[np.ndarray] = []
    start = 0
    for batch in dataset.iter_entities(dataset.batch_rows, [entity_type]):
        lo, hi = np.searchsorted(rows, [start, start + len(batch)])
        local = rows[lo:hi] - start
        start += len(batch)
        for f in fields:
            texts[f] += [batch.texts[f][i] for i in local.tolist()]
        if batch.legacy is not None:
            legacy.append(batch.legacy[local])
    return texts, (np.concatenate(legacy) if legacy else None)


class _OnFirstUse(Mapping):
    """A mapping whose value for a key is ``make(key)``, made on first access and kept."""

    def __init__(self, keys: Sequence[str], make: Callable[[str], Any]) -> None:
        self._keys, self._make, self._made = list(keys), make, {}

    def __getitem__(self, key: str):
        if key not in self._made:
            if key not in self._keys:
                raise KeyError(key)
            self._made[key] = self._make(key)
        return self._made[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def fit_legacy_map(config: Config, data: CatalogueData, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(weight (d, H), bias (d,))``: the ridge least-squares map from the encoder's unit
    pooled vector of an entity's document (:func:`entity_documents`) to its legacy vector, over up
    to ``model.legacy_fit_rows`` entities drawn evenly from the item types (seeded)."""
    rows = config.model.legacy_fit_rows
    check_int("model.legacy_fit_rows", rows, 1)
    rng = np.random.default_rng(config.train.seed)
    total = sum(data.dataset.num_entities(t) for t in data.item_types)
    encode = zero_shot_encoder(config, data, progress=progress)
    pooled, targets = [], []
    for t in data.item_types:
        n = data.dataset.num_entities(t)
        take = np.sort(rng.choice(n, size=min(n, max(1, round(rows * n / total))), replace=False))
        if take.size == n:  # the whole type: the cached vectors that the zero-shot evaluation uses too
            pooled.append(zero_shot_documents(config, data, t, encode))
            targets.append(data.dataset.entities[t].legacy)
        else:  # a sample, read by a streamed pass
            texts, legacy = _entity_rows(data.dataset, t, take, data.types[t].text_fields)
            pooled.append(encode(entity_documents(texts)).float())
            targets.append(legacy)
    pooled = torch.cat(pooled).double()
    y = torch.from_numpy(np.concatenate(targets)).double()
    x_mean, y_mean = pooled.mean(0), y.mean(0)
    xc, yc = pooled - x_mean, y - y_mean
    gram = xc.T @ xc
    ridge = 1e-3 * float(torch.trace(gram)) / gram.shape[0] + 1e-12
    weight = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc).T
    return weight.float(), (y_mean - weight @ x_mean).float()


def zero_shot_encoder(config: Config, data: CatalogueData, progress: bool = False) -> ZeroShotEncoder:
    """The frozen encoder of ``model.encoder`` (seeded as the model builds it) as ``texts -> (N, H)``
    unit mean-pooled rows, documents cut at ``data.legacy_max_tokens`` tokens."""
    with torch.random.fork_rng():
        torch.manual_seed(config.train.seed)
        encoder = build_encoder(config, len(data.tokenizer)).eval()
    tokenizer = load_tokenizer(config, config.data.legacy_max_tokens)
    return ZeroShotEncoder(encoder, tokenizer, batch_size=64, progress=progress)


# ---------------------------------------------------------------------------------------------
# The run's record of the catalogue
# ---------------------------------------------------------------------------------------------


def write_spec(run_dir: str | Path, data: CatalogueData) -> None:
    """Writes ``catalogue.json`` (and the n-gram vocabularies) into ``run_dir``, atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"format": SPEC_FORMAT, "version": "1", "dataset": str(data.dataset.path),
            "types": {t: vars(s) for t, s in data.types.items()}, "legacy_dim": data.legacy_dim}
    if data.vocabs is not None:
        data.vocabs.save(run_dir / VOCABS_FILE)
    write_bytes_atomic(run_dir / SPEC_FILE, json.dumps(spec, indent=2).encode())


def is_catalogue_run(path: str | Path) -> bool:
    """Whether ``path`` (a run directory or a checkpoint inside one) holds a catalogue model."""
    path = Path(path)
    return any((p / SPEC_FILE).is_file() for p in (path, *path.parents[:2]))


def _run_root(path: str | Path) -> Path:
    path = Path(path)
    for p in (path, *path.parents[:2]):
        if (p / SPEC_FILE).is_file():
            return p
    raise FileNotFoundError(f"{path}: no {SPEC_FILE} here or above: not a run trained with omnikern train --data")


def read_spec(run_dir: str | Path) -> tuple[dict[str, TypeSpec], NGramVocabs | None]:
    """Returns the run's entity types and its n-gram vocabularies (None with the WordPiece featuriser).

    Raises:
        FileNotFoundError / ValueError: no catalogue record, or a damaged one.
    """
    root = _run_root(run_dir)
    try:
        spec = json.loads((root / SPEC_FILE).read_text(encoding="utf-8"))
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"format is {spec.get('format')!r}, expected {SPEC_FORMAT!r}")
        types = {t: TypeSpec(**s) for t, s in spec["types"].items()}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{root / SPEC_FILE} is not a valid catalogue record: {error}") from None
    vocabs = NGramVocabs.load(root / VOCABS_FILE) if (root / VOCABS_FILE).is_file() else None
    return types, vocabs


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def build_catalogue_model(config: Config, data: CatalogueData) -> OmniSearchSage:
    """Returns the container for the dataset's entity types (module docstring)."""
    m, lc = config.model, config.loss
    torch.manual_seed(config.train.seed)
    encoder = build_encoder(config, len(data.tokenizer))
    if m.cache_frozen and m.train_encoder_layers >= 0:
        encoder = CachedPrefixEncoder(encoder, m.train_encoder_layers)
    legacy_init = data.legacy_dim is not None
    query = QueryTower(encoder, tokenizer=data.tokenizer, pooling=m.pooling, output_dim=m.output_dim,
                       normalize_pooled=legacy_init)
    if data.legacy_fit is not None:
        query.init_prefix(*data.legacy_fit)
    if not hasattr(encoder, "cache"):
        set_trainable_layers(query, m.train_encoder_layers)
    options = dict(temperature=lc.temperature, dims=lc.dims, dim_weights=lc.dim_weights,
                   logq_correction=lc.logq_correction, sketch_width=lc.sketch_width, impl=lc.impl)
    towers: dict[tuple[str, str], nn.Module] = {QUERY_KEY: query}
    losses: dict[tuple[str, str], nn.Module] = {}
    if QUERY_TYPE in data.types:
        losses[QUERY_KEY] = SampledSoftmaxLoss(neg_mode="in_batch", **options)
    for t in data.item_types:
        spec = data.types[t]
        dense = {}
        if spec.legacy_dim is not None:
            if spec.legacy_dim > m.output_dim:
                raise ValueError(f"entity type {t!r}: legacy vectors of {spec.legacy_dim} dims are wider than "
                                 f"model.output_dim ({m.output_dim})")
            dense[LEGACY_FEATURE] = spec.legacy_dim
        if spec.dense:
            dense[DENSE_FEATURE] = len(spec.dense)
        bag = HashEmbeddingBag(num_buckets=m.hash_buckets, dim=m.text_dim, vocab_size=max(data.vocab_size, 1))
        towers[(t, LEARNED)] = LearnedItemTower(text_fields=spec.text_fields, dense_features=dense, bag=bag,
                                                hidden=tuple(m.item_hidden), output_dim=m.output_dim,
                                                skip_feature=LEGACY_FEATURE if legacy_init else None)
        losses[(t, LEARNED)] = SampledSoftmaxLoss(neg_mode=lc.neg_mode, **options)
        if spec.legacy_dim is not None:
            towers[(t, FIXED)] = FixedTower(LEGACY_FEATURE, dim=spec.legacy_dim)
            losses[(t, FIXED)] = SampledSoftmaxLoss(neg_mode=lc.neg_mode, **_narrow(options, spec.legacy_dim))
    return OmniSearchSage(towers, PerKeyLoss(losses, id_masking=lc.id_masking))


def _narrow(options: dict, width: int) -> dict:
    """The loss options for a tower ``width`` wide: legacy vectors narrower than every configured
    Matryoshka prefix train their full width alone."""
    try:
        resolve_prefixes(options["dims"], options["dim_weights"], width)
        return options
    except ValueError:
        return options | {"dims": [width], "dim_weights": [1.0]}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_tasks(data: CatalogueData, split: str = "train") -> tuple[list[TaskPairs], list[str]]:
    """Returns the split's pairs as one :class:`TaskPairs` per (task, candidate type), and the
    distinct query texts they index (in first-seen order)."""
    pairs = data.dataset.pairs(split)
    texts: dict[str, int] = {}
    query_rows = np.array([texts.setdefault(q, len(texts)) for q in pairs.query], dtype=np.int64)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (task, t) in enumerate(zip(pairs.task, pairs.entity_type)):
        groups[(task, t)].append(i)
    tasks = []
    for (task, t), rows in sorted(groups.items()):
        rows = np.asarray(rows, dtype=np.int64)
        source = data.features[t]
        positions = _positions(source, pairs.entity_id[rows], t)
        tasks.append(TaskPairs(task, t, query_rows[rows], positions, pairs.weight[rows].astype(np.float32)))
    return tasks, list(texts)


def _positions(source: EntityFeatures | QueryTowerEntities, ids: np.ndarray, entity_type: str) -> np.ndarray:
    all_ids = source.ids.numpy()
    order = np.argsort(all_ids, kind="stable")
    at = np.searchsorted(all_ids[order], ids).clip(max=max(len(all_ids) - 1, 0))
    if not np.array_equal(all_ids[order][at], ids):
        raise ValueError(f"pairs point at ids that are not entities of type {entity_type!r}")
    return order[at]


def catalogue_setup(run_dir: str | Path, data: CatalogueData | None = None):
    """Returns the :class:`~omnikern.models.trainer.Trainer`'s setup function for a dataset: it
    prepares the data (unless given), writes the run's catalogue record (rank 0), builds the model
    and this rank's :class:`PairSampler` (rows ``rank::world`` of each task, seed ``seed + 1000·rank``)."""

    def setup(config: Config, rank: int, world: int) -> TrainingSetup:
        t = config.train
        built = data if data is not None else build_catalogue_data(config, progress=t.progress and rank == 0)
        if rank == 0:
            write_spec(run_dir, built)
        model = build_catalogue_model(config, built)
        tasks, texts = train_tasks(built)
        sampler = PairSampler(tasks, texts, query_ids(texts), built.features, built.tokenizer,
                              num_pairs=t.num_pairs, task_weights=t.task_weights, neg_ratio=t.neg_ratio,
                              seed=t.seed + 1000 * rank, negatives=t.negatives)
        sampler.shard(rank, world)
        ordered = sorted(set(texts), key=len)
        return TrainingSetup(model, sampler, built,
                             warm=lambda m: warm_frozen_cache(m, ordered, progress=t.progress and rank == 0))

    return setup


def catalogue_trainer(config: Config, run_dir: str | Path, data: CatalogueData | None = None,
                      resume: str | Path | None = None) -> Trainer:
    """A :class:`~omnikern.models.trainer.Trainer` of the catalogue model (:func:`catalogue_setup`)."""
    return Trainer(config, run_dir, catalogue_setup(run_dir, data), resume=resume)


def load_catalogue_run(path: str | Path, data_path: str | Path | None = None, device: str = "cpu"):
    """Returns ``(model, config, data)`` of a trained run (a run directory or one of its
    checkpoints) on ``data_path`` (default: the dataset it was trained on).

    Raises:
        FileNotFoundError / ValueError: not a catalogue run, or the dataset does not match it.
    """
    ckpt, meta = read_checkpoint_meta(path)
    config = Config.from_dict(meta["config"])
    dataset = open_dataset(config, data_path)
    data = build_catalogue_data(config, dataset, run_dir=_run_root(ckpt), fit_legacy=False)
    model = build_catalogue_model(config, data)
    load_model_state(model, ckpt)
    return model.to(device).eval(), config, data


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def entity_embeddings(model: OmniSearchSage, source: EntityFeatures | QueryTowerEntities, entity_type: str,
                      batch_size: int = 512) -> torch.Tensor:
    """Returns the learned embeddings (N, D) of every entity of one type, in its table's order."""
    if isinstance(source, QueryTowerEntities):
        return model.tower(QUERY_KEY).encode(source.texts, batch_size=batch_size, convert_to_tensor=True).float().cpu()
    tower = model.tower((entity_type, LEARNED))
    device = next(tower.parameters()).device
    rows = [torch.empty(0, tower.output_dim)]
    for start in range(0, len(source), batch_size):
        batch = source.gather(np.arange(start, min(start + batch_size, len(source))))
        rows.append(tower({k: v.to(device) for k, v in batch.items()}).float().cpu())
    return torch.cat(rows)


def zero_shot_documents(config: Config, data: CatalogueData, entity_type: str, encode) -> torch.Tensor:
    """The zero-shot encoder's unit vectors of one type's documents, cached by encoder, token cap
    and the documents themselves."""
    table = data.dataset.entities[entity_type]
    spec = data.types[entity_type]
    docs = [table.texts(spec.text_fields[0])] if entity_type == QUERY_TYPE else None
    docs = docs[0] if docs else entity_documents({f: table.texts(f) for f in spec.text_fields})
    digest = hashlib.sha256(("\x00".join(docs)).encode()).hexdigest()[:16]
    tag = "tiny" if config.model.encoder == "tiny" else Path(config.model.encoder).name
    path = cache_dir(config) / f"zero_shot_{tag}_{config.data.legacy_max_tokens}_{len(docs)}_{digest}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape[0] == len(docs):
            return torch.from_numpy(cached)
    vectors = encode(docs).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as handle:
        np.save(handle, vectors.numpy())
    path.with_suffix(".tmp").replace(path)
    return vectors


@dataclass
class EvalTask:
    """One task's held-out queries: their texts, the candidate types (sorted), and per query the
    relevant rows and the rows left out of its ranking, as rows of the concatenation of the
    candidate types' entities."""

    texts: list[str]
    types: list[str]
    relevant: list[list[int]]
    ignore: list[list[int]]


def eval_queries(data: CatalogueData, split: str = "eval", filtered: bool = True) -> dict[str, EvalTask]:
    """Returns task -> :class:`EvalTask`: the split's pairs grouped by (task, query).

    Filtered ranking (``filtered``): entities that the train split pairs with the same query and
    task are left out of that query's ranking unless they are also held-out targets — they are
    known positives, not misses (for the recipe catalogue this is exactly its query sets' ``ignore``
    lists: a category query's train-split recipes)."""
    pairs = data.dataset.pairs(split)
    by_task: dict[str, dict[str, list[tuple[str, int]]]] = defaultdict(lambda: defaultdict(list))
    for q, entity, t, task in zip(pairs.query, pairs.entity_id.tolist(), pairs.entity_type, pairs.task):
        by_task[task][q].append((t, entity))
    known: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    if filtered and split != "train":
        train = data.dataset.pairs("train")
        for q, entity, t, task in zip(train.query, train.entity_id.tolist(), train.entity_type, train.task):
            if q in by_task.get(task, {}):
                known[(task, q)].append((t, entity))
    out = {}
    for task, queries in sorted(by_task.items()):
        types = sorted({t for rows in queries.values() for t, _ in rows})
        offsets = dict(zip(types, np.cumsum([0] + [len(data.features[t]) for t in types]).tolist()))

        def rows_of(pairs_: list[tuple[str, int]]) -> list[int]:
            found = set()
            for t in {t for t, _ in pairs_} & set(types):
                ids = np.array([e for u, e in pairs_ if u == t], dtype=np.int64)
                found.update((offsets[t] + _positions(data.features[t], ids, t)).tolist())
            return sorted(found)

        texts = list(queries)
        out[task] = EvalTask(texts, types, [rows_of(queries[q]) for q in texts],
                             [rows_of(known.get((task, q), [])) for q in texts])
    return out


@torch.no_grad()
def evaluate_catalogue(model: OmniSearchSage, config: Config, data: CatalogueData, split: str = "eval",
                       zero_shot: bool = True, resamples: int = 1000, progress: bool = False,
                       filtered: bool = True) -> dict[str, Any]:
    """Returns ``{"split", "tasks": {task: {"queries": n, "candidate_types": [...], "trained": {...},
    "fixed": {...}, "zero_shot": {...}}}}``: Recall@10, Recall@100 and MRR with their bootstrap 95%
    intervals (``"recall@10_ci": [lo, hi]``, queries resampled ``resamples`` times, seeded).

    ``trained``: the trained query tower against the learned towers. ``fixed``: its legacy-width
    prefix against the legacy vectors (cosine; only tasks whose types all have legacy vectors of one
    width). ``zero_shot``: the frozen encoder's pooled vectors on both sides (queries and entity
    documents), as a model that never saw the pairs would rank. ``trained_minus_zero_shot``: the
    Recall@10 gain with a paired bootstrap interval. ``filtered``: see :func:`eval_queries`
    (``filtered_rows`` counts the rows left out).
    """
    model.eval()
    tasks = eval_queries(data, split, filtered)
    learned = {t: entity_embeddings(model, data.features[t], t) for t in {t for task in tasks.values() for t in task.types}}
    encode = zero_shot_encoder(config, data, progress=progress) if zero_shot else None
    results: dict[str, Any] = {"split": split, "tasks": {}}
    tower = model.tower(QUERY_KEY)
    for task, held_out in tasks.items():
        texts, types, relevant, ignore = held_out.texts, held_out.types, held_out.relevant, held_out.ignore
        entry: dict[str, Any] = {"queries": len(texts), "candidate_types": types,
                                 "filtered_rows": sum(len(rows) for rows in ignore)}
        q = tower.encode(texts, convert_to_tensor=True).float().cpu()
        per_query = {"trained": rank_metrics(q, torch.cat([learned[t] for t in types]), relevant, ignore=ignore)}
        dims = {data.types[t].legacy_dim for t in types}
        if len(dims) == 1 and None not in dims:
            d = dims.pop()
            legacy = torch.cat([torch.from_numpy(data.dataset.entities[t].legacy) for t in types]).float()
            per_query["fixed"] = rank_metrics(l2_normalize(q[:, :d].contiguous()), l2_normalize(legacy), relevant,
                                              ignore=ignore)
        if encode is not None:
            docs = torch.cat([zero_shot_documents(config, data, t, encode) for t in types])
            per_query["zero_shot"] = rank_metrics(encode(texts).float(), docs, relevant, ignore=ignore)
        for name, values in per_query.items():
            entry[name] = summarise_with_intervals(values, resamples)
        if "zero_shot" in per_query:
            # Paired: the same resampled queries for both models, so the interval is the difference's own.
            gain = per_query["trained"]["recall@10"] - per_query["zero_shot"]["recall@10"]
            entry["trained_minus_zero_shot"] = {"recall@10": float(gain.mean()),
                                                "recall@10_ci": list(bootstrap_interval(gain, resamples))}
        results["tasks"][task] = entry
    return results


def format_catalogue_results(results: dict[str, Any]) -> str:
    """Returns a text table: one row per (task, model) with each metric and its interval."""
    lines = [f"{'task':<20} {'model':<10} {'queries':>7}  {'recall@10':>22}  {'recall@100':>22}  {'mrr':>22}"]
    for task, entry in results["tasks"].items():
        for name in ("trained", "fixed", "zero_shot"):
            if name not in entry:
                continue
            m = entry[name]
            cells = [f"{m[k]:.3f} [{m[k + '_ci'][0]:.3f}, {m[k + '_ci'][1]:.3f}]" for k in ("recall@10", "recall@100", "mrr")]
            lines.append(f"{task:<20} {name:<10} {entry['queries']:>7}  " + "  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Embedding the catalogue
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def iter_embeddings(model: OmniSearchSage, data: CatalogueData, batch_rows: int = 4096,
                    entity_types: Sequence[str] | None = None,
                    batches: Iterator[EntityBatch] | None = None) -> Iterator[tuple[EntityBatch, np.ndarray]]:
    """Yields ``(entity batch, its learned embeddings (B, D) float32)`` for the dataset's entities,
    streamed from the files (``batches``: another stream of the dataset's entity batches, e.g.
    one rank's share)."""
    check_int("batch_rows", batch_rows, 1)
    stream = batches if batches is not None else data.dataset.iter_entities(batch_rows, entity_types)
    for batch in stream:
        t = batch.entity_type
        spec = data.types[t]
        if t == QUERY_TYPE:
            vectors = model.tower(QUERY_KEY).encode(batch.texts[spec.text_fields[0]], convert_to_tensor=True)
        else:
            features = type_features(spec, batch.ids, batch.texts, batch.legacy, batch.dense, data.featurise)
            tower = model.tower((t, LEARNED))
            device = next(tower.parameters()).device
            vectors = tower({k: v.to(device) for k, v in features.gather(np.arange(len(batch))).items()})
        yield batch, vectors.float().cpu().numpy()
