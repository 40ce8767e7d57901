// int8_topk against a brute-force full sort, for both instruction sets and several thread counts.
#include "scoring/int8_topk.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "tests/check.h"

namespace {

struct Result {
  std::vector<float> scores;
  std::vector<int64_t> indices;
};

// The definition: every score in float32 with the documented operation order, then a stable
// sort by score descending (equal scores keep increasing index order).
Result brute_force(const omnikern::Int8TopkInput& in) {
  const int64_t Q = in.num_queries, N = in.num_rows, K = in.k;
  Result r{std::vector<float>(Q * K, -std::numeric_limits<float>::infinity()), std::vector<int64_t>(Q * K, -1)};
  std::vector<float> rf(N);
  for (int64_t i = 0; i < N; ++i) {
    const int8_t* x = in.codes + i * in.row_stride;
    if (in.normalize_rows) {
      int32_t ss = 0;
      for (int64_t d = 0; d < in.dim; ++d) ss += x[d] * x[d];
      rf[i] = ss > 0 ? 1.0f / std::sqrt(static_cast<float>(ss)) : 0.0f;
    } else {
      rf[i] = in.row_factors[i];
    }
  }
  for (int64_t q = 0; q < Q; ++q) {
    std::vector<float> s(N);
    std::vector<int64_t> order;
    for (int64_t i = 0; i < N; ++i) {
      int32_t dot = 0;
      for (int64_t d = 0; d < in.dim; ++d) dot += in.queries[q * in.query_stride + d] * in.codes[i * in.row_stride + d];
      s[i] = static_cast<float>(dot) * in.query_factors[q] * rf[i] + 0.0f;
      if (!(in.exclude && in.exclude[q] == i)) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    for (int64_t j = 0; j < K && j < static_cast<int64_t>(order.size()); ++j) {
      r.scores[q * K + j] = s[order[j]];
      r.indices[q * K + j] = order[j];
    }
  }
  return r;
}

void check_case(int64_t Q, int64_t N, int64_t D, int64_t dim, int64_t k, bool normalize, bool with_exclude,
                int value_range, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> qdist(-127, 127), xdist(-value_range, value_range - 1);
  std::uniform_real_distribution<float> fdist(0.001f, 0.02f);
  std::vector<int8_t> queries(Q * D), codes(N * D);
  for (auto& v : queries) v = static_cast<int8_t>(qdist(rng) % (value_range + 1));
  for (auto& v : codes) v = static_cast<int8_t>(xdist(rng));  // -128 included when value_range = 128
  std::vector<float> qf(Q), rf(N);
  for (auto& v : qf) v = fdist(rng);
  // Few distinct row factors so that exact ties are common.
  for (int64_t i = 0; i < N; ++i) rf[i] = (i % 3 == 0) ? 0.0f : 0.01f;
  std::vector<int64_t> exclude(Q);
  for (int64_t q = 0; q < Q; ++q) exclude[q] = (q % 2 == 0) ? static_cast<int64_t>(rng() % N) : -1;

  omnikern::Int8TopkInput in;
  in.queries = queries.data();
  in.num_queries = Q;
  in.query_stride = D;
  in.query_factors = qf.data();
  in.codes = codes.data();
  in.num_rows = N;
  in.row_stride = D;
  in.row_factors = rf.data();
  in.dim = dim;
  in.normalize_rows = normalize;
  in.exclude = with_exclude ? exclude.data() : nullptr;
  in.k = k;
  const Result want = brute_force(in);
  std::vector<omnikern::Int8Isa> isas = {omnikern::Int8Isa::kScalar};
  if (omnikern::int8_best_isa() != "scalar") isas.push_back(omnikern::Int8Isa::kAvx2);
  if (omnikern::int8_best_isa() == "avx512vnni") isas.push_back(omnikern::Int8Isa::kAvx512Vnni);
  for (omnikern::Int8Isa isa : isas) {
    for (int threads : {1, 2, 3, 7}) {
      Result got{std::vector<float>(Q * k), std::vector<int64_t>(Q * k)};
      omnikern::int8_topk(in, got.scores.data(), got.indices.data(), threads, isa);
      bool same = got.indices == want.indices;
      for (int64_t i = 0; i < Q * k; ++i)
        same = same && (got.scores[i] == want.scores[i] || (std::isinf(got.scores[i]) && std::isinf(want.scores[i])));
      if (!same)
        std::fprintf(stderr, "mismatch Q=%lld N=%lld D=%lld dim=%lld k=%lld normalize=%d isa=%d threads=%d\n",
                     static_cast<long long>(Q), static_cast<long long>(N), static_cast<long long>(D),
                     static_cast<long long>(dim), static_cast<long long>(k), normalize, static_cast<int>(isa), threads);
      OMNIKERN_CHECK(same);
    }
  }
}

void run_tests() {
  // Ties: codes in [-2, 1] make many equal dot products.
  check_case(5, 3001, 17, 17, 10, false, true, 2, 1);
  check_case(9, 2500, 64, 64, 1, false, false, 2, 2);
  // Full range including -128 in the corpus, odd and aligned widths, prefixes.
  check_case(7, 2100, 256, 256, 16, false, true, 128, 3);
  check_case(6, 1500, 100, 33, 7, true, true, 128, 4);
  check_case(4, 999, 31, 31, 5, true, false, 128, 5);
  // k = N and k > N.
  check_case(3, 40, 48, 48, 40, false, true, 128, 6);
  check_case(2, 40, 48, 20, 57, true, true, 128, 7);
  check_case(1, 1, 1, 1, 3, false, false, 128, 8);
  // A last block that lies wholly past the rows safe for padded reads (narrow rows, dim < D).
  check_case(3, 130, 7, 6, 1, true, true, 128, 10);
  check_case(2, 2100, 5, 3, 4, false, true, 128, 11);
  // More queries than one pass takes: sliced batches.
  check_case(4100, 60, 8, 8, 3, false, true, 128, 9);

  // Bad inputs throw, never crash.
  std::vector<int8_t> q(8, 1), x(16, 1);
  std::vector<float> f(2, 1.0f);
  omnikern::Int8TopkInput in;
  in.queries = q.data();
  in.num_queries = 1;
  in.query_stride = 8;
  in.query_factors = f.data();
  in.codes = x.data();
  in.num_rows = 2;
  in.row_stride = 8;
  in.row_factors = f.data();
  in.dim = 8;
  in.k = 1;
  std::vector<float> s(4);
  std::vector<int64_t> idx(4);
  auto throws = [&](omnikern::Int8TopkInput bad, bool out_of_range) {
    try {
      omnikern::int8_topk(bad, s.data(), idx.data(), 1);
    } catch (const std::out_of_range&) {
      return out_of_range;
    } catch (const std::invalid_argument&) {
      return !out_of_range;
    }
    return false;
  };
  auto bad = in;
  bad.k = 0;
  OMNIKERN_CHECK(throws(bad, false));
  bad = in;
  bad.dim = 9;
  OMNIKERN_CHECK(throws(bad, false));
  int64_t excl = 2;
  bad = in;
  bad.exclude = &excl;
  OMNIKERN_CHECK(throws(bad, true));
  q[3] = -128;
  OMNIKERN_CHECK(throws(in, false));
  bool parse_throws = false;
  try {
    omnikern::parse_int8_isa("sse9");
  } catch (const std::invalid_argument&) {
    parse_throws = true;
  }
  OMNIKERN_CHECK(parse_throws);
}

}  // namespace

OMNIKERN_TEST_MAIN()
