// Randomised robustness checks for the UTF-8 codec, the normalisation forms and WordPiece: no
// crash, no exception other than std::invalid_argument, and the algebraic properties that must hold
// for any input. Deterministic (fixed seed); run it under OMNIKERN_SANITIZE=ON for ASan/UBSan.
// OMNIKERN_FUZZ_ITERATIONS overrides the number of inputs (default 50000).
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/check.h"
#include "tokenize/wordpiece.h"
#include "unicode/unicode.h"

using namespace omnikern;
using unicode::Form;

namespace {

size_t iterations() {
  const char* env = std::getenv("OMNIKERN_FUZZ_ITERATIONS");
  return env ? std::strtoull(env, nullptr, 10) : 50000;
}

// A random code point, biased towards interesting regions (ASCII, marks, Hangul, CJK, astral).
char32_t random_cp(std::mt19937& rng) {
  static const char32_t starts[] = {0x0, 0x80, 0x300, 0x1100, 0xAC00, 0x4E00, 0xF900, 0x1D160, 0x1F300, 0xE0000, 0x10FFF0};
  std::uniform_int_distribution<int> pick(0, 12);
  const int k = pick(rng);
  char32_t cp;
  if (k < 11) {
    cp = starts[k] + std::uniform_int_distribution<char32_t>(0, 0x17F)(rng);
  } else {
    cp = std::uniform_int_distribution<char32_t>(0, 0x10FFFF)(rng);
  }
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 'x';
  return cp;
}

std::string random_bytes(std::mt19937& rng) {
  std::string s;
  const int n = std::uniform_int_distribution<int>(0, 40)(rng);
  for (int i = 0; i < n; ++i) {
    const int kind = std::uniform_int_distribution<int>(0, 9)(rng);
    if (kind == 0) {
      s.push_back(static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng)));  // maybe invalid
    } else if (kind == 1) {
      s += "[SEP]";
    } else if (kind < 5) {
      s.push_back(static_cast<char>(std::uniform_int_distribution<int>(0, 127)(rng)));
    } else {
      unicode::append_utf8(random_cp(rng), s);
    }
  }
  return s;
}

}  // namespace

static void run_tests() {
  std::mt19937 rng(12345);
  const size_t n = iterations();

  std::vector<std::pair<std::string, int32_t>> vocab;
  const char* tokens[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##a", "b", "##b", "ab", "\xE4\xB8\xAD", "##\xC3\xA9"};
  for (int i = 0; i < 12; ++i) vocab.emplace_back(tokens[i], i);
  WordPieceOptions uncased;
  WordPieceOptions cased;
  cased.normalizer.lowercase = cased.normalizer.strip_accents = false;
  cased.max_length = 8;
  const WordPieceTokenizer tok_uncased(vocab, uncased), tok_cased(vocab, cased);

  size_t valid = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string bytes = random_bytes(rng);
    bool ok = true;
    std::u32string cps;
    try {
      cps = unicode::decode_utf8(bytes);
    } catch (const std::invalid_argument&) {
      ok = false;
    }
    for (const WordPieceTokenizer* tok : {&tok_uncased, &tok_cased}) {
      try {
        const std::vector<int32_t> ids = tok->encode(bytes);
        OMNIKERN_CHECK(ok);
        OMNIKERN_CHECK(ids.size() >= 2 && ids.front() == 2 && ids.back() == 3);
        for (const int32_t id : ids) OMNIKERN_CHECK(id >= 0 && id < 12);
      } catch (const std::invalid_argument&) {
        OMNIKERN_CHECK(!ok);
      }
    }
    if (!ok) continue;
    ++valid;
    OMNIKERN_CHECK(unicode::encode_utf8(cps) == bytes);
    const std::u32string nfd = unicode::normalize(cps, Form::NFD), nfc = unicode::normalize(cps, Form::NFC);
    OMNIKERN_CHECK(unicode::normalize(nfd, Form::NFD) == nfd);
    OMNIKERN_CHECK(unicode::normalize(nfc, Form::NFC) == nfc);
    OMNIKERN_CHECK(unicode::normalize(nfd, Form::NFC) == nfc);
    OMNIKERN_CHECK(unicode::normalize(nfc, Form::NFD) == nfd);
    const std::u32string nfkc = unicode::normalize(cps, Form::NFKC);
    OMNIKERN_CHECK(unicode::normalize(nfkc, Form::NFKC) == nfkc);
    OMNIKERN_CHECK(unicode::normalize(unicode::normalize(cps, Form::NFKD), Form::NFC) == nfkc);
  }
  OMNIKERN_CHECK(valid > n / 4);
}

OMNIKERN_TEST_MAIN()
