"""Kernels: one file per family, each beside its plain-torch truth in ``reference.py``."""

from omnikern.ops.int8 import dequantize_int8, int8_topk, quantize_int8
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import SampledSoftmaxLossOutput, sampled_softmax_loss
from omnikern.ops.precompile import warmup

__all__ = [
    "SampledSoftmaxLossOutput",
    "dequantize_int8",
    "int8_topk",
    "l2_normalize",
    "quantize_int8",
    "sampled_softmax_loss",
    "warmup",
]
