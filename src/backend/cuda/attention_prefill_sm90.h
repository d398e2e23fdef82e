// Prefill (causal, paged-KV) attention on Hopper tensor cores (wgmma), f16/bf16: see attention_prefill_sm90.cu.
// The same semantics as attention.cu's prefill kernel; the caller falls back to that kernel when this one
// declines a case (prefill_attention_sm90 returns false).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

// One prefill launch over `num_seqs` sequences: those listed in `seqs` (null: sequences 0 .. num_seqs-1).
// Pointers and layouts as DeviceBatch / DeviceKv (kernels.h): q, out [T, H * D] (act); k, v pools
// [num_blocks, KVH, block_size, D] (act); block_tables [S, max_blocks_per_seq]. Sequence s adds
// seq_num_new[s] tokens (rows seq_first_token[s] ...) at positions [ctx - num_new, ctx), ctx =
// seq_context_len[s]; each attends causally (window > 0: to keys p - window < j <= p) over its paged KV.
struct PrefillSm90Args {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  const int32_t* seqs = nullptr;
  const int32_t* seq_first_token = nullptr;
  const int32_t* seq_num_new = nullptr;
  const int32_t* seq_context_len = nullptr;
  const int32_t* block_tables = nullptr;
  int32_t num_seqs = 0;            // grid size over sequences (the list's length, or the batch's sequences)
  int32_t max_new = 0;             // max seq_num_new over those sequences (host copy)
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 0;          // a power of two
  int32_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int32_t window = 0;              // 0: full causal
  float scale = 0.0f;              // softmax scale (> 0)
  bool bf16 = false;               // activations and KV: bf16 (else f16)
};

// Launches the kernel on `stream` (programmatic dependent launch, pdl.cuh) and returns true; returns false,
// launching nothing, when the case is not supported: device other than compute capability 9.0, head_dim
// not 64 / 96 / 128, num_heads not a multiple of num_kv_heads or more than 64 query heads per kv head,
// scale <= 0, block_size not a power of two, pointers not 16-byte aligned, or KILN_PREFILL_SM90=0 in the
// environment (or prefill_sm90_set_enabled(false)). Throws (KILN_CHECK) on a failed launch.
bool prefill_attention_sm90(const PrefillSm90Args& a, cudaStream_t stream);

// The same from paged_attention's arguments (run_attention): the sequences `seqs` (null: all num_seqs of the
// batch), max_new their largest num_new; bf16 or f16 activations (the KV pools' dtype is the same).
bool prefill_attention_sm90(const void* q, const DeviceKv& kv, const DeviceBatch& b, const AttentionParams& p,
                            void* out, bool bf16, const int32_t* seqs, int32_t num_seqs, int32_t max_new,
                            cudaStream_t stream);

// Turns the kernel off (prefill_attention_sm90 then returns false) or back on, for tests and A/B timing.
void prefill_sm90_set_enabled(bool enabled);

}  // namespace kiln::cuda
