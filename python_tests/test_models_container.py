"""The multi-tower container, with the loss injected (a tiny in-batch softmax stand-in; the fused loss
is tested in its own file), and the full-size towers on synthetic batches of the published shapes."""

from __future__ import annotations

import pytest
import torch
from model_standins import (
    InBatchLossStandIn,
    small_item_features,
    small_item_tower,
    tiny_bert,
    token_batch,
)
from torch import nn

from omnikern.data.contract import TaskBatch
from omnikern.models.container import QUERY_KEY, OmniSearchSage
from omnikern.models.encoders import QueryTower
from omnikern.models.item_towers import (
    FixedTower,
    LearnedItemTower,
)

transformers = pytest.importorskip("transformers", reason="the query tower needs transformers")






# ---- container -------------------------------------------------------------------------------


def make_model(loss=None) -> OmniSearchSage:
    towers = {
        QUERY_KEY: QueryTower(tiny_bert(), pooling="cls", output_dim=8),
        ("item", "learned"): small_item_tower(),
        ("item", "fixed"): FixedTower("legacy", dim=6),
    }
    return OmniSearchSage(towers, loss if loss is not None else InBatchLossStandIn())


def item_task(b: int, r: int, seed: int, weights: bool = False) -> TaskBatch:
    return TaskBatch(
        candidate_type="item",
        query=token_batch(b, seed=seed),
        candidates=small_item_features(b + r, seed=seed),
        query_ids=torch.arange(b) + 100 * seed,
        candidate_ids=torch.arange(b + r) + 1000 * seed,
        weights=torch.rand(b) if weights else None,
    )


def query_task(b: int, seed: int) -> TaskBatch:
    return TaskBatch(candidate_type="query", query=token_batch(b, seed=seed), candidates=token_batch(b, seed=seed + 50),
                     query_ids=torch.arange(b), candidate_ids=torch.arange(b) + 7)


def test_container_sums_keys_and_truncates_for_fixed_towers():
    loss = InBatchLossStandIn()
    model = make_model(loss)
    batches = [item_task(3, 2, seed=1), item_task(2, 1, seed=2), query_task(3, seed=3)]
    out = model(batches)
    assert set(out.losses) == {"query_item_fixed", "query_item_learned", "query_query_learned"}
    # One loss call per candidate key, in sorted key order, over the concatenated task batches.
    fixed, learned, q2q = loss.calls
    assert fixed["query"].shape == (5, 6) and fixed["pos"].shape == (5, 6) and fixed["neg"].shape == (3, 6)
    assert learned["query"].shape == (5, 8) and learned["neg"].shape == (3, 8)
    assert q2q["neg"] is None and q2q["neg_ids"] is None and q2q["pos"].shape == (3, 8)
    # The fixed key sees the query's first 6 columns of the same query embeddings.
    torch.testing.assert_close(fixed["query"], learned["query"][:, :6])
    assert fixed["pos_ids"].tolist() == [1000, 1001, 1002, 2000, 2001]
    assert fixed["neg_ids"].tolist() == [1003, 1004, 2002]
    assert fixed["query_ids"].tolist() == [100, 101, 102, 200, 201]
    assert fixed["weights"] is None
    # total = mean over keys.
    torch.testing.assert_close(out.total, sum(out.losses.values()) / 3)
    out.total.backward()
    assert model.tower(QUERY_KEY).proj.weight.grad.abs().sum() > 0
    assert model.tower(("item", "learned")).mlp[0].weight.grad.abs().sum() > 0


def test_container_weights_and_embeddings():
    loss = InBatchLossStandIn()
    model = make_model(loss)
    with_w, without_w = item_task(2, 1, seed=1, weights=True), item_task(2, 0, seed=2)
    model([with_w, without_w])
    weights = loss.calls[0]["weights"]
    torch.testing.assert_close(weights, torch.cat([with_w.weights, torch.ones(2)]))
    query, cands = model.compute_embeddings(with_w)
    assert query.shape == (2, 8) and set(cands) == {("item", "fixed"), ("item", "learned")}
    assert cands[("item", "fixed")].shape == (3, 6)


def test_container_bad_input():
    with pytest.raises(ValueError, match="query"):
        OmniSearchSage({("item", "fixed"): FixedTower("legacy")}, InBatchLossStandIn())
    with pytest.raises(ValueError, match="tower keys"):
        OmniSearchSage({QUERY_KEY: QueryTower(tiny_bert()), "item": FixedTower("legacy")}, InBatchLossStandIn())
    with pytest.raises(TypeError, match="loss"):
        OmniSearchSage({QUERY_KEY: QueryTower(tiny_bert())}, loss=3)
    model = make_model()
    with pytest.raises(ValueError, match="candidate_type"):
        model([TaskBatch("pin", token_batch(2), {}, torch.arange(2), torch.arange(2))])
    with pytest.raises(ValueError, match="batches"):
        model([])
    bad = item_task(3, 1, seed=1)
    bad.candidate_ids = torch.arange(2)
    with pytest.raises(ValueError, match="candidate_ids"):
        model([bad])
    with pytest.raises(KeyError, match="no tower"):
        model.tower(("pin", "learned"))


# ---- full-size towers on synthetic batches of the published shapes ---------------------------


def test_synthetic_batches_have_the_published_shapes():
    from omnikern.data.synthetic import synthetic_tasks

    tasks = synthetic_tasks(batch_size=16, neg_ratio=4, seed=0)
    assert [(t.candidate_type, t.num_pairs) for t in tasks] == [("pin", 8), ("product", 4), ("query", 2), ("product", 2)]
    pin, product, query, _ = tasks
    assert pin.candidate_ids.shape == (40,) and pin.query["input_ids"].shape[0] == 8
    assert (pin.query["input_ids"][:, 0] == 101).all() and pin.query["input_ids"].shape[1] <= 64
    assert sum(1 for k in pin.candidates if k.endswith("_input_ids")) == 19
    assert pin.candidates["visual"].shape == (40, 128) and pin.candidates["visual"].dtype == torch.uint8
    assert pin.candidates["pinsage"].shape == (40, 256) and pin.candidates["itemsage"].shape == (40, 256)
    assert product.candidates["visual"].shape == (20, 4, 128) and product.candidates["visual_mask"].shape == (20, 4)
    assert product.candidates["visual_mask"].any(dim=1).all()  # every product has at least one image
    assert query.candidates["attention_mask"].shape[0] == 10
    for name in ("title", "board_titles"):
        offsets = pin.candidates[f"{name}_offsets"]
        assert offsets[0] == 0 and (offsets[1:] >= offsets[:-1]).all()
        assert offsets[-1] <= pin.candidates[f"{name}_input_ids"].numel()
    again = synthetic_tasks(batch_size=16, neg_ratio=4, seed=0)
    assert torch.equal(again[1].candidates["visual"], product.candidates["visual"])


def test_full_size_towers_forward_backward_on_synthetic_batch(minilm_encoder):
    """Published sizes: 19-field hash bag (100,000 × 256), MLP 1792 → 1024 → 1024 → 512 shared by pins
    and products, 256-d fixed towers, and the default query encoder (tiny BERT if MiniLM is absent)."""
    from omnikern.data.synthetic import synthetic_tasks

    if minilm_encoder is not None:
        query_tower = QueryTower(minilm_encoder)
    else:
        query_tower = QueryTower(tiny_bert_with_vocab(30_522))
    shared = LearnedItemTower.published()
    towers = {
        QUERY_KEY: query_tower,
        ("pin", "learned"): shared,
        ("product", "learned"): shared,
        ("pin", "fixed"): FixedTower("pinsage"),
        ("product", "fixed"): FixedTower("itemsage"),
    }
    loss = InBatchLossStandIn()
    model = OmniSearchSage(towers, loss)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in query_tower.parameters()) + sum(
        p.numel() for p in shared.parameters())
    tasks = synthetic_tasks(batch_size=8, neg_ratio=1, seed=1, max_tokens=6, query_max_length=12)
    out = model(tasks)
    assert set(out.losses) == {"query_pin_fixed", "query_pin_learned", "query_product_fixed",
                               "query_product_learned", "query_query_learned"}
    assert torch.isfinite(out.total)
    by_key = dict(zip(sorted(out.losses), loss.calls))
    assert by_key["query_pin_fixed"]["query"].shape == (4, 256)
    assert by_key["query_product_learned"]["pos"].shape == (3, 512)  # two product tasks, 2 + 1 pairs
    assert by_key["query_product_learned"]["pos"].dtype == torch.float16
    out.total.backward()
    assert shared.bag.bag.weight.grad.abs().sum() > 0 and shared.mlp[0].weight.grad.abs().sum() > 0
    assert query_tower.proj.weight.grad.abs().sum() > 0


def tiny_bert_with_vocab(vocab: int) -> nn.Module:
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config)
