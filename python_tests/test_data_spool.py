"""omnikern.data.spool: features featurised by a streamed pass into memory-mapped files equal the
in-memory EntityFeatures over the same rows, leave no files behind, and refuse bad blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnikern.data.batches import EntityFeatures
from omnikern.data.spool import spool_features
from omnikern.text import NGramFeaturizer, build_ngram_vocabs

WORDS = ["red", "wool", "scarf", "oak", "table", "lamp", "crème", "brûlée", "", "tea", "cup"]


def rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * n)[:n].astype(np.int64) - 5 * n  # negative ids too
    titles = [" ".join(rng.choice(WORDS, size=rng.integers(0, 6))) for _ in range(n)]  # some empty
    tags = [" ".join(rng.choice(WORDS, size=rng.integers(0, 3))) for _ in range(n)]
    dense = {"legacy": rng.standard_normal((n, 8)).astype(np.float32),
             "dense": rng.standard_normal((n, 2)).astype(np.float32)}
    return ids, {"title": titles, "tags": tags}, dense


def featuriser():
    vocabs = build_ngram_vocabs(WORDS * 3, caps=(50, 50, 50))
    return NGramFeaturizer.from_vocabs(vocabs).featurize


def blocks_of(ids, texts, dense, sizes):
    start = 0
    for size in sizes:
        sl = slice(start, start + size)
        yield ids[sl], {f: v[sl] for f, v in texts.items()}, {k: v[sl] for k, v in dense.items()}
        start += size


@pytest.mark.parametrize("sizes", [[37], [1, 10, 0, 26], [5] * 7 + [2]])
def test_spooled_equals_in_memory(tmp_path, sizes):
    ids, texts, dense = rows(sum(sizes), seed=len(sizes))
    featurise = featuriser()
    expected = EntityFeatures(ids, texts, featurise, dense)
    spooled = spool_features(blocks_of(ids, texts, dense, sizes), ["title", "tags"], featurise, tmp_path / "s")
    assert len(spooled) == len(expected) and torch.equal(spooled.ids, expected.ids)
    assert not (tmp_path / "s").exists()  # mapped, then removed
    for indices in (np.arange(len(ids)), np.array([3, 3, 0, len(ids) - 1]), np.array([], dtype=np.int64)):
        a, b = expected.gather(indices), spooled.gather(indices)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_a_field_with_no_ids_at_all(tmp_path):
    ids = np.arange(4, dtype=np.int64)
    texts = {"title": ["", "", "", ""]}
    spooled = spool_features([(ids, texts, {})], ["title"], featuriser(), tmp_path / "s")
    out = spooled.gather(np.arange(4))
    assert out["title_input_ids"].numel() == 0 and out["title_offsets"].tolist() == [0, 0, 0, 0]


def test_no_rows(tmp_path):
    spooled = spool_features(iter([]), ["title"], featuriser(), tmp_path / "s")
    assert len(spooled) == 0


def test_bad_blocks(tmp_path):
    featurise = featuriser()
    ids, texts, dense = rows(6, seed=0)
    with pytest.raises(ValueError, match="text field 'tags' has 5 values for 6 entities"):
        spool_features([(ids, {"title": texts["title"], "tags": texts["tags"][:5]}, {})], ["title", "tags"],
                       featurise, tmp_path / "a")
    with pytest.raises(ValueError, match=r"every block must have the dense features \['legacy'\]"):
        spool_features([(ids[:3], {"title": texts["title"][:3]}, {"legacy": dense["legacy"][:3]}),
                        (ids[3:], {"title": texts["title"][3:]}, {})], ["title"], featurise, tmp_path / "b")
    with pytest.raises(ValueError, match=r"dense feature 'legacy' must be \(6, 8\) for this block, got \(4, 8\)"):
        spool_features([(ids, {"title": texts["title"]}, {"legacy": dense["legacy"][:4]})], ["title"],
                       featurise, tmp_path / "c")
    with pytest.raises(ValueError, match=r"dense feature 'legacy' must be \(3, 8\) for this block, got \(3, 4\)"):
        spool_features([(ids[:3], {"title": texts["title"][:3]}, {"legacy": dense["legacy"][:3]}),
                        (ids[3:], {"title": texts["title"][3:]}, {"legacy": dense["legacy"][3:, :4]})], ["title"],
                       featurise, tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abce")  # a failed pass leaves nothing behind
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(ValueError, match="directory must be empty"):
        spool_features([], ["title"], featurise, tmp_path / "d")


def test_from_arrays_checks_shapes():
    with pytest.raises(ValueError, match="starts of field 'title' must be"):
        EntityFeatures.from_arrays(np.arange(3), {"title": np.arange(5)}, {"title": np.array([0, 2, 5])})
    with pytest.raises(ValueError, match="dense feature 'legacy' must be"):
        EntityFeatures.from_arrays(np.arange(2), {}, {}, {"legacy": np.zeros((2, 4), np.float64)})
