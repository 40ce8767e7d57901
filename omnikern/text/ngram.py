"""Hashed n-gram item featuriser over the C++ extension: ids and offsets for ``nn.EmbeddingBag``.

Rules (docs/text.md, "Item featuriser"), all in C++ (``csrc/ngram/``):

* Normalisation: NFKC_Casefold as ICU applies it (NFKC + full case folding + removal of
  Default_Ignorable_Code_Point, to a fixpoint per code point, then NFC), Unicode 17.0 tables. No
  accent stripping. ``"™"`` -> ``"tm"`` (Python's ``NFKC(s.casefold())`` gives ``"TM"``: folding
  runs before NFKC there, and it keeps default ignorables such as U+00AD).
* Whitespace = ``\\t \\n \\r`` and Zs; punctuation = the WordPiece set (ASCII 33-47, 58-64, 91-96,
  123-126 and Unicode 8.0 P*).
* Char trigrams: a 3-code-point window over ``#`` + text + ``#`` where each whitespace run is one
  ``#``, leading whitespace is dropped and the final ``#`` is not doubled: ``"a b"`` -> ``#a#, a#b,
  #b#``. One code point is one character (astral ones too).
* Words: CJK ideographs (the original BERT ranges, with U+2B820) are words of their own; otherwise
  maximal runs of neither whitespace nor punctuation. Unigrams = words; bigrams = consecutive words
  joined by ``#`` (across punctuation): ``"hello, world"`` -> ``hello#world``.

Ids. Vocabulary k (0 trigrams, 1 unigrams, 2 bigrams; each a list of tokens in rank order, capped
at ``caps[k]``) with n_k tokens owns the ids ``[base_k, base_k + 1 + n_k + oov_buckets)``::

    base_0 = 0,  base_{k+1} = base_k + 1 + n_k + oov_buckets     (vocab_size = base_3)
    token of rank r (1-based)      -> base_k + r                  (base_k itself: reserved, never emitted)
    out-of-vocab token t           -> dropped, or with oov_buckets > 0:
                                      base_k + 1 + n_k + murmur_hash64a(utf8(t)) % oov_buckets

A text's ids are its trigram ids, then unigram ids, then bigram ids, each in text order, repeats
kept. Batch layout: a flat list of B texts gives B bags; a list of B rows of F fields each gives
B * F bags, bag ``row * F + field`` (``offsets`` has B * F entries; ``EmbeddingBag(...)(input_ids,
offsets)`` is (B * F, D), and ``.view(B, F, D)`` gives the field embeddings). The result equals
``omnikern.text.reference.ngram_featurize_ref`` over the flattened texts.

Unicode versions and known differences. NFKC_Casefold, Zs and CJK use Unicode 17.0 (the tables
of ``csrc/unicode``), punctuation uses Unicode 8.0's P* (WordPiece's set). The reference
implementation (``omnikern.text.reference``) uses Python's ``unicodedata`` (14.0 on Python 3.11) and
agrees everywhere except: NFKC_Casefold on 154 code points Python does not know (case pairs and
compatibility characters added in 15.0-17.0: U+1C89, U+A7CB..A7F1, U+10D50..10D65, U+16EA0..16EB8,
U+1CCD6..1CCF9, U+1E030..1E06D; listed in python_tests/test_text_ngram.py), punctuation on 106 code
points (P* added after 8.0, and U+166D, U+111C9 which left P*), and anything assigned after 14.0
(combining classes). Against ICU 72 (Unicode 15.0) ``unorm2_getNFKCCasefoldInstance``, NFKC_Casefold
and Default_Ignorable_Code_Point agree on every code point assigned in 15.0 (checked once; ICU is not
a dependency).

Batch calls release the GIL and split the work over ``num_threads`` threads; the result does not
depend on the thread count. Featurisers pickle as JSON-able state (vocabs + options); vocabularies
are saved as JSON (atomic write), never pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnikern import _C
from omnikern._atomic import write_text_atomic
from omnikern._checks import check_int

DEFAULT_CAPS = (64_000, 200_000, 1_000_000)
KINDS = ("char_trigram", "unigram", "bigram")
_FORMAT = "omnikern.ngram_vocabs"
_FORMAT_VERSION = 1
# The Unicode version of the NFKC_Casefold tables (the vocab file records it).
UNICODE_VERSION = _C.UNICODE_VERSIONS[1]


def _check_caps(caps: Any) -> tuple[int, int, int]:
    if (not isinstance(caps, (tuple, list)) or len(caps) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in caps)):
        raise ValueError(f"caps must be 3 ints >= 0 (char_trigram, unigram, bigram), got {caps!r}")
    return tuple(caps)  # type: ignore[return-value]


def _check_num_threads(num_threads: Any) -> int:
    check_int("num_threads", num_threads, 0)
    return num_threads


def _check_text(text: Any) -> None:
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"text must be str or bytes, got {type(text).__name__}")


def _token_list(tokens: Any, name: str) -> list[str]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise TypeError(f"{name} must be a sequence of str tokens in rank order, got {type(tokens).__name__}")
    out = list(tokens)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be str, got {type(t).__name__}")
    return out


@dataclass
class NGramVocabs:
    """The three vocabularies: tokens in rank order (most frequent first) and their corpus counts."""

    char_trigram: list[str]
    unigram: list[str]
    bigram: list[str]
    counts: dict[str, list[int]] = field(default_factory=dict)  # kind -> counts parallel to the tokens

    def __post_init__(self) -> None:
        for kind in KINDS:
            setattr(self, kind, _token_list(getattr(self, kind), kind))
        for kind, values in self.counts.items():
            if kind not in KINDS or len(values) != len(getattr(self, kind)):
                raise ValueError(f"counts[{kind!r}] must have one count per {kind} token")

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabularies as JSON, atomically (a temp file in the same folder, then rename)."""
        doc = {"format": _FORMAT, "version": _FORMAT_VERSION, "unicode_version": UNICODE_VERSION,
               **{kind: getattr(self, kind) for kind in KINDS}, "counts": self.counts}
        write_text_atomic(path, json.dumps(doc, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NGramVocabs:
        """Reads a file written by :meth:`save`.

        Raises:
            ValueError: ``path`` is not such a file (wrong format/version, or bad fields).
        """
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"path {os.fspath(path)!r} is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _FORMAT_VERSION:
            raise ValueError(f"path {os.fspath(path)!r} is not an {_FORMAT} v{_FORMAT_VERSION} file")
        try:
            return cls(*(doc[kind] for kind in KINDS), counts=doc.get("counts", {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"path {os.fspath(path)!r}: bad vocab file ({e})") from None


def build_ngram_vocabs(
    corpus: Iterable[str | bytes], caps: Sequence[int] = DEFAULT_CAPS, min_count: int = 1, num_threads: int = 0
) -> NGramVocabs:
    """Vocabularies counted over ``corpus`` with the featuriser's own C++ tokenizers.

    Each kind keeps its ``caps[k]`` most frequent tokens with count >= ``min_count``, ties broken by
    code point order of the token, so the result is deterministic (and independent of
    ``num_threads``).

    Raises:
        TypeError: ``corpus`` is a single str or holds other types.
        ValueError: invalid UTF-8 (naming ``corpus[i]``), bad ``caps``/``min_count``/``num_threads``.
    """
    if isinstance(corpus, (str, bytes)):
        raise TypeError("corpus must be an iterable of str or bytes, not a single " + type(corpus).__name__)
    caps = _check_caps(tuple(caps) if isinstance(caps, list) else caps)
    check_int("min_count", min_count, 1)
    counted = _C.ngram_count(corpus, caps, min_count, _check_num_threads(num_threads))
    return NGramVocabs(*([t for t, _ in kind] for kind in counted),
                       counts={name: [c for _, c in kind] for name, kind in zip(KINDS, counted)})


class NGramFeaturizer:
    """Texts -> ``{"input_ids", "offsets"}`` for ``nn.EmbeddingBag`` (char trigrams + word uni/bigrams)."""

    def __init__(
        self,
        char_trigram_vocab: Sequence[str],
        unigram_vocab: Sequence[str],
        bigram_vocab: Sequence[str],
        caps: Sequence[int] = DEFAULT_CAPS,
        oov_buckets: int = 0,
    ):
        """Args:
            char_trigram_vocab, unigram_vocab, bigram_vocab: tokens in rank order (rank 1 first), e.g.
                from :func:`build_ngram_vocabs`; only the first ``caps[k]`` are used.
            caps: the most tokens kept per vocabulary.
            oov_buckets: 0 drops out-of-vocab tokens; > 0 hashes them into that many extra ids per
                vocabulary.

        Raises:
            TypeError: a vocab is not a sequence of str.
            ValueError: a repeated token, a trigram that is not 3 code points, bad ``caps`` or
                ``oov_buckets`` (the message names the argument).
        """
        caps = _check_caps(tuple(caps) if isinstance(caps, list) else caps)
        check_int("oov_buckets", oov_buckets, 0)
        names = ("char_trigram_vocab", "unigram_vocab", "bigram_vocab")
        vocabs = [_token_list(v, name)[:cap] for v, name, cap in zip((char_trigram_vocab, unigram_vocab, bigram_vocab),
                                                                     names, caps)]
        self._vocabs = vocabs
        self._caps = caps
        self._impl = _C.NGramFeaturizer(*vocabs, oov_buckets)

    @classmethod
    def from_vocabs(cls, vocabs: NGramVocabs, **kwargs: Any) -> NGramFeaturizer:
        """A featuriser over ``vocabs`` (keyword arguments as for the constructor)."""
        return cls(vocabs.char_trigram, vocabs.unigram, vocabs.bigram, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> NGramFeaturizer:
        """A featuriser over the vocabularies saved at ``path`` (see :meth:`NGramVocabs.save`)."""
        return cls.from_vocabs(NGramVocabs.load(path), **kwargs)

    # ---- featurising ----------------------------------------------------------------------------
    def featurize(
        self,
        texts: Sequence[str | bytes] | Sequence[Sequence[str | bytes]],
        num_threads: int = 0,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """``{"input_ids": (N,), "offsets": (bags,)}`` int64: the input of ``nn.EmbeddingBag``.

        Args:
            texts: B str/UTF-8-bytes items (B bags), or B rows of F fields each (B * F bags; bag
                ``row * F + field``; all rows must have the same F >= 1).
            num_threads: threads to use, 0 = all cores; the result is the same for any value.
            return_tensors: None/``"np"`` for numpy arrays, ``"pt"`` for torch tensors.

        Raises:
            TypeError: ``texts`` is a single str/bytes, or an item/field has another type.
            ValueError: invalid UTF-8 (naming ``texts[i]`` or ``texts[row][field]``), rows of different
                lengths, bad ``num_threads``/``return_tensors``.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a list of str/bytes or of field lists, not a single " + type(texts).__name__)
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")
        num_threads = _check_num_threads(num_threads)
        items = texts if isinstance(texts, list) else list(texts)
        num_fields = 0
        if items and isinstance(items[0], (list, tuple)):
            num_fields = len(items[0])
            if num_fields == 0:
                raise ValueError("texts[0] must hold at least one field, got an empty row")
            flat = []
            for i, row in enumerate(items):
                if not isinstance(row, (list, tuple)) or len(row) != num_fields:
                    got = f"{len(row)} fields" if isinstance(row, (list, tuple)) else type(row).__name__
                    raise ValueError(f"texts[{i}] must be a row of {num_fields} fields like texts[0], got {got}")
                flat.extend(row)
            items = flat
        input_ids, offsets = self._impl.featurize_batch(items, num_fields, num_threads)
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.from_numpy(input_ids), "offsets": torch.from_numpy(offsets)}
        return {"input_ids": input_ids, "offsets": offsets}

    def __call__(self, texts: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
        """Same as :meth:`featurize`."""
        return self.featurize(texts, **kwargs)

    def ids(self, text: str | bytes) -> np.ndarray:
        """int64 (N,): the ids of one text."""
        _check_text(text)
        return self._impl.featurize(text)

    # ---- inspection -----------------------------------------------------------------------------
    @staticmethod
    def normalize(text: str | bytes) -> str:
        """NFKC_Casefold of ``text`` (Unicode 17.0)."""
        _check_text(text)
        return _C.ngram_normalize(text)

    @staticmethod
    def char_trigrams(text: str | bytes) -> list[str]:
        """The char trigrams of the normalised text, in order (``"a b"`` -> ``["#a#", "a#b", "#b#"]``)."""
        _check_text(text)
        return _C.ngram_char_trigrams(text)

    @staticmethod
    def word_ngrams(text: str | bytes, n: int) -> list[str]:
        """The word n-grams (``n`` >= 1 consecutive words joined by ``#``) of the normalised text."""
        _check_text(text)
        check_int("n", n, 1)
        return _C.ngram_word_ngrams(text, n)

    @property
    def vocab_size(self) -> int:
        """Total id count (max id + 1): the ``num_embeddings`` an ``nn.EmbeddingBag`` needs."""
        return self._impl.vocab_size

    @property
    def id_ranges(self) -> dict[str, tuple[int, int]]:
        """kind -> [start, stop) of its ids; ``start`` itself is reserved (never emitted)."""
        return {kind: (self._impl.base(k), self._impl.base(k + 1)) for k, kind in enumerate(KINDS)}

    @property
    def oov_buckets(self) -> int:
        return self._impl.oov_buckets

    def __len__(self) -> int:
        return self.vocab_size

    def __getstate__(self) -> dict[str, Any]:
        # JSON-able: the (capped) vocabs and the options.
        return {"vocabs": [list(v) for v in self._vocabs], "caps": list(self._caps), "oov_buckets": self.oov_buckets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["vocabs"], caps=tuple(state["caps"]), oov_buckets=state["oov_buckets"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{kind}={len(v)}" for kind, v in zip(KINDS, self._vocabs))
        return f"NGramFeaturizer({sizes}, oov_buckets={self.oov_buckets}, vocab_size={self.vocab_size})"
