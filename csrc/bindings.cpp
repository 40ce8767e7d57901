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
}
