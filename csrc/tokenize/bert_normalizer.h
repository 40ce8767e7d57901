// HF tokenizers' BertNormalizer + BertPreTokenizer, reproduced code point for code point.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace omnikern {

struct BertNormalizerOptions {
  bool clean_text = true;            ///< drop NUL, U+FFFD, Cc/Cf/Co (not \t\n\r); White_Space -> ' '
  bool handle_chinese_chars = true;  ///< pad the BERT CJK ranges with spaces
  bool strip_accents = true;         ///< NFD (Unicode 8.0 data), then drop Mn (8.0 categories)
  bool lowercase = true;             ///< full lowercase per code point (Unicode 17), no context
};

/// The BERT normaliser in HF's order: clean -> CJK padding -> strip accents -> lowercase.
class BertNormalizer {
 public:
  explicit BertNormalizer(BertNormalizerOptions options = {});

  /// Appends the normalised form of `text` to `out` (`scratch` is reused working memory).
  void normalize(std::u32string_view text, std::u32string& out, std::u32string& scratch) const;
  std::u32string normalize(std::u32string_view text) const;

  const BertNormalizerOptions& options() const { return options_; }

 private:
  BertNormalizerOptions options_;
  // What each ASCII code point becomes after the whole pipeline: -1 = deleted.
  int16_t ascii_[128];
};

/// BERT punctuation: ASCII 33-47, 58-64, 91-96, 123-126, or any P* category of Unicode 8.0.
bool is_bert_punctuation(char32_t cp);

/// BertPreTokenizer: splits on White_Space, then makes every punctuation code point its own word.
/// Calls on_word(begin, end) with indices into `text`, in order.
template <typename OnWord>
void bert_pre_tokenize(std::u32string_view text, OnWord&& on_word);

}  // namespace omnikern

#include "unicode/unicode.h"

namespace omnikern {
template <typename OnWord>
void bert_pre_tokenize(std::u32string_view text, OnWord&& on_word) {
  size_t start = 0;
  const size_t n = text.size();
  for (size_t i = 0; i < n; ++i) {
    const char32_t c = text[i];
    if (unicode::is_white_space(c)) {
      if (i > start) on_word(start, i);
      start = i + 1;
    } else if (is_bert_punctuation(c)) {
      if (i > start) on_word(start, i);
      on_word(i, i + 1);
      start = i + 1;
    }
  }
  if (n > start) on_word(start, n);
}
}  // namespace omnikern
