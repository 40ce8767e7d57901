"""The query tower as one ONNX graph, run by onnxruntime: the ``encoder_runtime="onnx"`` variant of
the served ``query_encoder``.

The graph is the whole tower after the tokenizer::

    input_ids, attention_mask  INT64 (B, T)
      -> transformer -> token states (B, T, H)
      -> pooling ("mean": Σ_t m_t h_t / max(Σ_t m_t, 1e-9); "cls": h_0)
      -> L2 of the pooled vector (only for towers with ``normalize_pooled``)
      -> projection Linear(H -> D) -> cast to the tower's output dtype
      -> L2: y = x / max(‖x‖₂, 1e-12)
      -> embedding FP32 (B, D)

with dynamic B and T. It is traced once at export time with torch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``, which needs only the ``onnx`` package). The tower's own
L2 step is omnikern's ``l2_normalize`` custom op, which no exporter knows; the graph is the tower's
own ``QueryTower.embed`` with that step spelled out in plain torch ops (``omnikern.ops.reference.l2_normalize_ref`` computes it in float64;
here it runs in the output dtype, as the torch path does on CPU).

Measured on this 2-core CPU (MiniLM-L6, one thread, one query of 5 tokens): 2.3 ms per query with
onnxruntime vs 7.3 ms with torch eager; at 16 queries of 64 tokens both take ~165 ms (the matmuls
dominate). The runtime is onnxruntime's CPU build: the variant is for ``KIND_CPU`` instances only.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from omnikern._atomic import replacing_file
from omnikern._checks import check_int
from omnikern.models.encoders import QueryTower
from omnikern.serve import contract as C

__all__ = ["encoder_session", "export_encoder_onnx"]

# Opset 17: LayerNormalization is one node, and onnxruntime 1.16+ (any that supports numpy 1.26) runs it.
_OPSET = 17


class _TowerGraph(nn.Module):
    """The tower's forward in exportable ops: ``tower`` minus its custom L2 op, output FP32."""

    def __init__(self, tower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower.embed(input_ids, attention_mask, normalize=_unit_rows).float()


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    # y = x / max(‖x‖₂, eps), eps = 1e-12 as in omnikern.ops.l2_normalize.
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def export_encoder_onnx(tower, path: str | os.PathLike) -> Path:
    """Writes ``tower`` (a QueryTower: encoder, "mean"/"cls" pooling, projection, L2) as an ONNX
    graph ``input_ids, attention_mask`` INT64 (B, T) -> ``embedding`` FP32 (B, D) with dynamic B
    and T, atomically, to ``path``; returns ``path``.

    Raises:
        TypeError: ``tower`` is not a QueryTower.
        ImportError: the ``onnx`` package (needed by torch's exporter) is missing.
    """
    if not isinstance(tower, QueryTower):
        raise TypeError(f"tower must be a QueryTower, got {type(tower).__name__}")
    try:
        import onnx  # noqa: F401 - torch's exporter needs it; say so before tracing
    except ImportError as error:
        raise ImportError("encoder_runtime='onnx' needs onnx and onnxruntime: pip install 'omnikern[serve]'") from error
    path = Path(path)
    if any(p.device.type != "cpu" for p in tower.parameters()):
        tower = copy.deepcopy(tower).cpu()  # traced on the CPU, which runs it; the caller's tower stays put
    graph = _TowerGraph(tower)
    # Trace with B = 2, T = 5 and one padded row, so that no shape is 1 (the tracer would fold a
    # size-1 dimension into a constant) and the attention mask takes its general path.
    ids = torch.ones(2, 5, dtype=torch.int64)  # any id in every vocabulary; the values are not traced in
    mask = torch.ones(2, 5, dtype=torch.int64)
    mask[1, 3:] = 0
    tokens_axes = {0: "batch", 1: "tokens"}
    dynamic_axes = {C.INPUT_IDS: tokens_axes, C.ATTENTION_MASK: tokens_axes, C.EMBEDDING: {0: "batch"}}
    training = tower.training
    tower.eval()
    try:
        with replacing_file(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about every Python-level shape test in transformers' attention code;
            # the ones that matter were traced on the general path above, and tests check B, T != 2, 5.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (ids, mask), str(tmp), dynamo=False, opset_version=_OPSET,
                              input_names=[C.INPUT_IDS, C.ATTENTION_MASK], output_names=[C.EMBEDDING],
                              dynamic_axes=dynamic_axes)
    finally:
        tower.train(training)
    return path


def encoder_session(path: str | os.PathLike, threads: int = 1):
    """Returns an ``onnxruntime.InferenceSession`` on the CPU for the graph at ``path``:
    sequential execution, ``threads`` intra-op threads (0 = onnxruntime's default, all cores)
    and one inter-op thread, with spinning off (a spinning pool steals the core from the other
    python-backend stubs on a small machine).

    Raises:
        ValueError: ``threads`` is not an int >= 0.
    """
    import onnxruntime as ort

    check_int("threads", threads, 0)
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the python backend's log is the server's
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
