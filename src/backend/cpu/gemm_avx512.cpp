// AVX-512 GEMM kernels: vdpbf16ps for bf16 weights, FMA for f32 and (F16C-widened) f16 weights.
//
// Micro-kernel: MR rows of x times NP panels (16 output columns each), all MR*NP accumulators in
// zmm registers, one pass over k. Every output element is a single accumulation chain in k order
// whatever MR and NP are, so the tile shape (m remainder, decode vs prefill shapes) never changes
// the result.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "backend/cpu/gemm.h"
#include "core/checked_math.h"

#define KILN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define KILN_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

namespace kiln::cpu::detail {

namespace {

constexpr int64_t P = kGemmPanel;
constexpr int kMaxMR = 8;
constexpr int kMaxNP = 4;

struct Tile {
  const void* x;      // first row: bf16 pairs (kBF16) or f32
  int64_t ldx;        // in elements of x
  const void* w;      // first panel
  int64_t wps;        // panel stride in elements of w
  int64_t kn;         // k pairs (kBF16) or k
  float* y;           // first row, first column of the tile
  int64_t ldy;
  const float* bias;  // at the tile's first column, or null
  int64_t ncols;      // valid columns from the tile's first column (> 16 * (NP - 1))
};

using TileFn = void (*)(const Tile&);

template <int MR, int NP>
KILN_AVX512 inline void store_tile(const Tile& t, __m512 (&acc)[MR][NP]) {
#pragma GCC unroll 4
  for (int j = 0; j < NP; ++j) {
    const int64_t nv = std::min<int64_t>(P, t.ncols - j * P);
    const __mmask16 mask = static_cast<__mmask16>(nv >= P ? 0xffffu : (1u << nv) - 1u);
    __m512 b = _mm512_setzero_ps();
    if (t.bias) b = _mm512_maskz_loadu_ps(mask, t.bias + j * P);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512 v = t.bias ? _mm512_add_ps(acc[i][j], b) : acc[i][j];
      _mm512_mask_storeu_ps(t.y + i * t.ldy + j * P, mask, v);
    }
  }
}

// ---- bf16 weights: vdpbf16ps on [k/2][16][2] panels, x pre-rounded to bf16 pairs. ----
template <int MR, int NP>
KILN_AVX512_BF16 void tile_bf16(const Tile& t) {
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
  const uint16_t* x = static_cast<const uint16_t*>(t.x);
  const uint16_t* w = static_cast<const uint16_t*>(t.w);
  for (int64_t kk = 0; kk < t.kn; ++kk) {
    __m512i b[NP];
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) b[j] = _mm512_load_si512(w + j * t.wps + kk * 2 * P);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, x + i * t.ldx + 2 * kk, 4);
      const __m512i av = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)b[j]);
    }
  }
  store_tile<MR, NP>(t, acc);
}

// ---- f32 weights: FMA on [k][16] panels. ----
template <int MR, int NP>
KILN_AVX512 void tile_f32(const Tile& t) {
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* x = static_cast<const float*>(t.x);
  const float* w = static_cast<const float*>(t.w);
  for (int64_t kk = 0; kk < t.kn; ++kk) {
    __m512 b[NP];
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) b[j] = _mm512_load_ps(w + j * t.wps + kk * P);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(x[i * t.ldx + kk]);
#pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_fmadd_ps(av, b[j], acc[i][j]);
    }
  }
  store_tile<MR, NP>(t, acc);
}

// ---- f16 weights: widen [k][16] panel rows with vcvtph2ps, FMA. ----
template <int MR, int NP>
KILN_AVX512 void tile_f16(const Tile& t) {
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* x = static_cast<const float*>(t.x);
  const uint16_t* w = static_cast<const uint16_t*>(t.w);
  for (int64_t kk = 0; kk < t.kn; ++kk) {
    __m512 b[NP];
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j)
      b[j] = _mm512_maskz_cvtph_ps(  // (maskz: GCC 12's _mm512_cvtph_ps warns)
          static_cast<__mmask16>(0xffff), _mm256_load_si256(reinterpret_cast<const __m256i*>(w + j * t.wps + kk * P)));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(x[i * t.ldx + kk]);
#pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_fmadd_ps(av, b[j], acc[i][j]);
    }
  }
  store_tile<MR, NP>(t, acc);
}

template <template <int, int> class F, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> make_table(std::index_sequence<I...>) {
  return {F<static_cast<int>(I / kMaxNP) + 1, static_cast<int>(I % kMaxNP) + 1>::fn...};
}
template <int MR, int NP>
struct Bf16Fn {
  static constexpr TileFn fn = &tile_bf16<MR, NP>;
};
template <int MR, int NP>
struct F32Fn {
  static constexpr TileFn fn = &tile_f32<MR, NP>;
};
template <int MR, int NP>
struct F16Fn {
  static constexpr TileFn fn = &tile_f16<MR, NP>;
};
constexpr auto kSeq = std::make_index_sequence<kMaxMR * kMaxNP>();
constexpr std::array<TileFn, kMaxMR * kMaxNP> kBf16Tiles = make_table<Bf16Fn>(kSeq);
constexpr std::array<TileFn, kMaxMR * kMaxNP> kF32Tiles = make_table<F32Fn>(kSeq);
constexpr std::array<TileFn, kMaxMR * kMaxNP> kF16Tiles = make_table<F16Fn>(kSeq);

// Rounds n floats to bf16 exactly like kiln::f32_to_bf16 (nearest even, NaN kept quiet), writes
// `padded` >= n values (zeros after n).
KILN_AVX512 void to_bf16_row(const float* src, int64_t n, uint16_t* dst, int64_t padded) {
  // (The maskz_ forms with a full mask avoid GCC 12's spurious -Wmaybe-uninitialized in the plain ones.)
  const __mmask16 all = static_cast<__mmask16>(0xffff);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  const __m512i bias = _mm512_set1_epi32(0x7fff);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  for (int64_t i = 0; i < padded; i += 16) {
    const int64_t left = n - i;
    const __mmask16 mask = static_cast<__mmask16>(left >= 16 ? 0xffffu : left <= 0 ? 0u : (1u << left) - 1u);
    const __m512i bits = _mm512_maskz_loadu_epi32(mask, src + i);
    const __m512i high = _mm512_maskz_srli_epi32(all, bits, 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, abs_mask), inf);
    __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(bias, _mm512_and_si512(high, one)));
    r = _mm512_maskz_srli_epi32(all, r, 16);
    r = _mm512_mask_or_epi32(r, nan, high, quiet);
    const int64_t store = std::min<int64_t>(16, padded - i);
    _mm512_mask_cvtepi32_storeu_epi16(dst + i, static_cast<__mmask16>(store >= 16 ? 0xffffu : (1u << store) - 1u), r);
  }
}

// Tile shape for a block of `rows` rows: decode-sized blocks take every row at once and as many
// panels as fit (more independent streams of W in flight); prefill uses 8 rows x 3 panels, 24
// accumulators (measured on Zen 4: ~97% of the vdpbf16ps / FMA peak on one core; 12 x 2 gets ~90%).
struct TileShape {
  int mr, np;
};
TileShape tile_shape(int64_t rows) {
  if (rows <= 4) return {static_cast<int>(rows), 4};
  return {static_cast<int>(std::min<int64_t>(rows, kMaxMR)), 3};
}

}  // namespace

KILN_AVX512 void gemm_block_avx512(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const bool bf16 = a.wtype == DType::kBF16;
  const int64_t k = a.k;
  const int64_t kp = a.wtype == DType::kF32 ? k : static_cast<int64_t>(round_up(k, 2));
  const size_t esize = a.wtype == DType::kF32 ? 4 : 2;
  const std::array<TileFn, kMaxMR * kMaxNP>& tiles =
      bf16 ? kBf16Tiles : a.wtype == DType::kF16 ? kF16Tiles : kF32Tiles;

  // Rows per block (a multiple of the tile height): the block's activations (<= 256 KiB) stay in L2
  // while all the thread's panels pass by.
  const int64_t x_row_bytes = std::max<int64_t>(kp, 1) * (bf16 ? 2 : 4);
  int64_t mb_max = std::max<int64_t>(kMaxMR, (256 << 10) / x_row_bytes / kMaxMR * kMaxMR);
  mb_max = std::min<int64_t>(mb_max, 512);

  uint16_t* xb = nullptr;
  if (bf16) xb = static_cast<uint16_t*>(thread_scratch(static_cast<size_t>(std::min(mb_max, r1 - r0) * kp * 2)));

  for (int64_t rb = r0; rb < r1; rb += mb_max) {
    const int64_t rows = std::min(mb_max, r1 - rb);
    if (bf16)
      for (int64_t i = 0; i < rows; ++i) to_bf16_row(a.x + (rb + i) * a.ldx, k, xb + i * kp, kp);
    const TileShape s = tile_shape(rows);
    for (int64_t p = p0; p < p1; p += s.np) {
      const int np = static_cast<int>(std::min<int64_t>(s.np, p1 - p));
      Tile t;
      t.w = static_cast<const char*>(a.packed) + static_cast<size_t>(p * kp * P) * esize;
      t.wps = kp * P;
      t.kn = bf16 ? kp / 2 : k;
      t.ldy = a.ldy;
      t.bias = a.bias ? a.bias + p * P : nullptr;
      t.ncols = a.n - p * P;
      t.ldx = bf16 ? kp : a.ldx;
      for (int64_t i = 0; i < rows; i += s.mr) {
        const int mr = static_cast<int>(std::min<int64_t>(s.mr, rows - i));
        t.x = bf16 ? static_cast<const void*>(xb + i * kp) : static_cast<const void*>(a.x + (rb + i) * a.ldx);
        t.y = a.y + (rb + i) * a.ldy + p * P;
        tiles[static_cast<size_t>((mr - 1) * kMaxNP + (np - 1))](t);
      }
    }
  }
}

}  // namespace kiln::cpu::detail
