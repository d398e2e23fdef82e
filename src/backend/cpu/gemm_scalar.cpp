// Portable GEMM kernel (no SIMD intrinsics). Follows the accumulation order documented in gemm.h.
#include <algorithm>

#include "backend/cpu/gemm.h"
#include "core/checked_math.h"

namespace kiln::cpu::detail {

namespace {
constexpr int64_t P = kGemmPanel;
}  // namespace

// GCC 12's loop vectorizer miscompiles the bf16 pair loop below at -O3 (wrong sums; found by the
// CpuGemm tests), so this fallback kernel is kept scalar.
__attribute__((optimize("no-tree-loop-vectorize")))
void gemm_block_scalar(const GemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const int64_t k = a.k;
  const bool bf16 = a.wtype == DType::kBF16;
  const int64_t kp = a.wtype == DType::kF32 ? k : static_cast<int64_t>(round_up(k, 2));
  const int64_t rows = r1 - r0;

  // Scratch: one panel widened to f32 (same arrangement as packed), then the activations
  // (rounded to bf16 for kBF16, k padded to even with a zero).
  float* wf = static_cast<float*>(thread_scratch(static_cast<size_t>((kp * P + (bf16 ? rows * kp : 0)) * 4)));
  float* xr = wf + kp * P;
  if (bf16) {
    for (int64_t i = 0; i < rows; ++i) {
      round_to_bf16_f32(a.x + (r0 + i) * a.ldx, xr + i * kp, k);
      if (kp > k) xr[i * kp + k] = 0.0f;
    }
  }

  for (int64_t p = p0; p < p1; ++p) {
    const float* w;
    if (a.wtype == DType::kF32) {
      w = static_cast<const float*>(a.packed) + p * kp * P;
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(a.packed) + p * kp * P;
      for (int64_t e = 0; e < kp * P; ++e) wf[e] = bf16 ? bf16_to_f32(src[e]) : f16_to_f32(src[e]);
      w = wf;
    }
    const int64_t col0 = p * P, ncols = std::min<int64_t>(P, a.n - col0);
    for (int64_t i = 0; i < rows; ++i) {
      float acc[P] = {};
      if (bf16) {
        const float* xi = xr + i * kp;
        for (int64_t kk = 0; kk < kp; kk += 2) {
          const float x0 = xi[kk], x1 = xi[kk + 1];
          const float* wr = w + kk * P;  // [c][2]
          // The products of bf16 values are exact in f32: same sums as vdpbf16ps (odd k first).
          for (int64_t c = 0; c < P; ++c) {
            acc[c] += x1 * wr[2 * c + 1];
            acc[c] += x0 * wr[2 * c];
          }
        }
      } else {
        const float* xi = a.x + (r0 + i) * a.ldx;
        for (int64_t kk = 0; kk < k; ++kk) {
          const float xv = xi[kk];
          const float* wr = w + kk * P;
          for (int64_t c = 0; c < P; ++c) acc[c] += xv * wr[c];
        }
      }
      float* yi = a.y + (r0 + i) * a.ldy + col0;
      for (int64_t c = 0; c < ncols; ++c) yi[c] = a.bias ? acc[c] + a.bias[col0 + c] : acc[c];
    }
  }
}

}  // namespace kiln::cpu::detail
