"""The n-gram featuriser on texts drawn by hypothesis, against the plain-Python reference.

A module of its own so that the other n-gram tests run where hypothesis (the ``test`` extra) is not
installed, as on the GPU machine's image.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis (the `test` extra) draws the inputs")
from helpers import ngram_python_disagrees  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omnikern.text import NGramFeaturizer, build_ngram_vocabs  # noqa: E402
from omnikern.text.reference import (  # noqa: E402
    char_trigrams_ref,
    ngram_featurize_ref,
    nfkc_casefold_ref,
    word_ngrams_ref,
)


@pytest.fixture(scope="module")
def python_disagrees() -> frozenset[str]:
    """Code points where Python's unicodedata and the C++ tables disagree (see helpers)."""
    return ngram_python_disagrees()


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
