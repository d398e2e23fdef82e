// Portable quantized-weight GEMM kernel (no SIMD intrinsics). Follows the numerics of qgemm.h: exact
// int32 block dots, then std::fma in block order, as the SIMD kernels do.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/qgemm.h"
#include "core/dtype.h"

namespace kiln::cpu::detail {

namespace {
constexpr int64_t P = kQgemmPanel;
}  // namespace

void qgemm_block_scalar(const QgemmArgs& a, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const GgmlType t = a.t;
  const int64_t kb = a.kb, qb = qpanel_block_bytes(t);
  for (int64_t p = p0; p < p1; ++p) {
    const uint8_t* panel = a.packed + static_cast<size_t>(p / kQgemmGroup) * a.group_bytes + (p % kQgemmGroup) * qb;
    const uint8_t* dsc = a.packed + static_cast<size_t>(p / kQgemmGroup) * a.group_bytes + kQgemmGroup * qb +
                         (p % kQgemmGroup) * 32;
    const uint8_t* msc = dsc + kQgemmGroup * 32;
    const int64_t col0 = p * P, ncols = std::min<int64_t>(P, a.n - col0);
    for (int64_t i = r0; i < r1; ++i) {
      const int8_t* xq = a.xq + i * a.ldq;
      const QxBlock* xb = a.xb + i * kb;
      float acc[P] = {};
      for (int64_t b = 0; b < kb; ++b) {
        const uint8_t* q = panel + b * a.gb;
        const int8_t* x = xq + b * kQgemmBlock;
        for (int64_t r = 0; r < P; ++r) {
          int32_t dot = t == GgmlType::kQ4_0 ? -8 * xb[b].sq : 0;
          if (t == GgmlType::kQ8_0) {
            for (int s = 0; s < 8; ++s)
              for (int j = 0; j < 4; ++j) dot += static_cast<int8_t>(q[s * 64 + 4 * r + j]) * x[4 * s + j];
          } else {
            for (int v = 0; v < 4; ++v) {
              for (int j = 0; j < 4; ++j) {
                const uint8_t byte = q[v * 64 + 4 * r + j];
                dot += (byte & 0x0f) * x[8 * v + j] + (byte >> 4) * x[8 * v + 4 + j];
              }
            }
          }
          uint16_t dh, mh;
          std::memcpy(&dh, dsc + b * a.gb + 2 * r, 2);
          const float c = f16_to_f32(dh) * xb[b].d;
          acc[r] = std::fma(static_cast<float>(dot), c, acc[r]);
          if (t == GgmlType::kQ4_1) {
            std::memcpy(&mh, msc + b * a.gb + 2 * r, 2);
            acc[r] = std::fma(f16_to_f32(mh), xb[b].s, acc[r]);
          }
        }
      }
      float* yi = a.y + i * a.ldy + col0;
      for (int64_t c = 0; c < ncols; ++c) yi[c] = a.bias ? acc[c] + a.bias[col0 + c] : acc[c];
    }
  }
}

}  // namespace kiln::cpu::detail
