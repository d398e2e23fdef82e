// CPU kernels around attention: q/k/v split + per-head norm + RoPE + paged KV write, and paged attention.
#pragma once

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace kiln::cpu {

void qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& layout, const Tensor& cos_sin,
                       const AttentionBatch& batch, KvLayer& kv, Tensor& q_out, ThreadPool& pool);

void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                     const AttentionParams& params, Tensor& out, ThreadPool& pool);

}  // namespace kiln::cpu
