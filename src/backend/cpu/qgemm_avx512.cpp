// AVX-512 VNNI kernels of the quantized-weight GEMM (vpdpbusd: unsigned weight bytes x signed int8
// activations, four products summed into each int32 lane), and the AVX-512 activation quantizer.
//
// One 64-byte vector of the packed layout holds one quad of k for the 16 rows of a panel, so a
// vpdpbusd against a broadcast quad of x adds that quad's four products to each row's lane: after a
// block's 8 quads every lane holds its row's exact int32 block dot, with no horizontal sums.
//   Q4_0 / Q4_1: low nibbles by an and; Q4_0's -8 is folded in as -8 * sum(q) (the accumulator
//                starts there).
//   Q8_0: signed weights are flipped to unsigned (w + 128, an xor of the sign bit), and the
//         accumulator starts at -128 * sum(q).
// A tile is MR rows of x by NP panels; its int32 block sums and f32 accumulators stay in registers.
//   Decode (MR = 1, a whole group): panel by panel in memory order, two int32 chains per panel (the
//     vpdpbusd latency), the high nibbles used in place (and 0xf0: 16 w) in their own chain, whose
//     sum is divided by 16 (an exact shift) at the block end: one op per 64 bytes fewer than a shift.
//   Prefill (3 rows x 4 panels): quad by quad, each unpacked weight vector (and, shift+and) feeding the
//     3 rows; 12 int32 sums + 12 f32 accumulators. ~67% of the vpdpbusd peak on Zen 4 (the unpacking
//     and the per-block scaling share the vector pipes).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "backend/cpu/qgemm.h"

#define KILN_AVX512Q __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define KILN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace kiln::cpu::detail {

namespace {

constexpr int64_t P = kQgemmPanel;
constexpr int kMaxMR = 3;
constexpr int kMaxNP = static_cast<int>(kQgemmGroup);
// (The maskz_ forms with a full mask avoid GCC 12's spurious -Wmaybe-uninitialized in the plain ones.)
constexpr __mmask16 kAll = static_cast<__mmask16>(0xffff);

struct Tile {
  const int8_t* xq;    // first row of quantized x
  int64_t ldq;
  const QxBlock* xb;   // first row's block data
  int64_t kb;
  const uint8_t* q;    // quants of the first panel, block 0 (panel p at + p * QB, block b at + b * gb)
  const uint8_t* d;    // d of the first panel, block 0 (panel p at + p * 32, m at + kQgemmGroup * 32)
  int64_t gb;          // bytes per group block
  float* y;            // first row, first column of the tile
  int64_t ldy;
  const float* bias;   // at the tile's first column, or null
  int64_t ncols;       // valid columns from the tile's first column (> 16 * (NP - 1))
};

using TileFn = void (*)(const Tile&);

KILN_VNNI inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <GgmlType T, int MR, int NP>
KILN_VNNI void tile_vnni(const Tile& t) {
  constexpr bool kQ8 = T == GgmlType::kQ8_0;
  constexpr int64_t QB = kQ8 ? 512 : 256;
  // m = 1: two int32 chains per panel, so that the vpdpbusd latency is hidden by 2 * NP chains.
  constexpr bool kSplit = MR == 1;
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
  const __m512i nib = _mm512_set1_epi8(0x0f);
  const __m512i hinib = _mm512_set1_epi8(static_cast<char>(0xf0));
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t kb = t.kb;

  for (int64_t b = 0; b < kb; ++b) {
    const uint8_t* wq = t.q + b * t.gb;
    __m512i ia[MR][NP], ib[MR][NP];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const int32_t sq = t.xb[i * kb + b].sq;
      const __m512i init = _mm512_set1_epi32(T == GgmlType::kQ4_0 ? -8 * sq : kQ8 ? -128 * sq : 0);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        ia[i][p] = init;
        ib[i][p] = _mm512_setzero_si512();
      }
    }
    if constexpr (kSplit) {
      // Decode: panel by panel, so that the loads walk through the group's block in memory order.
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        const int8_t* x = t.xq + b * kQgemmBlock;
        if constexpr (!kQ8) {
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) {
            const __m512i raw = _mm512_load_si512(wq + p * QB + 64 * v);
            // High nibbles in place (16 q): their own chain, divided by 16 (exactly) at the block end.
            ia[0][p] = _mm512_dpbusd_epi32(ia[0][p], _mm512_and_si512(raw, nib), bcast4(x + 8 * v));
            ib[0][p] = _mm512_dpbusd_epi32(ib[0][p], _mm512_and_si512(raw, hinib), bcast4(x + 8 * v + 4));
          }
        } else {
#pragma GCC unroll 8
          for (int s = 0; s < 8; s += 2) {
            const __m512i w0 = _mm512_xor_si512(_mm512_load_si512(wq + p * QB + 64 * s), flip);
            const __m512i w1 = _mm512_xor_si512(_mm512_load_si512(wq + p * QB + 64 * s + 64), flip);
            ia[0][p] = _mm512_dpbusd_epi32(ia[0][p], w0, bcast4(x + 4 * s));
            ib[0][p] = _mm512_dpbusd_epi32(ib[0][p], w1, bcast4(x + 4 * s + 4));
          }
        }
      }
    } else {
      // Prefill: quad by quad; each unpacked weight vector feeds the MR rows.
      if constexpr (!kQ8) {
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
#pragma GCC unroll 4
          for (int p = 0; p < NP; ++p) {
            const __m512i raw = _mm512_load_si512(wq + p * QB + 64 * v);
            const __m512i lo = _mm512_and_si512(raw, nib);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib);
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
              const int8_t* x = t.xq + i * t.ldq + b * kQgemmBlock + 8 * v;
              ia[i][p] = _mm512_dpbusd_epi32(ia[i][p], lo, bcast4(x));
              ia[i][p] = _mm512_dpbusd_epi32(ia[i][p], hi, bcast4(x + 4));
            }
          }
        }
      } else {
#pragma GCC unroll 8
        for (int s = 0; s < 8; ++s) {
#pragma GCC unroll 4
          for (int p = 0; p < NP; ++p) {
            const __m512i w = _mm512_xor_si512(_mm512_load_si512(wq + p * QB + 64 * s), flip);
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i)
              ia[i][p] = _mm512_dpbusd_epi32(ia[i][p], w, bcast4(t.xq + i * t.ldq + b * kQgemmBlock + 4 * s));
          }
        }
      }
    }
    // Scale and accumulate: acc = fma(float(dot), dw * dx, acc) [+ fma(mw, sx, acc)].
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      const uint8_t* sc = t.d + b * t.gb + 32 * p;
      const __m512 dw = _mm512_maskz_cvtph_ps(kAll, _mm256_load_si256(reinterpret_cast<const __m256i*>(sc)));
      __m512 mw = _mm512_setzero_ps();
      if constexpr (T == GgmlType::kQ4_1)
        mw = _mm512_maskz_cvtph_ps(kAll, _mm256_load_si256(reinterpret_cast<const __m256i*>(sc + 32 * kQgemmGroup)));
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const QxBlock& xb = t.xb[i * kb + b];
        __m512i dot = ia[i][p];
        if constexpr (kSplit) dot = _mm512_add_epi32(dot, kQ8 ? ib[i][p] : _mm512_maskz_srai_epi32(kAll, ib[i][p], 4));
        const __m512 c = _mm512_mul_ps(dw, _mm512_set1_ps(xb.d));
        acc[i][p] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(kAll, dot), c, acc[i][p]);
        if constexpr (T == GgmlType::kQ4_1) acc[i][p] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xb.s), acc[i][p]);
      }
    }
  }

#pragma GCC unroll 4
  for (int p = 0; p < NP; ++p) {
    const int64_t nv = std::min<int64_t>(P, t.ncols - p * P);
    const __mmask16 mask = static_cast<__mmask16>(nv >= P ? 0xffffu : (1u << nv) - 1u);
    __m512 bias = _mm512_setzero_ps();
    if (t.bias) bias = _mm512_maskz_loadu_ps(mask, t.bias + p * P);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 v = t.bias ? _mm512_add_ps(acc[i][p], bias) : acc[i][p];
      _mm512_mask_storeu_ps(t.y + i * t.ldy + p * P, mask, v);
    }
  }
}

template <GgmlType T, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> make_table(std::index_sequence<I...>) {
  return {&tile_vnni<T, static_cast<int>(I / kMaxNP) + 1, static_cast<int>(I % kMaxNP) + 1>...};
}
constexpr auto kSeq = std::make_index_sequence<kMaxMR * kMaxNP>();
constexpr std::array<TileFn, kMaxMR * kMaxNP> kQ8Tiles = make_table<GgmlType::kQ8_0>(kSeq);
constexpr std::array<TileFn, kMaxMR * kMaxNP> kQ40Tiles = make_table<GgmlType::kQ4_0>(kSeq);
constexpr std::array<TileFn, kMaxMR * kMaxNP> kQ41Tiles = make_table<GgmlType::kQ4_1>(kSeq);


struct TileShape {
  int mr, np;
};
// Decode (1-2 rows): every row at once, 4 panels (4 streams of W in flight). Prefill: 4 rows x 3 panels
// (12 int32 block sums + 12 f32 accumulators + the unpacked weights in 32 zmm).
TileShape tile_shape(int64_t rows) { return {static_cast<int>(std::min<int64_t>(rows, kMaxMR)), kMaxNP}; }

// Horizontal max / sum of 16 lanes (exact: max, and integer adds).
KILN_AVX512Q inline float hmax(__m512 v) {
  const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(v), 1));
  __m256 m8 = _mm256_max_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(v), 0)), hi);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  return _mm_cvtss_f32(m4);
}
KILN_AVX512Q inline int32_t hsum(__m512i v) {
  const __m256i s8 = _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xf, v, 0), _mm512_maskz_extracti64x4_epi64(0xf, v, 1));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  return _mm_cvtsi128_si32(s4);
}

// Rounds to the nearest integer, ties away from zero (roundf), for |v| < 2^23.
KILN_AVX512Q inline __m512 round_away(__m512 v) {
  const __m512 t = _mm512_maskz_roundscale_ps(kAll, v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(v, t);  // exact
  const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(f), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const __m512 one = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(static_cast<int>(0x80000000u))),
      _mm512_castps_si512(_mm512_set1_ps(1.0f))));
  return _mm512_mask_add_ps(t, up, t, one);
}

}  // namespace

KILN_AVX512Q void quantize_x_avx512(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq,
                                    QxBlock* blk) {
  const int64_t kb = k / kQgemmBlock;
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * ldx;
    int8_t* qr = q + i * ldq;
    for (int64_t b = 0; b < kb; ++b) {
      const __m512 v0 = _mm512_loadu_ps(xr + 32 * b), v1 = _mm512_loadu_ps(xr + 32 * b + 16);
      const float amax = hmax(_mm512_maskz_max_ps(kAll, _mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const __m512 vid = _mm512_set1_ps(id);
      const __m512i q0 = _mm512_maskz_cvttps_epi32(kAll, round_away(_mm512_mul_ps(v0, vid)));
      const __m512i q1 = _mm512_maskz_cvttps_epi32(kAll, round_away(_mm512_mul_ps(v1, vid)));
      _mm512_mask_cvtepi32_storeu_epi8(qr + 32 * b, kAll, q0);
      _mm512_mask_cvtepi32_storeu_epi8(qr + 32 * b + 16, kAll, q1);
      const int32_t sq = hsum(_mm512_add_epi32(q0, q1));
      blk[i * kb + b] = QxBlock{d, sq, d * static_cast<float>(sq)};
    }
  }
}

KILN_VNNI void qgemm_block_avx512_vnni(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const std::array<TileFn, kMaxMR * kMaxNP>& tiles =
      a.t == GgmlType::kQ8_0 ? kQ8Tiles : a.t == GgmlType::kQ4_0 ? kQ40Tiles : kQ41Tiles;
  const int64_t qb = qpanel_block_bytes(a.t);
  // Rows per block: the block's quantized activations (<= 256 KiB) stay in L2 while the groups pass by.
  int64_t mb_max = std::max<int64_t>(12, (256 << 10) / std::max<int64_t>(a.ldq, 1) / 12 * 12);
  mb_max = std::min<int64_t>(mb_max, 480);
  for (int64_t rb = r0; rb < r1; rb += mb_max) {
    const int64_t rows = std::min(mb_max, r1 - rb);
    const TileShape s = tile_shape(rows);
    for (int64_t g = p0 / kQgemmGroup; g * kQgemmGroup < p1; ++g) {
      const uint8_t* group = a.packed + static_cast<size_t>(g) * a.group_bytes;
      // This chunk's panels of the group (all four but at a chunk edge).
      const int64_t pe = std::min(p1 - g * kQgemmGroup, kQgemmGroup);
      for (int64_t p = std::max<int64_t>(p0 - g * kQgemmGroup, 0); p < pe; p += s.np) {
        const int np = static_cast<int>(std::min<int64_t>(s.np, pe - p));
        const int64_t col0 = (g * kQgemmGroup + p) * P;
        Tile t;
        t.ldq = a.ldq;
        t.kb = a.kb;
        t.q = group + p * qb;
        t.d = group + kQgemmGroup * qb + p * 32;
        t.gb = a.gb;
        t.ldy = a.ldy;
        t.bias = a.bias ? a.bias + col0 : nullptr;
        t.ncols = a.n - col0;
        for (int64_t i = 0; i < rows; i += s.mr) {
          const int mr = static_cast<int>(std::min<int64_t>(s.mr, rows - i));
          t.xq = a.xq + (rb + i) * a.ldq;
          t.xb = a.xb + (rb + i) * a.kb;
          t.y = a.y + (rb + i) * a.ldy + col0;
          tiles[static_cast<size_t>((mr - 1) * kMaxNP + (np - 1))](t);
        }
      }
    }
  }
}

}  // namespace kiln::cpu::detail
