"""NVIDIA Triton Inference Server model repositories, the server process and clients.

Importing this package needs neither ``nvidia-pytriton`` nor ``tritonclient``; starting a server
needs the first (``pip install 'omnikern[serve]'``), talking to it the second. The public names
load on first use: the python-backend stubs import ``omnikern.serve.steps`` without the exporter.
"""

from omnikern._lazy import lazy_exports

_EXPORTS = {
    "Client": "omnikern.serve.client",
    "MultiClient": "omnikern.serve.client",
    "DynamicBatching": "omnikern.serve.repository",
    "ModelConfig": "omnikern.serve.repository",
    "TensorSpec": "omnikern.serve.repository",
    "TritonServer": "omnikern.serve.server",
    "TritonServerError": "omnikern.serve.server",
    "export_triton": "omnikern.serve.export",
    "find_triton": "omnikern.serve.server",
    "triton_dtype": "omnikern.serve.repository",
    "write_model": "omnikern.serve.repository",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
