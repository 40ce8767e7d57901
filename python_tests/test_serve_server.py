"""A real tritonserver (from nvidia-pytriton) serving a python-backend model, over HTTP and gRPC.

The server tests are skipped with a reason when the ``serve`` extra (nvidia-pytriton, tritonclient)
is missing. The repository-writer tests and the in-process test of the model's ``execute`` run
everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_group_gone, running_server

from omnikern.serve import (
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    TritonServer,
    TritonServerError,
    write_model,
)
from omnikern.serve.server import _shm_regions, group_processes

HAVE_SERVE = all(importlib.util.find_spec(name) is not None for name in ("pytriton", "tritonclient"))
needs_server = pytest.mark.skipif(
    not HAVE_SERVE or not sys.platform.startswith("linux"),
    reason="needs the serve extra (pip install 'omnikern[serve]': nvidia-pytriton, tritonclient[http,grpc]) on Linux",
)

# ---------------------------------------------------------------------------------------------
# The model under test: row-wise L2 normalisation, numpy only.
# ---------------------------------------------------------------------------------------------

L2_MODEL_PY = '''"""Row-wise L2 normalisation: EMBEDDINGS (B, D) FP32 -> NORMALIZED (B, D) FP32, numpy only."""

import numpy as np
import triton_python_backend_utils as pb_utils

INPUT = "EMBEDDINGS"
OUTPUT = "NORMALIZED"
EPS = 1e-12


def _problem(x):
    """Why a request's tensor cannot be served, or None."""
    if x is None:
        return f"missing input {INPUT}"
    if x.ndim != 2 or x.shape[1] == 0:
        return f"{INPUT} must have shape (batch, dim) with dim >= 1, got {x.shape}"
    if not np.isfinite(x).all():
        return f"{INPUT} must be finite, got {int((~np.isfinite(x)).sum())} NaN/inf values"
    return None


class TritonPythonModel:
    def initialize(self, args):
        self.executions = 0

    def execute(self, requests):
        responses = [None] * len(requests)
        by_dim = {}  # requests of one width are stacked and normalised together
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
            x = None if tensor is None else tensor.as_numpy()
            problem = _problem(x)
            if problem is not None:
                # One bad request gets its own error; the others in the batch still succeed.
                error = pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)
            else:
                by_dim.setdefault(x.shape[1], []).append((i, x))
        for group in by_dim.values():
            stacked = np.concatenate([x for _, x in group]).astype(np.float32, copy=False)
            # y = x / max(||x||_2, eps), one pass for the whole batch
            norms = np.sqrt(np.einsum("ij,ij->i", stacked, stacked))[:, None]
            normalized = stacked / np.maximum(norms, EPS)
            splits = np.cumsum([x.shape[0] for _, x in group])[:-1]
            for (i, _), part in zip(group, np.split(normalized, splits)):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, part)])
        self.executions += 1
        return responses
'''

L2_CONFIG = ModelConfig(
    name="l2_normalize",
    inputs=[TensorSpec("EMBEDDINGS", np.float32, [-1])],
    outputs=[TensorSpec("NORMALIZED", np.float32, [-1])],
    max_batch_size=64,
    # 20 ms lets a burst of concurrent requests meet in one execute().
    dynamic_batching=DynamicBatching(max_queue_delay_us=20_000),
)


def l2_normalize_np(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------------
# Repository writer (no server)
# ---------------------------------------------------------------------------------------------


def test_config_pbtxt_golden():
    config = ModelConfig(
        name="enc",
        inputs=[TensorSpec("TEXT", bytes, [1]), TensorSpec("K", "INT32", [1], optional=True)],
        outputs=[TensorSpec("EMB", np.float16, [-1, 4])],
        max_batch_size=8,
        dynamic_batching=DynamicBatching(max_queue_delay_us=100, preferred_batch_sizes=(4, 8)),
        instance_count=2,
        parameters={"note": 'say "hi"'},
    )
    assert config.to_pbtxt() == (
        'name: "enc"\n'
        'backend: "python"\n'
        "max_batch_size: 8\n"
        "input [\n"
        '  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] },\n'
        '  { name: "K" data_type: TYPE_INT32 dims: [ 1 ] optional: true }\n'
        "]\n"
        "output [\n"
        '  { name: "EMB" data_type: TYPE_FP16 dims: [ -1, 4 ] }\n'
        "]\n"
        "dynamic_batching {\n"
        "  preferred_batch_size: [ 4, 8 ]\n"
        "  max_queue_delay_microseconds: 100\n"
        "}\n"
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        'parameters { key: "note" value: { string_value: "say \\"hi\\"" } }\n'
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TensorSpec("bad name", np.float32, [1]), "name"),
        (lambda: TensorSpec("X", np.complex64, [1]), "dtype"),
        (lambda: TensorSpec("X", np.float32, [0]), "dims"),
        (lambda: TensorSpec("X", np.float32, []), "dims"),
        (lambda: ModelConfig("../escape", [TensorSpec("X", "FP32", [1])], [TensorSpec("Y", "FP32", [1])]), "name"),
        (lambda: ModelConfig("m", [], [TensorSpec("Y", "FP32", [1])]), "input"),
        (lambda: ModelConfig("m", [TensorSpec("X", "FP32", [1])], [TensorSpec("X", "FP32", [1])]), "unique"),
        (lambda: ModelConfig("m", [TensorSpec("X", "FP32", [1])], [TensorSpec("Y", "FP32", [1])], max_batch_size=-1),
         "max_batch_size"),
        (lambda: ModelConfig("m", [TensorSpec("X", "FP32", [1])], [TensorSpec("Y", "FP32", [1])],
                             dynamic_batching=DynamicBatching()), "max_batch_size"),
        (lambda: ModelConfig("m", [TensorSpec("X", "FP32", [1])], [TensorSpec("Y", "FP32", [1])], instance_kind="GPU"),
         "instance_kind"),
        (lambda: ModelConfig("m", [TensorSpec("X", "FP32", [1])], [TensorSpec("Y", "FP32", [1])], instance_count=0),
         "instance_count"),
    ],
)
def test_config_validation_names_the_field(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_write_model_lays_out_files(tmp_path):
    model_dir = write_model(tmp_path, L2_CONFIG, L2_MODEL_PY, version=3, extra_files={"assets/vocab.txt": "a\nb\n"})
    assert model_dir == tmp_path / "l2_normalize"
    assert (model_dir / "config.pbtxt").read_text() == L2_CONFIG.to_pbtxt()
    assert (model_dir / "3" / "model.py").read_text() == L2_MODEL_PY
    assert (model_dir / "3" / "assets" / "vocab.txt").read_text() == "a\nb\n"
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # temporary files were all renamed
    with pytest.raises(ValueError, match="version"):
        write_model(tmp_path, L2_CONFIG, L2_MODEL_PY, version=0)
    with pytest.raises(ValueError, match="extra_files"):
        write_model(tmp_path, L2_CONFIG, L2_MODEL_PY, extra_files={"../../evil.py": ""})
    with pytest.raises(ValueError, match="TritonPythonModel"):
        write_model(tmp_path, L2_CONFIG, "print('no model')")


# ---------------------------------------------------------------------------------------------
# The model's execute() in-process, with a stand-in for triton_python_backend_utils
# ---------------------------------------------------------------------------------------------


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, message, code=0):
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error = list(output_tensors), error

    pb.TritonError, pb.Tensor, pb.InferenceResponse = TritonError, Tensor, InferenceResponse
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    return pb


def test_model_execute_in_process(tmp_path, monkeypatch):
    """One execute() over a batch with a bad request: it alone gets INVALID_ARG; the rest are right,
    including requests of another width in the same batch."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    path = tmp_path / "model.py"
    path.write_text(L2_MODEL_PY)
    spec = importlib.util.spec_from_file_location("l2_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pb = sys.modules["triton_python_backend_utils"]

    rng = np.random.default_rng(0)
    good = [rng.standard_normal((n, d)).astype(np.float32) for n, d in ((1, 5), (3, 5), (2, 7))]
    bad = np.array([[1.0, np.nan, 2.0, 0.0, 1.0]], np.float32)
    zero = np.zeros((2, 5), np.float32)
    requests = [{"EMBEDDINGS": pb.Tensor("EMBEDDINGS", x)} for x in (good[0], bad, good[1], zero, good[2])]
    requests.append({})  # missing input

    model = module.TritonPythonModel()
    model.initialize({})
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    assert responses[1].error.code == pb.TritonError.INVALID_ARG and "finite" in responses[1].error.message
    assert responses[5].error.code == pb.TritonError.INVALID_ARG and "missing" in responses[5].error.message
    for index, x in ((0, good[0]), (2, good[1]), (3, zero), (4, good[2])):
        assert responses[index].error is None
        (out,) = responses[index].output_tensors
        assert out.name == "NORMALIZED" and out.array.dtype == np.float32
        np.testing.assert_allclose(out.array, l2_normalize_np(x), rtol=1e-6, atol=1e-7)
    assert model.executions == 1


# ---------------------------------------------------------------------------------------------
# The real server
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, L2_CONFIG, L2_MODEL_PY)
    yield from running_server(repo, startup_timeout_s=60)


@pytest.fixture(scope="module")
def clients(server):
    """One HTTP and one gRPC client, closed at the end (an unclosed client leaks its socket)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    pairs = [(httpclient, httpclient.InferenceServerClient(server.url_http)),
             (grpcclient, grpcclient.InferenceServerClient(server.url_grpc))]
    yield pairs
    for _, client in pairs:
        client.close()


def _infer(module, client, x: np.ndarray, datatype: str = "FP32"):
    tensor = module.InferInput("EMBEDDINGS", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer("l2_normalize", [tensor]).as_numpy("NORMALIZED")


@needs_server
def test_server_runs_on_loopback_in_its_own_group(server):
    assert server.is_alive()
    assert server.url_http.startswith("127.0.0.1:") and server.url_grpc.startswith("127.0.0.1:")
    assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
    members = group_processes(server.pid)
    assert server.pid in members and len(members) >= 2, "the python backend stub runs in the server's group"
    log = server.read_log()
    assert "Started HTTPService at 127.0.0.1" in log and "Started GRPCInferenceService at 127.0.0.1" in log


@needs_server
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 384), (2, 257)])
def test_http_and_grpc_match_numpy(server, clients, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for module, client in clients:
        got = _infer(module, client, x)
        assert got.dtype == np.float32 and got.shape == shape, module.__name__
        np.testing.assert_allclose(got, l2_normalize_np(x), rtol=1e-6, atol=1e-7, err_msg=module.__name__)


@needs_server
def test_batch_larger_than_max_batch_size_is_rejected(server, clients):
    from tritonclient.utils import InferenceServerException

    x = np.ones((L2_CONFIG.max_batch_size + 1, 4), np.float32)
    for module, client in clients:
        with pytest.raises(InferenceServerException, match="batch"):
            _infer(module, client, x)


@needs_server
def test_concurrent_burst_with_one_bad_request(server, clients):
    """Requests sent together meet in the dynamic batcher; the NaN one fails with INVALID_ARG, the others
    are answered correctly, and the server keeps answering."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.url_http, concurrency=6)
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((2, 8)).astype(np.float32) for _ in range(6)]
    inputs[3][1, 4] = np.nan
    pending = []
    for x in inputs:
        tensor = httpclient.InferInput("EMBEDDINGS", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        pending.append(client.async_infer("l2_normalize", [tensor]))
    for i, (x, request) in enumerate(zip(inputs, pending)):
        if i == 3:
            with pytest.raises(InferenceServerException, match="must be finite"):
                request.get_result()
        else:
            np.testing.assert_allclose(request.get_result().as_numpy("NORMALIZED"), l2_normalize_np(x), rtol=1e-6, atol=1e-7)
    client.close()
    for module, c in clients:
        np.testing.assert_allclose(_infer(module, c, np.ones((1, 4), np.float32)), np.full((1, 4), 0.5), rtol=1e-6)


@needs_server
@pytest.mark.parametrize(
    "x, datatype, match",
    [
        (np.ones((2, 3), np.float64), "FP64", "data-type|datatype|FP64"),  # checked by Triton itself
        (np.ones((2, 0), np.float32), "FP32", "dim >= 1"),  # checked by model.py
        (np.array([[1.0, np.inf]], np.float32), "FP32", "must be finite"),
    ],
)
def test_malformed_requests_get_errors_and_server_keeps_answering(server, clients, x, datatype, match):
    from tritonclient.utils import InferenceServerException

    for module, client in clients:
        with pytest.raises(InferenceServerException, match=match):
            _infer(module, client, x, datatype)
        good = np.array([[3.0, 4.0]], np.float32)
        np.testing.assert_allclose(_infer(module, client, good), [[0.6, 0.8]], rtol=1e-6)
    assert server.is_alive()


# ---------------------------------------------------------------------------------------------
# Start-up failures: fail fast with the log, never hang, leave nothing behind
# ---------------------------------------------------------------------------------------------


def _broken_repo(root: Path, body: str) -> Path:
    source = L2_MODEL_PY.replace("    def initialize(self, args):\n", "    def initialize(self, args):\n" + body)
    write_model(root, L2_CONFIG, source)
    return root


@needs_server
def test_broken_model_fails_fast_with_the_log(tmp_path):
    repo = _broken_repo(tmp_path / "repo", "        raise RuntimeError('omnikern-test: cannot load weights')\n")
    triton = TritonServer(repo, startup_timeout_s=60, stop_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(TritonServerError, match="omnikern-test: cannot load weights") as error:
        triton.start()
    assert time.monotonic() - started < 30, "a model that cannot load must not wait for the deadline"
    assert "exited with code" in str(error.value)
    errors = str(error.value).split("--- errors ---")[1].split("--- tail of")[0]
    assert "omnikern-test: cannot load weights" in errors, "the failed load comes first, not buried in the tail"
    assert not triton.is_alive()
    assert_group_gone(triton.last_pid)
    triton.stop()


@needs_server
def test_model_that_never_loads_hits_the_deadline(tmp_path):
    repo = _broken_repo(tmp_path / "repo", "        import time; time.sleep(600)\n")
    triton = TritonServer(repo, startup_timeout_s=3, stop_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(TritonServerError, match="not ready after 3 s") as error:
        triton.start()
    assert time.monotonic() - started < 3 + 2 * 2 + 5
    assert "tritonserver.log" in str(error.value)
    assert not triton.is_alive()
    assert_group_gone(triton.last_pid)
    triton.stop()


@needs_server
def test_interrupt_inside_with_stops_the_whole_group(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, L2_CONFIG, L2_MODEL_PY)
    with pytest.raises(KeyboardInterrupt):
        with TritonServer(repo, stop_timeout_s=5) as triton:
            pgid = triton.pid
            assert len(group_processes(pgid)) >= 2
            regions = _shm_regions(pgid)
            assert regions and all(Path("/dev/shm", r).exists() for r in regions)
            # An orphaned region (as a killed stub leaves) appearing while the server runs is removed too.
            orphan = Path("/dev/shm", f"triton_python_backend_shm_region_omnikern-test-{os.getpid()}")
            orphan.write_bytes(b"\0" * 64)
            regions.append(orphan.name)
            raise KeyboardInterrupt
    assert_group_gone(pgid)
    assert not any(Path("/dev/shm", r).exists() for r in regions), "shared-memory regions left behind"
    assert triton.log_path is None  # the temporary work dir is removed
    triton.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        _ = triton.url_http
