// The CUDA backend's elementwise and normalization kernels (see kernels.h for the contract): embedding,
// rmsnorm, add_rmsnorm, silu_mul, gather_rows and the q/k/v split with per-head norm, RoPE and paged KV
// write. All are memory-bound: math in f32, loads and stores in the storage type, 16-byte vectors where
// the row length and the pointers allow it, scalar accesses otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "backend/cuda/float_types.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/pdl.cuh"
#include "core/status.h"

namespace kiln::cuda {

namespace {

// ---------------------------------------------------------------- helpers

// Launch errors (bad configuration, no kernel image for this GPU) show up here; faults inside a kernel
// surface at the next synchronizing call, which the backend checks.
void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  KILN_CHECK(e == cudaSuccess, std::string(kernel) + ": launch failed: " + cudaGetErrorString(e));
}


// W consecutive elements moved together: W * sizeof(T) = 16 is one 128-bit load/store, 32 two of them,
// W = 1 a scalar. Aligned to at most 16 bytes, which the callers check on the host with is_aligned.
constexpr size_t pack_align(size_t bytes) { return bytes < 16 ? bytes : 16; }
template <typename T, int W>
struct alignas(pack_align(sizeof(T) * W)) Pack {
  T v[W];
};
template <typename T, int W>
__device__ __forceinline__ Pack<T, W> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, W>*>(p);
}
template <typename T, int W>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, W>& v) {
  *reinterpret_cast<Pack<T, W>*>(p) = v;
}

// Elements of T per 16-byte vector.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `red` is 32 floats of shared memory; the block must not be using it.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = lane < warps ? red[lane] : 0.0f;
  total = warp_sum(total);  // every warp reduces the partials itself: no second barrier + broadcast
  return total;
}

// Calls f(T{}) with T the element type of `act` (f32 / f16 / bf16).
template <typename F>
void dispatch_float(DType act, const char* op, F&& f) {
  switch (act) {
    case DType::kF32: f(float{}); break;
    case DType::kF16: f(__half{}); break;
    case DType::kBF16: f(__nv_bfloat16{}); break;
    default: KILN_CHECK(false, std::string(op) + ": unsupported dtype " + dtype_name(act));
  }
}

// Grid rows for kernels that loop over rows in gridDim.y (its limit is 65535).
unsigned grid_rows(int64_t rows) { return static_cast<unsigned>(rows < 65535 ? rows : 65535); }

// ---------------------------------------------------------------- embedding

// out [T, hidden] (TO) = table [rows, hidden] (TI) row ids[t] - row0, zeros for ids outside the table (a
// vocab-parallel rank's slice); grid (chunks of the row, tokens).
// W elements per thread per step (8 when hidden % 8 == 0 and aligned: 16- or 32-byte accesses).
template <typename TI, typename TO, int W>
__global__ void embedding_kernel(const TI* __restrict__ table, int64_t row0, int64_t rows,
                                 const int32_t* __restrict__ ids, int64_t num_tokens, int64_t hidden,
                                 TO* __restrict__ out) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t packs = hidden / W;
  for (int64_t t = blockIdx.y; t < num_tokens; t += gridDim.y) {
    const int64_t r = static_cast<int64_t>(ids[t]) - row0;
    const bool held = r >= 0 && r < rows;
    const TI* src = table + (held ? r : 0) * hidden;
    TO* dst = out + t * hidden;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      Pack<TO, W> b;
      if (held) {
        const Pack<TI, W> a = load_pack<TI, W>(src + i * W);
#pragma unroll
        for (int k = 0; k < W; ++k) b.v[k] = from_f32<TO>(to_f32(a.v[k]));
      } else {
#pragma unroll
        for (int k = 0; k < W; ++k) b.v[k] = from_f32<TO>(0.0f);
      }
      store_pack<TO, W>(dst + i * W, b);
    }
  }
}

// ---------------------------------------------------------------- rmsnorm / add_rmsnorm

// One block per row (grid-stride over rows). Each thread owns W-element packs p = tid + k * blockDim,
// k < VPT, kept in registers between the sum of squares and the write, so the row is read once.
// kAdd: residual += delta first (rounded to T and stored), and the norm is of the stored value.
// x / residual, delta, out may alias element-wise (each element is read and written by one thread,
// reads first), so no __restrict__.
template <typename T, int W, int VPT, bool kAdd>
__global__ void __launch_bounds__(1024) rmsnorm_reg_kernel(T* x, const T* delta, const float* __restrict__ w,
                                                           float eps, T* out, int64_t rows, int dim) {
  __shared__ float red[32];
  pdl_wait();
  pdl_launch_dependents();
  const int packs = dim / W;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* xr = x + r * dim;
    float v[VPT][W];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int p = threadIdx.x + k * blockDim.x;
      if (p < packs) {
        Pack<T, W> a = load_pack<T, W>(xr + p * W);
        if constexpr (kAdd) {
          const Pack<T, W> d = load_pack<T, W>(delta + r * dim + p * W);
#pragma unroll
          for (int j = 0; j < W; ++j) a.v[j] = from_f32<T>(to_f32(a.v[j]) + to_f32(d.v[j]));
          store_pack<T, W>(xr + p * W, a);
        }
#pragma unroll
        for (int j = 0; j < W; ++j) {
          v[k][j] = to_f32(a.v[j]);
          ss += v[k][j] * v[k][j];
        }
      }
    }
    const float inv = 1.0f / sqrtf(block_sum(ss, red) / static_cast<float>(dim) + eps);
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int p = threadIdx.x + k * blockDim.x;
      if (p < packs) {
        const Pack<float, W> wp = load_pack<float, W>(w + p * W);
        Pack<T, W> o;
#pragma unroll
        for (int j = 0; j < W; ++j) o.v[j] = from_f32<T>((v[k][j] * inv) * wp.v[j]);
        store_pack<T, W>(out + r * dim + p * W, o);
      }
    }
    __syncthreads();  // `red` is reused by the next row
  }
}

// Rows too long for registers (> 1024 threads x 4 packs): two passes over the row, the second mostly
// from L2. Same aliasing rules as above.
template <typename T, int W, bool kAdd>
__global__ void __launch_bounds__(1024) rmsnorm_loop_kernel(T* x, const T* delta, const float* __restrict__ w,
                                                            float eps, T* out, int64_t rows, int64_t dim) {
  __shared__ float red[32];
  pdl_wait();
  pdl_launch_dependents();
  const int64_t packs = dim / W;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* xr = x + r * dim;
    float ss = 0.0f;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      Pack<T, W> a = load_pack<T, W>(xr + p * W);
      if constexpr (kAdd) {
        const Pack<T, W> d = load_pack<T, W>(delta + r * dim + p * W);
#pragma unroll
        for (int j = 0; j < W; ++j) a.v[j] = from_f32<T>(to_f32(a.v[j]) + to_f32(d.v[j]));
        store_pack<T, W>(xr + p * W, a);
      }
#pragma unroll
      for (int j = 0; j < W; ++j) ss += to_f32(a.v[j]) * to_f32(a.v[j]);
    }
    const float inv = 1.0f / sqrtf(block_sum(ss, red) / static_cast<float>(dim) + eps);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, W> a = load_pack<T, W>(xr + p * W);  // this thread's own (stored) values
      const Pack<float, W> wp = load_pack<float, W>(w + p * W);
      Pack<T, W> o;
#pragma unroll
      for (int j = 0; j < W; ++j) o.v[j] = from_f32<T>((to_f32(a.v[j]) * inv) * wp.v[j]);
      store_pack<T, W>(out + r * dim + p * W, o);
    }
    __syncthreads();
  }
}

constexpr int kMaxVpt = 4;  // packs per thread kept in registers: <= 32 floats at 1024 threads (64 regs)

template <typename T, int W, bool kAdd>
void launch_rmsnorm_w(T* x, const T* delta, const float* w, float eps, T* out, int64_t rows, int64_t dim,
                      cudaStream_t stream) {
  const int64_t packs = dim / W;
  // Threads per row: about 4 packs each (enough loads in flight per thread), 32..1024, a multiple of 32.
  int64_t threads = ceil_div(ceil_div(packs, kMaxVpt), 32) * 32;
  threads = threads < 32 ? 32 : threads > 1024 ? 1024 : threads;
  const int64_t vpt = ceil_div(packs, threads);
  const unsigned grid = static_cast<unsigned>(rows < (1 << 30) ? rows : (1 << 30));
  const dim3 block(static_cast<unsigned>(threads));
  const int d = static_cast<int>(dim);
  switch (vpt) {
    case 1: launch_kernel(rmsnorm_reg_kernel<T, W, 1, kAdd>, grid, block, 0, stream, x, delta, w, eps, out, rows, d); break;
    case 2: launch_kernel(rmsnorm_reg_kernel<T, W, 2, kAdd>, grid, block, 0, stream, x, delta, w, eps, out, rows, d); break;
    case 3:
    case 4: launch_kernel(rmsnorm_reg_kernel<T, W, 4, kAdd>, grid, block, 0, stream, x, delta, w, eps, out, rows, d); break;
    default: launch_kernel(rmsnorm_loop_kernel<T, W, kAdd>, grid, block, 0, stream, x, delta, w, eps, out, rows, dim); break;
  }
  check_launch(kAdd ? "add_rmsnorm" : "rmsnorm");
}

template <typename T, bool kAdd>
void launch_rmsnorm(T* x, const T* delta, const float* w, float eps, T* out, int64_t rows, int64_t dim,
                    cudaStream_t stream) {
  constexpr int V = kVec<T>;
  const bool vec = dim % V == 0 && is_aligned(x, 16) && is_aligned(out, 16) && is_aligned(w, 16) &&
                   (!kAdd || is_aligned(delta, 16));
  if (vec) launch_rmsnorm_w<T, V, kAdd>(x, delta, w, eps, out, rows, dim, stream);
  else launch_rmsnorm_w<T, 1, kAdd>(x, delta, w, eps, out, rows, dim, stream);
}

// ---------------------------------------------------------------- silu_mul

// out [rows, inter] = silu(gate) * up, gate_up [rows, 2 * inter]; grid (chunks of the row, rows).
template <typename T, int W>
__global__ void silu_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows, int64_t inter) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t packs = inter / W;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* g = gate_up + r * 2 * inter;
    const T* u = g + inter;
    for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
         p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const Pack<T, W> a = load_pack<T, W>(g + p * W);
      const Pack<T, W> b = load_pack<T, W>(u + p * W);
      Pack<T, W> o;
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float x = to_f32(a.v[j]);
        // expf, not __expf: the CPU reference uses std::exp; exp(-x) = inf gives x / inf = -0, as there.
        o.v[j] = from_f32<T>(x / (1.0f + expf(-x)) * to_f32(b.v[j]));
      }
      store_pack<T, W>(out + r * inter + p * W, o);
    }
  }
}

template <typename T, int W>
void launch_silu_mul(const T* gate_up, T* out, int64_t rows, int64_t inter, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t packs = inter / W;
  const dim3 grid(static_cast<unsigned>(ceil_div(packs, kThreads)), grid_rows(rows));
  launch_kernel(silu_mul_kernel<T, W>, grid, kThreads, 0, stream, gate_up, out, rows, inter);
  check_launch("silu_mul");
}

// ---------------------------------------------------------------- gather_rows

// out[i, :] = x[rows[i], :] as words of type U (uint4 or uint32_t); grid (chunks of the row, n).
template <typename U>
__global__ void gather_rows_kernel(const U* __restrict__ x, const int32_t* __restrict__ rows, int64_t n,
                                   int64_t row_words, U* __restrict__ out) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const U* src = x + static_cast<int64_t>(rows[i]) * row_words;
    U* dst = out + i * row_words;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < row_words;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x)
      dst[j] = src[j];
  }
}

// ---------------------------------------------------------------- qkv_rope_kv_write

constexpr int kQkvWarps = 4;      // warps per block; each warp handles one head of one token
constexpr int kMaxHeadDim = 512;  // per-warp shared staging of one head (f32)

// Copies n elements of src (T) into the f32 staging row `dst` (16-byte aligned shared memory), lane-strided.
template <typename T>
__device__ __forceinline__ void stage_in(const T* src, float* dst, int n, bool vec, int lane) {
  constexpr int V = kVec<T>;
  if (vec) {
    for (int p = lane; p < n / V; p += 32) {
      const Pack<T, V> a = load_pack<T, V>(src + p * V);
      Pack<float, V> f;
#pragma unroll
      for (int j = 0; j < V; ++j) f.v[j] = to_f32(a.v[j]);
      // As float4s: consecutive lanes' 16-byte shared stores do not conflict.
#pragma unroll
      for (int j = 0; j < V; j += 4)
        *reinterpret_cast<float4*>(dst + p * V + j) = make_float4(f.v[j], f.v[j + 1], f.v[j + 2], f.v[j + 3]);
    }
  } else {
    for (int i = lane; i < n; i += 32) dst[i] = to_f32(src[i]);
  }
}

// Writes the f32 staging row `src` to dst (T), rounding; lane-strided.
template <typename T>
__device__ __forceinline__ void stage_out(const float* src, T* dst, int n, bool vec, int lane) {
  constexpr int V = kVec<T>;
  if (vec) {
    for (int p = lane; p < n / V; p += 32) {
      Pack<T, V> a;
#pragma unroll
      for (int j = 0; j < V; j += 4) {
        const float4 f = *reinterpret_cast<const float4*>(src + p * V + j);
        a.v[j] = from_f32<T>(f.x);
        a.v[j + 1] = from_f32<T>(f.y);
        a.v[j + 2] = from_f32<T>(f.z);
        a.v[j + 3] = from_f32<T>(f.w);
      }
      store_pack<T, V>(dst + p * V, a);
    }
  } else {
    for (int i = lane; i < n; i += 32) dst[i] = from_f32<T>(src[i]);
  }
}

// grid (T, ceil((H + 2 * KVH) / kQkvWarps)), block kQkvWarps warps. Warp job j of token t:
// j < H: q head j -> q_out; j < H + KVH: k head -> K pool; else v head -> V pool (converted copy).
// A head is staged in shared memory as f32 so the norm (a warp reduction) and the rotate-half pairs
// (i, i + rotary_dim / 2, usually on different lanes) need no register shuffling; loads and stores
// stay 16-byte vectors when the head size and pointers allow (vec_act for qkv / q_out, vec_kv for the pools).
template <typename TA, typename TKV>
__global__ void __launch_bounds__(kQkvWarps * 32)
    qkv_rope_kv_write_kernel(const TA* __restrict__ qkv, QkvParams p, const float* __restrict__ cos_sin,
                             DeviceBatch b, TKV* __restrict__ kpool, TKV* __restrict__ vpool, TA* __restrict__ q_out,
                             bool vec_act, bool vec_kv) {
  __shared__ __align__(16) float stage[kQkvWarps][kMaxHeadDim];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int H = p.num_heads, KVH = p.num_kv_heads, D = p.head_dim;
  const int job = blockIdx.y * kQkvWarps + warp;
  pdl_wait();
  pdl_launch_dependents();
  if (job >= H + 2 * KVH) return;  // no block-wide barrier below: warps are independent
  const int64_t t = blockIdx.x;
  float* x = stage[warp];
  const TA* src = qkv + (t * (H + 2 * KVH) + job) * D;  // head `job` of the row, in q | k | v order
  stage_in(src, x, D, vec_act, lane);
  __syncwarp();

  if (job < H + KVH) {
    const bool is_q = job < H;
    const float* norm_w = is_q ? p.q_norm : p.k_norm;
    if (norm_w) {
      float ss = 0.0f;
      for (int i = lane; i < D; i += 32) ss += x[i] * x[i];
      const float inv = 1.0f / sqrtf(warp_sum(ss) / static_cast<float>(D) + p.norm_eps);
      for (int i = lane; i < D; i += 32) x[i] = (x[i] * inv) * norm_w[i];
      __syncwarp();
    }
    const int half = p.rotary_dim / 2;
    const float* cs = cos_sin + t * p.rotary_dim;  // [cos | sin] of this token
    for (int i = lane; i < half; i += 32) {
      float y1, y2;
      rope_pair(x[i], x[i + half], cs[i], cs[half + i], y1, y2);
      x[i] = y1;
      x[i + half] = y2;
    }
    __syncwarp();
    if (is_q) {
      stage_out(x, q_out + (t * H + job) * D, D, vec_act, lane);
      return;
    }
  }
  // K or V row of this token's position: pool [num_blocks, KVH, block_size, D].
  const bool is_k = job < H + KVH;
  const int g = job - H - (is_k ? 0 : KVH);
  const int32_t seq = b.token_seq[t], pos = b.token_pos[t];
  const int64_t block = b.block_tables[static_cast<int64_t>(seq) * b.max_blocks_per_seq + pos / b.block_size];
  const int64_t row = ((block * KVH + g) * b.block_size + pos % b.block_size) * D;
  stage_out(x, (is_k ? kpool : vpool) + row, D, vec_kv, lane);
}

// The common case in registers: full rotary (rotary_dim == D), D a multiple of 2 x 16-byte packs, at most 32
// packs per head. A group of G lanes (a power of two >= D / V) holds one head, a pack per lane; the norm is a
// group reduction and the rotate-half partner of pack i is pack i +- D / (2V), fetched with shuffles, so no
// shared memory and no warp barriers: several heads per warp and many tokens in flight (prefill is
// latency-bound with one small head per warp). Same f32 arithmetic as the staged kernel above.
constexpr int kQkvPackedThreads = 256;

template <typename TA, typename TKV, int G>
__global__ void __launch_bounds__(kQkvPackedThreads)
    qkv_rope_kv_write_packed_kernel(const TA* __restrict__ qkv, QkvParams p, const float* __restrict__ cos_sin,
                                    DeviceBatch b, TKV* __restrict__ kpool, TKV* __restrict__ vpool,
                                    TA* __restrict__ q_out) {
  constexpr int V = kVec<TA>;
  const int H = p.num_heads, KVH = p.num_kv_heads, D = p.head_dim;
  const int packs = D / V, half_packs = packs / 2, half = D / 2;
  const int gl = threadIdx.x % G;  // pack of the head this lane holds
  const int job = blockIdx.y * (kQkvPackedThreads / G) + threadIdx.x / G;
  const bool active = job < H + 2 * KVH && gl < packs;
  const int64_t t = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  float x[V];
  if (active) {
    const Pack<TA, V> a = load_pack<TA, V>(qkv + (t * (H + 2 * KVH) + job) * D + gl * V);
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] = to_f32(a.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] = 0.0f;
  }
  const bool is_q = job < H, is_v = job >= H + KVH;
  // Shuffles below run on every lane (full mask); the results are used only where they apply.
  const float* norm_w = is_q ? p.q_norm : is_v ? nullptr : p.k_norm;
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < V; ++j) ss += x[j] * x[j];
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (norm_w && active) {
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(D) + p.norm_eps);
    const Pack<float, V> w = load_pack<float, V>(norm_w + gl * V);
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] = (x[j] * inv) * w.v[j];
  }
  const int lane = threadIdx.x & 31;
  const bool low = gl < half_packs;
  const int partner = lane - gl + (low ? gl + half_packs : gl - half_packs);
  float y[V];
#pragma unroll
  for (int j = 0; j < V; ++j) y[j] = __shfl_sync(0xffffffffu, x[j], partner & 31);
  if (!active) return;
  if (!is_v) {
    const float* cs = cos_sin + t * p.rotary_dim;  // [cos | sin] of this token
    const int i0 = (low ? gl : gl - half_packs) * V;
    const Pack<float, V> c = load_pack<float, V>(cs + i0), sn = load_pack<float, V>(cs + half + i0);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      // This lane's element is x1 (low half) or x2 of its pair; y[j] is the partner.
      float r1, r2;
      if (low) rope_pair(x[j], y[j], c.v[j], sn.v[j], r1, r2);
      else rope_pair(y[j], x[j], c.v[j], sn.v[j], r1, r2);
      x[j] = low ? r1 : r2;
    }
    if (is_q) {
      Pack<TA, V> o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<TA>(x[j]);
      store_pack<TA, V>(q_out + (t * H + job) * D + gl * V, o);
      return;
    }
  }
  const int g = job - H - (is_v ? KVH : 0);
  const int32_t seq = b.token_seq[t], pos = b.token_pos[t];
  const int64_t block = b.block_tables[static_cast<int64_t>(seq) * b.max_blocks_per_seq + pos / b.block_size];
  const int64_t row = ((block * KVH + g) * b.block_size + pos % b.block_size) * D;
  Pack<TKV, V> o;
#pragma unroll
  for (int j = 0; j < V; ++j) o.v[j] = from_f32<TKV>(x[j]);
  store_pack<TKV, V>((is_v ? vpool : kpool) + row + gl * V, o);
}

template <typename TA, typename TKV>
void launch_qkv(const void* qkv, const QkvParams& p, const float* cos_sin, const DeviceBatch& b, const DeviceKv& kv,
                void* q_out, cudaStream_t stream) {
  const int D = p.head_dim;
  constexpr int V = kVec<TA>;
  const bool vec_act = D % V == 0 && is_aligned(qkv, 16) && is_aligned(q_out, 16);
  const bool vec_kv = D % kVec<TKV> == 0 && is_aligned(kv.k, 16) && is_aligned(kv.v, 16);
  const int jobs = p.num_heads + 2 * p.num_kv_heads;
  const auto* qkv_t = static_cast<const TA*>(qkv);
  auto* kp = static_cast<TKV*>(kv.k);
  auto* vp = static_cast<TKV*>(kv.v);
  auto* q = static_cast<TA*>(q_out);
  const bool norm_aligned = (!p.q_norm || is_aligned(p.q_norm, 16)) && (!p.k_norm || is_aligned(p.k_norm, 16));
  const int packs = D / V;
  if (vec_act && vec_kv && norm_aligned && p.rotary_dim == D && D % (2 * V) == 0 && packs <= 32 &&
      is_aligned(cos_sin, 16)) {
    const auto go = [&](auto kernel, int g) {
      const dim3 grid(static_cast<unsigned>(b.num_tokens), static_cast<unsigned>(ceil_div(jobs, kQkvPackedThreads / g)));
      launch_kernel(kernel, grid, kQkvPackedThreads, 0, stream, qkv_t, p, cos_sin, b, kp, vp, q);
    };
    if (packs <= 4) go(qkv_rope_kv_write_packed_kernel<TA, TKV, 4>, 4);
    else if (packs <= 8) go(qkv_rope_kv_write_packed_kernel<TA, TKV, 8>, 8);
    else if (packs <= 16) go(qkv_rope_kv_write_packed_kernel<TA, TKV, 16>, 16);
    else go(qkv_rope_kv_write_packed_kernel<TA, TKV, 32>, 32);
  } else {
    const dim3 grid(static_cast<unsigned>(b.num_tokens), static_cast<unsigned>(ceil_div(jobs, kQkvWarps)));
    launch_kernel(qkv_rope_kv_write_kernel<TA, TKV>, grid, kQkvWarps * 32, 0, stream, qkv_t, p, cos_sin, b, kp, vp, q,
                  vec_act, vec_kv);
  }
  check_launch("qkv_rope_kv_write");
}

}  // namespace

// ---------------------------------------------------------------- convert

template <typename TI, typename TO>
__global__ void convert_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_f32<TO>(to_f32(x[i]));
}

// ---------------------------------------------------------------- argmax

// One block per row. Each thread scans a strided part of the row keeping (value, index) with strict '>'
// (its indices rise, so the first maximum stays); the merge prefers the larger value, then the lower index.
// Every thread starts from element 0, so a NaN there stays (index 0) and a NaN elsewhere never wins: the host's
// result in both cases.
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

__global__ void argmax_kernel(const float* __restrict__ logits, int64_t vocab, int32_t* __restrict__ ids) {
  pdl_wait();
  pdl_launch_dependents();
  const float* row = logits + blockIdx.x * vocab;
  float v = row[0];
  int i = 0;
  // Four loads in flight per thread (a row is a few hundred KB read by one block: latency-bound otherwise);
  // each thread still visits its indices in rising order.
  const int64_t step = blockDim.x;
  int64_t j = threadIdx.x;
  for (; j + 3 * step < vocab; j += 4 * step) {
    float a[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) a[u] = row[j + u * step];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (a[u] > v) {
        v = a[u];
        i = static_cast<int>(j + u * step);
      }
  }
  for (; j < vocab; j += step)
    if (row[j] > v) {
      v = row[j];
      i = static_cast<int>(j);
    }
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
    better(v, i, v2, i2);
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    v = lane < warps ? sv[lane] : sv[0];
    i = lane < warps ? si[lane] : si[0];
    for (int o = 16; o > 0; o >>= 1) {
      const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
      const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
      better(v, i, v2, i2);
    }
    if (lane == 0) ids[blockIdx.x] = i;
  }
}

// ---------------------------------------------------------------- scatter_tokens

__global__ void scatter_tokens_kernel(const int32_t* __restrict__ src, const int32_t* __restrict__ pairs, int64_t cap,
                                      int32_t* __restrict__ ids) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t n = min(static_cast<int64_t>(pairs[0]), cap);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    ids[pairs[1 + 2 * i]] = src[pairs[2 + 2 * i]];
}

// ---------------------------------------------------------------- add

template <typename T>
__global__ void add_kernel(T* __restrict__ r, const T* __restrict__ d, int64_t n) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    r[i] = from_f32<T>(to_f32(r[i]) + to_f32(d[i]));
}

// ---------------------------------------------------------------- launchers

void add(void* residual, const void* delta, int64_t n, DType act, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(act, "add", [&](auto t) {
    using T = decltype(t);
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 8192));
    launch_kernel(add_kernel<T>, blocks, 256, 0, stream, static_cast<T*>(residual), static_cast<const T*>(delta), n);
    check_launch("add");
  });
}

void scatter_tokens(const int32_t* src, const int32_t* pairs, int64_t cap, int32_t* ids, cudaStream_t stream) {
  if (cap == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(cap, 256), 1024));
  launch_kernel(scatter_tokens_kernel, blocks, 256, 0, stream, src, pairs, cap, ids);
  check_launch("scatter_tokens");
}

void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, cudaStream_t stream) {
  if (rows == 0) return;
  KILN_CHECK(vocab > 0 && vocab < INT32_MAX && rows < INT32_MAX, "argmax_rows: bad shape");
  launch_kernel(argmax_kernel, static_cast<unsigned>(rows), 1024, 0, stream, logits, vocab, ids);
  check_launch("argmax_rows");
}

void convert(const void* x, DType from, void* out, DType to, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(from, "convert from", [&](auto ti) {
    using TI = decltype(ti);
    dispatch_float(to, "convert to", [&](auto to_) {
      using TO = decltype(to_);
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 4096));
      launch_kernel(convert_kernel<TI, TO>, blocks, 256, 0, stream, static_cast<const TI*>(x), static_cast<TO*>(out), n);
      check_launch("convert");
    });
  });
}

void embedding(const void* table, DType table_dtype, int64_t row0, int64_t rows, const int32_t* ids,
               int64_t num_tokens, int64_t hidden, void* out, DType act, cudaStream_t stream) {
  if (num_tokens == 0 || hidden == 0) return;
  dispatch_float(table_dtype, "embedding table", [&](auto ti) {
    using TI = decltype(ti);
    dispatch_float(act, "embedding", [&](auto to) {
      using TO = decltype(to);
      constexpr int kThreads = 128;
      // 8 elements a step: 16-byte accesses for 2-byte types, two for f32.
      const bool vec = hidden % 8 == 0 && is_aligned(table, pack_align(8 * sizeof(TI))) &&
                       is_aligned(out, pack_align(8 * sizeof(TO)));
      const int w = vec ? 8 : 1;
      const dim3 grid(static_cast<unsigned>(ceil_div(hidden / w, kThreads)), grid_rows(num_tokens));
      launch_kernel(vec ? embedding_kernel<TI, TO, 8> : embedding_kernel<TI, TO, 1>, grid, kThreads, 0, stream,
                    static_cast<const TI*>(table), row0, rows, ids, num_tokens, hidden, static_cast<TO*>(out));
      check_launch("embedding");
    });
  });
}

void rmsnorm(const void* x, const float* w, float eps, void* out, int64_t rows, int64_t dim, DType act,
             cudaStream_t stream) {
  if (rows == 0) return;
  KILN_CHECK(dim > 0 && dim <= INT32_MAX, "rmsnorm: bad dim");
  dispatch_float(act, "rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    // x is only read; the kernel's pointer is non-const because add_rmsnorm shares it.
    launch_rmsnorm<T, false>(const_cast<T*>(static_cast<const T*>(x)), nullptr, w, eps, static_cast<T*>(out), rows,
                             dim, stream);
  });
}

void add_rmsnorm(void* residual, const void* delta, const float* w, float eps, void* out, int64_t rows, int64_t dim,
                 DType act, cudaStream_t stream) {
  if (rows == 0) return;
  KILN_CHECK(dim > 0 && dim <= INT32_MAX, "add_rmsnorm: bad dim");
  dispatch_float(act, "add_rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    launch_rmsnorm<T, true>(static_cast<T*>(residual), static_cast<const T*>(delta), w, eps, static_cast<T*>(out),
                            rows, dim, stream);
  });
}

void silu_mul(const void* gate_up, void* out, int64_t rows, int64_t inter, DType act, cudaStream_t stream) {
  if (rows == 0 || inter == 0) return;
  dispatch_float(act, "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* gu = static_cast<const T*>(gate_up);
    T* o = static_cast<T*>(out);
    // inter % V == 0 keeps the up half and every row 16-byte aligned too.
    if (inter % V == 0 && is_aligned(gu, 16) && is_aligned(o, 16)) launch_silu_mul<T, V>(gu, o, rows, inter, stream);
    else launch_silu_mul<T, 1>(gu, o, rows, inter, stream);
  });
}

void gather_rows(const void* x, const int32_t* rows, int64_t n, int64_t row_bytes, void* out, cudaStream_t stream) {
  if (n == 0 || row_bytes == 0) return;
  KILN_CHECK(row_bytes % 4 == 0, "gather_rows: row_bytes must be a multiple of 4");
  KILN_CHECK(is_aligned(x, 4) && is_aligned(out, 4), "gather_rows: pointers must be 4-byte aligned");
  constexpr int kThreads = 256;
  if (row_bytes % 16 == 0 && is_aligned(x, 16) && is_aligned(out, 16)) {
    const int64_t words = row_bytes / 16;
    const dim3 grid(static_cast<unsigned>(ceil_div(words, kThreads)), grid_rows(n));
    launch_kernel(gather_rows_kernel<uint4>, grid, kThreads, 0, stream, static_cast<const uint4*>(x), rows, n, words,
                  static_cast<uint4*>(out));
  } else {
    const int64_t words = row_bytes / 4;
    const dim3 grid(static_cast<unsigned>(ceil_div(words, kThreads)), grid_rows(n));
    launch_kernel(gather_rows_kernel<uint32_t>, grid, kThreads, 0, stream, static_cast<const uint32_t*>(x), rows, n,
                  words, static_cast<uint32_t*>(out));
  }
  check_launch("gather_rows");
}

void qkv_rope_kv_write(const void* qkv, DType act, const QkvParams& p, const float* cos_sin, const DeviceBatch& b,
                       const DeviceKv& kv, void* q_out, cudaStream_t stream) {
  if (b.num_tokens == 0) return;
  KILN_CHECK(p.num_heads > 0 && p.num_kv_heads > 0, "qkv_rope_kv_write: no heads");
  KILN_CHECK(p.head_dim > 0 && p.head_dim <= kMaxHeadDim, "qkv_rope_kv_write: head_dim out of range");
  KILN_CHECK(p.rotary_dim >= 0 && p.rotary_dim <= p.head_dim && p.rotary_dim % 2 == 0,
             "qkv_rope_kv_write: rotary_dim must be even and at most head_dim");
  KILN_CHECK(kv.num_kv_heads == p.num_kv_heads && kv.head_dim == p.head_dim,
             "qkv_rope_kv_write: KV pool shape does not match the layer");
  KILN_CHECK(b.block_size > 0 && b.max_blocks_per_seq > 0, "qkv_rope_kv_write: bad batch");
  KILN_CHECK(ceil_div(p.num_heads + 2 * p.num_kv_heads, kQkvWarps) <= 65535, "qkv_rope_kv_write: too many heads");
  dispatch_float(act, "qkv_rope_kv_write", [&](auto ta) {
    using TA = decltype(ta);
    dispatch_float(kv.dtype, "qkv_rope_kv_write KV", [&](auto tk) {
      using TKV = decltype(tk);
      launch_qkv<TA, TKV>(qkv, p, cos_sin, b, kv, q_out, stream);
    });
  });
}

}  // namespace kiln::cuda
