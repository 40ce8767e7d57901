#include "unicode/unicode.h"

#include <algorithm>
#include <stdexcept>

namespace omnikern::unicode {
namespace {

[[noreturn]] void invalid_utf8(size_t offset, const char* what) {
  throw std::invalid_argument("invalid UTF-8 at byte offset " + std::to_string(offset) + ": " + what);
}

// Hangul syllables decompose arithmetically: S = 0xAC00 + (L * 21 + V) * 28 + T (Unicode ch. 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

template <typename S1, typename S2>
bool append_mapping(const S1* stage1, const S2* stage2, const char32_t* pool, char32_t cp, std::u32string& out) {
  const uint32_t offset = detail::two_stage(stage1, stage2, cp);
  if (offset == 0) return false;
  out.append(pool + offset + 1, pool[offset]);
  return true;
}

}  // namespace

void decode_utf8(std::string_view text, std::u32string& out) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  out.reserve(out.size() + n);
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = s[i];
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    // Lead byte -> sequence length and the smallest value that length may encode (no overlongs).
    size_t len;
    char32_t cp, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
      invalid_utf8(i, b0 >= 0x80 && b0 <= 0xBF ? "unexpected continuation byte" : "invalid lead byte");
    }
    if (i + len > n) invalid_utf8(i, "truncated sequence");
    for (size_t k = 1; k < len; ++k) {
      const unsigned char b = s[i + k];
      if ((b & 0xC0) != 0x80) invalid_utf8(i, "truncated sequence");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min) invalid_utf8(i, "overlong encoding");
    if (cp > 0x10FFFF) invalid_utf8(i, "code point above U+10FFFF");
    if (cp >= 0xD800 && cp <= 0xDFFF) invalid_utf8(i, "encoded surrogate");
    out.push_back(cp);
    i += len;
  }
}

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  decode_utf8(text, out);
  return out;
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t cp = text[i];
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      throw std::invalid_argument("cannot encode code point " + std::to_string(static_cast<uint32_t>(cp)) +
                                  " at index " + std::to_string(i) + " as UTF-8");
    append_utf8(cp, out);
  }
  return out;
}

void append_lower(char32_t cp, std::u32string& out) {
  if (cp < 0x80) {
    out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  if (!append_mapping(tables::lower_v17_stage1, tables::lower_v17_stage2, tables::lower_v17_pool, cp, out))
    out.push_back(cp);
}

void append_casefold(char32_t cp, std::u32string& out) {
  if (!append_mapping(tables::casefold_v17_stage1, tables::casefold_v17_stage2, tables::casefold_v17_pool, cp, out))
    out.push_back(cp);
}

void append_decomposition(char32_t cp, std::u32string& out, bool compat, Ucd ucd) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  bool mapped;
  if (compat) {
    if (ucd != Ucd::kV17) throw std::invalid_argument("compatibility decompositions exist only for Unicode 17");
    mapped = append_mapping(tables::compat_v17_stage1, tables::compat_v17_stage2, tables::compat_v17_pool, cp, out);
  } else if (ucd == Ucd::kV8) {
    mapped = append_mapping(tables::canon_v8_stage1, tables::canon_v8_stage2, tables::canon_v8_pool, cp, out);
  } else {
    mapped = append_mapping(tables::canon_v17_stage1, tables::canon_v17_stage2, tables::canon_v17_pool, cp, out);
  }
  if (!mapped) out.push_back(cp);
}

void canonical_reorder(std::u32string& text, size_t begin, Ucd ucd) {
  size_t i = begin;
  const size_t n = text.size();
  while (i < n) {
    if (combining_class(text[i], ucd) == 0) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < n && combining_class(text[j], ucd) != 0) ++j;
    if (j - i > 1)
      std::stable_sort(text.begin() + i, text.begin() + j, [ucd](char32_t a, char32_t b) {
        return combining_class(a, ucd) < combining_class(b, ucd);
      });
    i = j;
  }
}

namespace {

char32_t compose_pair(char32_t a, char32_t b) {
  // Hangul LV and LVT syllables compose arithmetically.
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const uint64_t key = (static_cast<uint64_t>(a) << 21) | b;
  const uint64_t* keys = tables::compose_v17_keys;
  const size_t n = sizeof(tables::compose_v17_keys) / sizeof(tables::compose_v17_keys[0]);
  const uint64_t* it = std::lower_bound(keys, keys + n, key);
  if (it == keys + n || *it != key) return 0;
  return tables::compose_v17_values[it - keys];
}

// The canonical composition algorithm (UAX #15): each character after the last starter composes
// with that starter unless blocked by a character of equal or higher combining class in between.
void compose(std::u32string& text) {
  // After canonical reordering the last character between the starter and c has the highest
  // combining class among them, so "blocked" is decided by that one class.
  size_t starter = std::u32string::npos, out = 0;
  int last_class = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    const int cls = combining_class(c);
    if (starter != std::u32string::npos && (out == starter + 1 || (last_class != 0 && last_class < cls))) {
      const char32_t composite = compose_pair(text[starter], c);
      if (composite != 0) {
        text[starter] = composite;
        continue;
      }
    }
    if (cls == 0) starter = out;
    last_class = cls;
    text[out++] = c;
  }
  text.resize(out);
}

}  // namespace

std::u32string normalize(std::u32string_view text, Form form, Ucd ucd) {
  const bool compat = form == Form::NFKC || form == Form::NFKD;
  const bool composed = form == Form::NFC || form == Form::NFKC;
  if ((compat || composed) && ucd != Ucd::kV17)
    throw std::invalid_argument("NFC/NFKC/NFKD are generated for Unicode 17 only");
  std::u32string out;
  out.reserve(text.size());
  for (const char32_t cp : text) {
    if (cp < 0x80) {
      out.push_back(cp);
    } else {
      append_decomposition(cp, out, compat, ucd);
    }
  }
  canonical_reorder(out, 0, ucd);
  if (composed) compose(out);
  return out;
}

std::u32string casefold(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (const char32_t cp : text) append_casefold(cp, out);
  return out;
}

std::u32string lowercase(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (const char32_t cp : text) append_lower(cp, out);
  return out;
}

}  // namespace omnikern::unicode
