"""omnikern.text.string_id_hash (C++) vs the plain-Python reference and LevelDB's own vectors."""

from __future__ import annotations

import numpy as np
import pytest

from omnikern import _C
from omnikern.text import string_id_hash
from omnikern.text.reference import leveldb_hash32_ref, string_id_hash_ref


def test_leveldb_published_vectors():
    """util/hash_test.cc in LevelDB: the bytes are read unsigned (0xc3 must not sign-extend)."""
    vectors = {b"": 0xBC9F1D34, b"\x62": 0xEF1345C4, b"\xc3\x97": 0x5B663814, b"\xe2\x99\xa5": 0x323C078F, b"\xe1\x80\xb9\x32": 0xED21633A}
    for data, expected in vectors.items():
        assert _C.leveldb_hash32(data) == expected
        assert leveldb_hash32_ref(data) == expected


@pytest.mark.parametrize("bits", [32, 64])
def test_matches_reference_on_hard_strings(bits):
    strings = ["", "a", "ab", "abc", "abcd", "abcde", "crème brûlée", "日本語", "👩‍👩‍👧", "a\x00b", "x" * 1000, "\U0010ffff"]
    ids = string_id_hash(strings, bits=bits)
    assert ids.dtype == np.int64 and ids.shape == (len(strings),)
    assert ids.tolist() == string_id_hash_ref(strings, bits=bits)
    assert ids[0] == 0


def test_bytes_and_str_agree():
    assert string_id_hash(["crème"]).tolist() == string_id_hash(["crème".encode()]).tolist()
    # Bytes are hashed as given, valid UTF-8 or not.
    assert string_id_hash([b"\xff\xfe"]).tolist() == string_id_hash_ref([b"\xff\xfe"])


def test_id_ranges():
    """32-bit ids are 1 + int32(h): in [-2^31 + 1, 2^31]. 64-bit ids are 1 + (h >> 1): positive."""
    ids32 = string_id_hash([f"item-{i}" for i in range(2000)])
    assert ids32.min() >= -(2**31) + 1 and ids32.max() <= 2**31
    assert (ids32 < 0).any() and (ids32 > 0).any()
    ids64 = string_id_hash([f"item-{i}" for i in range(2000)], bits=64)
    assert (ids64 > 0).all()
    assert len(set(ids64.tolist())) == 2000


def test_surrogates_are_a_clear_error():
    """A str that is not encodable as UTF-8 (lone surrogate) cannot be hashed: a UnicodeError, not a crash."""
    with pytest.raises(UnicodeError):
        string_id_hash(["ok", "\ud800"])


@pytest.mark.parametrize(
    "strings, bits, error, match",
    [
        ("abc", 32, TypeError, "strings must be an iterable"),
        ([1, 2], 32, TypeError, "strings must hold str or bytes"),
        (["a"], 16, ValueError, "bits must be 32 or 64"),
    ],
)
def test_bad_input(strings, bits, error, match):
    with pytest.raises(error, match=match):
        string_id_hash(strings, bits=bits)
