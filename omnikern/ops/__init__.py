"""Kernels: one file per family, each beside its plain-torch truth in ``reference.py``.

The public names load on first use, so that ``omnikern.ops.reference`` or ``omnikern.ops._triton``
can be imported without compiling anything.
"""

from omnikern._lazy import lazy_exports

_EXPORTS = {
    "SampledSoftmaxLossOutput": "omnikern.ops.loss",
    "dequantize_int8": "omnikern.ops.int8",
    "int8_topk": "omnikern.ops.int8",
    "l2_normalize": "omnikern.ops.l2norm",
    "quantize_int8": "omnikern.ops.int8",
    "sampled_softmax_loss": "omnikern.ops.loss",
    "warmup": "omnikern.ops.precompile",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
