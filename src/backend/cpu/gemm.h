// CPU matrix multiply for linear layers: y = x · Wᵀ (+ bias), W stored as PyTorch does ([N out, K in]).
//
// W is packed once (pack_weight, at engine build time) into panels of 16 output rows:
//   kF32  : [ceil(n/16)][k][16]            f32,  one 64-byte row of 16 outputs per k
//   kBF16 : [ceil(n/16)][ceil(k/2)][16][2] bf16, pairs of k interleaved: one 64-byte row per k pair,
//                                               exactly what one vdpbf16ps consumes
//   kF16  : [ceil(n/16)][k2][16]           f16,  32 bytes per k (k2 = k rounded up to even, so
//                                               that every panel starts 64-byte aligned)
// Padding rows/columns are zero. The layout does not depend on the CPU; the kernel is chosen at run time.
//
// Numerics (all kernels):
//  * fp32 accumulation. Every output element is ONE accumulation chain over k in increasing order
//    (for kBF16: per k pair, the odd element's product is added first, then the even one's, which is
//    vdpbf16ps' order), started at 0; the bias is added after the last k. So a row of y does not
//    depend on m, on the other rows of x, on the tile it falls in or on the thread count
//    (batch invariance, bit-exact).
//  * kBF16: activations are rounded to bf16 (round to nearest even, like kiln::f32_to_bf16); the
//    products of two bf16 are exact in fp32, so the AVX-512 (vdpbf16ps), AVX2 and scalar kernels
//    give bit-identical results (except where vdpbf16ps flushes denormal inputs/partial sums).
//  * kF32 / kF16: activations stay fp32; W is widened exactly (F16C for kF16). AVX-512 and AVX2
//    use fused multiply-add in the same order and agree bit for bit; the scalar kernel uses
//    separate multiply and add (it runs on CPUs without FMA), so it differs in the last bits.
//
// Kernels (gemm_avx512.cpp, gemm_avx2.cpp, gemm_scalar.cpp; function-level target attributes, chosen
// at run time from cpu_features()): a register tile of MR rows x NP panels, accumulators in
// registers for the whole k loop. AVX-512: 8 x 3 panels (24 zmm) for prefill, m x 4 panels for
// decode (m <= 4: four streams of W in flight per thread); x is converted to bf16 once per block of
// rows for kBF16. Rows are processed in blocks whose activations fit in L2. Threads split the panels
// of n (m = 1: each thread streams its own part of W), and the rows of m when n has few panels.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace kiln::cpu {

// Output rows per panel of the packed layout.
constexpr int64_t kGemmPanel = 16;

// Bytes that pack_weight writes for W [n, k] stored as `wtype` (kF32, kBF16 or kF16). A multiple of 64.
size_t packed_weight_bytes(DType wtype, int64_t n, int64_t k);

// Converts W (src_type: kF32/kBF16/kF16, [n,k] row-major) to wtype (rounding to nearest even) and
// writes the packed layout to dst (64-byte aligned, packed_weight_bytes(wtype,n,k) bytes).
void pack_weight(const void* w, DType src_type, int64_t n, int64_t k, DType wtype, void* dst);

// y[m, n] (f32, row stride ldy) = x[m, k] (f32, row stride ldx) · Wᵀ + bias (bias may be null, f32 [n]).
// `packed` comes from pack_weight(..., wtype, ...). y must not overlap x. Splits the work over `pool`
// (over panels of n, and over rows of m when there are few panels); must not be called from inside
// pool.run. Shapes and pointers are checked with KILN_CHECK (they are bugs, not user errors).
void gemm(const float* x, int64_t ldx, int64_t m, const void* packed, DType wtype, int64_t n, int64_t k,
          const float* bias, float* y, int64_t ldy, ThreadPool& pool);

// Reference (plain loops, double accumulation) for tests: same as gemm but takes W unpacked
// ([n, k] row-major, stored as wtype). Like gemm, for wtype kBF16 it first rounds x to bf16.
void gemm_reference(const float* x, int64_t m, const void* w, DType wtype, int64_t n, int64_t k,
                    const float* bias, float* y);

// Which kernel gemm() uses for this wtype on this CPU: "avx512_bf16", "avx512_fma", "avx512_f16c",
// "avx2_fma", "avx2_f16c", "avx2_bf16", "scalar".
const char* gemm_kernel_name(DType wtype);

// ---- Explicit ISA selection (tests, benchmarks). ----
enum class Isa { kScalar, kAvx2, kAvx512 };
const char* isa_name(Isa isa);
// Whether this CPU (as capped by KILN_CPU_ISA) can run kernels of `isa`.
//   kAvx2: AVX2+FMA+F16C.  kAvx512: that plus AVX-512F/BW/VL (bf16 weights additionally use
//   AVX512_BF16 when present, else the AVX2 kernel).
bool isa_available(Isa isa);
// The best available ISA; what gemm() uses.
Isa best_isa();
const char* gemm_kernel_name_for(Isa isa, DType wtype);
// gemm() with the kernels of `isa` (which must be available).
void gemm_with_isa(Isa isa, const float* x, int64_t ldx, int64_t m, const void* packed, DType wtype, int64_t n,
                   int64_t k, const float* bias, float* y, int64_t ldy, ThreadPool& pool);

namespace detail {

struct GemmArgs {
  const float* x;
  int64_t ldx;
  int64_t m;
  const void* packed;
  DType wtype;
  int64_t n;
  int64_t k;
  const float* bias;
  float* y;
  int64_t ldy;
};

// Computes rows [r0, r1) of y for the columns of panels [p0, p1), on the calling thread.
using GemmBlockFn = void (*)(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);

void gemm_block_scalar(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
void gemm_block_avx2(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
// kF32/kF16 need AVX-512F/BW/VL + FMA + F16C; kBF16 additionally AVX512_BF16.
void gemm_block_avx512(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);

// How the GEMMs split their work over a pool: `n_units` units of n (panels, or groups of panels) into
// n_chunks, and, when there are too few units to keep every thread busy, the m rows into m_chunks (of at
// least 16 rows, but at least one per thread). Several chunks per thread (ThreadPool::kChunksPerThread),
// taken by whichever thread is free. k is never split, so no output depends on the split.
struct WorkSplit {
  int64_t n_chunks, m_chunks;
};
WorkSplit split_work(int64_t m, int64_t n_units, int64_t threads);

// Per-thread scratch, 64-byte aligned, grown on demand (never shrinks).
void* thread_scratch(size_t bytes);

// Rounds n floats to bf16 (as kiln::f32_to_bf16) and widens them back to f32.
void round_to_bf16_f32(const float* src, float* dst, int64_t n);

}  // namespace detail

}  // namespace kiln::cpu
