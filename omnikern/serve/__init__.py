"""NVIDIA Triton Inference Server model repositories, the server process and clients (issue: serving).

Importing this package needs neither ``nvidia-pytriton`` nor ``tritonclient``; starting a server
needs the first (``pip install 'omnikern[serve]'``), talking to it the second.
"""

from omnikern.serve.repository import DynamicBatching, ModelConfig, TensorSpec, triton_dtype, write_model, write_text_atomic
from omnikern.serve.server import TritonServer, TritonServerError, find_triton

__all__: list[str] = [
    "DynamicBatching",
    "ModelConfig",
    "TensorSpec",
    "TritonServer",
    "TritonServerError",
    "find_triton",
    "triton_dtype",
    "write_model",
    "write_text_atomic",
]
