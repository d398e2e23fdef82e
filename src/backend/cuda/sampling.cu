// Sampling on the GPU, bit-compatible with the host's LogitsProcessor::apply + TokenSampler::sample (see
// sampling.h). One 1024-thread block per logit row, or (sm_90, batches up to 66 rows) a cluster of 2-8 blocks
// that split the row into slices and combine every sum, max and histogram through distributed shared memory,
// in rank order, so that all blocks take the same decisions. Each step is a pass over the row (or slice):
//   0. penalties of the row's PenaltyDev range, in place, in the host's float operations and order;
//   greedy rows (temperature 0, top_k 1, or top_k 0 with top_p 0): the argmax (first index on ties, a NaN at
//   index 0 wins, NaN elsewhere never: the host's scan), and the log-prob pass when asked;
//   otherwise, over v = logits / T (float division, skipped at T 0 and 1; NaN read as -inf):
//   1. the max (fused into top-k's first pass);
//   2. top-k (0 < k < vocab): a radix select of the k-th entry in rank order (value, then lower id) over an
//      order-preserving 32-bit key, 12 + 10 + 10 bits (count histograms in shared memory). For k <= 4096 it
//      stops at the first level whose bins at and above the k-th's hold <= 4096 entries: those are gathered into
//      shared memory, sorted (bitonic) by rank, and the first k kept, then top-p and the draw run there too.
//      Larger k: exact levels; ties at the k-th value straddling the cut are resolved in id order by one pass;
//   3. top-p (0 < p < 1) otherwise: the host's scheme (select_nucleus): the mass of the survivors (double) and
//      a mass histogram over 4096 value intervals below the max (entries of weight below (1 - p) / (2 vocab)
//      left out: they cannot reach the nucleus) find the interval where the cumulative mass reaches p * total;
//      when everything down to it fits, it is gathered and the nucleus cut and draw happen in shared memory;
//      else that interval alone is gathered and sorted to give the exact cut (a radix select by mass when even
//      it does not fit). An entry stays when the mass ranked above it is < p * total;
//   4. the draw: u = philox_uniform(seed, step) (executor/philox.h, the host's code); the first entry in
//      token-id order whose cumulative kept weight exp(v - max) exceeds u * total: a scan of sorted survivors in
//      shared memory, or over the row: per-1024-entry chunk sums (double), a scan over the chunks, a scan of the
//      chosen chunk; rounding past the end takes the last kept entry of positive weight, as the host;
//   5. the log-prob: v[token] - (max + log(sum exp(v - max))) (double), the host's expression.
// Sums are in double where the host sums in double (float partial sums of 4 terms in the row walk, as the host's
// 8-term float lanes); the host's vector exp and the GPU's expf can differ in the last bit, so a draw can differ
// only when u lands within ~1e-7 relative of a CDF step or of a top-p cut.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <string>

#include "backend/cuda/pdl.cuh"
#include "backend/cuda/sampling.h"
#include "core/status.h"
#include "executor/philox.h"

namespace kiln::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 1024;       // entries per CDF chunk (the host's kCdfBlock)
constexpr int kMaxChunks = kThreads;  // one chunk per thread in the chunk scan: vocab <= 1M
constexpr unsigned kFull = 0xffffffffu;

constexpr int kCand = 4096;  // candidates sorted in shared memory (top-k up to this, a small nucleus)

struct Smem {
  union {
    double mass[4096];        // mass histogram (top-p select)
    uint64_t cand[kCand];     // candidates: (key << 32 | ~id) in rank order, then (id << 32 | key)
  };
  double chunk[kMaxChunks];  // chunk sums of the draw
  uint32_t cnt[4096];        // count histogram
  uint64_t cand_local[kCand];  // (a row split over a cluster) this block's candidates, before they are merged
};

// A row may be split over the blocks of a thread-block cluster (sm_90: small batches use more SMs per row);
// every decision is taken from cluster-wide sums that each block computes alike, so the blocks stay in step.
__device__ __forceinline__ unsigned cl_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}
__device__ __forceinline__ unsigned cl_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().num_blocks();
#else
  return 1;
#endif
}
__device__ __forceinline__ void cl_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __syncthreads();
#endif
}
template <typename T>
__device__ __forceinline__ T* cl_map(T* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  return p;
#endif
}

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
__device__ __forceinline__ int warp_id() { return threadIdx.x >> 5; }

// Order-preserving key: larger float, larger key; NaN reads as -inf, -0 as +0 (equal values rank by id).
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) v = -INFINITY;
  if (v == 0.0f) v = 0.0f;
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Block-wide reductions (every thread gets the result; `red` may be reused after they return).
__device__ double block_sum(double v, double* red) {
  v = warp_sum(v);
  if (lane_id() == 0) red[warp_id()] = v;
  __syncthreads();
  double t = lane_id() < kWarps ? red[lane_id()] : 0.0;
  t = warp_sum(t);
  __syncthreads();
  return t;
}
__device__ float block_max(float v, float* red) {
  v = warp_max(v);
  if (lane_id() == 0) red[warp_id()] = v;
  __syncthreads();
  float t = lane_id() < kWarps ? red[lane_id()] : -INFINITY;
  t = warp_max(t);
  __syncthreads();
  return t;
}
__device__ int block_max_int(int v, int* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  if (lane_id() == 0) red[warp_id()] = v;
  __syncthreads();
  int t = lane_id() < kWarps ? red[lane_id()] : INT_MIN;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t = max(t, __shfl_xor_sync(kFull, t, o));
  __syncthreads();
  return t;
}
// Exclusive scan over the block in thread order; *total gets the sum.
__device__ double block_excl_scan(double v, double* red, double* total) {
  const int lane = lane_id(), warp = warp_id();
  double x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(kFull, x, o);
    if (lane >= o) x += y;
  }
  double ex = __shfl_up_sync(kFull, x, 1);
  if (lane == 0) ex = 0.0;
  if (lane == 31) red[warp] = x;
  __syncthreads();
  double wx = lane < kWarps ? red[lane] : 0.0;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(kFull, wx, o);
    if (lane >= o) wx += y;
  }
  const double off = __shfl_sync(kFull, wx, warp > 0 ? warp - 1 : 0);
  *total = __shfl_sync(kFull, wx, 31);
  __syncthreads();
  return (warp > 0 ? off : 0.0) + ex;
}

// The row being sampled: raw logits (penalties applied), and how a value is read (v = raw / T, NaN -> -inf).
struct Row {
  float* x;
  int vocab;
  int begin, end;  // this block's slice [begin, end) of the row (the whole row without a cluster)
  int cpb;         // chunks (kChunk entries) per block's slice
  bool vec;  // float4 loads (vocab % 4 == 0, 16-byte aligned row)
  bool div;
  float t;
  __device__ __forceinline__ float proc(float raw) const {
    const float v = div ? __fdiv_rn(raw, t) : raw;
    return v != v ? -INFINITY : v;
  }
};

// f(i, raw) for every entry; each thread visits its indices in rising order, 4 loads in flight.
template <typename F>
__device__ __forceinline__ void for_each(const Row& r, F&& f) {
  const int B = blockDim.x;
  if (r.vec) {
    const float4* p = reinterpret_cast<const float4*>(r.x);
    const int ng = r.end >> 2;
    int g = (r.begin >> 2) + threadIdx.x;
    for (; g + 3 * B < ng; g += 4 * B) {
      float4 a[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = p[g + u * B];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = 4 * (g + u * B);
        f(i, a[u].x);
        f(i + 1, a[u].y);
        f(i + 2, a[u].z);
        f(i + 3, a[u].w);
      }
    }
    for (; g < ng; g += B) {
      const float4 a = p[g];
      const int i = 4 * g;
      f(i, a.x);
      f(i + 1, a.y);
      f(i + 2, a.z);
      f(i + 3, a.w);
    }
  } else {
    int i = r.begin + threadIdx.x;
    for (; i + 3 * B < r.end; i += 4 * B) {
      float a[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = r.x[i + u * B];
#pragma unroll
      for (int u = 0; u < 4; ++u) f(i + u * B, a[u]);
    }
    for (; i < r.end; i += B) f(i, r.x[i]);
  }
}

// A prefix of the rank order: entry (key, id) is in it when key > thr, or key == thr and id <= idcut.
struct Cut {
  uint32_t thr = 0;
  int idcut = INT_MAX;
};
__device__ __forceinline__ bool keeps(const Cut& c, uint32_t key, int i) {
  return key > c.thr || (key == c.thr && i <= c.idcut);
}

struct Shared {
  double red_d[32];
  float red_f[32];
  int red_i[32];
  int s_int[4];
  double s_dbl[4];
  double x_d;  // cluster exchange slots
  float x_f;
  int x_i, x_n;
};

// Row-wide reductions over the cluster (the blocks' totals combined in rank order: the same in every block).
__device__ double cl_sum(double v, Shared& sh) {
  const double t = block_sum(v, sh.red_d);
  const unsigned cs = cl_size();
  if (cs == 1) return t;
  if (threadIdx.x == 0) sh.x_d = t;
  cl_sync();
  double s = 0;
  for (unsigned k = 0; k < cs; ++k) s += *cl_map(&sh.x_d, k);
  cl_sync();
  return s;
}
__device__ float cl_max(float v, Shared& sh) {
  const float t = block_max(v, sh.red_f);
  const unsigned cs = cl_size();
  if (cs == 1) return t;
  if (threadIdx.x == 0) sh.x_f = t;
  cl_sync();
  float m = -INFINITY;
  for (unsigned k = 0; k < cs; ++k) m = fmaxf(m, *cl_map(&sh.x_f, k));
  cl_sync();
  return m;
}
__device__ int cl_max_int(int v, Shared& sh) {
  const int t = block_max_int(v, sh.red_i);
  const unsigned cs = cl_size();
  if (cs == 1) return t;
  if (threadIdx.x == 0) sh.x_i = t;
  cl_sync();
  int m = INT_MIN;
  for (unsigned k = 0; k < cs; ++k) m = max(m, *cl_map(&sh.x_i, k));
  cl_sync();
  return m;
}
// Sums the blocks' histograms bins [0, nb) (counts, and masses when `mass`) into every block's own.
__device__ void cl_combine_hist(Smem& sm, int nb, bool mass) {
  const unsigned cs = cl_size();
  if (cs == 1) return;
  cl_sync();
  constexpr int kMaxPer = 4096 / kThreads;
  uint32_t c[kMaxPer];
  double m[kMaxPer];
#pragma unroll
  for (int q = 0; q < kMaxPer; ++q) {
    const int b = threadIdx.x + q * kThreads;
    c[q] = 0;
    m[q] = 0.0;
    if (b < nb)
      for (unsigned k = 0; k < cs; ++k) {
        c[q] += cl_map(sm.cnt, k)[b];
        if (mass) m[q] += cl_map(sm.mass, k)[b];
      }
  }
  cl_sync();
#pragma unroll
  for (int q = 0; q < kMaxPer; ++q) {
    const int b = threadIdx.x + q * kThreads;
    if (b < nb) {
      sm.cnt[b] = c[q];
      if (mass) sm.mass[b] = m[q];
    }
  }
  __syncthreads();
}

// The id of the n-th (1-based) entry, in token-id order, with key == k among those `in` keeps.
__device__ int nth_equal(const Row& r, const Cut& in, uint32_t k, int n, Shared& sh) {
  const int lane = lane_id(), warp = warp_id();
  if (threadIdx.x == 0) sh.s_int[1] = -1;
  int running = 0;
  for (int base = 0; base < r.vocab; base += blockDim.x) {
    const int i = base + threadIdx.x;
    bool flag = false;
    if (i < r.vocab) {
      const uint32_t key = order_key(r.proc(r.x[i]));
      flag = key == k && keeps(in, key, i);
    }
    const unsigned bal = __ballot_sync(kFull, flag);
    if (lane == 0) sh.red_i[warp] = __popc(bal);
    __syncthreads();
    int pre = 0, tot = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int c = sh.red_i[w];
      tot += c;
      if (w < warp) pre += c;
    }
    pre += __popc(bal & ((1u << lane) - 1u));
    if (flag && running + pre + 1 == n) sh.s_int[1] = i;
    running += tot;
    __syncthreads();
    if (running >= n) break;
  }
  const int id = sh.s_int[1];
  __syncthreads();
  return id;
}

// The cut of the rank order among the entries `in` keeps: by count (`mass` false), the prefix of the
// `target` best entries; by mass, the prefix that ends with the first entry whose cumulative weight
// exp(v - mx) reaches `target` (all of `in` when none does).
// max_out (not null): also the row's max, from the first level's pass.
// superset (not null, count mode): may stop early with the cut of every entry ranked at or above the bin that
// holds the target-th, when there are at most kCand of them (*superset set true): a rank prefix the caller cuts.
__device__ Cut select_cut(const Row& r, Smem& sm, Shared& sh, bool mass, const Cut& in, double target, float mx,
                          float* max_out = nullptr, bool* superset = nullptr) {
  uint32_t prefix = 0;
  int resolved = 0;
  double cum = 0;  // count / mass of `in` ranked above the current prefix's bin
  uint32_t last_c = 0;
  const int tid = threadIdx.x;
  for (int level = 0; level < 3; ++level) {
    const int bits = level == 0 ? 12 : 10;
    const int shift = 32 - resolved - bits;
    const int nb = 1 << bits;
    for (int b = tid; b < nb; b += blockDim.x) {
      sm.cnt[b] = 0;
      if (mass) sm.mass[b] = 0.0;
    }
    __syncthreads();
    const int res = resolved;
    const uint32_t pre = prefix;
    float m = -INFINITY;
    for_each(r, [&](int i, float raw) {
      const float v = r.proc(raw);
      m = fmaxf(m, v);
      const uint32_t key = order_key(v);
      if (!keeps(in, key, i)) return;
      if (res > 0 && (key >> (32 - res)) != pre) return;
      const uint32_t d = (key >> shift) & static_cast<uint32_t>(nb - 1);
      atomicAdd(&sm.cnt[d], 1u);
      if (mass) atomicAdd(&sm.mass[d], static_cast<double>(expf(v - mx)));
    });
    if (level == 0 && max_out) *max_out = cl_max(m, sh);  // (syncs)
    __syncthreads();
    cl_combine_hist(sm, nb, mass);
    // Bins in descending digit order: thread t owns positions [t * per, (t + 1) * per), position q = digit nb-1-q.
    const int per = nb / blockDim.x;
    double local = 0;
    for (int j = 0; j < per; ++j) {
      const int d = nb - 1 - (tid * per + j);
      local += mass ? sm.mass[d] : static_cast<double>(sm.cnt[d]);
    }
    double total;
    const double ex = block_excl_scan(local, sh.red_d, &total);
    if (tid == 0) sh.s_int[0] = INT_MAX;
    __syncthreads();
    double run = cum + ex;
    int found = INT_MAX;
    double run_before = 0;
    for (int j = 0; j < per; ++j) {
      const int d = nb - 1 - (tid * per + j);
      const double a = mass ? sm.mass[d] : static_cast<double>(sm.cnt[d]);
      if (run + a >= target) {
        found = tid * per + j;
        run_before = run;
        break;
      }
      run += a;
    }
    if (found != INT_MAX) atomicMin(&sh.s_int[0], found);
    __syncthreads();
    const int q = sh.s_int[0];
    if (q == INT_MAX) {  // (mass) rounding left the total below the target: keep all of `in`
      __syncthreads();
      return in;
    }
    if (found == q) sh.s_dbl[0] = run_before;
    __syncthreads();
    const int d = nb - 1 - q;
    cum = sh.s_dbl[0];
    const uint32_t c = sm.cnt[d];
    last_c = c;
    prefix = (prefix << bits) | static_cast<uint32_t>(d);
    resolved += bits;
    __syncthreads();  // everyone has read the bins before the next level clears them
    const bool whole = mass ? c == 1 : static_cast<double>(c) == target - cum;
    if (whole) return Cut{prefix << (32 - resolved), INT_MAX};
    if (superset && cum + c <= kCand) {
      *superset = true;
      return Cut{prefix << (32 - resolved), INT_MAX};
    }
  }
  // key == prefix exactly, count_eq > 1 equal entries: how many of them (in id order) the cut takes.
  const int count_eq = static_cast<int>(last_c);
  int n;
  if (!mass) {
    n = static_cast<int>(target - cum);
  } else {
    const double w = static_cast<double>(expf(key_value(prefix) - mx));
    const double q = ceil((target - cum) / w);
    n = q >= count_eq ? count_eq : static_cast<int>(q);
    if (n < 1) n = 1;
  }
  if (n >= count_eq) return Cut{prefix, INT_MAX};
  return Cut{prefix, nth_equal(r, in, prefix, n, sh)};
}

// The draw: the first entry in token-id order whose cumulative kept weight exceeds u * total. *s_all gets the
// sum of exp(v - mx) over the whole row when want_all.
__device__ int draw(const Row& r, Smem& sm, Shared& sh, const Cut& C, const Cut& P, float mx, float u, bool want_all,
                    double* s_all) {
  const int lane = lane_id(), warp = warp_id();
  (void)warp;
  const int nchunks = (r.vocab + kChunk - 1) / kChunk;
  const int c_begin = r.begin / kChunk, c_end = (r.end + kChunk - 1) / kChunk;
  double sall = 0;
  int lastpos = -1;
  for (int c = c_begin + warp; c < c_end; c += kWarps) {
    double s = 0;
    float fs = 0.0f, fa = 0.0f;  // float partial sums of 4 terms (the host folds 8-term float sums into double)
    auto add = [&](int i, float raw) {
      const float v = r.proc(raw);
      const uint32_t key = order_key(v);
      const float e = expf(v - mx);
      if (want_all) fa += e;
      if (keeps(C, key, i) && keeps(P, key, i) && e > 0.0f) {
        fs += e;
        lastpos = max(lastpos, i);
      }
    };
    auto flush = [&] {
      s += fs;
      sall += fa;
      fs = fa = 0.0f;
    };
    if (r.vec) {
      const float4* p = reinterpret_cast<const float4*>(r.x);
      const int ng = r.vocab >> 2;
      float4 a[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int g = c * (kChunk / 4) + lane + 32 * j;
        a[j] = g < ng ? p[g] : make_float4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int g = c * (kChunk / 4) + lane + 32 * j;
        if (g < ng) {
          add(4 * g, a[j].x);
          add(4 * g + 1, a[j].y);
          add(4 * g + 2, a[j].z);
          add(4 * g + 3, a[j].w);
          flush();
        }
      }
    } else {
#pragma unroll 8
      for (int j = 0; j < 32; ++j) {
        const int i = c * kChunk + lane + 32 * j;
        if (i < r.vocab) {
          add(i, r.x[i]);
          flush();
        }
      }
    }
    s = warp_sum(s);
    if (lane == 0) sm.chunk[c] = s;
  }
  if (want_all) *s_all = cl_sum(sall, sh);
  lastpos = cl_max_int(lastpos, sh);  // (syncs: the chunk sums are visible after it)
  const int tid = threadIdx.x;
  double sc = 0.0;
  if (cl_size() == 1) {
    sc = tid < nchunks ? sm.chunk[tid] : 0.0;
  } else {
    cl_sync();
    // Block k owns chunks [k cpb, (k + 1) cpb).
    if (tid < nchunks) sc = *cl_map(&sm.chunk[tid], static_cast<unsigned>(tid / r.cpb));
    cl_sync();
  }
  double total;
  const double ex = block_excl_scan(sc, sh.red_d, &total);
  const double target = static_cast<double>(u) * total;
  if (tid == 0) {
    sh.s_int[0] = INT_MAX;
    sh.s_int[2] = INT_MAX;
  }
  __syncthreads();
  if (tid < nchunks && ex + sc > target) atomicMin(&sh.s_int[0], tid);
  __syncthreads();
  const int c = sh.s_int[0];
  if (c != INT_MAX && tid == c) sh.s_dbl[1] = ex;
  __syncthreads();
  if (c != INT_MAX) {
    // The chunk's entries one per thread, in order: the first whose cumulative weight exceeds the target.
    const int i = c * kChunk + tid;
    float e = 0.0f;
    if (i < r.vocab) {
      const float v = r.proc(r.x[i]);
      const uint32_t key = order_key(v);
      const float ee = expf(v - mx);
      if (keeps(C, key, i) && keeps(P, key, i) && ee > 0.0f) e = ee;
    }
    double tot2;
    const double ex2 = block_excl_scan(static_cast<double>(e), sh.red_d, &tot2);
    if (e > 0.0f && sh.s_dbl[1] + ex2 + e > target) atomicMin(&sh.s_int[2], i);
  }
  __syncthreads();
  int token = sh.s_int[2];
  if (token == INT_MAX) token = lastpos >= 0 ? lastpos : 0;
  __syncthreads();
  return token;
}

// Appends every entry that pred(i, v, key) takes to sm.cand as (key << 32 | ~id) (unordered; warp-aggregated
// slots). Returns how many there are (more than kCand: only the first kCand were stored).
template <typename Pred>
__device__ int gather(const Row& r, Smem& sm, Shared& sh, Pred&& pred) {
  const unsigned cs = cl_size();
  uint64_t* out = cs == 1 ? sm.cand : sm.cand_local;
  if (threadIdx.x == 0) sh.s_int[0] = 0;
  __syncthreads();
  for_each(r, [&](int i, float raw) {
    const float v = r.proc(raw);
    const uint32_t key = order_key(v);
    const bool take = pred(i, v, key);
    const unsigned am = __activemask();
    const unsigned b = __ballot_sync(am, take);
    if (b == 0) return;
    const int lane = lane_id(), leader = __ffs(b) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(&sh.s_int[0], __popc(b));
    base = __shfl_sync(am, base, leader);
    if (take) {
      const int pos = base + __popc(b & ((1u << lane) - 1u));
      if (pos < kCand) out[pos] = (static_cast<uint64_t>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
    }
  });
  __syncthreads();
  const int n = sh.s_int[0];
  __syncthreads();
  if (cs == 1) return n;
  // Every block merges all blocks' candidates in rank order.
  if (threadIdx.x == 0) sh.x_n = n;
  cl_sync();
  int total = 0;
  for (unsigned k = 0; k < cs; ++k) {
    const int nk = *cl_map(&sh.x_n, k);
    const uint64_t* src = cl_map(sm.cand_local, k);
    for (int j = threadIdx.x; j < nk && total + j < kCand && j < kCand; j += blockDim.x) sm.cand[total + j] = src[j];
    total += nk;
  }
  cl_sync();
  return total;
}

// Ascending bitonic sort of s[0, n) in shared memory, n a power of two.
__device__ void bitonic_sort(uint64_t* s, int n) {
  for (int k = 2; k <= n; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int ixj = i ^ j;
        if (ixj > i) {
          const uint64_t a = s[i], b = s[ixj];
          if (((i & k) == 0) ? a > b : a < b) {
            s[i] = b;
            s[ixj] = a;
          }
        }
      }
      __syncthreads();
    }
}

// Top-p (when use_p: over sm.cand[0, n), a prefix of the rank order that holds the whole nucleus; the target is
// top_p * total_p, or top_p * the candidates' mass when total_p < 0) and the draw over the survivors, all in
// shared memory: sorted by rank, a scan of the weights cuts the nucleus; sorted by id, a scan walks the CDF.
// `limit` < n: sm.cand holds a rank prefix longer than the top-k; the first `limit` in rank order are the top-k.
__device__ int draw_candidates(Smem& sm, Shared& sh, int n, int limit, bool use_p, float top_p, double total_p,
                               float mx, float u) {
  uint64_t* s = sm.cand;
  const int tid = threadIdx.x;
  constexpr int kPer = kCand / kThreads;
  int n_pad = 1;
  while (n_pad < n) n_pad <<= 1;
  const int m = min(n, limit);
  int kept = m;
  if (use_p || m < n) {
    for (int i = tid; i < n_pad; i += blockDim.x) s[i] = i < n ? ~s[i] : ~uint64_t{0};
    __syncthreads();
    bitonic_sort(s, n_pad);  // ascending ~(key << 32 | ~id): rank order
    if (use_p) {
      double a[kPer], local = 0;
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int j = tid * kPer + q;
        a[q] = j < m ? static_cast<double>(expf(key_value(static_cast<uint32_t>(~s[j] >> 32)) - mx)) : 0.0;
        local += a[q];
      }
      double total;
      const double ex = block_excl_scan(local, sh.red_d, &total);
      const double target = static_cast<double>(top_p) * (total_p < 0.0 ? total : total_p);
      if (tid == 0) sh.s_int[0] = m;
      __syncthreads();
      double run = ex;
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int j = tid * kPer + q;
        if (j < m && run >= target) {
          atomicMin(&sh.s_int[0], j);
          break;
        }
        run += a[q];
      }
      __syncthreads();
      kept = max(sh.s_int[0], 1);
    }
    for (int i = tid; i < n_pad; i += blockDim.x) {
      const uint64_t k = ~s[i];
      s[i] = i < kept ? (static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(k)) << 32) | (k >> 32)
                      : ~uint64_t{0};
    }
  } else {
    for (int i = tid; i < n_pad; i += blockDim.x) {
      const uint64_t k = s[i];
      s[i] = i < n ? (static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(k)) << 32) | (k >> 32)
                   : ~uint64_t{0};
    }
  }
  __syncthreads();
  bitonic_sort(s, n_pad);  // ascending (id << 32 | key): token-id order
  double a[kPer], local = 0;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int j = tid * kPer + q;
    a[q] = j < kept ? static_cast<double>(expf(key_value(static_cast<uint32_t>(s[j])) - mx)) : 0.0;
    local += a[q];
  }
  double total;
  const double ex = block_excl_scan(local, sh.red_d, &total);
  const double target = static_cast<double>(u) * total;
  if (tid == 0) {
    sh.s_int[0] = INT_MAX;
    sh.s_int[2] = -1;
  }
  __syncthreads();
  double run = ex;
  bool found = false;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int j = tid * kPer + q;
    if (j < kept && a[q] > 0.0) {
      atomicMax(&sh.s_int[2], j);
      run += a[q];
      if (!found && run > target) {
        atomicMin(&sh.s_int[0], j);
        found = true;
      }
    }
  }
  __syncthreads();
  int pos = sh.s_int[0] != INT_MAX ? sh.s_int[0] : sh.s_int[2];
  if (pos < 0) pos = 0;
  const int token = static_cast<int>(s[pos] >> 32);
  __syncthreads();
  return token;
}

// Top-p over the entries C keeps, by the host's scheme (select_nucleus): a mass histogram over kBuckets value
// intervals below mx finds the interval where the cumulative mass reaches p * total; the intervals above it are
// kept whole, and the entries of that one interval are sorted (by value, then id) and walked. When everything
// down to that interval fits in shared memory, the draw happens there too (returns true, *token set); otherwise
// *P is the nucleus as a cut of the rank order for draw(). *total: the mass of C.
constexpr int kBuckets = 4096;
constexpr float kBucketScale = kBuckets / 40.0f;  // logits below mx - 40 share the last interval

__device__ __forceinline__ int bucket_of(float v, float mx) {
  const float d = __fmul_rn(__fsub_rn(mx, v), kBucketScale);  // non-increasing in v; -inf: the last
  return d < kBuckets - 1 ? static_cast<int>(d) : kBuckets - 1;
}

__device__ bool nucleus(const Row& r, Smem& sm, Shared& sh, const Cut& C, float top_p, float mx, float u,
                        double* total_out, Cut* P, int* token) {
  const int tid = threadIdx.x;
  constexpr int kPer = kBuckets / kThreads;
  for (int b = tid; b < kBuckets; b += blockDim.x) {
    sm.cnt[b] = 0;
    sm.mass[b] = 0.0;
  }
  __syncthreads();
  // Only entries of weight >= eps enter the histogram: those below hold less than (1 - p) / 2 <= (1 - p) S / 2
  // together (S >= 1: the max weighs 1), so the nucleus, whose complement holds more than (1 - p) S, and every
  // entry ranked above its last one weigh more (the buckets above the edge are whole). The total is summed apart.
  const float eps = static_cast<float>(0.5 * (1.0 - static_cast<double>(top_p)) / r.vocab);
  double tot = 0;
  for_each(r, [&](int i, float raw) {
    const float v = r.proc(raw);
    if (!keeps(C, order_key(v), i)) return;
    const float e = expf(v - mx);
    tot += e;
    if (e >= eps) {
      const int b = bucket_of(v, mx);
      atomicAdd(&sm.cnt[b], 1u);
      atomicAdd(&sm.mass[b], static_cast<double>(e));
    }
  });
  const double total = cl_sum(tot, sh);
  __syncthreads();
  cl_combine_hist(sm, kBuckets, true);
  double a[kPer], local = 0, local_n = 0;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    a[q] = sm.mass[tid * kPer + q];
    local += a[q];
    local_n += sm.cnt[tid * kPer + q];
  }
  double hist_total, total_n;
  const double ex = block_excl_scan(local, sh.red_d, &hist_total);
  const double ex_n = block_excl_scan(local_n, sh.red_d, &total_n);
  *total_out = total;
  const double target = static_cast<double>(top_p) * total;
  if (tid == 0) sh.s_int[0] = INT_MAX;
  __syncthreads();
  double run = ex, run_n = ex_n, above = 0, upto_n = 0;
  int found = INT_MAX;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int b = tid * kPer + q;
    run_n += sm.cnt[b];
    if (found == INT_MAX && run + a[q] >= target) {
      found = b;
      above = run;
      upto_n = run_n;
    }
    run += a[q];
  }
  if (found != INT_MAX) atomicMin(&sh.s_int[0], found);
  __syncthreads();
  const int edge = sh.s_int[0];
  if (edge == INT_MAX) {  // rounding left the total below the target: all of C
    *P = C;
    return false;
  }
  if (found == edge) {
    sh.s_dbl[0] = above;
    sh.s_int[1] = static_cast<int>(upto_n);
  }
  __syncthreads();
  const double cum_above = sh.s_dbl[0];
  const int n_top = sh.s_int[1];
  const int n_edge = static_cast<int>(sm.cnt[edge]);
  __syncthreads();  // (the candidates reuse the histogram's memory)
  if (n_top <= kCand) {
    const int n = gather(r, sm, sh, [&](int i, float v, uint32_t key) {
      return keeps(C, key, i) && bucket_of(v, mx) <= edge && expf(v - mx) >= eps;
    });
    *token = draw_candidates(sm, sh, n, INT_MAX, true, top_p, total, mx, u);
    return true;
  }
  if (n_edge <= kCand) {
    const int n = gather(r, sm, sh, [&](int i, float v, uint32_t key) {
      return keeps(C, key, i) && bucket_of(v, mx) == edge && expf(v - mx) >= eps;
    });
    uint64_t* s = sm.cand;
    int n_pad = 1;
    while (n_pad < n) n_pad <<= 1;
    for (int i = tid; i < n_pad; i += blockDim.x) s[i] = i < n ? ~s[i] : ~uint64_t{0};
    __syncthreads();
    bitonic_sort(s, n_pad);  // rank order
    constexpr int kPc = kCand / kThreads;
    double w[kPc], lw = 0;
#pragma unroll
    for (int q = 0; q < kPc; ++q) {
      const int j = tid * kPc + q;
      w[q] = j < n ? static_cast<double>(expf(key_value(static_cast<uint32_t>(~s[j] >> 32)) - mx)) : 0.0;
      lw += w[q];
    }
    double tot;
    const double exw = block_excl_scan(lw, sh.red_d, &tot);
    if (tid == 0) sh.s_int[0] = n - 1;
    __syncthreads();
    double cum = cum_above + exw;
#pragma unroll
    for (int q = 0; q < kPc; ++q) {
      const int j = tid * kPc + q;
      if (j < n && cum + w[q] >= target) {
        atomicMin(&sh.s_int[0], j);
        break;
      }
      cum += w[q];
    }
    __syncthreads();
    const uint64_t k = ~s[max(sh.s_int[0], 0)];
    *P = Cut{static_cast<uint32_t>(k >> 32), static_cast<int>(0xffffffffu - static_cast<uint32_t>(k))};
    __syncthreads();
    return false;
  }
  *P = select_cut(r, sm, sh, true, C, target, mx);
  return false;
}

__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    sample_kernel(float* logits, int vocab, const uint8_t* settings, int32_t* ids, float* log_probs) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);
  __shared__ Shared sh;
  pdl_wait();
  const int tid = threadIdx.x;
  const SamplingHeaderDev h = *reinterpret_cast<const SamplingHeaderDev*>(settings);
  const unsigned cs = cl_size(), rank = cl_rank();
  const int row = static_cast<int>(blockIdx.x / cs);
  if (row >= h.num_rows) {  // no settings for this row (the host checks this)
    if (tid == 0 && rank == 0) {
      ids[row] = 0;
      if (log_probs) log_probs[row] = 0.0f;
    }
    return;
  }
  const SamplingRowDev rs = reinterpret_cast<const SamplingRowDev*>(settings + kSamplingRowsOffset)[row];
  const PenaltyDev* pens = reinterpret_cast<const PenaltyDev*>(settings + h.penalties_offset);
  float* x = logits + static_cast<int64_t>(row) * vocab;
  // This block's slice: whole chunks.
  const int nchunks = (vocab + kChunk - 1) / kChunk;
  const int cpb = (nchunks + static_cast<int>(cs) - 1) / static_cast<int>(cs);
  const int begin = min(vocab, static_cast<int>(rank) * cpb * kChunk);
  const int end = min(vocab, (static_cast<int>(rank) + 1) * cpb * kChunk);

  // 0. Penalties, as LogitsProcessor::apply: repetition, then presence/frequency, then bans (one entry per token).
  for (int e = rs.penalties_begin + tid; e < rs.penalties_end; e += blockDim.x) {
    const PenaltyDev pe = pens[e];
    if (pe.token < begin || pe.token >= end) continue;  // (out of the row, or another block's slice)
    float l = x[pe.token];
    const float p = rs.repetition_penalty;
    if ((pe.flags & kPenaltyRepetition) && p != 1.0f) l = l < 0.0f ? __fmul_rn(l, p) : __fdiv_rn(l, p);
    if (pe.output_count > 0 && (rs.presence_penalty != 0.0f || rs.frequency_penalty != 0.0f))
      l = __fsub_rn(l, __fadd_rn(rs.presence_penalty,
                                 __fmul_rn(rs.frequency_penalty, static_cast<float>(pe.output_count))));
    if (pe.flags & kPenaltyBanned) l = -INFINITY;
    x[pe.token] = l;
  }
  if (cs > 1) cl_sync();  // (also orders the global writes: other blocks may read this slice later)
  __syncthreads();

  const bool want_lp = h.log_probs != 0 && log_probs != nullptr;
  const float T = rs.temperature;
  const bool greedy = T == 0.0f || rs.top_k == 1 || (rs.top_k == 0 && rs.top_p == 0.0f);
  Row r{x, vocab, begin, end, cpb, vocab % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0, false, 1.0f};
  int token = 0;
  float lp = 0.0f;
  if (greedy) {
    // The host's scan: best starts at 0 and moves on '>' only.
    float v = x[0];
    int i = 0;
    for_each(r, [&](int j, float raw) {
      if (raw > v) {
        v = raw;
        i = j;
      }
    });
    for (int o = 16; o > 0; o >>= 1) {
      const float v2 = __shfl_xor_sync(kFull, v, o);
      const int i2 = __shfl_xor_sync(kFull, i, o);
      better(v, i, v2, i2);
    }
    if (lane_id() == 0) {
      sh.red_f[warp_id()] = v;
      sh.red_i[warp_id()] = i;
    }
    __syncthreads();
    if (warp_id() == 0) {
      v = sh.red_f[lane_id()];
      i = sh.red_i[lane_id()];
      for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(kFull, v, o);
        const int i2 = __shfl_xor_sync(kFull, i, o);
        better(v, i, v2, i2);
      }
      if (lane_id() == 0) {
        sh.s_int[3] = i;
        sh.x_f = v;
        sh.x_i = i;
      }
    }
    __syncthreads();
    token = sh.s_int[3];
    if (cs > 1) {  // the blocks' winners, merged in rank order
      cl_sync();
      float bv = *cl_map(&sh.x_f, 0);
      int bi = *cl_map(&sh.x_i, 0);
      for (unsigned k = 1; k < cs; ++k) better(bv, bi, *cl_map(&sh.x_f, k), *cl_map(&sh.x_i, k));
      token = bi;
      cl_sync();
    }
    if (want_lp) {
      // log_softmax(logits / t)[token] = -log(sum(exp(logits / t - mx))), t = T (0 read as 1).
      const float t = T == 0.0f ? 1.0f : T;
      const float mx = t == 1.0f ? x[token] : __fdiv_rn(x[token], t);
      if (mx == -INFINITY) {
        lp = -INFINITY;
      } else {
        double s = 0;
        for_each(r, [&](int, float raw) {
          const float sh_ = t == 1.0f ? __fsub_rn(raw, mx) : __fsub_rn(__fdiv_rn(raw, t), mx);
          s += expf(sh_);
        });
        s = cl_sum(s, sh);
        lp = static_cast<float>(-log(s));
      }
    }
  } else {
    r.div = T != 0.0f && T != 1.0f;
    r.t = T;
    const bool use_k = rs.top_k > 0 && rs.top_k < vocab;
    const bool use_p = rs.top_p > 0.0f && rs.top_p < 1.0f;
    const float u = philox_uniform(rs.seed, rs.step);
    Cut C, P;
    float mx;
    bool k_superset = false;  // C is a rank prefix longer than top_k (at most kCand entries)
    if (use_k) {  // the top-k select's first pass also finds the max
      C = select_cut(r, sm, sh, false, Cut{}, static_cast<double>(rs.top_k), 0.0f, &mx,
                     rs.top_k <= kCand ? &k_superset : nullptr);
    } else {
      float m = -INFINITY;
      for_each(r, [&](int, float raw) { m = fmaxf(m, r.proc(raw)); });
      mx = cl_max(m, sh);
    }
    if (mx == -INFINITY) {  // everything banned
      token = 0;
      lp = -INFINITY;
    } else {
      double S = -1.0;  // sum of exp(v - mx) over the row, once known
      auto row_sum = [&] {
        double t = 0;
        for_each(r, [&](int, float raw) { t += expf(r.proc(raw) - mx); });
        return cl_sum(t, sh);
      };
      if (use_k && rs.top_k <= kCand) {  // the k survivors (and the nucleus among them) in shared memory
        const int n = gather(r, sm, sh, [&](int i, float, uint32_t key) { return keeps(C, key, i); });
        token = draw_candidates(sm, sh, min(n, kCand), rs.top_k, use_p, rs.top_p, -1.0, mx, u);
      } else {
        bool drawn = false;
        if (use_p) {
          double total;
          drawn = nucleus(r, sm, sh, C, rs.top_p, mx, u, &total, &P, &token);
          if (!use_k) S = total;
        }
        if (!drawn) {  // the chunked walk over the row
          double s_all = 0;
          const bool need_all = want_lp && S < 0.0;
          token = draw(r, sm, sh, C, P, mx, u, need_all, &s_all);
          if (need_all) S = s_all;
        }
      }
      if (want_lp) {
        if (S < 0.0) S = row_sum();
        const double lse = static_cast<double>(mx) + log(S);
        lp = static_cast<float>(static_cast<double>(r.proc(x[token])) - lse);
      }
    }
  }
  if (tid == 0 && rank == 0) {
    ids[row] = token;
    if (log_probs) log_probs[row] = want_lp ? lp : 0.0f;
  }
  if (cs > 1) cl_sync();  // no block leaves while another may still read its shared memory
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  KILN_CHECK(e == cudaSuccess, std::string(kernel) + ": launch failed: " + cudaGetErrorString(e));
}

}  // namespace

namespace {
bool g_clusters = false;  // sm_90+: small batches split each row over a cluster of blocks
}  // namespace

void sampling_init() {
  static bool done = false;
  if (done) return;
  const cudaError_t e = cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(sizeof(Smem)));
  KILN_CHECK(e == cudaSuccess, std::string("sampling_init: ") + cudaGetErrorString(e));
  int dev = 0, major = 0;
  KILN_CHECK(cudaGetDevice(&dev) == cudaSuccess, "sampling_init: no device");
  KILN_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess,
             "sampling_init: no compute capability");
  const char* env = std::getenv("KILN_CUDA_SAMPLING_CLUSTERS");  // "0": one block per row always
  g_clusters = major >= 9 && !(env && env[0] == '0' && env[1] == 0);
  done = true;
}

// Blocks per row: up to 8 for small batches (the row's passes spread over 8 SMs), 1 from ~66 rows up.
int cluster_size(int64_t rows, int64_t vocab) {
  if (!g_clusters) return 1;
  int cs = rows <= 16 ? 8 : rows <= 33 ? 4 : rows <= 66 ? 2 : 1;
  const int64_t nchunks = (vocab + kChunk - 1) / kChunk;
  while (cs > 1 && cs > nchunks) cs >>= 1;
  return cs;
}

void sample_rows(float* logits, int64_t rows, int64_t vocab, const void* settings, int32_t* ids, float* log_probs,
                 cudaStream_t stream) {
  if (rows == 0) return;
  KILN_CHECK(vocab > 0 && vocab <= int64_t{kChunk} * kMaxChunks && rows < INT32_MAX / 8, "sample_rows: bad shape");
  sampling_init();
  const int cs = cluster_size(rows, vocab);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(rows * cs));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = sizeof(Smem);
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  int n = 0;
  if (cs > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = static_cast<unsigned>(cs);
    attrs[n].val.clusterDim.y = 1;
    attrs[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl_enabled()) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  config.attrs = attrs;
  config.numAttrs = n;
  cudaLaunchKernelEx(&config, sample_kernel, logits, static_cast<int>(vocab), static_cast<const uint8_t*>(settings),
                     ids, log_probs);
  check_launch("sample_rows");
}

}  // namespace kiln::cuda
