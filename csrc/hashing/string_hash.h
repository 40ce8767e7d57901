// String id hashes for entity ids (docs/text.md, "String id hash").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace omnikern {

/// LevelDB's 32-bit hash of `data` (bytes read unsigned), as used by the published system.
/// @param data  raw bytes (UTF-8 for text).
/// @param seed  LevelDB uses 0xbc9f1d34.
/// @return the uint32 hash.
uint32_t leveldb_hash32(std::string_view data, uint32_t seed = 0xbc9f1d34u);

/// Entity id from the 32-bit hash: 1 + int32(h) as int64, and 0 for the empty string.
/// Ids therefore lie in [-2^31 + 1, 2^31]; 0 is reserved for "no entity".
int64_t string_id32(std::string_view data);

/// MurmurHash64A of `data`: a 64-bit hash for catalogues of 10M+ entities, where 32 bits
/// collide too often (birthday bound ~ 77k entities for a 50 % chance of one collision).
uint64_t murmur_hash64a(std::string_view data, uint64_t seed = 0xbc9f1d34u);

/// Entity id from the 64-bit hash: 1 + (h >> 1), always positive; 0 for the empty string.
int64_t string_id64(std::string_view data);

}  // namespace omnikern
