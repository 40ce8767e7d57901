// The n-gram featuriser: the worked examples of docs/text.md, "Item featuriser", NFKC_Casefold, id
// layout and batches.
#include "ngram/ngram.h"

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/check.h"
#include "unicode/nfkc_casefold.h"
#include "unicode/unicode.h"

using omnikern::NGramFeaturizer;
using Strings = std::vector<std::string>;

static bool throws_invalid(void (*fn)()) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

static void run_tests() {
  using omnikern::char_trigrams;
  using omnikern::word_ngrams;
  // Spec examples.
  OMNIKERN_CHECK(char_trigrams("a") == Strings({"#a#"}));
  OMNIKERN_CHECK(char_trigrams("a b") == Strings({"#a#", "a#b", "#b#"}));
  OMNIKERN_CHECK(char_trigrams("a#") == Strings({"#a#"}));
  OMNIKERN_CHECK(char_trigrams("").empty());
  OMNIKERN_CHECK(char_trigrams(" \t\n ").empty());
  OMNIKERN_CHECK(char_trigrams("artistic iphone 6s case") ==
                 Strings({"#ar", "art", "rti", "tis", "ist", "sti", "tic", "ic#", "c#i", "#ip", "iph", "pho",
                          "hon", "one", "ne#", "e#6", "#6s", "6s#", "s#c", "#ca", "cas", "ase", "se#"}));
  // Leading/trailing whitespace and runs of it collapse; punctuation is kept; case folded.
  OMNIKERN_CHECK(char_trigrams("  A\xC2\xA0\xE3\x80\x80 b, ") == Strings({"#a#", "a#b", "#b,", "b,#"}));
  OMNIKERN_CHECK(word_ngrams("hello, world", 2) == Strings({"hello#world"}));
  OMNIKERN_CHECK(word_ngrams("hello, world", 1) == Strings({"hello", "world"}));
  OMNIKERN_CHECK(word_ngrams("Ünïcode\xE2\x84\xA2 caf\xC3\xA9", 1) == Strings({"ünïcodetm", "café"}));
  // CJK ideographs are words of their own (U+2B820 too: the original BERT range).
  OMNIKERN_CHECK(word_ngrams("ab\xE4\xB8\xAD\xE6\x96\x87" "cd", 1) == Strings({"ab", "\xE4\xB8\xAD", "\xE6\x96\x87", "cd"}));
  OMNIKERN_CHECK(word_ngrams("x\xF0\xAB\xA0\xA0y", 1) == Strings({"x", "\xF0\xAB\xA0\xA0", "y"}));
  // One astral code point is one character (U+1F600).
  OMNIKERN_CHECK(char_trigrams("\xF0\x9F\x98\x80") == Strings({"#\xF0\x9F\x98\x80#"}));

  // The compile-time ASCII classes agree with the rules.
  for (char32_t c = 0; c < 0x80; ++c) {
    const auto cls = omnikern::ngram_class(c);
    OMNIKERN_CHECK((cls == omnikern::NGramClass::kSpace) == omnikern::is_ngram_whitespace(c));
    OMNIKERN_CHECK((cls == omnikern::NGramClass::kPunct) == omnikern::is_ngram_punctuation(c));
  }

  // NFKC_Casefold.
  using omnikern::unicode::nfkc_casefold;
  OMNIKERN_CHECK(nfkc_casefold(U"\u2122") == U"tm");
  OMNIKERN_CHECK(nfkc_casefold(U"Stra\u00DFe \u1E9E") == U"strasse ss");
  OMNIKERN_CHECK(nfkc_casefold(U"a\u00ADb\u200Bc\uFE0F") == U"abc");           // default ignorables removed
  OMNIKERN_CHECK(nfkc_casefold(U"\uFF21\u2460\u00BD") == U"a1" U"1\u20442");   // fullwidth, circled, fraction
  OMNIKERN_CHECK(nfkc_casefold(U"e\u0301") == U"\u00E9");                      // composed
  OMNIKERN_CHECK(nfkc_casefold(U"\u0130") == U"i\u0307");
  OMNIKERN_CHECK(nfkc_casefold(U"\u1E9B\u0323") == U"\u1E69");                 // long s with dots -> ṩ
  OMNIKERN_CHECK(omnikern::unicode::is_default_ignorable(0x00AD));
  OMNIKERN_CHECK(omnikern::unicode::is_default_ignorable(0xE0001));
  OMNIKERN_CHECK(!omnikern::unicode::is_default_ignorable(0x0600));  // prepended concatenation mark
  OMNIKERN_CHECK(!omnikern::unicode::is_default_ignorable(0xFFF9));
  OMNIKERN_CHECK(!omnikern::unicode::is_default_ignorable(0x13430));

  // Id layout: trigrams [0, 4), unigrams [4, 7), bigrams [7, 9) with 0 reserved in each.
  const NGramFeaturizer f({Strings{"#a#", "a#b", "#b#"}, Strings{"b", "a"}, Strings{"a#b"}}, 0);
  OMNIKERN_CHECK_EQ(f.base(1), 4);
  OMNIKERN_CHECK_EQ(f.base(2), 7);
  OMNIKERN_CHECK_EQ(f.vocab_size(), 9);
  std::vector<int64_t> ids;
  f.featurize("A b c", ids);  // #a# a#b #b# b#c(oov) #c#(oov) | a b c(oov) | a#b b#c(oov)
  OMNIKERN_CHECK(ids == std::vector<int64_t>({1, 2, 3, 6, 5, 8}));
  std::vector<int64_t> offsets;
  f.featurize_batch({"a", "", "a a"}, 0, 3, ids, offsets);
  OMNIKERN_CHECK(ids == std::vector<int64_t>({1, 6, 1, 1, 6, 6}));  // a#a is oov
  OMNIKERN_CHECK(offsets == std::vector<int64_t>({0, 2, 2}));
  // OOV buckets: 2 per vocab after its tokens.
  const NGramFeaturizer g({Strings{"#a#"}, Strings{"a"}, Strings{}}, 2);
  OMNIKERN_CHECK_EQ(g.vocab_size(), 4 + 4 + 3);
  ids.clear();
  g.featurize("z", ids);
  OMNIKERN_CHECK(ids.size() == 2 && ids[0] >= 2 && ids[0] < 4 && ids[1] >= 6 && ids[1] < 8);

  // Random inputs (run under the sanitizer build too): valid text of mixed code points keeps the
  // id count = trigrams + unigrams + bigrams with OOV buckets on, NFKC_Casefold is idempotent, and
  // random bytes either featurise or throw std::invalid_argument.
  std::mt19937 rng(7);
  const char32_t pool[] = {'a', 'Z', ' ', '#', ',', '\t', 0x00A0, 0x00AD, 0x0301, 0x0345, 0x00DF, 0x2122, 0x4E2D,
                           0x2B820, 0x1F600, 0xFE0F, 0xE0001, 0x3000, 0x0130, 0xAC00, 0x1100, 0x1161, 0x10FFFF, 0};
  for (int it = 0; it < 20000; ++it) {
    std::u32string text;
    for (size_t k = rng() % 12; k > 0; --k)
      text.push_back(rng() % 3 ? pool[rng() % (sizeof(pool) / sizeof(pool[0]))] : static_cast<char32_t>(rng() % 0x30000));
    for (char32_t& c : text)
      if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
    const std::string utf8 = omnikern::unicode::encode_utf8(text);
    const std::u32string once = nfkc_casefold(text);
    OMNIKERN_CHECK(nfkc_casefold(once) == once);
    ids.clear();
    g.featurize(utf8, ids);
    OMNIKERN_CHECK_EQ(ids.size(), omnikern::char_trigrams(utf8).size() + omnikern::word_ngrams(utf8, 1).size() +
                                      omnikern::word_ngrams(utf8, 2).size());
    std::string bytes(rng() % 16, '\0');
    for (char& b : bytes) b = static_cast<char>(rng());
    try {
      g.featurize(bytes, ids);
    } catch (const std::invalid_argument&) {
    }
  }

  OMNIKERN_CHECK(throws_invalid([] { omnikern::char_trigrams("\xFF"); }));
  OMNIKERN_CHECK(throws_invalid([] { NGramFeaturizer({Strings{"ab"}, Strings{}, Strings{}}, 0); }));
  OMNIKERN_CHECK(throws_invalid([] { NGramFeaturizer({Strings{}, Strings{"x", "x"}, Strings{}}, 0); }));
}

OMNIKERN_TEST_MAIN()
