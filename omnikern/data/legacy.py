"""The fixed tower's "pre-existing" recipe vectors: a frozen zero-shot embedding reduced to 256-d.

In the published system the fixed towers serve embeddings that already exist (PinSage, ItemSage),
and the query tower learns to stay compatible with them. Here the stand-in for ItemSage is computed
once per catalogue and never trained:

1. Each recipe becomes one document (:func:`recipe_document`): ``"<title>. <category>.
   Ingredients: <i1>, <i2>, …. <step 1> <step 2> …"`` (category omitted when None); the encoder's
   tokenizer truncates it (all-MiniLM-L6-v2 was trained on 256 tokens).
2. The zero-shot encoder embeds the documents (:class:`omnikern.models.encoders.ZeroShotEncoder`, given by the caller: all-MiniLM-L6-v2, mean
   pooling, L2-normalised, 384-d) → ``X (N, H)``.
3. Reduction to ``dim = 256`` by PCA fitted on the catalogue (default): ``μ = mean(X)``, the top
   ``dim`` right singular vectors ``C (dim, H)`` of ``X − μ`` (sign fixed so each component's
   largest-magnitude loading is positive, which makes the result deterministic), and
   ``v = normalize((x − μ) · Cᵀ)``. PCA keeps the directions along which recipes differ; plain
   truncation (``method="truncate"``: ``v = normalize(x[:dim])``) is offered for comparison.
   ``μ`` and ``C`` are stored so new items can be projected the same way (:meth:`LegacyVectors.project`).
4. The vectors, the recipe ids and the projection are written to one safetensors file, atomically
   (a temporary file in the same directory, then ``os.replace``), with metadata naming the format,
   method, encoder and sizes. :func:`load_legacy_vectors` checks all of it on the way back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from omnikern._atomic import write_bytes_atomic
from omnikern.data.recipes import Recipe
from omnikern.ops import l2_normalize

FORMAT = "omnikern.legacy_vectors"
FORMAT_VERSION = "1"
METHODS = ("pca", "truncate")


def recipe_document(recipe: Recipe) -> str:
    """Returns the text a recipe is embedded from (module docstring, step 1)."""
    parts = [recipe.title + "."]
    if recipe.category:
        parts.append(recipe.category + ".")
    if recipe.ingredients:
        parts.append("Ingredients: " + ", ".join(recipe.ingredients) + ".")
    parts.extend(recipe.steps)
    return " ".join(parts)


@dataclass
class LegacyVectors:
    """Frozen per-recipe vectors and the projection that made them.

    Attributes:
        vectors: (N, dim) float32 unit rows, row i for recipe ``ids[i]``.
        ids: (N,) int64 recipe entity ids.
        mean: (H,) float32 PCA centre (zeros for ``truncate``).
        components: (dim, H) float32 PCA components (the first ``dim`` unit vectors for ``truncate``).
        metadata: the file's string metadata (format, version, method, encoder, dim, count, source_dim).
    """

    vectors: torch.Tensor
    ids: torch.Tensor
    mean: torch.Tensor
    components: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Returns ``normalize((embeddings − mean) · componentsᵀ)`` (M, dim) for encoder outputs (M, H)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.components.shape[1]:
            raise ValueError(f"embeddings must be (M, {self.components.shape[1]}), got {tuple(embeddings.shape)}")
        return l2_normalize((embeddings.float() - self.mean) @ self.components.T)


def fit_projection(embeddings: torch.Tensor, dim: int, method: str = "pca") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(mean (H,), components (dim, H))`` for ``embeddings`` (N, H) by ``method``.

    Raises:
        ValueError: unknown ``method``; ``dim`` > H; for PCA, fewer than ``dim + 1`` rows.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (N, H), got shape {tuple(embeddings.shape)}")
    n, h = embeddings.shape
    if not isinstance(dim, int) or not 1 <= dim <= h:
        raise ValueError(f"dim must be in [1, {h}] (the encoder width), got {dim!r}")
    x = embeddings.double()
    if method == "truncate":
        return torch.zeros(h, dtype=torch.float32), torch.eye(h, dtype=torch.float32)[:dim]
    if n < dim + 1:
        raise ValueError(f"PCA to dim={dim} needs at least {dim + 1} embeddings, got {n}")
    mean = x.mean(0)
    # Rows of vh are the principal directions, by decreasing singular value.
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    components = vh[:dim]
    # Deterministic sign: each component's largest-magnitude loading is positive.
    pivot = components.abs().argmax(dim=1)
    signs = torch.sign(components.gather(1, pivot[:, None]))
    return mean.float(), (components * signs).float()


def compute_legacy_vectors(
    recipes: Sequence[Recipe],
    encode: Callable[[list[str]], torch.Tensor | np.ndarray],
    dim: int = 256,
    method: str = "pca",
    encoder_name: str = "all-MiniLM-L6-v2",
) -> LegacyVectors:
    """Returns the frozen vectors of ``recipes`` (module docstring, steps 1-3).

    Args:
        recipes: the catalogue.
        encode: zero-shot encoder, ``texts -> (N, H)`` (e.g. :class:`ZeroShotEncoder`).
        dim: output width (256, the published legacy width).
        method: ``"pca"`` (fitted on these recipes) or ``"truncate"``.
        encoder_name: recorded in the metadata.

    Raises:
        ValueError: no recipes, ``encode`` returned the wrong number of rows, bad ``dim``/``method``.
    """
    if not recipes:
        raise ValueError("recipes must not be empty")
    embeddings = torch.as_tensor(np.asarray(encode([recipe_document(r) for r in recipes])), dtype=torch.float32)
    if embeddings.dim() != 2 or embeddings.shape[0] != len(recipes):
        raise ValueError(f"encode must return ({len(recipes)}, H) for {len(recipes)} texts, got {tuple(embeddings.shape)}")
    mean, components = fit_projection(embeddings, dim, method)
    legacy = LegacyVectors(
        vectors=torch.empty(0),
        ids=torch.tensor([r.id for r in recipes], dtype=torch.int64),
        mean=mean,
        components=components,
        metadata={"format": FORMAT, "version": FORMAT_VERSION, "method": method, "encoder": encoder_name,
                  "dim": str(dim), "count": str(len(recipes)), "source_dim": str(embeddings.shape[1])},
    )
    legacy.vectors = legacy.project(embeddings).contiguous()
    return legacy


def save_legacy_vectors(legacy: LegacyVectors, path: str | Path) -> Path:
    """Writes ``legacy`` to ``path`` atomically (temporary file + ``os.replace``) and returns the path."""
    tensors = {"vectors": legacy.vectors.contiguous(), "ids": legacy.ids.contiguous(),
               "pca_mean": legacy.mean.contiguous(), "pca_components": legacy.components.contiguous()}
    return write_bytes_atomic(path, save(tensors, metadata=dict(legacy.metadata)))


def load_legacy_vectors(path: str | Path, dim: int = 256, expected_ids: Sequence[int] | None = None) -> LegacyVectors:
    """Returns the vectors stored at ``path`` after checking them.

    Checks: the metadata format and version; ``vectors`` float32 ``(N, dim)`` with finite unit rows;
    ``ids`` int64 ``(N,)``; ``pca_mean`` ``(H,)`` and ``pca_components`` ``(dim, H)`` float32; and,
    when ``expected_ids`` is given (the catalogue's recipe ids, in order), the same ids.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: anything above does not hold (the message says what).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r}: no legacy vector file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"path {str(path)!r} is not a readable safetensors file: {error}") from None
    if metadata.get("format") != FORMAT or metadata.get("version") != FORMAT_VERSION:
        raise ValueError(f"path {str(path)!r} is not an {FORMAT} v{FORMAT_VERSION} file (metadata {metadata})")
    missing = {"vectors", "ids", "pca_mean", "pca_components"} - set(tensors)
    if missing:
        raise ValueError(f"path {str(path)!r} lacks tensors {sorted(missing)}")
    vectors, ids = tensors["vectors"], tensors["ids"]
    mean, components = tensors["pca_mean"], tensors["pca_components"]
    for name, t in (("vectors", vectors), ("pca_mean", mean), ("pca_components", components)):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype} in {path}")
    if vectors.dim() != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must be (N, dim={dim}), got {tuple(vectors.shape)} in {path}")
    if ids.dtype != torch.int64 or ids.shape != (vectors.shape[0],):
        raise ValueError(f"ids must be int64 ({vectors.shape[0]},), got {ids.dtype} {tuple(ids.shape)} in {path}")
    if mean.dim() != 1 or components.shape != (dim, mean.shape[0]):
        raise ValueError(f"pca_components must be ({dim}, {mean.shape[0]}), got {tuple(components.shape)} in {path}")
    norms = vectors.norm(dim=1)
    if not torch.isfinite(vectors).all() or (vectors.shape[0] and (norms - 1).abs().max() > 1e-3):
        raise ValueError(f"vectors must be finite unit rows in {path}")
    if expected_ids is not None:
        want = torch.as_tensor(list(expected_ids), dtype=torch.int64)
        if want.shape != ids.shape or not torch.equal(want, ids):
            raise ValueError(f"ids in {path} do not match the catalogue ({ids.shape[0]} stored, {want.shape[0]} "
                             "expected): recompute the legacy vectors for this catalogue")
    return LegacyVectors(vectors=vectors, ids=ids, mean=mean, components=components, metadata=metadata)


def ensure_legacy_vectors(
    path: str | Path,
    recipes: Sequence[Recipe],
    encode: Callable[[list[str]], torch.Tensor | np.ndarray],
    dim: int = 256,
    method: str = "pca",
) -> LegacyVectors:
    """Returns the vectors at ``path`` if they are valid for ``recipes``; otherwise computes them
    once with ``encode``, saves them atomically and returns them."""
    path = Path(path)
    if path.is_file():
        try:
            legacy = load_legacy_vectors(path, dim=dim, expected_ids=[r.id for r in recipes])
            if legacy.metadata.get("method") == method:
                return legacy
        except ValueError:
            pass  # stale or foreign file: recompute and replace it
    legacy = compute_legacy_vectors(recipes, encode, dim=dim, method=method)
    save_legacy_vectors(legacy, path)
    return legacy
