"""Item towers: the learned tower of pins and products and the fixed towers of pre-existing vectors.

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

"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from omnikern._checks import check_int
from omnikern.data.contract import FEATURISER_VOCAB, LEGACY_DIM, PUBLISHED_TEXT_FIELDS, VISUAL_BITS
from omnikern.models.encoders import EMBEDDING_DIM
from omnikern.ops import l2_normalize

# The published learned-tower sizes.
HASH_BUCKETS = 100_000
TEXT_DIM = 256
MLP_HIDDEN = (1024, 1024)


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
            check_int(name, value)
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
            check_int(f"dense_features[{name!r}]", width)
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
        check_int("dim", dim, 1)
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
