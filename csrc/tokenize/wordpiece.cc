#include "tokenize/wordpiece.h"

#include <algorithm>
#include <stdexcept>

#include "common/parallel.h"
#include "unicode/unicode.h"

namespace omnikern {

// Per-call working memory, reused across the texts one thread encodes.
struct WordPieceTokenizer::Workspace {
  std::u32string text, normalized, scratch, pre;
  std::string word_utf8;
  std::vector<uint32_t> byte_at;  // byte offset in word_utf8 of each code point, plus the end
};

WordPieceTokenizer::WordPieceTokenizer(const std::vector<std::pair<std::string, int32_t>>& vocab,
                                       WordPieceOptions options)
    : options_(std::move(options)), normalizer_(options_.normalizer) {
  if (options_.max_length == 1) throw std::invalid_argument("max_length must be 0 (no truncation) or >= 2, got 1");
  const std::string& prefix = options_.continuing_subword_prefix;
  for (const auto& [token, id] : vocab) {
    vocab_.insert(token, id);
    if (!prefix.empty() && token.size() > prefix.size() && token.compare(0, prefix.size(), prefix) == 0)
      continuation_.insert(std::string_view(token).substr(prefix.size()), id);
  }
  auto require = [&](const std::string& token, const char* role) {
    const int32_t id = vocab_.find(token);
    if (id < 0) throw std::invalid_argument(std::string(role) + " '" + token + "' is not in the vocab");
    return id;
  };
  unk_id_ = require(options_.unk_token, "unk_token");
  if (options_.add_special_tokens) {
    cls_id_ = require(options_.cls_token, "cls_token");
    sep_id_ = require(options_.sep_token, "sep_token");
  } else {
    cls_id_ = vocab_.find(options_.cls_token);
    sep_id_ = vocab_.find(options_.sep_token);
  }
  pad_id_ = require(options_.pad_token, "pad_token");
  for (const std::string& s : options_.special_tokens) {
    if (s.empty()) throw std::invalid_argument("special_tokens must not hold an empty string");
    specials_.emplace_back(unicode::decode_utf8(s), require(s, "special token"));
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

void WordPieceTokenizer::word_piece(std::u32string_view word, Workspace& ws, std::vector<int32_t>& ids) const {
  // HF counts code points of the normalised word, not bytes.
  if (word.size() > options_.max_input_chars_per_word) {
    ids.push_back(unk_id_);
    return;
  }
  ws.word_utf8.clear();
  ws.byte_at.clear();
  for (const char32_t c : word) {
    ws.byte_at.push_back(static_cast<uint32_t>(ws.word_utf8.size()));
    unicode::append_utf8(c, ws.word_utf8);
  }
  ws.byte_at.push_back(static_cast<uint32_t>(ws.word_utf8.size()));
  const size_t first_piece = ids.size();
  const std::string_view bytes(ws.word_utf8);
  size_t start = 0;
  const size_t n = word.size();
  while (start < n) {
    const TokenMap& map = start == 0 ? vocab_ : continuation_;
    // Greedy longest match: try the longest candidate first, never longer than the longest key.
    size_t end = n;
    const size_t limit = ws.byte_at[start] + map.max_key_bytes();
    while (end > start && ws.byte_at[end] > limit) --end;
    int32_t id = -1;
    for (; end > start; --end) {
      id = map.find(bytes.substr(ws.byte_at[start], ws.byte_at[end] - ws.byte_at[start]));
      if (id >= 0) break;
    }
    if (id < 0) {
      // No piece matches here: the whole word is one [UNK].
      ids.resize(first_piece);
      ids.push_back(unk_id_);
      return;
    }
    ids.push_back(id);
    start = end;
  }
}

void WordPieceTokenizer::pre_normalize(Workspace& ws) const {
  if (options_.pre_nfkc) ws.text = unicode::normalize(ws.text, unicode::Form::NFKC);
  if (options_.pre_lowercase) {
    ws.pre.clear();
    for (const char32_t c : ws.text) unicode::append_lower(c, ws.pre);
    ws.text.swap(ws.pre);
  }
  if (options_.pre_collapse_whitespace || options_.pre_trim) {
    ws.pre.clear();
    bool in_space = false;
    for (const char32_t c : ws.text) {
      const bool space = unicode::is_white_space(c);
      if (space && options_.pre_collapse_whitespace) {
        if (!in_space) ws.pre.push_back(' ');
      } else {
        ws.pre.push_back(c);
      }
      in_space = space;
    }
    if (options_.pre_trim) {
      size_t b = 0, e = ws.pre.size();
      while (b < e && unicode::is_white_space(ws.pre[b])) ++b;
      while (e > b && unicode::is_white_space(ws.pre[e - 1])) --e;
      ws.pre = ws.pre.substr(b, e - b);
    }
    ws.text.swap(ws.pre);
  }
}

void WordPieceTokenizer::encode_into(std::string_view text, Workspace& ws, std::vector<int32_t>& ids) const {
  ws.text.clear();
  unicode::decode_utf8(text, ws.text);
  pre_normalize(ws);
  ids.clear();
  if (options_.add_special_tokens) ids.push_back(cls_id_);
  const size_t body_start = ids.size();
  // Room for body tokens; beyond it the rest of the text cannot change the output.
  const size_t budget = options_.max_length == 0 ? SIZE_MAX
                        : options_.add_special_tokens ? options_.max_length - 2
                                                      : options_.max_length;
  auto full = [&] { return ids.size() - body_start >= budget; };

  const std::u32string_view all(ws.text);
  auto process_segment = [&](size_t begin, size_t end) {
    if (begin >= end || full()) return;
    ws.normalized.clear();
    normalizer_.normalize(all.substr(begin, end - begin), ws.normalized, ws.scratch);
    const std::u32string_view norm(ws.normalized);
    bert_pre_tokenize(norm, [&](size_t b, size_t e) {
      if (!full()) word_piece(norm.substr(b, e - b), ws, ids);
    });
  };
  size_t segment = 0;
  if (!specials_.empty()) {
    for (size_t i = 0; i < all.size() && !full();) {
      bool matched = false;
      for (const auto& [special, id] : specials_) {
        if (all[i] == special[0] && all.compare(i, special.size(), special) == 0) {
          process_segment(segment, i);
          if (!full()) ids.push_back(id);
          i += special.size();
          segment = i;
          matched = true;
          break;
        }
      }
      if (!matched) ++i;
    }
  }
  process_segment(segment, all.size());
  if (ids.size() - body_start > budget) ids.resize(body_start + budget);
  if (options_.add_special_tokens) ids.push_back(sep_id_);
}

std::vector<int32_t> WordPieceTokenizer::encode(std::string_view text) const {
  Workspace ws;
  std::vector<int32_t> ids;
  encode_into(text, ws, ids);
  return ids;
}

std::vector<std::vector<int32_t>> WordPieceTokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                                   int num_threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  parallel_for(texts.size(), num_threads, 64, [&](size_t begin, size_t end) {
    Workspace ws;
    for (size_t i = begin; i < end; ++i) {
      try {
        encode_into(texts[i], ws, out[i]);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument("texts[" + std::to_string(i) + "]: " + e.what());
      }
    }
  });
  return out;
}

}  // namespace omnikern
