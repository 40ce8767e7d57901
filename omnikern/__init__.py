"""omnikern: fused kernels, a C++ text extension and Triton serving for unified search embeddings.

Nothing heavy happens at import: no device probing, no compiling. Kernels are compiled on first
use; the C++ extension is loaded by the modules that need it.
"""

from omnikern.index import Int8Index
from omnikern.models.loss import CountMinSketch, SampledSoftmaxLoss
from omnikern.ops import dequantize_int8, int8_topk, l2_normalize, quantize_int8, sampled_softmax_loss

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # losses
    "CountMinSketch",
    "SampledSoftmaxLoss",
    "sampled_softmax_loss",
    # scoring
    "Int8Index",
    "dequantize_int8",
    "int8_topk",
    "quantize_int8",
    # utilities
    "l2_normalize",
]
