// The only file that sees pybind11: converts Python inputs to C++ types, releases the GIL for
// batch work, and maps C++ exceptions (std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError; pybind11 does this by default). The work itself is in the pure
// C++ components under csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/parallel.h"
#include "hashing/string_hash.h"
#include "ngram/ngram.h"
#include "pooling/pooling.h"
#include "scoring/int8_topk.h"
#include "tokenize/wordpiece.h"
#include "unicode/unicode.h"

namespace py = pybind11;

namespace {

std::string type_name(py::handle obj) { return py::str(py::type::of(obj).attr("__name__")); }

// Text inputs ---------------------------------------------------------------------------------

// How a TypeError for a non-text input names it.
enum class TextName {
  kArgument,     // "text must be str or bytes, got int"
  kIndexedItem,  // "texts[3] must be str or bytes, got int"
  kAnyItem,      // "strings must hold str or bytes items, got int"
};

// A text input: the UTF-8 bytes of a str (CPython caches them on the object) or the bytes of a
// bytes object, viewed without a copy, so valid while `item` is alive. A str with lone surrogates
// raises Python's UnicodeEncodeError (a ValueError; item.cast<std::string>() would hide it behind
// a RuntimeError); any other type raises a TypeError naming `arg_name` (item `index` of it for
// TextName::kIndexedItem).
std::string_view text_view(py::handle item, const char* arg_name, TextName name = TextName::kArgument,
                           size_t index = 0) {
  if (PyUnicode_Check(item.ptr())) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();
    return std::string_view(data, static_cast<size_t>(size));
  }
  if (PyBytes_Check(item.ptr()))
    return std::string_view(PyBytes_AS_STRING(item.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(item.ptr())));
  const std::string arg(arg_name);
  switch (name) {
    case TextName::kArgument:
      throw py::type_error(arg + " must be str or bytes, got " + type_name(item));
    case TextName::kIndexedItem:
      throw py::type_error(arg + "[" + std::to_string(index) + "] must be str or bytes, got " + type_name(item));
    case TextName::kAnyItem:
      break;
  }
  throw py::type_error(arg + " must hold str or bytes items, got " + type_name(item));
}

// A sequence of text inputs: text_view() of each item of `texts`, with the items kept alive by a
// list of this call's own (the caller's list may change while the GIL is released).
struct TextBatch {
  py::list items;
  std::vector<std::string_view> views;
};

TextBatch text_batch(const py::iterable& texts, const char* arg_name, TextName name = TextName::kIndexedItem) {
  TextBatch batch{py::reinterpret_steal<py::list>(PySequence_List(texts.ptr())), {}};
  if (!batch.items) throw py::error_already_set();
  batch.views.reserve(batch.items.size());
  for (size_t i = 0; i < batch.items.size(); ++i) batch.views.push_back(text_view(batch.items[i], arg_name, name, i));
  return batch;
}

std::u32string to_u32(py::handle text, const char* arg_name) {
  return omnikern::unicode::decode_utf8(text_view(text, arg_name));
}

py::str from_u32(const std::u32string& text) {
  const std::string utf8 = omnikern::unicode::encode_utf8(text);
  return py::str(utf8.data(), utf8.size());
}

// Arrays --------------------------------------------------------------------------------------

struct DType {
  char kind;  // numpy's dtype.kind
  py::ssize_t itemsize;
  const char* name;
};

// Checks that `arr` has `ndim` dimensions and is C-contiguous with native byte order (the Python
// wrappers copy other layouts before calling; direct callers get a ValueError naming the argument)
// and, when `dtypes` is not empty, that its dtype is one of them (else a TypeError listing them).
// Returns the index of its dtype in `dtypes` (0 when `dtypes` is empty).
size_t check_array(const py::array& arr, const char* arg_name, py::ssize_t ndim,
                   std::initializer_list<DType> dtypes = {}) {
  const std::string arg(arg_name);
  if (arr.ndim() != ndim)
    throw std::invalid_argument(arg + " must have " + std::to_string(ndim) + (ndim == 1 ? " dimension" : " dimensions") +
                                ", got " + std::to_string(arr.ndim()));
  if (!(arr.flags() & py::array::c_style))
    throw std::invalid_argument(arg + " must be C-contiguous (use np.ascontiguousarray)");
  if (!arr.dtype().attr("isnative").cast<bool>()) throw std::invalid_argument(arg + " must have native byte order");
  if (dtypes.size() == 0) return 0;
  const char kind = arr.dtype().kind();
  const py::ssize_t itemsize = arr.itemsize();
  std::string allowed;
  size_t i = 0;
  for (const DType& t : dtypes) {
    if (t.kind == kind && t.itemsize == itemsize) return i;
    allowed += std::string(i == 0 ? "" : i + 1 == dtypes.size() ? " or " : ", ") + t.name;
    ++i;
  }
  throw py::type_error(arg + " must be " + allowed + ", got " + py::str(arr.dtype()).cast<std::string>());
}

py::array_t<int64_t> to_int64_array(const std::vector<int64_t>& values) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(values.size()));
  if (!values.empty()) std::memcpy(out.mutable_data(), values.data(), values.size() * sizeof(int64_t));
  return out;
}

// Hashing -------------------------------------------------------------------------------------

template <int64_t (*IdFn)(std::string_view)>
py::array_t<int64_t> hash_ids(const py::iterable& strings) {
  const TextBatch batch = text_batch(strings, "strings", TextName::kAnyItem);
  py::array_t<int64_t> ids(static_cast<py::ssize_t>(batch.views.size()));
  int64_t* out = ids.mutable_data();
  {
    py::gil_scoped_release release;
    for (size_t i = 0; i < batch.views.size(); ++i) out[i] = IdFn(batch.views[i]);
  }
  return ids;
}

// Unicode and WordPiece -----------------------------------------------------------------------

omnikern::unicode::Ucd parse_ucd(const std::string& version) {
  if (version == "8.0") return omnikern::unicode::Ucd::kV8;
  if (version == "17.0") return omnikern::unicode::Ucd::kV17;
  throw std::invalid_argument("unicode_version must be '8.0' or '17.0', got '" + version + "'");
}

// (input_ids, attention_mask), both int64 (B, L) with L the longest row, padded with pad_id / 0.
py::tuple wordpiece_encode_batch(const omnikern::WordPieceTokenizer& tok, const py::iterable& texts,
                                 int num_threads) {
  const TextBatch batch = text_batch(texts, "texts");
  std::vector<std::vector<int32_t>> rows;
  size_t longest = 0;
  {
    py::gil_scoped_release release;
    rows = tok.encode_batch(batch.views, num_threads);
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

// Pooling -------------------------------------------------------------------------------------

py::array_t<float> pool_arrays(const py::array& token_embeddings, const py::array& attention_mask,
                               const std::vector<std::string>& modes, int num_threads) {
  static constexpr omnikern::EmbeddingType kEmbeddingTypes[] = {omnikern::EmbeddingType::kFloat32,
                                                                omnikern::EmbeddingType::kFloat16};
  static constexpr omnikern::MaskType kMaskTypes[] = {omnikern::MaskType::kInt64, omnikern::MaskType::kInt32,
                                                      omnikern::MaskType::kUInt8, omnikern::MaskType::kUInt8};
  const omnikern::EmbeddingType emb_type =
      kEmbeddingTypes[check_array(token_embeddings, "token_embeddings", 3, {{'f', 4, "float32"}, {'f', 2, "float16"}})];
  const omnikern::MaskType mask_type = kMaskTypes[check_array(
      attention_mask, "attention_mask", 2, {{'i', 8, "int64"}, {'i', 4, "int32"}, {'b', 1, "bool"}, {'u', 1, "uint8"}})];
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

// Int8 scoring --------------------------------------------------------------------------------

// c_style array_t arguments: pybind11 converts other layouts and byte orders (not dtypes).
using Int8Array = py::array_t<int8_t, py::array::c_style>;
using FloatArray = py::array_t<float, py::array::c_style>;
using Int64Array = py::array_t<int64_t, py::array::c_style>;

// queries: float32 (Q, >= dim); quantised by omnikern::quantize_queries with the GIL released, so
// that no torch op runs per call.
py::tuple int8_topk_py(const FloatArray& queries, const Int8Array& codes, const std::optional<FloatArray>& scales,
                       int64_t dim, const std::optional<Int64Array>& exclude, int64_t k, int num_threads,
                       const std::string& isa_name) {
  check_array(queries, "query", 2);
  check_array(codes, "codes", 2);
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
    check_array(*scales, "scales", 1);
    if (scales->shape(0) != in.num_rows) throw std::invalid_argument("scales must have one entry per row");
    in.row_factors = scales->data();
  } else {
    in.normalize_rows = true;  // prefix cosine: row factor 1 / ‖codes[i, :dim]‖
  }
  if (exclude) {
    check_array(*exclude, "exclude", 1);
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
    omnikern::quantize_queries(query_ptr, Q, query_stride, dim, in.normalize_rows, qcodes.data(), qfactors.data());
    in.queries = qcodes.data();
    in.query_factors = qfactors.data();
    omnikern::int8_topk(in, scores_ptr, indices_ptr, num_threads, isa);
  }
  return py::make_tuple(out_scores, out_indices);
}

py::tuple quantize_int8_py(const FloatArray& x) {
  check_array(x, "x", 2);
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

// N-grams -------------------------------------------------------------------------------------

// (input_ids (N,), offsets (len(texts),)) int64: the nn.EmbeddingBag input of a flat list of texts.
py::tuple ngram_featurize_batch(const omnikern::NGramFeaturizer& f, const py::iterable& texts, size_t num_fields,
                                int num_threads) {
  const TextBatch batch = text_batch(texts, "texts");
  std::vector<int64_t> ids, offsets;
  {
    py::gil_scoped_release release;
    f.featurize_batch(batch.views, num_fields, num_threads, ids, offsets);
  }
  return py::make_tuple(to_int64_array(ids), to_int64_array(offsets));
}

py::tuple ngram_count(const py::iterable& corpus, const std::array<size_t, 3>& caps, int64_t min_count,
                      int num_threads) {
  const TextBatch batch = text_batch(corpus, "corpus");
  std::array<std::vector<std::pair<std::string, int64_t>>, 3> counts;
  {
    py::gil_scoped_release release;
    counts = omnikern::count_ngrams(batch.views, caps, min_count, num_threads);
  }
  return py::make_tuple(py::cast(counts[0]), py::cast(counts[1]), py::cast(counts[2]));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "omnikern C++ extension: text processing, hashing and CPU scoring on plain buffers";
  m.attr("__version__") = OMNIKERN_VERSION;

  // Hashing
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

  // Unicode
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

  // WordPiece
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
            const std::string_view bytes = text_view(text, "text");
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

  // Pooling
  m.def("pool", &pool_arrays, py::arg("token_embeddings"), py::arg("attention_mask"), py::arg("modes"),
        py::arg("num_threads") = 0,
        "float32 (B, H * len(modes)) from C-contiguous token_embeddings (B, L, H) float32/float16 and "
        "attention_mask (B, L) int64/int32/bool/uint8 (nonzero = attend); modes from 'cls', 'mean', "
        "'mean_sqrt', 'max', concatenated in order. Releases the GIL; identical for any num_threads.");

  // Int8 scoring
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

  // N-grams
  m.def(
      "ngram_normalize", [](const py::object& text) { return omnikern::ngram_normalize(text_view(text, "text")); },
      py::arg("text"), "str: NFKC_Casefold of `text` (str or UTF-8 bytes), Unicode 17.0, as ICU's nfkc_cf.");
  m.def(
      "ngram_char_trigrams",
      [](const py::object& text) { return omnikern::char_trigrams(text_view(text, "text")); }, py::arg("text"),
      "list[str]: the char trigrams of the NFKC_Casefold-ed text, with '#' boundaries, in order.");
  m.def(
      "ngram_word_ngrams",
      [](const py::object& text, size_t n) { return omnikern::word_ngrams(text_view(text, "text"), n); },
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
            const std::string_view bytes = text_view(text, "text");
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
}
