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
#include "common/parallel.h"
#include "tokenize/wordpiece.h"
#include "unicode/unicode.h"
#include "pooling/pooling.h"
#include "scoring/int8_topk.h"
#include "ngram/ngram.h"
#include <cstring>

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

// ---- wordpiece + unicode (helpers) ----
namespace {

// The UTF-8 bytes of a str (CPython caches them on the object) or of a bytes object, without a
// copy: valid while `item` is alive. A str with lone surrogates raises UnicodeEncodeError (a
// ValueError); other types raise TypeError naming `arg_name`.
std::string_view utf8_view(py::handle item, const char* arg_name) {
  if (PyUnicode_Check(item.ptr())) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();
    return std::string_view(data, static_cast<size_t>(size));
  }
  if (PyBytes_Check(item.ptr())) {
    return std::string_view(PyBytes_AS_STRING(item.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(item.ptr())));
  }
  throw py::type_error(std::string(arg_name) + " must be str or bytes, got " +
                       std::string(py::str(py::type::of(item).attr("__name__"))));
}

std::u32string to_u32(py::handle text, const char* arg_name) {
  return omnikern::unicode::decode_utf8(utf8_view(text, arg_name));
}

py::str from_u32(const std::u32string& text) {
  const std::string utf8 = omnikern::unicode::encode_utf8(text);
  return py::str(utf8.data(), utf8.size());
}

omnikern::unicode::Ucd parse_ucd(const std::string& version) {
  if (version == "8.0") return omnikern::unicode::Ucd::kV8;
  if (version == "17.0") return omnikern::unicode::Ucd::kV17;
  throw std::invalid_argument("unicode_version must be '8.0' or '17.0', got '" + version + "'");
}

// (input_ids, attention_mask), both int64 (B, L) with L the longest row, padded with pad_id / 0.
py::tuple wordpiece_encode_batch(const omnikern::WordPieceTokenizer& tok, const py::iterable& texts,
                                 int num_threads) {
  const py::list items(texts);  // holds every item alive while its bytes are viewed
  std::vector<std::string_view> views;
  views.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const py::handle item = items[i];
    if (!PyUnicode_Check(item.ptr()) && !PyBytes_Check(item.ptr()))
      throw py::type_error("texts[" + std::to_string(i) + "] must be str or bytes, got " +
                           std::string(py::str(py::type::of(item).attr("__name__"))));
    views.push_back(utf8_view(item, "texts"));
  }
  std::vector<std::vector<int32_t>> rows;
  size_t longest = 0;
  {
    py::gil_scoped_release release;
    rows = tok.encode_batch(views, num_threads);
    for (const auto& r : rows) longest = std::max(longest, r.size());
  }
  const auto b = static_cast<py::ssize_t>(rows.size()), l = static_cast<py::ssize_t>(longest);
  py::array_t<int64_t> ids({b, l}), mask({b, l});
  int64_t* ids_out = ids.mutable_data();
  int64_t* mask_out = mask.mutable_data();
  const int64_t pad = tok.pad_id();
  {
    py::gil_scoped_release release;
    omnikern::parallel_for(rows.size(), num_threads, 4096, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        int64_t* row_ids = ids_out + i * longest;
        int64_t* row_mask = mask_out + i * longest;
        const auto& r = rows[i];
        for (size_t j = 0; j < longest; ++j) {
          const bool real = j < r.size();
          row_ids[j] = real ? r[j] : pad;
          row_mask[j] = real ? 1 : 0;
        }
      }
    });
  }
  return py::make_tuple(ids, mask);
}

}  // namespace
// ---- end wordpiece + unicode (helpers) ----
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
// ---- end int8 scoring: helpers ----

// ---- ngram (helpers) ----
namespace {

// Views of the UTF-8 bytes of each item of `texts` (a list the caller keeps alive).
std::vector<std::string_view> ngram_text_views(const py::list& items, const char* arg_name) {
  std::vector<std::string_view> views;
  views.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const py::handle item = items[i];
    if (!PyUnicode_Check(item.ptr()) && !PyBytes_Check(item.ptr()))
      throw py::type_error(std::string(arg_name) + "[" + std::to_string(i) + "] must be str or bytes, got " +
                           std::string(py::str(py::type::of(item).attr("__name__"))));
    views.push_back(utf8_view(item, arg_name));
  }
  return views;
}

py::array_t<int64_t> to_int64_array(const std::vector<int64_t>& values) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(values.size()));
  if (!values.empty()) std::memcpy(out.mutable_data(), values.data(), values.size() * sizeof(int64_t));
  return out;
}

// (input_ids (N,), offsets (len(texts),)) int64: the nn.EmbeddingBag input of a flat list of texts.
py::tuple ngram_featurize_batch(const omnikern::NGramFeaturizer& f, const py::iterable& texts, size_t num_fields,
                                int num_threads) {
  const py::list items(texts);
  const std::vector<std::string_view> views = ngram_text_views(items, "texts");
  std::vector<int64_t> ids, offsets;
  {
    py::gil_scoped_release release;
    f.featurize_batch(views, num_fields, num_threads, ids, offsets);
  }
  return py::make_tuple(to_int64_array(ids), to_int64_array(offsets));
}

py::tuple ngram_count(const py::iterable& corpus, const std::array<size_t, 3>& caps, int64_t min_count,
                      int num_threads) {
  const py::list items(corpus);
  const std::vector<std::string_view> views = ngram_text_views(items, "corpus");
  std::array<std::vector<std::pair<std::string, int64_t>>, 3> counts;
  {
    py::gil_scoped_release release;
    counts = omnikern::count_ngrams(views, caps, min_count, num_threads);
  }
  return py::make_tuple(py::cast(counts[0]), py::cast(counts[1]), py::cast(counts[2]));
}

}  // namespace
// ---- end ngram (helpers) ----

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
  // ---- wordpiece + unicode ----
  m.attr("UNICODE_VERSIONS") = py::make_tuple(omnikern::unicode::tables::kVersionV8,
                                              omnikern::unicode::tables::kVersionV17);
  m.def(
      "unicode_normalize",
      [](const py::object& text, const std::string& form, const std::string& unicode_version) {
        using omnikern::unicode::Form;
        Form f;
        if (form == "NFC") f = Form::NFC;
        else if (form == "NFD") f = Form::NFD;
        else if (form == "NFKC") f = Form::NFKC;
        else if (form == "NFKD") f = Form::NFKD;
        else throw std::invalid_argument("form must be one of NFC, NFD, NFKC, NFKD, got '" + form + "'");
        return from_u32(omnikern::unicode::normalize(to_u32(text, "text"), f, parse_ucd(unicode_version)));
      },
      py::arg("text"), py::arg("form"), py::arg("unicode_version") = "17.0",
      "str: `text` (str or UTF-8 bytes) in normalisation form `form`. NFD may use unicode_version='8.0'.");
  m.def(
      "unicode_lowercase",
      [](const py::object& text) { return from_u32(omnikern::unicode::lowercase(to_u32(text, "text"))); },
      py::arg("text"), "str: full, context-free lowercase of each code point (Unicode 17).");
  m.def(
      "unicode_casefold",
      [](const py::object& text) { return from_u32(omnikern::unicode::casefold(to_u32(text, "text"))); },
      py::arg("text"), "str: full case folding of each code point (Unicode 17).");
  m.def(
      "unicode_category",
      [](uint32_t cp, const std::string& unicode_version) {
        static const char* names[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd",
                                      "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm",
                                      "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
        if (cp > 0x10FFFF) throw std::invalid_argument("code_point must be <= 0x10FFFF, got " + std::to_string(cp));
        return std::string(names[static_cast<int>(omnikern::unicode::category(cp, parse_ucd(unicode_version)))]);
      },
      py::arg("code_point"), py::arg("unicode_version") = "17.0",
      "str: the general category of one code point in Unicode 8.0 or 17.0.");

  py::class_<omnikern::WordPieceTokenizer>(m, "WordPieceTokenizer",
                                           "BERT WordPiece with ids identical to HF tokenizers (see omnikern.text).")
      .def(py::init([](const std::vector<std::pair<std::string, int32_t>>& vocab, bool clean_text,
                       bool handle_chinese_chars, bool strip_accents, bool lowercase, const std::string& unk_token,
                       const std::string& continuing_subword_prefix, size_t max_input_chars_per_word,
                       const std::string& cls_token, const std::string& sep_token, const std::string& pad_token,
                       const std::vector<std::string>& special_tokens, size_t max_length, bool add_special_tokens,
                       const std::vector<std::string>& pre_normalization) {
             omnikern::WordPieceOptions o;
             o.normalizer = {clean_text, handle_chinese_chars, strip_accents, lowercase};
             o.unk_token = unk_token;
             o.continuing_subword_prefix = continuing_subword_prefix;
             o.max_input_chars_per_word = max_input_chars_per_word;
             o.cls_token = cls_token;
             o.sep_token = sep_token;
             o.pad_token = pad_token;
             o.special_tokens = special_tokens;
             o.max_length = max_length;
             o.add_special_tokens = add_special_tokens;
             for (const std::string& step : pre_normalization) {
               if (step == "nfkc") o.pre_nfkc = true;
               else if (step == "lowercase") o.pre_lowercase = true;
               else if (step == "collapse_whitespace") o.pre_collapse_whitespace = true;
               else if (step == "trim") o.pre_trim = true;
               else throw std::invalid_argument("pre_normalization steps are nfkc, lowercase, collapse_whitespace, trim; got '" + step + "'");
             }
             return std::make_unique<omnikern::WordPieceTokenizer>(vocab, std::move(o));
           }),
           py::arg("vocab"), py::kw_only(), py::arg("clean_text"), py::arg("handle_chinese_chars"),
           py::arg("strip_accents"), py::arg("lowercase"), py::arg("unk_token"),
           py::arg("continuing_subword_prefix"), py::arg("max_input_chars_per_word"), py::arg("cls_token"),
           py::arg("sep_token"), py::arg("pad_token"), py::arg("special_tokens"), py::arg("max_length"),
           py::arg("add_special_tokens"), py::arg("pre_normalization") = std::vector<std::string>{})
      .def(
          "encode",
          [](const omnikern::WordPieceTokenizer& tok, const py::object& text) {
            const std::string_view bytes = utf8_view(text, "text");
            std::vector<int32_t> ids;
            {
              py::gil_scoped_release release;
              ids = tok.encode(bytes);
            }
            return ids;
          },
          py::arg("text"), "list[int]: the ids of one text (str or UTF-8 bytes).")
      .def("encode_batch", &wordpiece_encode_batch, py::arg("texts"), py::arg("num_threads") = 0,
           "(input_ids, attention_mask): int64 arrays (B, L), L = the longest row; rows padded with [PAD] / 0.")
      .def(
          "normalize",
          [](const omnikern::WordPieceTokenizer& tok, const py::object& text) {
            return from_u32(tok.normalize(to_u32(text, "text")));
          },
          py::arg("text"), "str: the BERT-normalised text (before splitting into words).")
      .def("token_id", &omnikern::WordPieceTokenizer::token_id, py::arg("token"), "int: id of `token`, -1 if absent.")
      .def_property_readonly("pad_id", &omnikern::WordPieceTokenizer::pad_id)
      .def_property_readonly("unk_id", &omnikern::WordPieceTokenizer::unk_id)
      .def_property_readonly("cls_id", &omnikern::WordPieceTokenizer::cls_id)
      .def_property_readonly("sep_id", &omnikern::WordPieceTokenizer::sep_id);
  // ---- end wordpiece + unicode ----

  // ---- pooling ----
  m.def("pool", &pool_arrays, py::arg("token_embeddings"), py::arg("attention_mask"), py::arg("modes"),
        py::arg("num_threads") = 0,
        "float32 (B, H * len(modes)) from C-contiguous token_embeddings (B, L, H) float32/float16 and "
        "attention_mask (B, L) int64/int32/bool/uint8 (nonzero = attend); modes from 'cls', 'mean', "
        "'mean_sqrt', 'max', concatenated in order. Releases the GIL; identical for any num_threads.");
  // ---- end pooling ----

  // ---- int8 scoring ----
  m.def("int8_topk", &int8_topk_py, py::arg("queries"), py::arg("codes"), py::arg("scales"), py::arg("dim"),
        py::arg("exclude"), py::arg("k"), py::arg("num_threads") = 0, py::arg("isa") = "auto",
        "Top-k rows of int8 `codes` (N, D) per float32 query (Q, >= dim), searching columns [0, dim). "
        "The queries' prefixes are quantised like omnikern.quantize_int8. Score: float(dot) * q_scale * "
        "scales[i] (scales given), or the prefix cosine float(dot) * (1/|qc|) * (1/|c_i|) (scales None). "
        "Returns (scores float32 (Q, k), indices int64 (Q, k)): higher score first, ties lower index "
        "first, padding -inf / -1. exclude: int64 (Q,) row to skip per query (< 0: none) or None. "
        "Results do not depend on num_threads (0 = all cores) or isa ('auto', 'avx512vnni', 'avx2', 'scalar'). "
        "The GIL is released during the work.");
  m.def("quantize_int8", &quantize_int8_py, py::arg("x"),
        "(codes int8 (N, D), scales float32 (N,)) of float32 x (N, D), bit-identical to "
        "omnikern.quantize_int8.");
  m.def("int8_best_isa", &omnikern::int8_best_isa, "The instruction set int8_topk uses with isa='auto'.");
  // ---- end int8 scoring ----

  // ---- ngram ----
  m.def(
      "ngram_normalize", [](const py::object& text) { return omnikern::ngram_normalize(utf8_view(text, "text")); },
      py::arg("text"), "str: NFKC_Casefold of `text` (str or UTF-8 bytes), Unicode 17.0, as ICU's nfkc_cf.");
  m.def(
      "ngram_char_trigrams",
      [](const py::object& text) { return omnikern::char_trigrams(utf8_view(text, "text")); }, py::arg("text"),
      "list[str]: the char trigrams of the NFKC_Casefold-ed text, with '#' boundaries, in order.");
  m.def(
      "ngram_word_ngrams",
      [](const py::object& text, size_t n) { return omnikern::word_ngrams(utf8_view(text, "text"), n); },
      py::arg("text"), py::arg("n"), "list[str]: the word n-grams (n words joined by '#') of the normalised text.");
  m.def("ngram_count", &ngram_count, py::arg("corpus"), py::arg("caps"), py::arg("min_count"),
        py::arg("num_threads") = 0,
        "(trigrams, unigrams, bigrams): lists of (token, count), most frequent first, ties by code point "
        "order, at most caps[k] each with count >= min_count. Releases the GIL.");
  py::class_<omnikern::NGramFeaturizer>(m, "NGramFeaturizer",
                                        "Char-trigram + word uni/bigram ids for nn.EmbeddingBag (see omnikern.text).")
      .def(py::init([](const std::vector<std::string>& char_trigram_vocab, const std::vector<std::string>& unigram_vocab,
                       const std::vector<std::string>& bigram_vocab, uint64_t oov_buckets) {
             return std::make_unique<omnikern::NGramFeaturizer>(
                 std::array<std::vector<std::string>, 3>{char_trigram_vocab, unigram_vocab, bigram_vocab}, oov_buckets);
           }),
           py::arg("char_trigram_vocab"), py::arg("unigram_vocab"), py::arg("bigram_vocab"), py::arg("oov_buckets"))
      .def("featurize_batch", &ngram_featurize_batch, py::arg("texts"), py::arg("num_fields") = 0,
           py::arg("num_threads") = 0,
           "(input_ids, offsets): int64 (N,) and (len(texts),); text i's ids start at offsets[i]. "
           "num_fields > 0 only names errors as texts[row][field]. Releases the GIL; identical for any num_threads.")
      .def(
          "featurize",
          [](const omnikern::NGramFeaturizer& f, const py::object& text) {
            const std::string_view bytes = utf8_view(text, "text");
            std::vector<int64_t> ids;
            {
              py::gil_scoped_release release;
              f.featurize(bytes, ids);
            }
            return to_int64_array(ids);
          },
          py::arg("text"), "int64 (N,): the ids of one text.")
      .def("base", &omnikern::NGramFeaturizer::base, py::arg("k"),
           "int: first id of vocabulary k's range (0 trigrams, 1 unigrams, 2 bigrams; 3 = total).")
      .def_property_readonly("vocab_size", &omnikern::NGramFeaturizer::vocab_size)
      .def_property_readonly("oov_buckets", &omnikern::NGramFeaturizer::oov_buckets);
  // ---- end ngram ----
}
