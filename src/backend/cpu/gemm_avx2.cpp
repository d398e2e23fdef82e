// AVX2 + FMA + F16C GEMM kernels. A 16-column panel is two ymm halves. bf16 weights (no
// AVX512_BF16 here) are widened from the pair-interleaved layout with a shift (even k) and a mask
// (odd k) and multiplied with activations rounded to bf16: the products are exact, and the odd k of
// each pair is added first, so the sums equal vdpbf16ps'.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#include "backend/cpu/gemm.h"
#include "core/checked_math.h"

#define KILN_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace kiln::cpu::detail {

namespace {

constexpr int64_t P = kGemmPanel;
constexpr int kMaxMR = 6;
constexpr int kMaxNP = 2;

struct Tile {
  const float* x;     // first row: f32 (for kBF16 already rounded to bf16, k padded to even)
  int64_t ldx;
  const void* w;      // first panel
  int64_t wps;        // panel stride in elements of w
  int64_t kn;         // k pairs (kBF16) or k
  float* y;
  int64_t ldy;
  const float* bias;  // at the tile's first column, or null
  int64_t ncols;      // valid columns from the tile's first column
};

using TileFn = void (*)(const Tile&);

template <int MR, int NP>
KILN_AVX2 inline void store_tile(const Tile& t, __m256 (&acc)[MR][2 * NP]) {
#pragma GCC unroll 4
  for (int h = 0; h < 2 * NP; ++h) {
    const int64_t nv = std::min<int64_t>(8, t.ncols - h * 8);
    if (nv <= 0) break;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      float* yp = t.y + i * t.ldy + h * 8;
      if (nv == 8) {
        __m256 v = t.bias ? _mm256_add_ps(acc[i][h], _mm256_loadu_ps(t.bias + h * 8)) : acc[i][h];
        _mm256_storeu_ps(yp, v);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, acc[i][h]);
        for (int64_t c = 0; c < nv; ++c) yp[c] = t.bias ? tmp[c] + t.bias[h * 8 + c] : tmp[c];
      }
    }
  }
}

template <int MR, int NP>
KILN_AVX2 void tile_f32(const Tile& t) {
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int h = 0; h < 2 * NP; ++h) acc[i][h] = _mm256_setzero_ps();
  const float* w = static_cast<const float*>(t.w);
  for (int64_t kk = 0; kk < t.kn; ++kk) {
    __m256 b[2 * NP];
#pragma GCC unroll 4
    for (int h = 0; h < 2 * NP; ++h) b[h] = _mm256_load_ps(w + (h / 2) * t.wps + kk * P + (h % 2) * 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(t.x + i * t.ldx + kk);
#pragma GCC unroll 4
      for (int h = 0; h < 2 * NP; ++h) acc[i][h] = _mm256_fmadd_ps(av, b[h], acc[i][h]);
    }
  }
  store_tile<MR, NP>(t, acc);
}

template <int MR, int NP>
KILN_AVX2 void tile_f16(const Tile& t) {
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int h = 0; h < 2 * NP; ++h) acc[i][h] = _mm256_setzero_ps();
  const uint16_t* w = static_cast<const uint16_t*>(t.w);
  for (int64_t kk = 0; kk < t.kn; ++kk) {
    __m256 b[2 * NP];
#pragma GCC unroll 4
    for (int h = 0; h < 2 * NP; ++h)
      b[h] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(w + (h / 2) * t.wps + kk * P + (h % 2) * 8)));
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(t.x + i * t.ldx + kk);
#pragma GCC unroll 4
      for (int h = 0; h < 2 * NP; ++h) acc[i][h] = _mm256_fmadd_ps(av, b[h], acc[i][h]);
    }
  }
  store_tile<MR, NP>(t, acc);
}

template <int MR, int NP>
KILN_AVX2 void tile_bf16(const Tile& t) {
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int h = 0; h < 2 * NP; ++h) acc[i][h] = _mm256_setzero_ps();
  const uint16_t* w = static_cast<const uint16_t*>(t.w);
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t kk = 0; kk < t.kn; ++kk) {
    // Widen the panel row first (8 columns x (k even, k odd) per 32-bit lane: low half = even k,
    // high half = odd k), then one pair of broadcasts per row: 2*NP*2 + MR*2*NP + 2 live registers.
    __m256 w_even[2 * NP], w_odd[2 * NP];
#pragma GCC unroll 4
    for (int h = 0; h < 2 * NP; ++h) {
      const __m256i v =
          _mm256_load_si256(reinterpret_cast<const __m256i*>(w + (h / 2) * t.wps + kk * 2 * P + (h % 2) * 16));
      w_even[h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      w_odd[h] = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const float* xp = t.x + i * t.ldx + 2 * kk;
      const __m256 x_odd = _mm256_broadcast_ss(xp + 1), x_even = _mm256_broadcast_ss(xp);
#pragma GCC unroll 4
      for (int h = 0; h < 2 * NP; ++h) {
        acc[i][h] = _mm256_fmadd_ps(x_odd, w_odd[h], acc[i][h]);
        acc[i][h] = _mm256_fmadd_ps(x_even, w_even[h], acc[i][h]);
      }
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

}  // namespace

void gemm_block_avx2(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const bool bf16 = a.wtype == DType::kBF16;
  const int64_t k = a.k;
  const int64_t kp = a.wtype == DType::kF32 ? k : static_cast<int64_t>(round_up(k, 2));
  const size_t esize = a.wtype == DType::kF32 ? 4 : 2;
  const std::array<TileFn, kMaxMR * kMaxNP>& tiles =
      bf16 ? kBf16Tiles : a.wtype == DType::kF16 ? kF16Tiles : kF32Tiles;

  // Prefill tile: 6 rows x 1 panel = 12 ymm accumulators (4 rows for bf16, which needs 4 registers
  // for a widened panel row: 8 + 4 + 2 broadcasts). Rows per block: a multiple of that, activations
  // <= 256 KiB (L2).
  const int mr_max = bf16 ? 4 : kMaxMR;
  const int64_t x_row_bytes = std::max<int64_t>(kp, 1) * 4;
  int64_t mb_max = std::max<int64_t>(mr_max, (256 << 10) / x_row_bytes / mr_max * mr_max);
  mb_max = std::min<int64_t>(mb_max, 512);

  float* xr = nullptr;
  if (bf16) xr = static_cast<float*>(thread_scratch(static_cast<size_t>(std::min(mb_max, r1 - r0) * kp * 4)));

  for (int64_t rb = r0; rb < r1; rb += mb_max) {
    const int64_t rows = std::min(mb_max, r1 - rb);
    if (bf16) {
      for (int64_t i = 0; i < rows; ++i) {
        round_to_bf16_f32(a.x + (rb + i) * a.ldx, xr + i * kp, k);
        if (kp > k) xr[i * kp + k] = 0.0f;
      }
    }
    // Decode: two panels (more loads in flight) while the registers allow it.
    const int np_max = rows <= (bf16 ? 1 : 2) ? 2 : 1;
    for (int64_t p = p0; p < p1; p += np_max) {
      const int np = static_cast<int>(std::min<int64_t>(np_max, p1 - p));
      Tile t;
      t.w = static_cast<const char*>(a.packed) + static_cast<size_t>(p * kp * P) * esize;
      t.wps = kp * P;
      t.kn = bf16 ? kp / 2 : k;
      t.ldy = a.ldy;
      t.bias = a.bias ? a.bias + p * P : nullptr;
      t.ncols = a.n - p * P;
      t.ldx = bf16 ? kp : a.ldx;
      for (int64_t i = 0; i < rows; i += mr_max) {
        const int mr = static_cast<int>(std::min<int64_t>(mr_max, rows - i));
        t.x = bf16 ? xr + i * kp : a.x + (rb + i) * a.ldx;
        t.y = a.y + (rb + i) * a.ldy + p * P;
        tiles[static_cast<size_t>((mr - 1) * kMaxNP + (np - 1))](t);
      }
    }
  }
}

}  // namespace kiln::cpu::detail
