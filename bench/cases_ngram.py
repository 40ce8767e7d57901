"""Benchmark cases for the hashed n-gram featuriser: omnikern (C++) vs the plain-Python reference.

Workload: a synthetic catalogue whose words follow a Zipf law over a 30,000-word lexicon of
pseudo-words (with capitals, digits, punctuation, a few accented words and the odd CJK/emoji), so
vocabulary lookups hit a realistic mix of hot and cold tokens. Vocabularies are built from that
catalogue with the default caps (64,000 / 200,000 / 1,000,000). Timed: ``featurize`` of short
queries (~25 characters) and item texts (~700 characters) into ``input_ids`` + ``offsets``, on 1
thread and on all threads; the reference (``omnikern.text.reference.ngram_featurize_ref``) runs on
one thread only. Both sides give identical ids (checked here before timing). Rows carry
``strings``: strings/s = strings / (ms_median / 1e3).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
from harness import Case


def _lexicon(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "st", "ch"]
    syllables = [o + v for o in onsets for v in ("a", "e", "i", "o", "u", "y", "ou", "ai")]
    words = {"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(size * 2)}
    words = sorted(words)[:size]
    rng.shuffle(words)
    return words + ["café", "naïve", "Zürich", "crème", "brûlée", "iPhone", "6s", "XL", "2024", "中文", "😀"]


def _texts(lexicon: list[str], count: int, chars: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    # Zipf: the word of rank r is drawn with probability ~ 1 / r.
    cum_weights = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(lexicon))))
    seps = [" "] * 8 + [", ", ". ", "-", " / "]
    out = []
    for _ in range(count):
        pieces, length = [], 0
        for word in rng.choices(lexicon, cum_weights=cum_weights, k=chars // 3 + 2):
            piece = (word.capitalize() if rng.random() < 0.1 else word) + rng.choice(seps)
            pieces.append(piece)
            length += len(piece)
            if length >= chars:
                break
        out.append("".join(pieces)[:chars].strip())
    return out


def cases(device: str, quick: bool) -> list[Case]:
    from omnikern.text import NGramFeaturizer, build_ngram_vocabs
    from omnikern.text.reference import ngram_featurize_ref

    lexicon = _lexicon(30_000, seed=0)
    catalogue = _texts(lexicon, 3_000 if quick else 30_000, 700, seed=1)
    vocabs = build_ngram_vocabs(catalogue + _texts(lexicon, 20_000 if quick else 200_000, 25, seed=2))
    featurizer = NGramFeaturizer.from_vocabs(vocabs)
    lists = (vocabs.char_trigram, vocabs.unigram, vocabs.bigram)
    # The reference takes ~0.25 ms per short string and ~6 ms per item text: sizes stay modest so
    # that both providers time the same batch (the harness divides their times).
    n_short, n_item = (2_000, 200) if quick else (20_000, 2_000)
    workloads = [("short 25ch", _texts(lexicon, n_short, 25, seed=3)),
                 ("item 700ch", _texts(lexicon, n_item, 700, seed=4))]
    out: list[Case] = []
    for size, texts in workloads:
        # Same ids, or the timing means nothing.
        ids, offsets = ngram_featurize_ref(texts[:100], lists)
        got = featurizer(texts[:100])
        np.testing.assert_array_equal(got["input_ids"], ids)
        np.testing.assert_array_equal(got["offsets"], offsets)
        for mode, threads in (("1-thread", 1), ("all-threads", 0)):
            out.append(Case("ngram", "omnikern", mode, size,
                            lambda t=texts, n=threads: featurizer(t, num_threads=n), extra={"strings": len(texts)}))
        out.append(Case("ngram", "reference", "1-thread", size, lambda t=texts: ngram_featurize_ref(t, lists),
                        extra={"strings": len(texts)}))
    return out
