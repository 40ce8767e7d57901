"""Kernels: one file per family, each beside its plain-torch truth in ``reference.py``."""

from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import SampledSoftmaxLossOutput, sampled_softmax_loss
from omnikern.ops.int8 import dequantize_int8, int8_topk, quantize_int8

__all__ = ["l2_normalize", "sampled_softmax_loss", "SampledSoftmaxLossOutput"]
__all__ += ["quantize_int8", "dequantize_int8", "int8_topk"]  # int8 family
