"""Plain-Python truth for the C++ text functions (slow, obviously correct)."""

from __future__ import annotations

import unicodedata

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


# ---- ngram ----
# Plain-Python truth for omnikern.text.ngram, from Python's own ``unicodedata`` (Unicode 14.0 on
# Python 3.11). It restates the rules of docs/text.md "Item featuriser" without sharing code with
# the C++ featuriser. Where Python's Unicode version differs from the C++ tables (Unicode 17.0 for
# NFKC_Casefold and Zs, 8.0 for punctuation) the two disagree; the tests list those code points.

# Default_Ignorable_Code_Point = Other_Default_Ignorable_Code_Point + Cf + Variation_Selector
#   - White_Space - FFF9..FFFB - 13430..13440 - Prepended_Concatenation_Mark
# (DerivedCoreProperties.txt; the lists are PropList.txt 17.0.0's).
_OTHER_DEFAULT_IGNORABLE = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x2065, 0x2065),
                            (0x3164, 0x3164), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0xE0000, 0xE0000),
                            (0xE0002, 0xE001F), (0xE0080, 0xE00FF), (0xE01F0, 0xE0FFF))
_VARIATION_SELECTOR = ((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
_PREPENDED_CONCATENATION_MARK = ((0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891),
                                 (0x08E2, 0x08E2), (0x110BD, 0x110BD), (0x110CD, 0x110CD))
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _in_ranges(ranges, cp: int) -> bool:
    return any(first <= cp <= last for first, last in ranges)


def is_default_ignorable_ref(ch: str) -> bool:
    """Unicode's Default_Ignorable_Code_Point, from its derivation."""
    cp = ord(ch)
    if _in_ranges(_OTHER_DEFAULT_IGNORABLE, cp) or _in_ranges(_VARIATION_SELECTOR, cp):
        return True
    if unicodedata.category(ch) != "Cf" or ch in _WHITE_SPACE:
        return False
    if 0xFFF9 <= cp <= 0xFFFB or 0x13430 <= cp <= 0x13440:
        return False
    return not _in_ranges(_PREPENDED_CONCATENATION_MARK, cp)


def _nfkc_casefold_char(ch: str) -> str:
    # Repeat NFKC -> full case folding -> drop default ignorables until nothing changes.
    current = ch
    while True:
        folded = "".join(c for c in unicodedata.normalize("NFKC", current) if not is_default_ignorable_ref(c))
        nxt = unicodedata.normalize("NFKC", folded.casefold())
        if nxt == current:
            return current
        current = nxt


def nfkc_casefold_ref(text: str) -> str:
    """NFKC_Casefold as ICU applies it: NFC of the concatenated per-character NFKC_CF mappings."""
    return unicodedata.normalize("NFC", "".join(_nfkc_casefold_char(c) for c in text))


def _is_ngram_whitespace(ch: str) -> bool:
    return ch in "\t\n\r" or unicodedata.category(ch) == "Zs"


def _is_ngram_punctuation(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(ch)[0] == "P"


def _is_ngram_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(first <= cp <= last for first, last in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def char_trigrams_ref(text: str) -> list[str]:
    """Char trigrams of ``nfkc_casefold_ref(text)`` with ``#`` boundaries (docs/text.md)."""
    seq = ["#"]
    for ch in nfkc_casefold_ref(text):
        if _is_ngram_whitespace(ch):
            if seq[-1] != "#":
                seq.append("#")
        else:
            seq.append(ch)
    if seq[-1] != "#":
        seq.append("#")
    return ["".join(seq[i : i + 3]) for i in range(len(seq) - 2)]


def words_ref(text: str) -> list[str]:
    """Words of the normalised text: CJK ideographs padded with spaces, then maximal runs of
    characters that are neither whitespace nor punctuation."""
    padded = "".join(f" {c} " if _is_ngram_cjk(c) else c for c in nfkc_casefold_ref(text))
    words, current = [], []
    for ch in padded:
        if _is_ngram_whitespace(ch) or _is_ngram_punctuation(ch):
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def word_ngrams_ref(text: str, n: int) -> list[str]:
    """Word n-grams: ``n`` consecutive words joined by ``#``."""
    words = words_ref(text)
    return ["#".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def ngram_featurize_ref(texts, vocabs, oov_buckets: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, offsets) as ``NGramFeaturizer`` defines them, for a flat list of texts.

    ``vocabs`` = (char_trigram, unigram, bigram) token lists in rank order (already capped). Vocab k
    owns ids [base_k, base_k + 1 + n_k + oov_buckets); token of rank r -> base_k + r; an OOV token
    -> base_k + 1 + n_k + murmur_hash64a(utf8) % oov_buckets, or nothing when oov_buckets == 0.
    """
    ranks = [{t: r + 1 for r, t in enumerate(v)} for v in vocabs]
    bases = [0]
    for v in vocabs:
        bases.append(bases[-1] + 1 + len(v) + oov_buckets)
    ids, offsets = [], []
    for text in texts:
        offsets.append(len(ids))
        grams = (char_trigrams_ref(text), word_ngrams_ref(text, 1), word_ngrams_ref(text, 2))
        for k, tokens in enumerate(grams):
            for token in tokens:
                if token in ranks[k]:
                    ids.append(bases[k] + ranks[k][token])
                elif oov_buckets:
                    bucket = murmur_hash64a_ref(token.encode("utf-8")) % oov_buckets
                    ids.append(bases[k] + 1 + len(vocabs[k]) + bucket)
    return ids, offsets
