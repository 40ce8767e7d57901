// quantize_queries (the float query -> int8 codes + factor step of int8_topk) against a
// straightforward reference of its definition: values, odd dims, strides, zero rows, edge cases.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "scoring/int8_topk.h"
#include "tests/check.h"

namespace {

struct Quantized {
  std::vector<int8_t> codes;
  std::vector<float> factors;
};

// Round half to even, spelled out (no reliance on the rounding mode).
float round_half_even(float v) {
  const float lo = std::floor(v);
  const float frac = v - lo;
  if (frac > 0.5f) return lo + 1.0f;
  if (frac < 0.5f) return lo;
  return std::fmod(lo, 2.0f) == 0.0f ? lo : lo + 1.0f;
}

// The definition, one query at a time: scale = max|x| / 127 over the prefix, code =
// clamp(round_half_even(x / scale), -127, 127) (all 0 when scale is 0); the factor is the scale,
// or 1 / sqrt(float(sum of squared codes)) (0 when that sum is 0).
Quantized reference(const std::vector<float>& x, int64_t rows, int64_t stride, int64_t dim, bool inverse_norm) {
  Quantized r{std::vector<int8_t>(rows * dim), std::vector<float>(rows)};
  for (int64_t q = 0; q < rows; ++q) {
    float amax = 0.0f;
    for (int64_t d = 0; d < dim; ++d) amax = std::max(amax, std::fabs(x[q * stride + d]));
    const float scale = amax / 127.0f;
    int64_t sumsq = 0;
    for (int64_t d = 0; d < dim; ++d) {
      float code = 0.0f;
      if (scale > 0.0f) code = std::min(127.0f, std::max(-127.0f, round_half_even(x[q * stride + d] / scale)));
      r.codes[q * dim + d] = static_cast<int8_t>(code);
      sumsq += static_cast<int64_t>(code) * static_cast<int64_t>(code);
    }
    if (!inverse_norm) {
      r.factors[q] = scale;
    } else {
      r.factors[q] = sumsq > 0 ? 1.0f / std::sqrt(static_cast<float>(sumsq)) : 0.0f;
    }
  }
  return r;
}

Quantized run(const std::vector<float>& x, int64_t rows, int64_t stride, int64_t dim, bool inverse_norm) {
  Quantized r{std::vector<int8_t>(rows * dim), std::vector<float>(rows)};
  omnikern::quantize_queries(x.data(), rows, stride, dim, inverse_norm, r.codes.data(), r.factors.data());
  return r;
}

bool bit_equal(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// quantize_queries == reference, codes and factors bit for bit, for both factor kinds.
void check_against_reference(const std::vector<float>& x, int64_t rows, int64_t stride, int64_t dim) {
  for (const bool inverse_norm : {false, true}) {
    const Quantized got = run(x, rows, stride, dim, inverse_norm);
    const Quantized want = reference(x, rows, stride, dim, inverse_norm);
    for (size_t i = 0; i < want.codes.size(); ++i) OMNIKERN_CHECK_EQ(got.codes[i], want.codes[i]);
    for (size_t q = 0; q < want.factors.size(); ++q) OMNIKERN_CHECK(bit_equal(got.factors[q], want.factors[q]));
  }
  // The scale factors are exactly quantize_int8_rows' scales (and the codes its codes).
  std::vector<int8_t> codes(rows * dim);
  std::vector<float> scales(rows);
  omnikern::quantize_int8_rows(x.data(), rows, stride, dim, codes.data(), scales.data());
  const Quantized got = run(x, rows, stride, dim, false);
  OMNIKERN_CHECK(got.codes == codes);
  for (int64_t q = 0; q < rows; ++q) OMNIKERN_CHECK(bit_equal(got.factors[q], scales[q]));
}

void test_random_values() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const int64_t dim : {1, 2, 3, 7, 31, 33, 64, 127, 257}) {
    for (const int64_t pad : {0, 1, 5}) {
      const int64_t rows = 9, stride = dim + pad;
      std::vector<float> x(rows * stride);
      for (auto& v : x) v = normal(rng) * 3.0f;
      check_against_reference(x, rows, stride, dim);
    }
  }
}

void test_known_values() {
  // max|x| = 127 -> scale 1: codes are x rounded half to even; -0.5 and 0.5 go to 0.
  const std::vector<float> x = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -127.0f};
  const Quantized r = run(x, 1, 7, 7, false);
  const std::vector<int8_t> want = {127, 0, 2, 2, 0, -2, -127};
  OMNIKERN_CHECK(r.codes == want);
  OMNIKERN_CHECK(r.factors[0] == 1.0f);
  const Quantized n = run(x, 1, 7, 7, true);
  OMNIKERN_CHECK(n.codes == want);
  // 127² + 2² + 2² + 2² + 127² = 32270
  OMNIKERN_CHECK(bit_equal(n.factors[0], 1.0f / std::sqrt(32270.0f)));

  // A negative extreme sets the scale; the row maps to ±127 at the extreme.
  const std::vector<float> y = {-3.0f, 1.0f, 0.0f};
  const Quantized s = run(y, 1, 3, 3, false);
  OMNIKERN_CHECK_EQ(s.codes[0], -127);
  OMNIKERN_CHECK_EQ(s.codes[1], 42);  // 1 / (3/127) = 42.33
  OMNIKERN_CHECK_EQ(s.codes[2], 0);
  OMNIKERN_CHECK(bit_equal(s.factors[0], 3.0f / 127.0f));
}

void test_zero_rows_and_edges() {
  // No queries: nothing written, nothing read.
  run({}, 0, 4, 4, false);
  run({}, 0, 4, 4, true);

  // An all-zero prefix: codes 0, scale 0, inverse norm 0 (not inf), even with nonzero padding.
  const std::vector<float> x = {0.0f, -0.0f, 0.0f, 5.0f, 1.0f, 2.0f, 0.0f, 9.0f};
  for (const bool inverse_norm : {false, true}) {
    const Quantized r = run(x, 2, 4, 3, inverse_norm);
    for (int d = 0; d < 3; ++d) OMNIKERN_CHECK_EQ(r.codes[d], 0);
    OMNIKERN_CHECK(r.factors[0] == 0.0f && !std::signbit(r.factors[0]));
    OMNIKERN_CHECK(r.factors[1] > 0.0f);
  }
  check_against_reference(x, 2, 4, 3);

  // Extreme magnitudes: tiny (subnormal), huge, and mixed.
  const float tiny = std::numeric_limits<float>::denorm_min();
  const float huge = std::numeric_limits<float>::max();
  const std::vector<float> e = {tiny, -tiny, 0.0f,  // max/127 underflows to 0: all codes 0
                                1e-30f, huge, -huge,
                                1.0f, 0.0f, 1e30f,
                                1e-30f, -1e30f, 3.0f};
  check_against_reference(e, 4, 3, 3);
  const Quantized h = run(e, 4, 3, 3, false);
  const std::vector<int8_t> want = {0, 0, 0, 0, 127, -127, 0, 0, 127, 0, -127, 0};
  OMNIKERN_CHECK(h.codes == want);
  OMNIKERN_CHECK(h.factors[0] == 0.0f);

  // NaN / inf in the prefix throw (naming the row); in the padding past dim they are never read.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> padded = {1.0f, 2.0f, nan, 3.0f, 4.0f, inf};
  check_against_reference(padded, 2, 3, 2);
  for (const float bad : {nan, inf, -inf}) {
    const std::vector<float> b = {1.0f, 2.0f, 3.0f, bad};
    for (const bool inverse_norm : {false, true}) {
      bool threw = false;
      try {
        run(b, 2, 2, 2, inverse_norm);
      } catch (const std::invalid_argument& err) {
        threw = std::string(err.what()).find("row 1") != std::string::npos;
      }
      OMNIKERN_CHECK(threw);
    }
  }
}

void run_tests() {
  test_random_values();
  test_known_values();
  test_zero_rows_and_edges();
}

}  // namespace

OMNIKERN_TEST_MAIN()
