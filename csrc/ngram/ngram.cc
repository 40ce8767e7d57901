#include "ngram/ngram.h"

#include <algorithm>
#include <stdexcept>
#include <unordered_map>

#include "common/parallel.h"
#include "hashing/string_hash.h"
#include "tokenize/bert_normalizer.h"
#include "unicode/nfkc_casefold.h"
#include "unicode/unicode.h"

namespace omnikern {

namespace {

constexpr char32_t kMarker = '#';

// A trigram is three code points (< 2^21 each) packed into one integer key.
inline uint64_t pack_trigram(const char32_t* p) {
  return (static_cast<uint64_t>(p[0]) << 42) | (static_cast<uint64_t>(p[1]) << 21) | p[2];
}
// Fibonacci hashing: the top bits of key * 2^64/phi depend on every bit of the key (the low bits of
// the product would ignore the first code point, and colliding probes cluster).
inline size_t trigram_slot(uint64_t key, int shift) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift); }

void append_utf8(std::u32string_view text, std::string& out) {
  for (const char32_t c : text) unicode::append_utf8(c, out);
}

// Decode + NFKC_Casefold of UTF-8 `text` into `normalized` (`decoded` is working memory). Returns
// whether the text was ASCII (then so is `normalized`).
bool normalize_utf8(std::string_view text, std::u32string& decoded, std::u32string& normalized) {
  // ASCII text (the common case) only needs lowercasing: skip decoding and the mapping loop.
  bool ascii = true;
  for (const char b : text) ascii &= static_cast<unsigned char>(b) < 0x80;
  if (ascii) {
    normalized.resize(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      const char32_t c = static_cast<unsigned char>(text[i]);
      normalized[i] = c >= 'A' && c <= 'Z' ? c + 32 : c;
    }
    return true;
  }
  decoded.clear();
  unicode::decode_utf8(text, decoded);
  unicode::nfkc_casefold(decoded, normalized);
  return false;
}

// Calls on_ngram(utf8) for each word n-gram (n words joined by '#') of the normalised text.
template <typename OnNgram>
void for_each_word_ngram(std::u32string_view text, size_t n, std::vector<std::pair<size_t, size_t>>& words,
                         std::string& utf8, OnNgram&& on_ngram) {
  words.clear();
  for_each_word(text, [&](size_t b, size_t e) { words.emplace_back(b, e); });
  for (size_t i = 0; i + n <= words.size(); ++i) {
    utf8.clear();
    for (size_t k = 0; k < n; ++k) {
      if (k > 0) utf8.push_back(static_cast<char>(kMarker));
      append_utf8(text.substr(words[i + k].first, words[i + k].second - words[i + k].first), utf8);
    }
    on_ngram(std::string_view(utf8));
  }
}

}  // namespace

bool is_ngram_whitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r';
  return unicode::category(cp) == unicode::Category::Zs;
}

bool is_ngram_punctuation(char32_t cp) { return is_bert_punctuation(cp); }

bool is_ngram_cjk(char32_t cp) { return unicode::is_bert_cjk(cp) || (cp >= 0x2B820 && cp <= 0x2B91F); }

namespace detail {
NGramClass ngram_class_slow(char32_t cp) {
  if (is_ngram_whitespace(cp)) return NGramClass::kSpace;
  if (is_ngram_punctuation(cp)) return NGramClass::kPunct;
  return is_ngram_cjk(cp) ? NGramClass::kCjk : NGramClass::kOther;
}
}  // namespace detail

void trigram_sequence(std::u32string_view text, std::u32string& seq) {
  seq.clear();
  seq.reserve(text.size() + 2);
  seq.push_back(kMarker);
  for (const char32_t c : text) {
    if (ngram_class(c) == NGramClass::kSpace) {
      if (seq.back() != kMarker) seq.push_back(kMarker);
    } else {
      seq.push_back(c);
    }
  }
  if (seq.back() != kMarker) seq.push_back(kMarker);
}

std::string ngram_normalize(std::string_view text) {
  std::u32string decoded, normalized;
  normalize_utf8(text, decoded, normalized);
  return unicode::encode_utf8(normalized);
}

std::vector<std::string> char_trigrams(std::string_view text) {
  std::u32string decoded, normalized, seq;
  normalize_utf8(text, decoded, normalized);
  trigram_sequence(normalized, seq);
  std::vector<std::string> out;
  for (size_t i = 0; i + 3 <= seq.size(); ++i) {
    out.emplace_back();
    append_utf8(std::u32string_view(seq).substr(i, 3), out.back());
  }
  return out;
}

std::vector<std::string> word_ngrams(std::string_view text, size_t n) {
  if (n == 0) throw std::invalid_argument("n must be >= 1, got 0");
  std::u32string decoded, normalized;
  normalize_utf8(text, decoded, normalized);
  std::vector<std::pair<size_t, size_t>> words;
  std::string utf8;
  std::vector<std::string> out;
  for_each_word_ngram(normalized, n, words, utf8, [&](std::string_view g) { out.emplace_back(g); });
  return out;
}

std::array<std::vector<std::pair<std::string, int64_t>>, 3> count_ngrams(const std::vector<std::string_view>& texts,
                                                                        std::array<size_t, 3> caps,
                                                                        int64_t min_count, int num_threads) {
  using Counts = std::unordered_map<std::string, int64_t>;
  // One set of counts per chunk, merged in chunk order: integer sums, so the thread count cannot
  // change the result.
  const size_t chunks = std::min<size_t>(static_cast<size_t>(resolve_num_threads(num_threads)),
                                         std::max<size_t>(1, texts.size() / 256));
  std::vector<std::array<Counts, 3>> partial(chunks);
  parallel_for(chunks, num_threads, 1, [&](size_t cb, size_t ce) {
    std::u32string decoded, normalized, seq;
    std::string utf8;
    std::vector<std::pair<size_t, size_t>> words;
    for (size_t c = cb; c < ce; ++c) {
      auto& counts = partial[c];
      const size_t begin = texts.size() * c / chunks, end = texts.size() * (c + 1) / chunks;
      for (size_t i = begin; i < end; ++i) {
        try {
          normalize_utf8(texts[i], decoded, normalized);
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument("corpus[" + std::to_string(i) + "]: " + e.what());
        }
        trigram_sequence(normalized, seq);
        for (size_t j = 0; j + 3 <= seq.size(); ++j) {
          utf8.clear();
          append_utf8(std::u32string_view(seq).substr(j, 3), utf8);
          ++counts[0][utf8];
        }
        for (size_t n = 1; n <= 2; ++n)
          for_each_word_ngram(normalized, n, words, utf8, [&](std::string_view g) { ++counts[n][std::string(g)]; });
      }
    }
  });
  std::array<std::vector<std::pair<std::string, int64_t>>, 3> out;
  for (int k = 0; k < 3; ++k) {
    Counts merged = std::move(partial[0][k]);
    for (size_t c = 1; c < chunks; ++c)
      for (auto& [token, count] : partial[c][k]) merged[token] += count;
    auto& ranked = out[k];
    ranked.reserve(merged.size());
    for (auto& [token, count] : merged)
      if (count >= min_count) ranked.emplace_back(token, count);
    // Most frequent first; ties by the token's bytes (UTF-8 byte order is code point order).
    const auto better = [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; };
    if (ranked.size() > caps[k]) {
      std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(caps[k]), ranked.end(), better);
      ranked.resize(caps[k]);
    } else {
      std::sort(ranked.begin(), ranked.end(), better);
    }
  }
  return out;
}

NGramFeaturizer::NGramFeaturizer(const std::array<std::vector<std::string>, 3>& vocabs, uint64_t oov_buckets)
    : oov_buckets_(oov_buckets) {
  static const char* const kNames[] = {"char_trigram_vocab", "unigram_vocab", "bigram_vocab"};
  for (int k = 0; k < 3; ++k) {
    if (vocabs[k].size() >= (size_t{1} << 31) - 1)
      throw std::invalid_argument(std::string(kNames[k]) + " has too many tokens");
  }
  // Trigrams: a power-of-two table at most half full.
  size_t slots = 16;
  trigram_shift_ = 60;
  while (slots < vocabs[0].size() * 2) slots *= 2, --trigram_shift_;
  trigram_slots_.assign(slots, TrigramSlot{});
  trigram_mask_ = slots - 1;
  std::u32string cps;
  for (size_t r = 0; r < vocabs[0].size(); ++r) {
    cps.clear();
    try {
      unicode::decode_utf8(vocabs[0][r], cps);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(kNames[0]) + "[" + std::to_string(r) + "]: " + e.what());
    }
    if (cps.size() != 3)
      throw std::invalid_argument(std::string(kNames[0]) + "[" + std::to_string(r) + "] must be 3 code points, got '" +
                                  vocabs[0][r] + "' (" + std::to_string(cps.size()) + ")");
    const uint64_t key = pack_trigram(cps.data());
    size_t i = trigram_slot(key, trigram_shift_);
    while (trigram_slots_[i].key != kEmptyKey && trigram_slots_[i].key != key) i = (i + 1) & trigram_mask_;
    if (trigram_slots_[i].key == key)
      throw std::invalid_argument(std::string(kNames[0]) + " repeats '" + vocabs[0][r] + "' (index " +
                                  std::to_string(r) + ")");
    trigram_slots_[i] = TrigramSlot{key, static_cast<int64_t>(r + 1)};
  }
  TokenMap* maps[] = {nullptr, &unigrams_, &bigrams_};
  for (int k = 1; k < 3; ++k) {
    for (size_t r = 0; r < vocabs[k].size(); ++r) {
      const std::string& token = vocabs[k][r];
      try {
        cps.clear();
        unicode::decode_utf8(token, cps);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string(kNames[k]) + "[" + std::to_string(r) + "]: " + e.what());
      }
      if (maps[k]->find(token) >= 0)
        throw std::invalid_argument(std::string(kNames[k]) + " repeats '" + token + "' (index " + std::to_string(r) + ")");
      maps[k]->insert(token, static_cast<int32_t>(r + 1));
    }
  }
  bases_[0] = 0;
  for (int k = 0; k < 3; ++k)
    bases_[k + 1] = bases_[k] + 1 + static_cast<int64_t>(vocabs[k].size()) + static_cast<int64_t>(oov_buckets_);
}

// Inline: called once per trigram, and an exported member would go through the PLT.
inline int64_t NGramFeaturizer::trigram_id(uint64_t key) const {
  size_t i = trigram_slot(key, trigram_shift_);
  while (true) {
    const TrigramSlot& slot = trigram_slots_[i];
    if (slot.key == key) return slot.rank;
    if (slot.key == kEmptyKey) return -1;
    i = (i + 1) & trigram_mask_;
  }
}

int64_t NGramFeaturizer::oov_id(int k, std::string_view utf8) const {
  const int64_t n_k = bases_[k + 1] - bases_[k] - 1 - static_cast<int64_t>(oov_buckets_);
  return bases_[k] + 1 + n_k + static_cast<int64_t>(murmur_hash64a(utf8) % oov_buckets_);
}

void NGramFeaturizer::featurize_into(std::string_view text, Workspace& ws, std::vector<int64_t>& ids) const {
  const bool ascii = normalize_utf8(text, ws.decoded, ws.normalized);
  trigram_sequence(ws.normalized, ws.seq);
  // Two passes: issue every slot's load first so the cache misses of a text overlap.
  ws.keys.clear();
  for (size_t j = 0; j + 3 <= ws.seq.size(); ++j) {
    const uint64_t key = pack_trigram(ws.seq.data() + j);
    ws.keys.push_back(key);
    __builtin_prefetch(&trigram_slots_[trigram_slot(key, trigram_shift_)]);
  }
  for (size_t j = 0; j < ws.keys.size(); ++j) {
    const int64_t rank = trigram_id(ws.keys[j]);
    if (rank > 0) {
      ids.push_back(bases_[0] + rank);
    } else if (oov_buckets_ > 0) {
      ws.utf8.clear();
      append_utf8(std::u32string_view(ws.seq).substr(j, 3), ws.utf8);
      ids.push_back(oov_id(0, ws.utf8));
    }
  }
  // Each word is encoded to UTF-8 once (ASCII text: the whole lowercased text, words are spans of
  // it); bigrams are two encoded words around '#'.
  ws.words.clear();
  ws.words_utf8.clear();
  const std::u32string_view normalized(ws.normalized);
  if (ascii) {
    ws.words_utf8.resize(normalized.size());
    for (size_t i = 0; i < normalized.size(); ++i) ws.words_utf8[i] = static_cast<char>(normalized[i]);
    for_each_word(normalized, [&](size_t b, size_t e) { ws.words.emplace_back(b, e - b); });
  } else {
    for_each_word(normalized, [&](size_t b, size_t e) {
      const size_t start = ws.words_utf8.size();
      append_utf8(normalized.substr(b, e - b), ws.words_utf8);
      ws.words.emplace_back(start, ws.words_utf8.size() - start);
    });
  }
  const std::string_view all(ws.words_utf8);
  const size_t n_words = ws.words.size(), n_bigrams = n_words > 0 ? n_words - 1 : 0;
  ws.bigrams_utf8.clear();
  for (size_t i = 0; i < n_bigrams; ++i) {
    ws.bigrams_utf8.append(all.substr(ws.words[i].first, ws.words[i].second));
    ws.bigrams_utf8.push_back(static_cast<char>(kMarker));
    ws.bigrams_utf8.append(all.substr(ws.words[i + 1].first, ws.words[i + 1].second));
  }
  const std::string_view bigrams(ws.bigrams_utf8);
  // Bigram i starts where the lengths of the bigrams before it (w_j + '#' + w_{j+1}) end.
  const auto unigram = [&](size_t i) { return all.substr(ws.words[i].first, ws.words[i].second); };
  ws.hashes.clear();
  for (size_t i = 0; i < n_words; ++i) {
    ws.hashes.push_back(TokenMap::hash(unigram(i)));
    unigrams_.prefetch(ws.hashes.back());
  }
  for (size_t i = 0, start = 0; i < n_bigrams; ++i) {
    const size_t len = ws.words[i].second + 1 + ws.words[i + 1].second;
    ws.hashes.push_back(TokenMap::hash(bigrams.substr(start, len)));
    bigrams_.prefetch(ws.hashes.back());
    start += len;
  }
  const auto emit = [&](int k, const TokenMap& map, std::string_view g, uint64_t h) {
    const int32_t rank = map.find(g, h);
    if (rank > 0) {
      ids.push_back(bases_[k] + rank);
    } else if (oov_buckets_ > 0) {
      ids.push_back(oov_id(k, g));
    }
  };
  for (size_t i = 0; i < n_words; ++i) emit(1, unigrams_, unigram(i), ws.hashes[i]);
  for (size_t i = 0, start = 0; i < n_bigrams; ++i) {
    const size_t len = ws.words[i].second + 1 + ws.words[i + 1].second;
    emit(2, bigrams_, bigrams.substr(start, len), ws.hashes[n_words + i]);
    start += len;
  }
}

void NGramFeaturizer::featurize(std::string_view text, std::vector<int64_t>& ids) const {
  Workspace ws;
  featurize_into(text, ws, ids);
}

void NGramFeaturizer::featurize_batch(const std::vector<std::string_view>& texts, size_t fields, int num_threads,
                                      std::vector<int64_t>& ids, std::vector<int64_t>& offsets) const {
  const size_t n = texts.size();
  offsets.assign(n, 0);
  // Each chunk of texts writes its own id list; lengths go to offsets[i] and become starts below.
  // Chunk boundaries depend on the thread count, the concatenation does not. A thread is worth
  // starting for ~32 KiB of text (~30 us of work, several times the cost of the thread).
  size_t total_bytes = 0;
  for (const std::string_view t : texts) total_bytes += t.size();
  const size_t chunks = std::min<size_t>(static_cast<size_t>(resolve_num_threads(num_threads)),
                                         std::max<size_t>(1, std::min(n, total_bytes / 32768)));
  std::vector<std::vector<int64_t>> parts(chunks);
  parallel_for(chunks, num_threads, 1, [&](size_t cb, size_t ce) {
    Workspace ws;
    for (size_t c = cb; c < ce; ++c) {
      auto& part = parts[c];
      const size_t begin = n * c / chunks, end = n * (c + 1) / chunks;
      part.reserve((end - begin) * 32);
      for (size_t i = begin; i < end; ++i) {
        const size_t before = part.size();
        try {
          featurize_into(texts[i], ws, part);
        } catch (const std::invalid_argument& e) {
          const std::string where = fields == 0 ? "[" + std::to_string(i) + "]"
                                                : "[" + std::to_string(i / fields) + "][" + std::to_string(i % fields) + "]";
          throw std::invalid_argument("texts" + where + ": " + e.what());
        }
        offsets[i] = static_cast<int64_t>(part.size() - before);
      }
    }
  });
  int64_t start = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t len = offsets[i];
    offsets[i] = start;
    start += len;
  }
  ids.clear();
  ids.reserve(static_cast<size_t>(start));
  for (const auto& part : parts) ids.insert(ids.end(), part.begin(), part.end());
}

}  // namespace omnikern
