"""String id hashes of any bytes drawn by hypothesis, against the plain-Python reference.

A module of its own so that the other hashing tests run where hypothesis (the ``test`` extra) is
not installed, as on the GPU machine's image.
"""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="hypothesis (the `test` extra) draws the inputs")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omnikern.text import string_id_hash  # noqa: E402
from omnikern.text.reference import murmur_hash64a_ref, string_id_hash_ref  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_property_matches_reference(items):
    assert string_id_hash(items).tolist() == string_id_hash_ref(items)
    assert [int(v) for v in string_id_hash(items, bits=64)] == string_id_hash_ref(items, bits=64)
    for item in items:
        assert murmur_hash64a_ref(item) >= 0
