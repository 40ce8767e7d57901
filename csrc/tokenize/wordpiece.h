// BERT WordPiece tokenizer with ids identical to HF tokenizers (BertNormalizer + BertPreTokenizer +
// WordPiece model + BERT post-processor); docs/text.md, "Query tokenizer".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/token_map.h"
#include "tokenize/bert_normalizer.h"

namespace omnikern {

struct WordPieceOptions {
  BertNormalizerOptions normalizer;
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  size_t max_input_chars_per_word = 100;
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  /// Literal strings cut out of the raw text before normalisation and emitted as their ids
  /// (leftmost, longest first). Each must be in the vocab.
  std::vector<std::string> special_tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  /// Optional pre-normalisation of the raw text, before special tokens are matched and before the
  /// BERT normaliser, applied in this fixed order: NFKC (Unicode 17) -> full lowercase -> collapse
  /// each run of White_Space to one space -> trim White_Space at both ends.
  bool pre_nfkc = false;
  bool pre_lowercase = false;
  bool pre_collapse_whitespace = false;
  bool pre_trim = false;
  /// Total length including [CLS] and [SEP]; 0 = no truncation. Must be 0 or >= 2.
  size_t max_length = 0;
  bool add_special_tokens = true;
};

class WordPieceTokenizer {
 public:
  /// `vocab` lists (token, id) pairs; ids need not be contiguous. Throws std::invalid_argument when
  /// a required token ([UNK], [CLS], [SEP], [PAD], special tokens) is missing or options are invalid.
  WordPieceTokenizer(const std::vector<std::pair<std::string, int32_t>>& vocab, WordPieceOptions options);

  /// Token ids of one UTF-8 text: [CLS] tokens [SEP], tokens truncated to max_length - 2.
  /// Throws std::invalid_argument (with the byte offset) on invalid UTF-8.
  std::vector<int32_t> encode(std::string_view text) const;
  /// encode() of each text, computed by up to `num_threads` threads (0 = all cores); the result does
  /// not depend on the thread count. An invalid text throws, naming its index.
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts, int num_threads) const;

  /// The normalised text (for inspection and tests).
  std::u32string normalize(std::u32string_view text) const { return normalizer_.normalize(text); }

  int32_t token_id(std::string_view token) const { return vocab_.find(token); }
  int32_t unk_id() const { return unk_id_; }
  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t pad_id() const { return pad_id_; }
  const WordPieceOptions& options() const { return options_; }

 private:
  struct Workspace;
  void encode_into(std::string_view text, Workspace& ws, std::vector<int32_t>& ids) const;
  void pre_normalize(Workspace& ws) const;
  // Appends the WordPiece ids of one pre-tokenized word (one [UNK] if it cannot be segmented).
  void word_piece(std::u32string_view word, Workspace& ws, std::vector<int32_t>& ids) const;

  WordPieceOptions options_;
  BertNormalizer normalizer_;
  TokenMap vocab_;         // every token as written
  TokenMap continuation_;  // tokens that start with the continuing prefix, prefix removed
  std::vector<std::pair<std::u32string, int32_t>> specials_;  // longest first
  int32_t unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, pad_id_ = -1;
};

}  // namespace omnikern
