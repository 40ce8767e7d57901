// Blocking and threading
// ----------------------
// The corpus is split into one contiguous chunk per thread; each thread walks its chunk in blocks
// of kBlockRows rows (kBlockRows · D bytes stay in L1/L2) and, for every group of up to 4 queries,
// computes the group's dot products with the block, turns them into scores and offers each score
// to the query's bounded heap. A thread's heaps only ever see rows in increasing index order, so a
// score equal to the heap's worst is always worse (larger index) and the cheap test `s > worst`
// is exact. Heaps from all threads are merged per query by (score desc, index asc): a strict total
// order, so the top-k set and its order are unique and independent of the thread count.
//
// Dot products (AVX2)
// -------------------
// vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16. With both operands
// signed we use the sign trick: |x| · (q · sign(x)) = q · x, where vpabsb gives |x| as an unsigned
// byte (|-128| = 128 included) and vpsignb computes q · sign(x); query codes are in [-127, 127] so
// q · sign(x) never wraps. A pair sum is at most 2 · 128 · 127 = 32512 < 2^15, so the int16 step
// never saturates; vpmaddwd by 1 then widens pairs to int32. |x| is computed once per corpus
// vector and shared by the query group. Queries are copied into
// zero-padded buffers of width round_up(dim, 32): a zero query byte zeroes the product, so reading
// up to 31 bytes past `dim` in a corpus row is harmless as long as the bytes exist; the last rows,
// where they might not, use the scalar dot.
//
// Dot products (AVX-512 VNNI)
// ---------------------------
// vpdpbusd adds four unsigned × signed byte products straight into an int32 lane, with no
// intermediate saturation. Queries are offset to unsigned, qu = q + 128, and the offset is removed
// with the row sums: q · x = qu · x − 128 · Σx. Each corpus block is repacked once (shared by all
// queries) so that one zmm holds 4 consecutive columns of 16 rows; a query's 4 bytes are
// broadcast, and each vpdpbusd advances 16 rows at once with no horizontal sums. Only `dim`
// columns are packed (zeros beyond), so nothing is read past a row.
#include "scoring/int8_topk.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OMNIKERN_X86 1
#else
#define OMNIKERN_X86 0
#endif

#include "common/parallel.h"

namespace omnikern {
namespace {

constexpr int64_t kBlockRows = 128;  // 128 rows x 256 bytes = 32 KiB: fits L1d beside the queries
constexpr int64_t kLanes = 32;        // bytes per AVX2 register
constexpr int kGroup = 4;             // queries per micro-kernel call (AVX2, scalar)
constexpr int kVnniGroup = 8;         // queries per micro-kernel call (AVX-512 VNNI)
constexpr int64_t kMinRowsPerThread = 1024;  // below this a thread costs more than it saves
constexpr int64_t kMaxQueriesPerPass = 4096;  // bounds the heaps' memory (see int8_topk)

struct Candidate {
  float score;
  int64_t index;
};

// a before b in the output order: higher score, then lower index.
inline bool better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// The k best candidates seen so far; the worst sits at the heap's front.
class BoundedHeap {
 public:
  void reset(Candidate* storage, int64_t k) {
    data_ = storage;
    k_ = k;
    size_ = 0;
    worst_ = -std::numeric_limits<float>::infinity();
  }
  // Scores <= worst() cannot enter (for rows offered in increasing index order); while the heap is
  // not full, worst() is -inf and every finite score enters.
  float worst() const { return worst_; }
  void push(float score, int64_t index) {
    const Candidate c{score, index};
    if (size_ < k_) {
      data_[size_++] = c;
      std::push_heap(data_, data_ + size_, better);
      if (size_ == k_) worst_ = data_[0].score;
    } else if (better(c, data_[0])) {
      std::pop_heap(data_, data_ + size_, better);
      data_[size_ - 1] = c;
      std::push_heap(data_, data_ + size_, better);
      worst_ = data_[0].score;
    }
  }
  int64_t size() const { return size_; }

 private:
  Candidate* data_ = nullptr;
  int64_t k_ = 0, size_ = 0;
  float worst_ = 0.0f;
};

// Queries copied into zero-padded rows of `padded` bytes.
struct QueryPack {
  std::vector<int8_t> codes;
  int64_t padded = 0;
  const int8_t* row(int64_t q) const { return codes.data() + q * padded; }
};

inline int32_t dot_scalar(const int8_t* a, const int8_t* b, int64_t n) {
  int32_t acc = 0;
  for (int64_t d = 0; d < n; ++d) acc += static_cast<int32_t>(a[d]) * static_cast<int32_t>(b[d]);
  return acc;
}

// out[m * kBlockRows + j] = dot(query q0 + m, row j) for m < mr, j < nrows.
using BlockDotFn = void (*)(const QueryPack& pack, int64_t q0, int mr, const int8_t* rows, int64_t nrows,
                            int64_t row_stride, int64_t dim, int64_t vector_rows, int32_t* out);

void block_dots_scalar(const QueryPack& pack, int64_t q0, int mr, const int8_t* rows, int64_t nrows,
                       int64_t row_stride, int64_t dim, int64_t /*vector_rows*/, int32_t* out) {
  for (int m = 0; m < mr; ++m)
    for (int64_t j = 0; j < nrows; ++j) out[m * kBlockRows + j] = dot_scalar(pack.row(q0 + m), rows + j * row_stride, dim);
}

// A block of up to kBlockRows rows repacked for vpdpbusd: for row group g (16 rows) and column
// quad c, 64 bytes = rows g·16 .. g·16+15, columns 4c .. 4c+3; plus each row's Σx.
struct PackedBlock {
  std::vector<int8_t> data;
  std::vector<int32_t> row_sums;
  int64_t quads = 0;
};

void pack_block(const int8_t* rows, int64_t nrows, int64_t row_stride, int64_t dim, PackedBlock& out) {
  out.quads = (dim + 3) / 4;
  const int64_t groups = (nrows + 31) / 32 * 2;  // the micro-kernel takes row groups in pairs
  out.data.assign(static_cast<size_t>(groups * 16 * out.quads * 4), 0);
  out.row_sums.assign(static_cast<size_t>(groups * 16), 0);
  for (int64_t r = 0; r < nrows; ++r) {
    const int8_t* x = rows + r * row_stride;
    int8_t* dst = out.data.data() + (r / 16) * 16 * out.quads * 4 + (r % 16) * 4;
    int32_t sum = 0;
    const int64_t full = dim / 4;
    for (int64_t c = 0; c < full; ++c) std::memcpy(dst + c * 64, x + 4 * c, 4);
    for (int64_t d = 4 * full; d < dim; ++d) dst[full * 64 + (d - 4 * full)] = x[d];
    for (int64_t d = 0; d < dim; ++d) sum += x[d];
    out.row_sums[r] = 128 * sum;  // the offset term of q · x = qu · x − 128 · Σx
  }
}

// Queries offset to unsigned (q + 128 as a byte), rows of `padded` bytes.
struct UnsignedQueries {
  std::vector<uint8_t> codes;
  int64_t padded = 0;
  const uint8_t* row(int64_t q) const { return codes.data() + q * padded; }
};

#if OMNIKERN_X86

// Sum of the eight int32 lanes of each of a, b, c, d, returned as the four lanes of an xmm.
__attribute__((target("avx2"))) inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_hadd_epi32(a, b);
  const __m256i cd = _mm256_hadd_epi32(c, d);
  const __m256i abcd = _mm256_hadd_epi32(ab, cd);  // per 128-bit half: [a, b, c, d] partial sums
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

__attribute__((target("avx2"))) inline int32_t hsum1(__m256i a) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  const __m128i u = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(u);
}

// q · x for 32 bytes, as 8 int32 partial sums (see the file comment): ax = |x|.
__attribute__((target("avx2"))) inline __m256i dot32(__m256i ax, __m256i x, __m256i q, __m256i ones) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(q, x)), ones);
}

// Four queries against two rows: 8 int32 accumulators; each 32-byte step costs, per pair,
// vpsignb + vpmaddubsw + vpmaddwd + vpaddd.
__attribute__((target("avx2"))) void dots_4x2(const QueryPack& pack, int64_t q0, const int8_t* x0, const int8_t* x1,
                                              int32_t* out0, int32_t* out1) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[4][2];
  for (int m = 0; m < 4; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
  const int8_t* q[4] = {pack.row(q0), pack.row(q0 + 1), pack.row(q0 + 2), pack.row(q0 + 3)};
  for (int64_t d = 0; d < pack.padded; d += kLanes) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + d));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1 + d));
    const __m256i aa = _mm256_abs_epi8(a), ab = _mm256_abs_epi8(b);
    for (int m = 0; m < 4; ++m) {
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[m] + d));
      acc[m][0] = _mm256_add_epi32(acc[m][0], dot32(aa, a, qs, ones));
      acc[m][1] = _mm256_add_epi32(acc[m][1], dot32(ab, b, qs, ones));
    }
  }
  alignas(16) int32_t s[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(s), hsum4(acc[0][0], acc[1][0], acc[2][0], acc[3][0]));
  for (int m = 0; m < 4; ++m) out0[m * kBlockRows] = s[m];
  _mm_store_si128(reinterpret_cast<__m128i*>(s), hsum4(acc[0][1], acc[1][1], acc[2][1], acc[3][1]));
  for (int m = 0; m < 4; ++m) out1[m * kBlockRows] = s[m];
}

// One query against four rows (the one-query-at-a-time case is memory-bound: stream rows fast).
__attribute__((target("avx2"))) void dots_1x4(const QueryPack& pack, int64_t qi, const int8_t* x, int64_t row_stride,
                                              int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[4];
  for (int j = 0; j < 4; ++j) acc[j] = _mm256_setzero_si256();
  const int8_t* q = pack.row(qi);
  for (int64_t d = 0; d < pack.padded; d += kLanes) {
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + d));
    for (int j = 0; j < 4; ++j) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j * row_stride + d));
      acc[j] = _mm256_add_epi32(acc[j], dot32(_mm256_abs_epi8(a), a, qs, ones));
    }
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), hsum4(acc[0], acc[1], acc[2], acc[3]));
}

__attribute__((target("avx2"))) int32_t dots_1x1(const QueryPack& pack, int64_t qi, const int8_t* x) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  const int8_t* q = pack.row(qi);
  for (int64_t d = 0; d < pack.padded; d += kLanes) {
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + d));
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + d));
    acc = _mm256_add_epi32(acc, dot32(_mm256_abs_epi8(a), a, qs, ones));
  }
  return hsum1(acc);
}

// Rows [0, vector_rows) may be read `pack.padded` bytes wide; the rest use the scalar dot.
__attribute__((target("avx2"))) void block_dots_avx2(const QueryPack& pack, int64_t q0, int mr, const int8_t* rows,
                                                     int64_t nrows, int64_t row_stride, int64_t dim,
                                                     int64_t vector_rows, int32_t* out) {
  // vector_rows is relative to the block and may be negative for the corpus's last block.
  const int64_t nvec = std::max<int64_t>(0, std::min(nrows, vector_rows));
  if (mr == kGroup) {
    int64_t j = 0;
    for (; j + 2 <= nvec; j += 2)
      dots_4x2(pack, q0, rows + j * row_stride, rows + (j + 1) * row_stride, out + j, out + j + 1);
    for (; j < nvec; ++j)
      for (int m = 0; m < mr; ++m) out[m * kBlockRows + j] = dots_1x1(pack, q0 + m, rows + j * row_stride);
  } else {
    for (int m = 0; m < mr; ++m) {
      int32_t* o = out + m * kBlockRows;
      int64_t j = 0;
      for (; j + 4 <= nvec; j += 4) dots_1x4(pack, q0 + m, rows + j * row_stride, row_stride, o + j);
      for (; j < nvec; ++j) o[j] = dots_1x1(pack, q0 + m, rows + j * row_stride);
    }
  }
  for (int m = 0; m < mr; ++m)
    for (int64_t j = nvec; j < nrows; ++j)
      out[m * kBlockRows + j] = dot_scalar(pack.row(q0 + m), rows + j * row_stride, dim);
}

bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }
bool cpu_has_avx512vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}

// MR queries × 32 rows (two row groups) per call: 2·MR zmm accumulators.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void vnni_tile(const UnsignedQueries& uq, int64_t q0,
                                                                        const PackedBlock& pb, int64_t g, int32_t* out) {
  __m512i acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_si512();
  const int8_t* x0 = pb.data.data() + g * 16 * pb.quads * 4;
  const int8_t* x1 = x0 + 16 * pb.quads * 4;
  for (int64_t c = 0; c < pb.quads; ++c) {
    const __m512i a = _mm512_loadu_si512(x0 + c * 64);
    const __m512i b = _mm512_loadu_si512(x1 + c * 64);
    for (int m = 0; m < MR; ++m) {
      int32_t word;
      std::memcpy(&word, uq.row(q0 + m) + 4 * c, 4);
      const __m512i qb = _mm512_set1_epi32(word);
      acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], qb, a);
      acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], qb, b);
    }
  }
  // q · x = qu · x − 128 · Σx
  const __m512i s0 = _mm512_loadu_si512(pb.row_sums.data() + g * 16);
  const __m512i s1 = _mm512_loadu_si512(pb.row_sums.data() + g * 16 + 16);
  for (int m = 0; m < MR; ++m) {
    _mm512_storeu_si512(out + m * kBlockRows + g * 16, _mm512_sub_epi32(acc[m][0], s0));
    _mm512_storeu_si512(out + m * kBlockRows + g * 16 + 16, _mm512_sub_epi32(acc[m][1], s1));
  }
}

// out[m * kBlockRows + j] for m < mr (<= kVnniGroup), j < round_up(nrows, 32).
void block_dots_vnni(const UnsignedQueries& uq, int64_t q0, int mr, const PackedBlock& pb, int64_t nrows, int32_t* out) {
  for (int64_t g = 0; g < (nrows + 15) / 16; g += 2) {
    switch (mr) {
      case 1: vnni_tile<1>(uq, q0, pb, g, out); break;
      case 2: vnni_tile<2>(uq, q0, pb, g, out); break;
      case 3: vnni_tile<3>(uq, q0, pb, g, out); break;
      case 4: vnni_tile<4>(uq, q0, pb, g, out); break;
      case 5: vnni_tile<5>(uq, q0, pb, g, out); break;
      case 6: vnni_tile<6>(uq, q0, pb, g, out); break;
      case 7: vnni_tile<7>(uq, q0, pb, g, out); break;
      default: vnni_tile<8>(uq, q0, pb, g, out); break;
    }
  }
}

#else

bool cpu_has_avx2() { return false; }
bool cpu_has_avx512vnni() { return false; }

#endif  // OMNIKERN_X86

void check_input(const Int8TopkInput& in) {
  auto fail = [](const std::string& msg) { throw std::invalid_argument("int8_topk: " + msg); };
  if (in.num_queries < 0 || in.num_rows < 0) fail("num_queries and num_rows must be >= 0");
  if (in.k <= 0) fail("k must be > 0, got " + std::to_string(in.k));
  if (in.dim <= 0) fail("dim must be > 0, got " + std::to_string(in.dim));
  if (in.query_stride < in.dim || in.row_stride < in.dim)
    fail("query_stride and row_stride must be >= dim (" + std::to_string(in.dim) + ")");
  if (in.num_queries > 0 && (!in.queries || !in.query_factors)) fail("queries and query_factors must be set");
  if (in.num_rows > 0 && (!in.codes || (!in.normalize_rows && !in.row_factors)))
    fail("codes and row_factors must be set");
  if (in.num_rows > (int64_t{1} << 40)) fail("num_rows too large");
  // -128 in a query would wrap in vpsignb (see the file comment); our quantiser never emits it.
  for (int64_t q = 0; q < in.num_queries; ++q)
    for (int64_t d = 0; d < in.dim; ++d)
      if (in.queries[q * in.query_stride + d] == -128)
        fail("query codes must be in [-127, 127], found -128 in query " + std::to_string(q));
  if (in.exclude)
    for (int64_t q = 0; q < in.num_queries; ++q)
      if (in.exclude[q] >= in.num_rows)
        throw std::out_of_range("int8_topk: exclude[" + std::to_string(q) + "] = " + std::to_string(in.exclude[q]) +
                                " is out of range for " + std::to_string(in.num_rows) + " rows");
}

}  // namespace

Int8Isa parse_int8_isa(const std::string& name) {
  if (name == "auto") return Int8Isa::kAuto;
  if (name == "avx512vnni") return Int8Isa::kAvx512Vnni;
  if (name == "avx2") return Int8Isa::kAvx2;
  if (name == "scalar") return Int8Isa::kScalar;
  throw std::invalid_argument("isa must be 'auto', 'avx512vnni', 'avx2' or 'scalar', got '" + name + "'");
}

void quantize_int8_rows(const float* x, int64_t rows, int64_t stride, int64_t dim, int8_t* codes, float* scales) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * stride;
    float amax = 0.0f;
    for (int64_t d = 0; d < dim; ++d) {
      if (!std::isfinite(row[d]))
        throw std::invalid_argument("query must be finite, got NaN or inf in row " + std::to_string(r));
      amax = std::max(amax, std::fabs(row[d]));
    }
    const float scale = amax / 127.0f;
    const float safe = scale > 0.0f ? scale : 1.0f;
    for (int64_t d = 0; d < dim; ++d) {
      // nearbyint rounds half to even in the default rounding mode, like torch.round.
      const float v = std::min(127.0f, std::max(-127.0f, std::nearbyint(row[d] / safe)));
      codes[r * dim + d] = scale > 0.0f ? static_cast<int8_t>(v) : int8_t{0};
    }
    scales[r] = scale;
  }
}

void quantize_queries(const float* queries, int64_t num_queries, int64_t stride, int64_t dim, bool inverse_norm,
                      int8_t* codes, float* factors) {
  quantize_int8_rows(queries, num_queries, stride, dim, codes, factors);
  if (!inverse_norm) return;
  for (int64_t q = 0; q < num_queries; ++q) {
    const int8_t* row = codes + q * dim;
    int32_t ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += row[d] * row[d];
    factors[q] = ss > 0 ? 1.0f / std::sqrt(static_cast<float>(ss)) : 0.0f;
  }
}

std::string int8_best_isa() { return cpu_has_avx512vnni() ? "avx512vnni" : cpu_has_avx2() ? "avx2" : "scalar"; }

void int8_topk(const Int8TopkInput& in, float* out_scores, int64_t* out_indices, int num_threads, Int8Isa isa) {
  check_input(in);
  if (isa == Int8Isa::kAuto) isa = parse_int8_isa(int8_best_isa());
  if (isa == Int8Isa::kAvx2 && !cpu_has_avx2()) throw std::invalid_argument("isa 'avx2' is not supported by this CPU");
  if (isa == Int8Isa::kAvx512Vnni && !cpu_has_avx512vnni())
    throw std::invalid_argument("isa 'avx512vnni' is not supported by this CPU");
  // Row-wise kernel: AVX2 also serves the VNNI setting for batches too small to repack a block
  // for (every AVX-512 VNNI CPU has AVX2).
  BlockDotFn block_dots = block_dots_scalar;
#if OMNIKERN_X86
  if (isa == Int8Isa::kAvx2 || isa == Int8Isa::kAvx512Vnni) block_dots = block_dots_avx2;
#endif
  // Very large batches run in slices: the per-thread heaps take threads · Q · k candidates, and a
  // few thousand queries per corpus pass already make the pass compute-bound.
  if (in.num_queries > kMaxQueriesPerPass) {
    for (int64_t q0 = 0; q0 < in.num_queries; q0 += kMaxQueriesPerPass) {
      Int8TopkInput part = in;
      part.num_queries = std::min(kMaxQueriesPerPass, in.num_queries - q0);
      part.queries = in.queries + q0 * in.query_stride;
      part.query_factors = in.query_factors + q0;
      part.exclude = in.exclude ? in.exclude + q0 : nullptr;
      int8_topk(part, out_scores + q0 * in.k, out_indices + q0 * in.k, num_threads, isa);
    }
    return;
  }
  const int64_t Q = in.num_queries, N = in.num_rows, K = in.k, dim = in.dim;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < Q * K; ++i) {
    out_scores[i] = neg_inf;
    out_indices[i] = -1;
  }
  if (Q == 0 || N == 0) return;

  QueryPack pack;
  pack.padded = (dim + kLanes - 1) / kLanes * kLanes;
  pack.codes.assign(static_cast<size_t>(Q * pack.padded), 0);
  for (int64_t q = 0; q < Q; ++q)
    std::memcpy(pack.codes.data() + q * pack.padded, in.queries + q * in.query_stride, static_cast<size_t>(dim));
  // Rows whose padded read stays inside the buffer: i · row_stride + padded <= N · row_stride.
  const int64_t total = N * in.row_stride;
  const int64_t vector_rows = std::max<int64_t>(0, std::min<int64_t>(N, (total - pack.padded) / in.row_stride + 1));

  const int threads = std::max(1, std::min<int>(resolve_num_threads(num_threads),
                                                static_cast<int>((N + kMinRowsPerThread - 1) / kMinRowsPerThread)));
  std::vector<float> row_factor_storage;
  const float* row_factors = in.row_factors;
  if (in.normalize_rows) {
    row_factor_storage.resize(static_cast<size_t>(N));
    parallel_for(static_cast<size_t>(N), threads, kMinRowsPerThread, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        const int8_t* x = in.codes + static_cast<int64_t>(i) * in.row_stride;
        const int32_t ss = dot_scalar(x, x, dim);
        // The same float ops as the Triton kernel: 1 / sqrt_rn(float(ss)).
        row_factor_storage[i] = ss > 0 ? 1.0f / std::sqrt(static_cast<float>(ss)) : 0.0f;
      }
    });
    row_factors = row_factor_storage.data();
  }

  // One chunk of rows per thread, each with a heap per query.
  std::vector<Candidate> candidates(static_cast<size_t>(threads) * Q * K);
  std::vector<int64_t> counts(static_cast<size_t>(threads) * Q, 0);
  const int64_t chunk = (N + threads - 1) / threads;
  // VNNI pays a repacking pass per block; with fewer queries than a group it is not worth it.
  const bool use_vnni = OMNIKERN_X86 && isa == Int8Isa::kAvx512Vnni && Q >= kGroup;
  UnsignedQueries uq;
  if (use_vnni) {
    uq.padded = pack.padded;
    uq.codes.resize(pack.codes.size());
    for (size_t i = 0; i < uq.codes.size(); ++i) uq.codes[i] = static_cast<uint8_t>(pack.codes[i] ^ 0x80);
  }
  const int group = use_vnni ? kVnniGroup : kGroup;
  parallel_for(static_cast<size_t>(threads), threads, 1, [&](size_t tb, size_t te) {
    std::vector<int32_t> dots(static_cast<size_t>(kVnniGroup * kBlockRows));
    PackedBlock packed;
    std::vector<float> scores(static_cast<size_t>(kBlockRows));
    std::vector<BoundedHeap> heaps(static_cast<size_t>(Q));
    for (size_t t = tb; t < te; ++t) {
      const int64_t begin = static_cast<int64_t>(t) * chunk, end = std::min(N, begin + chunk);
      Candidate* store = candidates.data() + t * Q * K;
      for (int64_t q = 0; q < Q; ++q) heaps[q].reset(store + q * K, K);
      for (int64_t r0 = begin; r0 < end; r0 += kBlockRows) {
        const int64_t nrows = std::min(kBlockRows, end - r0);
        const int8_t* rows = in.codes + r0 * in.row_stride;
        if (use_vnni) pack_block(rows, nrows, in.row_stride, dim, packed);
        for (int64_t q0 = 0; q0 < Q; q0 += group) {
          const int mr = static_cast<int>(std::min<int64_t>(group, Q - q0));
#if OMNIKERN_X86
          if (use_vnni)
            block_dots_vnni(uq, q0, mr, packed, nrows, dots.data());
          else
#endif
            block_dots(pack, q0, mr, rows, nrows, in.row_stride, dim, vector_rows - r0, dots.data());
          for (int m = 0; m < mr; ++m) {
            const int64_t q = q0 + m;
            const float qf = in.query_factors[q];
            const int32_t* d = dots.data() + m * kBlockRows;
            const float* rf = row_factors + r0;
            // + 0.0f turns -0 into +0 so that the score's bits order like its value.
            for (int64_t j = 0; j < nrows; ++j) scores[j] = static_cast<float>(d[j]) * qf * rf[j] + 0.0f;
            BoundedHeap& heap = heaps[q];
            const int64_t skip = in.exclude ? in.exclude[q] - r0 : -1;
            for (int64_t j = 0; j < nrows; ++j)
              if (scores[j] > heap.worst() && j != skip) heap.push(scores[j], r0 + j);
          }
        }
      }
      for (int64_t q = 0; q < Q; ++q) counts[t * Q + q] = heaps[q].size();
    }
  });

  // Merge: all threads' candidates of a query, ordered by (score desc, index asc).
  parallel_for(static_cast<size_t>(Q), num_threads, 64, [&](size_t qb, size_t qe) {
    std::vector<Candidate> merged;
    for (size_t q = qb; q < qe; ++q) {
      merged.clear();
      for (int t = 0; t < threads; ++t) {
        const Candidate* c = candidates.data() + (static_cast<size_t>(t) * Q + q) * K;
        merged.insert(merged.end(), c, c + counts[static_cast<size_t>(t) * Q + q]);
      }
      const size_t take = std::min<size_t>(merged.size(), static_cast<size_t>(K));
      std::partial_sort(merged.begin(), merged.begin() + static_cast<int64_t>(take), merged.end(), better);
      for (size_t i = 0; i < take; ++i) {
        out_scores[q * K + i] = merged[i].score;
        out_indices[q * K + i] = merged[i].index;
      }
    }
  });
}

}  // namespace omnikern
