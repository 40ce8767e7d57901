// Pooling of token embeddings into one vector per sequence (docs/text.md, "Pooling").
// Plain contiguous buffers in, float32 out: usable from numpy in the Triton python backend, no torch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace omnikern {

/// How a (L, H) block of token embeddings becomes one H-vector. With m = attention_mask[b] != 0 and
/// n = Σ m (the number of attended positions):
///   kCls      x[0]                        (position 0, whatever its mask: the [CLS] token)
///   kMean     Σ m·x / max(n, 1e-9)        (a fully masked row gives 0)
///   kMeanSqrt Σ m·x / sqrt(max(n, 1e-9))  (a fully masked row gives 0, not NaN)
///   kMax      max over attended x         (a fully masked row gives 0; NaN propagates)
enum class PoolMode { kCls, kMean, kMeanSqrt, kMax };

/// Parses "cls", "mean", "mean_sqrt" or "max".
/// @throws std::invalid_argument naming `modes` for any other string.
PoolMode parse_pool_mode(std::string_view name);

/// Element type of the token embeddings.
enum class EmbeddingType { kFloat32, kFloat16 };

/// Element type of the attention mask; any nonzero value means "attend".
enum class MaskType { kInt64, kInt32, kUInt8 };  // kUInt8 also covers bool (one byte, 0 or 1)

/// IEEE 754 binary16 (bits in a uint16) to float, exact for every value (subnormals, inf, NaN).
float half_to_float(uint16_t bits);

/// Pools token embeddings (B, L, H) under an attention mask (B, L) with each of `modes` and writes
/// out (B, H * modes.size()) float32, row b = [pool_0(b) | pool_1(b) | ...] in the order given.
/// Sums accumulate in float32 over positions in order 0..L-1; each sequence is handled by one
/// thread, so the result is identical for any `num_threads` (0 = all cores).
/// @param embeddings  contiguous (B, L, H) of `embedding_type`.
/// @param mask        contiguous (B, L) of `mask_type`.
/// @param out         contiguous (B, H * modes.size()) float32, fully overwritten.
/// @throws std::invalid_argument for negative sizes, L == 0, an empty `modes`, null pointers with
///         a non-empty shape, or num_threads < 0.
void pool(const void* embeddings, EmbeddingType embedding_type, const void* mask, MaskType mask_type,
          int64_t batch, int64_t seq_len, int64_t hidden, const std::vector<PoolMode>& modes, float* out,
          int num_threads = 0);

}  // namespace omnikern
