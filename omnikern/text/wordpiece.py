"""BERT WordPiece tokenizer over the C++ extension, with ids identical to HF ``tokenizers``.

The pipeline (docs/text.md, "Query tokenizer") runs in C++: special tokens are cut out
of the raw text, then clean -> CJK padding -> strip accents (NFD, drop Mn) -> lowercase ->
whitespace/punctuation split -> greedy longest-match WordPiece with ``##`` continuations -> ``[CLS]
... [SEP]`` truncated to ``max_length``. Unicode data: categories and NFD from Unicode 8.0, lowercase
from Unicode 17.0, the versions HF ``tokenizers`` 0.23 uses (see ``csrc/unicode/gen_tables.py``).

Batch calls release the GIL and split the batch over ``num_threads`` threads; the result does not
depend on the thread count. The object is picklable, and :meth:`WordPieceTokenizer.save` / :meth:`WordPieceTokenizer.load`
write and read the same state (the vocab and the options) as one JSON file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from omnikern import _C
from omnikern._atomic import write_text_atomic
from omnikern._checks import check_int

# Optional pre-normalisation steps, in the order they run.
PRE_NORMALIZATION_STEPS = ("nfkc", "lowercase", "collapse_whitespace", "trim")
_DEFAULT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# HF's WordPiece decoder (cleanup=True) runs these replacements, in this order, on each token.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _read_vocab_txt(path: str | os.PathLike) -> list[str]:
    # newline="": only \n ends a line (as in HF); trailing whitespace of each line is stripped.
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.rstrip() for line in lines]


class WordPieceTokenizer:
    """BERT WordPiece: ``encode(text) -> list[int]``, ``encode_batch(texts) -> {"input_ids", "attention_mask"}``.

    Build it with :meth:`from_vocab` (a ``vocab.txt``) or :meth:`from_tokenizer_json` (a HF
    ``tokenizer.json`` with a WordPiece model and a BertNormalizer).
    """

    def __init__(
        self,
        vocab: Sequence[tuple[str, int]],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        max_length: int | None = 64,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        special_tokens: Sequence[str] | None = None,
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        add_special_tokens: bool = True,
        normalization: Sequence[str] = (),
    ):
        """Args:
            vocab: (token, id) pairs; a later duplicate token wins (as in HF).
            lowercase: lowercase every code point (full mappings, no context).
            strip_accents: NFD then drop Mn; None follows ``lowercase`` (BERT's rule).
            clean_text: drop NUL, U+FFFD, Cc/Cf/Co (not \\t\\n\\r) and map White_Space to a space.
            handle_chinese_chars: put spaces around CJK ideographs.
            max_length: total length with [CLS] and [SEP]; None = no truncation; else >= 2.
            special_tokens: literal strings cut out of the raw text and emitted as their ids; None =
                those of [PAD] [UNK] [CLS] [SEP] [MASK] that are in the vocab.
            max_input_chars_per_word: longer words (in code points, after normalisation) are [UNK].
            normalization: optional pre-normalisation of the raw text, any of ``"nfkc"``,
                ``"lowercase"``, ``"collapse_whitespace"``, ``"trim"``; they run in that order
                (whatever order is given), before special tokens and the BERT normaliser.

        Raises:
            ValueError: a token the options name is not in ``vocab``, or an option is out of range.
        """
        vocab = [(str(t), int(i)) for t, i in vocab]
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"max_length must be None or an int >= 2, got {max_length!r}")
        if max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be >= 1, got {max_input_chars_per_word!r}")
        if isinstance(normalization, str):
            normalization = (normalization,)
        unknown = sorted(set(normalization) - set(PRE_NORMALIZATION_STEPS))
        if unknown:
            raise ValueError(f"normalization steps must be among {PRE_NORMALIZATION_STEPS}, got {unknown}")
        normalization = [step for step in PRE_NORMALIZATION_STEPS if step in normalization]
        if special_tokens is None:
            present = {t for t, _ in vocab}
            special_tokens = [t for t in _DEFAULT_SPECIALS if t in present]
        self._options: dict[str, Any] = {
            "lowercase": bool(lowercase),
            "strip_accents": None if strip_accents is None else bool(strip_accents),
            "clean_text": bool(clean_text),
            "handle_chinese_chars": bool(handle_chinese_chars),
            "max_length": max_length,
            "unk_token": unk_token,
            "cls_token": cls_token,
            "sep_token": sep_token,
            "pad_token": pad_token,
            "special_tokens": list(special_tokens),
            "continuing_subword_prefix": continuing_subword_prefix,
            "max_input_chars_per_word": int(max_input_chars_per_word),
            "add_special_tokens": bool(add_special_tokens),
            "normalization": normalization,
        }
        self._vocab = vocab
        o = self._options
        try:
            self._impl = _C.WordPieceTokenizer(
                vocab,
                clean_text=o["clean_text"],
                handle_chinese_chars=o["handle_chinese_chars"],
                strip_accents=o["lowercase"] if o["strip_accents"] is None else o["strip_accents"],
                lowercase=o["lowercase"],
                unk_token=unk_token,
                continuing_subword_prefix=continuing_subword_prefix,
                max_input_chars_per_word=o["max_input_chars_per_word"],
                cls_token=cls_token,
                sep_token=sep_token,
                pad_token=pad_token,
                special_tokens=o["special_tokens"],
                max_length=0 if max_length is None else max_length,
                add_special_tokens=o["add_special_tokens"],
                pre_normalization=normalization,
            )
        except ValueError as e:
            raise ValueError(f"vocab: {e}") from None
        self._id_to_token: dict[int, str] = {}
        for token, i in vocab:
            self._id_to_token[i] = token
        self._special_ids = {self._impl.token_id(t) for t in o["special_tokens"]} | {
            self._impl.token_id(t) for t in (cls_token, sep_token, pad_token, unk_token)
        }
        self._special_ids.discard(-1)

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_vocab(
        cls,
        path: str | os.PathLike,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        max_length: int | None = 64,
        **options: Any,
    ) -> WordPieceTokenizer:
        """A tokenizer from a BERT ``vocab.txt`` (one token a line, the line number is its id).

        Raises:
            ValueError: the file is empty or lacks [UNK]/[CLS]/[SEP]/[PAD].
        """
        tokens = _read_vocab_txt(path)
        if not tokens:
            raise ValueError(f"path: vocab file {os.fspath(path)!r} holds no tokens")
        return cls(list(zip(tokens, range(len(tokens)))), lowercase=lowercase, strip_accents=strip_accents,
                   max_length=max_length, **options)

    @classmethod
    def from_tokenizer_json(
        cls, path: str | os.PathLike, max_length: int | None = 64, normalization: Sequence[str] = ()
    ) -> WordPieceTokenizer:
        """A tokenizer from a HF ``tokenizer.json`` with a WordPiece model and a BertNormalizer.

        The file's own truncation/padding settings are ignored: ``max_length`` applies, and batches
        are padded to their longest row.

        Raises:
            ValueError: the model is not WordPiece, the normaliser is not BertNormalizer (or absent),
                or an added token is matched on normalised text (not supported).
        """
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        model = spec.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(f"path: expected a WordPiece model in {os.fspath(path)!r}, got {model.get('type')!r}")
        norm = spec.get("normalizer")
        if norm is not None and norm.get("type") != "BertNormalizer":
            raise ValueError(f"path: expected a BertNormalizer in {os.fspath(path)!r}, got {norm.get('type')!r}")
        norm = norm or {"clean_text": False, "handle_chinese_chars": False, "strip_accents": False, "lowercase": False}
        specials = []
        for added in spec.get("added_tokens", []):
            if added.get("normalized", False) or added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
                raise ValueError(f"path: added token {added.get('content')!r} needs normalized/lstrip/rstrip/"
                                 "single_word matching, which is not supported")
            specials.append(added["content"])
        post = spec.get("post_processor") or {}
        cls_token, sep_token = "[CLS]", "[SEP]"
        if post.get("type") == "BertProcessing":
            cls_token, sep_token = post["cls"][0], post["sep"][0]
        elif post.get("type") == "TemplateProcessing":
            pieces = [p["SpecialToken"]["id"] for p in post.get("single", []) if "SpecialToken" in p]
            if len(pieces) == 2:
                cls_token, sep_token = pieces
        vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        pad_token = (spec.get("padding") or {}).get("pad_token", "[PAD]")
        return cls(
            vocab,
            lowercase=bool(norm.get("lowercase", True)),
            strip_accents=norm.get("strip_accents"),
            clean_text=bool(norm.get("clean_text", True)),
            handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
            max_length=max_length,
            unk_token=model.get("unk_token", "[UNK]"),
            cls_token=cls_token,
            sep_token=sep_token,
            pad_token=pad_token,
            special_tokens=specials,
            continuing_subword_prefix=model.get("continuing_subword_prefix", "##"),
            max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
            normalization=normalization,
        )

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, text: str | bytes) -> list[int]:
        """Ids of one text: ``[CLS] tokens [SEP]``, at most ``max_length`` of them.

        Raises:
            TypeError: ``text`` is not str or bytes.
            ValueError: ``text`` is bytes that are not valid UTF-8 (the message names the byte
                offset), or a str with lone surrogates.
        """
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return self._impl.encode(text)

    def encode_batch(
        self, texts: Iterable[str | bytes], num_threads: int = 0, return_tensors: str | None = None
    ) -> dict[str, Any]:
        """``{"input_ids", "attention_mask"}``: int64 arrays (B, L), L the longest row, padded with [PAD] / 0.

        Args:
            texts: str or UTF-8 bytes items (not a single str).
            num_threads: threads to use, 0 = all cores; the result is the same for any value.
            return_tensors: None for numpy arrays, ``"pt"`` for torch tensors.

        Raises:
            TypeError: ``texts`` is a single str/bytes or holds other types.
            ValueError: an item is invalid UTF-8 (the message names ``texts[i]`` and the byte offset),
                ``num_threads`` < 0, or ``return_tensors`` is not None/"pt".
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be an iterable of str or bytes, not a single " + type(texts).__name__)
        check_int("num_threads", num_threads, 0)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")
        input_ids, attention_mask = self._impl.encode_batch(texts, num_threads)
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, texts: Iterable[str | bytes], **kwargs: Any) -> dict[str, Any]:
        """Same as :meth:`encode_batch`."""
        return self.encode_batch(texts, **kwargs)

    def tokenize(self, text: str | bytes) -> list[str]:
        """The token strings of :meth:`encode` (for inspection)."""
        return [self._id_to_token[i] for i in self.encode(text)]

    def normalize(self, text: str | bytes) -> str:
        """The BERT-normalised text (clean, CJK padding, accent stripping, lowercase; not the
        optional ``normalization`` steps, and before special tokens are cut out)."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return self._impl.normalize(text)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` as HF's WordPiece decoder writes it: tokens joined by spaces, ``##`` glued.

        Raises:
            ValueError: an id is not in the vocab.
        """
        tokens = []
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy / torch / any iterable
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i not in self._id_to_token:
                raise ValueError(f"ids: {i} is not a token id of this vocab")
            if skip_special_tokens and i in self._special_ids:
                continue
            tokens.append(self._id_to_token[i])
        # HF's WordPiece decoder works token by token: a continuation loses its prefix, any other
        # token after the first gets a leading space, then the cleanup replacements run on that
        # one token (so only single-token patterns such as " ." can ever match).
        prefix = self._options["continuing_subword_prefix"]
        pieces = []
        for k, token in enumerate(tokens):
            if k:
                token = token.replace(prefix, "", 1) if token.startswith(prefix) else " " + token
            for a, b in _CLEANUPS:
                token = token.replace(a, b)
            pieces.append(token)
        return "".join(pieces)

    # ---- vocab and state ----------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None."""
        i = self._impl.token_id(token)
        return None if i < 0 else i

    def id_to_token(self, i: int) -> str | None:
        """Token of id ``i``, or None."""
        return self._id_to_token.get(int(i))

    @property
    def max_length(self) -> int | None:
        return self._options["max_length"]

    @property
    def pad_id(self) -> int:
        return self._impl.pad_id

    def __len__(self) -> int:
        """Vocab size (number of distinct ids)."""
        return len(self._id_to_token)

    def __getstate__(self) -> dict[str, Any]:
        # JSON-able: the vocab pairs and the constructor options.
        return {"vocab": [list(p) for p in self._vocab], "options": dict(self._options)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__([tuple(p) for p in state["vocab"]], **state["options"])

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer (vocab and options) to ``path`` as JSON, atomically."""
        write_text_atomic(path, json.dumps(self.__getstate__(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        """Reads a tokenizer written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``. ValueError: not a saved tokenizer (the message
                names the file).
        """
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
            vocab, options = state["vocab"], state["options"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"path: {os.fspath(path)!r} is not a saved WordPieceTokenizer ({error!r})") from None
        return cls([tuple(pair) for pair in vocab], **options)

    def __repr__(self) -> str:
        o = self._options
        return (f"WordPieceTokenizer(vocab_size={len(self)}, lowercase={o['lowercase']}, "
                f"strip_accents={o['strip_accents']}, max_length={o['max_length']})")
