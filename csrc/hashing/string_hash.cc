#include "hashing/string_hash.h"

#include <cstring>

namespace omnikern {
namespace {

// Unaligned little-endian loads; memcpy compiles to one mov on x86 and is UB-free.
inline uint32_t load_le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

inline uint64_t load_le64(const unsigned char* p) {
  return static_cast<uint64_t>(load_le32(p)) | (static_cast<uint64_t>(load_le32(p + 4)) << 32);
}

}  // namespace

uint32_t leveldb_hash32(std::string_view data, uint32_t seed) {
  const uint32_t m = 0xc6a4a793u;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const size_t n = data.size();
  // All arithmetic is mod 2^32: the length enters as n * m truncated to 32 bits.
  uint32_t h = seed ^ static_cast<uint32_t>(static_cast<uint64_t>(n) * m);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    h += load_le32(p + i);
    h *= m;
    h ^= (h >> 16);
  }
  switch (n - i) {
    case 3:
      h += static_cast<uint32_t>(p[i + 2]) << 16;
      [[fallthrough]];
    case 2:
      h += static_cast<uint32_t>(p[i + 1]) << 8;
      [[fallthrough]];
    case 1:
      h += p[i];
      h *= m;
      h ^= (h >> 24);
      break;
    default:
      break;
  }
  return h;
}

int64_t string_id32(std::string_view data) {
  if (data.empty()) return 0;
  return 1 + static_cast<int64_t>(static_cast<int32_t>(leveldb_hash32(data)));
}

uint64_t murmur_hash64a(std::string_view data, uint64_t seed) {
  const uint64_t m = 0xc6a4a7935bd1e995ull;
  const int r = 47;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const size_t n = data.size();
  uint64_t h = seed ^ (static_cast<uint64_t>(n) * m);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t k = load_le64(p + i);
    k *= m;
    k ^= k >> r;
    k *= m;
    h ^= k;
    h *= m;
  }
  const size_t tail = n - i;
  if (tail > 0) {
    for (size_t j = tail; j-- > 0;) h ^= static_cast<uint64_t>(p[i + j]) << (8 * j);
    h *= m;
  }
  h ^= h >> r;
  h *= m;
  h ^= h >> r;
  return h;
}

int64_t string_id64(std::string_view data) {
  if (data.empty()) return 0;
  return 1 + static_cast<int64_t>(murmur_hash64a(data) >> 1);
}

}  // namespace omnikern
