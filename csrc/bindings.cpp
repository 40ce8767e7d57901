// The only file that sees pybind11: converts Python inputs to C++ types, releases the GIL for
// batch work, and maps C++ exceptions (std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError; pybind11 does this by default).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

py::tuple int8_topk_py(const Int8Array& queries, const FloatArray& query_factors, const Int8Array& codes,
                       const std::optional<FloatArray>& row_factors, int64_t dim, const std::optional<Int64Array>& exclude,
                       int64_t k, int num_threads, const std::string& isa_name) {
  require_ndim(queries, 2, "queries");
  require_ndim(codes, 2, "codes");
  require_ndim(query_factors, 1, "query_factors");
  omnikern::Int8TopkInput in;
  in.queries = queries.data();
  in.num_queries = queries.shape(0);
  in.query_stride = queries.shape(1);
  in.query_factors = query_factors.data();
  in.codes = codes.data();
  in.num_rows = codes.shape(0);
  in.row_stride = codes.shape(1);
  in.dim = dim;
  in.k = k;
  if (query_factors.shape(0) != in.num_queries)
    throw std::invalid_argument("query_factors must have one entry per query");
  if (row_factors) {
    require_ndim(*row_factors, 1, "row_factors");
    if (row_factors->shape(0) != in.num_rows) throw std::invalid_argument("row_factors must have one entry per row");
    in.row_factors = row_factors->data();
  } else {
    in.normalize_rows = true;
  }
  if (exclude) {
    require_ndim(*exclude, 1, "exclude");
    if (exclude->shape(0) != in.num_queries) throw std::invalid_argument("exclude must have one entry per query");
    in.exclude = exclude->data();
  }
  const omnikern::Int8Isa isa = omnikern::parse_int8_isa(isa_name);
  if (k <= 0) throw std::invalid_argument("k must be > 0, got " + std::to_string(k));
  FloatArray scores({in.num_queries, k});
  Int64Array indices({in.num_queries, k});
  float* out_scores = scores.mutable_data();
  int64_t* out_indices = indices.mutable_data();
  {
    py::gil_scoped_release release;
    omnikern::int8_topk(in, out_scores, out_indices, num_threads, isa);
  }
  return py::make_tuple(scores, indices);
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
  m.def("int8_topk", &int8_topk_py, py::arg("queries"), py::arg("query_factors"), py::arg("codes"),
        py::arg("row_factors"), py::arg("dim"), py::arg("exclude"), py::arg("k"), py::arg("num_threads") = 0,
        py::arg("isa") = "auto",
        "Top-k rows of int8 `codes` (N, D) per int8 query (Q, >= dim) by "
        "float(dot over [0, dim)) * query_factors[q] * row_factors[i] (row_factors None: 1 / prefix norm of "
        "the row's codes). Returns (scores float32 (Q, k), indices int64 (Q, k)): higher score first, ties "
        "lower index first, padding -inf / -1. exclude: int64 (Q,) row to skip per query (< 0: none) or None. "
        "The GIL is released during the search.");
  m.def("int8_best_isa", &omnikern::int8_best_isa, "The instruction set int8_topk uses with isa='auto'.");
}
