"""Test set-up: the Triton interpreter on CPU machines, seeded tests, and the gpu marker.

``TRITON_INTERPRET=1`` must be in the environment before the first ``import triton``: this file is
imported by pytest before any test module, so it decides here, from whether CUDA is usable.
"""

from __future__ import annotations

import os
import random


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
# The device kernels run on in this session: the GPU when there is one, else CPU under the interpreter.
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none here (kernels are tested under the Triton interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
