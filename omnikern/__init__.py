"""omnikern: fused kernels, a C++ text extension and Triton serving for unified search embeddings.

Importing the package is cheap: every public name below is imported on first use (so
``import omnikern`` loads neither torch's kernels, triton nor the models), and nothing probes a
device or compiles. Kernels are compiled on first use.
"""

from omnikern._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # losses
    "CountMinSketch": "omnikern.models.loss",
    "SampledSoftmaxLoss": "omnikern.models.loss",
    "SampledSoftmaxLossOutput": "omnikern.ops.loss",
    "sampled_softmax_loss": "omnikern.ops.loss",
    # encoders
    "QueryTower": "omnikern.models.encoders",
    "load": "omnikern.models.checkpoint",
    "load_zero_shot": "omnikern.models.encoders:zero_shot_tower",
    # scoring
    "Int8Index": "omnikern.index",
    "ShardedIndex": "omnikern.sharded_index",
    "dequantize_int8": "omnikern.ops.int8",
    "int8_topk": "omnikern.ops.int8",
    "quantize_int8": "omnikern.ops.int8",
    # utilities
    "l2_normalize": "omnikern.ops.l2norm",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
