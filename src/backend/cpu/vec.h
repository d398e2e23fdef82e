// Small fp32 vector primitives for the CPU ops (attention, norms), dispatched once by CPU features.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace kiln::cpu {

struct VecOps {
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);  // y += alpha * x
  void (*scale)(float alpha, float* y, int64_t n);                 // y *= alpha
  float (*sum_squares)(const float* x, int64_t n);
  // dst[i] = float(src[i]) for src of type F32, BF16 or F16.
  void (*to_f32)(const void* src, DType type, float* dst, int64_t n);
  // dst[i] = type(src[i]) (round to nearest even) for dst of type F32, BF16 or F16.
  void (*from_f32)(const float* src, void* dst, DType type, int64_t n);
  // y[i] = exp(x[i]) (relative error < 2e-7; x may equal y).
  void (*exp)(const float* x, float* y, int64_t n);
  // out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
  const char* isa;
};

// The best implementation this CPU supports (KILN_CPU_ISA caps it).
const VecOps& vec_ops();
// A specific one, for tests: "scalar", "avx2", "avx512" (falls back to scalar if unsupported).
const VecOps& vec_ops_for(const char* isa);

}  // namespace kiln::cpu
