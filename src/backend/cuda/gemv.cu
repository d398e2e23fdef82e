// Skinny linear layers (decode at small batch): y [m, n] = x [m, k] · Wᵀ (+ bias), m <= kGemvMaxRows,
// W [n, k] row major f16/bf16, f32 accumulation. At m = 1..4 a linear layer is one pass over W: bound by
// memory bandwidth, not math, so everything here serves keeping HBM busy from the first cycle to the last.
//
// Hopper (sm_90) kernel: a persistent grid (one block per SM). W rows come in groups of R (8); a group is
// streamed as tiles of R rows x kc columns (R bulk copies, `cp.async.bulk`, one per row piece, L2
// evict-first) into a ring of shared-memory stages guarded by mbarriers (full: the copy engine's bytes
// landed; empty: every consumer warp is done with the stage). One producer warp issues the copies; the
// consumer warps split each tile's columns (one 16-byte piece per lane per row), hold x's matching pieces in
// registers across the tile's R rows, accumulate in f32 registers across the group's column chunks, and at
// the group's end reduce over lanes (transpose-reduce: one value per lane) and warps (shared memory) and
// store R outputs per x row. Each block first streams a few groups of its own (static), then takes groups
// from a global counter until none are left: SMs that get their bytes faster do more of the work, so all
// finish together (a static split leaves a tail of several microseconds).
// x ([m, k], whole, in shared memory) is loaded by the consumers with many loads in flight as soon as the
// previous kernel is done (RMSNorm applied in place); for SiLU·mul each consumer thread builds the pieces
// it reads itself, chunk by chunk during its first row group, so that work overlaps the W stream. With
// programmatic dependent launch the W stream starts before the previous kernel ends (weights are
// immutable); x, y and the work counter are touched only after pdl_wait, while the first stages fill.
//
// Elsewhere (pre-Hopper, x too big for shared memory, or gemv_set_tuning({.legacy = true})): the older
// kernel: a warp per output row, 16-byte streaming loads with 4 in flight per lane, x through L1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "backend/cuda/float_types.cuh"
#include "backend/cuda/gemv.h"
#include "backend/cuda/pdl.cuh"
#include "core/status.h"

namespace kiln::cuda {

namespace {

__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }

template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
};

// Dot of 8 packed elements of W with 8 of x, accumulated in f32.
template <typename T>
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  using T2 = typename Pair<T>::type;
  const T2* wp = reinterpret_cast<const T2*>(&w);
  const T2* xp = reinterpret_cast<const T2*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = to_float2(wp[i]), b = to_float2(xp[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}

// ---------------------------------------------------------------- legacy kernel (any sm_80+ GPU)

constexpr int kLegacyWarps = 8;   // warps per block
constexpr int kLegacyUnroll = 4;  // 16-byte W loads in flight per lane before the first use

// grid (ceil(n / (kLegacyWarps * R)), 1), block 32 * kLegacyWarps. Warp w of block b computes output
// columns j = (b * kLegacyWarps + w) * R + r, r < R, for all M rows of x. k % 8 == 0; 16-byte aligned rows.
template <typename T, typename TY, int M, int R>
__global__ void __launch_bounds__(32 * kLegacyWarps) gemv_legacy_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                        const float* __restrict__ bias,
                                                                        TY* __restrict__ y, int n, int k) {
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j0 = (blockIdx.x * kLegacyWarps + warp) * R;
  if (j0 >= n) return;
  const int k8 = k / 8;  // 16-byte pieces per row
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    wrow[r] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(min(j0 + r, n - 1)) * k);
  const uint4* xrow = reinterpret_cast<const uint4*>(x);
  pdl_wait();  // x is the previous kernel's output
  int i = lane;
  for (; i + 32 * (kLegacyUnroll - 1) < k8; i += 32 * kLegacyUnroll) {
    uint4 wv[R][kLegacyUnroll];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int u = 0; u < kLegacyUnroll; ++u) wv[r][u] = __ldcs(wrow[r] + i + 32 * u);  // streamed: read once
#pragma unroll
    for (int u = 0; u < kLegacyUnroll; ++u)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = xrow[m * k8 + i + 32 * u];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = dot8<T>(wv[r][u], xv, acc[m][r]);
      }
  }
  for (; i < k8; i += 32) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4 wv = __ldcs(wrow[r] + i);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m][r] = dot8<T>(wv, xrow[m * k8 + i], acc[m][r]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      const int j = j0 + r;
      if (lane == 0 && j < n) y[static_cast<int64_t>(m) * n + j] = from_f32<TY>(v + (bias ? bias[j] : 0.0f));
    }
}

// ---------------------------------------------------------------- Hopper kernel

constexpr int kMaxConsumerWarps = 8;
constexpr int kDefaultConsumerWarps = 8;
constexpr int kDefaultVectorsPerLane = 1;
constexpr int kDefaultRows = 8;
constexpr int kDefaultRingBytes = 96 * 1024;  // W bytes in flight per block (the ring)
constexpr int kMaxStages = 16;
constexpr int kSchedSlots = 1024;

// Work counters of the dynamic row groups, [slot][0]: the next ticket, [slot][1]: blocks done. Zero between
// launches (the last block of a launch resets its slot). A slot is owned by one stream (see sched_slot), so
// launches that may overlap never share one; a launch touches its slot only after pdl_wait, when the
// previous launch on its stream has finished.
__device__ unsigned int g_gemv_sched[kSchedSlots][2];

enum : int { kPrologueNone = 0, kPrologueRms = 1, kPrologueSilu = 2 };

struct TmaParams {
  const void* x;
  const void* w;
  const float* bias;
  void* y;
  const float* norm_w;
  unsigned int* sched;  // this launch's two counters
  float eps;
  int n, k;
  int kc;             // columns per tile (a multiple of 8); the last chunk of a row may be shorter
  int nchunks;        // ceil(k / kc)
  int stages;         // tiles in the ring
  int prologue;
  int add_to_y;
  int groups;         // row groups of R rows: ceil(n / R)
  int static_groups;  // per block, streamed before pdl_wait: groups j * gridDim.x + blockIdx.x, j < this
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared::cta.b64 state, [%0];\n}" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
// bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned), completing on bar.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
// Barrier of the consumer warps only (the producer warp never joins).
__device__ __forceinline__ void consumer_sync(int threads) {
  asm volatile("bar.sync 1, %0;" ::"r"(threads) : "memory");
}

// Transpose-reduce over the warp: v[C] per lane in, v[0] = the sum over all 32 lanes of v[i] with
// i = lane >> (5 - log2(C)) (taking C = 32 at the first step: i = lane). C / 2 shuffles per halving.
template <int C, int OFF, int V>
__device__ __forceinline__ void reduce_scatter(float (&v)[V], int lane) {
  if constexpr (OFF > 0) {
    if constexpr (C > 1) {
      constexpr int H = C / 2;
      const bool hi = (lane & OFF) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const float keep = hi ? v[i + H] : v[i];
        const float send = hi ? v[i] : v[i + H];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
      }
      reduce_scatter<H, OFF / 2>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], OFF);
      reduce_scatter<1, OFF / 2>(v, lane);
    }
  }
}

constexpr int log2_int(int v) { return v <= 1 ? 0 : 1 + log2_int(v / 2); }

// This thread's pieces of xs [M, k] in columns [col, col + 8 * cols8): T(silu(gate) * up) from gate_up
// [M, 2k] in global memory. Built chunk by chunk during the first row group, by the same thread that reads
// them in the dot products (pieces v = ct, ct + nct, ...), so no barrier is needed, and the SiLU work
// overlaps the W stream instead of holding up the first tile.
template <typename T, int M>
__device__ __forceinline__ void silu_chunk(const TmaParams& p, T* xs, int col, int cols8, int nct, int ct) {
  const int k = p.k;
  const T* x = static_cast<const T*>(p.x);
  for (int v = ct; v < cols8; v += nct) {
    uint4 g[M], u[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const T* row = x + static_cast<int64_t>(m) * 2 * k + col + v * 8;
      g[m] = *reinterpret_cast<const uint4*>(row);
      u[m] = *reinterpret_cast<const uint4*>(row + k);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const T* gp = reinterpret_cast<const T*>(&g[m]);
      const T* up = reinterpret_cast<const T*>(&u[m]);
      uint4 o;
      T* op = reinterpret_cast<T*>(&o);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float a = to_f32(gp[j]);
        // As silu_mul in ops.cu (expf, not __expf; the same order of operations).
        op[j] = from_f32<T>(a / (1.0f + expf(-a)) * to_f32(up[j]));
      }
      *reinterpret_cast<uint4*>(xs + m * k + col + v * 8) = o;
    }
  }
}

// xs [M, k] (the residual stream, already in shared memory) = T(rmsnorm(xs) * norm_w) in place, by the
// consumer threads. `red` holds at least nc * M floats of scratch.
// ss[m]: this thread's part of row m's sum of squares.
template <typename T, int M>
__device__ __forceinline__ void rmsnorm_x(const TmaParams& p, T* xs, float* red, int nct, int ct, const float (&ss)[M]) {
  const int k = p.k, k8 = k / 8;
  const int lane = ct & 31, warp = ct >> 5;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float s = ss[m];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) red[warp * M + m] = s;
  }
  consumer_sync(nct);
  const int nc = nct / 32;
  float inv[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float tot = 0.0f;
    for (int w = 0; w < nc; ++w) tot += red[w * M + m];
    // As rmsnorm in ops.cu: 1 / sqrt(mean + eps), then (x * inv) * weight, rounded to T.
    inv[m] = 1.0f / sqrtf(tot / static_cast<float>(k) + p.eps);
  }
  constexpr int kU = 4;  // norm weight pieces in flight per thread
  for (int base = ct; base < k8; base += nct * kU) {
    float4 wn[kU][2];
#pragma unroll
    for (int i = 0; i < kU; ++i) {
      const int v = base + i * nct;
      if (v < k8) {
        wn[i][0] = *reinterpret_cast<const float4*>(p.norm_w + v * 8);
        wn[i][1] = *reinterpret_cast<const float4*>(p.norm_w + v * 8 + 4);
      }
    }
#pragma unroll
    for (int i = 0; i < kU; ++i) {
      const int v = base + i * nct;
      if (v < k8) {
        const float wv[8] = {wn[i][0].x, wn[i][0].y, wn[i][0].z, wn[i][0].w,
                             wn[i][1].x, wn[i][1].y, wn[i][1].z, wn[i][1].w};
#pragma unroll
        for (int m = 0; m < M; ++m) {
          uint4 a = *reinterpret_cast<const uint4*>(xs + m * k + v * 8);
          T* ap = reinterpret_cast<T*>(&a);
#pragma unroll
          for (int j = 0; j < 8; ++j) ap[j] = from_f32<T>((to_f32(ap[j]) * inv[m]) * wv[j]);
          *reinterpret_cast<uint4*>(xs + m * k + v * 8) = a;
        }
      }
    }
  }
}
// xs [M, k] = x (plain) or T(rmsnorm(x) * norm_w), x [M, k] in global memory, by the consumer threads with
// kU 16-byte loads in flight each (x was just written: it comes from L2).
template <typename T, int M>
__device__ __forceinline__ void load_x(const TmaParams& p, T* xs, float* red, int nct, int ct) {
  constexpr int kU = 8;
  const int k8 = p.k / 8, total = M * k8;
  const bool rms = p.prologue == kPrologueRms;
  const T* x = static_cast<const T*>(p.x);
  float ss[M];
#pragma unroll
  for (int m = 0; m < M; ++m) ss[m] = 0.0f;
  for (int base = ct; base < total; base += nct * kU) {
    uint4 a[kU];
#pragma unroll
    for (int i = 0; i < kU; ++i) {
      const int idx = base + i * nct;
      if (idx < total) a[i] = *reinterpret_cast<const uint4*>(x + static_cast<int64_t>(idx) * 8);
    }
#pragma unroll
    for (int i = 0; i < kU; ++i) {
      const int idx = base + i * nct;
      if (idx < total) {
        *reinterpret_cast<uint4*>(xs + static_cast<int64_t>(idx) * 8) = a[i];
        if (rms) {
          const T* ap = reinterpret_cast<const T*>(&a[i]);
          float q = 0.0f;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float f = to_f32(ap[j]);
            q += f * f;
          }
          const int row = idx / k8;
#pragma unroll
          for (int m = 0; m < M; ++m)
            if (m == row) ss[m] += q;
        }
      }
    }
  }
  if (rms) rmsnorm_x<T, M>(p, xs, red, nct, ct, ss);  // its first barrier orders the stores above
}
#endif  // __CUDA_ARCH__ >= 900

// Shared memory: ring [stages][R][kc] T | xs [m][k] T | red [2][nc][32] f32 | stage_row [stages] i32 (padded
// to 16 bytes) | full [stages], empty [stages] mbarriers.
size_t tma_smem_bytes(int rows, int stages, int kc, int64_t m, int64_t k, int nc) {
  return static_cast<size_t>(stages) * rows * kc * 2 + static_cast<size_t>(m * k * 2) + 2 * nc * 32 * 4 +
         (static_cast<size_t>(stages) + 3) / 4 * 16 + 16 * stages + 16;
}

// grid: persistent, at most one block per SM (or two); block 32 * (nc + 1) threads: warps 0..nc-1 consume,
// warp nc produces. Row group g = rows [g * R, g * R + R). Each block first streams its static groups (the
// first of them before pdl_wait), then takes groups from a shared counter until none are left, so that
// SMs that get their bytes faster do more of the work and all finish together.
template <typename T, typename TY, int M, int R>
__global__ void __launch_bounds__(32 * (kMaxConsumerWarps + 1), 1) gemv_tma_kernel(const TmaParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(M * R <= 32, "one reduced value per lane");
  constexpr int V = M * R <= 4 ? 4 : M * R <= 8 ? 8 : M * R <= 16 ? 16 : 32;  // padded to a power of two
  constexpr int kShift = 5 - log2_int(V);
  extern __shared__ __align__(128) unsigned char smem[];
  const int nc = static_cast<int>(blockDim.x / 32) - 1, nct = nc * 32;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = p.n, k = p.k, kc = p.kc, nchunks = p.nchunks, stages = p.stages;
  const int tile_elems = R * kc;
  T* ring = reinterpret_cast<T*>(smem);
  T* xs = ring + static_cast<size_t>(stages) * tile_elems;
  float* red = reinterpret_cast<float*>(xs + M * k);
  int* stage_row = reinterpret_cast<int*>(red + 2 * nct);
  uint64_t* bars = reinterpret_cast<uint64_t*>(stage_row + (stages + 3) / 4 * 4);
  const uint32_t full0 = smem_addr(bars), empty0 = full0 + 8 * stages;
  const bool silu = p.prologue == kPrologueSilu;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, nc);
    }
    mbar_fence_init();
  }
  __syncthreads();
  pdl_launch_dependents();

  if (warp == nc) {
    // Producer. W is immutable: its stream starts before the previous kernel has finished. Once the ring is
    // full (or the static groups are issued), pdl_wait: the work counter is the previous launch's until then.
    const T* w = static_cast<const T*>(p.w);
    const uint64_t policy = evict_first_policy();
    const int grid = static_cast<int>(gridDim.x), sg = p.static_groups;
    const unsigned int dynamic = static_cast<unsigned int>(p.groups - sg * grid);
    bool waited = false;
    auto wait_previous = [&] {
      pdl_wait();
      waited = true;
    };
    int s = 0, round = 0;
    unsigned int next = 0;  // lane 0: the ticket taken one group ahead (its latency hides behind a group)
    bool have_next = false;
    for (int j = 0;; ++j) {
      int group;
      if (j < sg) {
        group = j * grid + static_cast<int>(blockIdx.x);
      } else {
        if (!waited) wait_previous();  // the counter belongs to the previous launch until then
        unsigned int ticket = next;
        if (!have_next && lane == 0) ticket = atomicAdd(p.sched, 1u);
        ticket = __shfl_sync(0xffffffffu, ticket, 0);
        group = ticket < dynamic ? sg * grid + static_cast<int>(ticket) : -1;
        if (group >= 0 && lane == 0) next = atomicAdd(p.sched, 1u);
        have_next = true;
      }
      if (group < 0) {  // no more work: tell the consumers through the next stage
        if (round > 0) mbar_wait(empty0 + 8 * s, (round - 1) & 1);
        if (lane == 0) {
          stage_row[s] = -1;
          mbar_arrive(full0 + 8 * s);
        }
        break;
      }
      const int row = group * R, rows = min(R, n - row);
      for (int c = 0; c < nchunks; ++c) {
        if (round > 0) {
          if (!waited) wait_previous();
          mbar_wait(empty0 + 8 * s, (round - 1) & 1);
        }
        const int col = c * kc, cols = min(kc, k - col);
        if (lane == 0) {
          stage_row[s] = row;
          mbar_expect_tx(full0 + 8 * s, static_cast<uint32_t>(rows * cols * sizeof(T)));
        }
        __syncwarp();
        if (lane < rows)
          bulk_copy(smem_addr(ring + static_cast<size_t>(s) * tile_elems + lane * kc),
                    w + static_cast<int64_t>(row + lane) * k + col, static_cast<uint32_t>(cols * sizeof(T)),
                    full0 + 8 * s, policy);
        if (++s == stages) s = 0, ++round;
      }
    }
    // Every block takes exactly one ticket past the end; the last block to be done resets the counters.
    if (lane == 0) {
      __threadfence();
      if (atomicAdd(p.sched + 1, 1u) == gridDim.x - 1) {
        atomicExch(p.sched, 0u);
        atomicExch(p.sched + 1, 0u);
      }
    }
    return;
  }

  // Consumers.
  pdl_wait();  // x (and y when adding to it) come from earlier kernels
  const int ct = threadIdx.x;
  if (!silu) {
    load_x<T, M>(p, xs, red, nct, ct);
    consumer_sync(nct);
  }
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  int s = 0, round = 0, c = 0, g = 0;
  for (;;) {
    const int col = c * kc, cols8 = min(kc, k - col) / 8;
    if (silu && g == 0) silu_chunk<T, M>(p, xs, col, cols8, nct, ct);
    mbar_wait(full0 + 8 * s, round & 1);
    const int row = stage_row[s];
    if (row < 0) break;
    const T* tile = ring + static_cast<size_t>(s) * tile_elems;
    for (int v = ct; v < cols8; v += nct) {
      uint4 xv[M], wv[R];
#pragma unroll
      for (int m = 0; m < M; ++m) xv[m] = *reinterpret_cast<const uint4*>(xs + m * k + col + v * 8);
#pragma unroll
      for (int r = 0; r < R; ++r) wv[r] = *reinterpret_cast<const uint4*>(tile + r * kc + v * 8);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m][r] = dot8<T>(wv[r], xv[m], acc[m][r]);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * s);
    if (++s == stages) s = 0, ++round;
    if (++c == nchunks) {
      // The row group is complete: reduce over lanes, then over warps, and store.
      float vals[V];
#pragma unroll
      for (int i = 0; i < V; ++i) vals[i] = i < M * R ? acc[i / R][i % R] : 0.0f;
      reduce_scatter<V, 16>(vals, lane);
      float* rb = red + (g & 1) * nct;  // two buffers: the next group's writes never race this group's reads
      if ((lane & ((1 << kShift) - 1)) == 0) rb[warp * 32 + (lane >> kShift)] = vals[0];
      consumer_sync(nct);
      if (ct < M * R) {
        const int m = ct / R, j = row + ct % R;
        if (j < n) {
          float sum = 0.0f;
          for (int w = 0; w < nc; ++w) sum += rb[w * 32 + ct];
          const float val = sum + (p.bias ? p.bias[j] : 0.0f);
          TY* y = static_cast<TY*>(p.y) + static_cast<int64_t>(m) * n + j;
          if constexpr (std::is_same_v<TY, T>) {
            if (p.add_to_y) *y = from_f32<T>(to_f32(*y) + to_f32(from_f32<T>(val)));
            else *y = from_f32<T>(val);
          } else {
            *y = from_f32<TY>(val);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
      c = 0;
      ++g;
    }
  }
#else
  __trap();  // never launched: the host takes the legacy kernel below sm_90
#endif
}

// ---------------------------------------------------------------- host side

GemvTuning g_tuning;

struct DeviceInfo {
  int sms = 0;
  int smem_optin = 0;   // dynamic shared memory one block may have
  int smem_per_sm = 0;  // all of an SM's
  bool hopper = false;  // sm_90 code for the Hopper kernel is in this binary and runs here
  unsigned int* sched = nullptr;  // g_gemv_sched on this device
  std::mutex mu;
  std::unordered_map<cudaStream_t, int> slots;  // stream -> its counters in g_gemv_sched
};

DeviceInfo& device_info() {
  constexpr int kMaxDevices = 64;
  static DeviceInfo infos[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) dev = 0;
  std::call_once(once[dev], [dev] {
    DeviceInfo& d = infos[dev];
    int major = 0;
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaFuncAttributes attr{};
    const bool have = cudaFuncGetAttributes(&attr, gemv_tma_kernel<__half, __half, 1, kDefaultRows>) == cudaSuccess;
    void* sched = nullptr;
    const bool counters = cudaGetSymbolAddress(&sched, g_gemv_sched) == cudaSuccess;
    d.sched = static_cast<unsigned int*>(sched);
    d.hopper = major >= 9 && have && counters && attr.ptxVersion >= 90 && d.sms > 0 && d.smem_optin >= 64 * 1024;
    cudaGetLastError();  // clear anything the queries left
  });
  return infos[dev];
}

// The counters of launches on `stream`: one slot per stream (streams run their launches in order), so two
// launches that may run at once never share counters. -1 once every slot is taken (the legacy kernel then).
int sched_slot(DeviceInfo& d, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(d.mu);
  const auto it = d.slots.find(stream);
  if (it != d.slots.end()) return it->second;
  if (d.slots.size() >= kSchedSlots) return -1;
  const int slot = static_cast<int>(d.slots.size());
  d.slots.emplace(stream, slot);
  return slot;
}

struct Plan {
  bool tma = false;
  int nc = 0, rows = kDefaultRows, kc = 0, nchunks = 0, stages = 0, grid = 0, groups = 0, static_groups = 0;
  size_t smem = 0;
};

Plan make_plan(int64_t m, int64_t n, int64_t k, DType xt, DType yt) {
  Plan pl;
  const GemvTuning& t = g_tuning;
  const DeviceInfo& d = device_info();
  if (!d.hopper || t.legacy) return pl;
  if (m * k * 2 > kGemvMaxFusedXBytes) return pl;
  pl.nc = t.consumer_warps > 0 ? std::min(t.consumer_warps, kMaxConsumerWarps) : kDefaultConsumerWarps;
  pl.rows = t.rows_per_tile == 4 && xt == DType::kF16 && yt == DType::kF16 ? 4 : kDefaultRows;
  const int64_t vpl = t.vectors_per_lane > 0 ? t.vectors_per_lane : kDefaultVectorsPerLane;
  const int64_t kc_max = 8 * 32 * pl.nc * vpl;
  pl.nchunks = static_cast<int>((k + kc_max - 1) / kc_max);
  pl.kc = static_cast<int>(((k + pl.nchunks - 1) / pl.nchunks + 7) / 8 * 8);
  const size_t tile = static_cast<size_t>(pl.rows) * pl.kc * 2;
  // At least 4 stages (3 in flight while one is read), and about kDefaultRingBytes: measured on the H100.
  const int max_stages =
      t.max_stages > 0 ? t.max_stages : static_cast<int>(std::max<size_t>(4, (kDefaultRingBytes + tile - 1) / tile));
  pl.groups = static_cast<int>((n + pl.rows - 1) / pl.rows);
  for (int bps = t.blocks_per_sm == 2 ? 2 : 1; bps >= 1; --bps) {
    const size_t budget = std::min<size_t>(d.smem_optin, d.smem_per_sm / bps - 1024);
    int stages = std::min(max_stages, kMaxStages);
    while (stages >= 2 && tma_smem_bytes(pl.rows, stages, pl.kc, m, k, pl.nc) > budget) --stages;
    if (stages < 2) continue;
    pl.stages = stages;
    pl.smem = tma_smem_bytes(pl.rows, stages, pl.kc, m, k, pl.nc);
    pl.grid = static_cast<int>(std::min<int64_t>(pl.groups, static_cast<int64_t>(d.sms) * bps));
    // Static groups per block: enough to fill the ring before pdl_wait, at most half of the work (a static
    // split is what leaves a tail); the rest is handed out on demand.
    pl.static_groups = std::min((stages + pl.nchunks - 1) / pl.nchunks, pl.groups / (2 * pl.grid));
    pl.tma = true;
    return pl;
  }
  return pl;
}

void check(cudaError_t e, const char* what) {
  KILN_CHECK(e == cudaSuccess, std::string("gemv: ") + what + ": " + cudaGetErrorString(e));
}

template <typename T, typename TY, int M, int R>
void launch_tma(const Plan& pl, const TmaParams& p, cudaStream_t stream) {
  auto kernel = gemv_tma_kernel<T, TY, M, R>;
  static const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, device_info().smem_optin);
  check(attr, "raising the shared memory limit");
  check(launch_kernel(kernel, dim3(pl.grid), dim3(32 * (pl.nc + 1)), pl.smem, stream, p), "launch failed");
}

template <typename T, typename TY, int M>
void launch_legacy(const T* x, const T* w, const float* bias, TY* y, int n, int k, cudaStream_t stream) {
  // Two output rows per warp when there are enough of them to fill the GPU twice over, else one.
  const int sms = std::max(device_info().sms, 1);
  cudaError_t e;
  if (n >= 2 * kLegacyWarps * sms * 2) {
    constexpr int R = 2;
    e = launch_kernel(gemv_legacy_kernel<T, TY, M, R>, dim3((n + kLegacyWarps * R - 1) / (kLegacyWarps * R)),
                      dim3(32 * kLegacyWarps), 0, stream, x, w, bias, y, n, k);
  } else {
    e = launch_kernel(gemv_legacy_kernel<T, TY, M, 1>, dim3((n + kLegacyWarps - 1) / kLegacyWarps),
                      dim3(32 * kLegacyWarps), 0, stream, x, w, bias, y, n, k);
  }
  check(e, "launch failed");
}

template <typename T, typename TY, int M>
void launch_m(const Plan& pl, const TmaParams& p, cudaStream_t stream) {
  if (!pl.tma) {
    launch_legacy<T, TY, M>(static_cast<const T*>(p.x), static_cast<const T*>(p.w), p.bias, static_cast<TY*>(p.y),
                            p.n, p.k, stream);
  } else if constexpr (std::is_same_v<T, __half> && std::is_same_v<TY, __half>) {
    if (pl.rows == 4) launch_tma<T, TY, M, 4>(pl, p, stream);
    else launch_tma<T, TY, M, kDefaultRows>(pl, p, stream);
  } else {
    launch_tma<T, TY, M, kDefaultRows>(pl, p, stream);
  }
}

template <typename T, typename TY>
void launch_types(int64_t m, const Plan& pl, const TmaParams& p, cudaStream_t stream) {
  switch (m) {
    case 1: launch_m<T, TY, 1>(pl, p, stream); break;
    case 2: launch_m<T, TY, 2>(pl, p, stream); break;
    case 3: launch_m<T, TY, 3>(pl, p, stream); break;
    default: launch_m<T, TY, 4>(pl, p, stream); break;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void gemv_set_tuning(const GemvTuning& tuning) { g_tuning = tuning; }

bool gemv_supported(DType xt, DType wt, DType yt, int64_t m, int64_t n, int64_t k, const void* x, const void* w,
                    const GemvFusion& fusion) {
  const bool types = xt == wt && (xt == DType::kF16 || xt == DType::kBF16) && (yt == xt || yt == DType::kF32);
  const bool plain = types && aligned16(x) && aligned16(w) && m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && n > 0 &&
                     k > 0 && n < (1 << 30) && k < (1 << 28);
  if (!plain) return false;
  const bool fused = fusion.prologue != GemvFusion::Prologue::kNone || fusion.add_to_y;
  if (!fused) return true;
  // f32 y (logits): the RMSNorm prologue only (the final norm before the LM head); the epilogue adds into y of
  // x's type.
  if (yt != xt && (fusion.add_to_y || fusion.prologue != GemvFusion::Prologue::kRmsNorm)) return false;
  if (fusion.prologue == GemvFusion::Prologue::kRmsNorm && !(fusion.norm_weight && aligned16(fusion.norm_weight)))
    return false;
  // Every block redoes the SiLU of all of x: at m >= 3 that costs more than the silu_mul kernel it saves
  // (measured on the H100 at Phi-3 / Llama-3 shapes).
  if (fusion.prologue == GemvFusion::Prologue::kSiluMul && m > kGemvMaxSiluMulRows) return false;
  return make_plan(m, n, k, xt, yt).tma;
}

void gemv(const void* x, DType xt, int64_t m, const void* w, int64_t n, int64_t k, const float* bias, void* y, DType yt,
          cudaStream_t stream, const GemvFusion& fusion) {
  KILN_CHECK(gemv_supported(xt, xt, yt, m, n, k, x, w, fusion), "gemv: unsupported shape, types or fusion");
  Plan pl = make_plan(m, n, k, xt, yt);
  TmaParams p{};
  if (pl.tma) {
    DeviceInfo& d = device_info();
    const int slot = sched_slot(d, stream);
    KILN_CHECK(slot >= 0 || !(fusion.prologue != GemvFusion::Prologue::kNone || fusion.add_to_y),
               "gemv: more streams than scheduling slots");
    if (slot < 0) pl.tma = false;
    else p.sched = d.sched + 2 * slot;
  }
  p.x = x;
  p.w = w;
  p.bias = bias;
  p.y = y;
  p.norm_w = fusion.norm_weight;
  p.eps = fusion.eps;
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.kc = pl.kc;
  p.nchunks = pl.nchunks;
  p.stages = pl.stages;
  p.prologue = fusion.prologue == GemvFusion::Prologue::kRmsNorm   ? kPrologueRms
               : fusion.prologue == GemvFusion::Prologue::kSiluMul ? kPrologueSilu
                                                                   : kPrologueNone;
  p.add_to_y = fusion.add_to_y ? 1 : 0;
  p.groups = pl.groups;
  p.static_groups = pl.static_groups;
  if (xt == DType::kF16) {
    if (yt == DType::kF32) launch_types<__half, float>(m, pl, p, stream);
    else launch_types<__half, __half>(m, pl, p, stream);
  } else {
    if (yt == DType::kF32) launch_types<__nv_bfloat16, float>(m, pl, p, stream);
    else launch_types<__nv_bfloat16, __nv_bfloat16>(m, pl, p, stream);
  }
}

}  // namespace kiln::cuda
