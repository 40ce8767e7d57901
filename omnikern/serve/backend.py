"""Pieces shared by the generated python-backend models (``omnikern/serve/model_py/*.py``): the
config parameters, the instance's device, and :func:`answer`, the request loop every model runs
around its step (:mod:`omnikern.serve.steps`).

Imported inside the Triton python-backend stub, next to ``triton_python_backend_utils``, which the
callers pass in: this module must import without it.
"""

from __future__ import annotations

import json

import numpy as np

from omnikern.serve.contract import RequestError


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


def answer(pb_utils, requests, inputs, check, run, outputs) -> list:
    """One response per request for one ``execute`` call of a step (:mod:`omnikern.serve.steps`).

    Each request's ``inputs`` (tensor names; an absent one is None) go through ``check``; a
    :class:`~omnikern.serve.contract.RequestError` answers that request alone with INVALID_ARG.
    ``run`` gets the checked items of all the others at once and returns one result per item: a
    tuple of arrays, sent as the tensors named ``outputs``, or a RequestError.
    """
    responses = [None] * len(requests)
    good, items = [], []
    for i, request in enumerate(requests):
        arrays = []
        for name in inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            arrays.append(None if tensor is None else tensor.as_numpy())
        try:
            items.append(check(*arrays))
        except RequestError as problem:
            responses[i] = invalid_arg(pb_utils, str(problem))
            continue
        good.append(i)
    if items:
        for i, result in zip(good, run(items)):
            if isinstance(result, RequestError):
                responses[i] = invalid_arg(pb_utils, str(result))
            else:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in zip(outputs, result)])
    return responses
