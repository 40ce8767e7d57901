// UTF-8 codec, generated tables and normalisation forms on hand-checked examples.
#include "unicode/unicode.h"

#include <stdexcept>
#include <string>

#include "tests/check.h"

using namespace omnikern::unicode;

static bool throws_at(const std::string& bytes, const std::string& offset_text) {
  try {
    decode_utf8(bytes);
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find("byte offset " + offset_text) != std::string::npos;
  }
  return false;
}

static void run_tests() {
  // Decoding: 1- to 4-byte forms, and every kind of invalid input with its offset.
  OMNIKERN_CHECK(decode_utf8("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80") == std::u32string(U"a\u00E9\u20AC\U0001F600"));
  OMNIKERN_CHECK(decode_utf8(std::string("a\0b", 3)).size() == 3);
  OMNIKERN_CHECK(throws_at("ab\x80", "2"));              // stray continuation
  OMNIKERN_CHECK(throws_at("\xC0\xAF", "0"));            // overlong '/'
  OMNIKERN_CHECK(throws_at("x\xE0\x80\xAF", "1"));       // overlong 3-byte
  OMNIKERN_CHECK(throws_at("\xED\xA0\x80", "0"));        // surrogate U+D800
  OMNIKERN_CHECK(throws_at("\xF4\x90\x80\x80", "0"));    // above U+10FFFF
  OMNIKERN_CHECK(throws_at("abc\xE2\x82", "3"));         // truncated at the end
  OMNIKERN_CHECK(throws_at("\xE2\x28\xA1", "0"));        // bad continuation
  OMNIKERN_CHECK(throws_at("\xFF", "0"));
  // Encoding round trip over every scalar value.
  std::u32string all;
  for (char32_t c = 0; c < 0x110000; ++c)
    if (c < 0xD800 || c > 0xDFFF) all.push_back(c);
  OMNIKERN_CHECK(decode_utf8(encode_utf8(all)) == all);
  bool threw = false;
  try {
    encode_utf8(std::u32string(1, 0xD800));
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  OMNIKERN_CHECK(threw);

  // Categories in both versions: U+061D (Po) was assigned in 14.0, so 8.0 says Cn.
  OMNIKERN_CHECK(category(U'A') == Category::Lu);
  OMNIKERN_CHECK(category(0x061D, Ucd::kV17) == Category::Po);
  OMNIKERN_CHECK(category(0x061D, Ucd::kV8) == Category::Cn);
  OMNIKERN_CHECK(category(0x0301, Ucd::kV8) == Category::Mn);
  OMNIKERN_CHECK(category(0xD800) == Category::Cs);
  OMNIKERN_CHECK(category(0xE000) == Category::Co);
  OMNIKERN_CHECK(category(0x10FFFF) == Category::Cn);
  OMNIKERN_CHECK(category(0x200D) == Category::Cf);
  OMNIKERN_CHECK_EQ(combining_class(0x0301), 230);
  OMNIKERN_CHECK_EQ(combining_class(0x0327), 202);
  OMNIKERN_CHECK(is_white_space(0x3000) && is_white_space(0x85) && !is_white_space(0x200B) && !is_white_space(0x1C));

  // Case: full, context-free mappings.
  OMNIKERN_CHECK(lowercase(U"\u0130") == std::u32string(U"i\u0307"));
  OMNIKERN_CHECK(lowercase(U"\u039F\u0394\u039F\u03A3") == std::u32string(U"\u03BF\u03B4\u03BF\u03C3"));
  OMNIKERN_CHECK(lowercase(U"\uA7DC") == std::u32string(U"\u019B"));  // added in Unicode 16
  OMNIKERN_CHECK(casefold(U"Stra\u00DFe") == std::u32string(U"strasse"));

  // Normalisation forms.
  OMNIKERN_CHECK(normalize(U"\u00E9", Form::NFD) == std::u32string(U"e\u0301"));
  OMNIKERN_CHECK(normalize(U"e\u0301", Form::NFC) == std::u32string(U"\u00E9"));
  OMNIKERN_CHECK(normalize(U"\uAC01", Form::NFD) == std::u32string(U"\u1100\u1161\u11A8"));
  OMNIKERN_CHECK(normalize(U"\u1100\u1161\u11A8", Form::NFC) == std::u32string(U"\uAC01"));
  // Reordering: cedilla (202) before acute (230), then composition of both.
  OMNIKERN_CHECK(normalize(U"c\u0301\u0327", Form::NFD) == std::u32string(U"c\u0327\u0301"));
  OMNIKERN_CHECK(normalize(U"c\u0301\u0327", Form::NFC) == std::u32string(U"\u1E09"));
  OMNIKERN_CHECK(normalize(U"\uFB01\u2122\uFF21", Form::NFKC) == std::u32string(U"fiTMA"));
  OMNIKERN_CHECK(normalize(U"\u212B", Form::NFC) == std::u32string(U"\u00C5"));  // singleton
  OMNIKERN_CHECK(normalize(U"\u0958", Form::NFC) == std::u32string(U"\u0915\u093C"));  // exclusion
  OMNIKERN_CHECK(normalize(U"\u1E0B\u0323", Form::NFC) == std::u32string(U"\u1E0D\u0307"));
  // NUL composes with nothing (the generator once read the tables' end marker as a real entry).
  const std::u32string with_nul(U"A\0B\0\u0338", 5);
  OMNIKERN_CHECK(normalize(with_nul, Form::NFC) == with_nul);
}

OMNIKERN_TEST_MAIN()
