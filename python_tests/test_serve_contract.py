"""omnikern.serve.contract without a server: every request check with real values (good inputs come
back exactly, each bad one is refused with a RequestError whose message names the input and says
what is wrong), and the token helpers the steps batch with (pad, trim, split)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import given, settings, st

from omnikern.serve import contract as C
from omnikern.serve.contract import RequestError


def texts(*rows) -> np.ndarray:
    """A ``text`` input (len(rows), 1) of dtype object, as the python backend hands it over."""
    out = np.empty((len(rows), 1), dtype=object)
    out[:, 0] = rows
    return out


def refused(match: str):
    return pytest.raises(RequestError, match=re.escape(match))


# ---------------------------------------------------------------------------------------------
# names and limits
# ---------------------------------------------------------------------------------------------


def test_names_and_limits():
    assert (C.TEXT, C.K, C.INPUT_IDS, C.ATTENTION_MASK, C.EMBEDDING, C.SCORES, C.IDS) == (
        "text", "k", "input_ids", "attention_mask", "embedding", "scores", "ids")
    assert (C.TOKENIZER, C.QUERY_ENCODER, C.SCORER, C.OMNISEARCH, C.ENCODE) == (
        "tokenizer", "query_encoder", "scorer", "omnisearch", "encode")
    assert C.REQUIRED_INPUTS == {"omnisearch": ("text",), "encode": ("text",)}
    assert C.MAX_TEXT_BYTES == 4096 and C.MAX_K == 1000
    assert C.ENCODER_RUNTIMES == ("torch", "onnx") and C.PIPELINES == ("ensemble", "fused")
    assert issubclass(RequestError, ValueError)


# ---------------------------------------------------------------------------------------------
# check_texts
# ---------------------------------------------------------------------------------------------


def test_check_texts_accepts_bytes_and_str_rows():
    rows = C.check_texts(texts(b"tomato soup", "crème brûlée", b"", "日本のラーメン", "🍕"))
    assert rows == [b"tomato soup", "crème brûlée".encode(), b"", "日本のラーメン".encode(), "🍕".encode()]
    assert all(type(row) is bytes for row in rows)


def test_check_texts_byte_limit_is_inclusive_and_counts_utf8_bytes():
    assert C.check_texts(texts(b"x" * 4096)) == [b"x" * 4096]
    with refused("text[0] is 4097 bytes, the limit is 4096 bytes"):
        C.check_texts(texts(b"x" * 4097))
    # 2048 two-byte characters are exactly 4096 bytes; one more is over, though only 2049 characters
    assert C.check_texts(texts("é" * 2048)) == ["é".encode() * 2048]
    with refused("text[1] is 4098 bytes, the limit is 4096 bytes"):
        C.check_texts(texts(b"ok", "é" * 2049))
    # a smaller limit from the model's parameters
    assert C.check_texts(texts(b"abcd"), max_bytes=4) == [b"abcd"]
    with refused("text[0] is 5 bytes, the limit is 4 bytes"):
        C.check_texts(texts(b"abcde"), max_bytes=4)


@pytest.mark.parametrize("text, message", [
    (None, "missing input 'text'"),
    (np.ones((1, 1), np.float32), "text must be BYTES, got float32"),
    (np.array([[b"soup"]]), "text must be BYTES, got |S4"),  # fixed-width bytes, not the backend's object array
    (np.array([["soup"]]), "text must be BYTES, got <U4"),
    (np.zeros((2, 1), np.int64), "text must be BYTES, got int64"),
    (np.array([b"a", b"b"], dtype=object), "text must have shape (batch, 1), got (2,)"),
    (np.array([[b"a", b"b"]], dtype=object), "text must have shape (batch, 1), got (1, 2)"),
    (np.array([[[b"a"]]], dtype=object), "text must have shape (batch, 1), got (1, 1, 1)"),
    (np.empty((0, 1), dtype=object), "text is an empty batch (0 rows)"),
    (texts(b"ok", 7), "text[1] must be bytes, got int"),
    (texts(None), "text[0] must be bytes, got NoneType"),
    (texts(b"ok", b"fine", b"ab\xffcd"), "text[2] is not valid UTF-8 (byte 2)"),
    (texts(b"\xc3"), "text[0] is not valid UTF-8 (byte 0)"),  # a truncated two-byte sequence
    (texts(b"\xed\xa0\x80"), "text[0] is not valid UTF-8 (byte 0)"),  # an encoded surrogate
])
def test_check_texts_refusals(text, message):
    with refused(message):
        C.check_texts(text)


def test_check_texts_reports_the_first_bad_row():
    with refused("text[1] is not valid UTF-8"):
        C.check_texts(texts(b"ok", b"\xff", b"x" * 5000))
    with refused("text[1] is 5000 bytes"):
        C.check_texts(texts(b"ok", b"x" * 5000, b"\xff"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=6), st.booleans())
def test_property_valid_texts_come_back_as_their_utf8(rows, as_bytes):
    data = [row.encode("utf-8", "surrogatepass") for row in rows]
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for row in rows for c in row)
    if has_surrogate:
        # a lone surrogate cannot be UTF-8: as bytes it is refused, as str it cannot even be encoded
        if as_bytes:
            with pytest.raises(RequestError, match=r"text\[\d+\] is not valid UTF-8"):
                C.check_texts(texts(*data))
        return
    assert C.check_texts(texts(*(data if as_bytes else rows))) == data


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=5))
def test_property_bytes_accepted_iff_utf8(rows):
    first_bad = None
    for i, row in enumerate(rows):
        try:
            row.decode("utf-8")
        except UnicodeDecodeError as error:
            first_bad = (i, error.start)
            break
    if first_bad is None:
        assert C.check_texts(texts(*rows)) == rows
    else:
        with refused(f"text[{first_bad[0]}] is not valid UTF-8 (byte {first_bad[1]})"):
            C.check_texts(texts(*rows))


# ---------------------------------------------------------------------------------------------
# check_tokens
# ---------------------------------------------------------------------------------------------


def test_check_tokens_accepts_and_returns_the_same_arrays():
    ids = np.array([[2, 5, 6, 3], [2, 9, 3, 0]], np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)
    out_ids, out_mask = C.check_tokens(ids, mask, vocab_size=10, max_tokens=4)
    assert out_ids is ids and out_mask is mask
    # bounds are inclusive: id 0 and id vocab_size - 1, T == max_tokens
    edge = np.array([[0, 9]], np.int64)
    assert C.check_tokens(edge, np.ones((1, 2), np.int64), 10, 2)[0] is edge


@pytest.mark.parametrize("ids, mask, message", [
    (None, np.ones((1, 2), np.int64), "missing input 'input_ids'"),
    (np.ones((1, 2), np.int64), None, "missing input 'attention_mask'"),
    (np.ones((1, 2), np.int32), np.ones((1, 2), np.int64), "input_ids must be INT64, got int32"),
    (np.ones((1, 2), np.int64), np.ones((1, 2), np.float32), "attention_mask must be INT64, got float32"),
    (np.ones((1, 2), np.int64), np.ones((1, 2), bool), "attention_mask must be INT64, got bool"),
    (np.ones(3, np.int64), np.ones(3, np.int64), "input_ids must have shape (batch, tokens), got (3,)"),
    (np.ones((1, 2), np.int64), np.ones((1, 1, 2), np.int64), "attention_mask must have shape (batch, tokens), got (1, 1, 2)"),
    (np.ones((1, 2), np.int64), np.ones((1, 3), np.int64),
     "input_ids and attention_mask must have the same shape, got (1, 2) and (1, 3)"),
    (np.ones((2, 2), np.int64), np.ones((1, 2), np.int64),
     "input_ids and attention_mask must have the same shape, got (2, 2) and (1, 2)"),
    (np.ones((0, 2), np.int64), np.ones((0, 2), np.int64), "input_ids is an empty batch (0 rows)"),
    (np.ones((1, 9), np.int64), np.ones((1, 9), np.int64), "input_ids has 9 tokens per row, the limit is 8"),
    (np.array([[2, 10]], np.int64), np.ones((1, 2), np.int64), "input_ids must be in [0, 10), got values in [2, 10]"),
    (np.array([[-1, 3]], np.int64), np.ones((1, 2), np.int64), "input_ids must be in [0, 10), got values in [-1, 3]"),
    (np.array([[1, 2]], np.int64), np.array([[1, 2]], np.int64), "attention_mask must hold only 0 and 1"),
    (np.array([[1, 2]], np.int64), np.array([[1, -1]], np.int64), "attention_mask must hold only 0 and 1"),
])
def test_check_tokens_refusals(ids, mask, message):
    with refused(message):
        C.check_tokens(ids, mask, vocab_size=10, max_tokens=8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(-3, 12), st.integers(-3, 12))
def test_property_check_tokens_range(rows, width, low, high):
    low, high = min(low, high), max(low, high)
    ids = np.linspace(low, high, rows * width).round().astype(np.int64).reshape(rows, width)
    mask = np.ones_like(ids)
    if ids.min() >= 0 and ids.max() < 10:
        assert C.check_tokens(ids, mask, 10, 6)[0] is ids
    else:
        with refused(f"input_ids must be in [0, 10), got values in [{ids.min()}, {ids.max()}]"):
            C.check_tokens(ids, mask, 10, 6)


# ---------------------------------------------------------------------------------------------
# check_embedding
# ---------------------------------------------------------------------------------------------


def test_check_embedding_accepts_and_returns_the_same_array():
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    assert C.check_embedding(x, 16) is x
    assert C.check_embedding(x[:1], 16) is not None


@pytest.mark.parametrize("x, message", [
    (None, "missing input 'embedding'"),
    (np.ones((1, 16), np.float64), "embedding must be FP32, got float64"),
    (np.ones((1, 16), np.float16), "embedding must be FP32, got float16"),
    (np.ones((1, 15), np.float32), "embedding must have shape (batch, 16), got (1, 15)"),
    (np.ones(16, np.float32), "embedding must have shape (batch, 16), got (16,)"),
    (np.ones((1, 1, 16), np.float32), "embedding must have shape (batch, 16), got (1, 1, 16)"),
    (np.ones((0, 16), np.float32), "embedding is an empty batch (0 rows)"),
    (np.array([[0.0] * 15 + [np.nan]], np.float32), "embedding must be finite, got NaN or inf"),
    (np.array([[0.0] * 15 + [-np.inf]], np.float32), "embedding must be finite, got NaN or inf"),
])
def test_check_embedding_refusals(x, message):
    with refused(message):
        C.check_embedding(x, 16)


# ---------------------------------------------------------------------------------------------
# check_k
# ---------------------------------------------------------------------------------------------


def test_check_k_default_bounds_and_value():
    assert C.check_k(None, rows=3, default=7) == 7
    assert C.check_k(np.full((2, 1), 4, np.int32), 2, default=7) == 4
    assert C.check_k(np.full((1, 1), 1, np.int32), 1, default=7) == 1
    assert C.check_k(np.full((1, 1), 1000, np.int32), 1, default=7) == 1000
    assert C.check_k(np.full((1, 1), 50, np.int32), 1, default=7, max_k=50) == 50
    assert type(C.check_k(np.full((1, 1), 3, np.int32), 1, default=7)) is int


@pytest.mark.parametrize("k, rows, max_k, message", [
    (np.full((1, 1), 3, np.int64), 1, 1000, "k must be INT32, got int64"),
    (np.full((1, 1), 3, np.float32), 1, 1000, "k must be INT32, got float32"),
    (np.full(2, 3, np.int32), 2, 1000, "k must have shape (2, 1), one per row, got (2,)"),
    (np.full((3, 1), 3, np.int32), 2, 1000, "k must have shape (2, 1), one per row, got (3, 1)"),
    (np.full((1, 2), 3, np.int32), 1, 1000, "k must have shape (1, 1), one per row, got (1, 2)"),
    (np.array([[1], [2]], np.int32), 2, 1000, "k must be the same on every row of a request, got [1, 2]"),
    (np.arange(1, 8, dtype=np.int32).reshape(7, 1), 7, 1000,
     "k must be the same on every row of a request, got [1, 2, 3, 4, 5]"),  # at most five values shown
    (np.full((1, 1), 0, np.int32), 1, 1000, "k must be in 1..1000, got 0"),
    (np.full((1, 1), -4, np.int32), 1, 1000, "k must be in 1..1000, got -4"),
    (np.full((1, 1), 1001, np.int32), 1, 1000, "k must be in 1..1000, got 1001"),
    (np.full((2, 1), 51, np.int32), 2, 50, "k must be in 1..50, got 51"),
])
def test_check_k_refusals(k, rows, max_k, message):
    with refused(message):
        C.check_k(k, rows, default=7, max_k=max_k)


@settings(max_examples=60, deadline=None)
@given(st.integers(-2**31, 2**31 - 1), st.integers(1, 5), st.integers(1, 2000))
def test_property_check_k_accepts_exactly_1_to_max_k(value, rows, max_k):
    k = np.full((rows, 1), value, np.int32)
    if 1 <= value <= max_k:
        assert C.check_k(k, rows, default=7, max_k=max_k) == value
    else:
        with refused(f"k must be in 1..{max_k}, got {value}"):
            C.check_k(k, rows, default=7, max_k=max_k)


# ---------------------------------------------------------------------------------------------
# pad_tokens, trim_tokens, split_rows
# ---------------------------------------------------------------------------------------------


def test_pad_tokens_exact():
    parts = [(np.array([[2, 7, 3]]), np.ones((1, 3), np.int64)),
             (np.array([[2, 3], [2, 5]]), np.array([[1, 1], [1, 0]]))]
    ids, mask = C.pad_tokens(parts, pad_id=9)
    np.testing.assert_array_equal(ids, [[2, 7, 3], [2, 3, 9], [2, 5, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    assert ids.dtype == mask.dtype == np.int64
    ids, mask = C.pad_tokens(parts, pad_id=0, width=5)
    np.testing.assert_array_equal(ids, [[2, 7, 3, 0, 0], [2, 3, 0, 0, 0], [2, 5, 0, 0, 0]])
    assert mask.sum() == 6 and mask.shape == (3, 5)
    with pytest.raises(AssertionError):
        C.pad_tokens(parts, pad_id=0, width=2)


def test_trim_tokens_exact():
    ids = np.array([[2, 7, 3, 0, 0], [2, 3, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    got_ids, got_mask = C.trim_tokens(ids, mask)
    np.testing.assert_array_equal(got_ids, [[2, 7, 3], [2, 3, 0]])
    np.testing.assert_array_equal(got_mask, [[1, 1, 1], [1, 1, 0]])
    # an interior gap in the mask is kept: only trailing all-padding columns go
    got_ids, got_mask = C.trim_tokens(np.arange(4).reshape(1, 4), np.array([[1, 0, 1, 0]]))
    np.testing.assert_array_equal(got_ids, [[0, 1, 2]])
    # nothing but padding: one column is left
    got_ids, got_mask = C.trim_tokens(np.full((2, 4), 5), np.zeros((2, 4), np.int64))
    np.testing.assert_array_equal(got_ids, [[5], [5]])
    np.testing.assert_array_equal(got_mask, [[0], [0]])


def test_split_rows_exact():
    parts = C.split_rows(np.arange(12).reshape(6, 2), [1, 3, 2])
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]
    assert C.split_rows(np.empty((0, 2)), []) == []
    with pytest.raises(AssertionError):
        C.split_rows(np.arange(6).reshape(6, 1), [1, 2])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 6)), min_size=1, max_size=5), st.integers(0, 3))
def test_property_pad_trim_split_round_trip(shapes, extra):
    """What the encoder does to a batch: pad the requests to one width, trim, split back; every
    request's real tokens come back unchanged and nothing else is kept."""
    rng = np.random.default_rng(len(shapes) * 7 + extra)
    parts = []
    for rows, width in shapes:
        lengths = rng.integers(1, width + 1, rows)
        lengths[0] = width  # some row of each request uses every column
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        parts.append((rng.integers(1, 50, (rows, width)) * mask, mask))
    widest = max(w for _, w in shapes)
    ids, mask = C.trim_tokens(*C.pad_tokens(parts, pad_id=0, width=widest + extra))
    assert ids.shape == (sum(r for r, _ in shapes), widest)
    for (want_ids, want_mask), got_ids, got_mask in zip(parts, C.split_rows(ids, [r for r, _ in shapes]),
                                                        C.split_rows(mask, [r for r, _ in shapes])):
        width = want_ids.shape[1]
        np.testing.assert_array_equal(got_ids[:, :width], want_ids)
        np.testing.assert_array_equal(got_mask[:, :width], want_mask)
        assert (got_mask[:, width:] == 0).all() and (got_ids[:, width:] == 0).all()
