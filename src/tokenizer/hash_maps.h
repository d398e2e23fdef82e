// Flat open-addressing hash maps for the tokenizer's hot lookups: token string
// -> id, packed pair of ids -> merge, and a bounded thread-safe word cache.
#pragma once

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kiln::tok {

inline uint64_t hash_bytes(std::string_view s) { return XXH3_64bits(s.data(), s.size()); }

// String -> int32 id. Keys live in one arena; built once, then read-only.
class StringIdMap {
 public:
  // Inserts or overwrites.
  void insert(std::string_view key, int32_t id) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    uint64_t h = hash_bytes(key);
    size_t i = h & mask_;
    while (true) {
      Slot& s = slots_[i];
      if (s.off == kEmpty) {
        s.hash = static_cast<uint32_t>(h >> 32);
        s.off = static_cast<uint32_t>(keys_.size());
        s.len = static_cast<uint32_t>(key.size());
        s.id = id;
        keys_.append(key);
        ++size_;
        return;
      }
      if (s.hash == static_cast<uint32_t>(h >> 32) && s.len == key.size() &&
          std::memcmp(keys_.data() + s.off, key.data(), key.size()) == 0) {
        s.id = id;
        return;
      }
      i = (i + 1) & mask_;
    }
  }

  // The id of `key`, or -1.
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    uint64_t h = hash_bytes(key);
    size_t i = h & mask_;
    uint32_t hh = static_cast<uint32_t>(h >> 32);
    while (true) {
      const Slot& s = slots_[i];
      if (s.off == kEmpty) return -1;
      if (s.hash == hh && s.len == key.size() &&
          std::memcmp(keys_.data() + s.off, key.data(), key.size()) == 0) {
        return s.id;
      }
      i = (i + 1) & mask_;
    }
  }

  size_t size() const { return size_; }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint32_t hash;
    uint32_t off = kEmpty;
    uint32_t len;
    int32_t id;
  };
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    size_t cap = old.empty() ? 64 : old.size() * 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.off == kEmpty) continue;
      uint64_t h = hash_bytes(std::string_view(keys_.data() + s.off, s.len));
      size_t i = h & mask_;
      while (slots_[i].off != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::string keys_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// (left id, right id) -> (rank, merged id).
class MergeMap {
 public:
  struct Value {
    uint32_t rank;
    int32_t new_id;
  };
  void insert(int32_t a, int32_t b, Value v) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    uint64_t key = pack(a, b);
    size_t i = slot_of(key);
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
    if (slots_[i].key == kEmpty) ++size_;
    slots_[i].key = key;
    slots_[i].value = v;
  }
  const Value* find(int32_t a, int32_t b) const {
    if (slots_.empty()) return nullptr;
    uint64_t key = pack(a, b);
    size_t i = slot_of(key);
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (s.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  void prefetch(int32_t a, int32_t b) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[slot_of(pack(a, b))]);
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Value value;
  };
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t slot_of(uint64_t key) const { return ((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    size_t cap = old.empty() ? 64 : old.size() * 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t i = slot_of(s.key);
      while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// A bounded, thread-safe cache of word -> ids, sharded by hash with a mutex a
// shard. A full shard is emptied and refilled (no per-entry bookkeeping).
class WordCache {
 public:
  static constexpr size_t kShards = 16;
  static constexpr size_t kMaxKeyBytes = 256;

  explicit WordCache(size_t entries_per_shard = 4096) : per_shard_(entries_per_shard) {}

  // Appends the cached ids of `key` to `out`; false on a miss.
  bool get(std::string_view key, uint64_t h, std::vector<int32_t>& out) const {
    const Shard& sh = shards_[h >> 60];
    std::lock_guard<std::mutex> lock(sh.mu);
    if (sh.slots.empty()) return false;
    size_t mask = sh.slots.size() - 1;
    size_t i = h & mask;
    while (true) {
      const Entry& e = sh.slots[i];
      if (e.key_len == kEmpty) return false;
      if (e.hash == h && e.key_len == key.size() &&
          std::memcmp(sh.keys.data() + e.key_off, key.data(), key.size()) == 0) {
        out.insert(out.end(), sh.ids.begin() + e.ids_off, sh.ids.begin() + e.ids_off + e.ids_len);
        return true;
      }
      i = (i + 1) & mask;
    }
  }

  void put(std::string_view key, uint64_t h, const int32_t* ids, size_t n) {
    if (key.size() >= kMaxKeyBytes) return;
    Shard& sh = shards_[h >> 60];
    std::lock_guard<std::mutex> lock(sh.mu);
    if (sh.slots.empty()) sh.slots.assign(per_shard_ * 2, Entry{});
    if (sh.count >= per_shard_) {
      std::fill(sh.slots.begin(), sh.slots.end(), Entry{});
      sh.keys.clear();
      sh.ids.clear();
      sh.count = 0;
    }
    size_t mask = sh.slots.size() - 1;
    size_t i = h & mask;
    while (sh.slots[i].key_len != kEmpty) {
      const Entry& e = sh.slots[i];
      if (e.hash == h && e.key_len == key.size() &&
          std::memcmp(sh.keys.data() + e.key_off, key.data(), key.size()) == 0) {
        return;  // another thread got there first
      }
      i = (i + 1) & mask;
    }
    Entry& e = sh.slots[i];
    e.hash = h;
    e.key_off = static_cast<uint32_t>(sh.keys.size());
    e.key_len = static_cast<uint32_t>(key.size());
    e.ids_off = static_cast<uint32_t>(sh.ids.size());
    e.ids_len = static_cast<uint32_t>(n);
    sh.keys.append(key);
    sh.ids.insert(sh.ids.end(), ids, ids + n);
    ++sh.count;
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Entry {
    uint64_t hash = 0;
    uint32_t key_off = 0;
    uint32_t key_len = kEmpty;
    uint32_t ids_off = 0;
    uint32_t ids_len = 0;
  };
  struct Shard {
    mutable std::mutex mu;
    std::vector<Entry> slots;
    std::string keys;
    std::vector<int32_t> ids;
    size_t count = 0;
  };
  size_t per_shard_;
  Shard shards_[kShards];
};

}  // namespace kiln::tok
