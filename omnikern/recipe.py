"""The recipe catalogue end to end: data, model, training set-up, evaluation inputs and export.

Everything that knows it is the recipe catalogue lives here, so the layers below stay general:
:func:`build_data` loads the catalogue, the query sets, the cached legacy vectors and the item
features (:class:`RecipeData`); :func:`build_model` assembles the container (MiniLM query tower,
learned and fixed item towers, one :class:`~omnikern.models.loss.SampledSoftmaxLoss` per candidate
key); :func:`recipe_setup` / :func:`recipe_trainer` hand both to the generic
:class:`~omnikern.models.trainer.Trainer`; :func:`load_trained` rebuilds a trained model for
evaluation; :func:`export_for_serving` and :func:`build_recipe_index` write what
``omnikern export-triton`` serves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from tqdm.auto import tqdm

from omnikern._checks import check_int
from omnikern.data import QueryConfig, build_query_sets, load_recipes
from omnikern.data.batches import MultiTaskSampler, RecipeFeatures
from omnikern.data.contract import LEGACY_DIM
from omnikern.data.dataset import write_dataset
from omnikern.data.legacy import ensure_legacy_vectors, recipe_document
from omnikern.data.recipes import TEXT_FIELDS
from omnikern.index import Int8Index
from omnikern.models.checkpoint import QUERY_TOWER_DIR, load_model_state, read_checkpoint_meta, save_query_tower
from omnikern.models.components import (
    build_encoder,
    cache_dir,
    load_tokenizer,
    serving_query_tower,
    set_trainable_layers,
    truncating,
    warm_frozen_cache,
    wordpiece_featuriser,
)
from omnikern.models.config import Config
from omnikern.models.container import LEARNED, QUERY_KEY, OmniSearchSage, fresh_ids
from omnikern.models.encoders import EMBEDDING_DIM, QueryTower, ZeroShotEncoder
from omnikern.models.frozen import CachedPrefixEncoder
from omnikern.models.item_towers import MLP_HIDDEN, FixedTower, HashEmbeddingBag, LearnedItemTower
from omnikern.models.loss import SampledSoftmaxLoss
from omnikern.models.recipe_eval import item_embeddings
from omnikern.models.trainer import Trainer, TrainingSetup
from omnikern.text import NGramFeaturizer, build_ngram_vocabs

# Named ablations: each is a list of overrides on top of the run's config.
ABLATIONS = {
    "full": [],
    "no_logq": ["loss.logq_correction=false"],
    "no_id_mask": ["loss.id_masking=false"],
    "in_batch_only": ['loss.neg_mode="in_batch"'],
    "no_small_dims": ["loss.dims=[256, 512]", "loss.dim_weights=[1.0, 1.0]"],
    # The published from-scratch init instead of starting from the legacy embedding.
    "no_legacy_init": ["model.legacy_init=false"],
    # Not an ablation of the model: the materialising reference loss in place of the fused one,
    # which must train the same model (same curve, same Recall@10).
    "reference_loss": ['loss.impl="reference"'],
    # The same run with other seeds (init and batches): how far apart runs land by chance.
    "seed_1": ["train.seed=1"],
    "seed_2": ["train.seed=2"],
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class RecipeData:
    """Everything the model and the evaluation need about the catalogue.

    Attributes:
        recipes: the catalogue; queries: the train/eval query sets; legacy: frozen vectors
        (N, legacy_dim); features: the learned tower's per-recipe inputs; tokenizer: query
        WordPiece; featuriser_name: ``"ngram"`` or ``"wordpiece"``.
    """

    recipes: list
    queries: Any
    legacy: Any
    features: Any
    tokenizer: Any
    featuriser_name: str
    vocab_size: int


def build_data(config: Config, progress: bool = False) -> RecipeData:
    """Loads the catalogue, builds the query sets, the cached legacy vectors and the features.

    Raises:
        CatalogueNotInstalledError / FileNotFoundError: the data or encoder package is missing
            (the message names the pip command).
    """
    d = config.data
    recipes = load_recipes(d.catalogue, check_count=d.max_recipes is None) if d.catalogue else load_recipes(
        check_count=d.max_recipes is None)
    if d.max_recipes is not None:
        recipes = recipes[: d.max_recipes]
    queries = build_query_sets(recipes, QueryConfig(seed=d.query_seed, eval_fraction=d.eval_fraction))
    tokenizer = load_tokenizer(config, config.model.query_max_tokens)

    # Legacy vectors: computed once by the zero-shot encoder, cached by encoder, size and catalogue.
    tag = "tiny" if config.model.encoder == "tiny" else Path(config.model.encoder).name
    ids_key = _catalogue_key(recipes)
    path = cache_dir(config) / f"legacy_{tag}_{d.legacy_dim}_{d.legacy_max_tokens}_{len(recipes)}_{ids_key}.safetensors"

    def encode(texts):
        torch.manual_seed(config.train.seed)
        encoder = build_encoder(config, len(tokenizer)).eval()
        doc_tok = load_tokenizer(config, d.legacy_max_tokens)
        return ZeroShotEncoder(encoder, doc_tok, batch_size=64, progress=progress)(texts)

    legacy = ensure_legacy_vectors(path, recipes, encode, dim=d.legacy_dim)

    name = config.model.featuriser
    if name not in ("auto", "ngram", "wordpiece"):
        raise ValueError(f"model.featuriser must be 'auto', 'ngram' or 'wordpiece', got {name!r}")
    if name in ("auto", "ngram"):
        corpus = [recipes[i].text_fields()[f][: d.field_max_chars] for i in queries.train_recipes for f in TEXT_FIELDS]
        featurizer = NGramFeaturizer.from_vocabs(build_ngram_vocabs(corpus, caps=tuple(config.model.ngram_caps)))
        featurise, vocab_size, featuriser_name = featurizer.featurize, featurizer.vocab_size, "ngram"
    else:
        featurise = wordpiece_featuriser(load_tokenizer(config, None), d.field_max_tokens)
        vocab_size, featuriser_name = len(tokenizer), "wordpiece"
    features = RecipeFeatures(recipes, truncating(featurise, d.field_max_chars), legacy.vectors)
    return RecipeData(recipes, queries, legacy, features, tokenizer, featuriser_name, int(vocab_size))


def _catalogue_key(recipes) -> str:
    digest = hashlib.sha256(np.asarray([r.id for r in recipes], dtype=np.int64).tobytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class ContainerLoss(nn.Module):
    """Routes the container's loss calls to one :class:`~omnikern.models.loss.SampledSoftmaxLoss`
    per candidate key, and switches id masking off when asked.

    The container calls the loss once per candidate key in one forward. Each key gets its own
    :class:`SampledSoftmaxLoss` (own temperature and sketches, so each key's logQ totals are its
    own, as the published per-key losses have). Routing: a call without random negatives is the query →
    query task (``neg_mode="in_batch"``); with negatives, candidates of width ``learned_dim`` go
    to the learned item key, narrower ones to the fixed key.

    With ``id_masking=False`` each row's positive and query get fresh unique ids for the loss (the
    negatives keep theirs), so only a row's own positive column is masked and accidental
    duplicates count as negatives.
    """

    def __init__(self, learned: nn.Module, fixed: nn.Module, query: nn.Module, learned_dim: int,
                 id_masking: bool = True) -> None:
        super().__init__()
        self.learned, self.fixed, self.query = learned, fixed, query
        self.learned_dim = learned_dim
        self.id_masking = id_masking
        # A buffer, so that a resumed run continues the same fresh-id sequence.
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, query, pos, neg=None, *, query_ids, pos_ids, neg_ids=None, weights=None):
        if not self.id_masking:
            query_ids, pos_ids = fresh_ids(self.calls, query.shape[0], pos_ids.device)
        if neg is None:
            loss = self.query
        else:
            loss = self.learned if pos.shape[1] == self.learned_dim else self.fixed
        return loss(query, pos, neg, query_ids=query_ids, pos_ids=pos_ids, neg_ids=neg_ids, weights=weights)


def build_model(config: Config, data: RecipeData) -> nn.Module:
    """Returns the container (query tower, learned item tower, fixed tower) with the loss."""
    m, lc = config.model, config.loss
    torch.manual_seed(config.train.seed)
    encoder = build_encoder(config, len(data.tokenizer))
    if m.cache_frozen and m.train_encoder_layers >= 0:
        encoder = CachedPrefixEncoder(encoder, m.train_encoder_layers)
    query = QueryTower(encoder, tokenizer=data.tokenizer, pooling=m.pooling, output_dim=m.output_dim,
                       normalize_pooled=m.legacy_init)
    if m.legacy_init:
        query.init_from_pca(data.legacy.mean, data.legacy.components)
    if not hasattr(encoder, "cache"):
        set_trainable_layers(query, m.train_encoder_layers)
    options = dict(temperature=lc.temperature, dims=lc.dims, dim_weights=lc.dim_weights,
                   logq_correction=lc.logq_correction, sketch_width=lc.sketch_width, impl=lc.impl)
    if config.data.legacy_dim >= m.output_dim:
        raise ValueError(f"data.legacy_dim ({config.data.legacy_dim}) must be below model.output_dim ({m.output_dim}): "
                         "the fixed tower trains a prefix of the query embedding")
    loss = ContainerLoss(SampledSoftmaxLoss(neg_mode=lc.neg_mode, **options),
                         SampledSoftmaxLoss(neg_mode=lc.neg_mode, **options),
                         SampledSoftmaxLoss(neg_mode="in_batch", **options), learned_dim=m.output_dim,
                         id_masking=lc.id_masking)
    bag = HashEmbeddingBag(num_buckets=m.hash_buckets, dim=m.text_dim, vocab_size=max(data.vocab_size, 1))
    model = build_recipe_model(query, loss, legacy_dim=config.data.legacy_dim,
                               bag=bag, hidden=tuple(m.item_hidden), output_dim=m.output_dim,
                               legacy_skip=m.legacy_init)
    return model


def build_recipe_model(
    query_tower: nn.Module,
    loss: Callable[..., object],
    legacy_dim: int = LEGACY_DIM,
    bag: HashEmbeddingBag | None = None,
    text_fields: Sequence[str] = ("title", "category", "ingredients", "steps"),
    hidden: Sequence[int] = MLP_HIDDEN,
    output_dim: int = EMBEDDING_DIM,
    output_dtype: torch.dtype | None = None,
    legacy_skip: bool = False,
) -> OmniSearchSage:
    """Returns the container for the recipe catalogue: ``("query", "learned")`` = ``query_tower``;
    ``("item", "learned")`` = a :class:`LearnedItemTower` on the recipe text fields and the legacy
    vector (MLP ``256 + legacy_dim → 1024 → 1024 → output_dim`` by default); ``("item", "fixed")`` =
    a :class:`FixedTower` on the legacy vector (feature ``"legacy"``). ``output_dim`` must equal the
    query tower's. ``legacy_skip``: the learned tower starts as the legacy vector and learns a
    residual on it (``LearnedItemTower(skip_feature="legacy")``)."""
    item = LearnedItemTower(text_fields=text_fields, dense_features={"legacy": legacy_dim}, bag=bag, hidden=hidden,
                            output_dim=output_dim, output_dtype=output_dtype,
                            skip_feature="legacy" if legacy_skip else None)
    towers = {QUERY_KEY: query_tower, ("item", LEARNED): item,
              ("item", "fixed"): FixedTower("legacy", dim=legacy_dim, output_dtype=output_dtype)}
    return OmniSearchSage(towers, loss)


# ---------------------------------------------------------------------------------------------
# Training, evaluation and export
# ---------------------------------------------------------------------------------------------


def recipe_setup(data: RecipeData | None = None) -> Callable[[Config, int, int], TrainingSetup]:
    """Returns the :class:`~omnikern.models.trainer.Trainer`'s setup function for the recipe model:
    it builds the data (unless ``data`` is given: one catalogue shared by several runs of a
    process), the model, and this rank's :class:`~omnikern.data.batches.MultiTaskSampler` (rows
    ``rank::world`` of the positives and pairs, generator seed ``seed + 1000·rank``)."""

    def setup(config: Config, rank: int, world: int) -> TrainingSetup:
        built = data if data is not None else build_data(config, progress=config.train.progress and rank == 0)
        model = build_model(config, built)
        t = config.train
        sampler = MultiTaskSampler(built.queries, built.features, built.tokenizer, num_pairs=t.num_pairs,
                                   task_weights={"item": t.item_weight, "query": t.query_weight},
                                   neg_ratio=t.neg_ratio, seed=t.seed + 1000 * rank)
        sampler.shard(rank, world)
        texts = sorted({q.text for q in built.queries.train}, key=len)
        return TrainingSetup(model, sampler, built,
                             warm=lambda m: warm_frozen_cache(m, texts, progress=t.progress and rank == 0))

    return setup


def recipe_trainer(config: Config, run_dir: str | Path, data: RecipeData | None = None,
                   resume: str | Path | None = None) -> Trainer:
    """A :class:`~omnikern.models.trainer.Trainer` of the recipe model (see :func:`recipe_setup`)."""
    return Trainer(config, run_dir, recipe_setup(data), resume=resume)


def load_trained(path: str | Path, data: RecipeData | None = None, device: str = "cpu"):
    """Returns ``(model, config, data)`` from a checkpoint (or run directory) for evaluation.

    Raises:
        FileNotFoundError / ValueError: not a checkpoint, or it does not fit the model its config builds.
    """
    ckpt, meta = read_checkpoint_meta(path)
    config = Config.from_dict(meta["config"])
    data = data if data is not None else build_data(config)
    model = build_model(config, data)
    load_model_state(model, ckpt)
    return model.to(device).eval(), config, data


def export_for_serving(model: nn.Module, data: RecipeData, directory: str | Path) -> tuple[Path, Path]:
    """Writes what ``omnikern export-triton`` takes: ``<directory>/query_tower/`` (the query tower
    as :func:`omnikern.models.checkpoint.save_query_tower` lays it out, with the cached-layer wrapper
    removed) and ``<directory>/item_index.safetensors`` (an :class:`omnikern.Int8Index` of the
    learned item tower's embeddings of every recipe, ids = recipe entity ids). Returns both paths.
    """
    directory = Path(directory)
    tower_dir = save_query_tower(serving_query_tower(model), directory / QUERY_TOWER_DIR)
    embeddings = item_embeddings(model, data)["learned"]
    index = Int8Index(embeddings.shape[1])
    index.add(embeddings.contiguous(), data.features.ids.clone())
    index_path = directory / "item_index.safetensors"
    index.save(index_path)
    return tower_dir, index_path


def build_recipe_index(tower, path: str | os.PathLike, limit: int | None = None, batch_size: int = 64,
                       progress: bool = True, index_class=None):
    """Embeds the recipe catalogue's documents (title, category, ingredients, steps; truncated to
    the tokenizer's max length) with ``tower``, puts them in an ``omnikern.Int8Index`` under the
    recipe ids, saves it to ``path`` and returns it.

    Args:
        limit: only the first ``limit`` recipes (in catalogue order); None = all 3,129.
        index_class: the index type (default ``omnikern.Int8Index``).

    Raises:
        CatalogueNotInstalledError: the catalogue package is not installed.
        ValueError: ``limit`` < 1.
    """
    check_int("limit", limit, none_ok=True)
    recipes = load_recipes()[:limit]
    documents = [recipe_document(r) for r in recipes]
    chunks = []
    for start in tqdm(range(0, len(documents), batch_size), desc="embedding recipes", unit="batch", disable=not progress):
        chunks.append(tower.encode(documents[start:start + batch_size], batch_size=batch_size, convert_to_tensor=True).float().cpu())
    index = (index_class or Int8Index)(tower.output_dim)
    index.add(torch.cat(chunks), torch.tensor([r.id for r in recipes], dtype=torch.int64))
    index.save(path)
    return index


# ---------------------------------------------------------------------------------------------
# The recipe catalogue as a dataset in the documented format (docs/data-format.md)
# ---------------------------------------------------------------------------------------------

RECIPE_ENTITY_TYPE = "recipe"
QUERY_ENTITY_TYPE = "query"


def write_recipe_dataset(config: Config, out_dir: str | Path, query_task: bool = False,
                         progress: bool = False) -> Path:
    """Writes the recipe catalogue as a dataset (docs/data-format.md) to ``out_dir`` and returns it.

    Entities: one ``recipe`` per recipe (catalogue order) with text fields ``title``, ``category``
    (null when the recipe has none), ``ingredients`` and ``steps`` (lists of lines) and
    ``legacy_embedding``: the cached legacy vectors that training uses (:func:`build_data`,
    computed once per catalogue and encoder). Pairs: every (query, target recipe) of the train and
    eval query sets, task = the query kind (``known_item``, ``ingredient``, ``category``), weight 1.
    The eval side lists only the targets in the eval split: the recipe evaluation's filtered
    ranking (``Query.ignore``) has no column in the format.

    With ``query_task``, also the query → query pairs of the query sets (task ``query``, both
    orientations), whose candidates are ``query`` entities (one per query text, id = the query id,
    text field ``text``, no legacy vector).

    Raises:
        CatalogueNotInstalledError / FileNotFoundError: the catalogue or the encoder package is
            missing (the message names the pip command).
        ValueError: a bad config value.
    """
    data = build_data(config, progress=progress)
    recipes, queries = data.recipes, data.queries
    ids = [r.id for r in recipes]
    if data.legacy.ids.tolist() != ids:
        raise ValueError("the cached legacy vectors are not in catalogue order")  # ensure_legacy_vectors checks it
    vectors = data.legacy.vectors.float().numpy()
    entities = pa.table({
        "entity_id": pa.array(ids, pa.int64()),
        "entity_type": pa.array([RECIPE_ENTITY_TYPE] * len(recipes), pa.string()),
        "title": pa.array([r.title for r in recipes], pa.string()),
        "category": pa.array([r.category for r in recipes], pa.string()),
        "ingredients": pa.array([list(r.ingredients) for r in recipes], pa.list_(pa.string())),
        "steps": pa.array([list(r.steps) for r in recipes], pa.list_(pa.string())),
        "legacy_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                              vectors.shape[1]),
    })
    splits = {}
    for split, split_queries, split_pairs in (("train", queries.train, queries.train_pairs),
                                              ("eval", queries.eval, queries.eval_pairs)):
        rows = [{"query": q.text, "entity_id": ids[r], "task": q.kind} for q in split_queries for r in q.targets]
        if query_task:
            rows += [{"query": split_queries[a].text, "entity_id": split_queries[b].id, "task": QUERY_ENTITY_TYPE}
                     for i, j in split_pairs for a, b in ((i, j), (j, i))]
        splits[split] = rows
    if query_task:
        texts = {q.id: q.text for q in (*queries.train, *queries.eval)}
        query_rows = pa.table({
            "entity_id": pa.array(list(texts), pa.int64()),
            "entity_type": pa.array([QUERY_ENTITY_TYPE] * len(texts), pa.string()),
            "text": pa.array(list(texts.values()), pa.string()),
        })
        entities = pa.concat_tables([entities, query_rows], promote_options="default")
    return write_dataset(out_dir, entities, splits["train"], splits["eval"])
