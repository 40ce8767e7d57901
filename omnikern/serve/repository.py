"""Writing Triton model repositories: ``<repo>/<name>/config.pbtxt`` + ``<repo>/<name>/<version>/model.py``.

Generic helpers for one model at a time (name, backend, typed inputs/outputs, batching, instance
groups); the exporter of omnikern's own models builds on them. Every file is written to a temporary
name in its directory and renamed, so a server scanning the repository never sees half a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnikern._atomic import write_text_atomic
from omnikern._checks import check_int

__all__ = ["DynamicBatching", "ModelConfig", "TensorSpec", "triton_dtype", "write_model"]

# numpy dtype -> Triton's data_type (TYPE_STRING carries bytes/str as numpy object arrays).
_NUMPY_TO_TRITON = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.uint16): "TYPE_UINT16",
    np.dtype(np.uint32): "TYPE_UINT32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.object_): "TYPE_STRING",
}
_TRITON_TYPES = frozenset(_NUMPY_TO_TRITON.values()) | {"TYPE_BF16"}
_INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO", "KIND_MODEL")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def triton_dtype(dtype) -> str:
    """Returns Triton's ``TYPE_*`` name for a numpy dtype, ``"FP32"``/``"TYPE_FP32"``, or ``bytes``/``str``.

    Raises:
        TypeError: there is no Triton type for ``dtype``.
    """
    if isinstance(dtype, str):
        name = dtype.upper() if dtype.upper().startswith("TYPE_") else "TYPE_" + dtype.upper()
        if name == "TYPE_BYTES":
            name = "TYPE_STRING"
        if name in _TRITON_TYPES:
            return name
    if dtype in (bytes, str):
        return "TYPE_STRING"
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is not None and resolved in _NUMPY_TO_TRITON:
        return _NUMPY_TO_TRITON[resolved]
    raise TypeError(f"dtype must be a numpy dtype or Triton type name with a Triton equivalent, got {dtype!r}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``name``, data type, and dims *without* the batch dimension (-1 = any)."""

    name: str
    dtype: object
    dims: Sequence[int]
    optional: bool = False  # inputs only: the request may leave it out

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"tensor name must match {_NAME.pattern}, got {self.name!r}")
        triton_dtype(self.dtype)
        dims = tuple(self.dims)
        if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d == 0 or d < -1 for d in dims):
            raise ValueError(f"dims of {self.name} must be a non-empty sequence of ints > 0 or -1, got {self.dims!r}")
        object.__setattr__(self, "dims", dims)


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher: requests arriving within ``max_queue_delay_us`` are batched."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us!r}")
        if any(b <= 0 for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must be positive, got {self.preferred_batch_sizes!r}")


@dataclass(frozen=True)
class ModelConfig:
    """What ``config.pbtxt`` says about one model.

    ``max_batch_size > 0`` makes the first dimension of every tensor the batch (not listed in
    ``dims``); 0 means the model takes unbatched tensors of exactly ``dims``.
    """

    name: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    backend: str = "python"
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    parameters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must match {_NAME.pattern} (it is a directory name), got {self.name!r}")
        if not _NAME.match(self.backend):
            raise ValueError(f"backend must be a backend name such as 'python', got {self.backend!r}")
        if not self.inputs or not self.outputs:
            raise ValueError(f"model {self.name} needs at least one input and one output")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names of model {self.name} must be unique, got {names}")
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size!r}")
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise ValueError("dynamic_batching needs max_batch_size > 0")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {self.instance_count!r}")
        if self.instance_kind not in _INSTANCE_KINDS:
            raise ValueError(f"instance_kind must be one of {_INSTANCE_KINDS}, got {self.instance_kind!r}")

    def to_pbtxt(self) -> str:
        """The model's ``config.pbtxt`` (protobuf text format)."""
        lines = [f"name: {_quote(self.name)}", f"backend: {_quote(self.backend)}", f"max_batch_size: {self.max_batch_size}"]
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{key} [")
            lines.append(",\n".join(_tensor_pbtxt(t, is_input=key == "input") for t in tensors))
            lines.append("]")
        if self.dynamic_batching is not None:
            batching = self.dynamic_batching
            lines.append("dynamic_batching {")
            if batching.preferred_batch_sizes:
                lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in batching.preferred_batch_sizes)} ]")
            lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}")
            lines.append("}")
        lines.append(f"instance_group [ {{ count: {self.instance_count} kind: {self.instance_kind} }} ]")
        for key, value in self.parameters.items():
            lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(str(value))} }} }}")
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_pbtxt(tensor: TensorSpec, is_input: bool) -> str:
    parts = [f"name: {_quote(tensor.name)}", f"data_type: {triton_dtype(tensor.dtype)}",
             f"dims: [ {', '.join(str(d) for d in tensor.dims)} ]"]
    if tensor.optional:
        if not is_input:
            raise ValueError(f"output {tensor.name} cannot be optional")
        parts.append("optional: true")
    return "  { " + " ".join(parts) + " }"


def write_model(
    repo: str | os.PathLike,
    config: ModelConfig,
    model_py: str,
    version: int = 1,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Writes one python-backend model and returns its directory ``<repo>/<config.name>``.

    Files: ``<name>/<version>/model.py`` (the ``TritonPythonModel`` source), any ``extra_files``
    (relative paths under the version directory), then ``<name>/config.pbtxt`` last, so that a
    complete model is in place before its config names it.

    Raises:
        ValueError: ``version`` < 1, an extra file path leaving the version directory, or a
            ``model_py`` that defines no ``TritonPythonModel``.
    """
    check_int("version", version, 1)
    if "class TritonPythonModel" not in model_py:
        raise ValueError("model_py must define class TritonPythonModel")
    model_dir = Path(repo) / config.name
    version_dir = model_dir / str(version)
    for relative, text in (extra_files or {}).items():
        target = (version_dir / relative).resolve()
        if version_dir.resolve() not in target.parents:
            raise ValueError(f"extra_files paths must stay inside the version directory, got {relative!r}")
        write_text_atomic(target, text)
    write_text_atomic(version_dir / "model.py", model_py)
    write_text_atomic(model_dir / "config.pbtxt", config.to_pbtxt())
    return model_dir
