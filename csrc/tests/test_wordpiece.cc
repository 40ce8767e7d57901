// WordPiece on a toy vocab: greedy longest match, [UNK] rules, special tokens and truncation.
#include "tokenize/wordpiece.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "tests/check.h"

using omnikern::WordPieceOptions;
using omnikern::WordPieceTokenizer;

static std::vector<int32_t> ids(std::initializer_list<int32_t> v) { return v; }

static void run_tests() {
  const std::vector<std::string> tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff",
                                           "##able", "a", "b", "##b", ",", "aff", "e", "cafe"};
  std::vector<std::pair<std::string, int32_t>> vocab;
  for (size_t i = 0; i < tokens.size(); ++i) vocab.emplace_back(tokens[i], static_cast<int32_t>(i));
  WordPieceOptions options;
  const WordPieceTokenizer tok(vocab, options);

  OMNIKERN_CHECK(tok.encode("unaffable") == ids({2, 5, 6, 7, 3}));
  OMNIKERN_CHECK(tok.encode("UnAffable, ab") == ids({2, 5, 6, 7, 11, 8, 10, 3}));
  OMNIKERN_CHECK(tok.encode("unaffablex") == ids({2, 1, 3}));  // unsegmentable -> one [UNK]
  OMNIKERN_CHECK(tok.encode("") == ids({2, 3}));
  OMNIKERN_CHECK(tok.encode(" \t\n\xE3\x80\x80 ") == ids({2, 3}));
  OMNIKERN_CHECK(tok.encode("a[SEP]b") == ids({2, 8, 3, 9, 3}));
  OMNIKERN_CHECK(tok.encode("a[sep]") == ids({2, 8, 1, 1, 1, 3}));  // '[' 'sep' ']' (sep is [UNK])
  OMNIKERN_CHECK(tok.encode("Caf\xC3\xA9") == ids({2, 14, 3}));        // accent stripped
  OMNIKERN_CHECK(tok.encode("a\x0b" "b") == ids({2, 8, 10, 3}));       // \v deleted, not a space
  OMNIKERN_CHECK(tok.encode(std::string(101, 'a')) == ids({2, 1, 3}));
  OMNIKERN_CHECK(tok.encode(std::string(100, 'b')).size() == 102);

  WordPieceOptions truncated = options;
  truncated.max_length = 4;
  const WordPieceTokenizer short_tok(vocab, truncated);
  OMNIKERN_CHECK(short_tok.encode("a b a b a") == ids({2, 8, 9, 3}));
  OMNIKERN_CHECK(short_tok.encode("[SEP][SEP][SEP]") == ids({2, 3, 3, 3}));

  // Pre-normalisation: NFKC folds the fullwidth letters, then the BERT pipeline lowercases.
  WordPieceOptions pre = options;
  pre.pre_nfkc = pre.pre_collapse_whitespace = pre.pre_trim = true;
  const WordPieceTokenizer pre_tok(vocab, pre);
  OMNIKERN_CHECK(pre_tok.encode("\xEF\xBC\xA1\xEF\xBC\xA2") == ids({2, 8, 10, 3}));  // "AB" -> a ##b
  OMNIKERN_CHECK(tok.encode("\xEF\xBC\xA1\xEF\xBC\xA2") == ids({2, 1, 3}));        // fullwidth stays

  // Batch: same results for any thread count; errors name the item.
  std::vector<std::string> texts;
  for (int i = 0; i < 1000; ++i) texts.push_back(std::string(i % 7, 'a') + " unaffable b");
  std::vector<std::string_view> views(texts.begin(), texts.end());
  const auto one = tok.encode_batch(views, 1);
  OMNIKERN_CHECK(tok.encode_batch(views, 3) == one);
  OMNIKERN_CHECK(one[5] == tok.encode(texts[5]));
  texts[700] = "ok\xFF";
  views.assign(texts.begin(), texts.end());
  bool named = false;
  try {
    tok.encode_batch(views, 4);
  } catch (const std::invalid_argument& e) {
    named = std::string(e.what()).find("texts[700]") != std::string::npos &&
            std::string(e.what()).find("byte offset 2") != std::string::npos;
  }
  OMNIKERN_CHECK(named);

  bool missing = false;
  try {
    WordPieceTokenizer bad({{"a", 0}}, options);
  } catch (const std::invalid_argument& e) {
    missing = std::string(e.what()).find("[UNK]") != std::string::npos;
  }
  OMNIKERN_CHECK(missing);
}

OMNIKERN_TEST_MAIN()
