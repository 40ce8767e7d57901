"""NVIDIA Triton Inference Server model repositories, the server process and clients (issue: serving).

Importing this package needs neither ``nvidia-pytriton`` nor ``tritonclient``; starting a server
needs the first (``pip install 'omnikern[serve]'``), talking to it the second.
"""

from omnikern.serve.client import Client
from omnikern.serve.export import export_triton, load_query_tower, save_query_tower
from omnikern.serve.repository import (
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    triton_dtype,
    write_model,
)
from omnikern.serve.server import TritonServer, TritonServerError, find_triton

__all__: list[str] = [
    "Client",
    "DynamicBatching",
    "ModelConfig",
    "TensorSpec",
    "TritonServer",
    "TritonServerError",
    "export_triton",
    "find_triton",
    "load_query_tower",
    "save_query_tower",
    "triton_dtype",
    "write_model",
]
