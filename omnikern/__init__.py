"""omnikern: fused kernels, a C++ text extension and Triton serving for unified search embeddings.

Nothing heavy happens at import: no device probing, no compiling. Kernels are compiled on first
use; the C++ extension is loaded by the modules that need it.
"""

from omnikern.ops import l2_normalize
from omnikern.models.loss import CountMinSketch, SampledSoftmaxLoss
from omnikern.ops import sampled_softmax_loss
from omnikern.index import Int8Index
from omnikern.ops import dequantize_int8, int8_topk, quantize_int8

__version__ = "0.1.0"

__all__ = ["__version__", "l2_normalize", "CountMinSketch", "SampledSoftmaxLoss", "sampled_softmax_loss"]
__all__ += ["Int8Index", "quantize_int8", "dequantize_int8", "int8_topk"]  # int8 family
