// The shape of a paged-attention test case, shared by the CPU and CUDA attention tests.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace kiln::test {

// One sequence of a batch: the tokens it adds and its context length after them.
struct SeqSpec {
  int32_t num_new;
  int32_t context_len;
};

struct AttentionCase {
  DType dtype;
  int head_dim;
  int num_heads;
  int num_kv_heads;
  int32_t window;
  int block_size;
};

inline std::string describe(const AttentionCase& c) {
  return std::string(dtype_name(c.dtype)) + " d=" + std::to_string(c.head_dim) + " H=" + std::to_string(c.num_heads) +
         " KVH=" + std::to_string(c.num_kv_heads) + " window=" + std::to_string(c.window) +
         " block=" + std::to_string(c.block_size);
}

// A case of the fused decode op (qkv_rope_kv_write + decode attention in one kernel): every sequence adds one
// token; rotary over the whole head.
struct RopeAttentionCase {
  DType dtype;
  int head_dim;
  int num_heads;
  int num_kv_heads;
  int block_size;
};

inline std::string describe(const RopeAttentionCase& c) {
  return std::string(dtype_name(c.dtype)) + " d=" + std::to_string(c.head_dim) + " H=" + std::to_string(c.num_heads) +
         " KVH=" + std::to_string(c.num_kv_heads) + " block=" + std::to_string(c.block_size) + " (rope fused)";
}

}  // namespace kiln::test
