#include "backend/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "backend/cpu/simd_exp.h"
#include "backend/cpu/vec.h"
#include "core/cpu_features.h"

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

void paged_attention_reference(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
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

// ================================================================ fast paged attention
//
// Work item: (sequence, kv head g, tile of consecutive new tokens, key range).  Its rows are the tile's
// tokens x the `rep` query heads of g (row = token * rep + head).  Keys are visited in chunks of at
// most kChunk keys (aligned to multiples of kChunk in key position, so a chunk may span several small
// KV blocks); per chunk, K is converted once for all rows to f32 transposed [d][kChunk] (V to f32 rows
// [n][d] too, unless it is read in place), then: scores of all rows vectorized over keys (broadcast q
// FMAs, no horizontal sums), the causal/window mask, an online-softmax update, and O += P V with the
// output rows held in registers.
// Items run heaviest first off an atomic counter.  When there are too few items for the threads
// (decode), each item's key range is split in parts; the part that finishes last merges their
// softmax states.

namespace {

constexpr int kChunk = 64;          // keys per chunk (a row's scores fit in 4 AVX-512 registers)
constexpr int kMaxBlockRows = 6;    // rows per register block of the AVX-512 kernels
constexpr int kTargetRows = 48;     // rows per tile: tile tokens = kTargetRows / rep, within [1, kMaxTileTokens]
constexpr int kMaxTileTokens = 32;
constexpr int kItemsPerThread = 8;  // below this many items per thread, key ranges are split
constexpr int kMinSplitKeys = 64;   // fewest keys in a split part
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Kernels {
  // Converts the chunk's K rows (row j at rows[j], `type`) to f32 in the layout `scores` reads.
  void (*load_k)(const VecOps& ops, const char* const* rows, DType type, int n, int d, float* k);
  // For `rows` rows (q: [rows][d], pre-scaled): scores against keys c0 + [0, n) (k), each row masked to
  // its keys [lo, hi]; online-softmax update of (m, l); corr = the factor the row's O must be rescaled by;
  // p [rows][kChunk] = the chunk's probabilities (unnormalized, 0 for masked keys).
  void (*scores)(const VecOps& ops, const float* q, int rows, int d, const float* k, int n, int32_t c0,
                 const int32_t* lo, const int32_t* hi, float* m, float* l, float* corr, float* p);
  // o[r][:] = o[r][:] * corr[r] + sum_j p[r][j] v[j][:]; v rows `vstride` apart, o rows d apart.
  void (*pv)(const VecOps& ops, const float* p, const float* corr, int rows, const float* v, int64_t vstride, int n,
             int d, float* o);
  // The same reading V of any cache type in place (rows `vstride` elements apart), or null.
  void (*pv_raw)(const VecOps& ops, const float* p, const float* corr, int rows, const char* v, DType vtype,
                 int64_t vstride, int n, int d, float* o);
  // dst[i] = alpha * src[i]
  void (*scale_copy)(float alpha, const float* src, float* dst, int64_t n);
  const VecOps* ops;  // for the generic kernels and the driver
};

// ---------------------------------------------------------------- generic kernels
// The reference's arithmetic (dot / axpy per key through VecOps, which has its own ISA dispatch), with
// K and V converted once per chunk for all rows of a tile.  K stays row-major: k[j * d + i].
void load_k_generic(const VecOps& ops, const char* const* rows, DType type, int n, int d, float* k) {
  for (int j = 0; j < n; ++j) ops.to_f32(rows[j], type, k + static_cast<int64_t>(j) * d, d);
}

void scores_generic(const VecOps& ops, const float* q, int rows, int d, const float* k, int n, int32_t c0,
                    const int32_t* lo, const int32_t* hi, float* m, float* l, float* corr, float* p) {
  for (int r = 0; r < rows; ++r) {
    float* pr = p + static_cast<int64_t>(r) * kChunk;
    const float* qr = q + static_cast<int64_t>(r) * d;
    const int a = std::max(lo[r] - c0, 0), b = std::min(hi[r] - c0, n - 1);
    corr[r] = 1.0f;
    std::fill(pr, pr + kChunk, 0.0f);
    if (a > b) continue;  // no visible key in this chunk
    float mx = kNegInf;
    for (int j = a; j <= b; ++j) {
      pr[j] = ops.dot(qr, k + static_cast<int64_t>(j) * d, d);
      mx = std::max(mx, pr[j]);
    }
    const float new_m = std::max(m[r], mx);
    const float c = m[r] == new_m ? 1.0f : std::exp(m[r] - new_m);
    for (int j = a; j <= b; ++j) pr[j] -= new_m;
    ops.exp(pr + a, pr + a, b - a + 1);
    float sum = 0;
    for (int j = a; j <= b; ++j) sum += pr[j];
    l[r] = l[r] * c + sum;
    m[r] = new_m;
    corr[r] = c;
  }
}

void scale_copy_generic(float alpha, const float* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = alpha * src[i];
}

void pv_generic(const VecOps& ops, const float* p, const float* corr, int rows, const float* v, int64_t vstride,
                int n, int d, float* o) {
  for (int r = 0; r < rows; ++r) {
    float* orow = o + static_cast<int64_t>(r) * d;
    if (corr[r] != 1.0f) ops.scale(corr[r], orow, d);
    for (int j = 0; j < n; ++j) {
      const float pj = p[static_cast<int64_t>(r) * kChunk + j];
      if (pj != 0.0f) ops.axpy(pj, v + j * vstride, orow, d);
    }
  }
}

// ---------------------------------------------------------------- AVX-512 kernels
// (GCC 12 false positive on its intrinsics' undefined placeholders: see simd_exp.h.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define KILN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

// 16 elements (lanes outside `m` zero) of a row of type T, as f32.
template <DType T>
KILN_AVX512 inline __m512 load16(const char* src, __mmask16 m) {
  if constexpr (T == DType::kF32) {
    return _mm512_maskz_loadu_ps(m, src);
  } else if constexpr (T == DType::kBF16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src));
  }
}

// In-register transpose of the 16x16 matrix r (r[i] = row i).
KILN_AVX512 inline __attribute__((always_inline)) void transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  // a[2i], a[2i+1]: rows 2i, 2i+1 interleaved by 32-bit elements within each 128-bit lane.
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // b[4g + e]: 128-bit lane L holds element e + 4L of rows 4g .. 4g+3.
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512d a0 = _mm512_castps_pd(a[4 * g]), a1 = _mm512_castps_pd(a[4 * g + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * g + 2]), a3 = _mm512_castps_pd(a[4 * g + 3]);
    b[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  // Output row e + 4L = lane L of b[e], b[4 + e], b[8 + e], b[12 + e].
#pragma GCC unroll 4
  for (int e = 0; e < 4; ++e) {
    const __m512 c_lo = _mm512_shuffle_f32x4(b[e], b[4 + e], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 c_hi = _mm512_shuffle_f32x4(b[e], b[4 + e], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 d_lo = _mm512_shuffle_f32x4(b[8 + e], b[12 + e], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 d_hi = _mm512_shuffle_f32x4(b[8 + e], b[12 + e], _MM_SHUFFLE(3, 1, 3, 1));
    r[e] = _mm512_shuffle_f32x4(c_lo, d_lo, _MM_SHUFFLE(2, 0, 2, 0));
    r[e + 8] = _mm512_shuffle_f32x4(c_lo, d_lo, _MM_SHUFFLE(3, 1, 3, 1));
    r[e + 4] = _mm512_shuffle_f32x4(c_hi, d_hi, _MM_SHUFFLE(2, 0, 2, 0));
    r[e + 12] = _mm512_shuffle_f32x4(c_hi, d_hi, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

template <DType T>
KILN_AVX512 void load_kt_t(const char* const* rows, int n, int d, float* kt) {
  constexpr int kElem = T == DType::kF32 ? 4 : 2;
  for (int k0 = 0; k0 < d; k0 += 16) {
    const int kw = std::min(16, d - k0);
    const __mmask16 km = static_cast<__mmask16>((1u << kw) - 1);
    for (int j0 = 0; j0 < n; j0 += 16) {
      const int jw = std::min(16, n - j0);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = i < jw ? load16<T>(rows[j0 + i] + k0 * kElem, km) : _mm512_setzero_ps();
      transpose16(r);
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        if (i < kw) _mm512_storeu_ps(kt + (k0 + i) * kChunk + j0, r[i]);
    }
  }
}

// K transposed: kt[i * kChunk + j] = element i of key j (zero for n <= j < round_up(n, 16)).
// 16-bit K (d even): transposes 32-bit words, each a pair of elements (2p, 2p + 1) of one key, and only
// then widens them to f32 -- half the shuffles of widening first.
template <DType T>
KILN_AVX512 void load_kt_pairs(const char* const* rows, int n, int d, float* kt) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int k0 = 0; k0 < d; k0 += 32) {
    const int kw = std::min(32, d - k0), pairs = kw / 2;
    const __mmask32 km = static_cast<__mmask32>(kw == 32 ? ~0u : (1u << kw) - 1);
    for (int j0 = 0; j0 < n; j0 += 16) {
      const int jw = std::min(16, n - j0);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = i < jw ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(km, rows[j0 + i] + k0 * 2)) : _mm512_setzero_ps();
      transpose16(r);  // r[p]: words (element 2p, element 2p + 1) of the 16 keys
#pragma GCC unroll 16
      for (int p = 0; p < 16; ++p) {
        if (p >= pairs) break;
        const __m512i w = _mm512_castps_si512(r[p]);
        __m512 even, odd;
        if constexpr (T == DType::kBF16) {
          even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
          odd = _mm512_castsi512_ps(_mm512_and_si512(w, high));
        } else {
          even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w));
          odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16)));
        }
        _mm512_storeu_ps(kt + (k0 + 2 * p) * kChunk + j0, even);
        _mm512_storeu_ps(kt + (k0 + 2 * p + 1) * kChunk + j0, odd);
      }
    }
  }
}

KILN_AVX512 void load_kt_avx512(const VecOps&, const char* const* rows, DType type, int n, int d, float* kt) {
  if (d % 2 != 0 || type == DType::kF32) {
    switch (type) {
      case DType::kF32: return load_kt_t<DType::kF32>(rows, n, d, kt);
      case DType::kBF16: return load_kt_t<DType::kBF16>(rows, n, d, kt);
      default: return load_kt_t<DType::kF16>(rows, n, d, kt);
    }
  }
  if (type == DType::kBF16) load_kt_pairs<DType::kBF16>(rows, n, d, kt);
  else load_kt_pairs<DType::kF16>(rows, n, d, kt);
}

KILN_AVX512 inline float exp1(float x) { return _mm512_cvtss_f32(simd::exp_ps(_mm512_set1_ps(x))); }

// R rows x NV * 16 keys (NV = ceil(n / 16)).
template <int R, int NV>
KILN_AVX512 void scores_block(const float* q, int d, const float* kt, int n, int32_t c0, const int32_t* lo,
                              const int32_t* hi, float* m, float* l, float* corr, float* p) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int k = 0; k < d; ++k) {
    __m512 kk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) kk[v] = _mm512_loadu_ps(kt + k * kChunk + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(q[r * d + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(b, kk[v], acc[r][v]);
    }
  }
  constexpr uint64_t kAll = NV == 4 ? ~0ull : (1ull << (16 * NV)) - 1;
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* pr = p + r * kChunk;
    const int a = std::max(lo[r] - c0, 0), b = std::min(hi[r] - c0, n - 1);
    const uint64_t valid = a > b ? 0 : (~0ull << a) & (~0ull >> (63 - b));
    if (valid != kAll) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_mask_blend_ps(static_cast<__mmask16>(valid >> (16 * v)), neg_inf, acc[r][v]);
    }
    __m512 mx = acc[r][0];
#pragma GCC unroll 4
    for (int v = 1; v < NV; ++v) mx = _mm512_max_ps(mx, acc[r][v]);
    const float new_m = std::max(m[r], _mm512_reduce_max_ps(mx));
    if (new_m == kNegInf) {  // no visible key yet
      corr[r] = 1.0f;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(pr + 16 * v, _mm512_setzero_ps());
      continue;
    }
    const float c = m[r] == new_m ? 1.0f : exp1(m[r] - new_m);
    const __m512 vm = _mm512_set1_ps(new_m);
    __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 e = simd::exp_ps(_mm512_sub_ps(acc[r][v], vm));
      sum = _mm512_add_ps(sum, e);
      _mm512_storeu_ps(pr + 16 * v, e);
    }
    l[r] = l[r] * c + _mm512_reduce_add_ps(sum);
    m[r] = new_m;
    corr[r] = c;
  }
}

// 16 elements of a row of type T, as f32.
template <DType T>
KILN_AVX512 inline __m512 load16_full(const char* src) {
  if constexpr (T == DType::kF32) {
    return _mm512_loadu_ps(src);
  } else if constexpr (T == DType::kBF16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  }
}

// R rows x NV * 16 output columns (the last vector masked by `last`); o and v point at the first column;
// V rows of type VT, `vstride` elements apart.
template <int R, int NV, DType VT>
KILN_AVX512 void pv_block(const float* p, const float* corr, const char* v, int64_t vstride, int n, float* o, int d,
                          __mmask16 last) {
  constexpr int kElem = VT == DType::kF32 ? 4 : 2;
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 c = _mm512_set1_ps(corr[r]);
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) {
      const float* src = o + r * d + 16 * x;
      acc[r][x] = _mm512_mul_ps(x + 1 < NV ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(last, src), c);
    }
  }
  for (int j = 0; j < n; ++j) {
    __m512 vv[NV];
    const char* vj = v + j * vstride * kElem;
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x)
      vv[x] = x + 1 < NV ? load16_full<VT>(vj + 16 * x * kElem) : load16<VT>(vj + 16 * x * kElem, last);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * kChunk + j]);
#pragma GCC unroll 4
      for (int x = 0; x < NV; ++x) acc[r][x] = _mm512_fmadd_ps(b, vv[x], acc[r][x]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int x = 0; x < NV; ++x) {
      float* dst = o + r * d + 16 * x;
      if (x + 1 < NV) _mm512_storeu_ps(dst, acc[r][x]);
      else _mm512_mask_storeu_ps(dst, last, acc[r][x]);
    }
}

using ScoresBlockFn = void (*)(const float*, int, const float*, int, int32_t, const int32_t*, const int32_t*, float*,
                               float*, float*, float*);
using PvBlockFn = void (*)(const float*, const float*, const char*, int64_t, int, float*, int, __mmask16);

template <int R>
constexpr std::array<ScoresBlockFn, 4> scores_row() {
  return {&scores_block<R, 1>, &scores_block<R, 2>, &scores_block<R, 3>, &scores_block<R, 4>};
}
template <DType VT, int R>
constexpr std::array<PvBlockFn, 4> pv_row() {
  return {&pv_block<R, 1, VT>, &pv_block<R, 2, VT>, &pv_block<R, 3, VT>, &pv_block<R, 4, VT>};
}
template <DType VT>
constexpr std::array<std::array<PvBlockFn, 4>, 6> pv_table() {
  return {pv_row<VT, 1>(), pv_row<VT, 2>(), pv_row<VT, 3>(), pv_row<VT, 4>(), pv_row<VT, 5>(), pv_row<VT, 6>()};
}
static_assert(kMaxBlockRows == 6);
constexpr std::array<std::array<ScoresBlockFn, 4>, kMaxBlockRows> kScoresBlocks{
    scores_row<1>(), scores_row<2>(), scores_row<3>(), scores_row<4>(), scores_row<5>(), scores_row<6>()};
// [V type: f32, bf16, f16][rows - 1][vectors - 1]
constexpr std::array<std::array<std::array<PvBlockFn, 4>, kMaxBlockRows>, 3> kPvBlocks{
    pv_table<DType::kF32>(), pv_table<DType::kBF16>(), pv_table<DType::kF16>()};

void scores_avx512(const VecOps&, const float* q, int rows, int d, const float* kt, int n, int32_t c0,
                   const int32_t* lo, const int32_t* hi, float* m, float* l, float* corr, float* p) {
  const int nv = (n + 15) / 16;
  for (int r0 = 0; r0 < rows; r0 += kMaxBlockRows) {
    const int R = std::min(kMaxBlockRows, rows - r0);
    kScoresBlocks[R - 1][nv - 1](q + static_cast<int64_t>(r0) * d, d, kt, n, c0, lo + r0, hi + r0, m + r0, l + r0,
                                 corr + r0, p + static_cast<int64_t>(r0) * kChunk);
  }
}

void pv_raw_avx512(const VecOps&, const float* p, const float* corr, int rows, const char* v, DType vtype,
                   int64_t vstride, int n, int d, float* o) {
  const int t = vtype == DType::kF32 ? 0 : vtype == DType::kBF16 ? 1 : 2;
  const int64_t elem = static_cast<int64_t>(dtype_size(vtype));
  for (int c = 0; c < d; c += 64) {
    const int w = std::min(64, d - c), nv = (w + 15) / 16;
    const __mmask16 last = static_cast<__mmask16>((1u << (w - 16 * (nv - 1))) - 1);
    for (int r0 = 0; r0 < rows; r0 += kMaxBlockRows) {
      const int R = std::min(kMaxBlockRows, rows - r0);
      kPvBlocks[t][R - 1][nv - 1](p + static_cast<int64_t>(r0) * kChunk, corr + r0, v + c * elem, vstride, n,
                                  o + static_cast<int64_t>(r0) * d + c, d, last);
    }
  }
}

KILN_AVX512 void scale_copy_avx512(float alpha, const float* src, float* dst, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_mul_ps(a, _mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, src + i)));
  }
}

void pv_avx512(const VecOps& ops, const float* p, const float* corr, int rows, const float* v, int64_t vstride, int n,
               int d, float* o) {
  pv_raw_avx512(ops, p, corr, rows, reinterpret_cast<const char*>(v), DType::kF32, vstride, n, d, o);
}

const Kernels kAvx512Kernels{load_kt_avx512,    scores_avx512,     pv_avx512,
                             pv_raw_avx512,     scale_copy_avx512, &vec_ops_for("avx512")};
#pragma GCC diagnostic pop

// The kernels for `isa` (nullptr: the best this CPU has); unsupported ones fall back to the next best.
const Kernels& kernels_for(const char* isa) {
  static const Kernels generic{load_k_generic, scores_generic,     pv_generic,
                               nullptr,        scale_copy_generic, &vec_ops_for("scalar")};
  static const Kernels avx2{load_k_generic, scores_generic,     pv_generic,
                            nullptr,        scale_copy_generic, &vec_ops_for("avx2")};
  const CpuFeatures& f = cpu_features();
  const bool has_avx512 = f.avx512f && f.avx512bw && f.avx512vl, has_avx2 = f.avx2 && f.fma && f.f16c;
  const bool want_avx512 = isa == nullptr || std::strcmp(isa, "avx512") == 0;
  if (has_avx512 && want_avx512) return kAvx512Kernels;
  if (has_avx2 && (want_avx512 || std::strcmp(isa, "avx2") == 0)) return avx2;
  return generic;
}

// ---------------------------------------------------------------- driver
struct Item {
  int32_t seq, g, tok0, ntok;
  int32_t key0, key1;  // keys [key0, key1) (a part of the tile's range when split)
  int32_t slot;        // -1: writes `out`; else its partial-result slot
  int64_t cost;
  int32_t group;       // split items: index in `groups`
};

struct SplitGroup {
  int32_t seq, g, tok0, ntok, slot0, nparts;
};

struct Scratch {
  std::vector<float> kt, v, q, p, o, m, l, corr;
  std::vector<int32_t> lo, hi;
  std::vector<const char*> krows, vrows;
  void reserve(int rows, int d) {
    auto grow = [](auto& vec, size_t n) {
      if (vec.size() < n) vec.resize(n);
    };
    grow(kt, static_cast<size_t>(d) * kChunk);
    grow(v, static_cast<size_t>(kChunk) * d);
    grow(q, static_cast<size_t>(rows) * d);
    grow(p, static_cast<size_t>(rows) * kChunk);
    grow(o, static_cast<size_t>(rows) * d);
    for (auto* x : {&m, &l, &corr}) grow(*x, rows);
    grow(lo, rows);
    grow(hi, rows);
    grow(krows, kChunk);
    grow(vrows, kChunk);
  }
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

void paged_attention_fast(const Kernels& K, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                          const AttentionParams& P, Tensor& out, ThreadPool& pool) {
  const int d = P.head_dim, H = P.num_heads, KVH = P.num_kv_heads, rep = H / KVH;
  const int32_t bs = static_cast<int32_t>(kv.k.dim(2));
  const int32_t W = P.window;
  const int tile = std::clamp(kTargetRows / rep, 1, kMaxTileTokens);
  const int max_rows = tile * rep;
  const int threads = pool.num_threads();
  const DType kt_type = kv.k.dtype, vt_type = kv.v.dtype;
  const VecOps& ops = *K.ops;
  const char* kbase = kv.k.as<char>();
  const char* vbase = kv.v.as<char>();
  const int64_t k_row_bytes = static_cast<int64_t>(d) * dtype_size(kt_type);
  const int64_t v_row_bytes = static_cast<int64_t>(d) * dtype_size(vt_type);

  auto cost = [&](int32_t ntok, int32_t key0, int32_t key1) {
    return static_cast<int64_t>(key1 - key0) * (ntok * rep + 4);  // rows x keys, plus the conversions
  };
  std::vector<Item> items;
  for (int si = 0; si < static_cast<int>(batch.seqs.size()); ++si) {
    const SequenceView& s = batch.seqs[si];
    for (int g = 0; g < KVH; ++g)
      for (int32_t t0 = 0; t0 < s.num_new; t0 += tile) {
        const int32_t ntok = std::min<int32_t>(tile, s.num_new - t0);
        const int32_t pos0 = s.context_len - s.num_new + t0;
        const int32_t key0 = W > 0 ? std::max(0, pos0 - W + 1) : 0, key1 = pos0 + ntok;
        items.push_back({si, g, t0, ntok, key0, key1, -1, cost(ntok, key0, key1), -1});
      }
  }
  if (items.empty()) return;

  // Too few items to keep every thread busy: split key ranges.
  std::vector<SplitGroup> groups;
  int32_t nslots = 0;
  if (threads > 1 && items.size() < static_cast<size_t>(kItemsPerThread) * threads) {
    const int want = static_cast<int>((kItemsPerThread * threads + items.size() - 1) / items.size());
    std::vector<Item> split;
    for (const Item& it : items) {
      // Parts of whole chunks (the chunk grid is aligned to kChunk key positions).
      const int32_t first_chunk = it.key0 / kChunk, chunks = (it.key1 - 1) / kChunk + 1 - first_chunk;
      const int parts = std::min({want, chunks, std::max(1, (it.key1 - it.key0) / kMinSplitKeys)});
      if (parts <= 1) {
        split.push_back(it);
        continue;
      }
      groups.push_back({it.seq, it.g, it.tok0, it.ntok, nslots, parts});
      int32_t b = it.key0;
      for (int i = 0; i < parts; ++i) {
        const int32_t e = i + 1 < parts ? (first_chunk + chunks * (i + 1) / parts) * kChunk : it.key1;
        split.push_back({it.seq, it.g, it.tok0, it.ntok, b, e, nslots++, cost(it.ntok, b, e),
                         static_cast<int32_t>(groups.size() - 1)});
        b = e;
      }
    }
    items.swap(split);
  }
  std::vector<int32_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return items[a].cost > items[b].cost; });

  // Partial slot: o [max_rows][d], m [max_rows], l [max_rows].
  const size_t slot_floats = static_cast<size_t>(max_rows) * (d + 2);
  std::vector<float> partial(static_cast<size_t>(nslots) * slot_floats);

  // Merges the parts of a split item: O = sum_p e^(m_p - M) O_p / sum_p e^(m_p - M) l_p.
  std::unique_ptr<std::atomic<int>[]> parts_left(new std::atomic<int>[groups.size()]);
  for (size_t gi = 0; gi < groups.size(); ++gi) parts_left[gi].store(groups[gi].nparts, std::memory_order_relaxed);
  auto merge = [&](const SplitGroup& G) {
    const SequenceView& s = batch.seqs[G.seq];
    for (int i = 0; i < G.ntok; ++i) {
      const int64_t t = s.first_token + G.tok0 + i;
      for (int h = 0; h < rep; ++h) {
        const int row = i * rep + h;
        auto slot = [&](int pi) { return partial.data() + (G.slot0 + pi) * slot_floats; };
        float M = kNegInf;
        for (int pi = 0; pi < G.nparts; ++pi) M = std::max(M, slot(pi)[static_cast<size_t>(max_rows) * d + row]);
        float* dst = out.as<float>() + (t * H + static_cast<int64_t>(G.g) * rep + h) * d;
        std::fill_n(dst, d, 0.0f);
        float L = 0;
        for (int pi = 0; pi < G.nparts; ++pi) {
          const float mp = slot(pi)[static_cast<size_t>(max_rows) * d + row];
          if (mp == kNegInf) continue;  // no visible key in this part
          const float w = std::exp(mp - M);
          L += w * slot(pi)[static_cast<size_t>(max_rows) * (d + 1) + row];
          ops.axpy(w, slot(pi) + static_cast<int64_t>(row) * d, dst, d);
        }
        ops.scale(L > 0 ? 1.0f / L : 0.0f, dst, d);
      }
    }
  };

  auto process = [&](const Item& it, Scratch& S) {
    const SequenceView& s = batch.seqs[it.seq];
    const int rows = it.ntok * rep;
    const int32_t pos0 = s.context_len - s.num_new + it.tok0;
    for (int i = 0; i < it.ntok; ++i) {
      const int64_t t = s.first_token + it.tok0 + i;
      const int32_t pos = pos0 + i;
      const int32_t lo = W > 0 ? std::max(0, pos - W + 1) : 0;
      const float* src = q.as<float>() + (t * H + static_cast<int64_t>(it.g) * rep) * d;  // rep rows
      float* dst = S.q.data() + static_cast<int64_t>(i) * rep * d;
      K.scale_copy(P.scale, src, dst, static_cast<int64_t>(rep) * d);
      std::fill_n(S.lo.begin() + i * rep, rep, lo);
      std::fill_n(S.hi.begin() + i * rep, rep, pos);
    }
    std::fill_n(S.m.begin(), rows, kNegInf);
    std::fill_n(S.l.begin(), rows, 0.0f);
    std::fill_n(S.o.begin(), static_cast<size_t>(rows) * d, 0.0f);
    for (int32_t c0 = it.key0, c1; c0 < it.key1; c0 = c1) {
      c1 = std::min(it.key1, (c0 / kChunk + 1) * kChunk);
      // Tokens that see a key of [c0, c1): pos >= c0 and lo <= c1 - 1.
      const int32_t ta = std::max(0, c0 - pos0);
      const int32_t tb = W > 0 ? std::min(it.ntok, c1 + W - 1 - pos0) : it.ntok;
      if (ta >= tb) continue;
      const int n = c1 - c0;
      for (int j0 = 0, j1; j0 < n; j0 = j1) {  // runs of rows within one block
        const int32_t blk = (c0 + j0) / bs, off = (c0 + j0) - blk * bs;
        j1 = std::min(n, j0 + bs - off);
        const int64_t first = (static_cast<int64_t>(s.block_table[blk]) * KVH + it.g) * bs + off;  // pool row
        for (int j = j0; j < j1; ++j) {
          S.krows[j] = kbase + (first + j - j0) * k_row_bytes;
          S.vrows[j] = vbase + (first + j - j0) * v_row_bytes;
        }
      }
      K.load_k(ops, S.krows.data(), kt_type, n, d, S.kt.data());
      const int r0 = ta * rep, nr = (tb - ta) * rep;
      float* const p = S.p.data() + static_cast<int64_t>(r0) * kChunk;
      float* const o = S.o.data() + static_cast<int64_t>(r0) * d;
      K.scores(ops, S.q.data() + static_cast<int64_t>(r0) * d, nr, d, S.kt.data(), n, c0, S.lo.data() + r0,
               S.hi.data() + r0, S.m.data() + r0, S.l.data() + r0, S.corr.data() + r0, p);
      // V: in place when its rows are contiguous (one block) and either f32 or read by one register
      // block of rows only; else converted to f32 once for all rows.
      const bool one_block = c0 / bs == (c1 - 1) / bs;
      if (one_block && vt_type == DType::kF32) {
        K.pv(ops, p, S.corr.data() + r0, nr, reinterpret_cast<const float*>(S.vrows[0]), d, n, d, o);
      } else if (one_block && K.pv_raw && nr <= kMaxBlockRows) {
        K.pv_raw(ops, p, S.corr.data() + r0, nr, S.vrows[0], vt_type, d, n, d, o);
      } else {
        for (int j0 = 0, j1; j0 < n; j0 = j1) {  // runs of rows within one block
          j1 = std::min(n, (c0 + j0) / bs * bs + bs - c0);
          ops.to_f32(S.vrows[j0], vt_type, S.v.data() + static_cast<int64_t>(j0) * d, static_cast<int64_t>(j1 - j0) * d);
        }
        K.pv(ops, p, S.corr.data() + r0, nr, S.v.data(), d, n, d, o);
      }
    }
    if (it.slot < 0) {
      for (int i = 0; i < it.ntok; ++i) {
        const int64_t t = s.first_token + it.tok0 + i;
        for (int h = 0; h < rep; ++h) {
          const int row = i * rep + h;
          float* dst = out.as<float>() + (t * H + static_cast<int64_t>(it.g) * rep + h) * d;
          K.scale_copy(1.0f / S.l[row], S.o.data() + static_cast<int64_t>(row) * d, dst, d);
        }
      }
    } else {
      float* slot = partial.data() + it.slot * slot_floats;
      std::copy_n(S.o.begin(), static_cast<size_t>(rows) * d, slot);
      std::copy_n(S.m.begin(), rows, slot + static_cast<size_t>(max_rows) * d);
      std::copy_n(S.l.begin(), rows, slot + static_cast<size_t>(max_rows) * (d + 1));
      // The last part to finish merges (acq_rel: it sees the other parts' slots).
      if (parts_left[it.group].fetch_sub(1, std::memory_order_acq_rel) == 1) merge(groups[it.group]);
    }
  };

  const int64_t n_items = static_cast<int64_t>(items.size());
  std::atomic<int64_t> next{0};
  auto worker = [&](int, int) {
    Scratch& S = thread_scratch();
    S.reserve(max_rows, d);
    for (int64_t w; (w = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) process(items[order[w]], S);
  };
  if (threads == 1 || n_items == 1) worker(0, 1);
  else pool.run(worker);
}

}  // namespace

void paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch, const AttentionParams& params,
                     Tensor& out, ThreadPool& pool) {
  static const Kernels& kernels = kernels_for(nullptr);
  paged_attention_fast(kernels, q, kv, batch, params, out, pool);
}

void paged_attention_for_isa(const char* isa, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                             const AttentionParams& params, Tensor& out, ThreadPool& pool) {
  paged_attention_fast(kernels_for(isa), q, kv, batch, params, out, pool);
}

}  // namespace kiln::cpu
