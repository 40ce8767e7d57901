"""The n-gram featuriser: spec examples, NFKC_Casefold on every code point, hypothesis against the
plain-Python reference, ids/offsets layout, big inputs, threads, vocab files and bad inputs."""

from __future__ import annotations

import collections
import json
import pickle
import unicodedata

import numpy as np
import pytest
import torch
from conftest import HealthCheck, given, settings, st

from omnikern import _C
from omnikern.text import NGramFeaturizer, NGramVocabs, build_ngram_vocabs
from omnikern.text.reference import (
    char_trigrams_ref,
    is_default_ignorable_ref,
    nfkc_casefold_ref,
    ngram_featurize_ref,
    word_ngrams_ref,
)

SPEC_TRIGRAMS = "#ar art rti tis ist sti tic ic# c#i #ip iph pho hon one ne# e#6 #6s 6s# s#c #ca cas ase se#".split()


# Known differences from Python 3.11's unicodedata (Unicode 14.0), listed explicitly:
# NFKC_Casefold (ours: Unicode 17.0) differs only on code points Python does not know yet, the
# case pairs and compatibility characters added in 15.0-17.0 ...
KNOWN_NFKC_CF_DIFFERENCES_PY14 = (0x1C89, (0xA7CB, 0xA7CC), 0xA7CE, 0xA7D2, 0xA7D4, 0xA7DA, 0xA7DC, 0xA7F1,
                                  (0x10D50, 0x10D65), (0x16EA0, 0x16EB8), (0x1CCD6, 0x1CCF9), (0x1E030, 0x1E06D))
# ... and punctuation (ours: the WordPiece set, Unicode 8.0 P*) differs on the 104 P* characters
# added in 9.0-14.0, and on U+166D and U+111C9, which were Po in 8.0 and are So / Mn now.
KNOWN_PUNCTUATION_DIFFERENCES_PY14 = (
    0x061D, 0x09FD, 0x0A76, 0x0C77, 0x0C84, 0x166D, (0x1B7D, 0x1B7E), (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), 0x10EAD,
    (0x10F55, 0x10F59), (0x10F86, 0x10F89), 0x111C9, (0x1144B, 0x1144F), (0x1145A, 0x1145B), 0x1145D,
    (0x11660, 0x1166C), 0x116B9, 0x1183B, (0x11944, 0x11946), 0x119E2, (0x11A3F, 0x11A46), (0x11A9A, 0x11A9C),
    (0x11A9E, 0x11AA2), (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11EF7, 0x11EF8), 0x11FFF, (0x12FF1, 0x12FF2),
    (0x16E97, 0x16E9A), 0x16FE2, (0x1E95E, 0x1E95F))


def _expand(items) -> set[str]:
    out = set()
    for item in items:
        first, last = item if isinstance(item, tuple) else (item, item)
        out.update(chr(cp) for cp in range(first, last + 1))
    return out


def _every_code_point():
    return (chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


@pytest.fixture(scope="module")
def python_disagrees() -> frozenset[str]:
    """Code points whose n-gram treatment differs between Python's unicodedata (the reference) and
    the C++ tables: assigned after Python's version (their combining classes differ too),
    NFKC_Casefold (17.0 vs Python's version) or punctuation (8.0 P* vs Python's P*)."""
    out = set()
    for ch in _every_code_point():
        if unicodedata.category(ch) == "Cn" and _C.unicode_category(ord(ch)) != "Cn":
            out.add(ch)
        elif _C.ngram_normalize(ch) != nfkc_casefold_ref(ch):
            out.add(ch)
        elif (unicodedata.category(ch)[0] == "P") != _C.unicode_category(ord(ch), "8.0").startswith("P"):
            out.add(ch)
    return frozenset(out)


# ---- spec examples ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("a", ["#a#"]),
        ("a b", ["#a#", "a#b", "#b#"]),
        ("a#", ["#a#"]),  # the final '#' is not doubled after a pushed '#'
        ("", []),
        ("   \t\n", []),
        ("  a  ", ["#a#"]),  # leading whitespace ignored, runs collapse
        ("artistic iphone 6s case", SPEC_TRIGRAMS),
        ("Artistic  IPHONE\u00a06s\u3000case ", SPEC_TRIGRAMS),  # case folded, NBSP/ideographic space
        ("b,c", ["#b,", "b,c", ",c#"]),  # punctuation kept
        ("\U0001F600\U0001F600", ["#\U0001F600\U0001F600", "\U0001F600\U0001F600#"]),  # one astral = one char
    ],
)
def test_char_trigrams_spec(text, expected):
    assert NGramFeaturizer.char_trigrams(text) == expected
    assert char_trigrams_ref(text) == expected


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("hello, world", 2, ["hello#world"]),  # the window crosses punctuation
        ("hello, world", 1, ["hello", "world"]),
        ("Ab\u4e2d\u6587cd", 1, ["ab", "\u4e2d", "\u6587", "cd"]),  # CJK ideographs are their own words
        ("x\U0002B820y", 1, ["x", "\U0002B820", "y"]),  # BERT's range 2B820.. (HF starts at 2B920)
        ("a-b c", 2, ["a#b", "b#c"]),
        ("a b c d", 3, ["a#b#c", "b#c#d"]),
        ("one", 2, []),
        ("", 1, []),
    ],
)
def test_word_ngrams_spec(text, n, expected):
    assert NGramFeaturizer.word_ngrams(text, n) == expected
    assert word_ngrams_ref(text, n) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\u2122", "tm"),  # NFKC gives TM, then folding
        ("Stra\u00dfe \u1e9e", "strasse ss"),
        ("a\u00adb\u200bc\ufe0fd", "abcd"),  # default ignorables removed
        ("\uff21\u2460\u00bd", "a11\u20442"),
        ("e\u0301", "\u00e9"),  # NFC at the end
        ("\u0130", "i\u0307"),
        ("\u1e9b\u0323", "\u1e69"),
        ("\u03a3\u0391\u03a3", "\u03c3\u03b1\u03c3"),  # no final-sigma context
        ("\u0600\ufff9", "\u0600\ufff9"),  # prepended concatenation mark and FFF9 are not ignorable
    ],
)
def test_normalize_examples(text, expected):
    assert NGramFeaturizer.normalize(text) == expected
    assert nfkc_casefold_ref(text) == expected


def test_python_nfkc_of_casefold_is_not_nfkc_casefold():
    """Known differences from Python's ``NFKC(s.casefold())``: folding must also follow NFKC, and
    default ignorables go."""
    for text, ours in (("\u2122", "tm"), ("x\u00ady", "xy"), ("\u2460A\u200d", "1a")):
        assert NGramFeaturizer.normalize(text) == ours
        assert unicodedata.normalize("NFKC", text.casefold()) != ours


def test_nfkc_casefold_every_code_point(python_disagrees):
    """Every code point vs the unicodedata reference. Python 3.11's unicodedata is Unicode 14.0 and
    ours is 17.0: the only disagreements are code points unassigned in Python's version (characters
    added in 15.0-17.0), plus ~100 punctuation differences (P* of 8.0 vs Python's version)."""
    norm_diff = [ch for ch in _every_code_point() if _C.ngram_normalize(ch) != nfkc_casefold_ref(ch)]
    assert all(unicodedata.category(ch) == "Cn" for ch in norm_diff), [hex(ord(c)) for c in norm_diff
                                                                        if unicodedata.category(c) != "Cn"]
    if unicodedata.unidata_version == "14.0.0":
        assert set(norm_diff) == _expand(KNOWN_NFKC_CF_DIFFERENCES_PY14)
    # Neighbours interact (marks compose with the mapping before them): one long string too.
    text = "".join(chr(cp) for cp in range(0x20, 0x3400) if chr(cp) not in python_disagrees)
    assert NGramFeaturizer.normalize(text) == nfkc_casefold_ref(text)
    newer = {ch for ch in python_disagrees if unicodedata.category(ch) == "Cn"}
    assert set(norm_diff) <= newer
    punct_diff = python_disagrees - newer
    if unicodedata.unidata_version == "14.0.0":
        assert punct_diff == _expand(KNOWN_PUNCTUATION_DIFFERENCES_PY14)


def test_default_ignorable_reference_counts():
    """Default_Ignorable_Code_Point has 4,174 code points since Unicode 14 (DerivedCoreProperties)."""
    dropped = [ch for ch in _every_code_point() if is_default_ignorable_ref(ch)]
    assert len(dropped) == 4174
    assert NGramFeaturizer.normalize("".join(dropped)) == ""


# ---- hypothesis: C++ vs the plain-Python reference ----------------------------------------------
_POOL = (
    "abcxyzABCXYZ0189 \t\n\r\x0b\x0c\x85\u00a0\u2003\u3000\u2028"  # whitespace and near-whitespace
    "#,.!?-_'\"()[]{}$+<=>^`|~@\u00bf\u2014\u3001\u300c\u00a7\u20ac\uff04"  # punctuation and symbols
    "\u00e9\u00c9e\u0301\u0323\u0345\u00df\u1e9e\u0130\u03a3\u03c2\u0391\u2122\ufb03\u00bd\u2460\uff21\u1e9b"
    "\u00ad\u200b\u200d\ufe0f\U000E0001\u0600\ufff9"  # default ignorables and exceptions
    "\u4e2d\u6587\u3400\uf900\U00020000\U0002B820\U0002B920\u3007\u30ab\u3099\uac00\u1100\u1161"  # CJK, kana, Hangul
    "\U0001F600\U0001F44D\U0001F3FD\U0001D400\U00010400"  # astral: emoji, maths bold, Deseret
    "\u0928\u093f\u0627\u0644\u05d0\u0410\u0436"
)


def _texts(disagree):
    alphabet = st.sampled_from(_POOL) | st.characters(exclude_categories=("Cs",))
    return st.text(alphabet=alphabet.filter(lambda c: c not in disagree), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tokenizers_match_reference(python_disagrees, data):
    text = data.draw(_texts(python_disagrees))
    assert NGramFeaturizer.normalize(text) == nfkc_casefold_ref(text)
    assert NGramFeaturizer.char_trigrams(text) == char_trigrams_ref(text)
    for n in (1, 2, 3):
        assert NGramFeaturizer.word_ngrams(text, n) == word_ngrams_ref(text, n)
    # Bytes input is the same text.
    assert NGramFeaturizer.char_trigrams(text.encode("utf-8")) == char_trigrams_ref(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), oov_buckets=st.sampled_from([0, 1, 7]))
def test_featurize_matches_reference(python_disagrees, data, oov_buckets):
    texts = data.draw(st.lists(_texts(python_disagrees), max_size=12))
    vocab_texts = data.draw(st.lists(_texts(python_disagrees), max_size=12))
    vocabs = build_ngram_vocabs(vocab_texts + texts[: len(texts) // 2])
    f = NGramFeaturizer.from_vocabs(vocabs, oov_buckets=oov_buckets)
    out = f(texts, num_threads=2)
    ids, offsets = ngram_featurize_ref(texts, (vocabs.char_trigram, vocabs.unigram, vocabs.bigram), oov_buckets)
    assert out["input_ids"].dtype == np.int64 and out["offsets"].dtype == np.int64
    assert out["input_ids"].tolist() == ids
    assert out["offsets"].tolist() == offsets


# ---- ids, offsets and layout ----------------------------------------------------------------------
def test_id_layout_and_caps():
    f = NGramFeaturizer(["#a#", "a#b", "#b#", "#c#"], ["b", "a", "c"], ["a#b", "b#c"], caps=(3, 2, 5))
    # trigrams [0, 4), unigrams [4, 7), bigrams [7, 10): 0 reserved in each range.
    assert f.id_ranges == {"char_trigram": (0, 4), "unigram": (4, 7), "bigram": (7, 10)}
    assert f.vocab_size == len(f) == 10
    out = f(["A b c", "", "a"])
    # "a b c": #a# a#b #b# (b#c, #c# capped out) | a b (c capped out) | a#b b#c
    assert out["input_ids"].tolist() == [1, 2, 3, 6, 5, 8, 9, 1, 6]
    assert out["offsets"].tolist() == [0, 7, 7]
    starts = {0, 4, 7}
    assert not starts & set(out["input_ids"].tolist())


def test_oov_buckets_hash_into_their_own_range():
    f = NGramFeaturizer(["#a#"], ["a"], [], oov_buckets=5)
    assert f.id_ranges == {"char_trigram": (0, 7), "unigram": (7, 14), "bigram": (14, 20)}
    ids = f.ids("zz yy").tolist()  # 5 trigrams, 2 unigrams, 1 bigram, all out of vocab
    assert len(ids) == 8
    assert all(2 <= i < 7 for i in ids[:5]) and all(9 <= i < 14 for i in ids[5:7]) and 16 <= ids[7] < 20
    assert f.ids("zz yy").tolist() == ids


def test_multi_field_batch_is_row_major_bags():
    vocabs = build_ngram_vocabs(["red shoe", "blue shoe", "shoe rack"])
    f = NGramFeaturizer.from_vocabs(vocabs)
    rows = [["red shoe", "blue"], ["", "shoe rack"], ["x", "red"]]
    out = f(rows)
    flat = f([t for row in rows for t in row])
    assert out["offsets"].shape == (6,)
    np.testing.assert_array_equal(out["input_ids"], flat["input_ids"])
    np.testing.assert_array_equal(out["offsets"], flat["offsets"])
    pt = f(rows, return_tensors="pt")
    assert pt["input_ids"].dtype == torch.int64 and pt["offsets"].dtype == torch.int64
    bag = torch.nn.EmbeddingBag(f.vocab_size, 4, mode="sum")
    assert bag(pt["input_ids"], pt["offsets"]).view(3, 2, 4).shape == (3, 2, 4)


def test_astral_characters_are_not_duplicated():
    """The published C++ walked UTF-16 units and saw each astral code point twice."""
    text = "\U0001F600a\U00020000"
    assert NGramFeaturizer.char_trigrams(text) == ["#\U0001F600a", "\U0001F600a\U00020000", "a\U00020000#"]
    assert NGramFeaturizer.word_ngrams(text, 1) == ["\U0001F600a", "\U00020000"]


def test_invalid_utf8_raises_value_error_naming_the_item():
    f = NGramFeaturizer(["#a#"], ["a"], ["a#a"])
    with pytest.raises(ValueError, match=r"texts\[1\].*byte offset 1"):
        f([b"ok", b"a\xff"])
    with pytest.raises(ValueError, match=r"texts\[1\]\[0\].*byte offset 0"):
        f([["a", "b"], [b"\xc0\x80", "c"]])  # overlong NUL
    with pytest.raises(ValueError, match=r"byte offset 2"):
        NGramFeaturizer.char_trigrams(b"ab\xed\xa0\x80")  # encoded surrogate
    with pytest.raises(ValueError, match=r"corpus\[0\]"):
        build_ngram_vocabs([b"\xf5"])
    with pytest.raises(UnicodeEncodeError):  # a ValueError: lone surrogates cannot be UTF-8
        f(["\ud800"])


def test_nul_and_controls_are_ordinary_characters():
    assert NGramFeaturizer.char_trigrams("a\x00b") == ["#a\x00", "a\x00b", "\x00b#"]
    assert NGramFeaturizer.word_ngrams("a\x0bb c", 1) == ["a\x0bb", "c"]  # \v is not n-gram whitespace


# ---- big inputs and threads ---------------------------------------------------------------------
def _word_corpus(n, seed=0, words_per_text=5):
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "re", "su", "to", "\u00e9", "\u4e2d", "x", "Y", "\U0001F600", "-", ","]
    out = []
    for _ in range(n):
        words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(rng.integers(0, words_per_text))]
        out.append(" ".join(words))
    return out


def test_one_megabyte_string():
    text = " ".join(_word_corpus(40_000, seed=1, words_per_text=8))[:1_000_000]
    vocabs = build_ngram_vocabs([text])
    f = NGramFeaturizer.from_vocabs(vocabs, caps=(100_000, 100_000, 100_000), oov_buckets=3)
    ids = f.ids(text)
    expected = (len(f.char_trigrams(text)) + len(f.word_ngrams(text, 1)) + len(f.word_ngrams(text, 2)))
    assert ids.size == expected > 600_000
    head = text[:5_000]
    ref_ids, _ = ngram_featurize_ref([head], (vocabs.char_trigram, vocabs.unigram, vocabs.bigram), 3)
    assert f.ids(head).tolist() == ref_ids


def test_hundred_thousand_strings_and_thread_invariance():
    texts = _word_corpus(100_000, seed=2)
    vocabs = build_ngram_vocabs(texts[:20_000], caps=(500, 300, 200))
    f = NGramFeaturizer.from_vocabs(vocabs, oov_buckets=11)
    one = f(texts, num_threads=1)
    assert one["offsets"].shape == (100_000,)
    assert np.all(np.diff(one["offsets"]) >= 0) and one["input_ids"].max() < f.vocab_size
    for threads in (2, 3, 8):
        many = f(texts, num_threads=threads)
        np.testing.assert_array_equal(many["input_ids"], one["input_ids"])
        np.testing.assert_array_equal(many["offsets"], one["offsets"])
    ref_ids, ref_offsets = ngram_featurize_ref(texts[:300], (vocabs.char_trigram, vocabs.unigram, vocabs.bigram), 11)
    assert one["input_ids"][: len(ref_ids)].tolist() == ref_ids
    assert one["offsets"][:300].tolist() == ref_offsets


def test_shared_featurizer_from_python_threads():
    import concurrent.futures

    texts = _word_corpus(2_000, seed=3)
    f = NGramFeaturizer.from_vocabs(build_ngram_vocabs(texts))
    expected = f(texts, num_threads=1)["input_ids"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: f(texts, num_threads=2)["input_ids"], range(8)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


# ---- vocabularies -------------------------------------------------------------------------------
def test_build_vocabs_counts_ranks_and_caps():
    corpus = ["b a", "a c", "A, b", "z"]
    v = build_ngram_vocabs(corpus)
    counts = collections.Counter(u for t in corpus for u in word_ngrams_ref(t, 1))
    assert v.unigram == ["a", "b", "c", "z"]  # a:3, then b:2, then c and z tied at 1: code point order
    assert v.counts["unigram"] == [counts[u] for u in v.unigram]
    assert v.bigram == ["a#b", "a#c", "b#a"]
    tri = collections.Counter(g for t in corpus for g in char_trigrams_ref(t))
    assert v.char_trigram == sorted(tri, key=lambda g: (-tri[g], g))
    capped = build_ngram_vocabs(corpus, caps=(2, 1, 0), min_count=1)
    assert (capped.char_trigram, capped.unigram, capped.bigram) == (v.char_trigram[:2], ["a"], [])
    assert build_ngram_vocabs(corpus, min_count=2).unigram == ["a", "b"]
    texts = _word_corpus(3_000, seed=4)
    assert build_ngram_vocabs(texts, num_threads=1) == build_ngram_vocabs(texts, num_threads=3)


def test_vocab_save_load_round_trip(tmp_path):
    v = build_ngram_vocabs(_word_corpus(500, seed=5) + ["\u2122 \U0001F600"])
    path = tmp_path / "vocabs.json"
    v.save(path)
    assert NGramVocabs.load(path) == v
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "omnikern.ngram_vocabs" and doc["unicode_version"] == "17.0.0"
    assert [p.name for p in tmp_path.iterdir()] == ["vocabs.json"]  # no temp file left behind
    texts = _word_corpus(50, seed=6)
    np.testing.assert_array_equal(NGramFeaturizer.load(path)(texts)["input_ids"],
                                  NGramFeaturizer.from_vocabs(v)(texts)["input_ids"])


def test_pickle_round_trip_with_json_state():
    f = NGramFeaturizer.from_vocabs(build_ngram_vocabs(["a b", "b c"]), caps=(3, 2, 1), oov_buckets=2)
    state = f.__getstate__()
    assert json.loads(json.dumps(state)) == state
    g = pickle.loads(pickle.dumps(f))
    assert g.vocab_size == f.vocab_size and repr(g) == repr(f)
    np.testing.assert_array_equal(g(["a b c d"])["input_ids"], f(["a b c d"])["input_ids"])


# ---- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="caps"):
        NGramFeaturizer([], [], [], caps=(1, 2))
    with pytest.raises(ValueError, match="caps"):
        NGramFeaturizer([], [], [], caps=(1, -2, 3))
    with pytest.raises(ValueError, match="oov_buckets"):
        NGramFeaturizer([], [], [], oov_buckets=-1)
    with pytest.raises(ValueError, match="char_trigram_vocab"):
        NGramFeaturizer(["ab"], [], [])
    with pytest.raises(ValueError, match="unigram_vocab repeats 'x'"):
        NGramFeaturizer([], ["x", "y", "x"], [])
    with pytest.raises(TypeError, match="bigram_vocab"):
        NGramFeaturizer([], [], "a#b")
    with pytest.raises(TypeError, match=r"unigram_vocab\[1\]"):
        NGramFeaturizer([], ["a", 3], [])
    f = NGramFeaturizer(["#a#"], ["a"], [])
    with pytest.raises(TypeError, match="texts"):
        f("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        f(["a", 3])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        f([["a", "b"], ["c"]])
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        f([[]])
    with pytest.raises(ValueError, match="num_threads"):
        f(["a"], num_threads=-1)
    with pytest.raises(ValueError, match="return_tensors"):
        f(["a"], return_tensors="tf")
    with pytest.raises(ValueError, match="n must"):
        f.word_ngrams("a", 0)
    with pytest.raises(TypeError, match="text"):
        f.char_trigrams(5)
    with pytest.raises(ValueError, match="min_count"):
        build_ngram_vocabs(["a"], min_count=0)
    with pytest.raises(TypeError, match="corpus"):
        build_ngram_vocabs("abc")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="path"):
        NGramVocabs.load(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="path"):
        NGramVocabs.load(bad)
    assert f([])["input_ids"].shape == (0,) and f([])["offsets"].shape == (0,)
