// CPU kernels around attention: q/k/v split + per-head norm + RoPE + paged KV write, and paged attention.
#pragma once

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace kiln::cpu {

void qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                       const AttentionBatch& batch, KvLayer& kv, Tensor& q_out, ThreadPool& pool);

// Causal (optionally sliding-window) attention of each new token over its sequence's paged KV, GQA.
// Tiles of new tokens x the query heads of one kv head, vectorized over keys; AVX-512 kernels where the
// CPU has them, else generic kernels over the VecOps primitives.
void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                     const AttentionParams& params, Tensor& out, ThreadPool& pool);

// The same with the kernels of `isa`: "avx512", "avx2" (the generic kernels over AVX2 vector ops) or
// anything else for the generic kernels over scalar ones; one the CPU lacks falls back to the next.
// For tests and benchmarks.
void paged_attention_for_isa(const char* isa, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                             const AttentionParams& params, Tensor& out, ThreadPool& pool);

// The straightforward per-token implementation (one token x one kv head at a time, dot/axpy per key),
// kept as the reference for tests.
void paged_attention_reference(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                               const AttentionParams& params, Tensor& out, ThreadPool& pool);

}  // namespace kiln::cpu
