"""The serving steps (omnikern.serve.steps) and the generated model.py shells, in-process, without
tritonserver.

A small query tower (1-layer BERT of width 32 over a 40-token WordPiece vocabulary, output 16) and
an Int8Index of 40 rows are exported with :func:`omnikern.serve.export_triton` (``pipeline="fused"``,
which writes all four python-backend models); every step is built from its exported model
directory the way its model.py builds it (``Step(version dir, backend.parameters(args), args)``,
``args`` being what tritonserver passes ``initialize``, made from the model's own config.pbtxt),
and fed requests through the fake ``triton_python_backend_utils`` of :mod:`helpers`.

Expected values: the tokenizer's ``encode_batch``, the tower's forward on the same tokens, and
``Int8Index.search`` on the same embeddings. The tower runs on the same CPU in the same process;
token rows padded to other widths change float rounding only, hence the 1e-6 embedding tolerance
(the score step, given the same embeddings, must equal the index exactly).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    assert_same_answer,
    fake_pb_utils,
    installed_pb_utils,
    load_model_py,
    pb_error,
    pb_outputs,
    pb_request,
    tiny_tower_and_index,
    triton_model_args,
)

from omnikern.serve import backend, export_triton
from omnikern.serve import contract as C
from omnikern.serve.contract import RequestError
from omnikern.serve.steps import Encode, Score, Search, Tokenize

pytest.importorskip("transformers")  # load_query_tower rebuilds the BERT encoder from its config
HAVE_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))

EMB_ATOL = 1e-6
ROWS = 40
DIM = 16
MAX_BATCH = 8
TEXTS = ["tomato soup", "chocolate chip cookies", "crème brûlée", "Pad Thai with tofu", "", "   ", "中 ramen",
         "fish & chips!", "vegan chili", "apple pie", "a b c d e f g h a b c d e f g h", "unknownword"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("steps")
    tower, index = tiny_tower_and_index(tmp, rows=ROWS, dim=DIM)
    repo = export_triton(tower, tmp / "index.safetensors", tmp / "repo", max_batch_size=MAX_BATCH,
                         encoder_runtime="torch", pipeline="fused", k_default=5, max_k=60)
    return {"tower": tower, "index": index, "repo": repo, "tmp": tmp}


@pytest.fixture(scope="module")
def onnx_repo(model):
    if not HAVE_ONNX:
        pytest.skip("needs onnx and onnxruntime (pip install 'omnikern[serve]')")
    return export_triton(model["tower"], model["tmp"] / "index.safetensors", model["tmp"] / "repo-onnx",
                         max_batch_size=MAX_BATCH, encoder_runtime="onnx")


@pytest.fixture
def pb():
    with installed_pb_utils() as module:
        yield module


def build(step_class, model_dir: Path, **overrides):
    """``step_class`` built as its model.py builds it, from ``model_dir``'s config.pbtxt (parameters
    in ``overrides`` replaced)."""
    args = triton_model_args(model_dir)
    params = {**backend.parameters(args), **overrides}
    directory = model_dir / "1"
    return step_class(directory, params) if step_class is Tokenize else step_class(directory, params, args)


def text_array(rows) -> np.ndarray:
    out = np.empty((len(rows), 1), dtype=object)
    out[:, 0] = [r.encode() if isinstance(r, str) else r for r in rows]
    return out


def expected_tokens(tokenizer, rows, pad_to: int):
    encoded = tokenizer.encode_batch(rows)
    return C.pad_tokens([(encoded["input_ids"], encoded["attention_mask"])], tokenizer.pad_id, width=pad_to)


def tower_embedding(tower, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def index_search(index, x: np.ndarray, k: int):
    scores, ids = index.search(torch.from_numpy(x), k)
    return scores.numpy(), ids.numpy()


# ---------------------------------------------------------------------------------------------
# backend.py
# ---------------------------------------------------------------------------------------------


def test_parameters_and_instance_device(model):
    args = triton_model_args(model["repo"] / C.SCORER)
    assert backend.parameters(args) == {"k_default": "5", "max_k": "60", "index_class": "omnikern:Int8Index",
                                        "torch_threads": "1"}
    assert backend.parameters({"model_config": "{}"}) == {}
    assert backend.parameters(triton_model_args(model["repo"] / C.TOKENIZER)) == {
        "max_text_bytes": "4096", "threads": "1", "pad_to": "12"}
    # a GPU instance gets its own CUDA device (not touched here: the device object only)
    assert backend.instance_device({"model_instance_kind": "GPU", "model_instance_device_id": "3"}, {}) == \
        torch.device("cuda", 3)
    threads = torch.get_num_threads()
    try:
        assert backend.instance_device({"model_instance_kind": "CPU"}, {"torch_threads": "1"}) == torch.device("cpu")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert backend.instance_device({"model_instance_kind": "CPU"}, {"torch_threads": "0"}) == torch.device("cpu")
        assert torch.get_num_threads() == 2  # 0: left as it is
    finally:
        torch.set_num_threads(threads)


def test_invalid_arg_response(pb):
    response = backend.invalid_arg(pb, "k must be in 1..60, got 0")
    assert pb_error(pb, response) == "k must be in 1..60, got 0"
    assert response.error().code() == 3


def test_answer_runs_good_requests_once_and_answers_each_request(pb):
    """answer(): check per request, one run over the good ones in order, run's RequestErrors and
    check's RequestErrors both become that request's INVALID_ARG; absent inputs reach check as None."""
    calls = []

    def check(x, k):
        if x is None:
            raise RequestError("missing x")
        return x, None if k is None else int(k[0, 0])

    def run(items):
        calls.append(items)
        return [RequestError("odd sum") if int(x.sum()) % 2 else (x * 2, np.full((x.shape[0], 1), k or 0, np.int32))
                for x, k in items]

    requests = [pb_request(pb, x=np.array([[1.0, 1.0]], np.float32), k=np.array([[4]], np.int32)),
                pb_request(pb, k=np.array([[4]], np.int32)),
                pb_request(pb, x=np.array([[1.0, 2.0]], np.float32)),
                pb_request(pb, x=np.array([[2.0], [4.0]], np.float32))]
    responses = backend.answer(pb, requests, ("x", "k"), check, run, ("y", "kk"))
    assert len(calls) == 1 and len(calls[0]) == 3  # the missing-input request never reached run
    assert pb_error(pb, responses[1]) == "missing x"
    assert pb_error(pb, responses[2]) == "odd sum"
    out = pb_outputs(pb, responses[0])
    np.testing.assert_array_equal(out["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal(out["kk"], [[4]])
    out = pb_outputs(pb, responses[3])
    np.testing.assert_array_equal(out["y"], [[4.0], [8.0]])
    np.testing.assert_array_equal(out["kk"], [[0], [0]])
    # every request bad: run is not called at all
    assert backend.answer(pb, [pb_request(pb)], ("x", "k"), check, run, ("y", "kk"))[0].has_error()
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def test_tokenize_equals_wordpiece_encode_batch(model):
    step = build(Tokenize, model["repo"] / C.TOKENIZER)
    tokenizer = model["tower"].tokenizer
    assert step.pad_to == 12 and step.pad_id == tokenizer.pad_id == 0 and step.max_bytes == 4096
    requests = [TEXTS[:3], TEXTS[3:4], TEXTS[4:9], TEXTS[9:]]
    results = step.run([step.check(text_array(rows)) for rows in requests])
    assert len(results) == len(requests)
    for rows, (ids, mask) in zip(requests, results):
        want_ids, want_mask = expected_tokens(tokenizer, rows, 12)
        assert ids.shape == mask.shape == (len(rows), 12) and ids.dtype == mask.dtype == np.int64
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(mask, want_mask)
    # real values, not just agreement: [CLS] tomato soup [SEP], then padding
    np.testing.assert_array_equal(results[0][0][0], [2, 5, 6, 3] + [0] * 8)
    # the 16-word row is cut to the tokenizer's max length (12 with [CLS] and [SEP])
    assert results[3][1][1].sum() == 12 and results[3][0][1, -1] == 3


def test_tokenize_refuses_a_row_over_pad_to_alone(model, tmp_path):
    """A tokenizer without truncation (max_length None) exports pad_to = the encoder's 32
    positions: a longer row is refused, the other requests of the batch are answered."""
    tower, _ = tiny_tower_and_index(tmp_path, rows=4, dim=DIM, max_length=None)
    repo = export_triton(tower, tmp_path / "index.safetensors", tmp_path / "repo", encoder_runtime="torch")
    step = build(Tokenize, repo / C.TOKENIZER)
    assert step.pad_to == 32
    long_row = " ".join(["soup"] * 31)  # 33 tokens with [CLS] and [SEP]
    results = step.run([step.check(text_array(["tomato soup"])), step.check(text_array(["pie", long_row])),
                        step.check(text_array([" ".join(["soup"] * 30)]))])
    assert isinstance(results[1], RequestError) and str(results[1]) == "text has a row of 33 tokens, the limit is 32"
    np.testing.assert_array_equal(results[0][0], expected_tokens(tower.tokenizer, ["tomato soup"], 32)[0])
    assert results[2][1].sum() == 32  # exactly at the limit: accepted


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_encode_equals_the_tower(model, runtime, request):
    repo = model["repo"] if runtime == "torch" else request.getfixturevalue("onnx_repo")
    step = build(Encode, repo / C.QUERY_ENCODER)
    assert step.runtime == runtime and (step.pad_id, step.vocab_size, step.max_tokens) == (0, 40, 32)
    tower = model["tower"]
    parts = [tower.tokenize(rows) for rows in (TEXTS[:2], TEXTS[2:3], TEXTS[4:10])]
    items = [step.check(p["input_ids"].numpy(), p["attention_mask"].numpy()) for p in parts]
    results = step.run(items)
    atol = EMB_ATOL if runtime == "torch" else 1e-5
    for part, (embedding,) in zip(parts, results):
        want = tower_embedding(tower, part["input_ids"].numpy(), part["attention_mask"].numpy())
        assert embedding.dtype == np.float32 and embedding.shape == want.shape
        np.testing.assert_allclose(embedding, want, atol=atol, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    # one request alone gives the tower's own answer on the same width
    (alone,) = step.run(items[1:2])
    np.testing.assert_allclose(alone[0], tower_embedding(tower, *items[1]), atol=atol, rtol=0)


def test_score_equals_the_index_search(model):
    step = build(Score, model["repo"] / C.SCORER)
    assert (step.k_default, step.max_k, step.rerank, step.dim) == (5, 60, 0, DIM)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((6, DIM)).astype(np.float32)
    q[5] = model["index"].codes[ROWS - 1].float().numpy() / 127  # the row with the negative id scores best
    items = [step.check(q[:2], np.full((2, 1), 3, np.int32)), step.check(q[2:3], None),
             step.check(q[3:5], np.full((2, 1), 60, np.int32)), step.check(q[5:6], np.full((1, 1), 1, np.int32))]
    assert [k for _, k, _ in items] == [3, 5, 60, 1] and {t for _, _, t in items} == {None}
    results = step.run(items)
    for (x, k, _), (scores, ids, types) in zip(items, results):
        assert types.dtype == object and set(types[ids >= 0].tolist()) <= {b"item"} and set(types[ids < 0]) <= {b""}
        want_scores, want_ids = index_search(model["index"], x, k)
        assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == ids.shape == (x.shape[0], k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    # k = 60 > 40 rows: the last 20 slots are the gap marker
    scores, ids, _ = results[2]
    assert np.isneginf(scores[:, ROWS:]).all() and (ids[:, ROWS:] == -1).all() and np.isfinite(scores[:, :ROWS]).all()
    assert sorted(ids[0, :ROWS].tolist()) == sorted(model["index"].ids.tolist())
    assert results[3][1].tolist() == [[-5]]


def test_search_end_to_end(model):
    step = build(Search, model["repo"] / C.OMNISEARCH)
    tower, index = model["tower"], model["index"]
    requests = [(TEXTS[:3], None), (TEXTS[3:4], 2), (TEXTS[4:12], 50)]
    items = [step.check(text_array(rows), None if k is None else np.full((len(rows), 1), k, np.int32))
             for rows, k in requests]
    results = step.run(items)
    for (rows, k), (scores, ids, _) in zip(requests, results):
        k = 5 if k is None else k
        want_embedding = tower.encode(rows)
        want_scores, want_ids = index_search(index, want_embedding, k)
        assert scores.shape == ids.shape == (len(rows), k)
        assert_same_answer(index, want_embedding, scores, ids, want_scores, want_ids, EMB_ATOL)
    # the three step models by hand, on the same batch, give the very same arrays
    tokens = build(Tokenize, model["repo"] / C.TOKENIZER).run([rows for rows, _, _ in items])
    embeddings = build(Encode, model["repo"] / C.QUERY_ENCODER).run(tokens)
    by_hand = build(Score, model["repo"] / C.SCORER).run([(e, k, t) for (e,), (_, k, t) in zip(embeddings, items)])
    for (scores, ids, types), (want_scores, want_ids, want_types) in zip(results, by_hand):
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(types, want_types)


def test_search_checks_text_and_k_before_any_work(model):
    step = build(Search, model["repo"] / C.OMNISEARCH)
    with pytest.raises(RequestError, match=r"^k must be in 1\.\.60, got 61$"):
        step.check(text_array(["soup"]), np.full((1, 1), 61, np.int32))
    with pytest.raises(RequestError, match=r"^k must have shape \(2, 1\), one per row, got \(1, 1\)$"):
        step.check(text_array(["soup", "pie"]), np.full((1, 1), 3, np.int32))
    with pytest.raises(RequestError, match=r"^text\[0\] is not valid UTF-8 \(byte 0\)$"):
        step.check(text_array([b"\xff"]), None)
    assert step.check(text_array(["soup"]), None) == ([b"soup"], 5, None)


# ---------------------------------------------------------------------------------------------
# The generated model.py shells: initialize / execute (/ finalize) with tritonserver's args
# ---------------------------------------------------------------------------------------------


def shell(repo: Path, name: str, pb, **overrides):
    """The model.py of ``name`` loaded with the fake pb_utils and initialised with the args that
    tritonserver would pass (its config.pbtxt as JSON; ``overrides`` replace parameters)."""
    module = load_model_py(repo / name / "1" / "model.py", pb)
    instance = module.TritonPythonModel()
    args = triton_model_args(repo / name)
    if overrides:
        config = json.loads(args["model_config"])
        config["parameters"].update({k: {"string_value": v} for k, v in overrides.items()})
        args["model_config"] = json.dumps(config)
    instance.initialize(args)
    return module, instance


def finalize(instance) -> None:
    """Tritonserver calls finalize when it is defined; the generated models define none."""
    if hasattr(instance, "finalize"):
        instance.finalize()


def test_shell_uses_the_given_pb_utils_and_the_server_runs_no_interpreter(model, pb, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from omnikern.serve.server import TritonServer

    module = load_model_py(model["repo"] / C.TOKENIZER / "1" / "model.py", pb)
    assert module.pb_utils is pb
    assert not hasattr(module.TritonPythonModel, "finalize")
    # CPU test runs set TRITON_INTERPRET; the server process must not inherit it (it would run
    # every "auto" op as an interpreted kernel). The launcher drops it, not the generated files.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    env = TritonServer(tmp_path)._environment(SimpleNamespace(libs=tmp_path))
    assert "TRITON_INTERPRET" not in env and env["PYTHONUNBUFFERED"] == "1"
    assert os.environ["TRITON_INTERPRET"] == "1"  # the caller's own environment is untouched


def test_tokenizer_shell(model, pb):
    _, instance = shell(model["repo"], C.TOKENIZER, pb)
    tokenizer = model["tower"].tokenizer
    requests = [pb_request(pb, text=text_array(TEXTS[:2])),
                pb_request(pb, text=text_array([b"x" * 4097])),
                pb_request(pb, text=text_array([b"ok", b"\xe2\x82"])),
                pb_request(pb),
                pb_request(pb, text=np.empty((0, 1), object)),
                pb_request(pb, text=np.ones((1, 1), np.float32)),
                pb_request(pb, text=text_array(TEXTS[2:7]))]
    responses = instance.execute(requests)
    assert len(responses) == len(requests)
    assert pb_error(pb, responses[1]) == "text[0] is 4097 bytes, the limit is 4096 bytes"
    assert pb_error(pb, responses[2]) == "text[1] is not valid UTF-8 (byte 0)"
    assert pb_error(pb, responses[3]) == "missing input 'text'"
    assert pb_error(pb, responses[4]) == "text is an empty batch (0 rows)"
    assert pb_error(pb, responses[5]) == "text must be BYTES, got float32"
    for i, rows in ((0, TEXTS[:2]), (6, TEXTS[2:7])):
        out = pb_outputs(pb, responses[i])
        want_ids, want_mask = expected_tokens(tokenizer, rows, 12)
        np.testing.assert_array_equal(out[C.INPUT_IDS], want_ids)
        np.testing.assert_array_equal(out[C.ATTENTION_MASK], want_mask)
        assert pb.get_output_tensor_by_name(responses[i], C.INPUT_IDS).triton_dtype() == "INT64"
    finalize(instance)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_query_encoder_shell(model, pb, runtime, request):
    repo = model["repo"] if runtime == "torch" else request.getfixturevalue("onnx_repo")
    _, instance = shell(repo, C.QUERY_ENCODER, pb)
    tower = model["tower"]
    parts = [tower.tokenize(rows) for rows in (TEXTS[:3], TEXTS[7:8])]
    good = [pb_request(pb, input_ids=p["input_ids"].numpy(), attention_mask=p["attention_mask"].numpy()) for p in parts]
    ids = parts[0]["input_ids"].numpy()
    mask = parts[0]["attention_mask"].numpy()
    requests = [good[0],
                pb_request(pb, input_ids=ids.astype(np.int32), attention_mask=mask),
                pb_request(pb, input_ids=ids),
                pb_request(pb, input_ids=np.full_like(ids, 40), attention_mask=mask),
                pb_request(pb, input_ids=np.zeros((1, 33), np.int64), attention_mask=np.ones((1, 33), np.int64)),
                pb_request(pb, input_ids=ids, attention_mask=mask * 3),
                good[1]]
    responses = instance.execute(requests)
    assert pb_error(pb, responses[1]) == "input_ids must be INT64, got int32"
    assert pb_error(pb, responses[2]) == "missing input 'attention_mask'"
    assert pb_error(pb, responses[3]) == "input_ids must be in [0, 40), got values in [40, 40]"
    assert pb_error(pb, responses[4]) == "input_ids has 33 tokens per row, the limit is 32"
    assert pb_error(pb, responses[5]) == "attention_mask must hold only 0 and 1"
    atol = EMB_ATOL if runtime == "torch" else 1e-5
    for i, part in ((0, parts[0]), (6, parts[1])):
        got = pb_outputs(pb, responses[i])[C.EMBEDDING]
        want = tower_embedding(tower, part["input_ids"].numpy(), part["attention_mask"].numpy())
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    finalize(instance)


@pytest.mark.parametrize("with_others", [True, False])
def test_query_encoder_shell_zero_token_request_gets_its_own_error(model, pb, with_others):
    _, instance = shell(model["repo"], C.QUERY_ENCODER, pb)
    part = model["tower"].tokenize(["tomato soup"])
    good = pb_request(pb, input_ids=part["input_ids"].numpy(), attention_mask=part["attention_mask"].numpy())
    empty = pb_request(pb, input_ids=np.zeros((1, 0), np.int64), attention_mask=np.zeros((1, 0), np.int64))
    responses = instance.execute([empty, good] if with_others else [empty])
    assert "input_ids" in pb_error(pb, responses[0])
    if with_others:
        assert pb_outputs(pb, responses[1])[C.EMBEDDING].shape == (1, DIM)


def test_scorer_shell(model, pb):
    _, instance = shell(model["repo"], C.SCORER, pb)
    rng = np.random.default_rng(5)
    q = rng.standard_normal((4, DIM)).astype(np.float32)
    requests = [pb_request(pb, embedding=q[:2], k=np.full((2, 1), 7, np.int32)),
                pb_request(pb, embedding=q[:1], k=np.full((1, 1), 61, np.int32)),
                pb_request(pb, embedding=q[:1].astype(np.float64)),
                pb_request(pb, embedding=q[:1, :8]),
                pb_request(pb, embedding=q[:2], k=np.array([[1], [2]], np.int32)),
                pb_request(pb, k=np.full((1, 1), 3, np.int32)),
                pb_request(pb, embedding=np.full((1, DIM), np.nan, np.float32)),
                pb_request(pb, embedding=q[2:4])]
    responses = instance.execute(requests)
    assert pb_error(pb, responses[1]) == "k must be in 1..60, got 61"
    assert pb_error(pb, responses[2]) == "embedding must be FP32, got float64"
    assert pb_error(pb, responses[3]) == f"embedding must have shape (batch, {DIM}), got (1, 8)"
    assert pb_error(pb, responses[4]) == "k must be the same on every row of a request, got [1, 2]"
    assert pb_error(pb, responses[5]) == "missing input 'embedding'"
    assert pb_error(pb, responses[6]) == "embedding must be finite, got NaN or inf"
    for i, x, k in ((0, q[:2], 7), (7, q[2:4], 5)):
        out = pb_outputs(pb, responses[i])
        want_scores, want_ids = index_search(model["index"], x, k)
        np.testing.assert_array_equal(out[C.IDS], want_ids)
        np.testing.assert_array_equal(out[C.SCORES], want_scores)
    finalize(instance)


def test_omnisearch_fused_shell(model, pb):
    _, instance = shell(model["repo"], C.OMNISEARCH, pb)
    tower, index = model["tower"], model["index"]
    requests = [pb_request(pb, text=text_array(TEXTS[:2]), k=np.full((2, 1), 4, np.int32)),
                pb_request(pb, text=text_array(["soup"]), k=np.full((1, 1), 0, np.int32)),
                pb_request(pb, k=np.full((1, 1), 3, np.int32)),
                pb_request(pb, text=text_array([b"\xc0\xaf"])),
                pb_request(pb, text=text_array(["x" * 4097])),
                pb_request(pb, text=text_array(TEXTS[5:9])),
                pb_request(pb, text=text_array(["pie"]), k=np.full((1, 1), 60, np.int32))]
    responses = instance.execute(requests)
    assert len(responses) == len(requests)
    assert pb_error(pb, responses[1]) == "k must be in 1..60, got 0"
    assert pb_error(pb, responses[2]) == "missing input 'text'"
    assert pb_error(pb, responses[3]) == "text[0] is not valid UTF-8 (byte 0)"
    assert pb_error(pb, responses[4]) == "text[0] is 4097 bytes, the limit is 4096 bytes"
    for i, rows, k in ((0, TEXTS[:2], 4), (5, TEXTS[5:9], 5), (6, ["pie"], 60)):
        out = pb_outputs(pb, responses[i])
        embedding = tower.encode(rows)
        want_scores, want_ids = index_search(index, embedding, k)
        assert out[C.SCORES].shape == (len(rows), k) and out[C.SCORES].dtype == np.float32
        assert out[C.IDS].dtype == np.int64
        assert_same_answer(index, embedding, out[C.SCORES], out[C.IDS], want_scores, want_ids, EMB_ATOL)
    assert (pb_outputs(pb, responses[6])[C.IDS][0, ROWS:] == -1).all()
    finalize(instance)


def test_fused_shell_refuses_a_row_over_pad_to_alone(model, pb):
    """pad_to below the tokenizer's max length (a config edit): the tokenize step refuses the row
    after the batch is tokenized, and only that request fails."""
    _, instance = shell(model["repo"], C.OMNISEARCH, pb, pad_to="5")
    requests = [pb_request(pb, text=text_array(["tomato soup"])),
                pb_request(pb, text=text_array(["pad thai with tofu"])),  # 6 tokens with [CLS] [SEP]
                pb_request(pb, text=text_array(["apple pie", "chili"]), k=np.full((2, 1), 2, np.int32))]
    responses = instance.execute(requests)
    assert pb_error(pb, responses[1]) == "text has a row of 6 tokens, the limit is 5"
    for i, rows, k in ((0, ["tomato soup"], 5), (2, ["apple pie", "chili"], 2)):
        out = pb_outputs(pb, responses[i])
        embedding = model["tower"].encode(rows)
        want_scores, want_ids = index_search(model["index"], embedding, k)
        assert_same_answer(model["index"], embedding, out[C.SCORES], out[C.IDS], want_scores, want_ids, EMB_ATOL)


# ---------------------------------------------------------------------------------------------
# The fake pb_utils against the real module's functions (when pytriton ships it)
# ---------------------------------------------------------------------------------------------


def _real_pb_utils_python():
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        pytest.skip("needs nvidia-pytriton (it ships triton_python_backend_utils.py)")
    path = Path(spec.origin).parent / "tritonserver" / "backends" / "python" / "triton_python_backend_utils.py"
    if not path.is_file():
        pytest.skip(f"no {path}")
    module_spec = importlib.util.spec_from_file_location("real_triton_python_backend_utils", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_fake_pb_utils_matches_the_real_module_functions():
    real = _real_pb_utils_python()
    pb = fake_pb_utils()
    text = text_array(["crème", "", "中"])
    request = pb_request(pb, text=text, k=np.array([[3], [3], [3]], np.int32))
    for name in ("text", "k", "absent"):
        assert real.get_input_tensor_by_name(request, name) is pb.get_input_tensor_by_name(request, name)
    response = pb.InferenceResponse([pb.Tensor("scores", np.zeros((1, 2), np.float32))])
    assert real.get_output_tensor_by_name(response, "scores") is pb.get_output_tensor_by_name(response, "scores")
    assert real.get_output_tensor_by_name(response, "ids") is None
    assert bytes(real.serialize_byte_tensor(text)) == pb.serialize_byte_tensor(text)
    got = real.deserialize_bytes_tensor(np.frombuffer(pb.serialize_byte_tensor(text), np.uint8).tobytes())
    assert got.tolist() == pb.get_input_tensor_by_name(request, "text").as_numpy().ravel().tolist()
    for dtype in (np.float32, np.int64, np.int32, np.bool_, np.object_):
        assert real.triton_to_numpy_type(real.numpy_to_triton_type(np.dtype(dtype))) == np.dtype(dtype).type


def test_fake_pb_utils_behaves_like_the_stub():
    pb = fake_pb_utils()
    # a BYTES tensor holds what Triton transports: bytes, str rows encoded as UTF-8
    tensor = pb.Tensor("text", np.array([["é"], [b"\xff"]], dtype=object))
    assert tensor.as_numpy().tolist() == [["é".encode()], [b"\xff"]] and tensor.triton_dtype() == "BYTES"
    # non-contiguous input: kept as a C-contiguous copy
    x = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert pb.Tensor("x", x).as_numpy().flags["C_CONTIGUOUS"] and pb.Tensor("x", x).shape() == [3, 2]
    with pytest.raises(ValueError, match="empty string"):
        pb.Tensor("", x)
    with pytest.raises(TypeError, match="not supported"):
        pb.Tensor("x", np.array([["s"]]))  # unicode arrays have no Triton type
    with pytest.raises(TypeError, match="Tensors"):
        pb.InferenceResponse(output_tensors=[x])
    error = pb.TritonError("bad k")
    assert error.code() == pb.TritonError.INTERNAL == 1 and error.message() == "bad k"
    assert pb.TritonError.INVALID_ARG == 3
    response = pb.InferenceResponse(error=pb.TritonError("bad", pb.TritonError.INVALID_ARG))
    assert response.has_error() and response.output_tensors() == []
    with installed_pb_utils(pb) as installed:
        import sys

        assert installed is pb and sys.modules["triton_python_backend_utils"] is pb
    assert sys.modules.get("triton_python_backend_utils") is not pb


# ---------------------------------------------------------------------------------------------
# Several entity types: an index set served by one repository
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def typed(model):
    """A fused repository over an index set: ``pin`` (a sharded index of 2 shards) and ``product``,
    rows drawn so that some scores tie across the two types."""
    from omnikern.index import Int8Index
    from omnikern.sharded_index import ShardedIndex, write_index_set

    rng = np.random.default_rng(7)
    pins = rng.standard_normal((30, DIM)).astype(np.float32)
    products = rng.standard_normal((20, DIM)).astype(np.float32)
    products[0] = pins[4]  # the same vector in both types: a tie that the type order breaks
    pin_index = ShardedIndex.build(torch.from_numpy(pins), torch.arange(100, 130), 2)
    product_index = Int8Index(DIM)
    product_index.add(torch.from_numpy(products), torch.arange(500, 520))
    write_index_set(model["tmp"] / "set", {"pin": pin_index, "product": product_index})
    repo = export_triton(model["tower"], model["tmp"] / "set", model["tmp"] / "repo-typed", max_batch_size=MAX_BATCH,
                         encoder_runtime="torch", pipeline="fused", k_default=5, max_k=60)
    return {"repo": repo, "pin": pin_index, "product": product_index, "pins": pins}


def type_array(value: str, rows: int) -> np.ndarray:
    return np.array([[value.encode()]] * rows, dtype=np.object_)


def test_score_one_type_or_all_merged(typed):
    step = build(Score, typed["repo"] / C.SCORER)
    assert step.types == ["pin", "product"]
    q = np.random.default_rng(8).standard_normal((3, DIM)).astype(np.float32)
    q[0] = typed["pins"][4]
    items = [step.check(q, np.full((3, 1), 7, np.int32), type_array("product", 3)),
             step.check(q, np.full((3, 1), 7, np.int32)),
             step.check(q[:1], np.full((1, 1), 60, np.int32), type_array("pin", 1))]
    (s1, i1, t1), (s2, i2, t2), (s3, i3, t3) = step.run(items)
    want = index_search(typed["product"], q, 7)
    np.testing.assert_array_equal(i1, want[1])
    np.testing.assert_array_equal(s1, want[0])
    assert set(t1.ravel().tolist()) == {b"product"}
    # All types: a plain merge of the per-type lists (score, then type order, then each list's order).
    pin, product = index_search(typed["pin"], q, 7), index_search(typed["product"], q, 7)
    for row in range(3):
        pool = [(-pin[0][row, j], 0, j, pin[1][row, j], b"pin") for j in range(7)]
        pool += [(-product[0][row, j], 1, j, product[1][row, j], b"product") for j in range(7)]
        best = sorted(pool)[:7]
        assert i2[row].tolist() == [b[3] for b in best] and t2[row].tolist() == [b[4] for b in best]
        np.testing.assert_array_equal(s2[row], np.array([-b[0] for b in best], np.float32))
    # The tied vector: the pin first (type order), then the product.
    assert i2[0, :2].tolist() == [104, 500] and t2[0, :2].tolist() == [b"pin", b"product"]
    # 60 > 30 pins: gaps have id -1 and type "".
    assert (i3[0, 30:] == -1).all() and set(t3[0, 30:].tolist()) == {b""} and set(t3[0, :30].tolist()) == {b"pin"}


def test_entity_type_errors(typed, model, tmp_path):
    step = build(Score, typed["repo"] / C.SCORER)
    q = np.zeros((2, DIM), np.float32)
    with pytest.raises(RequestError, match=r"^entity_type 'board' is not served; the served entity types are "
                                           r"\['pin', 'product'\]$"):
        step.check(q, None, type_array("board", 2))
    with pytest.raises(RequestError, match=r"entity_type must have shape \(2, 1\), one per row"):
        step.check(q, None, type_array("pin", 1))
    mixed = np.array([[b"pin"], [b"product"]], dtype=np.object_)
    with pytest.raises(RequestError, match="entity_type must be the same on every row"):
        step.check(q, None, mixed)
    with pytest.raises(RequestError, match="entity_type must be BYTES, got int32"):
        step.check(q, None, np.zeros((2, 1), np.int32))
    # A single-index repository serves the type "item".
    single = build(Score, model["repo"] / C.SCORER)
    assert single.types == ["item"] and single.check(q, None, type_array("item", 2))[2] == "item"
    # An index set of another width is refused at export, naming the type.
    from omnikern.index import Int8Index
    from omnikern.sharded_index import write_index_set

    wide = Int8Index(DIM + 1)
    wide.add(torch.ones(2, DIM + 1), torch.arange(2))
    write_index_set(tmp_path / "wide", {"board": wide})
    with pytest.raises(ValueError, match=r"entity type 'board'\) has dim 17 but the query tower outputs 16"):
        export_triton(model["tower"], tmp_path / "wide", tmp_path / "r", encoder_runtime="torch")
    with pytest.raises(ValueError, match="is a directory without manifest.json or index_set.json"):
        export_triton(model["tower"], tmp_path, tmp_path / "r2", encoder_runtime="torch")


def test_fused_search_by_entity_type(typed, model):
    step = build(Search, typed["repo"] / C.OMNISEARCH)
    items = [step.check(text_array(TEXTS[:2]), None, type_array("pin", 2)), step.check(text_array(TEXTS[2:4]), None)]
    (s1, i1, t1), (s2, i2, t2) = step.run(items)
    assert set(i1.ravel().tolist()) <= set(range(100, 130)) and set(t1.ravel().tolist()) == {b"pin"}
    assert set(t2.ravel().tolist()) <= {b"pin", b"product"}
    # The same embeddings through the scorer alone give the same answer.
    scorer = build(Score, typed["repo"] / C.SCORER)
    tokens = build(Tokenize, model["repo"] / C.TOKENIZER).run([text_array(TEXTS[2:4])[:, 0].tolist()])
    (embedding,) = build(Encode, model["repo"] / C.QUERY_ENCODER).run(tokens)[0]
    (want,) = scorer.run([(embedding, 5, None)])
    np.testing.assert_array_equal(i2, want[1])
    np.testing.assert_array_equal(t2, want[2])
