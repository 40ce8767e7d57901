"""Pieces shared by the generated python-backend models (``omnikern/serve/model_py/*.py``).

Imported inside the Triton python-backend stub, next to ``triton_python_backend_utils``, which the
callers pass in: this module must import without it.
"""

from __future__ import annotations

import json


def invalid_arg(pb_utils, message: str):
    """A response carrying a per-request INVALID_ARG error: the rest of the batch is still answered."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def parameters(args: dict) -> dict[str, str]:
    """The ``parameters`` of the model's config.pbtxt as a plain ``{key: string value}`` dict."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def instance_device(args: dict, params: dict[str, str]):
    """The torch device of this model instance (``KIND_GPU`` → its CUDA device, else CPU), with the
    CPU thread count set from the ``torch_threads`` parameter (0 or absent: torch's default)."""
    import torch

    if args.get("model_instance_kind") == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    threads = int(params.get("torch_threads", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.device("cpu")
