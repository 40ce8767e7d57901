// Hashed n-gram item featuriser (docs/text.md, "Item featuriser"): NFKC_Casefold, char
// trigrams with a `#` boundary marker, word unigrams and bigrams, and the lookup of all three into
// one id space for nn.EmbeddingBag.
//
// Id layout. Vocabulary k (0 = char trigrams, 1 = unigrams, 2 = bigrams) with n_k tokens and
// `oov_buckets` extra buckets owns the ids [base_k, base_k + 1 + n_k + oov_buckets):
//     base_0 = 0, base_{k+1} = base_k + 1 + n_k + oov_buckets
//     token with 1-based rank r in vocab k         -> base_k + r
//     out-of-vocab token t (when oov_buckets > 0)  -> base_k + 1 + n_k + murmur_hash64a(utf8(t)) % oov_buckets
//     (out-of-vocab tokens are dropped when oov_buckets == 0)
// so base_k itself is never produced (0 is reserved in each range) and vocab_size() =
// base_3 is the row count an EmbeddingBag needs. A text's ids are its trigram ids, then its
// unigram ids, then its bigram ids, each in text order, repeats kept.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/token_map.h"

namespace omnikern {

/// Whitespace for n-grams: \t \n \r and the Zs code points (U+0020 included); other White_Space
/// (\v \f U+0085 U+2028 U+2029) and control characters are ordinary characters here.
bool is_ngram_whitespace(char32_t cp);
/// Punctuation for n-grams: the WordPiece set (ASCII 33-47, 58-64, 91-96, 123-126 and Unicode 8.0 P*).
bool is_ngram_punctuation(char32_t cp);
/// CJK ideographs that become words of their own: the original BERT ranges (U+2B820..2CEAF, not
/// HF's U+2B920).
bool is_ngram_cjk(char32_t cp);

/// The boundary-marked sequence the trigrams slide over: `#`, then the text with each whitespace
/// run as one `#` (leading whitespace dropped), then `#` unless the last code point pushed is `#`.
/// `text` is already normalised. Writes into `seq` (cleared first).
void trigram_sequence(std::u32string_view text, std::u32string& seq);

/// What a code point is to the word splitter.
enum class NGramClass : uint8_t { kOther, kSpace, kPunct, kCjk };
namespace detail {
NGramClass ngram_class_slow(char32_t cp);
// ASCII classes, computed at compile time from the same rules as is_ngram_whitespace/punctuation.
struct AsciiClasses {
  NGramClass of[128];
  constexpr AsciiClasses() : of() {
    for (int c = 0; c < 128; ++c) {
      const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
      const bool punct = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
      of[c] = space ? NGramClass::kSpace : punct ? NGramClass::kPunct : NGramClass::kOther;
    }
  }
};
inline constexpr AsciiClasses kAsciiClasses{};
}  // namespace detail
inline NGramClass ngram_class(char32_t cp) {
  return cp < 0x80 ? detail::kAsciiClasses.of[cp] : detail::ngram_class_slow(cp);
}

/// Calls on_word(begin, end) for each word of the normalised `text`, in order: maximal runs of code
/// points that are neither whitespace nor punctuation, and each CJK ideograph on its own.
template <typename OnWord>
void for_each_word(std::u32string_view text, OnWord&& on_word) {
  size_t start = 0;
  const size_t n = text.size();
  for (size_t i = 0; i < n; ++i) {
    const NGramClass cls = ngram_class(text[i]);
    if (cls == NGramClass::kOther) continue;
    if (cls != NGramClass::kCjk) {
      if (i > start) on_word(start, i);
      start = i + 1;
    } else {
      if (i > start) on_word(start, i);
      on_word(i, i + 1);
      start = i + 1;
    }
  }
  if (n > start) on_word(start, n);
}

/// The char trigrams of a UTF-8 text (after NFKC_Casefold), as UTF-8 strings, in order.
/// Throws std::invalid_argument on invalid UTF-8.
std::vector<std::string> char_trigrams(std::string_view text);
/// The word n-grams (n >= 1 words joined by `#`) of a UTF-8 text after NFKC_Casefold, in order.
std::vector<std::string> word_ngrams(std::string_view text, size_t n);
/// NFKC_Casefold of a UTF-8 text, as UTF-8.
std::string ngram_normalize(std::string_view text);

/// Token counts of a corpus: (token, count) per kind, most frequent first, ties by UTF-8 byte order
/// (= code point order); at most caps[k] per kind, each with count >= min_count. Uses up to
/// `num_threads` threads; the result does not depend on the thread count.
std::array<std::vector<std::pair<std::string, int64_t>>, 3> count_ngrams(const std::vector<std::string_view>& texts,
                                                                        std::array<size_t, 3> caps,
                                                                        int64_t min_count, int num_threads);

/// Maps texts to EmbeddingBag ids with three vocabularies (see the id layout above).
class NGramFeaturizer {
 public:
  /// `vocabs[k]` lists the tokens of kind k in rank order (rank 1 first). Throws
  /// std::invalid_argument on a repeated token, on a trigram that is not 3 code points, or on
  /// invalid UTF-8 (naming the vocabulary and index).
  NGramFeaturizer(const std::array<std::vector<std::string>, 3>& vocabs, uint64_t oov_buckets);

  /// Appends the ids of one UTF-8 text to `ids`. Throws std::invalid_argument on invalid UTF-8.
  void featurize(std::string_view text, std::vector<int64_t>& ids) const;
  /// EmbeddingBag input for texts[0..n): `ids` concatenated, `offsets[i]` where text i starts.
  /// Bag i of a (rows, fields) batch is text i = row * fields + field; `fields` only shapes the
  /// error message ("texts[row][field]"; 0 = a flat list "texts[i]").
  void featurize_batch(const std::vector<std::string_view>& texts, size_t fields, int num_threads,
                       std::vector<int64_t>& ids, std::vector<int64_t>& offsets) const;

  /// First id of vocabulary k's range (k = 0, 1, 2), or the total id count for k = 3.
  int64_t base(int k) const {
    if (k < 0 || k > 3) throw std::out_of_range("k must be 0, 1, 2 or 3, got " + std::to_string(k));
    return bases_[static_cast<size_t>(k)];
  }
  int64_t vocab_size() const { return bases_[3]; }
  uint64_t oov_buckets() const { return oov_buckets_; }

 private:
  struct Workspace {
    std::u32string decoded, normalized, seq;
    std::string utf8, words_utf8;
    std::vector<std::pair<size_t, size_t>> words;  // byte spans in words_utf8
    std::vector<uint64_t> keys;                      // packed trigrams of the current text
    std::string bigrams_utf8;                        // "w1#w2" of each bigram, back to back
    std::vector<uint64_t> hashes;                    // TokenMap hashes: unigrams, then bigrams
  };
  void featurize_into(std::string_view text, Workspace& ws, std::vector<int64_t>& ids) const;
  int64_t oov_id(int k, std::string_view utf8) const;
  int64_t trigram_id(uint64_t key) const;

  // Open addressing over packed trigram keys (3 x 21 bits); empty slots hold kEmptyKey. Key and
  // rank share a slot so a probe touches one cache line.
  static constexpr uint64_t kEmptyKey = ~uint64_t{0};
  struct TrigramSlot {
    uint64_t key = kEmptyKey;
    int64_t rank = 0;
  };
  std::vector<TrigramSlot> trigram_slots_;
  uint64_t trigram_mask_ = 0;
  int trigram_shift_ = 60;  // 64 - log2(slot count)
  TokenMap unigrams_, bigrams_;
  uint64_t oov_buckets_ = 0;
  std::array<int64_t, 4> bases_{};
};

}  // namespace omnikern
