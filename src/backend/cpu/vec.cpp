#include "backend/cpu/vec.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "backend/cpu/simd_exp.h"
#include "core/cpu_features.h"

namespace kiln::cpu {

namespace {

// ---------------------------------------------------------------- scalar
float dot_scalar(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}
void axpy_scalar(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
void scale_scalar(float alpha, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}
float sum_squares_scalar(const float* x, int64_t n) { return dot_scalar(x, x, n); }
void to_f32_scalar(const void* src, DType type, float* dst, int64_t n) {
  convert_floats(src, type, dst, DType::kF32, static_cast<size_t>(n));
}
void from_f32_scalar(const float* src, void* dst, DType type, int64_t n) {
  convert_floats(src, DType::kF32, dst, type, static_cast<size_t>(n));
}
void exp_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}
void silu_mul_scalar(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// ---------------------------------------------------------------- avx2
#define KILN_AVX2 __attribute__((target("avx2,fma,f16c")))
KILN_AVX2 float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
KILN_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
KILN_AVX2 void axpy_avx2(float alpha, const float* x, float* y, int64_t n) {
  __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}
KILN_AVX2 void scale_avx2(float alpha, float* y, int64_t n) {
  __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] *= alpha;
}
KILN_AVX2 float sum_squares_avx2(const float* x, int64_t n) { return dot_avx2(x, x, n); }
KILN_AVX2 void to_f32_avx2(const void* src, DType type, float* dst, int64_t n) {
  int64_t i = 0;
  const uint16_t* s = static_cast<const uint16_t*>(src);
  if (type == DType::kBF16) {
    for (; i + 8 <= n; i += 8) {
      __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
  } else if (type == DType::kF16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  if (type == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  if (i < n) to_f32_scalar(s + i, type, dst + i, n - i);
}

KILN_AVX2 void exp_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, simd::exp_ps(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] = std::exp(x[i]);
}
KILN_AVX2 void silu_mul_avx2(const float* g, const float* u, float* o, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = simd::exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                          _mm256_loadu_ps(u + i)));
  }
  if (i < n) silu_mul_scalar(g + i, u + i, o + i, n - i);
}

// ---------------------------------------------------------------- avx512
// (GCC 12 false positive on its intrinsics' undefined placeholders: see simd_exp.h.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define KILN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
KILN_AVX512 float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
KILN_AVX512 void axpy_avx512(float alpha, const float* x, float* y, int64_t n) {
  __m512 va = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}
KILN_AVX512 void scale_avx512(float alpha, float* y, int64_t n) {
  __m512 va = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(va, _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] *= alpha;
}
KILN_AVX512 float sum_squares_avx512(const float* x, int64_t n) { return dot_avx512(x, x, n); }
KILN_AVX512 void to_f32_avx512(const void* src, DType type, float* dst, int64_t n) {
  if (type == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  if (type == DType::kBF16) {
    for (; i + 16 <= n; i += 16) {
      __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
  } else {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  }
  if (i < n) to_f32_scalar(s + i, type, dst + i, n - i);
}

KILN_AVX512 void exp_avx512(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, simd::exp_ps(_mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, simd::exp_ps(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
KILN_AVX512 inline __m512 silu_mul16(__m512 g, __m512 u) {
  const __m512 e = simd::exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}
KILN_AVX512 void silu_mul_avx512(const float* g, const float* u, float* o, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(o + i, silu_mul16(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(o + i, m, silu_mul16(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
  }
}
#pragma GCC diagnostic pop

constexpr VecOps kScalar{dot_scalar, axpy_scalar, scale_scalar, sum_squares_scalar, to_f32_scalar, from_f32_scalar, exp_scalar, silu_mul_scalar, "scalar"};
constexpr VecOps kAvx2{dot_avx2, axpy_avx2, scale_avx2, sum_squares_avx2, to_f32_avx2, from_f32_scalar, exp_avx2, silu_mul_avx2, "avx2"};
constexpr VecOps kAvx512{dot_avx512, axpy_avx512, scale_avx512, sum_squares_avx512, to_f32_avx512, from_f32_scalar, exp_avx512, silu_mul_avx512, "avx512"};

}  // namespace

const VecOps& vec_ops_for(const char* isa) {
  const CpuFeatures& f = cpu_features();
  if (std::strcmp(isa, "avx512") == 0 && f.avx512f && f.avx512bw && f.avx512vl) return kAvx512;
  if (std::strcmp(isa, "avx2") == 0 && f.avx2 && f.fma && f.f16c) return kAvx2;
  return kScalar;
}

const VecOps& vec_ops() {
  static const VecOps& ops = [&]() -> const VecOps& {
    const CpuFeatures& f = cpu_features();
    if (f.avx512f && f.avx512bw && f.avx512vl) return kAvx512;
    if (f.avx2 && f.fma && f.f16c) return kAvx2;
    return kScalar;
  }();
  return ops;
}

}  // namespace kiln::cpu
