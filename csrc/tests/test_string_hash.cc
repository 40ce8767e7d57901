// Golden values: LevelDB's own util/hash_test.cc vectors (the published hash).
#include "hashing/string_hash.h"

#include <string>

#include "tests/check.h"

using omnikern::leveldb_hash32;
using omnikern::murmur_hash64a;
using omnikern::string_id32;
using omnikern::string_id64;

static void run_tests() {
  OMNIKERN_CHECK_EQ(leveldb_hash32(""), 0xbc9f1d34u);
  OMNIKERN_CHECK_EQ(leveldb_hash32("\x62"), 0xef1345c4u);
  OMNIKERN_CHECK_EQ(leveldb_hash32("\xc3\x97"), 0x5b663814u);
  OMNIKERN_CHECK_EQ(leveldb_hash32("\xe2\x99\xa5"), 0x323c078fu);
  OMNIKERN_CHECK_EQ(leveldb_hash32("\xe1\x80\xb9\x32"), 0xed21633au);

  // Ids: 0 is reserved for the empty string; otherwise 1 + int32(h).
  OMNIKERN_CHECK_EQ(string_id32(""), 0);
  OMNIKERN_CHECK_EQ(string_id32("\x62"), 1 + static_cast<int64_t>(static_cast<int32_t>(0xef1345c4u)));
  OMNIKERN_CHECK_EQ(string_id64(""), 0);
  OMNIKERN_CHECK(string_id64("a") > 0);

  // Embedded NUL bytes are data, not terminators.
  const std::string with_nul("a\0b", 3);
  OMNIKERN_CHECK(leveldb_hash32(with_nul) != leveldb_hash32("a"));
  OMNIKERN_CHECK(murmur_hash64a(with_nul) != murmur_hash64a("a"));
  // Every tail length of the 64-bit variant is exercised (0..7 bytes past a word).
  std::string s;
  uint64_t previous = murmur_hash64a(s);
  for (int i = 0; i < 17; ++i) {
    s.push_back(static_cast<char>('a' + i));
    const uint64_t h = murmur_hash64a(s);
    OMNIKERN_CHECK(h != previous);
    previous = h;
  }
}

OMNIKERN_TEST_MAIN()
