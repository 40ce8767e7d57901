#include "unicode/nfkc_casefold.h"

#include <unordered_map>

#include "unicode/unicode.h"

namespace omnikern::unicode {

namespace {

struct Range {
  char32_t first, last;
};

template <size_t N>
bool in_ranges(const Range (&ranges)[N], char32_t cp) {
  for (const Range& r : ranges)
    if (cp >= r.first && cp <= r.last) return true;
  return false;
}

// The fixed lists of the Default_Ignorable_Code_Point definition (DerivedCoreProperties.txt,
// Unicode 17.0.0):
//     Other_Default_Ignorable_Code_Point + Cf + Variation_Selector
//     - White_Space - FFF9..FFFB (interlinear annotation) - 13430..13440 (Egyptian hieroglyph
//       format controls) - Prepended_Concatenation_Mark
// Cf comes from the generated 17.0 category table, White_Space from unicode.h. The three lists
// below are copied from PropList.txt 17.0.0 (the unicodedata2 sdists our tables come from carry no
// binary properties); U+180F and U+0890..0891 (Unicode 14) are their newest entries.
// Checked once against ICU 72 (Unicode 15.0; u_hasBinaryProperty and the nfkc_cf Normalizer2),
// which is not a dependency: Default_Ignorable_Code_Point agrees on all 0x110000 code points and
// NFKC_CF on every code point assigned in 15.0 and on 1M random strings of Latin, Greek, combining
// marks, Hangul and kana; the 92 code points that differ are unassigned in 15.0 (new in 15.1-17.0).
constexpr Range kOtherDefaultIgnorable[] = {
    {0x034F, 0x034F}, {0x115F, 0x1160}, {0x17B4, 0x17B5}, {0x2065, 0x2065}, {0x3164, 0x3164},
    {0xFFA0, 0xFFA0}, {0xFFF0, 0xFFF8}, {0xE0000, 0xE0000}, {0xE0002, 0xE001F}, {0xE0080, 0xE00FF},
    {0xE01F0, 0xE0FFF}};
constexpr Range kVariationSelector[] = {{0x180B, 0x180D}, {0x180F, 0x180F}, {0xFE00, 0xFE0F}, {0xE0100, 0xE01EF}};
constexpr Range kPrependedConcatenationMark[] = {{0x0600, 0x0605}, {0x06DD, 0x06DD}, {0x070F, 0x070F},
                                                 {0x0890, 0x0891}, {0x08E2, 0x08E2}, {0x110BD, 0x110BD},
                                                 {0x110CD, 0x110CD}};

// The per-code-point fixpoint, computed from the NFKC and case folding tables. At most a handful
// of rounds are needed (e.g. U+1E9B: NFKC -> U+1E61, fold -> U+1E61, stable); 8 is a safe bound.
std::u32string compute_mapping(char32_t cp) {
  std::u32string current(1, cp), folded;
  for (int round = 0; round < 8; ++round) {
    const std::u32string compat = normalize(current, Form::NFKC);
    folded.clear();
    for (const char32_t c : compat)
      if (!is_default_ignorable(c)) append_casefold(c, folded);
    std::u32string next = normalize(folded, Form::NFKC);
    if (next == current) break;
    current = std::move(next);
  }
  return current;
}

// True when cp certainly maps to itself: no decomposition (canonical or compatibility), no case
// folding, not ignorable. Such a code point is already NFKC (a lone code point without a
// decomposition is its own NFC) and folding leaves it alone.
bool maps_to_itself(char32_t cp, std::u32string& scratch) {
  if (is_default_ignorable(cp)) return false;
  scratch.clear();
  append_casefold(cp, scratch);
  if (scratch.size() != 1 || scratch[0] != cp) return false;
  scratch.clear();
  append_decomposition(cp, scratch, /*compat=*/true);
  return scratch.size() == 1 && scratch[0] == cp;
}

}  // namespace

bool is_default_ignorable(char32_t cp) {
  if (cp < 0xAD) return false;  // the first one is U+00AD SOFT HYPHEN
  if (in_ranges(kOtherDefaultIgnorable, cp) || in_ranges(kVariationSelector, cp)) return true;
  if (category(cp) != Category::Cf) return false;
  if (is_white_space(cp) || (cp >= 0xFFF9 && cp <= 0xFFFB) || (cp >= 0x13430 && cp <= 0x13440)) return false;
  return !in_ranges(kPrependedConcatenationMark, cp);
}

void append_nfkc_casefold(char32_t cp, std::u32string& out) {
  if (cp < 0x80) {
    out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  // Mappings are pure functions of the code point: each thread memoises the ones it has computed
  // (a few thousand at most, since only code points with a mapping are stored).
  thread_local std::unordered_map<char32_t, std::u32string> cache;
  thread_local std::u32string scratch;
  if (maps_to_itself(cp, scratch)) {
    out.push_back(cp);
    return;
  }
  auto it = cache.find(cp);
  if (it == cache.end()) it = cache.emplace(cp, compute_mapping(cp)).first;
  out += it->second;
}

void nfkc_casefold(std::u32string_view text, std::u32string& out) {
  out.clear();
  out.reserve(text.size());
  bool may_interact = false;
  for (const char32_t cp : text) {
    const size_t before = out.size();
    append_nfkc_casefold(cp, out);
    for (size_t k = before; k < out.size(); ++k) may_interact |= out[k] >= 0x300;
  }
  // Each mapping is NFKC on its own, so only neighbours can change under NFC. Below U+0300 there
  // are no combining marks and no pair of code points composes, so a text of such code points is
  // already NFC.
  if (may_interact) out = normalize(out, Form::NFC);
}

std::u32string nfkc_casefold(std::u32string_view text) {
  std::u32string out;
  nfkc_casefold(text, out);
  return out;
}

}  // namespace omnikern::unicode
