"""Plain-Python truth for the C++ text functions (slow, obviously correct)."""

from __future__ import annotations

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def leveldb_hash32_ref(data: bytes, seed: int = 0xBC9F1D34) -> int:
    """LevelDB's ``Hash(data, n, seed)``, all arithmetic mod 2^32."""
    m = 0xC6A4A793
    n = len(data)
    h = (seed ^ (n * m)) & _MASK32
    whole = n - n % 4
    for i in range(0, whole, 4):
        h = (h + int.from_bytes(data[i : i + 4], "little")) & _MASK32
        h = (h * m) & _MASK32
        h ^= h >> 16
    tail = data[whole:]
    if tail:
        h = (h + int.from_bytes(tail, "little")) & _MASK32  # b2<<16 | b1<<8 | b0
        h = (h * m) & _MASK32
        h ^= h >> 24
    return h


def murmur_hash64a_ref(data: bytes, seed: int = 0xBC9F1D34) -> int:
    """MurmurHash64A, all arithmetic mod 2^64."""
    m, r = 0xC6A4A7935BD1E995, 47
    n = len(data)
    h = (seed ^ (n * m)) & _MASK64
    whole = n - n % 8
    for i in range(0, whole, 8):
        k = (int.from_bytes(data[i : i + 8], "little") * m) & _MASK64
        k ^= k >> r
        k = (k * m) & _MASK64
        h = ((h ^ k) * m) & _MASK64
    tail = data[whole:]
    if tail:
        h = ((h ^ int.from_bytes(tail, "little")) * m) & _MASK64
    h ^= h >> r
    h = (h * m) & _MASK64
    h ^= h >> r
    return h


def string_id_hash_ref(strings, bits: int = 32) -> list[int]:
    """Ids as ``omnikern.text.string_id_hash`` defines them."""
    ids = []
    for s in strings:
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        if not data:
            ids.append(0)
        elif bits == 32:
            h = leveldb_hash32_ref(data)
            ids.append(1 + (h - (1 << 32) if h >= 1 << 31 else h))
        else:
            ids.append(1 + (murmur_hash64a_ref(data) >> 1))
    return ids


# ---- pooling ----


def pool_ref(token_embeddings, attention_mask, modes=("mean",)):
    """Pooled embeddings (B, H * len(modes)) float32 as ``omnikern.text.pool`` defines them, in torch.

    ``token_embeddings`` (B, L, H) and ``attention_mask`` (B, L) are torch tensors (nonzero = attend).
    Differentiable; masked positions are excluded with ``where`` (not ``* 0``), so NaN there is ignored.
    """
    import torch

    if isinstance(modes, str):
        modes = (modes,)
    x = token_embeddings.float()
    keep = (attention_mask != 0).unsqueeze(-1)  # (B, L, 1)
    count = keep.sum(dim=1).to(x.dtype)  # (B, 1)
    clamped = count.clamp(min=1e-9)
    summed = torch.where(keep, x, torch.zeros((), dtype=x.dtype)).sum(dim=1)  # (B, H)
    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append(x[:, 0])
        elif mode == "mean":
            outputs.append(summed / clamped)
        elif mode == "mean_sqrt":
            outputs.append(summed / clamped.sqrt())
        elif mode == "max":
            masked = torch.where(keep, x, torch.full((), float("-inf"), dtype=x.dtype))
            # A fully masked row has no maximum: 0, as for mean.
            outputs.append(torch.where(count > 0, masked.amax(dim=1), torch.zeros((), dtype=x.dtype)))
        else:
            raise ValueError(f"modes must hold 'cls', 'mean', 'mean_sqrt' or 'max', got {mode!r}")
    return torch.cat(outputs, dim=-1)
