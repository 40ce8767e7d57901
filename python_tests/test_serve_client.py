"""omnikern.serve.Client without a server.

Client builds its ``tritonclient`` connection as ``tritonclient.{http,grpc}.InferenceServerClient``
in its constructor; the tests put a fake class there (monkeypatch), which records every call and
answers from the tensors exactly as tritonclient would put them on the wire (the InferInput's
serialised bytes, decoded again), so the request building (names, datatypes, shapes, chunks, k,
timeouts) and the response parsing are tested with real values. Nothing listens on any port.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")

import tritonclient.grpc  # noqa: E402
import tritonclient.http  # noqa: E402
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype  # noqa: E402

from omnikern.serve import Client  # noqa: E402
from omnikern.serve import contract as C  # noqa: E402

DIM = 4
MAX_BATCH = 8


def decode_input(tensor) -> np.ndarray:
    """The numpy array an InferInput carries, read back from the bytes tritonclient would send."""
    raw = tensor._get_binary_data() if hasattr(tensor, "_get_binary_data") else tensor._get_content()
    if tensor.datatype() == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(tensor.shape())
    return np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype())).reshape(tensor.shape())


class FakeResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


class FakeTritonClient:
    """Stands in for tritonclient's InferenceServerClient (either protocol). Answers:

    - omnisearch / scorer: row r of a request scores ``[len(row), ...]`` descending, ids
      ``1000·len(row) + j`` (for text) or ``1000·round(sum(row)) + j`` (for embeddings), k columns
      (k from the request, else 3);
    - encode: embedding row = ``[len(text), 0, 0, 0]``.
    """

    instances: list = []

    def __init__(self, url, *args, **kwargs):
        self.url, self.args, self.kwargs = url, args, kwargs
        self.calls: list[dict] = []
        self.config_calls: list = []
        self.closed = 0
        self.ready = True
        self.error = None
        FakeTritonClient.instances.append(self)

    def _is_grpc(self):
        return isinstance(self, FakeGrpcClient)

    def get_model_config(self, model, *args, **kwargs):
        self.config_calls.append((model, args, kwargs))
        config = {"name": model, "max_batch_size": MAX_BATCH,
                  "output": [{"name": C.EMBEDDING, "data_type": "TYPE_FP32", "dims": [str(DIM)]}]}
        if self._is_grpc():
            assert kwargs == {"as_json": True}, kwargs
            return {"config": config}
        assert kwargs == {}, kwargs
        return config

    def is_server_ready(self):
        return self.ready

    def infer(self, model, inputs, outputs=None, **kwargs):
        if self.error is not None:
            raise self.error
        arrays = {t.name(): decode_input(t) for t in inputs}
        call = {"model": model, "inputs": {t.name(): (t.datatype(), t.shape(), arrays[t.name()]) for t in inputs},
                "outputs": [o.name() for o in outputs], "kwargs": kwargs}
        self.calls.append(call)
        if model == C.ENCODE:
            text = arrays[C.TEXT][:, 0]
            embedding = np.zeros((len(text), DIM), np.float32)
            embedding[:, 0] = [len(t) for t in text]
            return FakeResult({C.EMBEDDING: embedding})
        keys = ([len(t) for t in arrays[C.TEXT][:, 0]] if C.TEXT in arrays
                else [int(round(float(row.sum()))) for row in arrays[C.EMBEDDING]])
        k = int(arrays[C.K][0, 0]) if C.K in arrays else 3
        scores = np.array([[key - j for j in range(k)] for key in keys], np.float32)
        ids = np.array([[1000 * key + j for j in range(k)] for key in keys], np.int64)
        return FakeResult({C.SCORES: scores, C.IDS: ids})

    def close(self):
        self.closed += 1


class FakeGrpcClient(FakeTritonClient):
    pass


@pytest.fixture
def fakes(monkeypatch):
    FakeTritonClient.instances = []
    monkeypatch.setattr(tritonclient.http, "InferenceServerClient", FakeTritonClient)
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", FakeGrpcClient)
    return FakeTritonClient.instances


def expected_search(texts, k=None):
    k = 3 if k is None else k
    keys = [len(t.encode()) if isinstance(t, str) else len(t) for t in texts]
    return (np.array([[key - j for j in range(k)] for key in keys], np.float32).reshape(len(texts), k),
            np.array([[1000 * key + j for j in range(k)] for key in keys], np.int64).reshape(len(texts), k))


TEXTS = ["tomato soup", "crème brûlée", "", "日本のラーメン", b"raw bytes", "a" * 30, "pie", "x", "chili", "tofu",
         "ramen", "salad", "fish", "chips", "b", "cc", "ddd", "eeee", "fffff"]  # 19 rows: 8 + 8 + 3


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"url": "127.0.0.1:8000", "protocol": "https"}, "protocol must be one of ('http', 'grpc'), got 'https'"),
    ({"url": "127.0.0.1:8000", "protocol": "HTTP"}, "protocol must be one of ('http', 'grpc'), got 'HTTP'"),
    ({"url": ""}, "url must be 'host:port' without a scheme, got ''"),
    ({"url": "http://127.0.0.1:8000"}, "url must be 'host:port' without a scheme, got 'http://127.0.0.1:8000'"),
    ({"url": 8000}, "url must be 'host:port' without a scheme, got 8000"),
    ({"url": None, "protocol": "grpc"}, "url must be 'host:port' without a scheme, got None"),
    ({"url": "h:1", "max_batch_size": 0}, "max_batch_size must be an int >= 1 or None, got 0"),
    ({"url": "h:1", "max_batch_size": True}, "max_batch_size must be an int >= 1 or None, got True"),
    ({"url": "h:1", "max_batch_size": 2.0}, "max_batch_size must be an int >= 1 or None, got 2.0"),
    ({"url": "h:1", "timeout_s": 0}, "timeout_s must be > 0, got 0"),
    ({"url": "h:1", "timeout_s": -1.5}, "timeout_s must be > 0, got -1.5"),
])
def test_constructor_refuses_bad_arguments_before_connecting(fakes, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        Client(**kwargs)
    assert fakes == []  # no connection object was made


def test_constructor_passes_url_and_timeouts(fakes):
    with Client("127.0.0.1:8000", timeout_s=2.5) as http:
        (made,) = fakes
        assert made.url == "127.0.0.1:8000" and made.kwargs == {"connection_timeout": 2.5, "network_timeout": 2.5}
        assert (http.url, http.protocol, http.timeout_s) == ("127.0.0.1:8000", "http", 2.5)
        assert repr(http) == "Client('127.0.0.1:8000', protocol='http', open)"
    assert made.closed == 1 and repr(http) == "Client('127.0.0.1:8000', protocol='http', closed)"
    http.close()  # a second close is a no-op
    assert made.closed == 1
    grpc = Client("localhost:8001", protocol="grpc", timeout_s=3)
    assert isinstance(fakes[1], FakeGrpcClient) and fakes[1].url == "localhost:8001" and fakes[1].kwargs == {}
    assert grpc.timeout_s == 3.0 and type(grpc.timeout_s) is float
    grpc.close()


def test_closed_client_refuses_every_call(fakes):
    client = Client("h:1", max_batch_size=4)
    client.close()
    for call in (lambda: client.search(["soup"]), lambda: client.encode(["soup"]), client.is_ready,
                 lambda: client.search_embeddings(np.zeros((1, DIM), np.float32))):
        with pytest.raises(RuntimeError, match="^the client is closed$"):
            call()
    assert fakes[0].calls == []


def test_is_ready_and_server_facts(fakes):
    for protocol in ("http", "grpc"):
        with Client("h:1", protocol=protocol) as client:
            made = fakes[-1]
            assert client.is_ready() is True
            made.ready = 0
            assert client.is_ready() is False
            assert client.max_batch_size == MAX_BATCH and client.dim == DIM
            assert client.max_batch_size == MAX_BATCH and client.dim == DIM  # read once each, then kept
            assert [model for model, _, _ in made.config_calls] == [C.OMNISEARCH, C.ENCODE]
    with Client("h:1", max_batch_size=3) as client:
        assert client.max_batch_size == 3 and fakes[-1].config_calls == []


# ---------------------------------------------------------------------------------------------
# Argument errors of the requests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, True, False, 2.0, "3", [3]])
def test_search_refuses_bad_k(fakes, k):
    with Client("h:1") as client:
        with pytest.raises(ValueError, match="^" + re.escape(f"k must be an int >= 1 or None, got {k!r}") + "$"):
            client.search(["soup"], k=k)
        with pytest.raises(ValueError, match="^k must be an int >= 1 or None"):
            client.search_embeddings(np.zeros((1, DIM), np.float32), k=k)
    assert fakes[0].calls == [] and fakes[0].config_calls == []


@pytest.mark.parametrize("texts, message", [
    ("tomato soup", "texts must be a sequence of str, not a single str"),
    (b"tomato soup", "texts must be a sequence of str, not a single bytes"),
    (["ok", 3], "texts[1] must be str or bytes, got int"),
    ([None], "texts[0] must be str or bytes, got NoneType"),
    ([np.str_("fine"), bytearray(b"no")], "texts[1] must be str or bytes, got bytearray"),
])
def test_search_and_encode_refuse_bad_texts(fakes, texts, message):
    with Client("h:1", max_batch_size=4) as client:
        for call in (client.search, client.encode):
            with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):
                call(texts)
    assert fakes[0].calls == []


def test_search_embeddings_refuses_a_wrong_shape(fakes):
    with Client("h:1", max_batch_size=4) as client:
        for x, shape in ((np.zeros((2, DIM - 1), np.float32), (2, DIM - 1)), (np.zeros(DIM, np.float32), (DIM,)),
                         (np.zeros((1, 1, DIM), np.float32), (1, 1, DIM))):
            with pytest.raises(ValueError, match="^" + re.escape(f"embeddings must be (N, {DIM}), got shape {shape}") + "$"):
                client.search_embeddings(x)
    assert fakes[0].calls == []


def test_missing_required_input_is_refused_before_sending(fakes):
    with Client("h:1", max_batch_size=4) as client:
        with pytest.raises(ValueError, match=re.escape("a request to model 'omnisearch' needs input(s) ['text'], got ['k']")):
            client._infer(C.OMNISEARCH, {C.K: (np.ones((1, 1), np.int32), "INT32")}, (C.SCORES, C.IDS))
        with pytest.raises(ValueError, match=re.escape("a request to model 'encode' needs input(s) ['text'], got []")):
            client._infer(C.ENCODE, {}, (C.EMBEDDING,))
    assert fakes[0].calls == []


def test_server_errors_propagate_unchanged(fakes):
    with Client("h:1", max_batch_size=4) as client:
        fakes[0].error = InferenceServerException("text[0] is not valid UTF-8 (byte 0)", status="400")
        with pytest.raises(InferenceServerException, match=re.escape("text[0] is not valid UTF-8 (byte 0)")):
            client.search([b"\xff"])


# ---------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("k", [None, 5])
def test_search_chunks_requests_and_joins_answers_in_order(fakes, protocol, k):
    with Client("h:1", protocol=protocol, timeout_s=2.5) as client:
        scores, ids = client.search(TEXTS, k=k)
    made = fakes[0]
    want_scores, want_ids = expected_search(TEXTS, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(ids, want_ids)
    assert [c["model"] for c in made.calls] == [C.OMNISEARCH] * 3
    assert [model for model, _, _ in made.config_calls] == [C.OMNISEARCH]  # max batch size read from the server
    sent = []
    for call, rows in zip(made.calls, (8, 8, 3)):
        datatype, shape, text = call["inputs"][C.TEXT]
        assert (datatype, shape) == ("BYTES", [rows, 1]) and text.dtype == np.object_
        sent += text[:, 0].tolist()
        if k is None:
            assert set(call["inputs"]) == {C.TEXT}
        else:
            datatype, shape, k_in = call["inputs"][C.K]
            assert (datatype, shape) == ("INT32", [rows, 1]) and (k_in == k).all()
        assert call["outputs"] == [C.SCORES, C.IDS]
        assert call["kwargs"] == ({"timeout": 2_500_000} if protocol == "http" else {"client_timeout": 2.5})
    assert sent == [t.encode() if isinstance(t, str) else t for t in TEXTS]  # UTF-8, in order


def test_search_with_a_tuple_and_exact_batch_multiple(fakes):
    texts = tuple(TEXTS[:8])
    with Client("h:1", max_batch_size=4) as client:
        scores, ids = client.search(texts, k=2)
    assert [c["inputs"][C.TEXT][1] for c in fakes[0].calls] == [[4, 1], [4, 1]]
    np.testing.assert_array_equal(ids, expected_search(texts, 2)[1])
    assert fakes[0].config_calls == []  # max_batch_size given: no config read


def test_empty_inputs_send_no_request(fakes):
    with Client("h:1", max_batch_size=4) as client:
        scores, ids = client.search([])
        assert scores.shape == ids.shape == (0, 0) and scores.dtype == np.float32 and ids.dtype == np.int64
        scores, ids = client.search([], k=7)
        assert scores.shape == ids.shape == (0, 7)
        scores, ids = client.search_embeddings(np.zeros((0, DIM), np.float32), k=2)
        assert scores.shape == ids.shape == (0, 2)
        embeddings = client.encode([])
        assert embeddings.shape == (0, DIM) and embeddings.dtype == np.float32
    assert fakes[0].calls == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_encode_requests_and_joins_embeddings(fakes, protocol):
    with Client("h:1", protocol=protocol) as client:
        embeddings = client.encode(TEXTS)
    made = fakes[0]
    assert embeddings.shape == (len(TEXTS), DIM) and embeddings.dtype == np.float32
    np.testing.assert_array_equal(embeddings[:, 0], [len(t.encode()) if isinstance(t, str) else len(t) for t in TEXTS])
    assert [c["model"] for c in made.calls] == [C.ENCODE] * 3
    assert all(set(c["inputs"]) == {C.TEXT} and c["outputs"] == [C.EMBEDDING] for c in made.calls)
    assert [c["inputs"][C.TEXT][1] for c in made.calls] == [[8, 1], [8, 1], [3, 1]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_search_embeddings_sends_fp32_to_the_scorer(fakes, protocol):
    x = np.arange(11 * DIM, dtype=np.float64).reshape(11, DIM) / 10  # float64 in: sent as FP32
    with Client("h:1", protocol=protocol, max_batch_size=5) as client:
        scores, ids = client.search_embeddings(x, k=2)
    made = fakes[0]
    assert [model for model, _, _ in made.config_calls] == [C.ENCODE]  # D from the encode config
    assert [c["model"] for c in made.calls] == [C.SCORER] * 3
    sent = np.concatenate([c["inputs"][C.EMBEDDING][2] for c in made.calls])
    assert all(c["inputs"][C.EMBEDDING][0] == "FP32" for c in made.calls)
    assert [c["inputs"][C.EMBEDDING][1] for c in made.calls] == [[5, DIM], [5, DIM], [1, DIM]]
    np.testing.assert_array_equal(sent, x.astype(np.float32))
    keys = np.round(x.astype(np.float32).sum(axis=1)).astype(np.int64)
    np.testing.assert_array_equal(ids, np.stack([1000 * keys, 1000 * keys + 1], axis=1))
    np.testing.assert_array_equal(scores[:, 0], keys.astype(np.float32))
