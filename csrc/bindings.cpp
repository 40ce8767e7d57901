// The only file that sees pybind11: converts Python inputs to C++ types, releases the GIL for
// batch work, and maps C++ exceptions (std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError; pybind11 does this by default).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <vector>

#include "hashing/string_hash.h"
#include "pooling/pooling.h"

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

// ---- pooling ----
namespace {

// Checks `arr` is C-contiguous with native byte order and `ndim` dimensions; the Python wrapper
// copies other layouts before calling, direct callers get a ValueError naming the argument.
void check_plain_array(const py::array& arr, const char* arg_name, py::ssize_t ndim) {
  if (arr.ndim() != ndim)
    throw std::invalid_argument(std::string(arg_name) + " must have " + std::to_string(ndim) +
                                " dimensions, got " + std::to_string(arr.ndim()));
  if (!(arr.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(arg_name) + " must be C-contiguous (use np.ascontiguousarray)");
  if (!arr.dtype().attr("isnative").cast<bool>())
    throw std::invalid_argument(std::string(arg_name) + " must have native byte order");
}

std::string dtype_name(const py::array& arr) { return py::str(arr.dtype()).cast<std::string>(); }

py::array_t<float> pool_arrays(const py::array& token_embeddings, const py::array& attention_mask,
                               const std::vector<std::string>& modes, int num_threads) {
  check_plain_array(token_embeddings, "token_embeddings", 3);
  check_plain_array(attention_mask, "attention_mask", 2);
  const char kind = token_embeddings.dtype().kind();
  const py::ssize_t size = token_embeddings.itemsize();
  omnikern::EmbeddingType emb_type;
  if (kind == 'f' && size == 4) {
    emb_type = omnikern::EmbeddingType::kFloat32;
  } else if (kind == 'f' && size == 2) {
    emb_type = omnikern::EmbeddingType::kFloat16;
  } else {
    throw py::type_error("token_embeddings must be float32 or float16, got " + dtype_name(token_embeddings));
  }
  const char mask_kind = attention_mask.dtype().kind();
  const py::ssize_t mask_size = attention_mask.itemsize();
  omnikern::MaskType mask_type;
  if (mask_kind == 'i' && mask_size == 8) {
    mask_type = omnikern::MaskType::kInt64;
  } else if (mask_kind == 'i' && mask_size == 4) {
    mask_type = omnikern::MaskType::kInt32;
  } else if ((mask_kind == 'b' || mask_kind == 'u') && mask_size == 1) {
    mask_type = omnikern::MaskType::kUInt8;
  } else {
    throw py::type_error("attention_mask must be int64, int32, bool or uint8, got " + dtype_name(attention_mask));
  }
  const py::ssize_t B = token_embeddings.shape(0), L = token_embeddings.shape(1), H = token_embeddings.shape(2);
  if (attention_mask.shape(0) != B || attention_mask.shape(1) != L)
    throw std::invalid_argument("attention_mask must have shape (B, L) = (" + std::to_string(B) + ", " +
                                std::to_string(L) + ") to match token_embeddings, got (" +
                                std::to_string(attention_mask.shape(0)) + ", " +
                                std::to_string(attention_mask.shape(1)) + ")");
  std::vector<omnikern::PoolMode> parsed;
  for (const std::string& name : modes) parsed.push_back(omnikern::parse_pool_mode(name));
  py::array_t<float> out({B, H * static_cast<py::ssize_t>(parsed.size())});
  const void* emb_ptr = token_embeddings.data();
  const void* mask_ptr = attention_mask.data();
  float* out_ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    omnikern::pool(emb_ptr, emb_type, mask_ptr, mask_type, B, L, H, parsed, out_ptr, num_threads);
  }
  return out;
}

}  // namespace
// ---- end pooling ----

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

  // ---- pooling ----
  m.def("pool", &pool_arrays, py::arg("token_embeddings"), py::arg("attention_mask"), py::arg("modes"),
        py::arg("num_threads") = 0,
        "float32 (B, H * len(modes)) from C-contiguous token_embeddings (B, L, H) float32/float16 and "
        "attention_mask (B, L) int64/int32/bool/uint8 (nonzero = attend); modes from 'cls', 'mean', "
        "'mean_sqrt', 'max', concatenated in order. Releases the GIL; identical for any num_threads.");
  // ---- end pooling ----
}
