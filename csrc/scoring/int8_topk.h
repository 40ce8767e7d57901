// Exact top-k over int8 codes on the CPU: int8 x int8 -> int32 dot products, a per-row float
// factor, and a bounded selection per query. No score matrix is kept: each corpus block's scores
// are filtered against the current k-th best as soon as they are computed.
#pragma once

#include <cstdint>
#include <string>

namespace omnikern {

/// Instruction sets for the dot-product kernel. kAuto picks the best the CPU supports:
/// AVX-512 VNNI (vpdpbusd), else AVX2 (vpmaddubsw/vpmaddwd), else portable scalar C++.
enum class Int8Isa { kAuto, kAvx512Vnni, kAvx2, kScalar };

/// Parses "auto" | "avx512vnni" | "avx2" | "scalar"; throws std::invalid_argument otherwise.
Int8Isa parse_int8_isa(const std::string& name);

/// The instruction set kAuto resolves to on this CPU ("avx512vnni", "avx2" or "scalar").
std::string int8_best_isa();

/// Inputs of int8_topk. All pointers are row-major and must outlive the call.
struct Int8TopkInput {
  const int8_t* queries = nullptr;       ///< (num_queries, query_stride) int8 codes
  int64_t num_queries = 0;
  int64_t query_stride = 0;              ///< elements between query rows (>= dim)
  const float* query_factors = nullptr;  ///< (num_queries,) per-query factor
  const int8_t* codes = nullptr;         ///< (num_rows, row_stride) int8 corpus codes
  int64_t num_rows = 0;
  int64_t row_stride = 0;                ///< elements between corpus rows (>= dim)
  const float* row_factors = nullptr;    ///< (num_rows,) per-row factor; ignored if normalize_rows
  int64_t dim = 0;                       ///< columns used: the prefix [0, dim)
  bool normalize_rows = false;           ///< row factor = 1 / ‖codes[i, :dim]‖ (0 for a zero prefix)
  const int64_t* exclude = nullptr;      ///< (num_queries,) row to skip per query, < 0 for none; may be null
  int64_t k = 0;
};

/// Top-k rows per query by score
///     s(q, i) = (float(Σ_{d<dim} queries[q, d] · codes[i, d]) · query_factor[q]) · row_factor[i]
/// computed in float32 in that order (the Triton kernel computes the identical float).
/// Writes out_scores (num_queries, k) and out_indices (num_queries, k): higher score first, equal
/// scores lower index first; slots past the number of candidates hold -inf and -1. The result does
/// not depend on num_threads (0 = all cores) or on the instruction set.
/// Throws std::invalid_argument on bad sizes or out-of-range exclude entries.
void int8_topk(const Int8TopkInput& input, float* out_scores, int64_t* out_indices, int num_threads,
               Int8Isa isa = Int8Isa::kAuto);

/// Symmetric per-row int8 quantisation of the first `dim` columns of `rows` float rows (stride
/// `stride`), with the same float32 operations as omnikern.quantize_int8 (bit-identical):
/// scale = max|x| / 127, code = clamp(round_half_even(x / scale), -127, 127), scale 0 -> codes 0.
/// Writes codes (rows, dim) and scales (rows,). Throws std::invalid_argument on NaN/inf.
void quantize_int8_rows(const float* x, int64_t rows, int64_t stride, int64_t dim, int8_t* codes, float* scales);

/// The int8 form of float32 queries for int8_topk: codes (num_queries, dim) of the first `dim`
/// columns of each query row (stride `stride`, >= dim), quantised as quantize_int8_rows does, and
/// one factor per query: its scale, or with `inverse_norm` (the prefix cosine, for normalize_rows)
///     1 / sqrt(float(Σ_d codes[q, d]²))   (0 for an all-zero code row)
/// in correctly rounded float32, as the torch and Triton paths compute it. Writes codes
/// (num_queries, dim) and factors (num_queries,). Throws std::invalid_argument on NaN/inf.
void quantize_queries(const float* queries, int64_t num_queries, int64_t stride, int64_t dim, bool inverse_norm,
                      int8_t* codes, float* factors);

}  // namespace omnikern
