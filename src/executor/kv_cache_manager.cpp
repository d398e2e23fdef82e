#include "executor/kv_cache_manager.h"

#include <algorithm>
#include <cmath>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kiln {

Status KvCacheConfig::validate() const {
  if (max_tokens && *max_tokens <= 0)
    return invalid_argument("max_tokens_in_paged_kv_cache=" + std::to_string(*max_tokens) + " must be positive");
  if (!(free_mem_fraction > 0.0 && free_mem_fraction <= 1.0))
    return invalid_argument("kv_cache_free_gpu_mem_fraction=" + std::to_string(free_mem_fraction) +
                            " must be in (0, 1]");
  if (max_bytes && *max_bytes == 0) return invalid_argument("the KV cache byte budget must be positive");
  if (max_attention_window && *max_attention_window <= 0)
    return invalid_argument("max_attention_window_size=" + std::to_string(*max_attention_window) +
                            " must be positive");
  return {};
}

KvCacheManager::KvCacheManager(int32_t num_blocks, int32_t block_size, bool enable_reuse)
    : block_size_(block_size),
      enable_reuse_(enable_reuse),
      ref_(num_blocks, 0),
      generation_(num_blocks, 0),
      key_(num_blocks),
      lru_pos_(num_blocks) {
  empty_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) empty_.push_back(b);  // hand out low ids first
}

BlockKey KvCacheManager::chain(const BlockKey& parent, std::span<const int32_t> tokens) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  XXH3_128bits_update(&state, &parent, sizeof parent);
  XXH3_128bits_update(&state, tokens.data(), tokens.size_bytes());
  XXH128_hash_t h = XXH3_128bits_digest(&state);
  return {h.low64, h.high64};
}

std::optional<int32_t> KvCacheManager::allocate() {
  int32_t b;
  if (!empty_.empty()) {
    b = empty_.back();
    empty_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();  // evict the least recently used cached prefix block
    lru_.pop_front();
    const BlockKey k = *key_[b];
    auto it = cache_.find(k);
    if (it != cache_.end() && it->second.block == b) cache_.erase(it);
    key_[b].reset();
  } else {
    return std::nullopt;
  }
  ++generation_[b];
  ref_[b] = 1;
  return b;
}

void KvCacheManager::unref(int32_t b) {
  KILN_CHECK(ref_[b] > 0, "KV block released more often than referenced");
  if (--ref_[b] > 0) return;
  if (key_[b]) {
    lru_.push_back(b);
    lru_pos_[b] = std::prev(lru_.end());
  } else {
    empty_.push_back(b);
  }
}

void KvCacheManager::uncache(int32_t b) {
  if (!key_[b]) return;
  auto it = cache_.find(*key_[b]);
  if (it != cache_.end() && it->second.block == b) cache_.erase(it);
  key_[b].reset();
  if (ref_[b] == 0) {
    lru_.erase(lru_pos_[b]);
    empty_.push_back(b);
  }
}

int32_t KvCacheManager::begin(std::span<const int32_t> prompt, bool reuse, SequenceBlocks& seq) {
  seq = SequenceBlocks{};
  seq.reuse = reuse && enable_reuse_;
  if (!seq.reuse || prompt.empty()) return 0;
  // Whole blocks only, and at least the last prompt token left to compute (its logits pick the first output).
  const int64_t limit = (static_cast<int64_t>(prompt.size()) - 1) / block_size_;
  BlockKey key{};
  int32_t parent = -1;
  for (int64_t i = 0; i < limit; ++i) {
    auto tokens = prompt.subspan(i * block_size_, block_size_);
    const BlockKey k = chain(key, tokens);
    auto it = cache_.find(k);
    if (it == cache_.end()) break;
    const CacheEntry& e = it->second;
    const bool same_parent = e.parent_block == parent && e.parent_key == key &&
                             (parent < 0 || generation_[parent] == e.parent_generation);
    if (!same_parent || !std::equal(tokens.begin(), tokens.end(), e.tokens.begin(), e.tokens.end())) break;
    if (ref_[e.block] == 0) lru_.erase(lru_pos_[e.block]);
    retain(e.block);
    seq.blocks.push_back(e.block);
    ++reused_;
    key = k;
    parent = e.block;
  }
  seq.registered = static_cast<int32_t>(seq.blocks.size());
  seq.last_key = key;
  return static_cast<int32_t>(seq.blocks.size()) * block_size_;
}

int64_t KvCacheManager::blocks_needed(const SequenceBlocks& seq, int64_t tokens) const {
  return std::max<int64_t>(0, blocks_for(tokens, block_size_) - static_cast<int64_t>(seq.blocks.size()));
}

bool KvCacheManager::reserve(SequenceBlocks& seq, int64_t tokens) {
  const int64_t need = blocks_needed(seq, tokens);
  if (need > free_blocks()) return false;
  for (int64_t i = 0; i < need; ++i) seq.blocks.push_back(*allocate());
  return true;
}

bool KvCacheManager::make_writable(SequenceBlocks& seq, int64_t from, int64_t to,
                                   std::vector<std::pair<int32_t, int32_t>>* copies) {
  if (to <= from) return true;
  const int64_t first = from / block_size_, last = (to - 1) / block_size_;
  KILN_CHECK(last < static_cast<int64_t>(seq.blocks.size()), "make_writable past the reserved blocks");
  int64_t shared = 0;
  for (int64_t i = first; i <= last; ++i) shared += ref_[seq.blocks[i]] > 1;
  if (shared > free_blocks()) return false;
  for (int64_t i = first; i <= last; ++i) {
    const int32_t b = seq.blocks[i];
    if (ref_[b] > 1) {
      const int32_t nb = *allocate();
      copies->push_back({b, nb});
      unref(b);
      seq.blocks[i] = nb;
    } else if (key_[b]) {
      uncache(b);  // its contents are about to change
    }
  }
  return true;
}

void KvCacheManager::commit(SequenceBlocks& seq, std::span<const int32_t> tokens, int64_t computed) {
  if (!seq.reuse) return;
  // An entry is live while a lookup can reach it: its parent is the block cached under its parent key, with
  // the contents it had then. Others (parent evicted, recycled or uncached) can never be handed out again.
  auto reachable = [&](const CacheEntry& e) {
    if (e.parent_block < 0) return true;
    auto p = cache_.find(e.parent_key);
    return p != cache_.end() && p->second.block == e.parent_block &&
           generation_[e.parent_block] == e.parent_generation;
  };
  const int64_t full = std::min<int64_t>(computed, static_cast<int64_t>(tokens.size())) / block_size_;
  for (int64_t i = seq.registered; i < full; ++i) {
    // The block, or its parent, was dropped: a dropped block may already hold another sequence's KV.
    if (seq.first_live > 0 && i <= seq.first_live) return;
    const int32_t b = seq.blocks[i];
    auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const BlockKey prev = seq.last_key, k = chain(prev, block_tokens);
    if (!key_[b]) {  // not from the cache
      // Chain under the block a lookup finds one level up: ours, or an equal one cached before ours.
      int32_t parent = -1;
      if (i > 0) {
        auto p = cache_.find(prev);
        if (p == cache_.end()) return;  // nothing reaches this block; it stays private
        parent = p->second.block;
      }
      auto it = cache_.find(k);
      if (it == cache_.end() || !reachable(it->second)) {
        if (it != cache_.end()) uncache(it->second.block);
        key_[b] = k;
        cache_[k] = CacheEntry{b, prev, parent, parent >= 0 ? generation_[parent] : 0,
                               std::vector<int32_t>(block_tokens.begin(), block_tokens.end())};
      }  // else an equal block is cached already; ours stays private
    }
    seq.registered = static_cast<int32_t>(i + 1);
    seq.last_key = k;
  }
}

SequenceBlocks KvCacheManager::fork(const SequenceBlocks& parent) {
  SequenceBlocks s = parent;
  s.reuse = false;
  for (size_t i = parent.first_live; i < parent.blocks.size(); ++i) retain(parent.blocks[i]);
  return s;
}

void KvCacheManager::drop_outside_window(SequenceBlocks& seq, int64_t length, int32_t window) {
  // Block i is never read again once no future query (positions >= length) can see its last key:
  // (i + 1) * block_size - 1 < length - window + 1 (a query at p sees keys p - window < j <= p).
  while (seq.first_live < static_cast<int32_t>(seq.blocks.size()) &&
         static_cast<int64_t>(seq.first_live + 1) * block_size_ - 1 < length - window + 1) {
    unref(seq.blocks[seq.first_live]);
    ++seq.first_live;
  }
}

void KvCacheManager::release(SequenceBlocks& seq) {
  for (size_t i = seq.first_live; i < seq.blocks.size(); ++i) unref(seq.blocks[i]);
  seq.blocks.clear();
  seq.first_live = 0;
  seq.registered = 0;
}

KvCacheStats KvCacheManager::stats() const {
  KvCacheStats s;
  s.max_blocks = num_blocks();
  s.free_blocks = free_blocks();
  s.used_blocks = s.max_blocks - s.free_blocks;
  s.cached_blocks = static_cast<int64_t>(cache_.size());
  s.reused_blocks = reused_;
  s.tokens_per_block = block_size_;
  return s;
}

}  // namespace kiln
