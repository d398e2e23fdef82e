// AVX2 kernels of the quantized-weight GEMM (also what AVX-512 CPUs without VNNI run), and the AVX2
// activation quantizer.
//
// A ymm covers half a panel (8 rows): the low or high 32 bytes of each 64-byte quad vector. pmaddubsw
// multiplies unsigned weight bytes by the broadcast signed quad of x and adds pairs into int16;
// pmaddwd by 1 adds the two pairs of a lane into its row's int32.
//   Q4_0 / Q4_1: weights 0..15, so a pair is at most 2 * 15 * 127 = 3810 in magnitude and the 8
//                pairs of a block sum exactly in int16 (<= 30480); one pmaddwd per block.
//                Q4_0's -8 is applied as -8 * sum(q).
//   Q8_0: sign trick, |w| (unsigned, <= 128) times x with w's sign: a pair is at most 32512, so each
//         quad goes to int32 at once.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "backend/cpu/qgemm.h"

#define KILN_AVX2Q __attribute__((target("avx2,fma,f16c")))

namespace kiln::cpu::detail {

namespace {

constexpr int64_t P = kQgemmPanel;
constexpr int kMaxMR = 2;
constexpr int kMaxNH = 2 * kQgemmGroup;  // half panels

struct Tile {
  const int8_t* xq;
  int64_t ldq;
  const QxBlock* xb;
  int64_t kb;
  const uint8_t* q;   // quants of the first panel, block 0 (panel p at + p * QB, block b at + b * gb)
  const uint8_t* d;   // d of the first panel, block 0 (panel p at + p * 32, m at + kQgemmGroup * 32)
  int64_t gb;
  float* y;           // first row, first column of the tile
  int64_t ldy;
  const float* bias;  // at the tile's first column, or null
  int64_t ncols;      // valid columns from the tile's first column (> 8 * (NH - 1))
};

using TileFn = void (*)(const Tile&);

KILN_AVX2Q inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

template <GgmlType T, int MR, int NH>
KILN_AVX2Q void tile_avx2(const Tile& t) {
  constexpr bool kQ8 = T == GgmlType::kQ8_0;
  constexpr int64_t QB = kQ8 ? 512 : 256;
  __m256 acc[MR][NH];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) acc[i][h] = _mm256_setzero_ps();
  const __m256i nib = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t kb = t.kb;

  // Half panel by half panel within a block: only the MR int sums of one half are live at a time.
  for (int64_t b = 0; b < kb; ++b) {
    const uint8_t* wq = t.q + b * t.gb;
#pragma GCC unroll 8
    for (int h = 0; h < NH; ++h) {
      const uint8_t* w = wq + (h / 2) * QB + 32 * (h % 2);
      __m256i dot[MR];
      if constexpr (!kQ8) {
        __m256i s16[MR];
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) s16[i] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 64 * v));
          const __m256i lo = _mm256_and_si256(raw, nib);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nib);
#pragma GCC unroll 4
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = t.xq + i * t.ldq + b * kQgemmBlock + 8 * v;
            s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(lo, bcast4(x)));
            s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(hi, bcast4(x + 4)));
          }
        }
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
          dot[i] = _mm256_madd_epi16(s16[i], ones);
          if constexpr (T == GgmlType::kQ4_0) dot[i] = _mm256_add_epi32(dot[i], _mm256_set1_epi32(-8 * t.xb[i * kb + b].sq));
        }
      } else {
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) dot[i] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int s = 0; s < 8; ++s) {
          const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 64 * s));
          const __m256i aw = _mm256_abs_epi8(raw);
#pragma GCC unroll 4
          for (int i = 0; i < MR; ++i) {
            const __m256i xs = _mm256_sign_epi8(bcast4(t.xq + i * t.ldq + b * kQgemmBlock + 4 * s), raw);
            dot[i] = _mm256_add_epi32(dot[i], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones));
          }
        }
      }
      const uint8_t* sc = t.d + b * t.gb + 32 * (h / 2) + 16 * (h % 2);
      const __m256 dw = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(sc)));
      __m256 mw = _mm256_setzero_ps();
      if constexpr (T == GgmlType::kQ4_1)
        mw = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(sc + 32 * kQgemmGroup)));
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const QxBlock& xb = t.xb[i * kb + b];
        const __m256 c = _mm256_mul_ps(dw, _mm256_set1_ps(xb.d));
        acc[i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i]), c, acc[i][h]);
        if constexpr (T == GgmlType::kQ4_1) acc[i][h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), acc[i][h]);
      }
    }
  }

#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h) {
    const int64_t nv = std::min<int64_t>(8, t.ncols - h * 8);
    if (nv <= 0) break;
    alignas(32) float bias[8] = {};
    if (t.bias) std::memcpy(bias, t.bias + h * 8, static_cast<size_t>(nv) * 4);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 v = t.bias ? _mm256_add_ps(acc[i][h], _mm256_load_ps(bias)) : acc[i][h];
      float* yr = t.y + i * t.ldy + h * 8;
      if (nv == 8) {
        _mm256_storeu_ps(yr, v);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        std::memcpy(yr, tmp, static_cast<size_t>(nv) * 4);
      }
    }
  }
}

template <GgmlType T, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> make_table(std::index_sequence<I...>) {
  return {&tile_avx2<T, static_cast<int>(I / kMaxNH) + 1, static_cast<int>(I % kMaxNH) + 1>...};
}
constexpr auto kSeq = std::make_index_sequence<kMaxMR * kMaxNH>();
constexpr std::array<TileFn, kMaxMR * kMaxNH> kQ8Tiles = make_table<GgmlType::kQ8_0>(kSeq);
constexpr std::array<TileFn, kMaxMR * kMaxNH> kQ40Tiles = make_table<GgmlType::kQ4_0>(kSeq);
constexpr std::array<TileFn, kMaxMR * kMaxNH> kQ41Tiles = make_table<GgmlType::kQ4_1>(kSeq);

struct TileShape {
  int mr, nh;
};
// Decode: one row, a whole group (one pass over its memory). Prefill: MR rows x NH halves (16 ymm: MR x NH
// f32 accumulators, MR int sums, the unpacked weights and constants).
TileShape tile_shape(int64_t rows) {
  if (rows == 1) return {1, kMaxNH};
  return {kMaxMR, 4};
}

// Rounds to the nearest integer, ties away from zero (roundf), for |v| < 2^23.
KILN_AVX2Q inline __m256 round_away(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(v, t);  // exact
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, f), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
  return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

}  // namespace

KILN_AVX2Q void quantize_x_avx2(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq,
                                QxBlock* blk) {
  const int64_t kb = k / kQgemmBlock;
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * ldx;
    int8_t* qr = q + i * ldq;
    for (int64_t b = 0; b < kb; ++b) {
      __m256 v[4];
      for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(xr + 32 * b + 8 * j);
      __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                               _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
      const float amax = _mm_cvtss_f32(m4);
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i qi[4];
      for (int j = 0; j < 4; ++j) qi[j] = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[j], vid)));
      const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + 32 * b), _mm256_permutevar8x32_epi32(p16, order));
      __m256i s = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      const int32_t sq = _mm_cvtsi128_si32(s4);
      blk[i * kb + b] = QxBlock{d, sq, d * static_cast<float>(sq)};
    }
  }
}

KILN_AVX2Q void qgemm_block_avx2(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const std::array<TileFn, kMaxMR * kMaxNH>& tiles =
      a.t == GgmlType::kQ8_0 ? kQ8Tiles : a.t == GgmlType::kQ4_0 ? kQ40Tiles : kQ41Tiles;
  const int64_t qb = qpanel_block_bytes(a.t), halves = (a.n + 7) / 8;
  int64_t mb_max = std::max<int64_t>(12, (256 << 10) / std::max<int64_t>(a.ldq, 1) / 12 * 12);
  mb_max = std::min<int64_t>(mb_max, 480);
  for (int64_t rb = r0; rb < r1; rb += mb_max) {
    const int64_t rows = std::min(mb_max, r1 - rb);
    const TileShape s = tile_shape(rows);
    for (int64_t g = p0 / kQgemmGroup; g * kQgemmGroup < p1; ++g) {
      const uint8_t* group = a.packed + static_cast<size_t>(g) * a.group_bytes;
      // This chunk's half panels of the group that have columns.
      const int64_t he = std::min({2 * (p1 - g * kQgemmGroup), 2 * kQgemmGroup, halves - g * 2 * kQgemmGroup});
      for (int64_t h = std::max<int64_t>(2 * (p0 - g * kQgemmGroup), 0); h < he; h += s.nh) {
        // (s.nh is even, so a tile starts at a panel's low half.)
        const int nh = static_cast<int>(std::min<int64_t>(s.nh, he - h));
        const int64_t col0 = (g * 2 * kQgemmGroup + h) * 8;
        Tile t;
        t.ldq = a.ldq;
        t.kb = a.kb;
        t.q = group + (h / 2) * qb;
        t.d = group + kQgemmGroup * qb + (h / 2) * 32;
        t.gb = a.gb;
        t.ldy = a.ldy;
        t.bias = a.bias ? a.bias + col0 : nullptr;
        t.ncols = a.n - col0;
        for (int64_t i = 0; i < rows; i += s.mr) {
          const int mr = static_cast<int>(std::min<int64_t>(s.mr, rows - i));
          t.xq = a.xq + (rb + i) * a.ldq;
          t.xb = a.xb + (rb + i) * a.kb;
          t.y = a.y + (rb + i) * a.ldy + col0;
          tiles[static_cast<size_t>((mr - 1) * kMaxNH + (nh - 1))](t);
        }
      }
    }
  }
}

}  // namespace kiln::cpu::detail
