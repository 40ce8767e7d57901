#include "tokenize/bert_normalizer.h"

#include "unicode/unicode.h"

namespace omnikern {

using unicode::Category;
using unicode::Ucd;

namespace {

// HF's is_control: Cc, Cf and Co (Unicode 8.0), except \t \n \r. Unassigned (Cn) code points stay.
bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  const Category c = unicode::category(cp, Ucd::kV8);
  return c == Category::Cc || c == Category::Cf || c == Category::Co;
}

}  // namespace

bool is_bert_punctuation(char32_t cp) {
  if (cp < 0x80) return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  return unicode::is_punctuation_category(unicode::category(cp, Ucd::kV8));
}

BertNormalizer::BertNormalizer(BertNormalizerOptions options) : options_(options) {
  for (char32_t c = 0; c < 128; ++c) {
    int16_t v = static_cast<int16_t>(c);
    if (options_.clean_text) {
      if (c == 0 || is_bert_control(c)) v = -1;
      else if (unicode::is_white_space(c)) v = ' ';
    }
    if (v >= 'A' && v <= 'Z' && options_.lowercase) v += 32;
    ascii_[c] = v;
  }
}

void BertNormalizer::normalize(std::u32string_view text, std::u32string& out, std::u32string& scratch) const {
  // Stage 1 (clean + CJK padding + NFD when stripping), into `scratch`; ASCII goes straight
  // through its precomputed table when no later stage can interact with it.
  scratch.clear();
  bool has_non_starter = false;
  for (const char32_t cp : text) {
    if (cp < 0x80) {
      const int16_t v = ascii_[cp];
      if (v >= 0) scratch.push_back(static_cast<char32_t>(v));
      continue;
    }
    char32_t c = cp;
    if (options_.clean_text) {
      if (c == 0xFFFD || is_bert_control(c)) continue;
      if (unicode::is_white_space(c)) {
        scratch.push_back(' ');
        continue;
      }
    }
    // CJK padding comes before NFD, so compatibility ideographs (U+F900...) are padded and then
    // decomposed to their unified ideograph.
    const bool pad = options_.handle_chinese_chars && unicode::is_bert_cjk(c);
    if (pad) scratch.push_back(' ');
    if (options_.strip_accents) {
      const size_t before = scratch.size();
      unicode::append_decomposition(c, scratch, /*compat=*/false, Ucd::kV8);
      for (size_t k = before; k < scratch.size() && !has_non_starter; ++k)
        has_non_starter = unicode::combining_class(scratch[k], Ucd::kV8) != 0;
    } else {
      scratch.push_back(c);
    }
    if (pad) scratch.push_back(' ');
  }
  // NFD's canonical reordering only matters when a non-starter was seen (rare outside accents).
  if (options_.strip_accents && has_non_starter) unicode::canonical_reorder(scratch, 0, Ucd::kV8);
  // Stage 2: drop Mn (when stripping) and lowercase.
  out.reserve(out.size() + scratch.size());
  for (const char32_t c : scratch) {
    if (c < 0x80) {
      out.push_back(c);  // already lowercased by the ASCII table or is ASCII from a decomposition
      if (options_.lowercase && c >= 'A' && c <= 'Z') out.back() = c + 32;
      continue;
    }
    if (options_.strip_accents && unicode::is_mark_nonspacing(c, Ucd::kV8)) continue;
    if (options_.lowercase) {
      unicode::append_lower(c, out);
    } else {
      out.push_back(c);
    }
  }
}

std::u32string BertNormalizer::normalize(std::u32string_view text) const {
  std::u32string out, scratch;
  normalize(text, out, scratch);
  return out;
}

}  // namespace omnikern
