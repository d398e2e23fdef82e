#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/vec.h"

namespace kiln::cpu {

namespace {

// In place: optional RMSNorm of one head, then rotate-half RoPE of its first rotary_dim dims.
void norm_and_rope(float* x, const QkvLayout& L, const float* norm_w, const float* cos, const float* sin) {
  const int d = L.head_dim;
  if (norm_w) {
    const auto& ops = vec_ops();
    float inv = 1.0f / std::sqrt(ops.sum_squares(x, d) / static_cast<float>(d) + L.norm_eps);
    for (int i = 0; i < d; ++i) x[i] = (x[i] * inv) * norm_w[i];
  }
  const int half = L.rotary_dim / 2;
  for (int i = 0; i < half; ++i) {
    float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cos[i] - x2 * sin[i];
    x[i + half] = x2 * cos[i] + x1 * sin[i];
  }
}

// Address of token `pos`'s row for kv head `g` in a pool [blocks, kv_heads, block_size, head_dim].
inline char* kv_row(const Tensor& pool, std::span<const int32_t> table, int32_t pos, int g) {
  const int64_t heads = pool.dim(1), bs = pool.dim(2), d = pool.dim(3);
  const int64_t block = table[pos / bs];
  const int64_t index = ((block * heads + g) * bs + pos % bs) * d;
  return pool.as<char>() + index * static_cast<int64_t>(dtype_size(pool.dtype));
}

}  // namespace

void qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& L, const Tensor& cos_sin,
                       const AttentionBatch& batch, KvLayer& kv, Tensor& q_out, ThreadPool& pool) {
  const int d = L.head_dim, H = L.num_heads, KVH = L.num_kv_heads;
  const int64_t row = static_cast<int64_t>(H + 2 * KVH) * d;
  const int half = L.rotary_dim / 2;
  const float* qn = L.q_norm ? L.q_norm->as<float>() : nullptr;
  const float* kn = L.k_norm ? L.k_norm->as<float>() : nullptr;
  const auto& ops = vec_ops();
  for (const SequenceView& s : batch.seqs) {
    pool.parallel_for(s.num_new, [&](int64_t b, int64_t e) {
      std::vector<float> tmp(d);
      for (int64_t i = b; i < e; ++i) {
        const int64_t t = s.first_token + i;
        const int32_t pos = s.context_len - s.num_new + static_cast<int32_t>(i);
        const float* src = qkv.as<float>() + t * row;
        const float* cs = cos_sin.as<float>() + t * L.rotary_dim;
        float* q = q_out.as<float>() + t * H * d;
        std::copy(src, src + static_cast<int64_t>(H) * d, q);
        for (int h = 0; h < H; ++h) norm_and_rope(q + h * d, L, qn, cs, cs + half);
        for (int g = 0; g < KVH; ++g) {
          std::copy(src + (H + g) * d, src + (H + g + 1) * d, tmp.begin());
          norm_and_rope(tmp.data(), L, kn, cs, cs + half);
          ops.from_f32(tmp.data(), kv_row(kv.k, s.block_table, pos, g), kv.k.dtype, d);
          ops.from_f32(src + (H + KVH + g) * d, kv_row(kv.v, s.block_table, pos, g), kv.v.dtype, d);
        }
      }
    });
  }
}

void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                     const AttentionParams& P, Tensor& out, ThreadPool& pool) {
  const int d = P.head_dim, H = P.num_heads, KVH = P.num_kv_heads, rep = H / KVH;
  const int32_t bs = static_cast<int32_t>(kv.k.dim(2));
  const bool f32_cache = kv.k.dtype == DType::kF32;
  const auto& ops = vec_ops();
  // Work items: (sequence, new token, kv head); each handles the kv head's `rep` query heads together
  // so K and V rows are read once per group.
  struct Item {
    int seq;
    int32_t token;
  };
  std::vector<Item> items;
  items.reserve(batch.num_tokens);
  for (int s = 0; s < static_cast<int>(batch.seqs.size()); ++s)
    for (int32_t i = 0; i < batch.seqs[s].num_new; ++i) items.push_back({s, i});
  const int64_t n_items = static_cast<int64_t>(items.size()) * KVH;

  pool.parallel_for(n_items, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(rep) * bs), kbuf(static_cast<size_t>(bs) * d),
        vbuf(static_cast<size_t>(bs) * d), acc(static_cast<size_t>(rep) * d), mx(rep), den(rep);
    for (int64_t w = begin; w < end; ++w) {
      const Item& it = items[w / KVH];
      const int g = static_cast<int>(w % KVH);
      const SequenceView& s = batch.seqs[it.seq];
      const int32_t pos = s.context_len - s.num_new + it.token;
      const int64_t t = s.first_token + it.token;
      const int32_t lo = P.window > 0 ? std::max(0, pos - P.window + 1) : 0;
      const float* qg = q.as<float>() + (t * H + static_cast<int64_t>(g) * rep) * d;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(mx.begin(), mx.end(), -std::numeric_limits<float>::infinity());
      std::fill(den.begin(), den.end(), 0.0f);
      for (int32_t blk_start = lo / bs * bs; blk_start <= pos; blk_start += bs) {
        const int32_t j0 = std::max(lo, blk_start), j1 = std::min(pos + 1, blk_start + bs);
        const int32_t n = j1 - j0;
        // Rows j0..j1 of this block are contiguous for head g.
        const float* K = nullptr;
        const float* V = nullptr;
        if (f32_cache) {
          K = reinterpret_cast<const float*>(kv_row(kv.k, s.block_table, j0, g));
          V = reinterpret_cast<const float*>(kv_row(kv.v, s.block_table, j0, g));
        } else {
          ops.to_f32(kv_row(kv.k, s.block_table, j0, g), kv.k.dtype, kbuf.data(), static_cast<int64_t>(n) * d);
          ops.to_f32(kv_row(kv.v, s.block_table, j0, g), kv.v.dtype, vbuf.data(), static_cast<int64_t>(n) * d);
          K = kbuf.data();
          V = vbuf.data();
        }
        for (int r = 0; r < rep; ++r) {
          float* sc = scores.data() + static_cast<size_t>(r) * bs;
          float block_max = -std::numeric_limits<float>::infinity();
          for (int32_t j = 0; j < n; ++j) {
            sc[j] = ops.dot(qg + r * d, K + static_cast<int64_t>(j) * d, d) * P.scale;
            block_max = std::max(block_max, sc[j]);
          }
          // Online softmax: rescale what was accumulated if the running max grew.
          float new_max = std::max(mx[r], block_max);
          float correction = std::exp(mx[r] - new_max);
          if (correction != 1.0f) {
            ops.scale(correction, acc.data() + static_cast<size_t>(r) * d, d);
            den[r] *= correction;
          }
          mx[r] = new_max;
          for (int32_t j = 0; j < n; ++j) {
            float p = std::exp(sc[j] - new_max);
            den[r] += p;
            ops.axpy(p, V + static_cast<int64_t>(j) * d, acc.data() + static_cast<size_t>(r) * d, d);
          }
        }
      }
      float* o = out.as<float>() + (t * H + static_cast<int64_t>(g) * rep) * d;
      for (int r = 0; r < rep; ++r)
        for (int i = 0; i < d; ++i) o[r * d + i] = acc[static_cast<size_t>(r) * d + i] / den[r];
    }
  });
}

}  // namespace kiln::cpu
