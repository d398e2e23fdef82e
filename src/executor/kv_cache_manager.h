// The paged KV cache's bookkeeping: a pool of fixed-size blocks with reference counts, each sequence's
// block table, copy-on-write for shared partial blocks (beam forks), prefix reuse and sliding windows.
// The memory itself is a KvStorage owned by the backend; this class only hands out block ids.
//
// Prefix reuse: every full block of a reuse-enabled sequence is registered under a 128-bit XXH3 key chained
// over the token ids of all blocks up to it (key_i = H(key_{i-1} || tokens_i)). A lookup also checks the
// block's own tokens and that its parent is exactly the block matched one level up (id and generation),
// so a hash collision can never hand one request another's KV. Unreferenced cached blocks stay in an LRU
// list and are evicted (oldest first) only when no never-cached block is free.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"

namespace kiln {

// How big the KV cache is and how it behaves (the tensorrt_llm model's KV parameters).
struct KvCacheConfig {
  std::optional<int64_t> max_tokens;       // max_tokens_in_paged_kv_cache
  double free_mem_fraction = 0.9;          // kv_cache_free_gpu_mem_fraction (CPU: of the memory free after weights)
  std::optional<uint64_t> max_bytes;       // an explicit byte budget (CPU)
  bool enable_reuse = false;               // enable_kv_cache_reuse
  std::optional<int32_t> max_attention_window;  // max_attention_window_size: caps every layer's window
  Status validate() const;
};

struct KvCacheStats {
  int64_t max_blocks = 0;
  int64_t free_blocks = 0;    // allocatable now: never-cached plus evictable cached blocks
  int64_t used_blocks = 0;    // referenced by a sequence
  int64_t cached_blocks = 0;  // holding a reusable prefix (referenced or not)
  int64_t reused_blocks = 0;  // blocks handed to a sequence from the prefix cache, since start
  int32_t tokens_per_block = 0;
};

struct BlockKey {
  uint64_t lo = 0, hi = 0;
  bool operator==(const BlockKey&) const = default;
};

// One sequence's blocks. blocks[i] holds tokens [i * block_size, (i + 1) * block_size).
struct SequenceBlocks {
  std::vector<int32_t> blocks;
  int32_t first_live = 0;        // blocks before it were dropped (outside the attention window)
  int32_t registered = 0;        // leading full blocks already offered to the prefix cache
  BlockKey last_key;             // chain key of block `registered - 1`
  bool reuse = false;            // this sequence reads and feeds the prefix cache
};

class KvCacheManager {
 public:
  KvCacheManager(int32_t num_blocks, int32_t block_size, bool enable_reuse);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return static_cast<int32_t>(ref_.size()); }
  int64_t free_blocks() const { return static_cast<int64_t>(empty_.size() + lru_.size()); }
  static int64_t blocks_for(int64_t tokens, int32_t block_size) { return (tokens + block_size - 1) / block_size; }

  // Starts a sequence over `prompt`: hands it the cached blocks of its longest cached prefix (whole blocks,
  // leaving at least one prompt token to compute) and returns how many prompt tokens they cover.
  int32_t begin(std::span<const int32_t> prompt, bool reuse, SequenceBlocks& seq);
  // Makes seq's table cover `tokens` positions; false (and nothing allocated) when the pool is short.
  bool reserve(SequenceBlocks& seq, int64_t tokens);
  // Blocks that reserve(seq, tokens) would have to allocate.
  int64_t blocks_needed(const SequenceBlocks& seq, int64_t tokens) const;
  // Before writing positions [from, to): any block there that is shared gets a private copy.
  // Returns the (src, dst) block copies the backend must make first; false when the pool is short.
  bool make_writable(SequenceBlocks& seq, int64_t from, int64_t to, std::vector<std::pair<int32_t, int32_t>>* copies);
  // After `tokens[0, computed)` are in the cache: registers the newly full blocks for reuse.
  void commit(SequenceBlocks& seq, std::span<const int32_t> tokens, int64_t computed);
  // A new sequence sharing all of `parent`'s blocks (beam fork); writes go through make_writable.
  SequenceBlocks fork(const SequenceBlocks& parent);
  // Drops blocks no longer visible to a sliding window of `window` tokens once `length` tokens exist.
  void drop_outside_window(SequenceBlocks& seq, int64_t length, int32_t window);
  // Returns every block of the sequence.
  void release(SequenceBlocks& seq);

  KvCacheStats stats() const;

 private:
  struct CacheEntry {
    int32_t block;
    BlockKey parent_key;
    int32_t parent_block;           // -1 for the first block of a sequence
    uint64_t parent_generation;
    std::vector<int32_t> tokens;
  };
  struct KeyHash {
    size_t operator()(const BlockKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
  };

  std::optional<int32_t> allocate();
  void retain(int32_t block) { ++ref_[block]; }
  void unref(int32_t block);
  void uncache(int32_t block);
  static BlockKey chain(const BlockKey& parent, std::span<const int32_t> tokens);

  int32_t block_size_;
  bool enable_reuse_;
  std::vector<int32_t> ref_;                  // [num_blocks] references from sequences
  std::vector<uint64_t> generation_;          // [num_blocks] bumped whenever a block gets new contents
  std::vector<std::optional<BlockKey>> key_;  // [num_blocks] the key it is cached under
  std::vector<int32_t> empty_;                // free blocks holding nothing reusable (a stack)
  std::list<int32_t> lru_;                    // free cached blocks, least recently used first
  std::vector<std::list<int32_t>::iterator> lru_pos_;  // [num_blocks] valid while the block is in lru_
  std::unordered_map<BlockKey, CacheEntry, KeyHash> cache_;
  int64_t reused_ = 0;
};

}  // namespace kiln
