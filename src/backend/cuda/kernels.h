// The CUDA backend's kernels, as host-callable launchers (each enqueues on `stream`, never synchronizes).
// Activations are one of kF32 / kF16 / kBF16 (`act`), math in f32. Shapes are in the comments; every
// pointer is device memory unless it says host. The backend (cuda_backend.cpp) owns buffers and calls these;
// ops.cu holds the elementwise and normalization kernels, attention.cu the paged attention.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace kiln::cuda {

// A forward batch as the kernels see it, built once per forward by the backend (begin_forward) from the
// host AttentionBatch: T new tokens from S sequences, sequence s's new tokens at rows
// [seq_first_token[s], seq_first_token[s] + seq_num_new[s]), sitting at positions
// [seq_context_len[s] - seq_num_new[s], seq_context_len[s]) of the sequence.
// Sequences adding at most this many tokens in a forward are attended by the decode kernel (split-KV), the
// others by the prefill kernel (tensor-core tiles).
constexpr int32_t kAttentionDecodeMaxNew = 4;

struct DeviceBatch {
  int32_t num_tokens = 0;          // T
  int32_t num_seqs = 0;            // S
  int32_t block_size = 0;          // tokens per KV block (a power of two)
  int32_t max_blocks_per_seq = 0;  // row stride of block_tables
  int32_t max_context_len = 0;     // max over s of seq_context_len[s] (host copy)
  int32_t max_num_new = 0;         // max over s of seq_num_new[s] (host copy)
  const int32_t* token_seq = nullptr;        // [T] the sequence of each token
  const int32_t* token_pos = nullptr;        // [T] the position of each token in its sequence
  const int32_t* seq_first_token = nullptr;  // [S]
  const int32_t* seq_num_new = nullptr;      // [S]
  const int32_t* seq_context_len = nullptr;  // [S] tokens in the KV after this forward (new ones included)
  const int32_t* block_tables = nullptr;     // [S, max_blocks_per_seq] physical KV block of each logical block
  // Optional split of a mixed batch (null prefill_seqs: the attention decides from max_num_new alone):
  // the sequences adding more than kAttentionDecodeMaxNew tokens, and the tokens of all the others.
  const int32_t* prefill_seqs = nullptr;     // [num_prefill_seqs]
  const int32_t* decode_tokens = nullptr;    // [num_decode_tokens]
  int32_t num_prefill_seqs = 0;
  int32_t max_prefill_new = 0;               // max num_new over prefill_seqs (host copy)
  int32_t num_decode_tokens = 0;
};

// A layer's paged KV pools, each [num_blocks, num_kv_heads, block_size, head_dim] of `dtype`
// (kF32 / kF16 / kBF16): token p of a sequence, kv head g, lives in block block_tables[s][p / block_size],
// row p % block_size.
struct DeviceKv {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::kF16;
  int32_t num_blocks = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

// out[t, :] = table[ids[t] - row0, :], zeros where ids[t] - row0 is outside [0, rows) (a vocab-parallel slice).
// table [rows, hidden] of table_dtype (f32/f16/bf16), ids [T], out [T, hidden] act.
void embedding(const void* table, DType table_dtype, int64_t row0, int64_t rows, const int32_t* ids,
               int64_t num_tokens, int64_t hidden, void* out, DType act, cudaStream_t stream);

// out[i] = x[i] converted from `from` to `to` (f32 / f16 / bf16; round to nearest even). n elements.
void convert(const void* x, DType from, void* out, DType to, int64_t n, cudaStream_t stream);

// ids[r] = first index of the maximum of logits row r (strictly greater wins: ties and NaNs keep the lower
// index, as the host sampler). logits [rows, vocab] f32, ids [rows] i32.
void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, cudaStream_t stream);

// ids[pairs[1 + 2i]] = src[pairs[2 + 2i]] for i < min(pairs[0], cap) (the count read on the device).
// src [R] i32, pairs [1 + 2 * cap] i32, ids [cap] i32
void scatter_tokens(const int32_t* src, const int32_t* pairs, int64_t cap, int32_t* ids, cudaStream_t stream);

// out = x * rsqrt(mean(x^2) + eps) * w, per row. x, out [rows, dim] act; w [dim] f32. out may alias x.
void rmsnorm(const void* x, const float* w, float eps, void* out, int64_t rows, int64_t dim, DType act,
             cudaStream_t stream);

// residual += delta (rounded to act), then out = rmsnorm(residual). [rows, dim] act; w [dim] f32.
void add_rmsnorm(void* residual, const void* delta, const float* w, float eps, void* out, int64_t rows, int64_t dim,
                 DType act, cudaStream_t stream);

// residual += delta, the sum rounded to act. [n] elements each.
void add(void* residual, const void* delta, int64_t n, DType act, cudaStream_t stream);

// out = silu(gate) * up. gate_up [rows, 2 * inter] (gate | up), out [rows, inter], act.
void silu_mul(const void* gate_up, void* out, int64_t rows, int64_t inter, DType act, cudaStream_t stream);

// out[i, :] = x[rows[i], :] for i < n. rows: device [n]; row_bytes a multiple of 4. out must not alias x.
void gather_rows(const void* x, const int32_t* rows, int64_t n, int64_t row_bytes, void* out, cudaStream_t stream);

// Splits qkv [T, (H + 2 * KVH) * D] (act) into q_out [T, H * D] (act) and the KV cache rows of each token's
// position: per head, optional RMSNorm (q_norm / k_norm [D] f32, or null; eps), then rotate-half RoPE of the
// first rotary_dim dims with cos_sin [T, rotary_dim] f32 (cos in the first half, sin in the second; element
// i < rotary_dim / 2 pairs with i + rotary_dim / 2). K (normed, rotated) and V (as is) are written converted
// to kv.dtype.
struct QkvParams {
  int32_t num_heads = 0, num_kv_heads = 0, head_dim = 0, rotary_dim = 0;
  float norm_eps = 0;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
};
void qkv_rope_kv_write(const void* qkv, DType act, const QkvParams& p, const float* cos_sin, const DeviceBatch& b,
                       const DeviceKv& kv, void* q_out, cudaStream_t stream);

// Causal (optionally sliding-window) attention of every new token over its sequence's paged KV, GQA:
// query head h uses kv head h / (num_heads / num_kv_heads). Token t of sequence s at position p attends to
// positions j with max(0, p - window + 1) <= j <= p (window 0: 0 <= j <= p).
// q [T, H * D] act, out [T, H * D] act; softmax in f32 with scores q.k * scale.
struct AttentionParams {
  int32_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  float scale = 0;
  int32_t window = 0;
};
// Scratch the attention may use (split-KV partial results and the decode kernel's arrival counters), sized by
// attention_workspace_bytes. Its first attention_workspace_counter_bytes() bytes (the counters) must be zero
// when it is first used: zero the workspace once when it is allocated (cudaMemset). Every call leaves them
// zero again (also a CUDA graph of calls, replayed), so no call needs a memset; the rest needs no init.
size_t attention_workspace_bytes(const AttentionParams& p, int32_t max_tokens, int32_t max_context_len);
size_t attention_workspace_counter_bytes();
// For tests and measurements: whether the split-KV decode on tensor cores merges its splits in the last CTA
// of each (token, kv head) (the default; KILN_ATTN_COMBINE_FUSION=0 at start turns it off) or in a separate
// combine kernel. Same output bits either way.
void set_attention_combine_fusion(bool on);
void paged_attention(const void* q, DType act, const DeviceKv& kv, const DeviceBatch& b, const AttentionParams& p,
                     void* out, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// qkv_rope_kv_write then paged_attention in one kernel (plus the split combine) for a decode step: the decode
// attention CTAs read their query heads straight from qkv [T, (H + 2 * KVH) * D] and rotate them, and the
// CTA whose split holds the token's own position computes its roped K and its V, writes them to the KV cache
// (query-head group 0 only) and attends to them; no q buffer is written. Same bits as the two ops (K/V
// cache and output). Applies when rope_attention_fusable says so: f16/bf16 activations and KV, every
// sequence adding one token (b.max_num_new == 1), full rotary (rotary_dim == head_dim), no q/k norm, head
// dims 32, 64, 96, 128 (the mma decode kernel's, in whole rotary k-steps), 16-byte aligned qkv, cos_sin,
// pools and out; any other call fails.
bool rope_attention_fusable(const void* qkv, DType act, const QkvParams& qp, const float* cos_sin,
                            const DeviceBatch& b, const DeviceKv& kv, const AttentionParams& p, const void* out);
void rope_kv_write_attention(const void* qkv, DType act, const QkvParams& qp, const float* cos_sin,
                             const DeviceBatch& b, const DeviceKv& kv, const AttentionParams& p, void* out,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace kiln::cuda
