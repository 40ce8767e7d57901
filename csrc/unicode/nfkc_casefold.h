// NFKC_Casefold (Unicode's NFKC_CF mapping, as ICU's "nfkc_cf" normaliser applies it) and the
// Default_Ignorable_Code_Point property, on the Unicode 17.0 tables of csrc/unicode.
//
// Definition (UAX #44 and DerivedNormalizationProps.txt): NFKC_CF(c) of one code point is the
// fixpoint of "NFKC, then full case folding, then delete Default_Ignorable_Code_Point", repeated
// until nothing changes. A text maps each code point to NFKC_CF(c) and then takes NFC of the
// result (characters of neighbouring mappings may compose). So `™` -> `tm` (NFKC gives `TM`,
// folding `tm`), `ẞ` -> `ss`, U+00AD (soft hyphen) -> nothing, and Python's
// `NFKC(s.casefold())` is not the same thing (`™`.casefold() is `™`).
#pragma once

#include <string>
#include <string_view>

namespace omnikern::unicode {

/// Default_Ignorable_Code_Point (Unicode 17.0), derived from its definition in
/// DerivedCoreProperties.txt; see nfkc_casefold.cc for the fixed lists it reads.
bool is_default_ignorable(char32_t cp);

/// Appends NFKC_CF(cp), the mapping of one code point (nothing for a default ignorable).
void append_nfkc_casefold(char32_t cp, std::u32string& out);

/// NFKC_Casefold of a whole text into `out` (cleared first): NFC of the per-code-point mappings.
void nfkc_casefold(std::u32string_view text, std::u32string& out);
std::u32string nfkc_casefold(std::u32string_view text);

}  // namespace omnikern::unicode
