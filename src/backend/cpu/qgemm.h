// CPU linear layers with block-quantized weights: y = x · Wᵀ (+ bias), W [n out, k in] stored as GGUF
// Q8_0, Q4_0 or Q4_1 (32 values per block along k; k must be a multiple of 32). W stays quantized.
//
// Packed layout (pack_qweight, once at engine build time; independent of the CPU). Rows go in panels of
// 16 (one 32-bit lane each) and panels in groups of 4 (64 rows; n padded with zero rows). A group is
// its kb = k/32 blocks back to back, and block b of a group is
//     [quants of panel 0 .. panel 3: 4 x QB bytes] [d of panel 0 .. 3: 4 x 32 B] [m of panel 0 .. 3: 4 x 32 B]
// (m for Q4_1 only; d and m are the GGUF f16 scales, row r of a panel at element r). Within a panel's
// QB quant bytes the 32 k go in quads (4 consecutive k); one 64-byte vector holds a quad of all 16 rows,
// row r in bytes 4r..4r+3, so that one vpdpbusd (pmaddubsw on AVX2: 8 rows per ymm) multiplies a quad
// of every row by one broadcast 4-byte quad of x and each lane ends the block with its row's whole dot:
//     Q8_0: QB = 512, vector s (0..7) = quad s, int8 as stored.
//     Q4_0/Q4_1: QB = 256, vector t (0..3) has quad 2t in its low nibbles and quad 2t+1 in its high
//     nibbles, unsigned 0..15 as stored.
// Group blocks are 1280 (Q4_1), 1152 (Q4_0) and 2176 (Q8_0) bytes: 64-byte aligned, and exactly GGUF's
// bytes per weight (0.625, 0.5625, 1.0625) when n is a multiple of 64.
// Why (measured on the 2-core Zen 4, decode, one thread, W streamed from DRAM): a first layout with
// 16-row panels stored one after the other (scales in arrays after each panel's quants) and 4 panels
// read at once got Q4_1 to only 40-55% of a plain read's bandwidth (short streams, 8 of them); one
// group per tile makes each thread's part of W one sequential stream: 75-100%. The decode kernel also
// walks each group block in memory order (panel by panel): quad-major order (4 interleaved 512-byte
// strides) had Q8_0 at ~40%, memory order 65-90%. Neither software prefetch (1-4 group blocks ahead)
// nor two groups per decode tile (two streams per thread) helped on Zen 4. f16 scales are kept (f32
// would add 20% to Q4_1's bytes).
//
// Numerics (all kernels, and qgemm_reference; as llama.cpp's CPU path, with the scales kept in f32):
//  * Each row of x is quantized per block of 32: amax = max |x|, d = amax / 127 (f32), id = d ? 1/d : 0,
//    q = round(x * id) (to nearest, ties away from zero: roundf, as ggml's reference q8_0 quantizer),
//    int8 in [-127, 127]. Kept per block: d, sq = sum of q, s = d * sq (for Q4_1's min term). x is
//    quantized once per call; x must be finite.
//  * Per block b of weight row j: the integer dot of the stored quants with q is exact in int32
//    (Q4_0 uses sum((w - 8) q) = sum(w q) - 8 sq; Q8_0 on VNNI adds 128 to w and subtracts 128 sq;
//    4-bit high nibbles on VNNI decode are used in place, as 16 w, and the sum divided by 16 exactly),
//    then in f32: c = dw * d (one multiply, dw the f16 scale widened exactly),
//    acc = fma(float(dot), c, acc), and for Q4_1 also acc = fma(mw, s, acc). acc starts at 0 and
//    goes over the blocks in increasing k; y = acc + bias.
//    So a row of y does not depend on m, on the other rows, on the tiling or on the thread count
//    (batch invariance, bit-exact), and the AVX-512, AVX2 and scalar kernels agree bit for bit
//    (the scalar kernel uses std::fma, the library's correctly rounded fused multiply-add).
//
// Kernels (qgemm_avx512.cpp, qgemm_avx2.cpp, qgemm_scalar.cpp; function-level target attributes, chosen
// at run time): AVX-512 VNNI (vpdpbusd) when present, else AVX2 (pmaddubsw, int16 sums within a block for
// 4-bit weights, pmaddwd to int32), else scalar. A register tile of MR rows of x by NP panels keeps its
// int32 block sums and f32 accumulators in registers: decode (m = 1) takes a whole group per tile;
// prefill 3 rows x 4 panels on AVX-512 (2 x 4 half panels on AVX2). Threads split the panels of n (m = 1:
// each thread streams its own contiguous part of W), and the rows of m when n has few panels.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cpu/gemm.h"  // Isa, isa_available, best_isa
#include "core/quant.h"
#include "core/thread_pool.h"

namespace kiln::cpu {

// Output rows per panel (one zmm lane each), panels per group of the packed layout; values per
// quantization block.
constexpr int64_t kQgemmPanel = 16;
constexpr int64_t kQgemmGroup = 4;
constexpr int64_t kQgemmGroupRows = kQgemmPanel * kQgemmGroup;
constexpr int64_t kQgemmBlock = 32;

// Whether qgemm handles weights of type t (Q8_0, Q4_0, Q4_1).
bool qgemm_supports(GgmlType t);

// Bytes that pack_qweight writes for W [n, k] of type t. A multiple of 64. k must be a multiple of 32.
size_t packed_qweight_bytes(GgmlType t, int64_t n, int64_t k);

// rows: n rows, each k/32 GGUF blocks of type t, back to back (as in the GGUF file).
// dst: 64-byte aligned, packed_qweight_bytes(t, n, k) bytes.
void pack_qweight(const void* rows, GgmlType t, int64_t n, int64_t k, void* dst);

// y[m, n] (f32, row stride ldy) = x[m, k] (f32, row stride ldx) · Wᵀ + bias (bias may be null, f32 [n]).
// `packed` comes from pack_qweight. y must not overlap x. Splits the work over `pool` like gemm(); must
// not be called from inside pool.run. Shapes and pointers are checked with KILN_CHECK.
void qgemm(const float* x, int64_t ldx, int64_t m, const void* packed, GgmlType t, int64_t n, int64_t k,
           const float* bias, float* y, int64_t ldy, ThreadPool& pool);
// qgemm with the kernels of `isa` (which must be available; kAvx512 without VNNI runs the AVX2 kernels).
void qgemm_with_isa(Isa isa, const float* x, int64_t ldx, int64_t m, const void* packed, GgmlType t, int64_t n,
                    int64_t k, const float* bias, float* y, int64_t ldy, ThreadPool& pool);

// The kernel qgemm uses for t on this CPU: "avx512_vnni_q4_1", "avx2_q8_0", "scalar_q4_0", ...
const char* qgemm_kernel_name(GgmlType t);
const char* qgemm_kernel_name_for(Isa isa, GgmlType t);

// Reference for tests: the same numerics with plain loops, W unpacked (GGUF rows), x dense [m, k].
void qgemm_reference(const float* x, int64_t m, const void* rows, GgmlType t, int64_t n, int64_t k,
                     const float* bias, float* y);

// Quantizes one row of x (k a multiple of 32) as described above: q [k] int8, and per block d, sq, s.
// Scalar, the definition the kernels follow (exposed for tests).
void quantize_activations_reference(const float* x, int64_t k, int8_t* q, float* d, int32_t* sq, float* s);

namespace detail {

// The per-block data of one quantized activation row.
struct QxBlock {
  float d;     // scale: amax / 127
  int32_t sq;  // sum of the 32 int8 values
  float s;     // d * sq
};

struct QgemmArgs {
  const int8_t* xq;      // quantized x, row i at xq + i * ldq
  const QxBlock* xb;     // per-block data, row i at xb + i * kb
  int64_t ldq;
  int64_t m;
  const uint8_t* packed;
  GgmlType t;
  int64_t n;
  int64_t k;
  int64_t kb;            // k / 32
  int64_t gb;            // bytes of one block of a group (qgroup_block_bytes)
  size_t group_bytes;    // kb * gb
  const float* bias;
  float* y;
  int64_t ldy;
};

// Computes rows [r0, r1) of y for the columns of panels [p0, p1), on the calling thread.
using QgemmBlockFn = void (*)(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
void qgemm_block_scalar(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
void qgemm_block_avx2(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
void qgemm_block_avx512_vnni(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1);

// Quantizes `rows` rows of x (row stride ldx, k values each) into q (row stride ldq) and blk (kb per row),
// bit-identical to quantize_activations_reference.
using QuantizeXFn = void (*)(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq,
                             QxBlock* blk);
void quantize_x_scalar(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq, QxBlock* blk);
void quantize_x_avx2(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq, QxBlock* blk);
void quantize_x_avx512(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq, QxBlock* blk);

// GGUF block bytes of the supported types (quant.cpp's table covers all types; these are the three here).
constexpr int64_t qblock_bytes(GgmlType t) {
  return t == GgmlType::kQ8_0 ? 34 : t == GgmlType::kQ4_0 ? 18 : t == GgmlType::kQ4_1 ? 20 : 0;
}
// Bytes of one block's quants for a whole panel.
constexpr int64_t qpanel_block_bytes(GgmlType t) { return t == GgmlType::kQ8_0 ? 512 : 256; }
// f16 scale arrays per block (d, and m for Q4_1).
constexpr int64_t qscale_arrays(GgmlType t) { return t == GgmlType::kQ4_1 ? 2 : 1; }
// Bytes of one block of a group: its panels' quants, then their d, then their m.
constexpr int64_t qgroup_block_bytes(GgmlType t) {
  return kQgemmGroup * (qpanel_block_bytes(t) + 32 * qscale_arrays(t));
}

}  // namespace detail

}  // namespace kiln::cpu
