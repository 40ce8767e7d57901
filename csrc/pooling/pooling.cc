#include "pooling/pooling.h"

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

float half_to_float(uint16_t bits) {
  // binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits.
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: value = mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  uint32_t out;
  if (exponent == 0x1fu) {
    out = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN keeping its payload
  } else {
    out = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);  // rebias the exponent
  }
  float value;
  std::memcpy(&value, &out, sizeof(value));
  return value;
}

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
    for (int64_t h = 0; h < hidden; ++h) scratch[h] = half_to_float(src[h]);
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

  parallel_for(static_cast<size_t>(batch), num_threads, 1, [&](size_t begin, size_t end) {
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
            for (size_t h = 0; h < H; ++h)
              // NaN sticks once seen (as torch.amax): `x > NaN` is false for any later x.
              if (x[h] > best[h] || std::isnan(x[h])) best[h] = x[h];
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
