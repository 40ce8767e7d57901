// Unicode building blocks shared by the tokenizers and featurisers: UTF-8 decode/encode, general
// category, combining class, White_Space, case mappings and the normalisation forms. No ICU: the
// data is generated into tables_generated.cc by gen_tables.py from two pinned UCD versions:
//   * Ucd::kV8  = Unicode 8.0.0 (categories, combining classes, canonical decompositions), the data
//     HF tokenizers' BERT normaliser/pre-tokenizer uses;
//   * Ucd::kV17 = Unicode 17.0.0 (all of the above plus compatibility decompositions,
//     compositions, lowercase and case folding), the default everywhere else.
// Lowercase and case folding exist only in 17.0 (also what HF uses, via Rust's std).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "unicode/tables_generated.h"

namespace omnikern::unicode {

/// Which Unicode Character Database a lookup reads.
enum class Ucd { kV8, kV17 };

/// Decodes UTF-8 into code points, appending to `out`. Throws std::invalid_argument naming the byte
/// offset of the first invalid sequence (overlong forms, surrogates, > U+10FFFF, truncation and
/// stray continuation bytes are all invalid).
void decode_utf8(std::string_view text, std::u32string& out);
std::u32string decode_utf8(std::string_view text);

/// Appends the UTF-8 encoding of `cp` (a valid scalar value) to `out`.
inline void append_utf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}
/// UTF-8 encoding of a code point sequence. Throws std::invalid_argument on a surrogate or a value
/// above U+10FFFF (with its index).
std::string encode_utf8(std::u32string_view text);

namespace detail {
template <typename S1, typename S2>
inline auto two_stage(const S1* stage1, const S2* stage2, char32_t cp) {
  if (cp >= 0x110000) cp = 0x10FFFF;  // U+10FFFF is a noncharacter: Cn, no mappings
  return stage2[(static_cast<size_t>(stage1[cp >> tables::kShift]) << tables::kShift) |
                (cp & ((1u << tables::kShift) - 1))];
}
inline uint16_t props(char32_t cp, Ucd ucd) {
  return ucd == Ucd::kV8 ? two_stage(tables::props_v8_stage1, tables::props_v8_stage2, cp)
                         : two_stage(tables::props_v17_stage1, tables::props_v17_stage2, cp);
}
}  // namespace detail

/// General category of `cp` in the given UCD (unassigned -> Cn, surrogates -> Cs).
inline Category category(char32_t cp, Ucd ucd = Ucd::kV17) {
  return static_cast<Category>(detail::props(cp, ucd) & 0xFF);
}
/// Canonical combining class (0 for starters).
inline int combining_class(char32_t cp, Ucd ucd = Ucd::kV17) { return detail::props(cp, ucd) >> 8; }

inline bool is_punctuation_category(Category c) { return c >= Category::Pc && c <= Category::Po; }
inline bool is_mark_nonspacing(char32_t cp, Ucd ucd = Ucd::kV17) { return category(cp, ucd) == Category::Mn; }

/// The White_Space property (25 code points, unchanged since Unicode 6.3): \t \n \v \f \r, space,
/// U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000.
inline bool is_white_space(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/// Appends the full lowercase mapping of `cp` (Unicode 17, context-free: Σ -> σ, İ -> i̇).
void append_lower(char32_t cp, std::u32string& out);
/// Appends the full case folding of `cp` (Unicode 17, CaseFolding.txt statuses C and F: ß -> ss).
void append_casefold(char32_t cp, std::u32string& out);
/// Appends the full canonical (compat=false) or compatibility (compat=true, 17.0 only) decomposition
/// of one code point, Hangul syllables included, without canonical reordering.
void append_decomposition(char32_t cp, std::u32string& out, bool compat, Ucd ucd = Ucd::kV17);
/// Stable-sorts every run of non-starters by combining class (the canonical ordering algorithm).
void canonical_reorder(std::u32string& text, size_t begin = 0, Ucd ucd = Ucd::kV17);

enum class Form { NFC, NFD, NFKC, NFKD };
/// The Unicode normalisation form of `text`. NFD may use the 8.0 data (what BERT needs); the
/// composed and compatibility forms use 17.0 only (std::invalid_argument otherwise).
std::u32string normalize(std::u32string_view text, Form form, Ucd ucd = Ucd::kV17);
/// Full case folding of each code point (no normalisation).
std::u32string casefold(std::u32string_view text);
/// Full lowercase of each code point, context-free.
std::u32string lowercase(std::u32string_view text);

/// The CJK ideograph ranges HF tokenizers' BERT normaliser pads with spaces (docs/text.md,
/// "Query tokenizer": HF has U+2B920 where the original BERT had U+2B820).
inline bool is_bert_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

}  // namespace omnikern::unicode
