// The only file that sees pybind11: converts Python inputs to C++ types, releases the GIL for
// batch work, and maps C++ exceptions (std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError; pybind11 does this by default).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hashing/string_hash.h"
#include "scoring/int8_topk.h"

namespace py = pybind11;

namespace {

// Accept str (encoded as UTF-8) or bytes (taken as-is) for each item of `strings`.
std::vector<std::string> to_byte_strings(const py::iterable& strings, const char* arg_name) {
  std::vector<std::string> out;
  for (const py::handle item : strings) {
    if (py::isinstance<py::str>(item)) {
      // Not item.cast<std::string>(): that hides a UnicodeEncodeError (lone surrogates) behind a
      // RuntimeError. Let Python's own error through instead.
      Py_ssize_t size = 0;
      const char* data = PyUnicode_AsUTF8AndSize(item.ptr(), &size);
      if (data == nullptr) throw py::error_already_set();
      out.emplace_back(data, static_cast<size_t>(size));
    } else if (py::isinstance<py::bytes>(item)) {
      out.push_back(std::string(item.cast<py::bytes>()));
    } else {
      throw py::type_error(std::string(arg_name) + " must hold str or bytes items, got " +
                           std::string(py::str(py::type::of(item).attr("__name__"))));
    }
  }
  return out;
}

template <int64_t (*IdFn)(std::string_view)>
py::array_t<int64_t> hash_ids(const py::iterable& strings) {
  const std::vector<std::string> items = to_byte_strings(strings, "strings");
  py::array_t<int64_t> ids(static_cast<py::ssize_t>(items.size()));
  int64_t* out = ids.mutable_data();
  {
    py::gil_scoped_release release;
    for (size_t i = 0; i < items.size(); ++i) out[i] = IdFn(items[i]);
  }
  return ids;
}

}  // namespace

// ---- int8 scoring: helpers ----
namespace {

using Int8Array = py::array_t<int8_t, py::array::c_style>;
using FloatArray = py::array_t<float, py::array::c_style>;
using Int64Array = py::array_t<int64_t, py::array::c_style>;

void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) + " dimension(s), got " +
                                std::to_string(a.ndim()));
}

// queries: float32 (Q, >= dim); quantised here (GIL released) so that no torch op runs per call.
py::tuple int8_topk_py(const FloatArray& queries, const Int8Array& codes, const std::optional<FloatArray>& scales,
                       int64_t dim, const std::optional<Int64Array>& exclude, int64_t k, int num_threads,
                       const std::string& isa_name) {
  require_ndim(queries, 2, "query");
  require_ndim(codes, 2, "codes");
  const int64_t Q = queries.shape(0);
  if (dim <= 0 || dim > queries.shape(1) || dim > codes.shape(1))
    throw std::invalid_argument("dim must be in [1, " + std::to_string(codes.shape(1)) + "], got " + std::to_string(dim));
  if (k <= 0) throw std::invalid_argument("k must be > 0, got " + std::to_string(k));
  omnikern::Int8TopkInput in;
  in.num_queries = Q;
  in.query_stride = dim;
  in.codes = codes.data();
  in.num_rows = codes.shape(0);
  in.row_stride = codes.shape(1);
  in.dim = dim;
  in.k = k;
  if (scales) {
    require_ndim(*scales, 1, "scales");
    if (scales->shape(0) != in.num_rows) throw std::invalid_argument("scales must have one entry per row");
    in.row_factors = scales->data();
  } else {
    in.normalize_rows = true;  // prefix cosine: row factor 1 / ‖codes[i, :dim]‖
  }
  if (exclude) {
    require_ndim(*exclude, 1, "exclude");
    if (exclude->shape(0) != Q) throw std::invalid_argument("exclude must have one entry per query");
    in.exclude = exclude->data();
  }
  const omnikern::Int8Isa isa = omnikern::parse_int8_isa(isa_name);
  FloatArray out_scores({Q, k});
  Int64Array out_indices({Q, k});
  float* scores_ptr = out_scores.mutable_data();
  int64_t* indices_ptr = out_indices.mutable_data();
  const float* query_ptr = queries.data();
  const int64_t query_stride = queries.shape(1);
  {
    py::gil_scoped_release release;
    std::vector<int8_t> qcodes(static_cast<size_t>(Q * dim));
    std::vector<float> qfactors(static_cast<size_t>(Q));
    omnikern::quantize_int8_rows(query_ptr, Q, query_stride, dim, qcodes.data(), qfactors.data());
    if (in.normalize_rows) {
      // 1 / ‖qc‖ with correctly rounded float ops, as the torch and Triton paths compute it.
      for (int64_t q = 0; q < Q; ++q) {
        int32_t ss = 0;
        for (int64_t d = 0; d < dim; ++d) ss += qcodes[q * dim + d] * qcodes[q * dim + d];
        qfactors[q] = ss > 0 ? 1.0f / std::sqrt(static_cast<float>(ss)) : 0.0f;
      }
    }
    in.queries = qcodes.data();
    in.query_factors = qfactors.data();
    omnikern::int8_topk(in, scores_ptr, indices_ptr, num_threads, isa);
  }
  return py::make_tuple(out_scores, out_indices);
}

py::tuple quantize_int8_py(const FloatArray& x) {
  require_ndim(x, 2, "x");
  const int64_t n = x.shape(0), d = x.shape(1);
  Int8Array codes({n, d});
  FloatArray scales(n);
  int8_t* codes_ptr = codes.mutable_data();
  float* scales_ptr = scales.mutable_data();
  {
    py::gil_scoped_release release;
    omnikern::quantize_int8_rows(x.data(), n, d, d, codes_ptr, scales_ptr);
  }
  return py::make_tuple(codes, scales);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "omnikern C++ extension: text processing, hashing and CPU scoring on plain buffers";
  m.attr("__version__") = OMNIKERN_VERSION;

  m.def("string_id_hash32", &hash_ids<omnikern::string_id32>, py::arg("strings"),
        "int64 ids (N,) from LevelDB's 32-bit hash of each string's UTF-8 bytes: 1 + int32(h), "
        "0 for the empty string.");
  m.def("string_id_hash64", &hash_ids<omnikern::string_id64>, py::arg("strings"),
        "int64 ids (N,) from MurmurHash64A of each string's UTF-8 bytes: 1 + (h >> 1), "
        "0 for the empty string.");
  m.def(
      "leveldb_hash32",
      [](const py::bytes& data, uint32_t seed) {
        return omnikern::leveldb_hash32(std::string_view(data), seed);
      },
      py::arg("data"), py::arg("seed") = 0xbc9f1d34u, "LevelDB's uint32 hash of raw bytes.");

  // ---- int8 scoring ----
  m.def("int8_topk", &int8_topk_py, py::arg("queries"), py::arg("codes"), py::arg("scales"), py::arg("dim"),
        py::arg("exclude"), py::arg("k"), py::arg("num_threads") = 0, py::arg("isa") = "auto",
        "Top-k rows of int8 `codes` (N, D) per float32 query (Q, >= dim), searching columns [0, dim). "
        "The queries' prefixes are quantised like omnikern.quantize_int8. Score: float(dot) * q_scale * "
        "scales[i] (scales given), or the prefix cosine float(dot) * (1/|qc|) * (1/|c_i|) (scales None). "
        "Returns (scores float32 (Q, k), indices int64 (Q, k)): higher score first, ties lower index "
        "first, padding -inf / -1. exclude: int64 (Q,) row to skip per query (< 0: none) or None. "
        "Results do not depend on num_threads (0 = all cores) or isa ('auto', 'avx2', 'scalar'). "
        "The GIL is released during the work.");
  m.def("quantize_int8", &quantize_int8_py, py::arg("x"),
        "(codes int8 (N, D), scales float32 (N,)) of float32 x (N, D), bit-identical to "
        "omnikern.quantize_int8.");
  m.def("int8_best_isa", &omnikern::int8_best_isa, "The instruction set int8_topk uses with isa='auto'.");
}
