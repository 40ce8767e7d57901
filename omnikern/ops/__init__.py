"""Kernels: one file per family, each beside its plain-torch truth in ``reference.py``."""

from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.loss import SampledSoftmaxLossOutput, sampled_softmax_loss

__all__ = ["l2_normalize", "sampled_softmax_loss", "SampledSoftmaxLossOutput"]
