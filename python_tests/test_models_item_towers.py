"""The learned and fixed item towers and the hash embedding bag, checked against plain re-computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_standins import (
    bags,
    small_item_features,
    small_item_tower,
)
from torch import nn

from omnikern.data.contract import PUBLISHED_TEXT_FIELDS
from omnikern.models.item_towers import (
    FixedTower,
    HashEmbeddingBag,
    LearnedItemTower,
    draw_hashes,
    masked_image_mean,
    unpack_bits,
)

transformers = pytest.importorskip("transformers", reason="the query tower needs transformers")



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
