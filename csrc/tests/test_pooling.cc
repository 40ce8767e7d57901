#include "pooling/pooling.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "tests/check.h"

using omnikern::EmbeddingType;
using omnikern::MaskType;
using omnikern::PoolMode;

static bool near(float a, float b) { return std::fabs(a - b) <= 1e-6f * (1.0f + std::fabs(b)); }

template <typename Fn>
static bool throws_invalid(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

static void test_half_to_float() {
  OMNIKERN_CHECK(omnikern::half_to_float(0x0000) == 0.0f);
  OMNIKERN_CHECK(std::signbit(omnikern::half_to_float(0x8000)));
  OMNIKERN_CHECK(omnikern::half_to_float(0x3c00) == 1.0f);
  OMNIKERN_CHECK(omnikern::half_to_float(0xc000) == -2.0f);
  OMNIKERN_CHECK(omnikern::half_to_float(0x3555) == 0.333251953125f);
  OMNIKERN_CHECK(omnikern::half_to_float(0x7bff) == 65504.0f);                 // largest finite
  OMNIKERN_CHECK(omnikern::half_to_float(0x0001) == std::ldexp(1.0f, -24));    // smallest subnormal
  OMNIKERN_CHECK(omnikern::half_to_float(0x03ff) == 1023 * std::ldexp(1.0f, -24));
  OMNIKERN_CHECK(omnikern::half_to_float(0x0400) == std::ldexp(1.0f, -14));    // smallest normal
  OMNIKERN_CHECK(std::isinf(omnikern::half_to_float(0x7c00)) && omnikern::half_to_float(0x7c00) > 0);
  OMNIKERN_CHECK(std::isinf(omnikern::half_to_float(0xfc00)) && omnikern::half_to_float(0xfc00) < 0);
  OMNIKERN_CHECK(std::isnan(omnikern::half_to_float(0x7e00)));
}

// B = 2, L = 3, H = 2. Sequence 0 attends positions 0 and 2; sequence 1 attends nothing.
static void test_modes_by_hand() {
  const std::vector<float> x = {1, -2, /*masked*/ 100, 100, 3, 4,
                                5, 6, 7, 8, 9, 10};
  const std::vector<int64_t> mask = {1, 0, 1, 0, 0, 0};
  const std::vector<PoolMode> modes = {PoolMode::kCls, PoolMode::kMean, PoolMode::kMeanSqrt, PoolMode::kMax};
  std::vector<float> out(2 * 2 * modes.size(), -1.0f);
  omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, 2, 3, 2, modes, out.data(), 1);
  const float r2 = std::sqrt(2.0f);
  const std::vector<float> want0 = {1, -2, 2, 1, 4 / r2, 2 / r2, 3, 4};
  const std::vector<float> want1 = {5, 6, 0, 0, 0, 0, 0, 0};  // cls ignores the mask; the rest are 0
  for (size_t i = 0; i < 8; ++i) {
    OMNIKERN_CHECK(near(out[i], want0[i]));
    OMNIKERN_CHECK(near(out[8 + i], want1[i]));
  }
}

// The same numbers as float16 bits and with every mask type give the same result.
static void test_types_agree() {
  const std::vector<uint16_t> x16 = {0x3c00, 0xc000, 0x4200, 0x3800};  // 1, -2, 3, 0.5
  const std::vector<float> x32 = {1, -2, 3, 0.5f};
  const std::vector<int32_t> m32 = {1, 1};
  const std::vector<uint8_t> m8 = {1, 1};
  const std::vector<PoolMode> modes = {PoolMode::kMean, PoolMode::kMax};
  std::vector<float> a(4), b(4), c(4);
  omnikern::pool(x16.data(), EmbeddingType::kFloat16, m32.data(), MaskType::kInt32, 1, 2, 2, modes, a.data());
  omnikern::pool(x32.data(), EmbeddingType::kFloat32, m8.data(), MaskType::kUInt8, 1, 2, 2, modes, b.data());
  omnikern::pool(x32.data(), EmbeddingType::kFloat32, m32.data(), MaskType::kInt32, 1, 2, 2, modes, c.data());
  const std::vector<float> want = {2, -0.75f, 3, 0.5f};
  for (size_t i = 0; i < 4; ++i) {
    OMNIKERN_CHECK(near(a[i], want[i]));
    OMNIKERN_CHECK(a[i] == b[i] && b[i] == c[i]);
  }
}

static void test_nan_handling() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Position 1 is masked and holds NaN: it must not leak. Position 2 (attended) has NaN in column 1.
  const std::vector<float> x = {1, 2, nan, nan, 3, nan};
  const std::vector<uint8_t> mask = {1, 0, 1};
  std::vector<float> out(4);
  omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kUInt8, 1, 3, 2,
                 {PoolMode::kMean, PoolMode::kMax}, out.data());
  OMNIKERN_CHECK(near(out[0], 2.0f));
  OMNIKERN_CHECK(std::isnan(out[1]));
  OMNIKERN_CHECK(near(out[2], 3.0f));
  OMNIKERN_CHECK(std::isnan(out[3]));
}

static void test_thread_invariance() {
  // L * H large enough that pool() really splits the batch over threads (>= 64k elements each).
  const int64_t B = 37, L = 33, H = 1000;
  std::vector<float> x(B * L * H);
  std::vector<int64_t> mask(B * L);
  uint32_t state = 12345;
  for (auto& v : x) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
  }
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 7 % 5) != 0;
  const std::vector<PoolMode> modes = {PoolMode::kMeanSqrt, PoolMode::kCls, PoolMode::kMax, PoolMode::kMean};
  std::vector<float> ref(B * H * modes.size());
  omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, B, L, H, modes, ref.data(), 1);
  for (int threads : {0, 2, 3, 64}) {
    std::vector<float> got(ref.size());
    omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, B, L, H, modes, got.data(),
                   threads);
    OMNIKERN_CHECK(got == ref);
  }
}

static void test_bad_arguments() {
  const std::vector<float> x(4, 1.0f);
  const std::vector<int64_t> mask(2, 1);
  std::vector<float> out(4);
  const std::vector<PoolMode> mean = {PoolMode::kMean};
  OMNIKERN_CHECK(throws_invalid([] { omnikern::parse_pool_mode("sum"); }));
  OMNIKERN_CHECK(omnikern::parse_pool_mode("mean_sqrt") == PoolMode::kMeanSqrt);
  OMNIKERN_CHECK(throws_invalid([&] {
    omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, 1, 0, 2, mean, out.data());
  }));
  OMNIKERN_CHECK(throws_invalid([&] {
    omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, -1, 2, 2, mean, out.data());
  }));
  OMNIKERN_CHECK(throws_invalid([&] {
    omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, 1, 2, 2, {}, out.data());
  }));
  OMNIKERN_CHECK(throws_invalid([&] {
    omnikern::pool(x.data(), EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, 1, 2, 2, mean, out.data(), -1);
  }));
  OMNIKERN_CHECK(throws_invalid([&] {
    omnikern::pool(nullptr, EmbeddingType::kFloat32, mask.data(), MaskType::kInt64, 1, 2, 2, mean, out.data());
  }));
  // An empty batch touches nothing, even through null pointers.
  omnikern::pool(nullptr, EmbeddingType::kFloat32, nullptr, MaskType::kInt64, 0, 2, 2, mean, nullptr);
}

static void run_tests() {
  test_half_to_float();
  test_modes_by_hand();
  test_types_agree();
  test_nan_handling();
  test_thread_invariance();
  test_bad_arguments();
}

OMNIKERN_TEST_MAIN()
