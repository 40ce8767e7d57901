#include "pooling/pooling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/parallel.h"

namespace omnikern {

PoolMode parse_pool_mode(std::string_view name) {
  if (name == "cls") return PoolMode::kCls;
  if (name == "mean") return PoolMode::kMean;
  if (name == "mean_sqrt") return PoolMode::kMeanSqrt;
  if (name == "max") return PoolMode::kMax;
  throw std::invalid_argument("modes must hold 'cls', 'mean', 'mean_sqrt' or 'max', got '" +
                              std::string(name) + "'");
}

namespace {

float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// binary16 = 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Written with selects and no
// branches so that the row loop calling it vectorises.
inline float widen_half(uint16_t half) {
  // Exponent and mantissa moved to their float32 positions (exponent still biased by 15).
  const uint32_t shifted = static_cast<uint32_t>(half & 0x7fffu) << 13;
  const uint32_t exponent = half & 0x7c00u;
  // Normal numbers: rebias the exponent, 15 -> 127. Inf/NaN (exponent 31): move it to 255, which
  // keeps a NaN's payload.
  const uint32_t normal = shifted + ((127u - 15u) << 23);
  const uint32_t inf_nan = shifted + ((255u - 31u) << 23);
  // Subnormals (exponent 0): mantissa * 2^-24 = (1 + mantissa/1024) * 2^-14 - 2^-14, computed
  // exactly in float32 by giving the mantissa the exponent of 2^-14 and subtracting 2^-14.
  const float subnormal = bits_to_float(shifted + (113u << 23)) - 6.103515625e-05f;
  // Pick one of the three with all-ones/all-zeros masks (a ternary here stops GCC vectorising).
  const uint32_t is_subnormal = 0u - static_cast<uint32_t>(exponent == 0);
  const uint32_t is_inf_nan = 0u - static_cast<uint32_t>(exponent == 0x7c00u);
  const uint32_t finite_or_inf = (normal & ~is_inf_nan) | (inf_nan & is_inf_nan);
  const uint32_t magnitude = (finite_or_inf & ~is_subnormal) | (float_to_bits(subnormal) & is_subnormal);
  return bits_to_float(magnitude | (static_cast<uint32_t>(half & 0x8000u) << 16));
}

}  // namespace

float half_to_float(uint16_t bits) { return widen_half(bits); }

namespace {

// Gives position l of sequence b as H floats: a pointer into the input for float32, a converted
// copy in `scratch` for float16.
template <typename Emb>
struct RowReader;

template <>
struct RowReader<float> {
  const float* data;
  int64_t hidden;
  const float* row(size_t offset, std::vector<float>&) const { return data + offset; }
};

template <>
struct RowReader<uint16_t> {
  const uint16_t* data;
  int64_t hidden;
  const float* row(size_t offset, std::vector<float>& scratch) const {
    const uint16_t* src = data + offset;
    for (int64_t h = 0; h < hidden; ++h) scratch[h] = widen_half(src[h]);
    return scratch.data();
  }
};

template <typename Emb, typename Mask>
void pool_typed(const Emb* embeddings, const Mask* mask, int64_t batch, int64_t seq_len, int64_t hidden,
                const std::vector<PoolMode>& modes, float* out, int num_threads) {
  bool need_sum = false, need_max = false;
  for (PoolMode mode : modes) {
    need_sum |= mode == PoolMode::kMean || mode == PoolMode::kMeanSqrt;
    need_max |= mode == PoolMode::kMax;
  }
  const size_t H = static_cast<size_t>(hidden), L = static_cast<size_t>(seq_len);
  const size_t out_stride = H * modes.size();
  const RowReader<Emb> reader{embeddings, hidden};

  // Starting a thread costs tens of microseconds: give each one at least ~64k elements of work, so
  // that the small batches of online serving stay on the calling thread.
  const size_t min_rows = std::max<size_t>(1, (size_t{1} << 16) / std::max<size_t>(1, L * H));
  parallel_for(static_cast<size_t>(batch), num_threads, min_rows, [&](size_t begin, size_t end) {
    std::vector<float> scratch(H), sum(H), best(H);
    for (size_t b = begin; b < end; ++b) {
      const Mask* mask_row = mask + b * L;
      const size_t base = b * L * H;
      std::fill(sum.begin(), sum.end(), 0.0f);
      std::fill(best.begin(), best.end(), -std::numeric_limits<float>::infinity());
      size_t count = 0;
      if (need_sum || need_max) {
        for (size_t l = 0; l < L; ++l) {
          // Masked positions are skipped, not multiplied by 0, so a NaN/inf there cannot leak in.
          if (mask_row[l] == 0) continue;
          ++count;
          const float* x = reader.row(base + l * H, scratch);
          if (need_sum)
            for (size_t h = 0; h < H; ++h) sum[h] += x[h];
          if (need_max)
            for (size_t h = 0; h < H; ++h) {
              // NaN sticks once seen (as torch.amax): `v > NaN` is false for any later v. A select,
              // not a branch, so that the loop vectorises.
              const float v = x[h], b_h = best[h];
              best[h] = (v > b_h) | (v != v) ? v : b_h;
            }
        }
      }
      // mean divides by max(n, 1e-9) as sentence-transformers does; sqrt of the same clamp keeps
      // mean_sqrt at 0 (not 0/0 = NaN) for a fully masked row.
      const float clamped = std::max(static_cast<float>(count), 1e-9f);
      float* dst = out + b * out_stride;
      for (PoolMode mode : modes) {
        switch (mode) {
          case PoolMode::kCls: {
            const float* x = reader.row(base, scratch);
            std::copy(x, x + H, dst);
            break;
          }
          case PoolMode::kMean:
            for (size_t h = 0; h < H; ++h) dst[h] = sum[h] / clamped;
            break;
          case PoolMode::kMeanSqrt: {
            const float denom = std::sqrt(clamped);
            for (size_t h = 0; h < H; ++h) dst[h] = sum[h] / denom;
            break;
          }
          case PoolMode::kMax:
            // A fully masked row has no maximum: define it as 0, like mean.
            for (size_t h = 0; h < H; ++h) dst[h] = count == 0 ? 0.0f : best[h];
            break;
        }
        dst += H;
      }
    }
  });
}

template <typename Emb>
void dispatch_mask(const Emb* embeddings, const void* mask, MaskType mask_type, int64_t batch, int64_t seq_len,
                   int64_t hidden, const std::vector<PoolMode>& modes, float* out, int num_threads) {
  switch (mask_type) {
    case MaskType::kInt64:
      return pool_typed(embeddings, static_cast<const int64_t*>(mask), batch, seq_len, hidden, modes, out,
                        num_threads);
    case MaskType::kInt32:
      return pool_typed(embeddings, static_cast<const int32_t*>(mask), batch, seq_len, hidden, modes, out,
                        num_threads);
    case MaskType::kUInt8:
      return pool_typed(embeddings, static_cast<const uint8_t*>(mask), batch, seq_len, hidden, modes, out,
                        num_threads);
  }
  throw std::invalid_argument("attention_mask has an unknown mask type");
}

}  // namespace

void pool(const void* embeddings, EmbeddingType embedding_type, const void* mask, MaskType mask_type,
          int64_t batch, int64_t seq_len, int64_t hidden, const std::vector<PoolMode>& modes, float* out,
          int num_threads) {
  if (batch < 0 || seq_len < 0 || hidden < 0)
    throw std::invalid_argument("token_embeddings must have non-negative sizes, got (" + std::to_string(batch) +
                                ", " + std::to_string(seq_len) + ", " + std::to_string(hidden) + ")");
  if (seq_len == 0)
    throw std::invalid_argument("token_embeddings must have at least one position (L >= 1), got L = 0");
  if (modes.empty()) throw std::invalid_argument("modes must name at least one pooling mode");
  if (num_threads < 0)
    throw std::invalid_argument("num_threads must be >= 0 (0 = all cores), got " + std::to_string(num_threads));
  if (batch == 0 || hidden == 0) return;
  if (embeddings == nullptr) throw std::invalid_argument("token_embeddings is a null pointer");
  if (mask == nullptr) throw std::invalid_argument("attention_mask is a null pointer");
  if (out == nullptr) throw std::invalid_argument("out is a null pointer");
  switch (embedding_type) {
    case EmbeddingType::kFloat32:
      return dispatch_mask(static_cast<const float*>(embeddings), mask, mask_type, batch, seq_len, hidden, modes,
                           out, num_threads);
    case EmbeddingType::kFloat16:
      return dispatch_mask(static_cast<const uint16_t*>(embeddings), mask, mask_type, batch, seq_len, hidden,
                           modes, out, num_threads);
  }
  throw std::invalid_argument("token_embeddings has an unknown embedding type");
}

}  // namespace omnikern
