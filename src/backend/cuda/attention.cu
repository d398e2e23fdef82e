// Paged attention on CUDA (see kernels.h for the contract). Kernels chosen per launch on the host:
//
//  * decode_mma_kernel (flash-decoding on tensor cores, split-KV; f16/bf16, head dims 16..128): one CTA of 4
//    warps per (token, kv head [, group of 16 of its query heads], split of the key range). The query heads
//    of the kv head are the 16 rows of mma.sync m16n8k16 tiles, so every K/V row is read once for all of
//    them (GQA). Each warp streams its own 16-key tiles (tiles w, w + 4, ... of the CTA's range) through a
//    private 3- or 4-stage cp.async ring in shared memory (16-byte copies, coalesced over a KV block's
//    rows, keys outside the range zero-filled and masked), with no CTA barrier in the loop; Q.K^T and P.V on
//    tensor cores, online softmax in f32 (log2 units, one ex2 per score). The warps merge through shared
//    memory at the end. The split count comes from a cost model of the busiest SM (decode_splits): splits
//    only when the batch gives fewer than 2 CTAs per SM, chosen from (tokens x kv heads) against the SM
//    count and the context length. Measured on an H100 (graph-captured, f16): 64 seqs x 2048 ctx, H=32
//    KVH=8 D=128: 196 us (2.73 TB/s of K+V; the CUDA-core kernel before it: 263 us); 1 seq x 32K ctx:
//    55.5 us (79.7); Phi-3-mini shape (H=KVH=32, D=96) at 1 x 1024 ctx: 8.1 us (12.3). Merging the splits
//    in a thread-block cluster through distributed shared memory instead of combine_kernel measured slower
//    (10.4 us and 67 us for the last two).
//
//  * decode_kernel (flash-decoding on CUDA cores, split-KV): f32 (the correctness mode: simple and exact,
//    not fast for long prompts) and head dim 256. One CTA per (token, kv head [, group of its query heads],
//    split of the key range). The CTA holds the q of up to 8 query heads of one kv head in registers, so
//    every K/V row it reads (16-byte loads straight from the paged pools) serves all of them. Rows are
//    spread over "slots" (groups of lanes, one row each), each with its own online softmax in f32; slots
//    are merged at the end (shuffles, then shared memory).
//
//  With several splits each decode CTA writes a partial (normalized output, log-sum-exp) to the workspace.
//  decode_mma_kernel merges them itself: each CTA counts its arrival on a counter of its (token, kv head,
//  head group) in the workspace, and the last to arrive merges the splits' partials (combine_row, the
//  arithmetic of combine_kernel) and sets the counter back to 0, so that the next launch (or graph replay)
//  starts clean: the counters must be zero when the workspace is allocated. decode_kernel's partials, and
//  decode_mma_kernel's with KILN_ATTN_COMBINE_FUSION=0, are merged by combine_kernel (one warp per output
//  row). Both decode kernels are used for every batch
//  whose sequences add at most kDecodeMaxNew tokens, and for all f32 batches. The decode and combine
//  kernels are programmatic dependent launches (pdl.cuh): each waits for its predecessor before touching
//  anything, then lets its successor launch.
//
//  * prefill_kernel (flash-attention-2 style, f16/bf16 only): one CTA per (query head, sequence, tile of BM
//    new tokens), BM = 128 (8 warps of 16 rows; 64 for head dim 256); 64-key K/V tiles gathered from the
//    pools into shared memory with cp.async in a 2- or 3-stage ring (one barrier per tile); Q.K^T and P.V on
//    tensor cores (mma.sync m16n8k16, f32 accumulation), online softmax in f32 registers with one FMA and
//    one ex2 per score. Per head dim (launch_prefill_d, measured): the Q fragments in registers for the
//    whole CTA or re-read from shared memory, 1 or 2 CTAs per SM, and optionally software-pipelined (the
//    next tile's Q.K^T issued beside this tile's softmax). The heavy (late) query tiles are scheduled first;
//    a warp skips the key tiles none of its rows sees and masks only those crossing its rows' boundaries.
//    Used for the sequences that add more than kDecodeMaxNew tokens where the Hopper kernel
//    (attention_prefill_sm90.cu: wgmma, a producer warpgroup, GQA heads sharing each K/V tile; 1.35x at
//    Llama-3-8B's shape) declines: other devices, head dims but 64/96/128, block sizes not powers of two.
//    A mixed batch (prompts and decode steps) runs both kernels when the DeviceBatch lists which sequences
//    are which: a decode token in a prefill tile would cost as much as a tile of prompt tokens (measured:
//    Llama-3-8B shape, 2048-token prompts beside 256 decoding sequences); without the lists, the prefill
//    kernel takes every sequence.
//
// Scores are kept in log2 units (scale * log2(e) folded in) so that softmax uses exp2.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include "backend/cuda/attention_prefill_sm90.h"
#include "backend/cuda/float_types.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/pdl.cuh"
#include "core/status.h"

namespace kiln::cuda {

namespace {

// ---------------------------------------------------------------- tuning constants

constexpr int kThreads = 128;       // every kernel here: 4 warps
constexpr int kDecodeMaxNew = kAttentionDecodeMaxNew;  // more new tokens (f16/bf16): the prefill kernel
constexpr int kMaxGroup = 8;        // query heads per decode CTA (registers: 8 x 8 floats of q and of acc)
constexpr int kMinChunk = 64;       // fewest keys a decode split handles
constexpr int kMaxSplits = 128;     // most splits of one token's key range
constexpr int kSplitAlign = 16;     // split boundaries at multiples of this many keys (the mma kernel's tile)
// The split heuristic's costs, in keys per SM (see decode_splits).
constexpr int kCtaCostKeys = 64;       // fixed cost of a decode CTA (first loads' latency, merge, writes)
constexpr int kCombineCostKeys = 128;  // the combine kernel
constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------- small helpers

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  KILN_CHECK(e == cudaSuccess, std::string(kernel) + ": launch failed: " + cudaGetErrorString(e));
}

bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int pow2_ceil(int x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}


// W consecutive elements moved together (16 bytes: one 128-bit access; W = 1: scalar).
template <typename T, int W>
struct alignas(sizeof(T) * W < 16 ? sizeof(T) * W : 16) Pack {
  T v[W];
};
template <typename T, int W>
__device__ __forceinline__ Pack<T, W> zero_pack() {
  Pack<T, W> p;
#pragma unroll
  for (int e = 0; e < W; ++e) p.v[e] = from_f32<T>(0.0f);
  return p;
}

// Scale factor exp2(m - m_new) of a running (max, sum, acc) when the max becomes m_new; an empty state
// (m = -inf) scales to 0, and so does everything when m_new is -inf too (no NaN from -inf - -inf).
__device__ __forceinline__ float rescale(float m, float m_new) {
  return exp2f(m - (m_new == -INFINITY ? 0.0f : m_new));
}

// ---------------------------------------------------------------- decode (split-KV) kernel

// A row of DMAX elements is read as chunks of VEC elements (16 bytes, or scalars for odd f32 head dims);
// kLanes lanes (a "slot") share a row, each holding kCpl chunks; a warp works on 32 / kLanes rows at once.
template <int DMAX, int VEC>
struct DecodeShape {
  static constexpr int kChunks = DMAX / VEC;
  static constexpr int kLanes = kChunks >= 32 ? 32 : pow2_ceil(kChunks);
  static constexpr int kCpl = (kChunks + kLanes - 1) / kLanes;
  static constexpr int kSlotsPerWarp = 32 / kLanes;
  static constexpr int kSlots = kSlotsPerWarp * (kThreads / 32);
};

struct DecodeArgs {
  const void* q;      // [T, H * d] act
  const void* k;      // [num_blocks, KVH, block_size, d]
  const void* v;
  void* out;          // [T, H * d] act
  float* ws_lse;      // [T, H, num_splits] log2-sum-exp of each split (splits > 1)
  float* ws_o;        // [T, H, num_splits, d] each split's normalized output (splits > 1)
  // decode_mma_kernel with splits > 1: [T, KVH * hgroups] arrival counters (zero between launches); the
  // last CTA of each merges the splits. Null: combine_kernel merges them.
  int* counters;
  const int32_t* tokens;  // the tokens to attend, grid x = index into this list (null: token = grid x)
  const int32_t* token_seq;
  const int32_t* token_pos;
  const int32_t* block_tables;
  int32_t max_blocks_per_seq, block_size, block_shift;
  int32_t H, KVH, d, rep, hgroups, window, chunk, num_splits;
  float scale_log2;   // scale * log2(e)
  // decode_mma_kernel only: q's row stride in elements (H * d; fused with RoPE, q is the qkv buffer:
  // (H + 2 * KVH) * d), and the fused kernel's cos_sin [T, d] f32.
  int64_t q_stride;
  const float* cos_sin;
};

// grid (T, KVH * hgroups, num_splits), block kThreads. CTA (t, g * hgroups + hg, split): token t, query
// heads g * rep + hg * G + r (r < G, those < rep), keys [lo + split * chunk, +chunk) of t's range [lo, pos].
template <typename T, int DMAX, int VEC, int G>
__global__ void __launch_bounds__(kThreads) decode_kernel(const DecodeArgs a) {
  using S = DecodeShape<DMAX, VEC>;
  constexpr int L = S::kLanes, CPL = S::kCpl, SPW = S::kSlotsPerWarp, NS = S::kSlots;
  constexpr int kWarps = kThreads / 32;
  using P = Pack<T, VEC>;
  __shared__ float sm_acc[kWarps][G][DMAX];  // per-warp merged acc, then merged across warps
  __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];

  // Everything below reads what earlier kernels wrote (q, the KV cache, the batch's tables).
  pdl_wait();
  pdl_launch_dependents();
  const int item = blockIdx.x;  // index in the token list: the workspace's row
  const int t = a.tokens ? a.tokens[item] : item;
  const int g = blockIdx.y / a.hgroups, hg = blockIdx.y % a.hgroups;
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int li = lane % L, sub = lane / L;
  const int d = a.d;

  const int s = a.token_seq[t], pos = a.token_pos[t];
  const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int begin = lo + split * a.chunk;
  const int end = min(pos + 1, begin + a.chunk);  // may be <= begin: an empty split

  // Chunks this lane owns: c = li + k * L, live when inside the row (head dims not a multiple of L * VEC).
  bool cv[CPL];
#pragma unroll
  for (int k = 0; k < CPL; ++k) cv[k] = (li + k * L) * VEC < d;

  // q of the group's heads (f32, pre-scaled); padding heads (hg * G + r >= rep) are zero.
  float qr[G][CPL][VEC];
  const T* qbase = static_cast<const T*>(a.q) + (static_cast<int64_t>(t) * a.H + g * a.rep) * d;
#pragma unroll
  for (int r = 0; r < G; ++r) {
    const int head = hg * G + r;
#pragma unroll
    for (int k = 0; k < CPL; ++k) {
      P p = zero_pack<T, VEC>();
      if (head < a.rep && cv[k]) p = *reinterpret_cast<const P*>(qbase + head * d + (li + k * L) * VEC);
#pragma unroll
      for (int e = 0; e < VEC; ++e) qr[r][k][e] = to_f32(p.v[e]) * a.scale_log2;
    }
  }

  float m[G], l[G], acc[G][CPL][VEC];
#pragma unroll
  for (int r = 0; r < G; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int k = 0; k < CPL; ++k)
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[r][k][e] = 0.0f;
  }

  const T* kpool = static_cast<const T*>(a.k);
  const T* vpool = static_cast<const T*>(a.v);
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.max_blocks_per_seq;
  // K and V chunks of key j (zeros where the lane's chunk is outside the row).
  auto load_row = [&](int j, P (&kr)[CPL], P (&vr)[CPL]) {
    const int64_t blk = table[j >> a.block_shift];
    const int64_t off = ((blk * a.KVH + g) * a.block_size + (j & (a.block_size - 1))) * d;
#pragma unroll
    for (int k = 0; k < CPL; ++k) {
      kr[k] = zero_pack<T, VEC>();
      vr[k] = zero_pack<T, VEC>();
      if (cv[k]) {
        kr[k] = *reinterpret_cast<const P*>(kpool + off + (li + k * L) * VEC);
        vr[k] = *reinterpret_cast<const P*>(vpool + off + (li + k * L) * VEC);
      }
    }
  };

  // Warp-uniform loop (the shuffles need every lane): the warp's slots take rows jb + sub, jb advancing by
  // the CTA's slot count; the next rows are loaded before the current ones are used (two rows in flight).
  P kc[CPL], vc[CPL], kn[CPL], vn[CPL];
#pragma unroll
  for (int k = 0; k < CPL; ++k) kc[k] = vc[k] = kn[k] = vn[k] = zero_pack<T, VEC>();
  int jb = begin + warp * SPW;
  if (jb + sub < end) load_row(jb + sub, kc, vc);
  for (; jb < end; jb += NS) {
    const int j = jb + sub;
    const bool live = j < end;
    if (j + NS < end) load_row(j + NS, kn, vn);
    float sc[G];
#pragma unroll
    for (int r = 0; r < G; ++r) {
      float x = 0.0f;
#pragma unroll
      for (int k = 0; k < CPL; ++k)
#pragma unroll
        for (int e = 0; e < VEC; ++e) x = fmaf(qr[r][k][e], to_f32(kc[k].v[e]), x);
      sc[r] = x;
    }
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1)
#pragma unroll
      for (int r = 0; r < G; ++r) sc[r] += __shfl_xor_sync(0xffffffffu, sc[r], o);
    if (live) {
#pragma unroll
      for (int r = 0; r < G; ++r) {
        const float mn = fmaxf(m[r], sc[r]);
        const float corr = exp2f(m[r] - mn);  // m = -inf at first: 0
        const float p = exp2f(sc[r] - mn);
        m[r] = mn;
        l[r] = l[r] * corr + p;
#pragma unroll
        for (int k = 0; k < CPL; ++k)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[r][k][e] = fmaf(acc[r][k][e], corr, p * to_f32(vc[k].v[e]));
      }
    }
#pragma unroll
    for (int k = 0; k < CPL; ++k) {
      kc[k] = kn[k];
      vc[k] = vn[k];
    }
  }

  // Merge the warp's slots (lanes li + sub * L): butterfly over the sub bits.
#pragma unroll
  for (int o = L; o < 32; o <<= 1) {
#pragma unroll
    for (int r = 0; r < G; ++r) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[r], o);
      const float lo_ = __shfl_xor_sync(0xffffffffu, l[r], o);
      const float mn = fmaxf(m[r], mo);
      const float fa = rescale(m[r], mn), fb = rescale(mo, mn);
      m[r] = mn;
      l[r] = l[r] * fa + lo_ * fb;
#pragma unroll
      for (int k = 0; k < CPL; ++k)
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float ao = __shfl_xor_sync(0xffffffffu, acc[r][k][e], o);
          acc[r][k][e] = acc[r][k][e] * fa + ao * fb;
        }
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int r = 0; r < G; ++r) {
      if (li == 0) {
        sm_m[warp][r] = m[r];
        sm_l[warp][r] = l[r];
      }
#pragma unroll
      for (int k = 0; k < CPL; ++k)
        if (cv[k])
#pragma unroll
          for (int e = 0; e < VEC; ++e) sm_acc[warp][r][(li + k * L) * VEC + e] = acc[r][k][e];
    }
  }
  __syncthreads();

  // Merge the warps; thread -> (head r, element e).
  for (int idx = threadIdx.x; idx < G * d; idx += kThreads) {
    const int r = idx / d, e = idx - r * d;
    const int head = hg * G + r;
    if (head >= a.rep) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w][r]);
    float lsum = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = rescale(sm_m[w][r], mx);
      lsum += sm_l[w][r] * f;
      o += sm_acc[w][r][e] * f;
    }
    const int64_t row = static_cast<int64_t>(t) * a.H + g * a.rep + head;  // (token, query head)
    if (a.num_splits == 1) {
      // The key range holds at least the token itself: lsum > 0.
      static_cast<T*>(a.out)[row * d + e] = from_f32<T>(o / lsum);
    } else {
      const int64_t part = (static_cast<int64_t>(item) * a.H + g * a.rep + head) * a.num_splits + split;
      a.ws_o[part * d + e] = lsum > 0.0f ? o / lsum : 0.0f;
      if (e == 0) a.ws_lse[part] = lsum > 0.0f ? mx + log2f(lsum) : -INFINITY;
    }
  }
}

// One output row's merge of its splits by one warp: lse [num_splits] and o [num_splits, d] the row's partials,
// dst [d] its output, w the warp's kMaxSplits floats of shared memory.
// dst = sum_i w_i o_i / sum_i w_i with w_i = exp2(lse_i - max lse). Split 0 is never empty. The partials are
// read through L2 (ld.global.cg): in decode_mma_kernel other CTAs of the same grid wrote them.
template <typename T>
__device__ __forceinline__ void combine_row(float* w, const float* lse, const float* o, T* dst, int d, int num_splits,
                                            int lane) {
  __syncwarp();  // the warp's previous row is done with w
  float mx = -INFINITY;
  for (int i = lane; i < num_splits; i += 32) mx = fmaxf(mx, __ldcg(lse + i));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.0f;
  for (int i = lane; i < num_splits; i += 32) {
    const float wi = exp2f(__ldcg(lse + i) - mx);  // empty split: lse = -inf, weight 0
    w[i] = wi;
    sum += wi;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __syncwarp();
  const float inv = 1.0f / sum;
  if (d % 4 == 0) {
    // 4 consecutive elements per lane, four splits' loads in flight at a time.
    for (int e = 4 * lane; e < d; e += 128) {
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      int i = 0;
      for (; i + 4 <= num_splits; i += 4) {
        float4 x[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) x[u] = __ldcg(reinterpret_cast<const float4*>(o + static_cast<int64_t>(i + u) * d + e));
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float wu = w[i + u];
          acc.x = fmaf(wu, x[u].x, acc.x);
          acc.y = fmaf(wu, x[u].y, acc.y);
          acc.z = fmaf(wu, x[u].z, acc.z);
          acc.w = fmaf(wu, x[u].w, acc.w);
        }
      }
      for (; i < num_splits; ++i) {
        const float4 x = __ldcg(reinterpret_cast<const float4*>(o + static_cast<int64_t>(i) * d + e));
        const float wu = w[i];
        acc.x = fmaf(wu, x.x, acc.x);
        acc.y = fmaf(wu, x.y, acc.y);
        acc.z = fmaf(wu, x.z, acc.z);
        acc.w = fmaf(wu, x.w, acc.w);
      }
      Pack<T, 4> p;
      p.v[0] = from_f32<T>(acc.x * inv);
      p.v[1] = from_f32<T>(acc.y * inv);
      p.v[2] = from_f32<T>(acc.z * inv);
      p.v[3] = from_f32<T>(acc.w * inv);
      *reinterpret_cast<Pack<T, 4>*>(dst + e) = p;
    }
  } else {
    for (int e = lane; e < d; e += 32) {
      float x = 0.0f;
      for (int i = 0; i < num_splits; ++i) x = fmaf(w[i], __ldcg(o + static_cast<int64_t>(i) * d + e), x);
      dst[e] = from_f32<T>(x * inv);
    }
  }
}

// Merges the splits of each (list item, query head) row: one warp per row, grid ceil(rows / 4), block kThreads;
// the output row is that of the item's token (tokens[item], or the item itself without a list).
template <typename T>
__global__ void __launch_bounds__(kThreads) combine_kernel(const float* __restrict__ ws_lse,
                                                           const float* __restrict__ ws_o, T* __restrict__ out,
                                                           int d, int num_splits, const int32_t* tokens, int H,
                                                           int64_t num_rows) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float w_sm[kWarps][kMaxSplits];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  pdl_wait();  // the partials come from the decode kernel
  pdl_launch_dependents();
  if (row >= num_rows) return;
  const int64_t item = row / H, head = row % H;
  combine_row<T>(w_sm[warp], ws_lse + row * num_splits, ws_o + row * num_splits * d,
                 out + ((tokens ? tokens[item] : item) * H + head) * d, d, num_splits, lane);
}

// ---------------------------------------------------------------- prefill (tensor-core) kernel

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; valid = false writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane i gives the row address of matrix i / 8, row i % 8; register j of lane i
// holds matrix j's (row i / 4, cols 2 * (i % 4) + {0, 1}) — or the transposed matrix's with .trans.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8], f32 accumulation. Fragments (g = lane / 4, q = lane % 4):
// a0 (g, 2q..), a1 (g+8, 2q..), a2 (g, 2q+8..), a3 (g+8, 2q+8..); b0 (k 2q.., n g), b1 (k 2q+8.., n g);
// c0,c1 (g, 2q..), c2,c3 (g+8, 2q..).
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> two T in one register (the first in the low half, as the fragments want).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// The inverse: one register of two T -> two floats (exact).
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t u) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(*reinterpret_cast<const __half2*>(&u));
  } else {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
  }
}

// 2^x on the special-function unit (inputs are <= 0 here; -inf gives 0, results under 2^-126 flush to 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

struct PrefillArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int32_t* seqs;  // the sequences to attend, grid y = index into this list (null: sequence = grid y)
  const int32_t* seq_first_token;
  const int32_t* seq_num_new;
  const int32_t* seq_context_len;
  const int32_t* block_tables;
  int32_t max_blocks_per_seq, block_size, block_shift;
  int32_t H, KVH, rep, window;
  float scale_log2;  // scale * log2(e), > 0
};

// One prefill kernel shape: NW warps of WM m-tiles (16 query rows each): BM = 16 * WM * NW rows per CTA;
// K/V tiles of BN keys in a STAGES-deep cp.async ring; QREG: the Q tile's mma fragments live in registers
// for the whole CTA (loaded once; the Q tile is staged in the ring's last stage), otherwise Q stays in its own
// shared-memory region and its fragments are re-read per key tile. MINB: CTAs per SM asked of the compiler.
// Shared rows are padded by 8 elements (16 bytes): with a row pitch of an odd multiple of 16 bytes, the 8
// rows an ldmatrix reads fall in 8 distinct 16-byte bank groups.
template <int D_, int NW_, int WM_, bool QREG_, int STAGES_, int MINB_, bool PIPE_ = false>
struct PrefillCfg {
  static constexpr int D = D_, NW = NW_, WM = WM_, STAGES = STAGES_, MINB = MINB_;
  static constexpr bool QREG = QREG_, PIPE = PIPE_;
  static constexpr int BN = 64;
  static constexpr int BM = 16 * WM * NW;
  static constexpr int PT = D + 8;
  static constexpr int THREADS = 32 * NW;
  static constexpr int STAGE_ELEMS = 2 * BN * PT;  // K tile then V tile
  static constexpr size_t SMEM = static_cast<size_t>((QREG ? 0 : BM * PT) + STAGES * STAGE_ELEMS) * 2;
  static_assert(STAGES >= 2, "at least double buffering");
  static_assert(!QREG || BM <= 2 * BN, "the Q tile is staged in one K/V stage");
};

extern __shared__ __align__(16) unsigned char dyn_smem[];

// grid (H, S, ceil(max_num_new / BM)), block C::THREADS. CTA (h, s, z): query head h, tile
// qt = gridDim.z - 1 - z of sequence s's new tokens (the late, heavy tiles are scheduled first, so that the
// light ones fill the tail), rows q0 = qt * BM ... q0 + BM - 1. Warp w holds rows 16 * WM * w ... + 16 * WM - 1.
// Keys from the first row's window start to the last row's position, BN at a time; a warp skips the tiles
// that hold no key any of its rows sees, and masks only the tiles that cross one of its rows' boundaries.
// Online softmax in raw score units: p = 2^(s * scale_log2 - m * scale_log2) (one FMA and one ex2 per score;
// needs scale > 0); the accumulator is rescaled only when a row's max moved.
template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS, C::MINB) prefill_kernel(const PrefillArgs a) {
  constexpr int D = C::D, BM = C::BM, BN = C::BN, PT = C::PT, WM = C::WM, S = C::STAGES, NT = C::THREADS;
  constexpr int CH = D / 8;  // 16-byte chunks per row
  T* const sKV = reinterpret_cast<T*>(dyn_smem) + (C::QREG ? 0 : BM * PT);
  T* const sQ = C::QREG ? sKV + (S - 1) * C::STAGE_ELEMS : reinterpret_cast<T*>(dyn_smem);

  const int h = blockIdx.x;
  const int s = a.seqs ? a.seqs[blockIdx.y] : blockIdx.y;
  const int qt = gridDim.z - 1 - blockIdx.z;
  const int num_new = a.seq_num_new[s];
  const int q0 = qt * BM;
  if (q0 >= num_new) return;
  const int ctx = a.seq_context_len[s], first = a.seq_first_token[s];
  const int rows = min(BM, num_new - q0);
  const int pos0 = ctx - num_new + q0;  // position of tile row 0
  const int p_last = pos0 + rows - 1;
  const int kv_begin = a.window > 0 ? max(0, pos0 - a.window + 1) : 0;
  const int kv_end = p_last + 1;
  const int ntiles = (kv_end - kv_begin + BN - 1) / BN;
  const int g = h / a.rep;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const float sl2 = a.scale_log2;

  const T* qg = static_cast<const T*>(a.q);
  const T* kpool = static_cast<const T*>(a.k);
  const T* vpool = static_cast<const T*>(a.v);
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.max_blocks_per_seq;

  // Q tile (rows past num_new zero-filled): the first cp.async group.
  constexpr int kQIters = (BM * CH + NT - 1) / NT;
#pragma unroll
  for (int k = 0; k < kQIters; ++k) {
    const int i = tid + k * NT;
    if ((BM * CH) % NT == 0 || i < BM * CH) {
      const int r = i / CH, c = i % CH;
      const bool ok = r < rows;
      const T* src = ok ? qg + (static_cast<int64_t>(first + q0 + r) * a.H + h) * D + c * 8 : qg;
      cp_async16(smem_addr(sQ + r * PT + c * 8), src, ok);
    }
  }
  cp_async_commit();

  // K/V tile `tile` into stage `st`; keys past kv_end zero-filled (their block may not exist, and 0 * NaN
  // from stale memory would poison P.V).
  constexpr int kKvIters = (BN * CH + NT - 1) / NT;
  auto load_kv = [&](int tile, int st) {
    const int kt0 = kv_begin + tile * BN;
    T* dk = sKV + st * C::STAGE_ELEMS;
    T* dv = dk + BN * PT;
#pragma unroll
    for (int k = 0; k < kKvIters; ++k) {
      const int i = tid + k * NT;
      if ((BN * CH) % NT == 0 || i < BN * CH) {
        const int r = i / CH, c = i % CH;
        const int j = kt0 + r;
        const bool ok = j < kv_end;
        const T* ks = kpool;
        const T* vs = vpool;
        if (ok) {
          const int64_t blk = table[j >> a.block_shift];
          const int64_t off = ((blk * a.KVH + g) * a.block_size + (j & (a.block_size - 1))) * D + c * 8;
          ks += off;
          vs += off;
        }
        cp_async16(smem_addr(dk + r * PT + c * 8), ks, ok);
        cp_async16(smem_addr(dv + r * PT + c * 8), vs, ok);
      }
    }
  };
  // Tiles 0 .. S-2 into stages 0 .. S-2, one group each (empty groups keep the count uniform).
#pragma unroll
  for (int st = 0; st < S - 1; ++st) {
    if (st < ntiles) load_kv(st, st);
    cp_async_commit();
  }

  // ldmatrix lane roles (matrix mi = lane / 8, row lane % 8).
  const int lrow = lane & 7, mi_lo = (lane >> 3) & 1, mi_hi = lane >> 4;
  const int wrow = warp * 16 * WM;  // the warp's first tile row
  const uint32_t q_addr = smem_addr(sQ + (wrow + lrow + mi_lo * 8) * PT + mi_hi * 8);

  uint32_t qf[C::QREG ? WM : 1][C::QREG ? D / 16 : 1][4];
  if constexpr (C::QREG) {
    cp_async_wait<S - 1>();  // the Q group (the K/V groups may still be in flight)
    __syncthreads();
#pragma unroll
    for (int wm = 0; wm < WM; ++wm)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[wm][kk], q_addr + (wm * 16 * PT + kk * 16) * 2);
    // The loop's first barrier orders these reads before stage S-1 is refilled.
  }

  // This thread's rows: m-tile wm, fragment rows lane/4 and lane/4 + 8; rows past `rows` act as the last
  // row (finite, never written).
  int pr[WM][2], lr[WM][2];
#pragma unroll
  for (int wm = 0; wm < WM; ++wm)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      pr[wm][i] = pos0 + min(wrow + wm * 16 + lane / 4 + 8 * i, rows - 1);
      lr[wm][i] = a.window > 0 ? pr[wm][i] - a.window + 1 : 0;
    }
  const bool warp_live = wrow < rows;
  const int w_first = pos0 + min(wrow, rows - 1);               // the warp's first row's position
  const int w_last = pos0 + min(wrow + 16 * WM - 1, rows - 1);  // and its last row's
  const int w_lo_first = a.window > 0 ? w_first - a.window + 1 : 0;
  const int w_lo_last = a.window > 0 ? w_last - a.window + 1 : 0;

  float o[WM][D / 8][4];  // O [16 x D] per m-tile: n-tile dn covers dims 8dn..8dn+7
#pragma unroll
  for (int wm = 0; wm < WM; ++wm)
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) o[wm][dn][0] = o[wm][dn][1] = o[wm][dn][2] = o[wm][dn][3] = 0.0f;
  float m[WM][2], l[WM][2];  // running max (raw score units) and this lane's part of the row sum
#pragma unroll
  for (int wm = 0; wm < WM; ++wm) m[wm][0] = m[wm][1] = -INFINITY, l[wm][0] = l[wm][1] = 0.0f;

  // ---- per-tile steps (a warp calls them only for the tiles some of its rows see)
  // S [16 x BN] = Q K^T per m-tile; n-tile nt covers keys kt0 + 8nt..+7.
  auto qk = [&](const T* K, float (&sc)[WM][BN / 8][4]) {
#pragma unroll
    for (int wm = 0; wm < WM; ++wm)
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) sc[wm][nt][0] = sc[wm][nt][1] = sc[wm][nt][2] = sc[wm][nt][3] = 0.0f;
    const uint32_t k_addr = smem_addr(K + (lrow + mi_hi * 8) * PT + mi_lo * 8);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t af[WM][4];
#pragma unroll
      for (int wm = 0; wm < WM; ++wm) {
        if constexpr (C::QREG) {
#pragma unroll
          for (int e = 0; e < 4; ++e) af[wm][e] = qf[wm][kk][e];
        } else {
          ldmatrix_x4(af[wm], q_addr + (wm * 16 * PT + kk * 16) * 2);
        }
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t bf[4];  // keys 16np..+7 (bf[0], bf[1]) and 16np+8..+15 (bf[2], bf[3])
        ldmatrix_x4(bf, k_addr + (np * 16 * PT + kk * 16) * 2);
#pragma unroll
        for (int wm = 0; wm < WM; ++wm) {
          mma16816<T>(sc[wm][2 * np], af[wm], bf[0], bf[1]);
          mma16816<T>(sc[wm][2 * np + 1], af[wm], bf[2], bf[3]);
        }
      }
    }
  };
  // Does the warp see any key of the tile at kt0? (A tile none of its rows sees would leave m, l, o as is.)
  auto warp_sees = [&](int kt0) { return warp_live && kt0 <= w_last && kt0 + BN - 1 >= w_lo_first; };
  // Mask keys outside [lo_row, pos_row], only where the tile crosses one of the warp's row boundaries.
  auto mask = [&](int kt0, float (&sc)[WM][BN / 8][4]) {
    if (kt0 + BN - 1 > w_first || (a.window > 0 && kt0 < w_lo_last)) {
#pragma unroll
      for (int wm = 0; wm < WM; ++wm)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = kt0 + nt * 8 + 2 * (lane & 3) + (e & 1);
            if (j > pr[wm][e >> 1] || j < lr[wm][e >> 1]) sc[wm][nt][e] = -INFINITY;
          }
    }
  };
  // Online softmax of the (masked) scores, then O += P V.
  auto softmax_pv = [&](const T* V, float (&sc)[WM][BN / 8][4]) {
#pragma unroll
    for (int wm = 0; wm < WM; ++wm) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(sc[wm][nt][0], sc[wm][nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(sc[wm][nt][2], sc[wm][nt][3]));
      }
      float corr[2], ms[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float mn = fmaxf(m[wm][i], mx[i]);
        const float mb = mn == -INFINITY ? 0.0f : mn;  // a row with no key yet: everything scales to 0
        corr[i] = mn == m[wm][i] && mn != -INFINITY ? 1.0f : fast_exp2((m[wm][i] - mb) * sl2);
        ms[i] = mb * sl2;
        m[wm][i] = mn;
      }
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[wm][nt][e] = fast_exp2(fmaf(sc[wm][nt][e], sl2, -ms[e >> 1]));
      // This lane's columns of each row; the row's 4 lanes are summed at the end.
      float rs[2] = {0.0f, 0.0f};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        rs[0] += sc[wm][nt][0] + sc[wm][nt][1];
        rs[1] += sc[wm][nt][2] + sc[wm][nt][3];
      }
      l[wm][0] = l[wm][0] * corr[0] + rs[0];
      l[wm][1] = l[wm][1] * corr[1] + rs[1];
      // Branch-free in the pipelined kernel (one basic block lets the scheduler interleave the next tile's
      // Q K^T with this softmax); elsewhere skipped when no max of this lane's rows moved.
      if (C::PIPE || corr[0] != 1.0f || corr[1] != 1.0f) {
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
          o[wm][dn][0] *= corr[0];
          o[wm][dn][1] *= corr[0];
          o[wm][dn][2] *= corr[1];
          o[wm][dn][3] *= corr[1];
        }
      }
    }

    // O += P V: P's accumulator layout is the A fragment of the next mma (keys 16kk..16kk+15).
    const uint32_t v_addr = smem_addr(V + (lrow + mi_lo * 8) * PT + mi_hi * 8);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[WM][4];
#pragma unroll
      for (int wm = 0; wm < WM; ++wm) {
        pa[wm][0] = pack2<T>(sc[wm][2 * kk][0], sc[wm][2 * kk][1]);
        pa[wm][1] = pack2<T>(sc[wm][2 * kk][2], sc[wm][2 * kk][3]);
        pa[wm][2] = pack2<T>(sc[wm][2 * kk + 1][0], sc[wm][2 * kk + 1][1]);
        pa[wm][3] = pack2<T>(sc[wm][2 * kk + 1][2], sc[wm][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bf[4];  // dims 16dp..+7 (bf[0], bf[1]) and 16dp+8..+15 (bf[2], bf[3])
        ldmatrix_x4_trans(bf, v_addr + (kk * 16 * PT + dp * 16) * 2);
#pragma unroll
        for (int wm = 0; wm < WM; ++wm) {
          mma16816<T>(o[wm][2 * dp], pa[wm], bf[0], bf[1]);
          mma16816<T>(o[wm][2 * dp + 1], pa[wm], bf[2], bf[3]);
        }
      }
    }
  };
  auto stage_k = [&](int tile) { return sKV + (tile % S) * C::STAGE_ELEMS; };

  if constexpr (!C::PIPE) {
    for (int it = 0; it < ntiles; ++it) {
      cp_async_wait<S - 2>();  // tile `it` has landed (for this thread's copies) ...
      __syncthreads();         // ... and everyone's; everyone is also past tile it-1, whose stage is refilled next
      if (it + S - 1 < ntiles) load_kv(it + S - 1, (it + S - 1) % S);
      cp_async_commit();
      const int kt0 = kv_begin + it * BN;
      if (!warp_sees(kt0)) continue;
      float sc[WM][BN / 8][4];
      qk(stage_k(it), sc);
      mask(kt0, sc);
      softmax_pv(stage_k(it) + BN * PT, sc);
    }
  } else {
    // Software-pipelined: iteration `it` issues Q K^T of tile it+1 beside the softmax and P V of tile it.
    // Stages: tile it (its V in use), tile it+1 (its K in use), tile it+2 (loading).
    static_assert(S == 3, "the pipelined loop holds three tiles");
    float sc[WM][BN / 8][4];
    cp_async_wait<1>();  // tile 0 (tile 1 may be in flight)
    __syncthreads();
    if (warp_sees(kv_begin)) qk(stage_k(0), sc);
    for (int it = 0; it < ntiles; ++it) {
      cp_async_wait<0>();  // tile it+1 has landed (this thread's copies) ...
      __syncthreads();     // ... everyone's; everyone is past tile it-1, whose stage is refilled now
      if (it + 2 < ntiles) load_kv(it + 2, (it + 2) % S);
      cp_async_commit();
      const int kt0 = kv_begin + it * BN;
      const bool cur = warp_sees(kt0);
      const bool next = it + 1 < ntiles && warp_sees(kt0 + BN);
      if (cur) mask(kt0, sc);
      float sn[WM][BN / 8][4];
      if (cur && next) {
        qk(stage_k(it + 1), sn);
        softmax_pv(stage_k(it) + BN * PT, sc);
      } else if (cur) {
        softmax_pv(stage_k(it) + BN * PT, sc);
      } else if (next) {
        qk(stage_k(it + 1), sn);
      }
#pragma unroll
      for (int wm = 0; wm < WM; ++wm)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) sc[wm][nt][e] = sn[wm][nt][e];
    }
  }
  cp_async_wait<0>();  // no copy outlives the CTA (the trailing groups are empty)

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int wm = 0; wm < WM; ++wm)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float li = l[wm][i];
      li += __shfl_xor_sync(0xffffffffu, li, 1);
      li += __shfl_xor_sync(0xffffffffu, li, 2);
      const int r = wrow + wm * 16 + lane / 4 + 8 * i;
      if (r >= rows) continue;
      const float inv = 1.0f / li;  // > 0: the row's own key is always in range
      T* dst = out + (static_cast<int64_t>(first + q0 + r) * a.H + h) * D + 2 * (lane & 3);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<uint32_t*>(dst + dn * 8) = pack2<T>(o[wm][dn][2 * i] * inv, o[wm][dn][2 * i + 1] * inv);
    }
}

// ---------------------------------------------------------------- decode kernel on tensor cores (f16/bf16)

// decode_mma_kernel's shape for head dim D: NW warps, each streaming its own keys through a private
// STAGES-deep cp.async ring of K/V tiles of BN = 16 keys (the K tile then the V tile, rows padded by 8
// elements as in the prefill kernel, so that ldmatrix is conflict-free). Up to ROWS = 16 query heads of one
// kv head (and one token) are the rows of the m16n8k16 tiles. After the loop the ring is reused to merge
// the warps: per warp [ROWS][OP] floats of output, then ROWS maxima and ROWS sums.
template <int D_, int STAGES_>
struct DecodeMmaCfg {
  static constexpr int D = D_, STAGES = STAGES_;
  static constexpr int NW = 4, BN = 16, ROWS = 16;
  static constexpr int THREADS = 32 * NW;
  static constexpr int PT = D + 8;
  static constexpr int CH = D / 8;                  // 16-byte chunks per row
  static constexpr int TILE_ELEMS = 2 * BN * PT;    // K tile then V tile
  static constexpr int RING_BYTES = NW * STAGES * TILE_ELEMS * 2;
  static constexpr int OP = D + 4;                  // merge row pitch (floats): conflict-free float2 stores
  static constexpr int MERGE_BYTES = NW * ROWS * OP * 4 + 2 * NW * ROWS * 4;
  static constexpr int SMEM = RING_BYTES > MERGE_BYTES ? RING_BYTES : MERGE_BYTES;
  // Fused with RoPE: the new token's K and V rows ([2][D] of 16-bit) after the ring.
  static constexpr int NEW_BYTES = 2 * D * 2;
  static constexpr int SMEM_FUSED = RING_BYTES + NEW_BYTES > MERGE_BYTES ? RING_BYTES + NEW_BYTES : MERGE_BYTES;
  static_assert(D % 16 == 0 && (BN * CH) % 32 == 0, "whole k-steps and whole chunk rounds per lane");
  static_assert(STAGES >= 2, "at least double buffering");
  static_assert(SMEM >= NW * kMaxSplits * 4, "the in-kernel combine's weights fit in the merge's space");
};

// grid (items, KVH * hgroups, num_splits), block C::THREADS. CTA (item, g * hgroups + hg, split): the item's
// token t, query heads g * rep + hg * 16 + r (r < 16, those < rep), keys [begin, end) = the split's part of
// t's range [lo, pos]. The range is cut into 16-key tiles aligned to multiples of 16 (a tile then lies in
// one KV block when block_size >= 16, and the keys outside [begin, end) of the first and last tiles are
// neither read, the copy zero-fills them, nor scored); warp w takes tiles w, w + NW, ... Each warp keeps
// its own online softmax (f32, log2 units) in the mma accumulator layout; the warps are merged at the end.
//
// FUSED (the decode step's RoPE and KV write folded in, rope_kv_write_attention): a.q is the qkv buffer; the
// query rows are rotated in registers (rope_pair, rounded to T as qkv_rope_kv_write rounds q_out); the CTA
// whose split holds the token's position pos (the last key of its range) has the warp owning pos's tile
// compute pos's roped K and its V from qkv into shared memory past the ring, write them to the cache (the
// CTA of head group 0 only; the others compute the same bits and keep them), and place them into its ring
// stage instead of loading that row: no CTA reads the row from memory in this kernel.
template <typename T, class C, bool FUSED = false>
__global__ void __launch_bounds__(C::THREADS) decode_mma_kernel(const DecodeArgs a) {
  constexpr int D = C::D, NW = C::NW, BN = C::BN, PT = C::PT, CH = C::CH, S = C::STAGES, OP = C::OP;
  constexpr int ROWS = C::ROWS;
  constexpr int LOADS = BN * CH / 32;  // 16-byte chunks of K (and as many of V) per lane per tile
  const int item = blockIdx.x;
  const int g = blockIdx.y / a.hgroups, hg = blockIdx.y % a.hgroups;
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* const ring = reinterpret_cast<T*>(dyn_smem) + warp * S * C::TILE_ELEMS;

  // Everything below reads what earlier kernels wrote (q, the KV cache, the batch's tables).
  pdl_wait();
  pdl_launch_dependents();

  const int t = a.tokens ? a.tokens[item] : item;
  const int s = a.token_seq[t], pos = a.token_pos[t];
  const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int begin = lo + split * a.chunk;
  const int end = min(pos + 1, begin + a.chunk);  // may be <= begin: an empty split
  const int key0 = begin & ~(BN - 1);
  const int ntiles = end > begin ? (end - key0 + BN - 1) / BN : 0;
  const int mine = ntiles > warp ? (ntiles - warp + NW - 1) / NW : 0;
  const int head0 = hg * ROWS;                 // the CTA's first head within the kv head's group
  const int rows = min(ROWS, a.rep - head0);

  const T* kpool = static_cast<const T*>(a.k);
  const T* vpool = static_cast<const T*>(a.v);
  const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.max_blocks_per_seq;
  const bool whole_blocks = a.block_size >= BN;
  // FUSED: does this CTA's split hold the token's own position (then its tile, and the warp owning it)?
  const bool has_new = FUSED && end > begin && end == pos + 1;
  const int new_tile = (pos - key0) / BN;

  // The warp's i-th tile into stage i % S. Lane chunk c = lane + 32k: row c / CH, 16 bytes at col c % CH
  // (a warp reads 32 consecutive 16-byte chunks of a block's rows: coalesced).
  auto load_tile = [&](int i) {
    const int kb = key0 + (warp + i * NW) * BN;  // < end: the tile holds a key of the range
    T* dk = ring + (i % S) * C::TILE_ELEMS;
    T* dv = dk + BN * PT;
    int64_t base = 0;
    if (whole_blocks) {
      const int64_t blk = table[kb >> a.block_shift];
      base = ((blk * a.KVH + g) * a.block_size + (kb & (a.block_size - 1))) * D;
    }
#pragma unroll
    for (int k = 0; k < LOADS; ++k) {
      const int c = lane + 32 * k;
      const int r = c / CH, col = c % CH;
      const int j = kb + r;
      const bool ok = j >= begin && j < end && !(has_new && j == pos);
      int64_t off = 0;
      if (ok) {
        if (whole_blocks) {
          off = base + r * D + col * 8;
        } else {
          const int64_t blk = table[j >> a.block_shift];
          off = ((blk * a.KVH + g) * a.block_size + (j & (a.block_size - 1))) * D + col * 8;
        }
      }
      cp_async16(smem_addr(dk + r * PT + col * 8), kpool + off, ok);
      cp_async16(smem_addr(dv + r * PT + col * 8), vpool + off, ok);
    }
  };
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < mine) load_tile(i);
    cp_async_commit();
  }

  // FUSED: the warp owning pos's tile loads pos's k and v rows and their cos / sin now, so that these loads
  // overlap the q loads (rotated and stored after them, below).
  using P8 = Pack<T, 8>;
  static_assert(!FUSED || (D % 32 == 0 && D / 8 <= 32), "whole rotary k-steps; a v chunk per lane");
  const bool new_warp = has_new && warp == new_tile % NW;
  P8 nk1{}, nk2{}, nv{};
  float4 nc0{}, nc1{}, ns0{}, ns1{};
  int64_t new_row = 0;
  if constexpr (FUSED) {
    if (new_warp) {
      const T* ksrc = static_cast<const T*>(a.q) + static_cast<int64_t>(t) * a.q_stride + (a.H + g) * D;
      const float* cs = a.cos_sin + static_cast<int64_t>(t) * D;
      if (lane < D / 16) {
        nk1 = *reinterpret_cast<const P8*>(ksrc + lane * 8);
        nk2 = *reinterpret_cast<const P8*>(ksrc + D / 2 + lane * 8);
        nc0 = *reinterpret_cast<const float4*>(cs + lane * 8);
        nc1 = *reinterpret_cast<const float4*>(cs + lane * 8 + 4);
        ns0 = *reinterpret_cast<const float4*>(cs + D / 2 + lane * 8);
        ns1 = *reinterpret_cast<const float4*>(cs + D / 2 + lane * 8 + 4);
      }
      if (lane < CH) nv = *reinterpret_cast<const P8*>(ksrc + a.KVH * D + lane * 8);
      if (hg == 0) {
        const int64_t blk = table[pos >> a.block_shift];
        new_row = ((blk * a.KVH + g) * a.block_size + (pos & (a.block_size - 1))) * D;
      }
    }
  }

  // Q as the A fragments of every k-step (rows = heads; rows past `rows` are zero).
  const int gq = lane / 4, qq = lane % 4;
  uint32_t qf[D / 16][4];
  {
    const T* qb = static_cast<const T*>(a.q) + static_cast<int64_t>(t) * a.q_stride + (g * a.rep + head0) * D + 2 * qq;
    const bool r0 = gq < rows, r1 = gq + 8 < rows;
    const uint32_t* q0 = reinterpret_cast<const uint32_t*>(qb + gq * D);
    const uint32_t* q1 = reinterpret_cast<const uint32_t*>(qb + (gq + 8) * D);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      qf[kk][0] = r0 ? q0[kk * 8] : 0u;
      qf[kk][1] = r1 ? q1[kk * 8] : 0u;
      qf[kk][2] = r0 ? q0[kk * 8 + 4] : 0u;
      qf[kk][3] = r1 ? q1[kk * 8 + 4] : 0u;
    }
    if constexpr (FUSED) {
      // Rotate-half pairs (c, c + D / 2) sit in the same register of k-steps kk and kk + D / 32.
      constexpr int KH = D / 32;
      const float* cs = a.cos_sin + static_cast<int64_t>(t) * D;
#pragma unroll
      for (int kk = 0; kk < KH; ++kk)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = kk * 16 + 2 * qq + (e >= 2 ? 8 : 0);
          const float2 c = *reinterpret_cast<const float2*>(cs + col);
          const float2 sn = *reinterpret_cast<const float2*>(cs + D / 2 + col);
          const float2 x1 = unpack2<T>(qf[kk][e]), x2 = unpack2<T>(qf[kk + KH][e]);
          float a1, a2, b1, b2;
          rope_pair(x1.x, x2.x, c.x, sn.x, a1, a2);
          rope_pair(x1.y, x2.y, c.y, sn.y, b1, b2);
          const bool live = (e & 1) ? r1 : r0;
          qf[kk][e] = live ? pack2<T>(a1, b1) : 0u;
          qf[kk + KH][e] = live ? pack2<T>(a2, b2) : 0u;
        }
    }
  }

  // FUSED: the new key and value of position pos ([2][D] of T past the ring), by the warp owning its tile,
  // from the values loaded above: lane c < D / 16 rotates k chunk c (dims 8c..) with chunk c + D / 16, lane
  // c < D / 8 copies v chunk c.
  T* const s_new = reinterpret_cast<T*>(dyn_smem + C::RING_BYTES);
  if constexpr (FUSED) {
    if (new_warp) {
      constexpr int HALF = D / 2;
      const bool store = hg == 0;  // one writer per (token, kv head)
      T* const kdst = const_cast<T*>(kpool) + new_row;
      T* const vdst = const_cast<T*>(vpool) + new_row;
      if (lane < HALF / 8) {
        const float cv[8] = {nc0.x, nc0.y, nc0.z, nc0.w, nc1.x, nc1.y, nc1.z, nc1.w};
        const float sv[8] = {ns0.x, ns0.y, ns0.z, ns0.w, ns1.x, ns1.y, ns1.z, ns1.w};
        P8 y1, y2;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float f1, f2;
          rope_pair(to_f32(nk1.v[e]), to_f32(nk2.v[e]), cv[e], sv[e], f1, f2);
          y1.v[e] = from_f32<T>(f1);
          y2.v[e] = from_f32<T>(f2);
        }
        *reinterpret_cast<P8*>(s_new + lane * 8) = y1;
        *reinterpret_cast<P8*>(s_new + HALF + lane * 8) = y2;
        if (store) {
          *reinterpret_cast<P8*>(kdst + lane * 8) = y1;
          *reinterpret_cast<P8*>(kdst + HALF + lane * 8) = y2;
        }
      }
      if (lane < CH) {
        *reinterpret_cast<P8*>(s_new + D + lane * 8) = nv;
        if (store) *reinterpret_cast<P8*>(vdst + lane * 8) = nv;
      }
      __syncwarp();
    }
  }

  float o[D / 8][4];
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows gq and gq + 8 (l: this lane's part)
  const int lrow = lane & 7, mi_lo = (lane >> 3) & 1, mi_hi = lane >> 4;
  const float sl2 = a.scale_log2;

  for (int i = 0; i < mine; ++i) {
    cp_async_wait<S - 2>();  // tile i has landed (this lane's copies) ...
    __syncwarp();            // ... and the warp's; the warp is also past tile i-1, whose stage is refilled now
    if (i + S - 1 < mine) load_tile(i + S - 1);
    cp_async_commit();
    const T* K = ring + (i % S) * C::TILE_ELEMS;
    const T* V = K + BN * PT;
    if constexpr (FUSED) {
      if (has_new && warp + i * NW == new_tile) {
        // pos's row (zero-filled by the copy) from s_new.
        T* const dst = ring + (i % S) * C::TILE_ELEMS + (pos - (key0 + new_tile * BN)) * PT;
        for (int c = lane; c < 2 * CH; c += 32) {
          const int which = c / CH, col = c % CH;
          *reinterpret_cast<uint4*>(dst + which * BN * PT + col * 8) =
              *reinterpret_cast<const uint4*>(s_new + which * D + col * 8);
        }
        __syncwarp();
      }
    }

    // S [16 heads x 16 keys] = Q K^T.
    float sc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
    const uint32_t k_addr = smem_addr(K + (lrow + mi_hi * 8) * PT + mi_lo * 8);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t bf[4];
      ldmatrix_x4(bf, k_addr + kk * 32);
      mma16816<T>(sc[0], qf[kk], bf[0], bf[1]);
      mma16816<T>(sc[1], qf[kk], bf[2], bf[3]);
    }
    // Scores in log2 units; keys outside [begin, end) (first and last tiles only) masked.
    const int kb = key0 + (warp + i * NW) * BN;
    const bool edge = kb < begin || kb + BN > end;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[nt][e] *= sl2;
        if (edge) {
          const int j = kb + nt * 8 + 2 * qq + (e & 1);
          if (j < begin || j >= end) sc[nt][e] = -INFINITY;
        }
      }
    // Online softmax; every tile holds a key of the range, so the new maxima are finite.
    float mx[2] = {fmaxf(fmaxf(sc[0][0], sc[0][1]), fmaxf(sc[1][0], sc[1][1])),
                   fmaxf(fmaxf(sc[0][2], sc[0][3]), fmaxf(sc[1][2], sc[1][3]))};
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      corr[r] = fast_exp2(m[r] - mn);  // m = -inf at first: 0
      m[r] = mn;
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[nt][e] = fast_exp2(sc[nt][e] - m[e >> 1]);
    l[0] = l[0] * corr[0] + (sc[0][0] + sc[0][1] + sc[1][0] + sc[1][1]);
    l[1] = l[1] * corr[1] + (sc[0][2] + sc[0][3] + sc[1][2] + sc[1][3]);
    if (corr[0] != 1.0f || corr[1] != 1.0f) {
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[dn][0] *= corr[0];
        o[dn][1] *= corr[0];
        o[dn][2] *= corr[1];
        o[dn][3] *= corr[1];
      }
    }
    // O += P V (P's accumulator layout is the A fragment).
    uint32_t pa[4] = {pack2<T>(sc[0][0], sc[0][1]), pack2<T>(sc[0][2], sc[0][3]), pack2<T>(sc[1][0], sc[1][1]),
                      pack2<T>(sc[1][2], sc[1][3])};
    const uint32_t v_addr = smem_addr(V + (lrow + mi_lo * 8) * PT + mi_hi * 8);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, v_addr + dp * 32);
      mma16816<T>(o[2 * dp], pa, bf[0], bf[1]);
      mma16816<T>(o[2 * dp + 1], pa, bf[2], bf[3]);
    }
  }
  cp_async_wait<0>();  // no copy outlives the loop (the trailing groups are empty)

  // Merge the warps through shared memory (the rings are done with once every warp is here).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  __syncthreads();
  float* const sm_o = reinterpret_cast<float*>(dyn_smem);  // [NW][ROWS][OP]
  float* const sm_m = sm_o + NW * ROWS * OP;                // [NW][ROWS]
  float* const sm_l = sm_m + NW * ROWS;
  {
    float* wo = sm_o + warp * ROWS * OP + 2 * qq;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      *reinterpret_cast<float2*>(wo + gq * OP + dn * 8) = make_float2(o[dn][0], o[dn][1]);
      *reinterpret_cast<float2*>(wo + (gq + 8) * OP + dn * 8) = make_float2(o[dn][2], o[dn][3]);
    }
    if (qq == 0) {
      sm_m[warp * ROWS + gq] = m[0];
      sm_m[warp * ROWS + gq + 8] = m[1];
      sm_l[warp * ROWS + gq] = l[0];
      sm_l[warp * ROWS + gq + 8] = l[1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * D; idx += C::THREADS) {
    const int r = idx / D, e = idx - r * D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mx = fmaxf(mx, sm_m[w * ROWS + r]);
    float lsum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float f = rescale(sm_m[w * ROWS + r], mx);
      lsum += sm_l[w * ROWS + r] * f;
      acc += sm_o[(w * ROWS + r) * OP + e] * f;
    }
    const int head = g * a.rep + head0 + r;
    if (a.num_splits == 1) {
      static_cast<T*>(a.out)[(static_cast<int64_t>(t) * a.H + head) * D + e] = from_f32<T>(acc / lsum);
    } else {
      const int64_t part = (static_cast<int64_t>(item) * a.H + head) * a.num_splits + split;
      a.ws_o[part * D + e] = lsum > 0.0f ? acc / lsum : 0.0f;
      if (e == 0) a.ws_lse[part] = lsum > 0.0f ? mx + log2f(lsum) : -INFINITY;
    }
  }
  if (a.num_splits == 1 || a.counters == nullptr) return;

  // Split-KV: the last CTA of this (item, kv head, head group) to get here merges all the splits' partials
  // (combine_kernel's arithmetic, a warp per row) and sets the counter back to 0 for the next launch.
  int* const counter = a.counters + static_cast<int64_t>(item) * gridDim.y + blockIdx.y;
  __threadfence();  // this CTA's partials are visible to every CTA before its arrival is counted
  __syncthreads();  // ... and every thread's (the merge's shared memory is also free from here on)
  int last = 0;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == a.num_splits - 1;
  if (!__syncthreads_or(last)) return;
  __threadfence();  // the other CTAs' partials (their fences preceded their arrivals) are read after this
  float* const w = reinterpret_cast<float*>(dyn_smem) + warp * kMaxSplits;
  for (int r = warp; r < rows; r += NW) {
    const int head = g * a.rep + head0 + r;
    const int64_t row = static_cast<int64_t>(item) * a.H + head;
    combine_row<T>(w, a.ws_lse + row * a.num_splits, a.ws_o + row * a.num_splits * D,
                   static_cast<T*>(a.out) + (static_cast<int64_t>(t) * a.H + head) * D, D, a.num_splits, lane);
  }
  if (threadIdx.x == 0) *counter = 0;
}

// ---------------------------------------------------------------- host side

// The decode kernel of a batch: on tensor cores (decode_mma_kernel) for f16/bf16 and head dims up to 128,
// else the CUDA-core one (f32, head dim 256).
bool decode_uses_mma(bool f32, int head_dim) {
  return !f32 && head_dim <= 128 && head_dim % 16 == 0;
}
// Query heads per decode CTA and CTAs per kv head: the CUDA-core kernel holds up to kMaxGroup heads, the
// mma kernel 16 (the m16 rows).
int decode_group(int rep) { return std::min(kMaxGroup, pow2_ceil(rep)); }
int decode_hgroups(int rep, bool mma) {
  return static_cast<int>(mma ? ceil_div(rep, 16) : ceil_div(rep, decode_group(rep)));
}

// Keys a token can see at most.
int64_t max_key_range(const AttentionParams& p, int64_t max_context_len) {
  return p.window > 0 ? std::min<int64_t>(p.window, max_context_len) : max_context_len;
}

// Multiprocessors of the current device (cached per device).
int device_sms() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 132;
  }
  static std::atomic<int> cached[64];
  if (dev >= 0 && dev < 64) {
    const int v = cached[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    n = 132;
  }
  if (dev >= 0 && dev < 64) cached[dev].store(n, std::memory_order_relaxed);
  return n;
}

// Keys per split when `keys` are cut in `splits`: a multiple of kSplitAlign.
int64_t split_chunk(int64_t keys, int64_t splits) {
  return ceil_div(ceil_div(keys, splits), kSplitAlign) * kSplitAlign;
}

// Splits of each token's key range. The cost of s splits is the keys of the busiest SM: ceil(base * s /
// SMs) CTAs of chunk keys each, each with a fixed cost, plus the combine kernel's when s > 1; the smallest
// cost wins (ties: fewer splits), with chunks of at least kMinChunk keys. base = CTAs per split.
// Batches of at least 2 CTAs per SM take one split.
// The cost model's constants, overridable for measurements: KILN_ATTN_SPLIT_COSTS="cta,combine" (keys).
std::pair<int64_t, int64_t> split_costs() {
  static const std::pair<int64_t, int64_t> costs = [] {
    std::pair<int64_t, int64_t> c{kCtaCostKeys, kCombineCostKeys};
    if (const char* e = std::getenv("KILN_ATTN_SPLIT_COSTS")) {
      long a = 0, b = 0;
      if (std::sscanf(e, "%ld,%ld", &a, &b) == 2 && a >= 0 && b >= 0) c = {a, b};
    }
    return c;
  }();
  return costs;
}

int decode_splits(const AttentionParams& p, int64_t num_tokens, int64_t max_context_len, int hgroups) {
  const auto [cta_cost, combine_cost] = split_costs();
  const int64_t base = num_tokens * p.num_kv_heads * hgroups;
  const int64_t sms = device_sms();
  const int64_t keys = std::max<int64_t>(max_key_range(p, max_context_len), 1);
  int64_t best = 1;
  if (base < 2 * sms) {
    int64_t best_cost = ceil_div(base, sms) * (keys + cta_cost);
    for (int64_t n = 2; n <= kMaxSplits; ++n) {
      const int64_t chunk = split_chunk(keys, n);
      if (chunk < kMinChunk) break;
      if (ceil_div(keys, chunk) < n) continue;  // some split would be empty
      const int64_t cost = ceil_div(base * n, sms) * (chunk + cta_cost) + combine_cost;
      if (cost < best_cost) {
        best = n;
        best_cost = cost;
      }
    }
  }
  return static_cast<int>(ceil_div(keys, split_chunk(keys, best)));  // no empty split
}

constexpr size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// decode_mma_kernel's arrival counters: one per CTA group (token, kv head, head group) of a split launch,
// of which there are fewer than 2 per SM (decode_splits); at the workspace's start, the same place for every
// launch shape, so that what one launch leaves (zeros) is what the next finds.
size_t decode_counter_bytes() { return align_up(2 * static_cast<size_t>(device_sms()) * sizeof(int), 256); }

// Whether decode_mma_kernel merges its splits itself (default) or combine_kernel does
// (KILN_ATTN_COMBINE_FUSION=0, or set_attention_combine_fusion).
std::atomic<int>& combine_fusion_flag() {
  static std::atomic<int> flag{[] {
    const char* e = std::getenv("KILN_ATTN_COMBINE_FUSION");
    return e && e[0] == '0' && e[1] == 0 ? 0 : 1;
  }()};
  return flag;
}

// Workspace of one decode launch: the counters, [T, H, splits] lse, then [T, H, splits, d] outputs (none
// for one split).
size_t decode_workspace_bytes(const AttentionParams& p, int64_t num_tokens, int splits) {
  if (splits <= 1) return 0;
  const size_t rows = static_cast<size_t>(num_tokens) * p.num_heads * splits;
  return decode_counter_bytes() + align_up(rows * sizeof(float), 256) + rows * p.head_dim * sizeof(float);
}

void check_params(const AttentionParams& p) {
  KILN_CHECK(p.num_heads > 0 && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
             "paged_attention: num_heads (" + std::to_string(p.num_heads) + ") must be a positive multiple of "
             "num_kv_heads (" + std::to_string(p.num_kv_heads) + ")");
  KILN_CHECK(p.head_dim > 0 && p.head_dim <= 256,
             "paged_attention: head_dim " + std::to_string(p.head_dim) + " not in [1, 256]");
  KILN_CHECK(p.window >= 0, "paged_attention: negative window");
}

void check_error(cudaError_t e, const char* what) {
  KILN_CHECK(e == cudaSuccess, std::string(what) + ": launch failed: " + cudaGetErrorString(e));
}

dim3 decode_grid(const DecodeArgs& a, int64_t items) {
  return dim3(static_cast<unsigned>(items), static_cast<unsigned>(a.KVH * a.hgroups),
              static_cast<unsigned>(a.num_splits));
}

template <typename T, int DMAX, int VEC, int G>
void launch_decode(const DecodeArgs& a, int64_t T_, cudaStream_t stream) {
  check_error(launch_kernel(decode_kernel<T, DMAX, VEC, G>, decode_grid(a, T_), dim3(kThreads), 0, stream, a),
              "paged_attention (decode)");
}

template <typename T, int DMAX, int VEC>
void launch_decode_g(const DecodeArgs& a, int G, int64_t T_, cudaStream_t stream) {
  switch (G) {
    case 1: launch_decode<T, DMAX, VEC, 1>(a, T_, stream); break;
    case 2: launch_decode<T, DMAX, VEC, 2>(a, T_, stream); break;
    case 4: launch_decode<T, DMAX, VEC, 4>(a, T_, stream); break;
    default: launch_decode<T, DMAX, VEC, 8>(a, T_, stream); break;
  }
}

// The CUDA-core decode kernel: every f32 head dim, and head dim 256 in f16/bf16.
template <typename T>
void launch_decode_d(const DecodeArgs& a, int G, int64_t T_, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if constexpr (std::is_same_v<T, float>) {
    switch (a.d) {
      case 16: launch_decode_g<T, 16, V>(a, G, T_, stream); return;
      case 32: launch_decode_g<T, 32, V>(a, G, T_, stream); return;
      case 64: launch_decode_g<T, 64, V>(a, G, T_, stream); return;
      case 96: launch_decode_g<T, 96, V>(a, G, T_, stream); return;
      case 128: launch_decode_g<T, 128, V>(a, G, T_, stream); return;
      case 256: launch_decode_g<T, 256, V>(a, G, T_, stream); return;
      default: break;
    }
    // Any other f32 head dim: a 256-wide kernel with masked chunks (16-byte chunks when rows allow).
    if (a.d % 4 == 0) launch_decode_g<float, 256, 4>(a, G, T_, stream);
    else launch_decode_g<float, 256, 1>(a, G, T_, stream);
  } else {
    KILN_CHECK(a.d == 256, "paged_attention: head_dim " + std::to_string(a.d) +
                               " unsupported for f16/bf16 (16, 32, 64, 96, 128 or 256)");
    launch_decode_g<T, 256, V>(a, G, T_, stream);
  }
}

template <typename T, class C, bool FUSED>
void launch_decode_mma(const DecodeArgs& a, int64_t items, cudaStream_t stream) {
  constexpr int kSmem = FUSED ? C::SMEM_FUSED : C::SMEM;
  if constexpr (kSmem > 48 * 1024) {
    // Once per device (the attribute is per device context).
    static std::atomic<uint64_t> raised{0};
    int dev = 0;
    check_error(cudaGetDevice(&dev), "paged_attention (decode)");
    const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
    if (bit == 0 || !(raised.load(std::memory_order_relaxed) & bit)) {
      const cudaError_t e = cudaFuncSetAttribute(decode_mma_kernel<T, C, FUSED>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      KILN_CHECK(e == cudaSuccess, std::string("paged_attention: cudaFuncSetAttribute(") +
                                       std::to_string(kSmem) + " bytes of shared memory) failed: " +
                                       cudaGetErrorString(e));
      raised.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  check_error(launch_kernel(decode_mma_kernel<T, C, FUSED>, decode_grid(a, items), dim3(C::THREADS),
                            static_cast<size_t>(kSmem), stream, a),
              "paged_attention (decode)");
}

template <typename T, bool FUSED = false>
void launch_decode_mma_d(const DecodeArgs& a, int64_t items, cudaStream_t stream) {
  if constexpr (!FUSED) {  // head dim 16 has no whole rotary k-steps: never fused
    if (a.d == 16) return launch_decode_mma<T, DecodeMmaCfg<16, 4>, false>(a, items, stream);
  }
  switch (a.d) {
    case 32: launch_decode_mma<T, DecodeMmaCfg<32, 4>, FUSED>(a, items, stream); return;
    case 64: launch_decode_mma<T, DecodeMmaCfg<64, 4>, FUSED>(a, items, stream); return;
    case 96: launch_decode_mma<T, DecodeMmaCfg<96, 3>, FUSED>(a, items, stream); return;
    case 128: launch_decode_mma<T, DecodeMmaCfg<128, 3>, FUSED>(a, items, stream); return;
    default:
      KILN_CHECK(false, "paged_attention: head_dim " + std::to_string(a.d) + " has no mma decode kernel");
  }
}

template <typename T, class C>
void launch_prefill(const PrefillArgs& a, int32_t num_seqs, int32_t max_new, cudaStream_t stream) {
  // Per launch (cheap), so it holds for whichever device is current.
  const cudaError_t e = cudaFuncSetAttribute(prefill_kernel<T, C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(C::SMEM));
  KILN_CHECK(e == cudaSuccess, std::string("paged_attention: cudaFuncSetAttribute(") + std::to_string(C::SMEM) +
                                   " bytes of shared memory) failed: " + cudaGetErrorString(e));
  const int64_t qtiles = ceil_div(max_new, C::BM);
  KILN_CHECK(qtiles <= 65535, "paged_attention: prompt of " + std::to_string(max_new) + " tokens too long");
  const dim3 grid(static_cast<unsigned>(a.H), static_cast<unsigned>(num_seqs), static_cast<unsigned>(qtiles));
  prefill_kernel<T, C><<<grid, C::THREADS, C::SMEM, stream>>>(a);
}

// The prefill kernel's shape per head dim. Measured on an H100 (one 2048-token prompt, H=32, KVH=8, D=128;
// one 1024-token prompt, H=KVH=32, D=96), f16, us per launch:
//   shape (warps x m-tiles, Q, stages, CTAs/SM)      D=128   D=96
//   8 x 1, Q in registers, 3 stages                  163.3   39.1
//   same, software-pipelined (PIPE)                  160.5   38.5
//   8 x 1, Q in shared memory, 2 stages, 2 per SM    156.7   45.4   (128 registers, a few spilled)
//   4 x 1, Q in registers, 3 stages, 2 per SM        169.2   41.4
//   4 x 2, Q in shared memory, 2 stages, 2 per SM    178.2   45.1   (spills)
// (the kernel before this one, 4 x 1 with Q re-read from shared memory and double buffering: 284.7 and 61.8).
template <typename T>
void launch_prefill_d(const PrefillArgs& a, int d, int32_t num_seqs, int32_t max_new, cudaStream_t stream) {
  switch (d) {
    case 16: launch_prefill<T, PrefillCfg<16, 8, 1, true, 3, 1>>(a, num_seqs, max_new, stream); break;
    case 32: launch_prefill<T, PrefillCfg<32, 8, 1, true, 3, 1>>(a, num_seqs, max_new, stream); break;
    case 64: launch_prefill<T, PrefillCfg<64, 8, 1, true, 3, 1>>(a, num_seqs, max_new, stream); break;
    case 96: launch_prefill<T, PrefillCfg<96, 8, 1, true, 3, 1, true>>(a, num_seqs, max_new, stream); break;
    case 128: launch_prefill<T, PrefillCfg<128, 8, 1, false, 2, 2>>(a, num_seqs, max_new, stream); break;
    case 256: launch_prefill<T, PrefillCfg<256, 4, 1, false, 2, 1>>(a, num_seqs, max_new, stream); break;
    default:
      KILN_CHECK(false, "paged_attention: head_dim " + std::to_string(d) +
                            " unsupported for f16/bf16 (16, 32, 64, 96, 128 or 256)");
  }
}

// cos_sin set: fused with RoPE (rope_kv_write_attention; q is the qkv buffer, every token decode, mma kernel).
template <typename T>
void run_attention(const void* q, const DeviceKv& kv, const DeviceBatch& b, const AttentionParams& p, void* out,
                   void* workspace, size_t workspace_bytes, cudaStream_t stream, const float* cos_sin = nullptr) {
  const bool fused = cos_sin != nullptr;
  const int rep = p.num_heads / p.num_kv_heads;
  int shift = 0;
  while ((1 << shift) < b.block_size) ++shift;
  const float scale_log2 = p.scale * kLog2e;
  constexpr bool kF32 = std::is_same_v<T, float>;

  // Which tokens each kernel takes. f32 (or a scale that is not > 0, which the prefill kernel's softmax
  // does not handle): the decode kernel, all of them. f16/bf16 with the batch's split (prefill_seqs set):
  // prefill kernel over the long sequences, decode kernel over the others' tokens; without it: all by the
  // prefill kernel when some sequence adds more than kDecodeMaxNew tokens.
  const bool prefill_ok = !kF32 && p.scale > 0.0f;
  const int32_t* prefill_list = nullptr;
  int32_t prefill_count = 0, prefill_max_new = 0;
  const int32_t* decode_list = nullptr;
  int32_t decode_count = b.num_tokens;
  if (prefill_ok && b.prefill_seqs) {
    prefill_list = b.prefill_seqs;
    prefill_count = b.num_prefill_seqs;
    prefill_max_new = b.max_prefill_new;
    decode_list = b.num_prefill_seqs > 0 ? b.decode_tokens : nullptr;
    decode_count = b.num_prefill_seqs > 0 ? b.num_decode_tokens : b.num_tokens;
  } else if (prefill_ok && b.max_num_new > kDecodeMaxNew && !fused) {
    prefill_count = b.num_seqs;
    prefill_max_new = b.max_num_new;
    decode_count = 0;
  }

  if (prefill_count > 0) {
    KILN_CHECK(prefill_count <= 65535, "paged_attention: more than 65535 sequences in a batch");
    PrefillArgs a{};
    a.q = q;
    a.k = kv.k;
    a.v = kv.v;
    a.out = out;
    a.seqs = prefill_list;
    a.seq_first_token = b.seq_first_token;
    a.seq_num_new = b.seq_num_new;
    a.seq_context_len = b.seq_context_len;
    a.block_tables = b.block_tables;
    a.max_blocks_per_seq = b.max_blocks_per_seq;
    a.block_size = b.block_size;
    a.block_shift = shift;
    a.H = p.num_heads;
    a.KVH = p.num_kv_heads;
    a.rep = rep;
    a.window = p.window;
    a.scale_log2 = scale_log2;
    if constexpr (!kF32) {  // Hopper: the wgmma kernel where it applies (attention_prefill_sm90.cu)
      if (!prefill_attention_sm90(q, kv, b, p, out, std::is_same_v<T, __nv_bfloat16>, prefill_list, prefill_count,
                                  prefill_max_new, stream))
        launch_prefill_d<T>(a, p.head_dim, prefill_count, prefill_max_new, stream);
    }
    check_launch("paged_attention (prefill)");
  }
  if (decode_count <= 0) return;

  const bool mma = decode_uses_mma(kF32, p.head_dim);
  KILN_CHECK(!fused || (mma && prefill_count == 0 && decode_list == nullptr),
             "rope_kv_write_attention: not a decode batch for the mma kernel");
  const int hgroups = decode_hgroups(rep, mma);
  const int splits = decode_splits(p, decode_count, b.max_context_len, hgroups);
  const size_t need = decode_workspace_bytes(p, decode_count, splits);
  KILN_CHECK(need <= workspace_bytes && (need == 0 || workspace != nullptr),
             "paged_attention: workspace of " + std::to_string(workspace_bytes) + " bytes, this batch needs " +
                 std::to_string(need) + " (size it with attention_workspace_bytes for at least " +
                 std::to_string(b.num_tokens) + " tokens and context " + std::to_string(b.max_context_len) + ")");
  KILN_CHECK(decode_count <= 0x7fffffff && p.num_kv_heads * hgroups <= 65535, "paged_attention: grid too large");
  DecodeArgs a{};
  a.q = q;
  a.k = kv.k;
  a.v = kv.v;
  a.out = out;
  const bool combine_in_kernel = mma && splits > 1 && combine_fusion_flag().load(std::memory_order_relaxed) != 0;
  if (splits > 1) {
    const size_t rows = static_cast<size_t>(decode_count) * p.num_heads * splits;
    char* const ws = static_cast<char*>(workspace);
    KILN_CHECK(static_cast<size_t>(decode_count) * p.num_kv_heads * hgroups * sizeof(int) <= decode_counter_bytes(),
               "paged_attention: more split CTA groups than counters");
    if (combine_in_kernel) a.counters = reinterpret_cast<int*>(ws);
    a.ws_lse = reinterpret_cast<float*>(ws + decode_counter_bytes());
    a.ws_o = reinterpret_cast<float*>(ws + decode_counter_bytes() + align_up(rows * sizeof(float), 256));
  }
  a.tokens = decode_list;
  a.token_seq = b.token_seq;
  a.token_pos = b.token_pos;
  a.block_tables = b.block_tables;
  a.max_blocks_per_seq = b.max_blocks_per_seq;
  a.block_size = b.block_size;
  a.block_shift = shift;
  a.H = p.num_heads;
  a.KVH = p.num_kv_heads;
  a.d = p.head_dim;
  a.rep = rep;
  a.hgroups = hgroups;
  a.window = p.window;
  a.chunk = static_cast<int>(split_chunk(std::max<int64_t>(max_key_range(p, b.max_context_len), 1), splits));
  a.num_splits = splits;
  a.scale_log2 = scale_log2;
  a.q_stride = static_cast<int64_t>(fused ? p.num_heads + 2 * p.num_kv_heads : p.num_heads) * p.head_dim;
  a.cos_sin = cos_sin;
  if (mma) {
    if constexpr (!kF32) {
      if (fused) launch_decode_mma_d<T, true>(a, decode_count, stream);
      else launch_decode_mma_d<T>(a, decode_count, stream);
    }
  } else {
    launch_decode_d<T>(a, decode_group(rep), decode_count, stream);
  }
  if (splits > 1 && !combine_in_kernel) {
    const int64_t rows = static_cast<int64_t>(decode_count) * p.num_heads;
    constexpr int kRowsPerCta = kThreads / 32;
    check_error(launch_kernel(combine_kernel<T>, dim3(static_cast<unsigned>(ceil_div(rows, kRowsPerCta))),
                              dim3(kThreads), 0, stream, static_cast<const float*>(a.ws_lse),
                              static_cast<const float*>(a.ws_o), static_cast<T*>(out), p.head_dim, splits,
                              decode_list, p.num_heads, rows),
                "paged_attention (combine splits)");
  }
}

}  // namespace

size_t attention_workspace_bytes(const AttentionParams& p, int32_t max_tokens, int32_t max_context_len) {
  check_params(p);
  // The largest decode launch of up to max_tokens tokens, for either decode kernel (the dtype is not known
  // here); a launch of at least 2 CTAs per SM takes one split.
  size_t best = 0;
  const int rep = p.num_heads / p.num_kv_heads;
  const int64_t sms = device_sms();
  for (bool mma : {false, true}) {
    const int hgroups = decode_hgroups(rep, mma);
    const int64_t t_max = std::min<int64_t>(max_tokens, ceil_div(2 * sms, int64_t{p.num_kv_heads} * hgroups));
    for (int64_t t = 1; t <= t_max; ++t)
      best = std::max(best, decode_workspace_bytes(
                                p, t, decode_splits(p, t, std::max<int32_t>(max_context_len, 1), hgroups)));
  }
  return best;
}

size_t attention_workspace_counter_bytes() { return decode_counter_bytes(); }

void set_attention_combine_fusion(bool on) { combine_fusion_flag().store(on ? 1 : 0, std::memory_order_relaxed); }

void paged_attention(const void* q, DType act, const DeviceKv& kv, const DeviceBatch& b, const AttentionParams& p,
                     void* out, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check_params(p);
  KILN_CHECK(act == DType::kF32 || act == DType::kF16 || act == DType::kBF16,
             std::string("paged_attention: unsupported activation dtype ") + dtype_name(act));
  KILN_CHECK(kv.dtype == act, std::string("paged_attention: KV cache dtype ") + dtype_name(kv.dtype) +
                                  " must match the activation dtype " + dtype_name(act));
  KILN_CHECK(kv.num_kv_heads == p.num_kv_heads && kv.head_dim == p.head_dim,
             "paged_attention: KV pool heads/head_dim (" + std::to_string(kv.num_kv_heads) + ", " +
                 std::to_string(kv.head_dim) + ") differ from the params (" + std::to_string(p.num_kv_heads) +
                 ", " + std::to_string(p.head_dim) + ")");
  KILN_CHECK(b.block_size > 0 && (b.block_size & (b.block_size - 1)) == 0,
             "paged_attention: block_size " + std::to_string(b.block_size) + " is not a power of two");
  if (b.num_tokens <= 0) return;
  KILN_CHECK(b.max_num_new > 0 && b.max_context_len >= b.max_num_new,
             "paged_attention: max_num_new / max_context_len not set on the DeviceBatch");
  KILN_CHECK(q && out && kv.k && kv.v && b.token_seq && b.token_pos && b.seq_first_token && b.seq_num_new &&
                 b.seq_context_len && b.block_tables,
             "paged_attention: null pointer");
  // 16-byte vector accesses of rows of head_dim elements (odd f32 head dims fall back to scalars).
  const size_t row_bytes = static_cast<size_t>(p.head_dim) * dtype_size(act);
  const size_t align = row_bytes % 16 == 0 ? 16 : dtype_size(act);
  KILN_CHECK(is_aligned(q, align) && is_aligned(out, align) && is_aligned(kv.k, align) && is_aligned(kv.v, align),
             "paged_attention: q/out/K/V not " + std::to_string(align) + "-byte aligned");
  KILN_CHECK(workspace == nullptr || is_aligned(workspace, 16), "paged_attention: workspace not 16-byte aligned");
  switch (act) {
    case DType::kF32: run_attention<float>(q, kv, b, p, out, workspace, workspace_bytes, stream); break;
    case DType::kF16: run_attention<__half>(q, kv, b, p, out, workspace, workspace_bytes, stream); break;
    default: run_attention<__nv_bfloat16>(q, kv, b, p, out, workspace, workspace_bytes, stream); break;
  }
}

bool rope_attention_fusable(const void* qkv, DType act, const QkvParams& qp, const float* cos_sin,
                            const DeviceBatch& b, const DeviceKv& kv, const AttentionParams& p, const void* out) {
  return (act == DType::kF16 || act == DType::kBF16) && kv.dtype == act && b.num_tokens > 0 &&
         b.max_num_new == 1 && b.num_prefill_seqs == 0 && qp.num_heads == p.num_heads &&
         qp.num_kv_heads == p.num_kv_heads && qp.head_dim == p.head_dim && qp.rotary_dim == qp.head_dim &&
         !qp.q_norm && !qp.k_norm && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0 &&
         decode_uses_mma(false, p.head_dim) && p.head_dim % 32 == 0 && kv.num_kv_heads == p.num_kv_heads &&
         kv.head_dim == p.head_dim && b.block_size > 0 && (b.block_size & (b.block_size - 1)) == 0 && qkv &&
         cos_sin && out && kv.k && kv.v && is_aligned(qkv, 16) && is_aligned(cos_sin, 16) && is_aligned(out, 16) &&
         is_aligned(kv.k, 16) && is_aligned(kv.v, 16);
}

void rope_kv_write_attention(const void* qkv, DType act, const QkvParams& qp, const float* cos_sin,
                             const DeviceBatch& b, const DeviceKv& kv, const AttentionParams& p, void* out,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check_params(p);
  KILN_CHECK(rope_attention_fusable(qkv, act, qp, cos_sin, b, kv, p, out),
             "rope_kv_write_attention: outside the fused op's scope (see rope_attention_fusable)");
  KILN_CHECK(b.max_context_len >= 1 && b.token_seq && b.token_pos && b.block_tables,
             "rope_kv_write_attention: bad batch");
  KILN_CHECK(workspace == nullptr || is_aligned(workspace, 16),
             "rope_kv_write_attention: workspace not 16-byte aligned");
  if (act == DType::kF16) run_attention<__half>(qkv, kv, b, p, out, workspace, workspace_bytes, stream, cos_sin);
  else run_attention<__nv_bfloat16>(qkv, kv, b, p, out, workspace, workspace_bytes, stream, cos_sin);
}

}  // namespace kiln::cuda
