"""Shared assertions for the tests."""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import torch


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> None:
    """``torch.testing.assert_close`` that also prints the worst mismatches (index, got, want)."""
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)
    except AssertionError as error:
        diff = (actual.double() - expected.double()).abs().flatten()
        worst = torch.topk(diff.nan_to_num(float("inf")), k=min(5, diff.numel())).indices
        rows = [
            f"  [{tuple(int(v) for v in torch.unravel_index(i, actual.shape))}] "
            f"got {actual.flatten()[i].item():.6g} want {expected.flatten()[i].item():.6g}"
            for i in worst
        ]
        raise AssertionError(f"{name} mismatch\n" + "\n".join(rows) + f"\n{error}") from None


def assert_no_worse_than_torch(
    actual: torch.Tensor, torch_result: torch.Tensor, truth: torch.Tensor, tol: float, name: str = ""
) -> None:
    """The low-precision rule: |actual − truth| ≤ |torch − truth| + tol, elementwise."""
    err = (actual.double() - truth.double()).abs()
    bound = (torch_result.double() - truth.double()).abs() + tol
    bad = err > bound
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())} elements worse than torch + {tol}; first at {idx}: "
            f"got {actual[tuple(idx)].item():.6g}, torch {torch_result[tuple(idx)].item():.6g}, "
            f"truth {truth[tuple(idx)].item():.6g}"
        )


def assert_same_answer(index, embedding, scores, ids, expected_scores, expected_ids, eps: float, k: int | None = None) -> None:
    """A search answer agrees with the in-process one for the in-process ``embedding`` (Q, D):
    ids equal up to swaps among near-ties, scores within the bound that a query move of ``eps``
    per coordinate allows (:mod:`omnikern.parity`). For answers from another process or runtime,
    whose embeddings differ from the in-process ones by rounding (``eps`` is the embedding
    tolerance the tests assert elsewhere)."""
    import numpy as np

    from omnikern.parity import compare_topk, score_tolerance

    tol = score_tolerance(index, np.asarray(embedding, dtype=np.float64), eps)
    result = compare_topk(expected_scores, expected_ids, scores, ids, tol)
    assert result.ok, result.summary()


def assert_group_gone(pgid: int) -> None:
    """No process of the server's process group is left (the server and its python-backend stubs)."""
    from omnikern.serve.server import group_processes

    leftover = group_processes(pgid)
    assert leftover == [], f"processes left behind in group {pgid}: {leftover}"


def spawn_ranks(script: str, world: int, timeout_s: float = 240) -> list[str]:
    """Runs ``script`` (``python -c``) as ``world`` torch.distributed ranks on loopback (the env://
    variables torchrun sets, one OpenMP thread each) and returns each rank's output, after checking
    that every rank exited 0."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    return outputs


def running_server(repo, startup_timeout_s: float):
    """Starts the real tritonserver on ``repo``, yields it, and always stops it, checking that no
    process of its group is left behind. For module-scoped fixtures: ``yield from running_server(...)``."""
    from omnikern.serve import TritonServer

    triton = TritonServer(repo, startup_timeout_s=startup_timeout_s, stop_timeout_s=5)
    try:
        triton.start()
        yield triton
    finally:
        pgid = triton.pid
        triton.stop()
        if pgid is not None:
            assert_group_gone(pgid)


def minilm_tower_and_index(directory, rows: int):
    """The serving tests' model: the MiniLM query tower with a seeded projection (zero-shot) and an
    Int8Index of ``rows`` seeded random unit vectors (ids ``i·1000 + 7``) saved as
    ``directory/index.safetensors``. Returns ``(tower, index)``."""
    from omnikern import Int8Index
    from omnikern.models.encoders import QueryTower, minilm_path
    from omnikern.text.wordpiece import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.from_tokenizer_json(minilm_path() / "tokenizer.json")
    torch.manual_seed(0)
    tower = QueryTower.from_pretrained(tokenizer=tokenizer).eval()
    index = Int8Index(tower.output_dim)
    generator = torch.Generator().manual_seed(1)
    index.add(torch.nn.functional.normalize(torch.randn(rows, tower.output_dim, generator=generator), dim=1),
              torch.arange(rows, dtype=torch.int64) * 1000 + 7)
    index.save(directory / "index.safetensors")
    return tower, index


# ---------------------------------------------------------------------------------------------
# A stand-in for triton_python_backend_utils (the python backend's ``pb_utils``), in-process
# ---------------------------------------------------------------------------------------------

# TRITONSERVER_Error_Code (tritonserver.h), the values the stub's TritonError exposes.
PB_ERROR_CODES = {"UNKNOWN": 0, "INTERNAL": 1, "NOT_FOUND": 2, "INVALID_ARG": 3, "UNAVAILABLE": 4,
                  "UNSUPPORTED": 5, "ALREADY_EXISTS": 6, "CANCELLED": 7}
# numpy_to_triton_type of the python backend: the dtypes a pb_utils.Tensor can hold.
PB_DTYPES = {np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16",
             np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64", np.dtype(np.int8): "INT8",
             np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
             np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
             np.dtype(np.object_): "BYTES"}


def _serialize_bytes(array: np.ndarray) -> bytes:
    """The python backend's ``serialize_byte_tensor``: each element (bytes as is, anything else
    ``str(x)`` in UTF-8) as a little-endian uint32 length and its bytes, in C order."""
    import struct

    out = []
    for item in array.reshape(-1):
        data = item if type(item) is bytes else str(item).encode("utf-8")
        out += [struct.pack("<I", len(data)), data]
    return b"".join(out)


def _deserialize_bytes(data: bytes, shape) -> np.ndarray:
    """``deserialize_bytes_tensor`` + reshape: an object array of ``bytes``."""
    import struct

    items, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        items.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def fake_pb_utils() -> types.ModuleType:
    """A ``triton_python_backend_utils`` module that behaves like the python-backend stub's, as far
    as omnikern's models use it (the stub fills the real module with C++ classes; their Python API
    is mirrored here, methods where the real ones are methods):

    - ``Tensor(name, array)``: an empty name or a dtype the backend has no Triton type for raises;
      ``name()``, ``as_numpy()``, ``shape()``, ``triton_dtype()``, ``is_cpu()``. Like the stub, it
      keeps a C-contiguous copy, and a BYTES tensor keeps what Triton would see: the elements
      serialised (bytes as is, anything else ``str()`` in UTF-8) and read back as ``bytes``.
    - ``InferenceRequest(inputs, requested_output_names=(), request_id="", model_name="")``:
      ``inputs()``, ``requested_output_names()``, ``request_id()``, ``model_name()``.
    - ``InferenceResponse(output_tensors=[], error=None)``: ``output_tensors()``, ``has_error()``,
      ``error()``; the tensors must be ``Tensor`` objects and the error a ``TritonError``.
    - ``TritonError(message, code=TritonError.INTERNAL)``: ``message()``, ``code()``; the codes
      (``INVALID_ARG`` ...) are class attributes with the server's numbers.
    - ``get_input_tensor_by_name``, ``get_output_tensor_by_name``: the real module's functions
      (first tensor of that name, else None).

    Requests are most easily made with :func:`pb_request`.
    """
    pb = types.ModuleType("triton_python_backend_utils")
    pb.__doc__ = "In-process stand-in for the Triton python backend's utilities (python_tests/helpers.py)."

    class TritonError:
        def __init__(self, message, code=PB_ERROR_CODES["INTERNAL"]):
            if message is None or code is None:
                raise TypeError("TritonError(message, code): neither may be None")
            if code not in PB_ERROR_CODES.values():
                raise TypeError(f"TritonError code must be a TritonError code, got {code!r}")
            self._message, self._code = str(message), code

        def message(self):
            return self._message

        def code(self):
            return self._code

        def __repr__(self):
            return f"TritonError({self._message!r}, code={self._code})"

    for _name, _value in PB_ERROR_CODES.items():
        setattr(TritonError, _name, _value)

    class Tensor:
        def __init__(self, name, array):
            if not isinstance(name, str):
                raise TypeError(f"Tensor name must be a str, got {type(name).__name__}")
            if name == "":
                raise ValueError("Tensor name cannot be an empty string.")
            if not isinstance(array, np.ndarray):
                raise TypeError(f"Tensor {name!r} needs a numpy array, got {type(array).__name__}")
            if array.dtype.type is np.bytes_:
                array = array.astype(object)
            if array.dtype not in PB_DTYPES:
                raise TypeError(f"Tensor {name!r}: numpy dtype {array.dtype} is not supported.")
            self._name = name
            if array.dtype == np.object_:
                self._array = _deserialize_bytes(_serialize_bytes(array), array.shape)
            else:
                self._array = np.array(array, order="C", copy=True)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

        def shape(self):
            return list(self._array.shape)

        def triton_dtype(self):
            return PB_DTYPES[self._array.dtype]

        def is_cpu(self):
            return True

        def __repr__(self):
            return f"Tensor({self._name!r}, {self.triton_dtype()} {self.shape()})"

    class InferenceRequest:
        def __init__(self, inputs=(), requested_output_names=(), request_id="", model_name=""):
            inputs = list(inputs)
            for tensor in inputs:
                if not isinstance(tensor, Tensor):
                    raise TypeError(f"InferenceRequest inputs must be Tensors, got {type(tensor).__name__}")
            self._inputs, self._outputs = inputs, list(requested_output_names)
            self._id, self._model = request_id, model_name

        def inputs(self):
            return list(self._inputs)

        def requested_output_names(self):
            return list(self._outputs)

        def request_id(self):
            return self._id

        def model_name(self):
            return self._model

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None, parameters=""):
            tensors = list(output_tensors)
            for tensor in tensors:
                if not isinstance(tensor, Tensor):
                    raise TypeError(f"InferenceResponse output_tensors must be Tensors, got {type(tensor).__name__}")
            if error is not None and not isinstance(error, TritonError):
                raise TypeError(f"InferenceResponse error must be a TritonError or None, got {type(error).__name__}")
            self._tensors, self._error = tensors, error

        def output_tensors(self):
            return list(self._tensors)

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    def get_input_tensor_by_name(inference_request, name):
        for tensor in inference_request.inputs():
            if tensor.name() == name:
                return tensor
        return None

    def get_output_tensor_by_name(inference_response, name):
        for tensor in inference_response.output_tensors():
            if tensor.name() == name:
                return tensor
        return None

    pb.TritonError, pb.Tensor, pb.InferenceRequest, pb.InferenceResponse = (
        TritonError, Tensor, InferenceRequest, InferenceResponse)
    pb.get_input_tensor_by_name, pb.get_output_tensor_by_name = get_input_tensor_by_name, get_output_tensor_by_name
    pb.serialize_byte_tensor = lambda array: _serialize_bytes(np.asarray(array)) if np.asarray(array).size else ()
    return pb


@contextlib.contextmanager
def installed_pb_utils(pb: types.ModuleType | None = None):
    """Puts ``pb`` (default: a new :func:`fake_pb_utils`) in ``sys.modules`` as
    ``triton_python_backend_utils`` for the ``with`` block and yields it; whatever was there before
    (or nothing) is put back afterwards. For a fixture: ``with installed_pb_utils() as pb: yield pb``."""
    pb = fake_pb_utils() if pb is None else pb
    name = "triton_python_backend_utils"
    missing = object()
    before = sys.modules.get(name, missing)
    sys.modules[name] = pb
    try:
        yield pb
    finally:
        if before is missing:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = before


def pb_request(pb: types.ModuleType, **inputs) -> object:
    """``pb.InferenceRequest`` whose inputs are the keyword arguments (name=numpy array) that are
    not None, e.g. ``pb_request(pb, text=np.array([[b"soup"]], dtype=object))``."""
    return pb.InferenceRequest([pb.Tensor(name, array) for name, array in inputs.items() if array is not None])


def pb_outputs(pb: types.ModuleType, response) -> dict:
    """``{name: array}`` of a successful response; raises AssertionError with the message of an error response."""
    if response.has_error():
        raise AssertionError(f"error response: {response.error().message()}")
    return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}


def pb_error(pb: types.ModuleType, response) -> str:
    """The message of an INVALID_ARG error response; AssertionError for a success or another code."""
    assert response.has_error(), f"expected an error, got outputs {[t.name() for t in response.output_tensors()]}"
    assert response.error().code() == pb.TritonError.INVALID_ARG, response.error()
    assert response.output_tensors() == []
    return response.error().message()


def triton_model_args(model_dir, instance_kind: str = "CPU", device_id: int = 0, version: int = 1) -> dict:
    """The ``args`` dict tritonserver gives ``TritonPythonModel.initialize`` for the model whose
    directory (holding config.pbtxt) is ``model_dir``: ``model_config`` is the config as JSON (proto
    field names, ``parameters`` as ``{key: {"string_value": ...}}``), parsed with tritonclient's
    ``model_config_pb2`` when it is installed, else the ``parameters`` lines alone."""
    import json
    import re
    from pathlib import Path

    model_dir = Path(model_dir)
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2

        config = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()),
                                           preserving_proto_field_name=True)
    except ImportError:
        pattern = r'parameters \{ key: "((?:[^"\\]|\\.)*)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}'
        config = {"name": model_dir.name,
                  "parameters": {k: {"string_value": v} for k, v in re.findall(pattern, text)}}
    return {
        "model_config": json.dumps(config),
        "model_instance_kind": instance_kind,
        "model_instance_name": f"{model_dir.name}_0_0",
        "model_instance_device_id": str(device_id),
        "model_repository": str(model_dir),
        "model_version": str(version),
        "model_name": model_dir.name,
    }


def load_model_py(path, pb: types.ModuleType):
    """Imports a generated ``model.py`` (a fresh module each call) with ``pb`` installed as
    ``triton_python_backend_utils`` while it imports; returns the module (it keeps ``pb`` as its
    ``pb_utils``)."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"model_py_{path.parent.parent.name}_{id(pb)}", path)
    module = importlib.util.module_from_spec(spec)
    with installed_pb_utils(pb):
        spec.loader.exec_module(module)
    return module


# Words of the tiny serving model's vocabulary (after [PAD] [UNK] [CLS] [SEP] [MASK]).
TINY_WORDS = ("tomato", "soup", "chocolate", "chip", "cookie", "apple", "pie", "vegan", "chili", "pad", "thai",
              "with", "tofu", "fish", "and", "chips", "ramen", "creme", "brulee", "salad", "a", "b", "c", "d",
              "e", "f", "g", "h", "##s", "##y", "##er", "!", "&", "'", "中")


def tiny_tower_and_index(directory, rows: int = 40, max_length: int = 12, dim: int = 16):
    """A small query tower for the serving tests: omnikern's WordPiece over :data:`TINY_WORDS`
    (``max_length`` tokens), a 1-layer BERT of width 32 with seeded random weights, mean pooling,
    a seeded projection to ``dim``; and an Int8Index of ``rows`` seeded random unit vectors (ids
    ``i·1000 + 7``, plus one negative id) saved as ``directory/index.safetensors``. Returns
    ``(tower, index)``; building both takes well under a second."""
    import transformers

    from omnikern import Int8Index
    from omnikern.models.encoders import QueryTower
    from omnikern.text.wordpiece import WordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    tokenizer = WordPieceTokenizer(list(zip(vocab, range(len(vocab)))), max_length=max_length)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tower = QueryTower(transformers.BertModel(config), tokenizer=tokenizer, output_dim=dim).eval()
    index = Int8Index(dim)
    generator = torch.Generator().manual_seed(1)
    ids = torch.arange(rows, dtype=torch.int64) * 1000 + 7
    ids[-1] = -5  # ids may be negative (contract docstring)
    index.add(torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1), ids)
    index.save(directory / "index.safetensors")
    return tower, index


# ---------------------------------------------------------------------------------------------
# A generated dataset in the documented format (docs/data-format.md), unlike the recipe catalogue
# ---------------------------------------------------------------------------------------------

def shop_rows(*args, **kwargs):
    """The generated shop dataset's rows (:func:`omnikern.data.shop.shop_rows`)."""
    from omnikern.data.shop import shop_rows as rows

    return rows(*args, **kwargs)


def write_shop_dataset(directory, rows: dict | None = None, jsonl: bool = False, **kwargs):
    """Writes :func:`shop_rows` (or ``rows``) as a dataset at ``directory`` and returns ``(path, rows)``.

    Parquet through ``write_dataset`` (``kwargs``: ``rows_per_file``, ``row_group_rows``), or with
    ``jsonl=True`` one ``part.jsonl`` per split."""
    import json
    from pathlib import Path

    from omnikern.data.dataset import write_dataset

    rows = rows if rows is not None else shop_rows()
    directory = Path(directory)
    if not jsonl:
        return write_dataset(directory, rows["entities"], rows["train"], rows["eval"], **kwargs), rows
    for split in ("entities", "train", "eval"):
        (directory / split).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(row) for row in rows[split]]
        (directory / split / "part.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory, rows
