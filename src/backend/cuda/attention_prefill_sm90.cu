// Prefill attention (causal, paged KV, GQA, optional sliding window) on Hopper tensor cores: wgmma with
// operands in shared memory, a producer warpgroup gathering K/V tiles, NC consumer warpgroups computing.
//
// One CTA of NC + 1 warpgroups per (kv head g, sequence, tile of TQ = 64 NC / rep new tokens): the CTA's
// BM = 64 NC rows are (token, query head of g) pairs, token-major (row r: token q0 + r / rep, head
// g * rep + r % rep; rows past TQ * rep or the sequence's last token are padding: zero q, never written), so
// every K/V tile is gathered once for all the query heads that share it (GQA). CTA shapes (Sm90Cfg, chosen
// per launch in prefill_attention_sm90): NC = 3 with 64-key tiles for large batches (192 rows: 2/3 of the
// K/V bytes per FLOP of 128 rows, which measured load-bound), NC = 2 with 128-key tiles otherwise.
//  * Warpgroup 0 (producer, setmaxnreg down): cp.async 16-byte copies of the Q tile and of the K and V tiles,
//    row by row through the block table (any power-of-two block size; keys past the last row's position
//    zero-filled), into shared memory in the 128-byte swizzled layout wgmma reads (column blocks of 64
//    elements: row r's 16-byte chunk c at r * 128 + ((c ^ r % 8) * 16), 1024-byte aligned). K and V each
//    have their own ring of STAGES stages with "full" mbarriers (128 producer arrivals, each made by
//    cp.async.mbarrier.arrive.noinc once that thread's copies have landed; each consumer thread then fences
//    the async proxy before its wgmma reads) and "empty" mbarriers (one arrival per consumer warp once its
//    wgmma reading the stage is done).
//  * Warpgroups 1 .. NC (consumers, setmaxnreg up), 64 rows each: S = Q K^T as wgmma m64nBNk16 (Q and K from
//    shared memory, K-major), online softmax in f32 registers (log2 units, one FMA and one ex2 per score;
//    masks only on tiles crossing a row's causal/window boundary), O += P V as wgmma m64nDk16 with P from
//    registers (the S accumulator layout is the A fragment layout) and V from shared memory (MN-major,
//    transposed by the descriptor). Software-pipelined: tile j+1's Q K^T is issued before tile j's P V, and
//    its softmax runs while P V is on the tensor cores.
// Head dims 64, 96 (tiles padded to 128 columns in shared memory; the padding is never read) and 128.
// Machine code for sm_90a only (wgmma, setmaxnreg): the other passes compile a trapping stub, and the host
// side declines every device but compute capability 9.0.
#include "backend/cuda/attention_prefill_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/cuda/pdl.cuh"
#include "core/status.h"

// The stub passes (not sm_90a) reference none of the helpers below: no "declared but never referenced".
#pragma nv_diag_suppress 177

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_PREFILL_SM90A 1
#else
#define KILN_PREFILL_SM90A 0
#endif

namespace kiln::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// NC consumer warpgroups of 64 rows (BM = 64 NC rows per CTA), BN keys per K/V tile, STAGES-deep K and V rings.
// setmaxnreg budgets: producer PREG, consumers CREG (128 PREG + 128 NC CREG <= 65536).
template <int D_, int NC_, int BN_>
struct Sm90Cfg {
  static constexpr int D = D_, NC = NC_, BN = BN_;
  static constexpr int BM = 64 * NC;
  static constexpr int THREADS = 128 * (NC + 1);
  // NC = 1: two CTAs per SM (registers: 2 x 128 x (40 + 216); shared memory: under half the SM's).
  static constexpr int MINB = NC == 1 ? 2 : 1;
  static constexpr int PREG = NC == 2 ? 56 : 40;
  static constexpr int CREG = NC == 1 ? 216 : NC == 2 ? 224 : 152;
  static constexpr int STAGES = NC == 1 ? 2 : BN == 128 ? 3 : 4;
  static constexpr int NCB = (D + 63) / 64;  // 128-byte column blocks
  static constexpr int CH = D / 8;           // 16-byte chunks per row
  static constexpr int Q_WG_BYTES = NCB * 64 * 128;
  static constexpr int TILE_BYTES = NCB * BN * 128;
  static constexpr int CB_BYTES = BN * 128;  // one column block of a K/V tile
  static constexpr int Q_OFF = 0;
  static constexpr int K_OFF = Q_OFF + NC * Q_WG_BYTES;
  static constexpr int V_OFF = K_OFF + STAGES * TILE_BYTES;
  static constexpr int BAR_OFF = V_OFF + STAGES * TILE_BYTES;
  static constexpr int NBARS = 1 + 4 * STAGES;
  static constexpr size_t SMEM = BAR_OFF + NBARS * 8 + 1024;  // + slack to align the base to 1024
  static_assert(D % 16 == 0 && D <= 128, "head dims 64, 96, 128");
  static_assert(NC >= 1 && NC <= 3, "1 to 3 consumer warpgroups");
  static_assert(MINB == 1 || SMEM <= 232448 / 2 - 1024, "two CTAs per SM");
  static_assert(BN == 64 || BN == 128, "64 or 128 keys per tile");
  static_assert(SMEM <= 232448, "shared memory");
};

struct Sm90KernelArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int32_t* seqs;
  const int32_t* seq_first_token;
  const int32_t* seq_num_new;
  const int32_t* seq_context_len;
  const int32_t* block_tables;
  int32_t max_blocks_per_seq, block_size, block_shift;
  int32_t H, KVH, rep, tq, window;
  float scale_log2;
};

// ---------------------------------------------------------------- PTX helpers

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
// The mbarrier at `bar` gets one arrival once all of this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Orders generic-proxy shared-memory accesses (the cp.async copies this thread has seen complete through an
// mbarrier) before this thread's later async-proxy ones (wgmma reads).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of these registers across the wgmma issue / wait statements.
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(r[i][e])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading / stride byte offsets.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

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

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------- wgmma wrappers (sm_90a)
// ss: D[64 x 128] (+)= A[64 x 16] B[16 x 128], A and B from shared memory, both K-major; scale_d = 0 overwrites.
// rs: D[64 x N] += A[64 x 16] B[16 x N], A from registers, B from shared memory MN-major (transposed).
#if KILN_PREFILL_SM90A
// The wgmma forms the kernel uses, f16 and bf16: accumulator operands d[0, N) and their register lists.
#define KILN_WGMMA_ACC32(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define KILN_WGMMA_REGS32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define KILN_WGMMA_ACC48(d) \
  KILN_WGMMA_ACC32(d), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define KILN_WGMMA_REGS48 KILN_WGMMA_REGS32 ", " "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define KILN_WGMMA_ACC64(d) \
  KILN_WGMMA_ACC48(d), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define KILN_WGMMA_REGS64 KILN_WGMMA_REGS48 ", " "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
// D (f32, N / 2 registers per thread) = A B + scale_d D; A and B from shared memory (descriptors da, db).
#define KILN_WGMMA_SS(NAME, SHAPE, TY, NACC, I_DA, I_DB, I_SCALE)                                            \
  __device__ __forceinline__ void NAME(float(&d)[NACC], uint64_t da, uint64_t db, int scale_d) {             \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " I_SCALE ", 0;\n"                                       \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " "                                     \
                 "{" KILN_WGMMA_REGS##NACC "}, " I_DA ", " I_DB ", p, 1, 1, 0, 0;\n}\n"                        \
                 : KILN_WGMMA_ACC##NACC(d)                                                                     \
                 : "l"(da), "l"(db), "r"(scale_d));                                                          \
  }
// D += A B; A from registers (4 x 32-bit per thread), B from shared memory (transposed by the descriptor).
#define KILN_WGMMA_RS(NAME, SHAPE, TY, NACC, I_A, I_DB, I_SCALE)                                             \
  __device__ __forceinline__ void NAME(float(&d)[NACC], const uint32_t(&a)[4], uint64_t db) {               \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " I_SCALE ", 0;\n"                                       \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " "                                     \
                 "{" KILN_WGMMA_REGS##NACC "}, " I_A ", " I_DB ", p, 1, 1, 1;\n}\n"                           \
                 : KILN_WGMMA_ACC##NACC(d)                                                                     \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));                              \
  }

KILN_WGMMA_SS(wgmma_ss_n128_f16, "m64n128k16", "f16", 64, "%64", "%65", "%66")
KILN_WGMMA_SS(wgmma_ss_n64_f16, "m64n64k16", "f16", 32, "%32", "%33", "%34")
KILN_WGMMA_RS(wgmma_rs_n64_f16, "m64n64k16", "f16", 32, "{%32, %33, %34, %35}", "%36", "%37")
KILN_WGMMA_RS(wgmma_rs_n96_f16, "m64n96k16", "f16", 48, "{%48, %49, %50, %51}", "%52", "%53")
KILN_WGMMA_RS(wgmma_rs_n128_f16, "m64n128k16", "f16", 64, "{%64, %65, %66, %67}", "%68", "%69")
KILN_WGMMA_SS(wgmma_ss_n128_bf16, "m64n128k16", "bf16", 64, "%64", "%65", "%66")
KILN_WGMMA_SS(wgmma_ss_n64_bf16, "m64n64k16", "bf16", 32, "%32", "%33", "%34")
KILN_WGMMA_RS(wgmma_rs_n64_bf16, "m64n64k16", "bf16", 32, "{%32, %33, %34, %35}", "%36", "%37")
KILN_WGMMA_RS(wgmma_rs_n96_bf16, "m64n96k16", "bf16", 48, "{%48, %49, %50, %51}", "%52", "%53")
KILN_WGMMA_RS(wgmma_rs_n128_bf16, "m64n128k16", "bf16", 64, "{%64, %65, %66, %67}", "%68", "%69")
#undef KILN_WGMMA_SS
#undef KILN_WGMMA_RS
#endif  // KILN_PREFILL_SM90A

template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db) {
#if KILN_PREFILL_SM90A
  constexpr bool kH = std::is_same_v<T, __half>;
  if constexpr (N == 64) {
    if constexpr (kH) wgmma_rs_n64_f16(d, a, db);
    else wgmma_rs_n64_bf16(d, a, db);
  } else if constexpr (N == 96) {
    if constexpr (kH) wgmma_rs_n96_f16(d, a, db);
    else wgmma_rs_n96_bf16(d, a, db);
  } else {
    static_assert(N == 128, "N 64, 96 or 128");
    if constexpr (kH) wgmma_rs_n128_f16(d, a, db);
    else wgmma_rs_n128_bf16(d, a, db);
  }
#endif
}
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
#if KILN_PREFILL_SM90A
  constexpr bool kH = std::is_same_v<T, __half>;
  if constexpr (N == 64) {
    if constexpr (kH) wgmma_ss_n64_f16(d, da, db, scale_d);
    else wgmma_ss_n64_bf16(d, da, db, scale_d);
  } else {
    static_assert(N == 128, "N 64 or 128");
    if constexpr (kH) wgmma_ss_n128_f16(d, da, db, scale_d);
    else wgmma_ss_n128_bf16(d, da, db, scale_d);
  }
#endif
}

// ---------------------------------------------------------------- the kernel

// grid (KVH, sequences, ceil(max_new / tq)), block 384. CTA (g, y, z): kv head g, sequence seqs[y] (or y),
// token tile qt = gridDim.z - 1 - z (the late, heavy tiles first), tokens q0 = qt * tq ... + tq - 1.
template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS, C::MINB) prefill_sm90_kernel(const Sm90KernelArgs a) {
#if KILN_PREFILL_SM90A
  constexpr int D = C::D, NC = C::NC, BN = C::BN, S = C::STAGES, CH = C::CH;
  // Everything below reads what earlier kernels wrote (q, the KV cache, the batch's tables).
  pdl_wait();
  pdl_launch_dependents();

  const int g = blockIdx.x;
  const int s = a.seqs ? a.seqs[blockIdx.y] : static_cast<int>(blockIdx.y);
  const int qt = gridDim.z - 1 - blockIdx.z;
  const int num_new = a.seq_num_new[s];
  const int q0 = qt * a.tq;
  if (q0 >= num_new) return;
  const int ctx = a.seq_context_len[s], first = a.seq_first_token[s];
  const int rep = a.rep;
  const int ntok = min(a.tq, num_new - q0);
  const int rows_used = a.tq * rep;
  const int pos0 = ctx - num_new + q0;  // position of token q0
  const int kv_begin = a.window > 0 ? max(0, pos0 - a.window + 1) : 0;
  const int kv_end = pos0 + ntok;
  const int ntiles = (kv_end - kv_begin + BN - 1) / BN;

  extern __shared__ __align__(1024) unsigned char sm90_smem[];
  const uint32_t sbase = (smem_u32(sm90_smem) + 1023u) & ~1023u;
  const uint32_t sQ = sbase + C::Q_OFF, sK = sbase + C::K_OFF, sV = sbase + C::V_OFF, sBar = sbase + C::BAR_OFF;
  const uint32_t q_full = sBar;
  auto full_k = [&](int st) { return sBar + 8u * (1 + st); };
  auto full_v = [&](int st) { return sBar + 8u * (1 + S + st); };
  auto empty_k = [&](int st) { return sBar + 8u * (1 + 2 * S + st); };
  auto empty_v = [&](int st) { return sBar + 8u * (1 + 3 * S + st); };

  const int tid = threadIdx.x;
  if (tid == 0) {
    mbar_init(q_full, 128);
#pragma unroll
    for (int st = 0; st < S; ++st) {
      mbar_init(full_k(st), 128);
      mbar_init(full_v(st), 128);
      mbar_init(empty_k(st), 4 * NC);  // one arrival per consumer warp
      mbar_init(empty_v(st), 4 * NC);
    }
  }
  __syncthreads();

  if (tid < 128) {
    // ================================================================ producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(C::PREG));
    const int pt = tid;
    const T* qg = static_cast<const T*>(a.q);
    const T* kpool = static_cast<const T*>(a.k);
    const T* vpool = static_cast<const T*>(a.v);
    const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.max_blocks_per_seq;
    const int bmask = a.block_size - 1;

    // Q: BM rows x CH chunks, NC * CH / 2 per thread.
#pragma unroll 4
    for (int it = 0; it < NC * CH / 2; ++it) {
      const int i = pt + it * 128;
      const int r = i / CH, c = i % CH;
      const int tok = r / rep;
      const bool ok = r < rows_used && tok < ntok;
      const T* src = ok ? qg + (static_cast<int64_t>(first + q0 + tok) * a.H + g * rep + (r - tok * rep)) * D + c * 8
                        : qg;
      const uint32_t dst = sQ + (r >> 6) * C::Q_WG_BYTES + (c >> 3) * (64 * 128) + (r & 63) * 128 +
                           (((c & 7) ^ (r & 7)) << 4);
      cp_async16(dst, src, ok);
    }
    cp_async_arrive_noinc(q_full);

    // A K or V tile of BN keys from kt0 (keys past kv_end zero-filled: their block may not exist, and stale
    // NaNs times a zero probability would poison P V). Thread pt copies 16-byte chunk c = pt % CH of rows
    // pt / CH + RPP * i (for CH = 12 threads 120..127 idle).
    constexpr int RPP = 128 / CH, PASSES = (BN + RPP - 1) / RPP;
    const int cc = pt % CH, rr = pt / CH;
    const bool active = rr < RPP;
    const int64_t blk_stride = static_cast<int64_t>(a.KVH) * a.block_size * D;
    const int64_t head_off = static_cast<int64_t>(g) * a.block_size * D + cc * 8;
    const uint32_t col_off = (cc >> 3) * C::CB_BYTES;
    auto load_tile = [&](uint32_t dst_base, const T* pool, int kt0) {
      if (RPP * CH != 128 && !active) return;  // (a zero-fill copy would land on another thread's chunk)
#pragma unroll
      for (int it = 0; it < PASSES; ++it) {
        const int r = rr + it * RPP;
        if (RPP * PASSES != BN && r >= BN) break;
        const int j = kt0 + r;
        const bool ok = active && j < kv_end;
        const T* src = pool;
        if (ok) src += table[j >> a.block_shift] * blk_stride + head_off + (j & bmask) * D;
        cp_async16(dst_base + col_off + r * 128 + (((cc & 7) ^ (r & 7)) << 4), src, ok);
      }
    };

    // Items Q, K0, V0, K1, V1, ...: each thread's copies of an item complete its arrival on the item's full
    // barrier (cp.async.mbarrier.arrive.noinc: the thread never waits for its own copies).
    for (int j = 0; j < ntiles; ++j) {
      const int st = j % S;
      const uint32_t par = ((j / S) + 1) & 1;
      const int kt0 = kv_begin + j * BN;
      if (j >= S) mbar_wait(empty_k(st), par);
      load_tile(sK + st * C::TILE_BYTES, kpool, kt0);
      cp_async_arrive_noinc(full_k(st));
      if (j >= S) mbar_wait(empty_v(st), par);
      load_tile(sV + st * C::TILE_BYTES, vpool, kt0);
      cp_async_arrive_noinc(full_v(st));
    }
    cp_async_wait_all();  // no copy outlives its thread
  } else {
    // ================================================================ consumers
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(C::CREG));
    const int cw = tid / 128 - 1;  // 0 .. NC-1: rows 64 cw ... 64 cw + 63
    const int t = tid & 127, warp = t >> 5, lane = t & 31;
    const float sl2 = a.scale_log2;
    const int window = a.window;

    // This thread's rows r0 and r0 + 8: positions (padding rows act as the last token: finite, never written).
    const int r0 = cw * 64 + warp * 16 + (lane >> 2);
    int prow[2], lorow[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = r0 + 8 * i;
      prow[i] = pos0 + min(r / rep, ntok - 1);
      lorow[i] = window > 0 ? prow[i] - window + 1 : INT_MIN;
    }
    // The warpgroup's first and last rows' positions: tiles crossing neither bound need no mask.
    const int w_first = pos0 + min(cw * 64 / rep, ntok - 1);
    const int w_last = pos0 + min((cw * 64 + 63) / rep, ntok - 1);
    const int w_lo_last = window > 0 ? w_last - window + 1 : INT_MIN;

    const uint32_t q_base = sQ + cw * C::Q_WG_BYTES;
    float sc[BN / 2];      // S tile [64 x BN]: n8-tile nt at sc[4nt .. 4nt + 3]
    float o[D / 2];        // O [64 x D]
    uint32_t pf[BN / 16][4];  // P as the A fragments of P V, one per 16 keys
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;

    auto issue_qk = [&](int st) {
      const uint32_t k_base = sK + st * C::TILE_BYTES;
      reg_fence(sc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t da = make_desc(q_base + (kk >> 2) * (64 * 128) + (kk & 3) * 32, 16, 1024);
        const uint64_t db = make_desc(k_base + (kk >> 2) * C::CB_BYTES + (kk & 3) * 32, 16, 1024);
        wgmma_ss<T, BN>(sc, da, db, kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    auto issue_pv = [&](int st) {
      const uint32_t v_base = sV + st * C::TILE_BYTES;
      reg_fence(o);
      reg_fence(pf);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint64_t db = make_desc(v_base + kk * 16 * 128, C::CB_BYTES, 1024);
        wgmma_rs<T, D>(o, pf[kk], db);
      }
      wgmma_commit();
    };
    // Masks the scores of the tile at kt0, then softmax: new running max, the rescale factor corr of the
    // earlier state, p = 2^((s - m) * scale_log2) in place, this thread's part of the row sums.
    auto softmax = [&](int kt0, float (&corr)[2], float (&rs)[2]) {
      if (kt0 + BN - 1 > w_first || kt0 < w_lo_last) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = kt0 + nt * 8 + 2 * (lane & 3) + (e & 1);
            if (j > prow[e >> 1] || j < lorow[e >> 1]) sc[4 * nt + e] = -INFINITY;
          }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(sc[4 * nt], sc[4 * nt + 1]));
        mx[1] = fmaxf(mx[1], fmaxf(sc[4 * nt + 2], sc[4 * nt + 3]));
      }
      float ms[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float mn = fmaxf(m[i], mx[i]);
        const float mb = mn == -INFINITY ? 0.0f : mn;  // no key yet: everything scales to 0
        corr[i] = fast_exp2((m[i] - mb) * sl2);
        ms[i] = mb * sl2;
        m[i] = mn;
      }
      rs[0] = rs[1] = 0.0f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = fast_exp2(fmaf(sc[4 * nt + e], sl2, -ms[e >> 1]));
          sc[4 * nt + e] = p;
          rs[e >> 1] += p;
        }
    };
    auto pack_p = [&] {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        pf[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
        pf[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
        pf[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
        pf[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
      }
    };

    mbar_wait(q_full, 0);
    // Prologue: S of tile 0, its softmax (O is still 0: no rescale).
    mbar_wait(full_k(0), 0);
    fence_proxy_async();
    issue_qk(0);
    wgmma_wait<0>();
    reg_fence(sc);
    if (lane == 0) mbar_arrive(empty_k(0));
    {
      float corr[2], rs[2];
      softmax(kv_begin, corr, rs);
      l[0] = rs[0];
      l[1] = rs[1];
      pack_p();
    }
    // Steady state (straight-line, so that the compiler sees which wgmma group each wait retires): tile
    // j+1's S is issued before tile j's P V, and its softmax runs while P V is on the tensor cores.
    for (int j = 0; j + 1 < ntiles; ++j) {
      const int st = j % S, sn = (j + 1) % S;
      // (Both tiles before either GEMM: issuing Q K^T before waiting for V measured 2-5% slower.)
      mbar_wait(full_k(sn), ((j + 1) / S) & 1);
      mbar_wait(full_v(st), (j / S) & 1);
      fence_proxy_async();
      issue_qk(sn);
      issue_pv(st);
      float corr[2], rs[2];
      wgmma_wait<1>();  // S of tile j+1 is done (P V of tile j may still run)
      reg_fence(sc);
      if (lane == 0) mbar_arrive(empty_k(sn));
      softmax(kv_begin + (j + 1) * BN, corr, rs);
      wgmma_wait<0>();
      reg_fence(o);
      reg_fence(pf);
      if (lane == 0) mbar_arrive(empty_v(st));
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[4 * dn + 0] *= corr[0];
        o[4 * dn + 1] *= corr[0];
        o[4 * dn + 2] *= corr[1];
        o[4 * dn + 3] *= corr[1];
      }
      l[0] = l[0] * corr[0] + rs[0];
      l[1] = l[1] * corr[1] + rs[1];
      pack_p();
    }
    {  // the last tile's P V
      const int j = ntiles - 1, st = j % S;
      mbar_wait(full_v(st), (j / S) & 1);
      fence_proxy_async();
      issue_pv(st);
      wgmma_wait<0>();
      reg_fence(o);
      if (lane == 0) mbar_arrive(empty_v(st));
    }

    // Normalize and write this thread's rows.
    T* out = static_cast<T*>(a.out);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float li = l[i];
      li += __shfl_xor_sync(0xffffffffu, li, 1);
      li += __shfl_xor_sync(0xffffffffu, li, 2);
      const int r = r0 + 8 * i;
      const int tok = r / rep;
      if (r >= rows_used || tok >= ntok) continue;
      const float inv = 1.0f / li;  // > 0: the row's own key is always in range
      T* dst = out + (static_cast<int64_t>(first + q0 + tok) * a.H + g * rep + (r - tok * rep)) * D + 2 * (lane & 3);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<uint32_t*>(dst + dn * 8) = pack2<T>(o[4 * dn + 2 * i] * inv, o[4 * dn + 2 * i + 1] * inv);
    }
  }
#else
  // Not sm_90a (the host side launches this kernel only on compute capability 9.0 devices).
  pdl_wait();
  __trap();
#endif
}

// ---------------------------------------------------------------- host side

std::atomic<bool> g_enabled{true};

bool env_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("KILN_PREFILL_SM90");
    return !(e && std::string(e) == "0");
  }();
  return enabled;
}

// Compute capability 9.0 (cached per device).
bool device_is_sm90() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int8_t> cache[kMaxDevices] = {};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return false;
  if (dev < kMaxDevices) {
    const int8_t c = cache[dev].load(std::memory_order_relaxed);
    if (c != 0) return c == 1;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  const bool yes = major == 9 && minor == 0;
  if (dev < kMaxDevices) cache[dev].store(yes ? 1 : 2, std::memory_order_relaxed);
  return yes;
}

int device_sms() {
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return n;
  }();
  return sms;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, class C>
void launch_sm90(const Sm90KernelArgs& k, int32_t num_seqs, int64_t qtiles, cudaStream_t stream) {
  const cudaError_t e = cudaFuncSetAttribute(prefill_sm90_kernel<T, C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(C::SMEM));
  KILN_CHECK(e == cudaSuccess, std::string("prefill_attention_sm90: cudaFuncSetAttribute(") +
                                   std::to_string(C::SMEM) + " bytes of shared memory) failed: " + cudaGetErrorString(e));
  const dim3 grid(static_cast<unsigned>(k.KVH), static_cast<unsigned>(num_seqs), static_cast<unsigned>(qtiles));
  const cudaError_t le = launch_kernel(prefill_sm90_kernel<T, C>, grid, dim3(C::THREADS), C::SMEM, stream, k);
  KILN_CHECK(le == cudaSuccess, std::string("prefill_attention_sm90: launch failed: ") + cudaGetErrorString(le));
}

// The CTA shapes launched: 2 consumer warpgroups with 128-key tiles, 3 with 64-key tiles (see Sm90Cfg; the
// config also builds NC = 1, two CTAs per SM, and 2 x 64: both measured slower on the timed shapes).
enum class Sm90Shape { k2x128, k3x64 };
int shape_rows(Sm90Shape sh) { return sh == Sm90Shape::k3x64 ? 192 : 128; }

template <typename T, int D>
void launch_sm90_shape(const Sm90KernelArgs& k, Sm90Shape sh, int32_t num_seqs, int64_t qtiles, cudaStream_t stream) {
  switch (sh) {
    case Sm90Shape::k3x64: launch_sm90<T, Sm90Cfg<D, 3, 64>>(k, num_seqs, qtiles, stream); break;
    default: launch_sm90<T, Sm90Cfg<D, 2, 128>>(k, num_seqs, qtiles, stream); break;
  }
}

template <typename T>
void launch_sm90_d(const Sm90KernelArgs& k, int d, Sm90Shape sh, int32_t num_seqs, int64_t qtiles,
                   cudaStream_t stream) {
  switch (d) {
    case 64: launch_sm90_shape<T, 64>(k, sh, num_seqs, qtiles, stream); break;
    case 96: launch_sm90_shape<T, 96>(k, sh, num_seqs, qtiles, stream); break;
    default: launch_sm90_shape<T, 128>(k, sh, num_seqs, qtiles, stream); break;
  }
}

}  // namespace

void prefill_sm90_set_enabled(bool enabled) { g_enabled.store(enabled, std::memory_order_relaxed); }

bool prefill_attention_sm90(const PrefillSm90Args& a, cudaStream_t stream) {
  if (!g_enabled.load(std::memory_order_relaxed) || !env_enabled()) return false;
  const int d = a.head_dim;
  if (d != 64 && d != 96 && d != 128) return false;
  if (a.num_kv_heads <= 0 || a.num_heads <= 0 || a.num_heads % a.num_kv_heads != 0) return false;
  const int rep = a.num_heads / a.num_kv_heads;
  if (rep > 64 || a.num_kv_heads > 65535) return false;
  if (!(a.scale > 0.0f) || a.window < 0) return false;
  if (a.block_size <= 0 || (a.block_size & (a.block_size - 1)) != 0) return false;
  if (!aligned16(a.q) || !aligned16(a.out) || !aligned16(a.k) || !aligned16(a.v)) return false;
  if (a.num_seqs > 65535) return false;
  // CTA shape: 192 rows (3 consumer warpgroups, 64-key tiles: 2/3 of the K/V bytes per FLOP of 128 rows,
  // whose K/V loads measured as the bottleneck) when the batch makes at least 4 such CTAs per SM; else 128
  // rows (2 warpgroups, 128-key tiles: more, shorter CTAs). Measured on an H100: Llama-3-8B 4 x 2048 440 us
  // with 192 rows, 499 us with 128; Phi-3-mini 1 x 1024 37.9 us with 128 rows, 42 us with 192.
  // KILN_PREFILL_SM90_SHAPE=192x64 or 128x128 forces one (A/B timing).
  static const int force = [] {
    const char* e = std::getenv("KILN_PREFILL_SM90_SHAPE");
    if (!e) return 0;
    const std::string v = e;
    return v == "192x64" ? 1 : v == "128x128" ? 2 : 0;
  }();
  const int64_t ctas192 = (static_cast<int64_t>(a.max_new) + 192 / rep - 1) / (192 / rep) * a.num_kv_heads * a.num_seqs;
  Sm90Shape sh = ctas192 >= 4 * device_sms() ? Sm90Shape::k3x64 : Sm90Shape::k2x128;
  if (force == 1) sh = Sm90Shape::k3x64;
  if (force == 2) sh = Sm90Shape::k2x128;
  const int tq = shape_rows(sh) / rep;
  const int64_t qtiles = (static_cast<int64_t>(a.max_new) + tq - 1) / tq;
  if (qtiles > 65535) return false;
  if (!device_is_sm90()) return false;
  if (a.num_seqs <= 0 || a.max_new <= 0) return true;  // nothing to do

  Sm90KernelArgs k{};
  k.q = a.q;
  k.k = a.k;
  k.v = a.v;
  k.out = a.out;
  k.seqs = a.seqs;
  k.seq_first_token = a.seq_first_token;
  k.seq_num_new = a.seq_num_new;
  k.seq_context_len = a.seq_context_len;
  k.block_tables = a.block_tables;
  k.max_blocks_per_seq = a.max_blocks_per_seq;
  k.block_size = a.block_size;
  int shift = 0;
  while ((1 << shift) < a.block_size) ++shift;
  k.block_shift = shift;
  k.H = a.num_heads;
  k.KVH = a.num_kv_heads;
  k.rep = rep;
  k.tq = tq;
  k.window = a.window;
  k.scale_log2 = a.scale * kLog2e;
  if (a.bf16) launch_sm90_d<__nv_bfloat16>(k, d, sh, a.num_seqs, qtiles, stream);
  else launch_sm90_d<__half>(k, d, sh, a.num_seqs, qtiles, stream);
  return true;
}

bool prefill_attention_sm90(const void* q, const DeviceKv& kv, const DeviceBatch& b, const AttentionParams& p,
                            void* out, bool bf16, const int32_t* seqs, int32_t num_seqs, int32_t max_new,
                            cudaStream_t stream) {
  PrefillSm90Args a;
  a.q = q;
  a.k = kv.k;
  a.v = kv.v;
  a.out = out;
  a.seqs = seqs;
  a.seq_first_token = b.seq_first_token;
  a.seq_num_new = b.seq_num_new;
  a.seq_context_len = b.seq_context_len;
  a.block_tables = b.block_tables;
  a.num_seqs = num_seqs;
  a.max_new = max_new;
  a.max_blocks_per_seq = b.max_blocks_per_seq;
  a.block_size = b.block_size;
  a.num_heads = p.num_heads;
  a.num_kv_heads = p.num_kv_heads;
  a.head_dim = p.head_dim;
  a.window = p.window;
  a.scale = p.scale;
  a.bf16 = bf16;
  if (kv.dtype != (bf16 ? DType::kBF16 : DType::kF16)) return false;
  return prefill_attention_sm90(a, stream);
}

}  // namespace kiln::cuda
