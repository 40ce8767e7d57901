// TokenMap: an immutable string -> int32 id map for vocabulary lookups (the WordPiece and n-gram
// vocabularies), with a fast 64-bit string hash callers can compute ahead of the lookup.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace omnikern {

/// An immutable string -> id map with open addressing over one key arena (no per-key allocation).
class TokenMap {
 public:
  TokenMap() = default;
  /// Later duplicates overwrite earlier ones (HF builds its vocab the same way).
  void insert(std::string_view key, int32_t id);
  /// The id of `key`, or -1.
  int32_t find(std::string_view key) const { return find(key, hash(key)); }
  /// find() with the key's hash() already computed: callers doing many lookups hash them all,
  /// prefetch() each, then find() each, so the cache misses of a large map overlap.
  int32_t find(std::string_view key, uint64_t key_hash) const;
  static uint64_t hash(std::string_view key);
  void prefetch(uint64_t key_hash) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[key_hash & (slots_.size() - 1)]);
  }
  size_t size() const { return size_; }
  size_t max_key_bytes() const { return max_key_bytes_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0, length = 0;
    int32_t id = -1;
  };
  void grow();
  std::string arena_;
  std::vector<Slot> slots_;
  size_t size_ = 0, max_key_bytes_ = 0;
};

}  // namespace omnikern
