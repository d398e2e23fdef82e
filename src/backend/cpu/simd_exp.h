// Vector exp for the AVX-512 and AVX2 kernels, header-only so that kernels in several files inline it.
// Include only from files that call it from functions compiled with the same target attribute.
#pragma once

#include <immintrin.h>

namespace kiln::cpu::simd {

// GCC 12 reports its own _mm512_undefined_ps() placeholders as uninitialized once intrinsics are
// inlined (a false positive); callers of these helpers wrap their AVX-512 code in the same pragmas.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define KILN_AVX512_EXP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

// exp of each lane.  x = n ln2 + r with n = round(x / ln2), |r| <= ln2/2 (two-constant Cody-Waite
// reduction with fused multiply-adds), e^r = 1 + r + r^2 q(r) with q a degree-4 near-minimax fit of
// (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2] (approximation error ~1e-8; the float rounding of the
// evaluation dominates: < 2e-7 relative overall), then scaled by 2^n with vscalefps, which gives
// correct overflow to +inf and underflow through subnormals to 0.  -inf -> 0, NaN -> NaN.
KILN_AVX512_EXP_TARGET inline __m512 exp_ps(__m512 x) {
  // max/min return their second operand when either is NaN, so NaN passes through.
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // e^-104 rounds to 0 after the scaling
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);    // e^89 overflows to +inf after the scaling
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 high part (exact n * hi)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.4286068203094173e-06f), r);     // ln2 - high part
  __m512 q = _mm512_set1_ps(1.3926176120e-03f);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.3631730745e-03f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.1666554662e-02f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.6666577026e-01f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.5f));
  const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

#define KILN_AVX2_EXP_TARGET __attribute__((target("avx2,fma,f16c")))

// The same for 8 lanes with AVX2 + FMA (no vscalefps: 2^n is applied as two normal powers of two,
// 2^(n >> 1) * 2^(n - (n >> 1)), so overflow and gradual underflow still come out right).
KILN_AVX2_EXP_TARGET inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.4286068203094173e-06f), r);
  __m256 q = _mm256_set1_ps(1.3926176120e-03f);
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(8.3631730745e-03f));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(4.1666554662e-02f));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.6666577026e-01f));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.5f));
  const __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);  // in [-150, 129]
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

#pragma GCC diagnostic pop

}  // namespace kiln::cpu::simd
